"""Every vrtwist twistd daemon keeps a bounded set of log files."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.agent.procs import CONTROL_PORT_RE, logged_port
from tests.polling import wait_until
from vrtwist import logfiles
from vrtwist.logfiles import DEFAULT_LOG_FILES, DEFAULT_LOG_SIZE, configured_observer

DAEMONS = ("vrouter", "vrouter-dp", "vrouter-control", "vpnkit-forwarder", "vpnkit-host",
           "vspc", "vsock-relay")


def server_options(*argv: str) -> dict[str, Any]:
    from twisted.scripts._twistd_unix import ServerOptions

    config = ServerOptions()
    config.subCommand = None
    # parse up to the plugin's options only (no service is built)
    config.parseOptions(list(argv))
    return config


class OptionsTests(SynchronousTestCase):
    def test_every_daemon_has_the_log_options(self) -> None:
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        for name in DAEMONS:
            opts = makers[name].options()
            self.assertEqual(opts["log-size"], DEFAULT_LOG_SIZE, name)
            self.assertEqual(opts["log-files"], DEFAULT_LOG_FILES, name)
            self.assertIn("--log-files", str(opts), name)

    def setUp(self) -> None:
        self.addCleanup(setattr, logfiles, "configured", logfiles.configured)
        logfiles.configured = None

    def installed(self, *argv: str) -> tuple[str, int, int] | None:
        logfiles.configured = None
        config = server_options(*argv, "vsock-relay", "--log-size", "1000", "--log-files", "2",
                                "--backend", "tcp:127.0.0.1:9")
        if config["logger"] is not configured_observer:
            return None
        return logfiles.configured

    def test_where_the_bounded_file_is_used(self) -> None:
        self.assertEqual(self.installed("-n", "--logfile", "/tmp/x.log"), ("/tmp/x.log", 1000, 2))
        self.assertEqual(self.installed("--logfile", "y.log"), ("y.log", 1000, 2))
        # a daemon without --logfile: twistd.log, as twistd does
        self.assertEqual(self.installed(), ("twistd.log", 1000, 2))

    def test_stdout_syslog_and_explicit_logger_are_left_alone(self) -> None:
        self.assertIsNone(self.installed("-n"))
        self.assertIsNone(self.installed("-n", "--logfile", "-"))
        self.assertIsNone(self.installed("--syslog"))
        config = server_options("-n", "--logfile", "z.log", "--logger",
                                "twisted.logger.globalLogPublisher", "vsock-relay",
                                "--backend", "tcp:127.0.0.1:9")
        from twisted.logger import globalLogPublisher

        self.assertIs(config["logger"], globalLogPublisher)

    def test_bad_values_refused(self) -> None:
        from twisted.python.usage import UsageError

        for bad in ("0", "-3", "x"):
            self.assertRaises(UsageError, server_options, "-n", "vsock-relay",
                              "--log-files", bad, "--backend", "tcp:127.0.0.1:9")


class TwistdRotationTests(SynchronousTestCase):
    """A real ``twistd vrouter-control`` made to log a lot keeps --log-files files."""

    def test_rotated_files_stay_bounded(self) -> None:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            raise self.skipTest("twistd console script not installed next to the interpreter")
        run = tempfile.mkdtemp(prefix="vrtwist-logs-")
        self.addCleanup(shutil.rmtree, run, True)
        out = open(os.path.join(run, "stdout"), "wb")
        self.addCleanup(out.close)
        proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "--logfile", os.path.join(run, "cn.log"),
             "vrouter-control", "--xmpp", "tcp:0:interface=127.0.0.1", "--introspect", "none",
             "--log-size", "2000", "--log-files", "3"],
            cwd=run, stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.terminate)

        def listening() -> int | None:
            self.assertIsNone(proc.poll(), "the control node exited")
            return logged_port(os.path.join(run, "cn.log"), CONTROL_PORT_RE)

        port = wait_until(listening, "the control node to listen")

        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", port), timeout=5)

        # Each bad peer makes the daemon log its close.
        for i in range(120):
            c = connect()
            c.sendall(b"garbage %d" % i)
            c.settimeout(5)
            try:
                while c.recv(65536):
                    pass
            except OSError:
                pass
            c.close()
        proc.send_signal(signal.SIGUSR1)  # rotates on demand too, as twistd's own file
        time.sleep(0.5)
        proc.terminate()
        proc.wait(timeout=20)
        files = sorted(f for f in os.listdir(run) if f.startswith("cn.log"))
        self.assertEqual(files, ["cn.log", "cn.log.1", "cn.log.2", "cn.log.3"])
        for name in files:
            size = os.path.getsize(os.path.join(run, name))
            self.assertLess(size, 2000 + 1024, name)  # one line past the rotation size
        with open(os.path.join(run, "cn.log.2"), "rb") as f:
            self.assertIn(b"closed: framing error", f.read())
        with open(os.path.join(run, "cn.log"), "rb") as f:
            self.assertIn(b"Server Shut Down.", f.read())  # logging went on to the end
        self.assertEqual(os.path.getsize(os.path.join(run, "stdout")), 0)

"""Start-up a user can trust: real ``twistd`` processes that cannot start.

Each must exit 1 with one clear line on its standard error, leave no traceback, no pid
file and no process serving nothing, and change nothing that was already there (the
running vRouter's shared-memory tables above all).
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.trial.unittest import SynchronousTestCase

from tests.agent.helpers import tempdir
from tests.agent.procs import SMALL_TABLES, TWISTD, Twistd
from tests.polling import wait_until
from vrtwist.sandesh import schema
from vrtwist.shmem import layout as L
from vrtwist.shmem.cli_bridge import dump_bridge

DP_LOCKED = "is in use by another forwarding extension (vrouter-dp or vrouter)"
AGENT_LOCKED = "is in use by another vrouter agent"


@contextmanager
def taken_port() -> Iterator[int]:
    """A loopback TCP port something already listens on."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]
    finally:
        s.close()


class Refusal:
    """What a refused ``twistd -n`` left: exit status, stderr lines, log, pid file."""

    def __init__(self, workdir: str, plugin: str, args: list[str]) -> None:
        self.pidfile = os.path.join(workdir, f"{plugin}.pid")
        self.log = os.path.join(workdir, f"{plugin}.log")
        r = subprocess.run([TWISTD, "-n", "--pidfile", self.pidfile, "--logfile", self.log,
                            plugin, *args], cwd=workdir, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=120)
        self.code = r.returncode
        self.stdout = r.stdout
        self.lines = r.stderr.splitlines()
        try:
            with open(self.log) as f:
                self.logged = f.read()
        except FileNotFoundError:
            self.logged = ""


class StartupFailureMixin:
    def refused(self, plugin: str, args: list[str], expected: str,
                usage: bool = False) -> Refusal:
        """Run ``plugin``; assert it exits 1 with one line containing ``expected``."""
        case: SynchronousTestCase = self  # type: ignore[assignment]
        r = Refusal(tempdir(self), plugin, args)
        out = "\n".join(r.lines) + r.stdout + r.logged
        case.assertEqual(r.code, 1, out)
        case.assertNotIn("Traceback", out)
        case.assertFalse(os.path.exists(r.pidfile), "pid file left behind")
        if usage:  # twistd prints the usage, then "twistd ...: <the option error>"
            case.assertIn(expected, r.stdout.splitlines()[-1])
        else:
            case.assertEqual(len(r.lines), 1, r.lines)
            case.assertIn(f"twistd {plugin}: ", r.lines[0])
            case.assertIn(expected, r.lines[0])
        return r


class BadOptionTests(StartupFailureMixin, SynchronousTestCase):
    """Endpoint strings are options: a bad one is a usage error, never a traceback."""

    def test_bad_endpoint_strings(self) -> None:
        for plugin, args, expected in [
            ("vspc", ["--listen", "tcp:notaport"], "--listen tcp:notaport: "),
            ("vrouter-control", ["--xmpp", "bogus"], "--xmpp bogus: "),
            ("vrouter", ["--rest", "tcp:x"], "--rest tcp:x: "),
            ("vrouter", ["--controller", "tcp:a:b:c:d:e"], "--controller tcp:a:b:c:d:e: "),
            ("vsock-relay", ["--listen", "tcp:x", "--backend", "tcp:127.0.0.1:1"],
             "--listen tcp:x: "),
            ("vpnkit-host", ["--data-connect", "tcp:1.2.3.4"], "--data-connect tcp:1.2.3.4: "),
            ("vpnkit-forwarder", ["--data-listen", "/tmp/x.sock", "--api", "nope:1"],
             "--api nope:1: "),
        ]:
            with self.subTest(plugin=plugin, args=args):
                self.refused(plugin, args, expected, usage=True)


class ListenFailureTests(StartupFailureMixin, SynchronousTestCase):
    """Every daemon whose listen fails says so in one line and exits 1."""

    def test_every_daemon(self) -> None:
        d = tempdir(self)
        missing = os.path.join(d, "no-such-dir")
        with taken_port() as port:
            busy = f"tcp:{port}:interface=127.0.0.1"
            in_use = f"cannot listen on 127.0.0.1:{port}: Address already in use"
            cases = [
                ("vrouter", ["--run-dir", os.path.join(d, "r1"), "--state-dir", d,
                             *SMALL_TABLES, "--rest", busy], in_use),
                ("vrouter-control", ["--xmpp", busy], in_use),
                ("vspc", ["--listen", busy], in_use),
                ("vsock-relay", ["--listen", f"unix:{missing}/relay.sock",
                                 "--backend", "tcp:127.0.0.1:1"],
                 f"cannot listen on {missing}/relay.sock: No such file or directory"),
                ("vpnkit-forwarder", ["--data-listen", f"{missing}/data.sock"],
                 f"cannot listen on {missing}/data.sock: No such file or directory"),
                ("vpnkit-host", ["--data-connect", f"{d}/nobody.sock", "--api", busy], in_use),
            ]
            for plugin, args, expected in cases:
                with self.subTest(plugin=plugin):
                    r = self.refused(plugin, args, expected)
                    self.assertIn(expected, r.logged)  # the log file says it too
        # the vrouter that failed took its run directory's locks with it
        self.assertFalse(os.path.exists(os.path.join(d, "r1", "dpdk_netlink")))

    def test_run_dir_not_a_directory(self) -> None:
        d = tempdir(self)
        afile = os.path.join(d, "afile")
        with open(afile, "w") as f:
            f.write("keep")
        for plugin, args in [("vrouter-dp", []), ("vrouter", ["--state-dir", d])]:
            with self.subTest(plugin=plugin):
                self.refused(plugin, ["--run-dir", afile, *args],
                             f"run directory {afile} is not a directory")
        below = os.path.join(afile, "sub")
        self.refused("vrouter-dp", ["--run-dir", below], f"run directory {below}: ")
        with open(afile) as f:
            self.assertEqual(f.read(), "keep")

    def test_run_dir_not_writable(self) -> None:
        d = tempdir(self)
        ro = os.path.join(d, "ro")
        os.mkdir(ro)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "su-ro", ro],
                       check=False, capture_output=True)
        if not os.path.ismount(ro):
            if os.geteuid() == 0:
                self.skipTest("cannot mount a read-only tmpfs here (root cannot be refused)")
            os.chmod(ro, 0o555)
        else:
            self.addCleanup(subprocess.run, ["umount", ro], check=False)
        r = self.refused("vrouter-dp", ["--run-dir", ro], f"run directory {ro} is not usable")
        self.assertEqual(os.listdir(ro), [], r.lines)


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class RunDirLockTests(StartupFailureMixin, SynchronousTestCase):
    """A second vRouter on a run directory in use changes nothing in it."""

    def _bridge_entries(self, run_dir: str) -> None:
        from tests.shmem.test_cli import _Session

        with _Session(run_dir) as c:
            r = c.request(schema.vr_nexthop_req(h_op=0, nhr_id=12, nhr_type=5, nhr_family=7))
            self.assertEqual(r[0].resp_code, 0)
            for i in range(3):
                r = c.request(schema.vr_route_req(
                    h_op=0, rtr_family=7, rtr_vrf_id=2, rtr_mac=[0, 0x5E, 0, 1, 0, i + 1],
                    rtr_nh_id=12, rtr_label=100 + i, rtr_label_flags=L.BE_LABEL_VALID))
                self.assertEqual(r[0].resp_code, 0)

    def _dump(self, run_dir: str) -> str:
        out = io.StringIO()
        self.assertEqual(dump_bridge(run_dir, 2, out), 0)
        return out.getvalue()

    def test_second_datapath_changes_nothing(self) -> None:
        d = tempdir(self)
        run = os.path.join(d, "run")
        first = Twistd(d, "vrouter-dp", ["--run-dir", run, *SMALL_TABLES], "dp")
        self.addCleanup(first.stop)
        sock = os.path.join(run, "dpdk_netlink")
        wait_until(lambda: os.path.exists(sock), "the first datapath's ksync socket")
        self._bridge_entries(run)
        before = {n: _sha(os.path.join(run, n)) for n in ("flow.shmem", "bridge.shmem")}
        dump = self._dump(run)
        self.assertEqual(dump.count(" 12 "), 3, dump)  # three entries, next hop 12
        listing = sorted(os.listdir(run))

        pid = f"(pid {first.proc.pid})"
        self.refused("vrouter-dp", ["--run-dir", run, "--flow-entries", "2048"], pid)
        r = self.refused("vrouter", ["--run-dir", run, "--state-dir", d, *SMALL_TABLES,
                                     "--rest", "tcp:0:interface=127.0.0.1"], DP_LOCKED)
        self.assertIn(pid, r.lines[0])

        after = {n: _sha(os.path.join(run, n)) for n in ("flow.shmem", "bridge.shmem")}
        self.assertEqual(after, before)
        self.assertEqual(self._dump(run), dump)  # the bridge entries are all still there
        self.assertEqual(sorted(os.listdir(run)), listing)  # not even a lock file more
        self.assertIsNone(first.proc.poll())
        self._bridge_entries_still_served(run)

    def _bridge_entries_still_served(self, run_dir: str) -> None:
        from tests.shmem.test_cli import _Session

        with _Session(run_dir) as c:
            got = c.request(schema.vr_route_req(
                h_op=1, rtr_family=7, rtr_vrf_id=2, rtr_mac=[0, 0x5E, 0, 1, 0, 2],
                rtr_index=-1))
            self.assertEqual((got[0].resp_code, got[1].rtr_label), (0, 101))

    def test_second_vrouter_beside_a_vrouter(self) -> None:
        """The case as filed: two ``twistd vrouter`` (embedded datapath) on one run dir."""
        d = tempdir(self)
        run = os.path.join(d, "run")
        first = Twistd(d, "vrouter", ["--run-dir", run, "--state-dir", d, *SMALL_TABLES,
                                      "--no-tap-check", "--rest", "tcp:0:interface=127.0.0.1"],
                       "agent")
        self.addCleanup(first.stop)
        first.rest_port()
        self._bridge_entries(run)
        before = {n: _sha(os.path.join(run, n)) for n in ("flow.shmem", "bridge.shmem")}
        dump = self._dump(run)
        listing = sorted(os.listdir(run))
        for datapath in ("embedded", "external"):
            with self.subTest(datapath=datapath):
                r = self.refused("vrouter", ["--run-dir", run, "--state-dir", d,
                                             "--datapath", datapath, *SMALL_TABLES,
                                             "--rest", "tcp:0:interface=127.0.0.1"],
                                 DP_LOCKED if datapath == "embedded" else AGENT_LOCKED)
                self.assertIn(f"(pid {first.proc.pid})", r.lines[0])
        self.refused("vrouter-dp", ["--run-dir", run, *SMALL_TABLES], DP_LOCKED)
        after = {n: _sha(os.path.join(run, n)) for n in ("flow.shmem", "bridge.shmem")}
        self.assertEqual(after, before)
        self.assertEqual(self._dump(run), dump)
        self.assertEqual(sorted(os.listdir(run)), listing)
        self.assertIsNone(first.proc.poll())
        self._bridge_entries_still_served(run)

    def test_external_agent_beside_its_datapath_but_not_two(self) -> None:
        d = tempdir(self)
        run = os.path.join(d, "run")
        dp = Twistd(d, "vrouter-dp", ["--run-dir", run, *SMALL_TABLES], "dp")
        self.addCleanup(dp.stop)
        wait_until(lambda: os.path.exists(os.path.join(run, "dpdk_netlink")), "the datapath")
        self._bridge_entries(run)
        agent = Twistd(d, "vrouter", ["--run-dir", run, "--state-dir", d, "--datapath",
                                      "external", "--no-tap-check",
                                      "--rest", "tcp:0:interface=127.0.0.1"], "agent")
        self.addCleanup(agent.stop)
        agent.rest_port()  # the agent shares the run directory with its datapath
        r = self.refused("vrouter", ["--run-dir", run, "--state-dir", d, "--datapath",
                                     "external", "--rest", "tcp:0:interface=127.0.0.1"],
                         AGENT_LOCKED)
        self.assertIn(f"(pid {agent.proc.pid})", r.lines[0])
        self.assertIsNone(agent.proc.poll())
        self.assertIsNone(dp.proc.poll())
        self._bridge_entries_still_served(run)


class RunDirLockUnitTests(SynchronousTestCase):
    """The lock itself, in one process (flock locks conflict between open files)."""

    def test_second_lock_refused_until_released(self) -> None:
        from vrtwist._process import RunDirLock, StartupError

        d = os.path.join(tempdir(self), "run")
        first = RunDirLock(d, "datapath", "vrouter-dp")
        self.addCleanup(first.release)
        e = self.assertRaises(StartupError, RunDirLock, d, "datapath", "vrouter-dp")
        self.assertEqual(str(e), f"run directory {d} is in use by another vrouter-dp "
                                 f"(pid {os.getpid()}); nothing was changed")
        other = RunDirLock(d, "agent", "vrouter agent")  # another role: its own lock
        other.release()
        first.release()
        self.assertFalse(first.held)
        again = RunDirLock(d, "datapath", "vrouter-dp")
        self.assertTrue(again.held)
        again.release()
        self.assertEqual(sorted(os.listdir(d)), ["agent.lock", "datapath.lock"])

    def test_guard_turns_a_failed_listen_into_one_line(self) -> None:
        from twisted.application.internet import StreamServerEndpointService
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import Factory
        from twisted.internet.testing import MemoryReactorClock

        from vrtwist._process import StartupError, StartupGuard, report_start_failure

        class Refusing(MemoryReactorClock):
            def listenTCP(self, port: int, factory: object, backlog: int = 50,
                          interface: str = "") -> object:
                from twisted.internet.error import CannotListenError
                raise CannotListenError(interface, port, OSError(98, "Address already in use"))

        reactor = Refusing()
        svc = StreamServerEndpointService(
            TCP4ServerEndpoint(reactor, 5269, interface="127.0.0.1"), Factory())
        guard = StartupGuard("vrouter-control", svc, reactor)
        e = self.assertRaises(StartupError, guard.privilegedStartService)
        self.assertEqual(str(e), "cannot listen on 127.0.0.1:5269: Address already in use")
        # later failures (after the reactor started) stop the reactor through the guard
        import vrtwist._process as process

        self.addCleanup(setattr, process, "_exit_code", process._exit_code)  # not pytest's
        self.assertTrue(report_start_failure(svc, OSError(13, "Permission denied", "/x")))
        self.assertEqual(guard.failed, "Permission denied: /x")
        self.assertEqual(process._exit_code, 1)
        self.assertFalse(report_start_failure(
            StreamServerEndpointService(TCP4ServerEndpoint(reactor, 1), Factory()),
            OSError(13, "Permission denied")))  # no guard above it: only the caller logs


class DetachedTests(SynchronousTestCase):
    """twistd without ``-n``: the parent's exit status is the daemon's start-up."""

    def _detached(self, d: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TWISTD, "--pidfile", os.path.join(d, "vr.pid"), "--logfile",
                               os.path.join(d, "vr.log"), "vrouter", *args], cwd=d,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)

    def _args(self, d: str, rest: str) -> list[str]:
        return ["--run-dir", os.path.join(d, "run"), "--state-dir", d, *SMALL_TABLES,
                "--rest", rest]

    def test_rest_port_taken_reaches_the_parent(self) -> None:
        d = tempdir(self)
        with taken_port() as port:
            r = self._detached(d, self._args(d, f"tcp:{port}:interface=127.0.0.1"))
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f"vrouter: cannot listen on 127.0.0.1:{port}: Address already in use",
                      r.stderr)
        self.assertNotIn("Traceback", r.stderr)
        pidfile = os.path.join(d, "vr.pid")
        wait_until(lambda: not os.path.exists(pidfile), "the daemon to exit")

    def test_success_is_reported_once_the_rest_port_listens(self) -> None:
        d = tempdir(self)
        r = self._detached(d, self._args(d, "tcp:0:interface=127.0.0.1"))
        pidfile = os.path.join(d, "vr.pid")
        with open(pidfile) as f:
            pid = int(f.read())
        self.addCleanup(self._stop, pid)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(d, "vr.log")) as f:
            self.assertIn("REST port API listening on", f.read())  # before the parent left

    def _stop(self, pid: int) -> None:
        import signal

        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False
        wait_until(gone, "the detached vrouter to stop")

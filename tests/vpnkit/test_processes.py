"""The user's entry points as real processes: twistd vpnkit-forwarder/-host and vpnkit-expose."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.internet import threads
from twisted.trial.unittest import SkipTest, TestCase

from tests.polling import wait_until

BIN = os.path.dirname(sys.executable)


def _tool(name: str) -> str:
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        raise SkipTest(f"{name} is not installed next to {sys.executable}")
    return path


def _echo_server() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s, s.getsockname()[1]


def _scenario(tmp: str) -> dict[str, str]:
    twistd, expose = _tool("twistd"), _tool("vpnkit-expose")
    data = os.path.join(tmp, "data.sock")
    api = "unix:" + os.path.join(tmp, "api.sock")
    procs = []
    out: dict[str, str] = {}
    srv, port = _echo_server()
    try:
        procs.append(
            subprocess.Popen(
                [
                    twistd,
                    "-n",
                    "--pidfile=",
                    "--logfile",
                    os.path.join(tmp, "fwd.log"),
                    "vpnkit-forwarder",
                    "--data-listen",
                    data,
                ]
            )
        )
        # up to 30 s for twistd to start on a loaded machine
        wait_until(lambda: os.path.exists(data), "the forwarder's data socket", 30)
        procs.append(
            subprocess.Popen(
                [
                    twistd,
                    "-n",
                    "--pidfile=",
                    "--logfile",
                    os.path.join(tmp, "host.log"),
                    "vpnkit-host",
                    "--data-connect",
                    data,
                    "--api",
                    api,
                ]
            )
        )
        wait_until(lambda: os.path.exists(os.path.join(tmp, "api.sock")), "the host's API", 30)
        r = subprocess.run(
            [expose, "--api", api, "expose", f"tcp:127.0.0.1:0:127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        out["expose"] = r.stdout + r.stderr
        granted = int(r.stdout.strip().split(":")[2])
        c = socket.create_connection(("127.0.0.1", granted), timeout=10)
        conn, _ = srv.accept()
        c.sendall(b"through two processes")
        conn.sendall(conn.recv(100))
        out["echo"] = c.recv(100).decode()
        c.close()
        conn.close()
        out["list"] = subprocess.run(
            [expose, "--api", api, "list"], capture_output=True, text=True, timeout=20
        ).stdout
        time.sleep(0.2)
        out["dump"] = subprocess.run(
            [expose, "--api", api, "dump"], capture_output=True, text=True, timeout=20
        ).stdout
        r = subprocess.run(
            [expose, "--api", api, "expose", f"tcp:127.0.0.1:{granted}:127.0.0.1:1"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        out["in_use"] = f"{r.returncode} {r.stderr}"
        # -i: the forward lives as long as the command (Go's vpnkit-expose-port)
        inter = subprocess.Popen(
            [expose, "--api", api, "expose", "-i", f"tcp:127.0.0.1:0:127.0.0.1:{port}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert inter.stdout is not None
        out["interactive"] = inter.stdout.readline()
        out["list_during"] = subprocess.run(
            [expose, "--api", api, "list"], capture_output=True, text=True, timeout=20
        ).stdout
        inter.send_signal(signal.SIGTERM)
        out["interactive"] += inter.communicate(timeout=20)[0]
        out["list_after"] = subprocess.run(
            [expose, "--api", api, "list"], capture_output=True, text=True, timeout=20
        ).stdout
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(20) for p in procs]
        out["codes"] = " ".join(map(str, codes))
        srv.close()
        for name in ("fwd.log", "host.log"):
            try:
                with open(os.path.join(tmp, name)) as f:
                    out[name] = f.read()
            except OSError:
                out[name] = ""
    return out


class ProcessTests(TestCase):
    timeout = 90

    async def test_twistd_pair_and_cli(self) -> None:
        tmp = tempfile.mkdtemp(prefix="vpnkit-proc-")
        self.addCleanup(shutil.rmtree, tmp, True)
        out = await threads.deferToThread(_scenario, tmp)
        self.assertIn("exposed tcp:127.0.0.1:", out["expose"])
        self.assertEqual(out["echo"], "through two processes")
        self.assertIn("tcp:127.0.0.1:", out["list"])
        self.assertIn("live channels", out["dump"])
        self.assertIn("channels_opened=1", out["dump"])
        self.assertTrue(out["in_use"].startswith("1 "), out["in_use"])
        self.assertIn("is already exposed there", out["in_use"])
        self.assertIn("unexposed", out["interactive"])
        self.assertEqual(len(out["list_during"].splitlines()), 2)
        self.assertEqual(len(out["list_after"].splitlines()), 1)
        # twistd re-raises SIGTERM on itself after a clean shutdown
        self.assertTrue(set(out["codes"].split()) <= {"0", "-15"}, out["codes"])
        self.assertIn("Server Shut Down", out["host.log"])
        self.assertIn("multiplexer online", out["host.log"])
        self.assertIn("multiplexer online", out["fwd.log"])
        self.assertNotIn("Traceback", out["host.log"] + out["fwd.log"])

"""Subprocess helpers for end-to-end agent tests: twistd vrouter / vrouter-dp.

The daemons listen on port 0 and the tests read the port back from their log.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

from tests.polling import wait_until

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
PORT_CONTROL = os.path.join(BIN, "vrouter-port-control")
SMALL_TABLES = ["--flow-entries", "1024", "--bridge-entries", "1024"]
_REST_RE = re.compile(r"REST port API listening on .*port=(\d+)")
_INTROSPECT_RE = re.compile(r"introspect listening on .*port=(\d+)")
#: Twisted's own line for a TCP port the control node's factory listens on
CONTROL_PORT_RE = re.compile(r"ControlNodeFactory .*starting on (\d+)")
#: the agent's line for its REST listener
REST_PORT_RE = _REST_RE


def unused_tcp_port() -> int:
    """A loopback TCP port nothing listens on right now, for a program that cannot listen
    on port 0 and say which port it got (the only one: the prometheus server). Racy by
    nature: prefer ``tcp:0`` and :func:`logged_port`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def logged_port(path: str, pattern: re.Pattern[str]) -> int | None:
    """The port a daemon told to listen on port 0 wrote in its log ``path`` (the latest
    one: a restarted daemon appends), or None while it has not listened yet."""
    try:
        with open(path, errors="replace") as f:
            found = pattern.findall(f.read())
    except FileNotFoundError:
        return None
    return int(found[-1]) if found else None


class Twistd:
    """One ``twistd -n <plugin>`` subprocess with its log file."""

    def __init__(self, workdir: str, plugin: str, args: list[str], name: str) -> None:
        self.log = os.path.join(workdir, f"{name}.log")
        self.argv = [TWISTD, "-n", "--pidfile=", "--logfile", self.log, plugin, *args]
        self.proc = subprocess.Popen(self.argv, cwd=workdir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def text(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def rest_port(self, timeout: float = 30.0) -> int:
        def found() -> int | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"twistd exited {self.proc.returncode}:\n{self.text()}")
            m = _REST_RE.search(self.text())
            return int(m.group(1)) if m else None
        try:
            port = wait_until(found, "the REST port", timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.text()}") from None
        assert port is not None  # wait_until returns only a true value
        return port

    def introspect_port(self, timeout: float = 30.0) -> int:
        def found() -> int | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"twistd exited {self.proc.returncode}:\n{self.text()}")
            m = _INTROSPECT_RE.search(self.text())
            return int(m.group(1)) if m else None
        port = wait_until(found, "the introspect port", timeout)
        assert port is not None  # wait_until returns only a true value
        return port

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def agent_args(run_dir: str, state_dir: str, *extra: str) -> list[str]:
    return ["--run-dir", run_dir, "--state-dir", state_dir,
            "--rest", "tcp:0:interface=127.0.0.1", "--introspect", "tcp:0:interface=127.0.0.1",
            *SMALL_TABLES, *extra]


def port_control(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PORT_CONTROL, *args], capture_output=True, text=True, timeout=60)

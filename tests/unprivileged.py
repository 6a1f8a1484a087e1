"""Try things as the unprivileged user ``nobody``: the local attacker of the access tests.

A child Python runs a small snippet after ``setgid``/``setuid`` (and, when asked, with
one supplementary group) and reports ``ok`` or the errno name it met.  Tests compare that
with what root, the owner, gets for the same path.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

from twisted.trial.unittest import SkipTest

__all__ = ["as_nobody", "connect_as_nobody", "need_root", "open_as_nobody", "world_traversable"]

_SNIPPET = r"""
import errno, os, socket, sys
kind, path = sys.argv[1], sys.argv[2]
try:
    if kind == "connect":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        s.close()
    elif kind == "sendto":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(b"x", path)
        s.close()
    elif kind == "read":
        with open(path, "rb") as f:
            f.read(1)
    elif kind == "list":
        os.listdir(path)
    print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"""


def _python() -> str:
    """A Python ``nobody`` can run: the system one (a venv under /root may be closed)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            return candidate
    return sys.executable


def need_root() -> None:
    """Skip unless root: only root can become ``nobody`` to play the attacker."""
    if os.geteuid() != 0:
        raise SkipTest("needs root to run a subprocess as the unprivileged user nobody")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        raise SkipTest("no user 'nobody' on this machine") from None


def as_nobody(kind: str, path: str, group: int | None = None) -> str:
    """``ok`` or the errno name (``EACCES``...) that ``nobody`` meets doing ``kind`` on ``path``."""
    pw = pwd.getpwnam("nobody")

    def drop() -> None:
        os.setgroups([] if group is None else [group])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    try:
        out = subprocess.run(
            [_python(), "-c", _SNIPPET, kind, path],
            preexec_fn=drop,
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
            check=False,
        )
    except PermissionError:
        raise SkipTest(f"nobody may not run {_python()} here") from None
    if out.returncode != 0:
        raise AssertionError(f"child as nobody failed: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


def connect_as_nobody(path: str, group: int | None = None) -> str:
    return as_nobody("connect", path, group)


def open_as_nobody(path: str, group: int | None = None) -> str:
    return as_nobody("read", path, group)


def world_traversable(directory: str) -> None:
    """0755 on a test's temp directory (made under ``/tmp``, which anyone may traverse).

    Otherwise ``mkdtemp``'s 0700 would stop ``nobody`` before the file under test, and
    the test would pass for the wrong reason.
    """
    os.chmod(directory, 0o755)

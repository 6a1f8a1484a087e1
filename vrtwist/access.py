"""Who may use a daemon's unix sockets and private files: explicit modes, never the umask's.

A unix socket is reached by anyone who may write to its file, so its mode is an access
rule.  Twisted's ``unix:`` listener binds with the umask's mode and then ``chmod``\\ s to
``mode`` (0666 unless told): between the two, and for ever when the caller keeps the
default, any local user may connect.  Here the mode is chosen by the daemon:

* 0600 (owner only), or 0660 when the operator names a group (``--socket-group``);
* race-free: on Linux ``bind(2)`` gives the file the socket inode's mode (masked by the
  umask), so the socket is ``fchmod``\\ ed to 0600 *before* ``bind``; it never exists
  with more than the owner's bits.  The group is set (``chown``) before the group bits
  are added, so no other group ever holds them either.

:func:`bind_unix` does it for any socket (stream or datagram);
``vrtwist.unixlisten`` wraps it as Twisted endpoints for the strings users pass.

Files that hold flows, addresses or ports (the shared-memory tables, the agent's port
files) follow the same rule with :func:`private_dir` and :func:`create_private`: 0600 (0640
with the group), directories 0700 (0750), set with ``fchmod`` whatever the umask.
"""

from __future__ import annotations

import grp
import os
import socket
from typing import Any

__all__ = [
    "GROUP_MODE",
    "OWNER_MODE",
    "SOCKET_GROUP_OPTION",
    "SocketAccess",
    "bind_unix",
    "create_private",
    "is_filesystem_path",
    "open_after_bind",
    "private_dir",
    "restrict_before_bind",
]

#: Mode of a socket (or private file) only its owner may use.
OWNER_MODE = 0o600
#: Mode when a group is configured: owner and that group.
GROUP_MODE = 0o660

#: The ``usage.Options`` parameter every daemon with a unix listener adds.
SOCKET_GROUP_OPTION: list[Any] = [
    "socket-group",
    None,
    None,
    "group (name or number) allowed to use this daemon's unix sockets: they get mode "
    "0660 with that group instead of 0600 (owner only)",
]

class SocketAccess:
    """Who may use a daemon's unix sockets: the owner, plus ``gid`` when one is set."""

    def __init__(self, gid: int | None = None) -> None:
        self.gid = gid

    @property
    def mode(self) -> int:
        return OWNER_MODE if self.gid is None else GROUP_MODE

    @property
    def file_mode(self) -> int:
        """Private files: the group (when set) may read, never write."""
        return 0o600 if self.gid is None else 0o640

    @property
    def dir_mode(self) -> int:
        return 0o700 if self.gid is None else 0o750

    @classmethod
    def from_group(cls, group: str | None) -> SocketAccess:
        """``None``, a group name or a number; ``ValueError`` names an unknown group."""
        if group is None or group == "":
            return cls(None)
        if group.isdigit():
            return cls(int(group))
        try:
            return cls(grp.getgrnam(group).gr_gid)
        except KeyError:
            raise ValueError(f"unknown group {group!r}") from None

    def __repr__(self) -> str:
        return f"SocketAccess(mode={self.mode:#o}, gid={self.gid})"


def private_dir(path: str | os.PathLike[str], access: SocketAccess | None = None) -> None:
    """Create ``path`` (and parents) if needed and give it exactly ``access.dir_mode``.

    Only for directories the daemon owns outright; parents it creates get the same mode.
    """
    access = access or SocketAccess()
    os.makedirs(path, mode=access.dir_mode, exist_ok=True)
    if access.gid is not None:
        os.chown(path, -1, access.gid)
    os.chmod(path, access.dir_mode)


def create_private(
    path: str | os.PathLike[str], access: SocketAccess | None = None, flags: int = 0
) -> int:
    """Open a new ``path`` for writing with exactly ``access.file_mode``; returns the fd.

    ``O_EXCL | O_NOFOLLOW``: never an existing file (whose old mode, or old readers, would
    carry over) and never through a symlink.  The group is set before its read bit.
    """
    access = access or SocketAccess()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | flags, 0o600)
    try:
        if access.gid is not None:
            os.fchown(fd, -1, access.gid)
        os.fchmod(fd, access.file_mode)
    except OSError:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def is_filesystem_path(path: str | bytes) -> bool:
    return bool(path) and path[:1] not in ("\0", b"\0")


def restrict_before_bind(sock: socket.socket) -> None:
    """Owner-only bits on the socket inode, which ``bind(2)`` copies to the file."""
    os.fchmod(sock.fileno(), OWNER_MODE)


def open_after_bind(path: str | bytes, mode: int, gid: int | None) -> None:
    """Group first, then the bits: the file never grants more than ``mode`` to anyone."""
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, mode)


def bind_unix(
    sock: socket.socket, path: str | bytes, mode: int = OWNER_MODE, gid: int | None = None
) -> None:
    """``sock.bind(path)`` (stream or datagram) leaving the file with exactly ``mode``.

    Abstract addresses (leading NUL) have no file and are bound as they are.
    """
    if not is_filesystem_path(path):
        sock.bind(path)
        return
    restrict_before_bind(sock)
    sock.bind(path)
    try:
        open_after_bind(path, mode, gid)
    except OSError:
        os.unlink(path)
        raise



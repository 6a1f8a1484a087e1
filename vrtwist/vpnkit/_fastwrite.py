"""Send at once when a Twisted socket transport has nothing queued.

Twisted's ``FileDescriptor.write`` only appends to a buffer and sends on the next reactor
iteration (after another ``epoll_wait``).  On a relay every hop pays that delay, once
per direction, so we try the ``send``/``sendmsg`` right away when the transport's buffer
is empty (the order of bytes is therefore unchanged) and hand only what the kernel did
not take to Twisted, which keeps doing the buffering, producer pausing and error paths.
"""

from __future__ import annotations

import socket
from typing import Any

from vrtwist._twisted_compat import (
    close_write_now,
    disconnector,
    plain_unix_reads,
    write_closed,
    write_idle,
)
from vrtwist.logfields import Logger

__all__ = [
    "adapt_read_size",
    "link_buffers",
    "plain_reads",
    "read_now",
    "send_now",
    "shutdown_now",
]

_log = Logger()

_IOV_MAX = 1024
_MSG_FAMILIES = (socket.AF_UNIX, getattr(socket, "AF_VSOCK", socket.AF_UNIX))

#: Twisted reads 64 KiB per readiness event; bulk transfers grow this up to MAX_READ.
BASE_READ = 65536
MAX_READ = 1 << 20


def adapt_read_size(t: Any, n: int) -> None:
    """Grow a transport's read size while reads fill it; drop back once they do not.

    Bigger reads mean fewer trips through the reactor per byte for bulk transfers; small
    messages keep the 64 KiB buffer (a bigger one costs an mmap per read).
    """
    size = t.bufferSize
    if n >= size:
        if size < MAX_READ:
            t.bufferSize = size * 2
    elif size > BASE_READ and n < size // 4:
        t.bufferSize = BASE_READ


def _as_bytes(bufs: list[Any]) -> list[bytes]:
    return [b if type(b) is bytes else bytes(b) for b in bufs]


def send_now(t: Any, bufs: list[Any]) -> None:
    """Send ``bufs`` (bytes or memoryviews) in order, at once if nothing is queued."""
    sock = getattr(t, "socket", None)
    if sock is None or not write_idle(t):
        t.writeSequence(_as_bytes(bufs))
        return
    try:
        if len(bufs) == 1:
            n = sock.send(bufs[0])
        elif sock.family in _MSG_FAMILIES and len(bufs) <= _IOV_MAX:
            # A frame header and its payload without joining them: on a unix socket
            # sendmsg() saves the copy (64 KiB: 6.3 us of CPU against 11.1 us for a
            # join + send(), bench note in docs/benchmarks.md).
            n = sock.sendmsg(bufs)
        else:
            # TCP links: one joined send (sendmsg with several buffers measured slower).
            bufs = [b"".join(bufs)]
            n = sock.send(bufs[0])
    except (BlockingIOError, InterruptedError):
        n = 0
    except OSError:
        t.writeSequence(_as_bytes(bufs))  # Twisted's own path reports the error
        return
    if n == 0:
        t.writeSequence(_as_bytes(bufs))
        return
    rest: list[bytes] = []
    for i, b in enumerate(bufs):
        if n >= len(b):
            n -= len(b)
            continue
        rest.append(b[n:] if n else b)
        rest.extend(bufs[i + 1 :])
        break
    if rest:
        t.writeSequence(_as_bytes(rest))


def shutdown_now(t: Any) -> None:
    """Half-close a socket transport at once when nothing is queued.

    Twisted's ``loseWriteConnection`` waits for the next reactor iteration (a write event)
    even with an empty buffer; a relayed EOF is on the critical path of every short
    connection, so send the FIN now and leave the transport in the state its own
    ``doWrite`` would have left it in.
    """
    if write_closed(t):
        return  # done: Twisted's path would now try an empty send and fail with EPIPE
    if getattr(t, "socket", None) is None:
        t.loseWriteConnection()
        return
    close_write_now(t)


def read_now(reactor: Any, t: Any) -> None:
    """Read a socket transport once, now, as the reactor would on a read event.

    Used right after accepting a client: its first bytes or its FIN are often already
    queued, and handling them in the same turn lets them leave with the channel's Open
    in one write instead of one more reactor iteration and one more link send.  Costs
    one ``recv`` that returns EAGAIN when nothing is there.
    """
    disconnect = disconnector(reactor)
    if disconnect is None or getattr(t, "socket", None) is None or not t.connected:
        return
    if t.disconnecting or t.fileno() == -1:
        return
    try:
        why = t.doRead()
    except Exception as e:  # noqa: BLE001 - as the reactor does: log, then disconnect
        _log.failure("reading {transport}", transport=repr(t))
        why = e
    if why:
        disconnect(t, why, True)


def plain_reads(t: Any) -> None:
    """Read a unix-socket link with ``recv`` instead of Twisted's ``recvmsg`` wrapper.

    Twisted's unix transports read through ``recvmsg`` to receive passed file
    descriptors, which the link never carries; the wrapper costs a few microseconds
    per read, on every hop of every message.
    """
    plain_unix_reads(t)


#: Socket buffers asked for on a unix-socket link (the kernel caps it at wmem_max).
LINK_SOCKET_BUFFER = 4 * 1024 * 1024


def link_buffers(t: Any, size: int = LINK_SOCKET_BUFFER) -> None:
    """Let a unix-socket link queue several grown windows, not 208 KiB.

    A unix stream socket holds only the sender's ``SO_SNDBUF`` (``wmem_default``), so with
    channels whose windows grew to 1 MiB the sender would block (and wake the reader
    again) several times per window.  TCP and vsock links autotune and are left alone.
    """
    sock = getattr(t, "socket", None)
    if not isinstance(sock, socket.socket) or sock.family != socket.AF_UNIX:
        return
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            if sock.getsockopt(socket.SOL_SOCKET, opt) < size:
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass  # the default still works, only with more wake-ups

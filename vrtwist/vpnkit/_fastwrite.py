"""Send at once when a Twisted socket transport has nothing queued.

Twisted's ``FileDescriptor.write`` only appends to a buffer and sends on the next reactor
iteration (after another ``epoll_wait``).  On a relay every hop pays that delay, once
per direction, so we try the ``send``/``sendmsg`` right away when the transport's buffer
is empty (the order of bytes is therefore unchanged) and hand only what the kernel did
not take to Twisted, which keeps doing the buffering, producer pausing and error paths.
``sendmsg`` takes a Data frame's header and payload pieces without joining them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["send_now"]


def _as_bytes(bufs: list[Any]) -> list[bytes]:
    return [b if type(b) is bytes else bytes(b) for b in bufs]


def send_now(t: Any, bufs: list[Any]) -> None:
    """Send ``bufs`` (bytes or memoryviews) in order, at once if nothing is queued."""
    sock = getattr(t, "socket", None)
    if (
        sock is None
        or t.dataBuffer
        or t._tempDataLen
        or not t.connected
        or t.disconnecting
        or t._writeDisconnecting
    ):
        t.writeSequence(_as_bytes(bufs))
        return
    try:
        n = sock.send(bufs[0]) if len(bufs) == 1 else sock.sendmsg(bufs)
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

"""Zero-copy splicing of two connected socket transports through kernel pipes (Linux).

A byte-for-byte relay spends its time copying: ``recv`` into Python, ``send`` back
out. ``splice(2)`` moves pages socket -> pipe -> socket inside the kernel. This
module takes over the ``doRead``/``doWrite`` of two Twisted socket transports
(TCP, unix, vsock: all ``tcp.Connection``) and runs one pipe per direction:

* readable source: splice from it into its pipe, then drain the pipe into the
  destination; if the destination would block, wait for it to become writable
  and keep reading the source only while the pipe has room (that is the
  backpressure: kernel buffers bounded by the pipe, nothing in Python);
* EOF: once the pipe is drained, ``shutdown(SHUT_WR)`` the destination
  (half-close); when both directions are done, both transports are closed;
* an error on either socket closes both.

Only TCP and unix stream sockets are spliced (both have ``splice_read``); for
anything else (vsock, TLS) :func:`trySplice` returns None before touching the
transports and the caller keeps the ordinary producer/consumer path.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp

from vrtwist._twisted_compat import nothing_queued, override_io, restore_io
from vrtwist.logfields import Logger

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
# vsock sockets have no splice_read of their own; keep them on the ordinary path.
_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ETIMEDOUT)


def spliceable(transport: Any) -> bool:
    """A plain socket transport (no TLS layer) that splice can work on."""
    return (
        hasattr(os, "splice")
        and isinstance(transport, tcp.Connection)
        and not getattr(transport, "TLS", False)
        and getattr(transport, "connected", False)
        and not getattr(transport, "disconnecting", False)
        and nothing_queued(transport)
        and getattr(transport.socket, "family", None) in _FAMILIES
    )


class _Direction:
    """One direction: ``src`` -> pipe -> ``dst``."""

    def __init__(self, pair: SplicePair, src: Any, dst: Any, eof: bool) -> None:
        self.pair = pair
        self.src = src
        self.dst = dst
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.w, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: keep the default 64 KiB
        self.capacity = fcntl.fcntl(self.w, 1032)  # F_GETPIPE_SZ
        self.inPipe = 0
        self.eof = eof
        self.done = False
        self.waitingWrite = False
        self.moved = 0

    def preload(self, data: bytes) -> bool:
        """Queue bytes that were read before the switch (header, early data)."""
        if len(data) > self.capacity - self.inPipe:
            return False
        view = memoryview(data)
        while view:
            n = os.write(self.w, view)
            view = view[n:]
            self.inPipe += n
        return True

    def readable(self) -> None:
        if self.done or self.eof:
            self.src.stopReading()
            return
        room = self.capacity - self.inPipe
        if room <= 0:
            self.src.stopReading()  # flush() starts reading again once the pipe drains
            return
        try:
            n = os.splice(self.src.fileno(), self.w, room, flags=_FLAGS)
        except BlockingIOError:
            if self.waitingWrite:
                # the pipe is full in slots (a slot per fragment, not per byte) while
                # the destination is full too: wait for the destination
                self.src.stopReading()
            return
        except OSError as e:
            self.pair.fail(e)
            return
        if n == 0:
            self.eof = True
            self.src.stopReading()
        else:
            self.inPipe += n
            self.moved += n
            self.pair.counted(self, n)
        self.flush()

    def flush(self) -> None:
        while self.inPipe:
            try:
                m = os.splice(self.r, self.dst.fileno(), self.inPipe, flags=_FLAGS)
            except BlockingIOError:
                # Destination full: wait until it is writable. Keep reading the
                # source while the pipe has room (the pipe is the bound), so both
                # sides do more per wake-up; stop once it is full.
                if not self.waitingWrite:
                    self.waitingWrite = True
                    self.dst.startWriting()
                if self.inPipe >= self.capacity:
                    self.src.stopReading()
                return
            except OSError as e:
                self.pair.fail(e)
                return
            self.inPipe -= m
        if self.waitingWrite:
            self.waitingWrite = False
            self.dst.stopWriting()
        if self.eof:
            if not self.done:
                self.done = True
                try:
                    self.dst.socket.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self.pair.direction_done()
        elif not self.pair.finished:
            self.src.startReading()

    def writable(self) -> None:
        self.flush()

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class SplicePair:
    """Owns both transports' I/O until both directions end or one fails."""

    _log = Logger()

    def __init__(
        self,
        a: Any,
        b: Any,
        aEOF: bool,
        onBytes: Callable[[bool, int], None],
        onDone: Callable[[BaseException | None], None],
        onHalfDone: Callable[[], None] | None = None,
    ) -> None:
        self.a, self.b = a, b
        self.onBytes = onBytes
        self.onDone = onDone
        self.onHalfDone = onHalfDone
        self.finished = False
        self.ab = _Direction(self, a, b, aEOF)  # caller -> backend
        self.ba = _Direction(self, b, a, False)  # backend -> caller

    def install(self) -> None:
        for t in (self.a, self.b):
            # closing either transport from outside ends the splice first, so that
            # Twisted's own close path runs with its own doRead/doWrite
            override_io(t, loseConnection=self._closer(t, "loseConnection"),
                        abortConnection=self._closer(t, "abortConnection"))
        override_io(self.a, doRead=self.ab.readable, doWrite=self.ba.writable)
        override_io(self.b, doRead=self.ba.readable, doWrite=self.ab.writable)
        self.a.stopWriting()
        self.b.stopWriting()
        if self.ab.inPipe or self.ab.eof:
            self.ab.flush()
        else:
            self.a.startReading()
        if not self.finished:
            self.b.startReading()

    def counted(self, direction: _Direction, n: int) -> None:
        self.onBytes(direction is self.ab, n)

    def _closer(self, t: Any, name: str) -> Callable[..., Any]:
        def close(*args: Any) -> Any:
            self._finish(None)
            return getattr(t, name)(*args)

        return close

    def stop(self) -> None:
        """End the splice now (both transports get closed by ``onDone``)."""
        self._finish(None)

    def direction_done(self) -> None:
        if self.ab.done and self.ba.done:
            self._finish(None)
        elif self.onHalfDone is not None:
            self.onHalfDone()

    def fail(self, e: OSError) -> None:
        if e.errno not in _GONE:
            self._log.warn("splice failed: {e}", e=e)
        self._finish(e)

    def _finish(self, reason: BaseException | None) -> None:
        if self.finished:
            return
        self.finished = True
        for t in (self.a, self.b):
            restore_io(t, ("doRead", "doWrite", "loseConnection", "abortConnection"))
            t.stopReading()
            t.stopWriting()
        self.ab.close()
        self.ba.close()
        self.onDone(reason)


def trySplice(
    a: Any,
    b: Any,
    preloadAB: bytes,
    aEOF: bool,
    onBytes: Callable[[bool, int], None],
    onDone: Callable[[BaseException | None], None],
    onHalfDone: Callable[[], None] | None = None,
) -> SplicePair | None:
    """Start splicing ``a`` <-> ``b`` if both can; None means "use the ordinary path"."""
    if not (spliceable(a) and spliceable(b)):
        return None
    pair = SplicePair(a, b, aEOF, onBytes, onDone, onHalfDone)
    if preloadAB and not pair.ab.preload(preloadAB):
        pair.ab.close()
        pair.ba.close()
        return None
    pair.install()
    return pair

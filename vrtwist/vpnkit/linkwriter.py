"""How a multiplexer's frames reach its link: corked batches and lazy acknowledgements.

Each frame costs the receiver a wake-up and us a syscall, so frames are gathered while
the link is *corked* (around the handling of one link read, or a splice's EOF) and go
out with one ``sendmsg`` at uncork.  A Close that only acknowledges the peer's Close is
*lazy*: nobody waits for it, so it waits (``LAZY_CLOSE_DELAY`` at most) for the next
frame to share its write with.  The writer knows frames, not channels: the multiplexer
decides what to send and in which order.
"""

from __future__ import annotations

from typing import Any, Protocol

from vrtwist.vpnkit._fastwrite import send_now

__all__ = ["CORK_LIMIT", "LAZY_CLOSE_DELAY", "LinkWriter"]

#: While corked, frames are gathered and sent with one sendmsg up to this many bytes.
CORK_LIMIT = 256 * 1024
#: A Close that only acknowledges the peer's (the channel is over on both sides) waits
#: this long for another frame to share a link write with (the next Open, usually).
LAZY_CLOSE_DELAY = 0.001


class _Counts(Protocol):
    frames_out: int
    windows_skipped: int


class _Closing(Protocol):
    recv_close: bool


class LinkWriter:
    """Frames to one link transport, batched while corked; lazy frames held back.

    ``live`` is the multiplexer's say: frames written while it is false are dropped
    (the link is gone or failing).  ``eager`` counts the corked frames somebody waits
    for; a cork holding only lazy ones does not wake the peer at uncork.
    """

    def __init__(self, stats: _Counts, clock: Any = None) -> None:
        self.stats = stats
        #: IReactorTime for the lazy frames (default: the transport's reactor)
        self.clock: Any = clock
        self.transport: Any = None
        self.live = False
        #: called on every link write (the busy poller's ``kick``)
        self.on_activity: Any = None
        self.cork = 0
        self.corked: list[bytes | memoryview] = []
        self.corked_len = 0
        self.eager = 0
        #: initial Window frames still in ``corked``, by channel id
        self.initial: dict[int, bytes] = {}
        #: channels whose (eager) Close is in ``corked``
        self.corked_closes: list[_Closing] = []
        #: frames that may wait for the next write (acknowledging Closes)
        self.lazy: list[bytes | memoryview] = []
        self.lazy_call: Any = None

    def _ready(self) -> bool:
        return self.live and self.transport is not None

    # corking ---------------------------------------------------------------------------

    def uncork(self) -> None:
        self.cork -= 1
        if self.cork <= 0:
            self.cork = 0
            self.send_corked()

    def send_corked(self) -> None:
        """Send what the cork gathered in one write (lazy-only batches keep waiting)."""
        if self.on_activity is not None:
            self.on_activity()
        if self.initial:
            self.initial.clear()
        bufs, self.corked = self.corked, []
        eager, self.eager = self.eager, 0
        self.corked_len = 0
        if self.corked_closes:
            # A Close written before the peer's Close arrived later in the same read
            # is now only an acknowledgement.
            eager -= sum(1 for ch in self.corked_closes if ch.recv_close)
            self.corked_closes.clear()
        if bufs and not eager:
            # Only acknowledging Closes: let them wait for company (see write_lazy).
            if self.live:
                self.lazy.extend(bufs)
                self._arm_lazy()
            return
        if self.lazy and bufs:
            bufs[0:0] = self.take_lazy()
        if bufs and self._ready():
            send_now(self.transport, bufs)

    # writing ---------------------------------------------------------------------------

    def write(self, frame: bytes) -> None:
        """One control frame, now or at uncork, after any lazy frames still waiting."""
        if not self._ready():
            return
        self.stats.frames_out += 1
        if self.cork:
            self.corked.append(frame)
            self.corked_len += len(frame)
            self.eager += 1
            return
        if self.on_activity is not None:
            self.on_activity()
        if self.lazy:
            send_now(self.transport, [*self.take_lazy(), frame])
        else:
            send_now(self.transport, [frame])

    def write_data(self, chunks: list[bytes | memoryview], n: int) -> None:
        """One Data frame (header first, ``n`` payload bytes); a full cork goes out."""
        if self.cork:
            self.corked.extend(chunks)
            self.corked_len += n
            self.eager += 1
            if self.corked_len >= CORK_LIMIT:
                self.send_corked()
        else:
            if self.lazy:
                chunks[0:0] = self.take_lazy()
            send_now(self.transport, chunks)

    def unwrite(self, frame: bytes) -> None:
        """Take back a frame still waiting in the cork (the peer's Shutdown made it moot).

        The peer has half-closed the channel in the same read that opened it: it will
        never send Data, so our initial Window would only cost both sides a wake-up.
        """
        for i, f in enumerate(self.corked):
            if f is frame:
                del self.corked[i]
                self.corked_len -= len(frame)
                self.eager -= 1
                self.stats.frames_out -= 1
                self.stats.windows_skipped += 1
                return

    # lazy frames -----------------------------------------------------------------------

    def write_lazy(self, frame: bytes) -> None:
        """Queue a frame that nobody waits for until the next write, or a moment later.

        Used for a Close answering the peer's Close: the channel is over on both sides,
        the frame only lets the peer free the id.  Sent in front of the next frame (so
        the order on the link is unchanged) or after ``LAZY_CLOSE_DELAY``; in a stream of
        short connections it rides with the next Open instead of waking the peer alone.
        """
        if not self._ready():
            return
        self.stats.frames_out += 1
        if self.cork:
            # In order with what this read already wrote; held back at uncork only if
            # nothing else is going out.
            self.corked.append(frame)
            self.corked_len += len(frame)
            return
        self.lazy.append(frame)
        self._arm_lazy()

    def _arm_lazy(self) -> None:
        if self.lazy_call is None:
            self.lazy_call = self._clock().callLater(LAZY_CLOSE_DELAY, self.flush_lazy)

    def _clock(self) -> Any:
        if self.clock is not None:
            return self.clock
        t: Any = self.transport
        if getattr(t, "reactor", None) is not None:
            return t.reactor
        raise RuntimeError("Multiplexer has no clock: pass clock= (an IReactorTime)")

    def take_lazy(self) -> list[bytes | memoryview]:
        frames, self.lazy = self.lazy, []
        if self.lazy_call is not None:
            if self.lazy_call.active():
                self.lazy_call.cancel()
            self.lazy_call = None
        return frames

    def flush_lazy(self) -> None:
        self.lazy_call = None
        if self.lazy and self._ready():
            if self.cork:
                self.corked[0:0] = self.take_lazy()
                self.eager += 1  # due now: they go out at uncork
            else:
                send_now(self.transport, self.take_lazy())

    def drop(self) -> None:
        """The link is gone: forget the lazy frames and their timer."""
        self.live = False
        self.lazy.clear()
        self.corked_closes.clear()
        if self.lazy_call is not None and self.lazy_call.active():
            self.lazy_call.cancel()
        self.lazy_call = None

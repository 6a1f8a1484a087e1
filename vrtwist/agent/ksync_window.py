"""The ksync synchroniser's in-flight window and batch accounting.

The datapath executes one session's requests in order, so the synchroniser pipelines
them: at most ``window`` unanswered at a time (a sender waits for :meth:`room`), and
batches counted as finished in the order they were started, so "everything changed
so far was answered" (:meth:`InFlightWindow.when_flushed`) needs no per-request
bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed

__all__ = ["BUNCH", "InFlightWindow", "gather"]

#: Requests bunched into one netlink message (the agent's ``kMaxBulkMsgCount``).
BUNCH = 16


class InFlightWindow:
    """Requests sent and not answered (bounded), and batches started and finished."""

    def __init__(self, window: int, on_finished: Callable[[], None] | None = None) -> None:
        self.window = window
        #: called after a batch finished (and the flushes it completes fired)
        self.on_finished = on_finished
        self.in_flight = 0  # requests sent and not answered yet
        self._room: Deferred[None] | None = None  # fired when in_flight drops below window
        self.started = 0  # batches of requests started / answered
        self.finished = 0
        self._flushes: list[tuple[int, Deferred[None]]] = []
        self._tail: Deferred[None] = succeed(None)  # fires when the last batch is answered

    @property
    def settled(self) -> bool:
        """Every batch started has been answered."""
        return self.finished >= self.started

    # requests --------------------------------------------------------------------------

    async def room(self) -> None:
        """Wait until fewer than ``window`` requests are unanswered."""
        while self.in_flight >= self.window:
            # replies come in order, a bunch per netlink message: one resume per
            # bunch answered, not per request
            room = self._room = Deferred()
            await room

    def sent(self, n: int) -> None:
        self.in_flight += n

    def answered(self, n: int) -> None:
        self.in_flight -= n
        room = self._room
        if room is not None and self.in_flight < self.window:
            self._room = None
            room.callback(None)

    # batches ---------------------------------------------------------------------------

    def start_batch(self) -> None:
        self.started += 1

    def track(self, batch: list[Deferred[Any]]) -> None:
        """Count a batch as finished once it and every batch before it are answered."""
        mine: Deferred[None] = Deferred()
        prev, self._tail = self._tail, mine

        def finished(_: object) -> None:
            self.finished += 1
            self._fire_flushes()
            if self.on_finished is not None:
                self.on_finished()
            mine.callback(None)

        def after_prev(result: object) -> object:
            # a counter, not a DeferredList: the requests' own callbacks already record
            # each outcome, this only needs to know when the last one is in
            left = [len(batch)]
            if not batch:
                finished(None)

            def one(_: object) -> None:
                left[0] -= 1
                if not left[0]:
                    finished(None)
                return None  # the outcome is recorded; nothing is left to report

            for d in batch:
                d.addBoth(one)
            return result
        prev.addBoth(after_prev)

    def when_flushed(self, pending: bool) -> Deferred[None]:
        """Fires once every batch started so far (and one more if ``pending``) is done."""
        target = self.started + (1 if pending else 0)
        if self.finished >= target:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._flushes.append((target, d))
        return d

    def _fire_flushes(self) -> None:
        ready = [d for t, d in self._flushes if t <= self.finished]
        self._flushes = [(t, d) for t, d in self._flushes if t > self.finished]
        for d in ready:
            d.callback(None)


def gather(ds: list[Deferred[Any]]) -> Deferred[list[Any]]:
    """One Deferred for per-request Deferreds: fires with each result or its Failure."""
    out: list[Any] = [None] * len(ds)
    done: Deferred[list[Any]] = Deferred()
    left = [len(ds)]

    def one(result: Any, i: int) -> None:
        out[i] = result
        left[0] -= 1
        if not left[0]:
            done.callback(out)
        return None

    for i, d in enumerate(ds):
        d.addBoth(one, i)
    if not ds:
        done.callback(out)
    return done

"""Adaptive busy polling: keep the reactor from sleeping for a moment after activity.

A relay hop costs most of its latency in waking the process up: the sender's ``send``
must wake a sleeping receiver (an inter-processor interrupt, on a VM an exit to the
hypervisor) and the idle core must come back from its idle state.  Right after a burst
of traffic more traffic usually follows (the answer to what was just relayed), so for a
short *budget* after the last activity the reactor polls with a zero timeout instead of
blocking in ``epoll_wait``.  This is what the kernel's ``net.core.busy_poll`` and Go's
spinning scheduler threads do; the price is at most ``budget`` of CPU after each burst,
nothing while idle.
"""

from __future__ import annotations

from collections.abc import Callable
from os import sched_yield
from time import monotonic
from typing import Any

__all__ = ["BusyPoll"]


class BusyPoll:
    """Re-arms a zero-delay call while activity is recent, so ``doIteration`` never blocks.

    ``kick()`` is cheap (a clock read) and is called by whatever sees traffic; the
    reactor then turns with a zero poll timeout until ``budget`` seconds pass without a
    kick.  A budget of 0 disables it.
    """

    def __init__(
        self,
        reactor: Any,
        budget: float,
        now: Callable[[], float] = monotonic,
        yield_: Callable[[], None] = sched_yield,
    ) -> None:
        if budget < 0:
            raise ValueError("busy-poll budget must be >= 0")
        self.reactor = reactor
        self.budget = budget
        self._now = now
        self._yield = yield_
        self._last = 0.0
        self._call: Any = None
        #: zero-timeout turns taken (for the state dump and tests)
        self.spins = 0

    def kick(self) -> None:
        if self.budget <= 0:
            return
        self._last = self._now()
        if self._call is None:
            self._call = self.reactor.callLater(0, self._tick)

    def _tick(self) -> None:
        if self._now() - self._last < self.budget:
            self.spins += 1
            # Give the core to anything runnable first (the peer we just woke, often).
            self._yield()
            self._call = self.reactor.callLater(0, self._tick)
        else:
            self._call = None

    def stop(self) -> None:
        """Stop spinning for good (kicks after this do nothing)."""
        self.budget = 0
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

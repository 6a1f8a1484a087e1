"""Process-wide tuning that only a daemon's start may apply.

Collector thresholds and allocator settings belong to the whole process. Building a
service (as tests and plugin checks do) must not change them, so the tap modules return
a :class:`DaemonService`, which applies them when twistd starts it and puts the
collector thresholds back when it stops.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred


class DaemonService(MultiService):
    """A ``MultiService`` that applies ``tunings`` on start and restores the collector."""

    def __init__(self, *tunings: Callable[[], object]) -> None:
        super().__init__()
        self._tunings = tunings
        self._savedThresholds: tuple[int, ...] | None = None

    def startService(self) -> None:
        self._savedThresholds = gc.get_threshold()
        for tune in self._tunings:
            tune()
        super().startService()

    def stopService(self) -> Deferred[object]:
        """Stop the children, then give the collector its thresholds back."""
        d = super().stopService()
        if self._savedThresholds is not None:
            gc.set_threshold(*self._savedThresholds)
            self._savedThresholds = None
        return d


#: Collector thresholds for the daemons (``twistd vrouter``, ``vrouter-control``, vpnkit).
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Fewer young collections in a daemon that allocates in bursts.

    With CPython's defaults (a collection every 700 net allocations, full ones as the heap
    grows) a burst of 10,000 routes spends about a quarter of its CPU walking live
    objects (``bench/bench_xmpp.py --mode components``), and a relay's short connections
    (a few dozen objects each) trigger one every few connections.  Cycles are still
    collected, only in larger steps.  Never lowers thresholds set by someone else.
    """
    if gc.get_threshold()[0] < GC_THRESHOLDS[0]:
        gc.set_threshold(*GC_THRESHOLDS)


def reactor_and_tunings(
    reactor: Any, *tunings: Callable[[], object]
) -> tuple[Any, tuple[Callable[[], object], ...]]:
    """The reactor a tap builds on, and the process tunings it may apply.

    No reactor given means a real twistd process: the global reactor, with ``tunings``.
    Tests pass their own reactor and keep their process as it is (no tunings).
    """
    if reactor is not None:
        return reactor, ()
    from twisted.internet import reactor as _reactor

    return _reactor, tunings

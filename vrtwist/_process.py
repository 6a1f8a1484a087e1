"""Process-wide tuning that only a daemon's start may apply.

Collector thresholds and allocator settings belong to the whole process. Building a
service (as tests and plugin checks do) must not change them, so the tap modules return
a :class:`DaemonService`, which applies them when twistd starts it and puts the
collector thresholds back when it stops.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from vrtwist._twisted_compat import set_exit_signal


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

    # twistd starts the services before the reactor installs its signal handlers
    return _reactor, (*tunings, lambda: _reactor.callWhenRunning(quiet_stop_signals, _reactor))


_log = Logger()
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def quiet_stop_signals(reactor: Any) -> bool:
    """Make SIGTERM and SIGINT stop ``reactor`` without logging inside the signal handler.

    Twisted's own handlers log "Received SIGTERM" from the handler itself. Its log
    observers take a lock built on ``threading._RLock``, the pure-Python lock, which is
    not safe against a signal arriving half-way through its ``acquire``: if the signal
    interrupts the main thread while it writes a log line, the handler's log call
    waits for a lock the interrupted frame will never release, and the daemon hangs
    instead of stopping (seen with ``twistd vsock-relay`` under test). These handlers
    only queue the stop (``callFromThread``, as Twisted's do) and log from the reactor.
    Only handlers the reactor installed are replaced; returns whether any were.
    """
    replaced = False
    for signum in _STOP_SIGNALS:
        current = signal.getsignal(signum)
        if getattr(current, "__self__", None) is not reactor:
            continue  # not the reactor's handler (none installed, or someone else's)
        signal.signal(signum, lambda n, frame: _queue_stop(reactor, n))
        replaced = True
    if replaced:
        _log.debug("stop signals handled outside the signal handler from now on")
    return replaced


def _queue_stop(reactor: Any, signum: int) -> None:
    # Signal context: no logging, no locks; a deque append and a waker write only.
    set_exit_signal(reactor, signum)  # twistd re-raises it at exit, as with Twisted's own
    reactor.callFromThread(_stop, reactor, signum)


def _stop(reactor: Any, signum: int) -> None:
    _log.info("Received {name}, shutting down.", name=signal.Signals(signum).name)
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass  # a second signal while already stopping

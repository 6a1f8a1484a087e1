"""The one way a test waits for something to happen: poll a predicate until it holds.

* :func:`wait_for` returns a ``Deferred``: for trial ``TestCase`` methods that run the
  reactor (``await wait_for(lambda: port.connected)``). Give it a ``Clock`` to test with
  no reactor at all.
* :func:`wait_until` blocks: for tests that drive subprocesses (a daemon's log, a file,
  a port answering) from a ``SynchronousTestCase``.

Both return the predicate's first true value. A predicate that raises counts as "not
yet" (a daemon's socket may refuse until it listens), except with an ``AssertionError``
(a failed ``self.assert...``): that one ends the wait at once, so a predicate can say
"this will never happen" (the daemon exited). On timeout the failure names what was
awaited and the last value or error seen, so a hung test says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

T = TypeVar("T")

__all__ = ["PollTimeout", "wait_for", "wait_until"]


class PollTimeout(AssertionError):
    """What was awaited did not happen in time (an ``AssertionError``: a test failure)."""


def _check(predicate: Callable[[], T]) -> tuple[bool, object]:
    try:
        value = predicate()
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001 - not yet: shown if it never comes
        return False, e
    return bool(value), value


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str | None = None,
    clock: IReactorTime | None = None,
) -> Deferred[T]:
    """A Deferred firing with ``predicate()``'s first true value, checked now and then
    every ``interval`` seconds; failing with :class:`PollTimeout` after ``timeout``."""
    if clock is None:
        from twisted.internet import reactor

        clock = reactor
    pending: list[IDelayedCall] = []

    def cancel(_: Deferred[T]) -> None:
        if pending and pending[0].active():
            pending[0].cancel()

    result: Deferred[T] = Deferred(cancel)
    deadline = clock.seconds() + timeout
    name = what or getattr(predicate, "__name__", repr(predicate))

    def poll() -> None:
        pending.clear()
        try:
            ok, value = _check(predicate)
        except AssertionError:
            result.errback()
            return
        if ok:
            result.callback(value)  # type: ignore[arg-type]
        elif clock.seconds() >= deadline:
            result.errback(PollTimeout(f"timed out after {timeout} s waiting for {name} "
                                       f"(last: {value!r})"))
        else:
            pending.append(clock.callLater(interval, poll))

    poll()
    return result


def wait_until(
    predicate: Callable[[], T],
    what: str,
    timeout: float = 20.0,
    interval: float = 0.05,
) -> T:
    """Block until ``predicate()`` is true and return its value; :class:`PollTimeout`
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        ok, value = _check(predicate)
        if ok:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise PollTimeout(f"timed out after {timeout} s waiting for {what} "
                              f"(last: {value!r})")
        time.sleep(interval)

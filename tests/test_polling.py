"""``tests.polling``: the one wait helper of the test suite does what it says."""

from __future__ import annotations

import time

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.polling import PollTimeout, wait_for, wait_until


class WaitForTests(SynchronousTestCase):
    def test_fires_with_the_first_true_value(self) -> None:
        clock = Clock()
        box: list[int] = []
        d = wait_for(lambda: box and box[0], timeout=1, interval=0.1, clock=clock)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertNoResult(d)
        box.append(7)
        clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), 7)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_true_at_once_needs_no_time(self) -> None:
        clock = Clock()
        self.assertEqual(self.successResultOf(wait_for(lambda: "yes", clock=clock)), "yes")

    def test_timeout_names_what_and_the_last_error(self) -> None:
        clock = Clock()

        def refused() -> bool:
            raise ConnectionRefusedError("not yet")

        d = wait_for(refused, timeout=0.5, interval=0.1, what="the daemon", clock=clock)
        clock.pump([0.1] * 6)
        failure = self.failureResultOf(d, PollTimeout)
        self.assertIn("the daemon", str(failure.value))
        self.assertIn("not yet", str(failure.value))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_an_assertion_ends_the_wait(self) -> None:
        clock = Clock()

        def exited() -> bool:
            raise AssertionError("the daemon exited")

        d = wait_for(exited, clock=clock)
        self.assertIn("the daemon exited", str(self.failureResultOf(d, AssertionError).value))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel_stops_polling(self) -> None:
        clock = Clock()
        d = wait_for(lambda: False, clock=clock)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])


class WaitUntilTests(SynchronousTestCase):
    def test_returns_the_value(self) -> None:
        start = time.monotonic()
        self.assertEqual(wait_until(lambda: time.monotonic() - start > 0.05 and "done",
                                    "a little time", interval=0.01), "done")

    def test_timeout(self) -> None:
        with self.assertRaises(PollTimeout) as caught:
            wait_until(lambda: 0, "nothing", timeout=0.05, interval=0.01)
        self.assertIn("waiting for nothing (last: 0)", str(caught.exception))
        self.assertIsInstance(caught.exception, AssertionError)

    def test_an_assertion_ends_the_wait(self) -> None:
        calls: list[int] = []

        def gone() -> bool:
            calls.append(1)
            raise AssertionError("gone")

        with self.assertRaises(AssertionError):
            wait_until(gone, "never", timeout=5)
        self.assertEqual(len(calls), 1)

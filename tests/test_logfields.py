"""Log events with peer-chosen text stay small."""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.logfields import MAX_FIELD, Logger, bounded


class BoundedTests(SynchronousTestCase):
    def test_cut_with_a_marker(self) -> None:
        self.assertEqual(bounded("x" * 10, 4), "xxxx...[6 more characters]")
        self.assertEqual(bounded(b"y" * 10, 4), b"yyyy...[6 more bytes]")
        self.assertEqual(bounded("short"), "short")
        self.assertEqual(bounded(12345), 12345)
        self.assertEqual(len(bounded("z" * (1 << 20))), MAX_FIELD + len("...[1048276 more characters]"))


class Thing:
    log = Logger()

    def hello(self, name: str) -> None:
        self.log.info("hello {name} ({n})", name=name, n=len(name))


class LoggerTests(SynchronousTestCase):
    def test_every_text_field_bounded(self) -> None:
        with capturedLogs() as events:
            Thing().hello("n" * (1 << 20))
            try:
                raise ValueError("boom")
            except ValueError:
                Thing.log.failure("failed for {who}", who=b"w" * (1 << 20))
        self.assertEqual(len(events), 2)
        text = formatEvent(events[0])
        self.assertLess(len(text), 2 * MAX_FIELD)
        self.assertIn("...[1048276 more characters] (1048576)", text)
        self.assertEqual(events[0]["log_level"], LogLevel.info)
        self.assertEqual(events[0]["log_namespace"], f"{__name__}.Thing")
        self.assertEqual(len(events[1]["who"]), MAX_FIELD + len(b"...[1048276 more bytes]"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

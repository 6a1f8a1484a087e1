"""The multiplexer is given its clock (the services pass their reactor); it never falls
back to the global reactor."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.vpnkit.mux import LAZY_CLOSE_DELAY, Multiplexer, MultiplexerFactory


class MuxClockTests(SynchronousTestCase):
    def test_factory_passes_its_clock(self) -> None:
        clock = Clock()
        mux = MultiplexerFactory(None, False, clock=clock).buildProtocol(None)
        self.assertIs(mux.clock, clock)

    def test_lazy_frames_wait_on_the_given_clock(self) -> None:
        clock = Clock()
        mux = Multiplexer(None, clock=clock)
        t = StringTransport()
        mux.makeConnection(t)
        before = t.value()
        mux.writer.write_lazy(b"lazy")
        self.assertEqual(t.value(), before)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(LAZY_CLOSE_DELAY)
        self.assertTrue(t.value().endswith(b"lazy"))

    def test_no_clock_is_an_error_not_the_global_reactor(self) -> None:
        mux = Multiplexer(None)
        t = StringTransport()
        mux.makeConnection(t)
        e = self.assertRaises(RuntimeError, mux.writer.write_lazy, b"lazy")
        self.assertIn("clock", str(e))
        self.assertEqual(mux.writer.lazy, [b"lazy"])  # the frame is kept for the next write

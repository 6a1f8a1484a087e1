"""Accepted vpnkit data links under the connection guard: handshake deadline, the cap."""

from __future__ import annotations

from twisted.internet.address import UNIXAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.bounds import ConnectionGuard
from vrtwist.vpnkit.frames import HANDSHAKE
from vrtwist.vpnkit.mux import Multiplexer, MultiplexerFactory
from vrtwist.vpnkit.service import LINK_LIMITS


class LinkBoundsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.factory = MultiplexerFactory(None, backwards=False)
        self.factory.guard = ConnectionGuard(self.clock, LINK_LIMITS, "vpnkit-data")

    def link(self) -> tuple[Multiplexer, StringTransport]:
        mux = self.factory.buildProtocol(UNIXAddress(None))
        t = StringTransport()
        mux.makeConnection(t)
        return mux, t

    def test_half_sent_handshake_closed_a_shaken_link_lives_on(self) -> None:
        good, tg = self.link()
        good.dataReceived(HANDSHAKE)
        self.assertTrue(good.ready)
        half, th = self.link()
        half.dataReceived(HANDSHAKE[:5])  # half a handshake, then nothing
        _silent, ts = self.link()
        assert LINK_LIMITS.first_frame is not None
        self.clock.advance(LINK_LIMITS.first_frame)
        self.assertTrue(th.disconnecting and ts.disconnecting)
        self.assertFalse(tg.disconnecting)
        self.clock.advance(86400)  # a silent, shaken link is a legitimate one
        self.assertFalse(tg.disconnecting)
        self.assertEqual(len(self.factory.guard or ()), 1)

    def test_full_evicts_links_that_never_shook_hands(self) -> None:
        good, tg = self.link()
        good.dataReceived(HANDSHAKE)
        idle = [self.link()[1] for _ in range(LINK_LIMITS.max_connections * 3)]
        self.assertFalse(tg.disconnecting)
        open_ = [t for t in idle if not t.disconnecting]
        self.assertEqual(len(open_), LINK_LIMITS.max_connections - 1)
        self.assertIs(open_[-1], idle[-1])  # the newest got in
        # connectionLost releases the slot
        good.connectionLost()
        guard = self.factory.guard
        assert guard is not None
        self.assertEqual(len(guard), LINK_LIMITS.max_connections - 1)

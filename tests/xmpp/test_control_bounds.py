"""The control node's XMPP listener under the connection guard."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.bounds import BoundedFactory
from vrtwist.xmpp import control_tap


class XmppBoundsTests(SynchronousTestCase):
    def test_silent_connection_closed_agent_stream_kept(self) -> None:
        clock = MemoryReactorClock()
        o = control_tap.Options()
        o.parseOptions(["--xmpp", "tcp:0:interface=127.0.0.1"])
        svc = control_tap.makeService(o, clock)
        factory = svc.getServiceNamed("xmpp").factory
        self.assertIsInstance(factory, BoundedFactory)
        addr = IPv4Address("TCP", "127.0.0.1", 5000)
        silent, agent = factory.buildProtocol(addr), factory.buildProtocol(addr)
        ts, ta = StringTransport(), StringTransport()
        silent.makeConnection(ts)
        agent.makeConnection(ta)
        agent.dataReceived(
            b"<?xml version='1.0'?><stream:stream from='agent@host' to='network-control@x'"
            b" xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
            b" version='1.0'>"
        )
        first = control_tap.XMPP_LIMITS.first_frame
        assert first is not None
        clock.advance(first)
        self.assertTrue(ts.disconnecting)
        self.assertFalse(ta.disconnecting)
        self.assertEqual(len(factory.guard), 1)

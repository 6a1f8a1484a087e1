"""The shipped in-memory XMPP peers (``vrtwist.xmpp.testing``) do what they say."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from vrtwist.xmpp.interfaces import IRouteProgrammer
from vrtwist.xmpp.testing import MemAgent, RecordingSink, inet, make_node


class MemAgentTests(SynchronousTestCase):
    def test_two_agents_exchange_a_route(self) -> None:
        """A route one agent publishes reaches the other agent subscribed to the VRF."""
        clock, _, factory = make_node()
        a = MemAgent(factory, "a")
        b = MemAgent(factory, "b", host="127.0.0.3")
        for agent in (a, b):
            agent.open()
            agent.subscribe("vn1")
        clock.advance(0.1)
        a.received()
        b.received()
        self.assertIsNotNone(a.header)
        a.publish("vn1", inet("10.0.0.1/32", nexthop="127.0.0.2"))
        clock.advance(0)
        items, retracts, _ = b.routes()
        self.assertEqual(list(items), ["10.0.0.1/32"])
        self.assertEqual(items["10.0.0.1/32"].next_hops[0].address, "127.0.0.2")
        self.assertEqual(retracts, [])
        a.publish("vn1", inet("10.0.0.1/32", nexthop="127.0.0.2"), add=False)
        clock.advance(0)
        _, retracts, _ = b.routes()
        self.assertEqual(retracts, ["10.0.0.1/32"])
        self.assertFalse(a.closed)

    def test_garbage_closes_the_session(self) -> None:
        _, _, factory = make_node()
        agent = MemAgent(factory, "a")
        agent.send(b"<not-a-stream/>" * 4)
        self.assertTrue(agent.closed)


class RecordingSinkTests(SynchronousTestCase):
    def test_records_and_keeps_the_table(self) -> None:
        sink = RecordingSink(vrfs=("vn1",))
        verifyObject(IRouteProgrammer, sink)
        sink.addRemoteRoute("vn1", "10.0.0.1", 32, "192.0.2.9", 17)
        self.assertEqual(sink.vrfNames(), ["vn1"])
        self.assertEqual(sink.table[("vn1", "10.0.0.1", 32)], ("192.0.2.9", 17, "udp", None))
        with self.assertRaises(KeyError):
            sink.addRemoteRoute("other", "10.0.0.2", 32, "192.0.2.9", 17)
        sink.deleteRemoteRoute("vn1", "10.0.0.1", 32)
        self.assertEqual(sink.table, {})
        self.assertEqual([c[0] for c in sink.calls], ["add", "del"])

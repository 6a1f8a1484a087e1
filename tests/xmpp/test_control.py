"""The control node's logic on in-memory transports and a fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from vrtwist.xmpp.control import MAX_ITEMS_PER_MESSAGE, IControlNode
from vrtwist.xmpp.framing import KEEPALIVE, build_stream_response
from vrtwist.xmpp.stanzas import (
    EndOfRib,
    RouteUpdate,
    Stanza,
    build_eor_iq_pair,
    build_eor_message,
    build_route_update,
    build_unsubscribe,
)
from vrtwist.xmpp.testing import MemAgent, inet, make_node


def messages(logs: Sequence[Any]) -> str:
    from twisted.logger import formatEvent

    return "\n".join(formatEvent(e) for e in logs)


def updates(stanzas: Sequence[Stanza]) -> list[RouteUpdate]:
    """The stanzas, each asserted to be a route update (so their items can be read)."""
    out = []
    for s in stanzas:
        assert isinstance(s, RouteUpdate), s
        out.append(s)
    return out


class SessionSetupTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        _clock, node, factory = make_node()
        a = MemAgent(factory, "a")
        verifyObject(IControlNode, node)
        verifyObject(IPushProducer, a.proto)

    def test_open_answer_and_first_keepalive(self) -> None:
        _clock, node, factory = make_node()
        a = MemAgent(factory, "worker-3")
        a.open()
        # from is the real control node's JID, not this node's host name ("cn1")
        self.assertEqual(a.tr.value(), build_stream_response(
            "network-control@contrailsystems.com", "worker-3") + KEEPALIVE)
        self.assertIn("worker-3", node.sessions)

    def test_keepalive_every_third_of_hold(self) -> None:
        clock, _node, factory = make_node(hold=9)
        a = MemAgent(factory, "a")
        a.open()
        a.tr.clear()
        clock.advance(3)
        self.assertEqual(a.tr.value(), KEEPALIVE)
        a.send(KEEPALIVE)
        clock.advance(3)
        a.send(KEEPALIVE)
        clock.advance(3)
        self.assertFalse(a.closed)

    def test_hold_timer_expires(self) -> None:
        clock, _node, factory = make_node(hold=3)
        a = MemAgent(factory, "a")
        a.open()
        with capturedLogs() as logs:
            clock.advance(2)
            self.assertFalse(a.closed)
            clock.advance(1.01)
        self.assertTrue(a.closed)
        self.assertIn("hold timer expired", messages(logs))
        self.assertTrue(a.tr.value().endswith(b"</stream:stream>"))

    def test_open_timeout(self) -> None:
        clock, _node, factory = make_node()
        a = MemAgent(factory, "a")
        clock.advance(15)
        self.assertTrue(a.closed)
        self.assertIn("no stream open", a.proto.close_reason)

    def test_same_name_other_address_refused(self) -> None:
        _clock, _node, factory = make_node()
        a = MemAgent(factory, "a", host="127.0.0.2")
        a.open()
        b = MemAgent(factory, "a", host="127.0.0.9")
        b.open()
        self.assertTrue(b.closed)
        self.assertFalse(a.closed)
        self.assertIn("another address", b.proto.close_reason)

    def test_same_name_same_address_replaces(self) -> None:
        _clock, node, factory = make_node()
        a = MemAgent(factory, "a")
        a.open()
        b = MemAgent(factory, "a", port=40001)
        b.open()
        self.assertTrue(a.closed)
        self.assertIs(node.sessions["a"], b.proto)


class ReflectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.node, self.factory = make_node()
        self.agents = {}
        for n in ("a", "b", "c"):
            ag = MemAgent(self.factory, n)
            ag.open()
            ag.subscribe("blue")
            self.agents[n] = ag
        self.clock.advance(0.1)
        for ag in self.agents.values():
            ag.received()

    def test_route_goes_to_every_other_agent_only(self) -> None:
        a, b, c = self.agents["a"], self.agents["b"], self.agents["c"]
        a.publish("blue", inet("10.0.0.1/32", "127.0.0.2", 20))
        self.clock.advance(0)
        for other in (b, c):
            items, _retracts, _ = other.routes()
            self.assertEqual(list(items), ["10.0.0.1/32"])
            self.assertEqual(items["10.0.0.1/32"].next_hops[0].label, 20)
        self.assertEqual(a.routes(), ({}, [], 0))

    def test_origin_is_not_marked_for_its_own_routes(self) -> None:
        """An agent never sees its own paths, so its own publishes leave nothing pending
        for it (no mark, no best-path lookup at flush)."""
        a = self.agents["a"]
        a.publish("blue", inet("10.0.0.1/32", "127.0.0.2", 20))
        self.assertEqual(a.proto._dirty, {})
        self.assertNotIn(a.proto, self.node._dirty_sessions)
        self.assertEqual(len(self.node._dirty_sessions), 2)

    def test_messages_carry_vrf_node_and_agent_address(self) -> None:
        a, b = self.agents["a"], self.agents["b"]
        a.publish("blue", inet("10.0.0.1/32"))
        self.clock.advance(0)
        [msg] = b.received()
        self.assertIsInstance(msg, RouteUpdate)
        self.assertEqual(updates([msg])[0].node, "1/1/blue")

    def test_withdraw_retracts(self) -> None:
        a, b = self.agents["a"], self.agents["b"]
        a.publish("blue", inet("10.0.0.1/32"))
        self.clock.advance(0)
        b.received()
        a.publish("blue", inet("10.0.0.1/32"), add=False)
        self.clock.advance(0)
        self.assertEqual(b.routes(), ({}, ["10.0.0.1/32"], 0))
        self.assertEqual(self.node.route_count(), 0)

    def test_subscribe_gets_current_routes_then_eor(self) -> None:
        a = self.agents["a"]
        for i in range(5):
            a.publish("blue", inet(f"10.0.0.{i}/32"))
        d = MemAgent(self.factory, "d")
        d.open()
        d.subscribe("blue")
        self.clock.advance(0)
        self.clock.advance(0.1)  # End-of-RIB waits for a quiet moment after subscribes
        got = d.received()
        self.assertIsInstance(got[-1], EndOfRib)
        ids = {e.item_id for s in updates(got[:-1]) for e in s.items}
        self.assertEqual(ids, {f"10.0.0.{i}/32" for i in range(5)})

    def test_other_vrf_not_leaked(self) -> None:
        a, b = self.agents["a"], self.agents["b"]
        a.subscribe("red")
        a.publish("red", inet("10.9.0.1/32"))
        self.clock.advance(0)
        self.assertEqual(b.routes(), ({}, [], 0))

    def test_unsubscribe_withdraws_the_agents_routes(self) -> None:
        a, b = self.agents["a"], self.agents["b"]
        a.publish("blue", inet("10.0.0.1/32"))
        self.clock.advance(0)
        b.received()
        a.send(build_unsubscribe("a", "blue"))
        self.clock.advance(0)
        self.assertEqual(b.routes(), ({}, ["10.0.0.1/32"], 0))

    def test_best_path_by_local_preference(self) -> None:
        a, b, c = self.agents["a"], self.agents["b"], self.agents["c"]
        a.publish("blue", inet("10.0.0.1/32", "127.0.0.2", lp=100))
        b.publish("blue", inet("10.0.0.1/32", "127.0.0.3", lp=200))
        self.clock.advance(0)
        items, _, _ = c.routes()
        self.assertEqual(items["10.0.0.1/32"].next_hops[0].address, "127.0.0.3")
        # b must not see its own path, only a's.
        items, _, _ = b.routes()
        self.assertEqual(items["10.0.0.1/32"].next_hops[0].address, "127.0.0.2")
        b.publish("blue", inet("10.0.0.1/32", "127.0.0.3", lp=200), add=False)
        self.clock.advance(0)
        items, retracts, _ = c.routes()
        self.assertEqual(items["10.0.0.1/32"].next_hops[0].address, "127.0.0.2")
        self.assertEqual(retracts, [])

    def test_large_updates_are_batched(self) -> None:
        a, b = self.agents["a"], self.agents["b"]
        for i in range(300):
            a.publish("blue", inet(f"10.1.{i // 256}.{i % 256}/32"))
        self.clock.advance(0)
        msgs = updates(b.received())
        self.assertEqual(len(msgs), 3)
        self.assertLessEqual(max(len(m.items) for m in msgs), MAX_ITEMS_PER_MESSAGE)
        self.assertEqual(sum(len(m.items) for m in msgs), 300)

    def test_paused_agent_gets_latest_state_on_resume(self) -> None:
        a, b = self.agents["a"], self.agents["b"]
        b.proto.pauseProducing()
        a.publish("blue", inet("10.0.0.1/32"))
        a.publish("blue", inet("10.0.0.2/32"))
        a.publish("blue", inet("10.0.0.1/32"), add=False)
        self.clock.advance(0)
        self.assertEqual(b.tr.value(), b"")
        b.proto.resumeProducing()
        self.clock.advance(0)
        items, retracts, _ = b.routes()
        self.assertEqual(list(items), ["10.0.0.2/32"])
        self.assertEqual(retracts, [])


class UnsupportedFamilyTests(SynchronousTestCase):
    def test_multicast_publish_is_accepted_and_dropped(self) -> None:
        clock, _node, factory = make_node()
        a, b = MemAgent(factory, "a"), MemAgent(factory, "b")
        for ag in (a, b):
            ag.open()
            ag.subscribe("blue")
        clock.advance(0.1)
        b.received()
        # Spec shape 7: the multicast-tree builder's ErmVPN route.
        a.send(b'<iq type="set" from="a" to="network-control@contrailsystems.com/bgp-peer" '
               b'id="pubsub_b3"><pubsub xmlns="http://jabber.org/protocol/pubsub"><publish '
               b'node="1/241/blue/255.255.255.255"><item><entry><nlri><af>1</af><safi>241</safi>'
               b"<group>255.255.255.255</group><source>0.0.0.0</source></nlri><next-hops>"
               b"<next-hop><af>1</af><address>10.43.91.10</address><label>1000-1999</label>"
               b"<tunnel-encapsulation-list><tunnel-encapsulation>gre</tunnel-encapsulation>"
               b"</tunnel-encapsulation-list></next-hop></next-hops></entry></item></publish>"
               b'</pubsub></iq><iq type="set" from="a" to="network-control@contrailsystems.com/'
               b'bgp-peer" id="collection3"><pubsub xmlns="http://jabber.org/protocol/pubsub">'
               b'<collection node="blue"><associate node="1/241/blue/255.255.255.255"/>'
               b"</collection></pubsub></iq>")
        a.publish("blue", inet("10.0.0.1/32"))
        clock.advance(0)
        self.assertFalse(a.closed)
        items, _, _ = b.routes()
        self.assertEqual(list(items), ["10.0.0.1/32"])


class ViolationTests(SynchronousTestCase):
    """Each violation closes that session with a clear log line; the others go on."""

    def setUp(self) -> None:
        self.clock, self.node, self.factory = make_node()
        self.a = MemAgent(self.factory, "a")
        self.b = MemAgent(self.factory, "b")
        self.c = MemAgent(self.factory, "c")
        for ag in (self.a, self.b, self.c):
            ag.open()
            ag.subscribe("blue")
        self.b.publish("blue", inet("10.0.0.2/32"))
        self.clock.advance(0)
        for ag in (self.a, self.b, self.c):
            ag.received()

    def assertClosedAlone(self, data: bytes, reason: str) -> None:
        with capturedLogs() as logs:
            self.a.send(data)
        self.assertTrue(self.a.closed)
        text = messages(logs)
        self.assertIn("XMPP session a@127.0.0.2:40000 closed", text)
        self.assertIn(reason, text)
        self.assertTrue(self.a.tr.value().endswith(b"</stream:stream>"))
        # Nothing else lost: b and c still exchange routes, b's route is still there.
        self.assertFalse(self.b.closed or self.c.closed)
        self.c.publish("blue", inet("10.0.0.3/32"))
        self.clock.advance(0)
        items, _, _ = self.b.routes()
        self.assertEqual(list(items), ["10.0.0.3/32"])
        path = self.node.best_path("blue", (1, 1), "10.0.0.2/32", "c")
        assert path is not None
        self.assertEqual(path.entry.address, "10.0.0.2/32")

    def test_duplicate_subscribe(self) -> None:
        from vrtwist.xmpp.stanzas import build_subscribe

        self.assertClosedAlone(build_subscribe("a", "blue", 1), "duplicate subscribe to 'blue'")

    def test_too_many_subscriptions(self) -> None:
        from vrtwist.xmpp import control
        from vrtwist.xmpp.stanzas import build_subscribe

        self.patch(control, "MAX_SUBSCRIPTIONS", 3)
        self.a.subscribe("red")
        self.a.subscribe("green")
        self.assertClosedAlone(build_subscribe("a", "yellow", 1), "more than 3 routing instances")

    def test_too_many_routes(self) -> None:
        self.node.max_routes = 2
        self.a.publish("blue", inet("10.0.1.1/32"))
        self.a.publish("blue", inet("10.0.1.1/32", label=99))  # a change is not a new route
        self.a.publish("blue", inet("10.0.1.2/32"))
        self.clock.advance(0)
        self.b.received()
        from vrtwist.xmpp.stanzas import build_route_publish

        self.assertClosedAlone(build_route_publish("a", "blue", inet("10.0.1.3/32")),
                               "more than 2 routes published")
        self.a.proto.connectionLost()
        self.assertNotIn("a", self.node.route_counts)  # gone with its session (GR time 0)

    def test_publish_to_unsubscribed_vrf(self) -> None:
        from vrtwist.xmpp.stanzas import build_route_publish

        self.assertClosedAlone(build_route_publish("a", "nowhere", inet("10.0.0.1/32")),
                               "unsubscribed instance 'nowhere'")

    def test_unsubscribe_without_subscribe(self) -> None:
        self.assertClosedAlone(build_unsubscribe("a", "red"), "without a subscribe")

    def test_malformed_xml(self) -> None:
        self.assertClosedAlone(b'<iq type="set"><pubsub><publish></iq>', "malformed XML")

    def test_entity_expansion(self) -> None:
        self.assertClosedAlone(b'<!DOCTYPE x [<!ENTITY a "b">]><iq type="set">&a;</iq>', "DTD")

    def test_entity_inside_stanza(self) -> None:
        self.assertClosedAlone(b'<iq type="set"><!DOCTYPE x [<!ENTITY a "b">]>&a;</iq>',
                               "bad stanza: malformed XML")

    def test_garbage_bytes(self) -> None:
        self.assertClosedAlone(b"\xff\xfe\x00garbage", "framing error")

    def test_error_in_a_handler_closes_only_that_session(self) -> None:
        from vrtwist.xmpp.stanzas import build_subscribe

        def broken(*args: object) -> None:
            raise RuntimeError("handler bug")

        self.node.subscribe = broken  # type: ignore[assignment, method-assign]
        try:
            self.assertClosedAlone(build_subscribe("a", "red", 1),
                                   "closed: internal error handling a stanza")
        finally:
            del self.node.subscribe
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_huge_names_are_logged_bounded(self) -> None:
        from twisted.logger import formatEvent

        from vrtwist.xmpp.stanzas import build_subscribe

        vrf = "v" * (200 * 1024)
        with capturedLogs() as logs:
            self.a.send(build_subscribe("a", vrf, 1))
            self.assertFalse(self.a.closed)
            self.assertClosedAlone(build_subscribe("a", vrf, 1), "duplicate subscribe to 'vvvv")
        text = messages(logs)
        self.assertIn("subscribed to vvvv", text)
        self.assertIn("closed: protocol violation: duplicate subscribe", text)
        self.assertIn("more characters]", text)
        for event in logs:
            self.assertLess(len(formatEvent(event)), 2048)

    def test_smuggled_doctype_and_entity_bomb(self) -> None:
        import tracemalloc

        from tests.xmpp.test_stanza_attacks import laughs, smuggled

        tracemalloc.start()
        try:
            self.assertClosedAlone(smuggled(laughs()), "undefined entity")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 4 << 20)  # it used to expand to a 21 MiB node name

    def test_doctype_in_front_of_a_stanza(self) -> None:
        from tests.xmpp.test_stanza_attacks import laughs

        self.assertClosedAlone(b"<!DOCTYPE iq [" + laughs() + b"]><iq>&e9;</iq>",
                               "DTD or markup declaration outside a stanza")

    def test_non_ascii_digits_in_items_node(self) -> None:
        self.assertClosedAlone(b'<message from="a"><event><items node="&#178;/1/v"/></event>'
                               b"</message>", "is not afi/safi/vrf")

    def test_five_thousand_digit_node(self) -> None:
        self.assertClosedAlone(b'<message from="a"><event><items node="' + b"9" * 5000
                               + b'/1/v"/></event></message>', "is not afi/safi/vrf")

    def test_config_nested_a_thousand_deep(self) -> None:
        deep = b"<a>" * 1000 + b"</a>" * 1000
        self.assertClosedAlone(b'<iq type="set" from="a"><config><update><node type="t">'
                               b"<name>n</name>" + deep + b"</node></update></config></iq>",
                               "config nested deeper than")

    def test_oversized_stanza(self) -> None:
        self.assertClosedAlone(b"<iq>" + b"x" * (300 * 1024), "exceeds the limit")

    def test_collection_without_publish(self) -> None:
        from vrtwist.xmpp.stanzas import build_route_publish

        coll = build_route_publish("a", "blue", inet("10.0.0.1/32")).split(b"</iq>", 1)[1]
        self.assertClosedAlone(coll, "collection without a publish")

    def test_collection_for_other_node(self) -> None:
        from vrtwist.xmpp.stanzas import build_route_publish

        pub = build_route_publish("a", "blue", inet("10.0.0.1/32")).split(b"</iq>", 1)[0] + b"</iq>"
        coll = build_route_publish("a", "blue", inet("10.0.0.9/32")).split(b"</iq>", 1)[1]
        self.assertClosedAlone(pub + coll, "differs from publish node")

    def test_control_node_stanza_from_agent(self) -> None:
        self.assertClosedAlone(build_route_update("a", "b", "1/1/blue", [inet("10.0.0.1/32")]),
                               "agent sent a control-node stanza")

    def test_stanza_before_open(self) -> None:
        d = MemAgent(self.factory, "d")
        with capturedLogs() as logs:
            d.subscribe("blue")
        self.assertTrue(d.closed)
        self.assertIn("before the stream is established", messages(logs))


class GracefulRestartTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.node, self.factory = make_node(gr_time=10)
        self.a = MemAgent(self.factory, "a")
        self.b = MemAgent(self.factory, "b")
        for ag in (self.a, self.b):
            ag.open()
            ag.subscribe("blue")
        self.a.publish("blue", inet("10.0.0.1/32"))
        self.a.publish("blue", inet("10.0.0.2/32"))
        self.clock.advance(0.1)
        self.b.received()

    def test_routes_retracted_after_gr_time(self) -> None:
        self.a.proto.connectionLost()
        self.clock.advance(9)
        self.assertEqual(self.b.routes(), ({}, [], 0))
        self.clock.advance(1)
        _, retracts, _ = self.b.routes()
        self.assertEqual(sorted(retracts), ["10.0.0.1/32", "10.0.0.2/32"])
        self.assertEqual(self.node.route_count(), 0)

    def test_restart_within_gr_keeps_readvertised(self) -> None:
        self.a.proto.connectionLost()
        a2 = MemAgent(self.factory, "a", port=40002)
        a2.open()
        a2.subscribe("blue")
        a2.publish("blue", inet("10.0.0.1/32"))
        a2.send(build_eor_iq_pair("a"))
        self.clock.advance(0.1)
        # Only the route not re-advertised goes, and at the agent's EoR, not at GR expiry.
        self.assertEqual(self.b.routes(), ({}, ["10.0.0.2/32"], 0))
        self.clock.advance(20)
        self.assertEqual(self.b.routes(), ({}, [], 0))
        self.assertEqual(self.node.route_count(), 1)

    def test_message_form_eor_also_sweeps(self) -> None:
        self.a.proto.connectionLost()
        a2 = MemAgent(self.factory, "a", port=40002)
        a2.open()
        a2.subscribe("blue")
        a2.send(build_eor_message("a", "network-control@contrailsystems.com/bgp-peer"))
        self.clock.advance(0)
        _, retracts, _ = self.b.routes()
        self.assertEqual(sorted(retracts), ["10.0.0.1/32", "10.0.0.2/32"])

    def test_no_gr_retracts_at_once(self) -> None:
        clock, _node, factory = make_node(gr_time=0)
        a, b = MemAgent(factory, "a"), MemAgent(factory, "b")
        for ag in (a, b):
            ag.open()
            ag.subscribe("blue")
        a.publish("blue", inet("10.0.0.1/32"))
        clock.advance(0)
        b.received()
        a.proto.connectionLost()
        clock.advance(0)
        self.assertEqual(b.routes(), ({}, ["10.0.0.1/32"], 0))


class OrderingTests(SynchronousTestCase):
    def test_evpn_items_go_out_before_inet(self) -> None:
        from vrtwist.xmpp.stanzas import NextHop, RouteEntry

        clock, _node, factory = make_node()
        a, b = MemAgent(factory, "a"), MemAgent(factory, "b")
        for ag in (a, b):
            ag.open()
            ag.subscribe("blue")
        clock.advance(0.1)
        b.received()
        a.publish("blue", inet("10.0.0.1/32"))
        a.publish("blue", RouteEntry(25, 242, "10.0.0.1/32", (NextHop("192.0.2.1", 16),),
                                     mac="02:00:00:00:00:01"))
        clock.advance(0)
        self.assertEqual([m.node for m in updates(b.received())], ["25/242/blue", "1/1/blue"])

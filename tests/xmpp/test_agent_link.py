"""The agent side of the link on in-memory transports: what it sends, what it programs,
backoff, failover, graceful restart of learnt routes, config, bad input."""

from __future__ import annotations

import itertools
import random
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from vrtwist.xmpp.agent_link import (
    MAX_ATTEMPTS,
    AgentSession,
    ControllerLink,
    FailoverEndpoint,
    LocalRouteInfo,
    _endpoint_description,
    backoff_delay,
    linkKwargsFromOptions,
    makeControllerLink,
)
from vrtwist.xmpp.framing import (
    KEEPALIVE,
    StanzaBytes,
    StanzaSplitter,
    build_stream_open,
    build_stream_response,
)
from vrtwist.xmpp.remote_routes import IRemoteRouteSink, RemoteRouteTable
from vrtwist.xmpp.stanzas import (
    Collection,
    ConfigLink,
    ConfigNode,
    EndOfRib,
    NextHop,
    Publish,
    RouteEntry,
    Subscribe,
    Unsubscribe,
    build_config,
    build_eor_message,
    build_retract,
    build_route_update,
    parse_stanza,
)
from vrtwist.xmpp.testing import RecordingSink, inet

CN = "network-control@contrailsystems.com"


def port(i: int, vrf: str = "blue", ip6: str | None = None) -> LocalRouteInfo:
    return LocalRouteInfo(f"port{i}", f"vm{i}", "vn1", vrf, f"02:00:00:00:00:{i:02x}",
                          f"10.0.0.{i}", ip6, 20 + i, "127.0.0.2")


@implementer(IStreamClientEndpoint)
class MemEndpoint:
    """Connects a protocol to a fresh StringTransport (or fails, when told to)."""

    def __init__(self, clock: MemoryReactorClock, fail: bool = False) -> None:
        self.clock = clock
        self.fail = fail
        self.attempts: list[float] = []
        self.transports: list[StringTransport] = []
        self.protocols: list[Any] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.attempts.append(self.clock.seconds())
        if self.fail:
            return defer.fail(ConnectionRefusedError("refused"))
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5269))
        tr = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5269))
        proto.makeConnection(tr)
        self.transports.append(tr)
        self.protocols.append(proto)
        return defer.succeed(proto)


def parsed(data: bytes) -> list[Any]:
    return [parse_stanza(e.data) for e in StanzaSplitter().feed(data) if isinstance(e, StanzaBytes)]


class LinkHarness:
    def __init__(self, hold: float = 90, stale: float = 60, sink: Any = None) -> None:
        self.clock = MemoryReactorClock()
        self.sink = sink or RecordingSink()
        self.ep = MemEndpoint(self.clock)
        self.link = ControllerLink(self.clock, [self.ep], "host1", "127.0.0.2", self.sink,
                                   hold_time=hold, stale_time=stale, rng=random.Random(1))
        self.link.startService()

    @property
    def tr(self) -> StringTransport:
        return self.ep.transports[-1]

    @property
    def session(self) -> AgentSession:
        return self.ep.protocols[-1]._protocol if hasattr(self.ep.protocols[-1], "_protocol") \
            else self.ep.protocols[-1]

    def establish(self) -> None:
        self.tr.clear()
        self.feed(build_stream_response("cn1", "host1"))

    def lose(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.ep.protocols[-1].connectionLost(Failure(ConnectionDone()))

    def feed(self, data: bytes) -> None:
        self.ep.protocols[-1].dataReceived(data)

    def sent(self) -> list[Any]:
        data = self.tr.value()
        self.tr.clear()
        return parsed(data)


class SessionStartTests(SynchronousTestCase):
    def test_stream_open_is_the_first_thing_sent(self) -> None:
        h = LinkHarness()
        self.assertEqual(h.tr.value(), build_stream_open("host1"))

    def test_established_sends_subscribes_routes_and_eor(self) -> None:
        h = LinkHarness()
        h.link.localRouteAdded(port(1))
        h.link.localRouteAdded(port(2, ip6="fd00::2"))
        self.assertEqual(h.tr.value(), build_stream_open("host1"))  # nothing before the session
        h.establish()
        data = h.tr.value()
        self.assertTrue(data.startswith(KEEPALIVE))
        out = h.sent()
        self.assertEqual(out[0], Subscribe("virtual-router:default-global-system-config:host1",
                                           "config", None, False, "host1"))
        self.assertEqual(out[1], Subscribe("blue", "bgp-peer", 0, False, "host1"))
        self.assertEqual({s.node for s in out[2:4]}, {"virtual-machine:vm1", "virtual-machine:vm2"})
        pubs = [s for s in out if isinstance(s, Publish) and s.entry is not None]
        self.assertEqual(sorted(p.node for p in pubs), sorted([
            "1/1/blue/10.0.0.1/32", "25/242/02:00:00:00:00:01,10.0.0.1/32",
            "1/1/blue/10.0.0.2/32", "2/1/blue/fd00::2/128", "25/242/02:00:00:00:00:02,10.0.0.2/32"]))
        for p in pubs:
            assert p.entry is not None
            self.assertEqual(p.entry.next_hops[0].address, "127.0.0.2")
            self.assertEqual(p.entry.next_hops[0].encapsulations, ("gre", "udp"))
        colls = [s for s in out if isinstance(s, Collection) and s.node]
        self.assertTrue(all(c.node == "blue" and c.associate for c in colls))
        # EoR as the real agent sends it after its route walk: a <message>, last of all,
        # its own bytes (leading line break, tabs) at the very end of what was written
        self.assertEqual(out[-1], EndOfRib("host1"))
        self.assertFalse(any(isinstance(s, EndOfRib) for s in out[:-1]))
        self.assertTrue(data.endswith(
            b'\n<message from="host1" to="network-control@contrailsystems.com/bgp-peer">'
            b'\n\t<event xmlns="http://jabber.org/protocol/pubsub">\n<items node="0/0/EndOfRib">'
            b"</items>\n\t</event>\n</message>\n"))
        # the inet next hop names the network by fq-name and carries the host MAC slot;
        # the entry and EVPN items leave the network empty, as the real agent does
        inet = next(p for p in pubs if p.node.startswith("1/1/"))
        assert inet.entry is not None
        self.assertEqual(inet.entry.virtual_network, "")
        evpn = next(p for p in pubs if p.node.startswith("25/242/"))
        assert evpn.entry is not None
        self.assertEqual((evpn.entry.virtual_network, evpn.entry.next_hops[0].virtual_network),
                         ("", ""))

    def test_inet_carries_the_l3_label_evpn_the_l2_label_or_vni(self) -> None:
        def labels(h: LinkHarness) -> dict[str, int]:
            out = {}
            for s in h.sent():
                if isinstance(s, Publish) and s.entry is not None:
                    out[s.node.split("/")[0]] = s.entry.next_hops[0].label
            return out
        route = LocalRouteInfo("port1", "vm1", "vn1", "blue", "02:00:00:00:00:01", "10.0.0.1",
                               None, 21, "127.0.0.2", l2_label=70, vni=5000)
        h = LinkHarness()
        h.link.localRouteAdded(route)
        h.establish()
        self.assertEqual(labels(h), {"1": 21, "25": 70})
        h = LinkHarness()
        h.link.encapsulations = ("vxlan", "udp")
        h.link.localRouteAdded(route)
        h.establish()
        self.assertEqual(labels(h), {"1": 21, "25": 5000})

    def test_end_of_rib_waits_for_the_replayed_ports(self) -> None:
        """A restarting agent holds End-of-RIB until its ports are replayed: the routes
        go first, so the control node's sweep keeps them."""
        eor = [EndOfRib("host1")]
        h = LinkHarness()
        h.link.hold_end_of_rib()
        h.establish()
        out = h.sent()
        self.assertNotIn(eor[0], out)
        h.link.localRouteAdded(port(1))
        out = h.sent()
        self.assertTrue([s for s in out if isinstance(s, Publish) and s.entry is not None])
        self.assertNotIn(eor[0], out)
        h.link.local_routes_ready()
        self.assertEqual(h.sent(), eor)
        h.link.local_routes_ready()  # once only
        self.assertEqual(h.sent(), [])
        # later sessions send it at once again
        h.lose()
        h.clock.advance(60)
        h.establish()
        self.assertEqual(h.sent()[-1:], eor)

    def test_routes_ready_before_any_session(self) -> None:
        h = LinkHarness()
        h.link.hold_end_of_rib()
        h.link.local_routes_ready()
        h.establish()
        self.assertEqual(h.sent()[-1:], [EndOfRib("host1")])

    def test_port_added_while_up_and_deleted(self) -> None:
        h = LinkHarness()
        h.establish()
        h.sent()
        h.link.localRouteAdded(port(1))
        out = h.sent()
        self.assertEqual(out[0], Subscribe("virtual-machine:vm1", "config", None, False, "host1"))
        self.assertEqual(out[1], Subscribe("blue", "bgp-peer", 0, False, "host1"))
        self.assertEqual(len(out), 2 + 4)
        h.link.localRouteAdded(port(2))  # same VRF: no second subscribe
        self.assertFalse(any(isinstance(s, Subscribe) and s.node == "blue" for s in h.sent()))
        h.link.localRouteDeleted(port(1))
        out = h.sent()
        self.assertEqual([c.dissociate for c in out if isinstance(c, Collection)],
                         ["1/1/blue/10.0.0.1/32", "25/242/02:00:00:00:00:01,10.0.0.1/32"])
        self.assertNotIn(Unsubscribe("blue", "bgp-peer", "host1"), out)
        self.assertIn(Unsubscribe("virtual-machine:vm1", "config", "host1"), out)
        h.link.localRouteDeleted(port(2))
        h.clock.advance(0)
        self.assertIn(Unsubscribe("blue", "bgp-peer", "host1"), h.sent())
        self.assertEqual(h.link.subscribed_vrfs, [])

    def test_update_of_the_only_port_keeps_the_subscription(self) -> None:
        h = LinkHarness()
        h.establish()
        h.link.localRouteAdded(port(1))
        h.feed(build_route_update(CN, "host1/bgp-peer", "1/1/blue", [inet("10.0.0.9/32")]))
        h.sent()
        # The agent model re-announces a changed port as delete + add in one turn.
        h.link.localRouteDeleted(port(1))
        h.link.localRouteAdded(port(1))
        h.clock.advance(0)
        out = h.sent()
        self.assertFalse(any(isinstance(s, Subscribe | Unsubscribe) and s.node == "blue"
                             for s in out))
        self.assertEqual(len(h.sink.table), 1)  # learnt routes untouched
        self.assertEqual(h.sink.calls[-1][0], "add")

    def test_instance_id_from_the_agent_model(self) -> None:
        sink = RecordingSink()
        sink.vrf_id_of = lambda vn: 7  # type: ignore[attr-defined]
        h = LinkHarness(sink=sink)
        h.establish()
        h.sent()
        h.link.localRouteAdded(port(1))
        self.assertEqual(h.sent()[1], Subscribe("blue", "bgp-peer", 7, False, "host1"))

    def test_keepalives_and_hold_timer(self) -> None:
        h = LinkHarness(hold=3)
        h.establish()
        h.tr.clear()
        h.clock.advance(1)
        self.assertEqual(h.tr.value(), KEEPALIVE)
        h.feed(KEEPALIVE)
        h.clock.advance(2.5)
        self.assertFalse(h.tr.disconnecting)
        with capturedLogs() as logs:
            h.clock.advance(1)
        self.assertTrue(h.tr.disconnecting)
        self.assertIn("hold timer expired", "\n".join(formatEvent(e) for e in logs))


class ReceiveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = LinkHarness(stale=30)
        self.h.link.localRouteAdded(port(1))
        self.h.establish()
        self.h.sent()

    def update(self, *entries: RouteEntry, node: str = "1/1/blue") -> None:
        self.h.feed(build_route_update(CN, "host1/bgp-peer", node, entries))

    def test_items_are_programmed(self) -> None:
        self.update(inet("10.0.0.7/32", "127.0.0.3", 33))
        self.assertEqual(self.h.sink.table, {("blue", "10.0.0.7", 32): ("127.0.0.3", 33, "udp", None)})

    def test_evpn_item_adds_the_mac(self) -> None:
        self.update(inet("10.0.0.7/32", "127.0.0.3", 33))
        evpn = RouteEntry(25, 242, "10.0.0.7/32", (NextHop("127.0.0.3", 33, ("gre", "udp")),),
                          mac="02:aa:00:00:00:07")
        self.update(evpn, node="25/242/blue")
        self.assertEqual(self.h.sink.table[("blue", "10.0.0.7", 32)],
                         ("127.0.0.3", 33, "udp", "02:aa:00:00:00:07"))

    def test_evpn_label_is_the_bridge_entrys(self) -> None:
        """The inet item's label routes, the EVPN item's (the far port's L2 label)
        bridges; over VXLAN the EVPN label (the network's VNI) does both."""
        self.update(inet("10.0.0.7/32", "127.0.0.3", 33))
        evpn = RouteEntry(25, 242, "10.0.0.7/32", (NextHop("127.0.0.3", 77, ("gre", "udp")),),
                          mac="02:aa:00:00:00:07")
        self.update(evpn, node="25/242/blue")
        key = ("blue", "10.0.0.7", 32)
        self.assertEqual((self.h.sink.table[key][1], self.h.sink.l2_labels[key]), (33, 77))
        self.update(inet("10.0.0.8/32", "127.0.0.3", 34, encaps=("vxlan",)))
        evpn = RouteEntry(25, 242, "10.0.0.8/32", (NextHop("127.0.0.3", 5000, ("vxlan",)),),
                          mac="02:aa:00:00:00:08")
        self.update(evpn, node="25/242/blue")
        key = ("blue", "10.0.0.8", 32)
        self.assertEqual(self.h.sink.table[key][1:3], (5000, "vxlan"))
        self.assertIsNone(self.h.sink.l2_labels[key])  # the same label: not passed apart

    def test_retract_removes(self) -> None:
        self.update(inet("10.0.0.7/32", "127.0.0.3", 33))
        self.h.feed(build_retract(CN, "host1/bgp-peer", "1/1/blue", ["10.0.0.7/32"]))
        self.assertEqual(self.h.sink.table, {})

    def test_unknown_vrf_is_ignored_with_a_log_line(self) -> None:
        with capturedLogs() as logs:
            self.update(inet("10.0.0.7/32"), node="1/1/red")
        self.assertEqual(self.h.sink.table, {})
        self.assertIn("did not subscribe to", "\n".join(formatEvent(e) for e in logs))
        self.assertFalse(self.h.tr.disconnecting)

    def test_malformed_closes_but_keeps_routes(self) -> None:
        self.update(inet("10.0.0.7/32", "127.0.0.3", 33))
        with capturedLogs() as logs:
            self.h.feed(b"<message><event><items node='1/1/blue'><item id='x'></message>")
        self.assertTrue(self.h.tr.disconnecting)
        self.assertIn("malformed XML", "\n".join(formatEvent(e) for e in logs))
        self.h.lose()
        self.assertEqual(len(self.h.sink.table), 1)

    def test_megabyte_node_name_is_logged_bounded(self) -> None:
        with capturedLogs() as logs:
            self.update(inet("10.0.0.7/32"), node="1/1/" + "r" * (1 << 20))
        self.assertEqual(self.h.sink.table, {})
        self.assertFalse(self.h.tr.disconnecting)
        lines = [formatEvent(e) for e in logs]
        self.assertTrue(any("did not subscribe to" in line for line in lines), lines)
        self.assertTrue(any("more characters]" in line for line in lines), lines)
        for event in logs:
            self.assertLess(len(formatEvent(event)), 2048)
            self.assertLess(sum(len(v) for v in event.values() if isinstance(v, str)), 2048)

    def test_hostile_stanzas_close_with_a_clear_reason(self) -> None:
        from tests.xmpp.test_stanza_attacks import laughs, smuggled

        deep = b"<a>" * 1000 + b"</a>" * 1000
        cases = {
            smuggled(laughs()): "undefined entity",
            b'<message from="cn"><event><items node="&#178;/1/blue"/></event></message>': (
                "is not afi/safi/vrf"
            ),
            b'<message from="cn"><event><items node="' + b"9" * 5000 + b'/1/blue"/></event>'
            b"</message>": "is not afi/safi/vrf",
            build_config("host1").replace(
                b"<config></config>",
                b'<config><update><node type="t"><name>n</name>' + deep
                + b"</node></update></config>",
            ): "config nested deeper than",
        }
        self.update(inet("10.0.0.7/32", "127.0.0.3", 33))
        for data, why in cases.items():
            with capturedLogs() as logs:
                self.h.feed(data)
            text = "\n".join(formatEvent(e) for e in logs)
            self.assertIn("closed: bad stanza:", text)
            self.assertIn(why, text)
            self.assertNotIn("Traceback", text)
            self.assertTrue(self.h.tr.value().endswith(b"</stream:stream>"))
            self.assertTrue(self.h.tr.disconnecting)
            self.h.lose()
            # Nothing else lost: the learnt route stays (stale), a new session works.
            self.assertEqual(len(self.h.sink.table), 1)
            self.h.clock.advance(60)
            self.h.establish()
            self.h.sent()
            self.update(inet("10.0.0.7/32", "127.0.0.3", 33))

    def test_stale_routes_swept_after_stale_time(self) -> None:
        self.update(inet("10.0.0.7/32", "127.0.0.3", 33))
        self.h.lose()
        self.h.clock.advance(29)
        self.assertEqual(len(self.h.sink.table), 1)  # headless: still forwarding
        self.h.clock.advance(1.1)
        self.assertEqual(self.h.sink.table, {})

    def test_routes_synced_at_end_of_rib_and_stale_expiry(self) -> None:
        """Listeners hear when the learnt routes are as complete as they get (the agent
        then deletes what its predecessor learnt and no one taught it again)."""
        synced: list[int] = []
        self.h.link.on_routes_synced.append(lambda: synced.append(1))
        self.update(inet("10.0.0.7/32", "127.0.0.3", 33))
        self.assertEqual(synced, [])
        self.h.feed(build_eor_message(CN, "host1/bgp-peer"))
        self.assertEqual(synced, [1])
        self.h.link.on_routes_synced.clear()
        self.h.link.on_routes_synced.append(lambda: synced.append(2))
        self.h.lose()
        self.h.clock.advance(30.1)  # no session comes back: the stale time decides
        self.assertEqual(synced, [1, 2])

    def test_new_session_eor_sweeps_what_was_not_readvertised(self) -> None:
        self.update(inet("10.0.0.7/32", "127.0.0.3", 33), inet("10.0.0.8/32", "127.0.0.3", 34))
        self.h.lose()
        self.h.clock.advance(0.1)  # ClientService reconnects (first retry: ~50 ms)
        self.assertEqual(len(self.h.ep.transports), 2)
        self.h.establish()
        out = self.h.sent()
        self.assertIn(Subscribe("blue", "bgp-peer", 0, False, "host1"), out)
        self.update(inet("10.0.0.7/32", "127.0.0.3", 33))
        self.assertEqual(len(self.h.sink.table), 2)
        calls = len(self.h.sink.calls)
        self.h.feed(build_eor_message(CN, "host1/bgp-peer"))
        self.assertEqual(list(self.h.sink.table), [("blue", "10.0.0.7", 32)])
        # The re-advertised route was not re-programmed (same state).
        self.assertEqual(self.h.sink.calls[calls:], [("del", "blue", "10.0.0.8", 32)])
        self.h.clock.advance(60)
        self.assertEqual(list(self.h.sink.table), [("blue", "10.0.0.7", 32)])

    def test_config_applied(self) -> None:
        vn = ConfigNode("virtual-network", "d:p:vn1", {"id-perms": {"uuid": "1"},
                                                       "virtual-network-network-id": "5"})
        noperms = ConfigNode("routing-instance", "d:p:vn1:vn1", {})
        link = ConfigLink(("virtual-network", "d:p:vn1"), ("routing-instance", "d:p:vn1:vn1"),
                          "virtual-network-routing-instance")
        seen: list[Any] = []
        self.h.link.config.listeners.append(seen.append)
        self.h.feed(build_config("host1", (vn, noperms, link)))
        self.assertEqual(self.h.link.config.get("virtual-network", "d:p:vn1"), vn)
        self.assertIsNone(self.h.link.config.get("routing-instance", "d:p:vn1:vn1"))
        self.assertEqual(self.h.link.config.linked("virtual-network", "d:p:vn1"),
                         [("routing-instance", "d:p:vn1:vn1")])
        self.h.feed(build_config("host1", (), (vn,)))
        self.assertEqual(self.h.link.config.objects("virtual-network"), [])
        self.assertEqual(len(seen), 2)

    def test_control_node_sending_agent_stanzas_is_a_violation(self) -> None:
        from vrtwist.xmpp.stanzas import build_subscribe

        self.h.feed(build_subscribe("cn", "blue", 1))
        self.assertTrue(self.h.tr.disconnecting)
        self.assertIn("agent stanza", self.h.session.close_reason)

    def test_features_without_tls_configured(self) -> None:
        from vrtwist.xmpp.stanzas import build_features

        h = LinkHarness()
        h.feed(build_stream_response("cn1", "host1") + build_features(True))
        self.assertIn("requires TLS", h.session.close_reason)


class RemoteRouteTableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sink = RecordingSink(vrfs=("blue",))
        self.t = RemoteRouteTable(self.sink)

    def test_sink_provides_the_seam(self) -> None:
        verifyObject(IRemoteRouteSink, self.sink)

    def test_the_agent_model_provides_the_seam(self) -> None:
        try:
            from vrtwist.agent.dpstate import DatapathModel
            from vrtwist.agent.interfaces import IRouteProgrammer
        except ImportError as e:  # pragma: no cover
            self.skipTest(f"agent model not available: {e}")
        self.assertIs(IRemoteRouteSink, IRouteProgrammer)
        verifyObject(IRemoteRouteSink, DatapathModel(fabric_ip="127.0.0.2"))

    def test_encap_priority(self) -> None:
        self.t.reach("blue", (1, 1), (inet("10.0.0.1/32", encaps=("gre",)),
                                      inet("10.0.0.2/32", encaps=("vxlan", "gre", "udp"))))
        self.assertEqual(self.sink.table[("blue", "10.0.0.1", 32)][2], "gre")
        self.assertEqual(self.sink.table[("blue", "10.0.0.2", 32)][2], "udp")

    def test_no_usable_encap_is_not_programmed(self) -> None:
        self.t.reach("blue", (1, 1), (inet("10.0.0.1/32", encaps=("mpls-o-mpls",)),))
        self.assertEqual(self.sink.table, {})

    def test_same_item_twice_programs_once(self) -> None:
        self.t.reach("blue", (1, 1), (inet("10.0.0.1/32"),))
        self.t.reach("blue", (1, 1), (inet("10.0.0.1/32"),))
        self.assertEqual(len(self.sink.calls), 1)

    def test_changed_item_reprograms(self) -> None:
        self.t.reach("blue", (1, 1), (inet("10.0.0.1/32", label=5),))
        self.t.reach("blue", (1, 1), (inet("10.0.0.1/32", label=6),))
        self.assertEqual(self.sink.table[("blue", "10.0.0.1", 32)][1], 6)

    def test_inet6(self) -> None:
        e = RouteEntry(2, 1, "fd00::5/128", (NextHop("127.0.0.4", 9, ("udp",)),))
        self.t.reach("blue", (2, 1), (e,))
        self.assertEqual(self.sink.table[("blue", "fd00::5", 128)], ("127.0.0.4", 9, "udp", None))
        self.t.retract("blue", (2, 1), ("fd00::5/128",))
        self.assertEqual(self.sink.table, {})

    def test_evpn_without_ip_is_kept_but_not_programmed(self) -> None:
        e = RouteEntry(25, 242, "0.0.0.0/32", (NextHop("127.0.0.4", 9),), mac="02:00:00:00:00:01")
        self.t.reach("blue", (25, 242), (e,))
        self.assertEqual(len(self.t), 1)
        self.assertEqual(self.sink.table, {})

    def test_evpn_retract_keeps_inet_route(self) -> None:
        evpn = RouteEntry(25, 242, "10.0.0.1/32", (NextHop("192.0.2.1", 16, ("udp",)),),
                          mac="02:00:00:00:00:01")
        self.t.reach("blue", (1, 1), (inet("10.0.0.1/32"),))
        self.t.reach("blue", (25, 242), (evpn,))
        self.assertEqual(self.sink.table[("blue", "10.0.0.1", 32)][3], "02:00:00:00:00:01")
        self.t.retract("blue", (25, 242), (evpn.item_id,))
        self.assertEqual(self.sink.table[("blue", "10.0.0.1", 32)][3], None)

    def test_unknown_vrf_error_is_counted_and_logged(self) -> None:
        with capturedLogs() as logs:
            self.t.reach("red", (1, 1), (inet("10.0.0.1/32"),))
        self.assertEqual(self.t.errors, 1)
        self.assertIn("cannot program 10.0.0.1/32 in red", "\n".join(formatEvent(e) for e in logs))
        self.t.reach("blue", (1, 1), (inet("10.0.0.1/32"),))
        self.assertEqual(len(self.sink.table), 1)

    def test_drop_vrf(self) -> None:
        self.t.reach("blue", (1, 1), (inet("10.0.0.1/32"), inet("10.0.0.2/32")))
        self.assertEqual(self.t.drop_vrf("blue"), 2)
        self.assertEqual(self.sink.table, {})

    def test_stale_sweep(self) -> None:
        self.t.reach("blue", (1, 1), (inet("10.0.0.1/32"), inet("10.0.0.2/32")))
        self.assertEqual(self.t.mark_all_stale(), 2)
        self.t.reach("blue", (1, 1), (inet("10.0.0.2/32"),))
        self.assertEqual(self.t.sweep_stale(), 1)
        self.assertEqual(list(self.sink.table), [("blue", "10.0.0.2", 32)])


@implementer(IStreamClientEndpoint)
class FailingEndpoint:
    def __init__(self, clock: MemoryReactorClock, name: str, log: list[Any]) -> None:
        self.clock, self.name, self.log = clock, name, log

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.log.append((self.name, round(self.clock.seconds(), 2)))
        return defer.fail(ConnectionRefusedError(self.name))


class ReconnectTests(SynchronousTestCase):
    def test_backoff_sequence(self) -> None:
        rng = random.Random(7)
        bases = [0.05, 1, 2, 4, 8, 16, 30, 30, 30]
        for attempt, base in enumerate(bases, start=1):
            d = backoff_delay(attempt, rng)
            self.assertGreaterEqual(d, base * 0.9)
            self.assertLessEqual(d, base * 1.1)

    def test_jitter_varies(self) -> None:
        rng = random.Random(3)
        self.assertGreater(len({backoff_delay(5, rng) for _ in range(20)}), 10)

    def test_failover_after_four_attempts_with_client_service(self) -> None:
        clock = MemoryReactorClock()
        log: list[Any] = []
        eps = [FailingEndpoint(clock, "cn1", log), FailingEndpoint(clock, "cn2", log)]
        link = ControllerLink(clock, eps, "h", "127.0.0.2", RecordingSink(),
                              names=["cn1", "cn2"], rng=random.Random(0))
        with capturedLogs() as logs:
            link.startService()
            for _ in range(2000):
                clock.advance(0.05)
        names = [n for n, _ in log]
        self.assertEqual(names[:MAX_ATTEMPTS], ["cn1"] * MAX_ATTEMPTS)
        self.assertEqual(names[MAX_ATTEMPTS:2 * MAX_ATTEMPTS], ["cn2"] * MAX_ATTEMPTS)
        gaps = [round(b[1] - a[1]) for a, b in itertools.pairwise(log)]
        # 0, 1, 2 s between the four attempts on cn1; cn2 starts over at once.
        self.assertEqual(gaps[:8], [0, 1, 2, 0, 0, 1, 2, 0])
        self.assertIn("controller cn1 failed 4 attempts (last: unreachable (", "\n".join(
            formatEvent(e) for e in logs))
        link.stopService()

    def test_single_controller_backs_off_to_30s(self) -> None:
        clock = MemoryReactorClock()
        log: list[Any] = []
        link = ControllerLink(clock, [FailingEndpoint(clock, "cn1", log)], "h", "127.0.0.2",
                              RecordingSink(), rng=random.Random(0))
        link.startService()
        for _ in range(3000):
            clock.advance(0.05)
        gaps = [b[1] - a[1] for a, b in itertools.pairwise(log)]
        for gap, base in zip(gaps, [0.05, 1, 2, 4, 8, 16, 30, 30], strict=False):
            self.assertTrue(base * 0.9 - 0.051 <= gap <= base * 1.1 + 0.051, (gap, base))
        link.stopService()

    def test_session_that_never_comes_up_backs_off_and_fails_over(self) -> None:
        clock = MemoryReactorClock()
        eps = [MemEndpoint(clock), MemEndpoint(clock)]
        link = ControllerLink(clock, eps, "h", "127.0.0.2", RecordingSink(), names=["a", "b"],
                              rng=random.Random(0))
        link.startService()
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        delays = []
        for i in range(4):
            lost_at = clock.seconds()
            eps[0].protocols[-1].connectionLost(Failure(ConnectionDone()))
            for _ in range(100):
                clock.advance(0.05)
            ep = eps[0] if i < 3 else eps[1]
            delays.append(round(ep.attempts[-1] - lost_at))
        self.assertEqual(delays, [0, 1, 2, 0])  # 4th failure: the other controller at once
        self.assertEqual(len(eps[1].attempts), 1)
        link.stopService()

    def test_success_resets_failures(self) -> None:
        clock = MemoryReactorClock()
        log: list[Any] = []
        good = MemEndpoint(clock)
        ep = FailoverEndpoint([FailingEndpoint(clock, "a", log), good], ["a", "b"])
        for _ in range(3):
            ep.connect(None).addErrback(lambda f: None)  # type: ignore[arg-type]
        self.assertEqual((ep.current, ep.failures), (0, 3))
        ep.session_established()
        self.assertEqual((ep.current, ep.failures), (0, 0))
        for _ in range(4):
            ep.connect(None).addErrback(lambda f: None)  # type: ignore[arg-type]
        self.assertEqual((ep.current, ep.failures), (1, 0))

    def test_endpoint_descriptions(self) -> None:
        self.assertEqual(_endpoint_description("tcp:10.0.0.1:5269"), "tcp:10.0.0.1:5269")
        self.assertEqual(_endpoint_description("10.0.0.1:5270"), "tcp:10.0.0.1:5270")
        self.assertEqual(_endpoint_description("10.0.0.1"), "tcp:10.0.0.1:5269")
        self.assertEqual(_endpoint_description("localhost:5269"), "tcp:localhost:5269")

    def test_make_controller_link(self) -> None:
        from twisted.application.service import IService

        from vrtwist.xmpp.interfaces import IControllerLink

        clock = MemoryReactorClock()
        link = makeControllerLink(clock, ["tcp:127.0.0.1:5269", "127.0.0.1:5270", "x:1"], "h",
                                  "127.0.0.2", RecordingSink(), hold_time=30)
        self.assertEqual(link.endpoint.names, ["tcp:127.0.0.1:5269", "tcp:127.0.0.1:5270"])
        verifyObject(IStreamClientEndpoint, link.endpoint)
        verifyObject(IService, link)
        verifyObject(IControllerLink, link)
        with self.assertRaises(ValueError):
            makeControllerLink(clock, ["tcp:127.0.0.1:5269"], "h", "1.2.3.4", RecordingSink(),
                               hold_time=91)
        with self.assertRaises(ValueError):
            makeControllerLink(clock, ["tcp:127.0.0.1:5269"], "h", "1.2.3.4", RecordingSink(),
                               xmpp_cert="/c")

    def test_link_kwargs_from_options(self) -> None:
        opts = {"xmpp-hold-time": 30.0, "xmpp-stale-time": 5.0, "xmpp-cert": "c", "xmpp-key": "k",
                "xmpp-ca": None}
        self.assertEqual(linkKwargsFromOptions(opts), {"hold_time": 30.0, "stale_time": 5.0,
                                                       "xmpp_cert": "c", "xmpp_key": "k"})


class ConfigStoreTests(SynchronousTestCase):
    CONFIG = b"""<?xml version="1.0"?>
<iq type="set" from="network-control@contrailsystems.com" to="host1/config"><config><update>
<node type="virtual-network"><name>default-domain:demo:vn1</name><id-perms><uuid>vn-uuid</uuid></id-perms>
 <virtual-network-network-id>5</virtual-network-network-id></node>
<node type="routing-instance"><name>default-domain:demo:vn1:vn1</name><id-perms><uuid>ri</uuid></id-perms></node>
<link><node type="virtual-network"><name>default-domain:demo:vn1</name></node>
 <node type="routing-instance"><name>default-domain:demo:vn1:vn1</name></node><metadata type="virtual-network-routing-instance"/></link>
<link><node type="virtual-network"><name>default-domain:demo:vn1</name></node>
 <node type="network-ipam"><name>default-domain:default-project:default-network-ipam</name></node>
 <metadata type="virtual-network-network-ipam"><ipam-subnets><subnet><ip-prefix>10.1.1.0</ip-prefix><ip-prefix-len>24</ip-prefix-len></subnet><default-gateway>10.1.1.1</default-gateway><dns-server-address>10.1.1.2</dns-server-address></ipam-subnets><ipam-subnets><subnet><ip-prefix>fd00::</ip-prefix><ip-prefix-len>64</ip-prefix-len></subnet><default-gateway>fd00::1</default-gateway></ipam-subnets></metadata></link>
<node type="virtual-machine-interface"><name>default-domain:demo:55b49e32</name><id-perms><uuid>55b49e32</uuid></id-perms>
 <virtual-machine-interface-mac-addresses><mac-address>02:55:b4:9e:32:b8</mac-address></virtual-machine-interface-mac-addresses></node>
<link><node type="virtual-machine-interface"><name>default-domain:demo:55b49e32</name></node>
 <node type="virtual-network"><name>default-domain:demo:vn1</name></node><metadata type="virtual-machine-interface-virtual-network"/></link>
<node type="instance-ip"><name>abc3bd27</name><id-perms><uuid>abc</uuid></id-perms><instance-ip-address>10.1.1.3</instance-ip-address></node>
<link><node type="instance-ip"><name>abc3bd27</name></node>
 <node type="virtual-machine-interface"><name>default-domain:demo:55b49e32</name></node><metadata type="instance-ip-virtual-machine-interface"/></link>
</update></config></iq>"""

    def test_objects_the_agent_needs(self) -> None:
        from vrtwist.xmpp.agent_link import ConfigStore
        from vrtwist.xmpp.stanzas import ConfigUpdate

        store = ConfigStore()
        update = parse_stanza(self.CONFIG)
        assert isinstance(update, ConfigUpdate)
        store.apply(update)
        self.assertEqual(store.routing_instance_of("default-domain:demo:vn1"),
                         "default-domain:demo:vn1:vn1")
        self.assertEqual(store.subnets_of("default-domain:demo:vn1"), [
            {"prefix": "10.1.1.0", "plen": 24, "gateway": "10.1.1.1", "dns": "10.1.1.2"},
            {"prefix": "fd00::", "plen": 64, "gateway": "fd00::1", "dns": ""}])
        self.assertEqual(store.interface("55b49e32"), {
            "name": "default-domain:demo:55b49e32", "mac": "02:55:b4:9e:32:b8",
            "network": "default-domain:demo:vn1", "ips": ["10.1.1.3"]})
        self.assertIsNone(store.interface("nope"))
        # A delete of the link takes the subnets away.
        links = [lk for lk in update.updates if isinstance(lk, ConfigLink)
                 and lk.metadata == "virtual-network-network-ipam"]
        store.apply(ConfigUpdate((), tuple(links)))
        self.assertEqual(store.subnets_of("default-domain:demo:vn1"), [])

    def test_link_metadata_round_trips(self) -> None:
        from vrtwist.xmpp.stanzas import ConfigUpdate

        update = parse_stanza(self.CONFIG)
        assert isinstance(update, ConfigUpdate)
        again = parse_stanza(build_config("host1", update.updates))
        assert isinstance(again, ConfigUpdate)
        self.assertEqual([getattr(i, "properties", None) for i in again.updates],
                         [getattr(i, "properties", None) for i in update.updates])


class ConfigNamedInstanceTests(SynchronousTestCase):
    """With config from the control node, the routing instance on the wire is the one
    config names for the port's network (as a real control node expects)."""

    VN = "8c9a6f8e-1234-4321-8765-000000000001"
    RI = "default-domain:demo:vn1:vn1"

    def config(self) -> bytes:
        ms = int(self.VN.replace("-", "")[:16], 16)
        ls = int(self.VN.replace("-", "")[16:], 16)
        vn = ConfigNode("virtual-network", "default-domain:demo:vn1", {
            "id-perms": {"uuid": {"uuid-mslong": str(ms), "uuid-lslong": str(ls)}}})
        ri = ConfigNode("routing-instance", self.RI, {"id-perms": {"uuid": "x"}})
        link = ConfigLink(("virtual-network", "default-domain:demo:vn1"),
                          ("routing-instance", self.RI), "virtual-network-routing-instance")
        return build_config("host1", (vn, ri, link))

    def info(self) -> LocalRouteInfo:
        return LocalRouteInfo("p1", "vm1", self.VN, "blue", "", "10.0.0.1", None, 21, "127.0.0.2")

    def test_instance_renamed_by_config(self) -> None:
        h = LinkHarness()
        h.establish()
        h.link.localRouteAdded(self.info())
        h.feed(build_route_update(CN, "host1/bgp-peer", "1/1/blue", [inet("10.0.0.9/32")]))
        h.sent()
        h.feed(self.config())
        out = h.sent()
        self.assertEqual(out[0], Unsubscribe("blue", "bgp-peer", "host1"))
        self.assertEqual(out[1], Subscribe(self.RI, "bgp-peer", 0, False, "host1"))
        self.assertEqual(out[2].node, f"1/1/{self.RI}/10.0.0.1/32")
        self.assertEqual(h.sink.table, {})  # what was learnt under the old name is dropped
        h.feed(build_route_update(CN, "host1/bgp-peer", f"1/1/{self.RI}",
                                  [inet("10.0.0.7/32", "127.0.0.3", 33)]))
        self.assertEqual(h.sink.table, {("blue", "10.0.0.7", 32): ("127.0.0.3", 33, "udp", None)})
        h.link.localRouteDeleted(self.info())
        h.clock.advance(0)
        self.assertIn(Unsubscribe(self.RI, "bgp-peer", "host1"), h.sent())
        self.assertEqual(h.sink.table, {})

    def test_config_known_before_the_port(self) -> None:
        h = LinkHarness()
        h.establish()
        h.feed(self.config())
        h.sent()
        h.link.localRouteAdded(self.info())
        out = h.sent()
        self.assertIn(Subscribe(self.RI, "bgp-peer", 0, False, "host1"), out)
        self.assertNotIn(Subscribe("blue", "bgp-peer", 0, False, "host1"), out)


class _BatchingSink(RecordingSink):
    """A sink offering ``batched()``: records which calls happened inside a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.batches: list[list[tuple[Any, ...]]] = []

    def batched(self) -> Any:
        from contextlib import contextmanager

        @contextmanager
        def cm() -> Any:
            self.depth += 1
            start = len(self.calls)
            try:
                yield
            finally:
                self.depth -= 1
                self.batches.append(self.calls[start:])
        return cm()


class BatchedReceiveTests(SynchronousTestCase):
    def test_one_read_is_one_batch(self) -> None:
        sink = _BatchingSink()
        h = LinkHarness(sink=sink)
        h.link.localRouteAdded(port(1))
        h.establish()
        data = b"".join(build_route_update(CN, "host1/bgp-peer", "1/1/blue",
                                           [inet(f"10.0.{i}.{j}/32", "127.0.0.3", 40 + j)
                                            for j in range(1, 9)]) for i in range(3))
        sink.batches.clear()
        h.feed(data)
        self.assertEqual([len(b) for b in sink.batches], [24])
        self.assertEqual(len(sink.table), 24)
        self.assertEqual(sink.depth, 0)

    def test_bad_stanza_inside_a_batch_still_ends_it(self) -> None:
        sink = _BatchingSink()
        h = LinkHarness(sink=sink)
        h.link.localRouteAdded(port(1))
        h.establish()
        sink.batches.clear()
        with capturedLogs():
            h.feed(build_route_update(CN, "host1/bgp-peer", "1/1/blue",
                                      [inet("10.0.0.7/32", "127.0.0.3", 33)])
                   + b"<message><event><items node='1/1/blue'><item id='x'></message>")
        self.assertEqual(sink.depth, 0)
        self.assertEqual(len(sink.batches), 1)
        self.assertTrue(h.tr.disconnecting)
        self.assertEqual(len(sink.table), 1)  # what came before the bad stanza is kept

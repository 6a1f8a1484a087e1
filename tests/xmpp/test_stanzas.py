"""Stanza codec: golden examples of spec A.2/A.3 in both directions, round trips, and
every bad-input path (malformed XML, entities, DTDs, bad fields)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.xmpp.framing import StanzaBytes, StanzaSplitter
from vrtwist.xmpp.stanzas import (
    EOR_NODE,
    PROCEED,
    STARTTLS,
    Collection,
    ConfigLink,
    ConfigNode,
    ConfigUpdate,
    EndOfRib,
    NextHop,
    Publish,
    RouteEntry,
    RouteUpdate,
    StanzaError,
    StartTls,
    StreamFeatures,
    Subscribe,
    TlsProceed,
    Unsubscribe,
    build_config,
    build_eor_iq_pair,
    build_eor_message,
    build_features,
    build_retract,
    build_route_publish,
    build_route_update,
    build_subscribe,
    build_unsubscribe,
    parse_stanza,
)

# --- spec examples, as they appear on the wire --------------------------------------

CONFIG_SUBSCRIBE = b"""<iq type="set" from="worker-3" to="network-control@contrailsystems.com/config">
<pubsub xmlns="http://jabber.org/protocol/pubsub">
<subscribe node="virtual-router:default-global-system-config:worker-3" />
</pubsub>
</iq>"""

VRF_SUBSCRIBE_2013 = (
    b'<iq type="set" from="host" to="network-control@contrailsystems.com/bgp-peer" id="subscribe0">'
    b'<pubsub xmlns="http://jabber.org/protocol/pubsub"><subscribe node="default-domain:'
    b'default-project:ip-fabric:__default__"><options><instance-id>0</instance-id></options>'
    b"</subscribe></pubsub></iq>"
)

VRF_SUBSCRIBE_TESTFILE = b"""<iq type='set' from='agent@vnsw.contrailsystems.com' to='bgp.contrail.com/bgp-peer' id='sub1'>
  <pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='blue'/>
  <options><instance-id>1</instance-id></options></pubsub></iq>"""

VRF_UNSUBSCRIBE = b"""<iq type='set' from='agent@vnsw.contrailsystems.com' to='bgp.contrail.com/bgp-peer' id='sub1'>
  <pubsub xmlns='http://jabber.org/protocol/pubsub'><unsubscribe node='blue'/></pubsub></iq>"""

INET_PUBLISH = b"""<iq type="set" from="os2" to="network-control@contrailsystems.com/bgp-peer" id="pubsub3">
 <pubsub xmlns="http://jabber.org/protocol/pubsub">
  <publish node="1/1/default-domain:demo:private:private/10.0.0.4/32">
   <item><entry>
     <nlri><af>1</af><safi>1</safi><address>10.0.0.4/32</address></nlri>
     <next-hops><next-hop>
        <af>1</af><address>10.43.91.10</address><mac>(vhost0 mac)</mac><label>19</label>
        <tunnel-encapsulation-list><tunnel-encapsulation>gre</tunnel-encapsulation>
                                   <tunnel-encapsulation>udp</tunnel-encapsulation></tunnel-encapsulation-list>
        <virtual-network>default-domain:demo:private</virtual-network>
        <tag-list/><local-sequence-number>3</local-sequence-number>
     </next-hop></next-hops>
     <version>1</version><virtual-network></virtual-network>
     <sequence-number>0</sequence-number>
     <security-group-list><security-group>8000002</security-group></security-group-list>
     <community-tag-list/><local-preference>100</local-preference><med>0</med>
     <load-balance>...</load-balance><sub-protocol>interface</sub-protocol>
   </entry></item>
  </publish>
 </pubsub>
</iq>
<iq type="set" from="os2" to="network-control@contrailsystems.com/bgp-peer" id="collection3">
 <pubsub xmlns="http://jabber.org/protocol/pubsub">
  <collection node="default-domain:demo:private:private">
   <associate node="1/1/default-domain:demo:private:private/10.0.0.4/32" />
  </collection>
 </pubsub>
</iq>"""

EVPN_PUBLISH = b"""<iq type="set" from="host" to="network-control@contrailsystems.com/bgp-peer" id="pubsub_l27">
 <pubsub xmlns="http://jabber.org/protocol/pubsub">
  <publish node="25/242/02:55:b4:9e:32:b8,10.0.0.4/32"><item><entry>
    <nlri><af>25</af><safi>242</safi><ethernet-tag>0</ethernet-tag><mac>02:55:b4:9e:32:b8</mac><address>10.0.0.4/32</address>...</nlri>
    <next-hops><next-hop><af>1</af><address>10.43.91.10</address><mac></mac><label>20</label><l3-label>0</l3-label>
      <tunnel-encapsulation-list><tunnel-encapsulation>gre</tunnel-encapsulation><tunnel-encapsulation>udp</tunnel-encapsulation></tunnel-encapsulation-list>
      <tag-list/></next-hop></next-hops>
    <olist/><virtual-network></virtual-network><mobility seqno="0" sticky="false"/><sequence-number>0</sequence-number>
    <security-group-list>...</security-group-list><local-preference>100</local-preference><med>0</med>
    <edge-replication-not-supported>false</edge-replication-not-supported><assisted-replication-supported>false</assisted-replication-supported>
    <leaf-olist/><replicator-address></replicator-address><etree-leaf>true</etree-leaf>
  </entry></item></publish></pubsub></iq>"""

AGENT_EOR = b"""<message from="host" to="network-control@contrailsystems.com/bgp-peer">
\t<event xmlns="http://jabber.org/protocol/pubsub">
<items node="0/0/EndOfRib"></items>
\t</event>
</message>"""

CN_UPDATE = b"""<message from="network-control@contrailsystems.com" to="worker-3/bgp-peer">
<event xmlns="http://jabber.org/protocol/pubsub">
 <items node="1/1/default-domain:default:ext-vn2:ext-vn2">
  <item id="2.0.0.2/32"><entry>
   <nlri><af>1</af><safi>1</safi><address>2.0.0.2/32</address></nlri>
   <next-hops><next-hop><af>1</af><address>10.1.1.3</address><mac></mac><label>47</label><vni>0</vni>
     <tunnel-encapsulation-list><tunnel-encapsulation>gre</tunnel-encapsulation><tunnel-encapsulation>udp</tunnel-encapsulation></tunnel-encapsulation-list>
     <virtual-network>default-domain:default:ext-vn2</virtual-network>
     <tag-list><tag>65543</tag><tag>524295</tag></tag-list></next-hop></next-hops>
   <version>1</version><virtual-network>default-domain:default:ext-vn2</virtual-network>
   <mobility seqno="1" sticky="false" /><sequence-number>1</sequence-number>
   <security-group-list /><community-tag-list><community-tag>3:9</community-tag></community-tag-list>
   <local-preference>200</local-preference><med>100</med>
   <load-balance><load-balance-fields /><load-balance-decision>field-hash</load-balance-decision></load-balance>
   <sub-protocol>interface</sub-protocol>
  </entry></item>
  <!-- more <item>s, up to kMaxReachCount per message -->
 </items>
</event>
</message>"""

CN_RETRACT = b"""<message from="network-control@contrailsystems.com" to="worker-3/bgp-peer">
\t<event xmlns="http://jabber.org/protocol/pubsub">
\t\t<items node="1/1/default-domain:default:ext-vn2:ext-vn2">
\t\t\t<retract id="2.0.0.2/32" />
\t\t</items>
\t</event>
</message>"""

CN_CONFIG = b"""<?xml version="1.0"?>
<iq type="set" from="network-control@contrailsystems.com" to="default-global-system-config:os2/config">
 <config><update>
   <node type="virtual-machine"><name>213d8cec-c37d</name><id-perms><uuid>u</uuid></id-perms><display-name>213d8cec-c37d</display-name></node>
   <link><node type="virtual-router"><name>default-global-system-config:os2</name></node>
         <node type="virtual-machine"><name>213d8cec-c37d</name></node><metadata type="virtual-router-virtual-machine" /></link>
   <node type="virtual-machine-interface"><name>default-domain:demo:55b49e32</name>
      <virtual-machine-interface-mac-addresses><mac-address>02:55:b4:9e:32:b8</mac-address></virtual-machine-interface-mac-addresses></node>
   <node type="instance-ip"><name>abc3bd27</name><instance-ip-address>10.0.0.3</instance-ip-address><instance-ip-family>v4</instance-ip-family></node>
 </update></config></iq>"""


def frame(data: bytes) -> list[bytes]:
    return [e.data for e in StanzaSplitter().feed(data) if isinstance(e, StanzaBytes)]


def squash(data: bytes) -> bytes:
    return re.sub(rb">\s+<", b"><", data.strip())


class AgentToControlGoldenTests(SynchronousTestCase):
    def test_config_subscribe(self) -> None:
        s = parse_stanza(CONFIG_SUBSCRIBE)
        self.assertEqual(
            s, Subscribe("virtual-router:default-global-system-config:worker-3", "config",
                         None, False, "worker-3"))
        built = build_subscribe("worker-3", "virtual-router:default-global-system-config:worker-3",
                                service="config")
        self.assertEqual(built, squash(CONFIG_SUBSCRIBE))

    def test_vrf_subscribe_real_trace(self) -> None:
        s = parse_stanza(VRF_SUBSCRIBE_2013)
        self.assertEqual(s, Subscribe("default-domain:default-project:ip-fabric:__default__",
                                      "bgp-peer", 0, False, "host"))
        built = build_subscribe("host", "default-domain:default-project:ip-fabric:__default__", 0,
                                iq_id="subscribe0")
        self.assertEqual(built, VRF_SUBSCRIBE_2013)

    def test_vrf_subscribe_options_as_sibling(self) -> None:
        s = parse_stanza(VRF_SUBSCRIBE_TESTFILE)
        self.assertEqual(s, Subscribe("blue", "bgp-peer", 1, False,
                                      "agent@vnsw.contrailsystems.com"))

    def test_vrf_unsubscribe(self) -> None:
        self.assertEqual(parse_stanza(VRF_UNSUBSCRIBE),
                         Unsubscribe("blue", "bgp-peer", "agent@vnsw.contrailsystems.com"))
        self.assertEqual(parse_stanza(build_unsubscribe("a", "blue")), Unsubscribe("blue", "bgp-peer", "a"))

    def test_inet_publish_and_associate(self) -> None:
        pub, coll = frame(INET_PUBLISH)
        p = parse_stanza(pub)
        assert isinstance(p, Publish)
        self.assertEqual(p.node, "1/1/default-domain:demo:private:private/10.0.0.4/32")
        e = p.entry
        assert e is not None
        self.assertEqual((e.afi, e.safi, e.address), (1, 1, "10.0.0.4/32"))
        self.assertEqual(e.next_hops[0].address, "10.43.91.10")
        self.assertEqual(e.next_hops[0].label, 19)
        self.assertEqual(e.next_hops[0].encapsulations, ("gre", "udp"))
        self.assertEqual(e.next_hops[0].virtual_network, "default-domain:demo:private")
        self.assertEqual(e.next_hops[0].local_sequence, 3)
        self.assertEqual(e.security_groups, (8000002,))
        self.assertEqual(e.item_id, "10.0.0.4/32")
        c = parse_stanza(coll)
        self.assertEqual(c, Collection("default-domain:demo:private:private",
                                       "1/1/default-domain:demo:private:private/10.0.0.4/32", None, "os2"))

    def test_built_publish_has_the_real_shape(self) -> None:
        entry = RouteEntry(1, 1, "10.0.0.4/32",
                           (NextHop("10.43.91.10", 19, ("gre", "udp"), virtual_network="vn"),))
        pub, coll = frame(build_route_publish("os2", "default-domain:demo:private:private", entry,
                                              True, 3))
        self.assertIn(b'id="pubsub3"', pub)
        self.assertIn(b'<publish node="1/1/default-domain:demo:private:private/10.0.0.4/32">', pub)
        self.assertIn(b"<mac></mac><label>19</label><vni>0</vni><tunnel-encapsulation-list>", pub)
        self.assertEqual(
            coll,
            b'<iq type="set" from="os2" to="network-control@contrailsystems.com/bgp-peer" '
            b'id="collection3"><pubsub xmlns="http://jabber.org/protocol/pubsub"><collection '
            b'node="default-domain:demo:private:private"><associate node="1/1/default-domain:'
            b'demo:private:private/10.0.0.4/32" /></collection></pubsub></iq>',
        )

    def test_withdraw_is_publish_then_dissociate(self) -> None:
        entry = RouteEntry(2, 1, "fd11::3/128", (NextHop("10.1.1.1", 5),))
        pub, coll = frame(build_route_publish("a", "blue", entry, False, 9))
        p = parse_stanza(pub)
        assert isinstance(p, Publish)
        self.assertEqual(p.node, "2/1/blue/fd11::3/128")
        self.assertEqual(p.entry, entry)
        self.assertEqual(parse_stanza(coll), Collection("blue", None, "2/1/blue/fd11::3/128", "a"))

    def test_evpn_publish(self) -> None:
        p = parse_stanza(EVPN_PUBLISH)
        assert isinstance(p, Publish) and p.entry is not None
        self.assertEqual(p.node, "25/242/02:55:b4:9e:32:b8,10.0.0.4/32")
        self.assertEqual(p.entry.mac, "02:55:b4:9e:32:b8")
        self.assertEqual(p.entry.item_id, "02:55:b4:9e:32:b8,10.0.0.4/32")
        self.assertEqual(p.entry.next_hops[0].label, 20)
        entry = RouteEntry(25, 242, "10.0.0.4/32", (NextHop("10.43.91.10", 20),),
                           mac="02:55:b4:9e:32:b8")
        pub, coll = frame(build_route_publish("host", "vrf", entry, True, 7))
        self.assertIn(b'id="pubsub_l27"', pub)
        self.assertIn(b'<publish node="25/242/02:55:b4:9e:32:b8,10.0.0.4/32">', pub)
        self.assertIn(b'id="collection_l27"', coll)
        self.assertEqual(parse_stanza(pub), Publish(p.node, entry, "host"))

    def test_agent_eor_message(self) -> None:
        self.assertEqual(parse_stanza(AGENT_EOR), EndOfRib("host"))
        self.assertEqual(
            build_eor_message("host", "network-control@contrailsystems.com/bgp-peer"), AGENT_EOR)

    def test_agent_eor_iq_pair(self) -> None:
        pub, coll = frame(build_eor_iq_pair("host"))
        self.assertEqual(parse_stanza(pub), Publish("", None, "host"))
        self.assertEqual(parse_stanza(coll), Collection("", None, None, "host"))


class ControlToAgentGoldenTests(SynchronousTestCase):
    def test_route_update(self) -> None:
        u = parse_stanza(CN_UPDATE)
        assert isinstance(u, RouteUpdate)
        self.assertEqual(u.vrf, "default-domain:default:ext-vn2:ext-vn2")
        self.assertEqual(u.family, (1, 1))
        [e] = u.items
        self.assertEqual(e.address, "2.0.0.2/32")
        self.assertEqual(e.next_hops[0], NextHop("10.1.1.3", 47, ("gre", "udp"), "",
                                                 "default-domain:default:ext-vn2", 0, (65543, 524295)))
        self.assertEqual((e.local_preference, e.med, e.sequence_number), (200, 100, 1))

    def test_built_update_round_trips(self) -> None:
        u = parse_stanza(CN_UPDATE)
        assert isinstance(u, RouteUpdate)
        again = parse_stanza(build_route_update("network-control@contrailsystems.com",
                                                "worker-3/bgp-peer", u.node, u.items))
        self.assertEqual(again, u)

    def test_retract(self) -> None:
        r = parse_stanza(CN_RETRACT)
        self.assertEqual(r, RouteUpdate("1/1/default-domain:default:ext-vn2:ext-vn2", (), ("2.0.0.2/32",)))
        built = build_retract("network-control@contrailsystems.com", "worker-3/bgp-peer",
                              "1/1/default-domain:default:ext-vn2:ext-vn2", ["2.0.0.2/32"])
        self.assertEqual(built, squash(CN_RETRACT))

    def test_retracts_win_over_items(self) -> None:
        mixed = CN_UPDATE.replace(b"</items>", b'<retract id="9.9.9.9/32"/></items>')
        r = parse_stanza(mixed)
        assert isinstance(r, RouteUpdate)
        self.assertEqual((r.items, r.retracts), ((), ("9.9.9.9/32",)))

    def test_multicast_items_are_accepted_and_empty(self) -> None:
        # Shape 11 (ErmVPN): a real control node sends these; they must not kill the session.
        mcast = (b'<message from="network-control@contrailsystems.com" to="a/bgp-peer"><event '
                 b'xmlns="http://jabber.org/protocol/pubsub"><items node="1/241/blue"><item '
                 b'id="10.1.1.1:1:255.255.255.255,0.0.0.0"><entry><nlri><af>1</af><safi>241</safi>'
                 b"<group>255.255.255.255</group><source>0.0.0.0</source></nlri><olist><next-hop>"
                 b"<af>1</af><address>10.1.1.3</address><label>1000-1999</label></next-hop>"
                 b"</olist></entry></item></items></event></message>")
        self.assertEqual(parse_stanza(mcast), RouteUpdate("1/241/blue"))

    def test_cn_eor(self) -> None:
        msg = build_eor_message("network-control@contrailsystems.com", "worker-3/bgp-peer")
        self.assertEqual(parse_stanza(msg), EndOfRib("network-control@contrailsystems.com"))
        self.assertIn(EOR_NODE.encode(), msg)

    def test_config_with_mid_stream_declaration(self) -> None:
        [iq] = frame(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>" + CN_CONFIG)
        self.assertTrue(iq.startswith(b'<?xml version="1.0"?>'))
        c = parse_stanza(iq)
        assert isinstance(c, ConfigUpdate)
        self.assertEqual(len(c.updates), 4)
        vm = c.updates[0]
        assert isinstance(vm, ConfigNode)
        self.assertEqual((vm.type, vm.name), ("virtual-machine", "213d8cec-c37d"))
        self.assertEqual(vm.properties["id-perms"], {"uuid": "u"})
        link = c.updates[1]
        self.assertEqual(link, ConfigLink(("virtual-router", "default-global-system-config:os2"),
                                          ("virtual-machine", "213d8cec-c37d"),
                                          "virtual-router-virtual-machine"))
        vmi = c.updates[2]
        assert isinstance(vmi, ConfigNode)
        self.assertEqual(vmi.properties["virtual-machine-interface-mac-addresses"],
                         {"mac-address": "02:55:b4:9e:32:b8"})

    def test_built_config_round_trips(self) -> None:
        up = (ConfigNode("virtual-network", "d:p:vn", {"id-perms": {"uuid": "1"},
                                                       "network-id": "5"}),
              ConfigLink(("a", "x"), ("b", "y"), "a-b"))
        de = (ConfigNode("instance-ip", "ip1", {}),)
        data = build_config("host", up, de)
        self.assertTrue(data.startswith(b'<?xml version="1.0"?>\n<iq type="set"'))
        self.assertEqual(parse_stanza(data), ConfigUpdate(up, de))

    def test_tls_stanzas(self) -> None:
        self.assertEqual(parse_stanza(build_features(True)), StreamFeatures(True, True))
        self.assertEqual(parse_stanza(build_features(False)), StreamFeatures(False, False))
        self.assertEqual(parse_stanza(STARTTLS), StartTls())
        self.assertEqual(parse_stanza(PROCEED), TlsProceed())


prefixes4 = st.builds(lambda a, b, l: f"10.{a}.{b}.0/{l}", st.integers(0, 255), st.integers(0, 255),
                      st.integers(8, 32))
names = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF,
                                       blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20
                ).map(str.strip).filter(bool)  # text values are read stripped


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=80, deadline=None)
    @given(prefix=prefixes4, label=st.integers(0, (1 << 20) - 1), vrf=names, vn=names,
           encaps=st.lists(st.sampled_from(["gre", "udp", "vxlan"]), min_size=1, max_size=3,
                           unique=True),
           sgs=st.lists(st.integers(0, 1 << 31), max_size=3), add=st.booleans())
    def test_publish(self, prefix: str, label: int, vrf: str, vn: str, encaps: list[str],
                     sgs: list[int], add: bool) -> None:
        entry = RouteEntry(1, 1, prefix, (NextHop("192.0.2.1", label, tuple(encaps),
                                                  virtual_network=vn),),
                           virtual_network=vn, security_groups=tuple(sgs))
        pub, coll = frame(build_route_publish("agent<&>", vrf, entry, add, 1))
        p = parse_stanza(pub)
        assert isinstance(p, Publish)
        self.assertEqual(p.entry, entry)
        self.assertEqual(p.sender, "agent<&>")
        c = parse_stanza(coll)
        assert isinstance(c, Collection)
        self.assertEqual(c.node, vrf)
        self.assertEqual(c.associate if add else c.dissociate, p.node)

    @settings(max_examples=40, deadline=None)
    @given(macs=st.lists(st.binary(min_size=6, max_size=6), min_size=1, max_size=5, unique=True),
           vrf=names)
    def test_evpn_update(self, macs: list[bytes], vrf: str) -> None:
        entries = tuple(RouteEntry(25, 242, "10.0.0.1/32", (NextHop("10.1.1.1", 7, ("vxlan",)),),
                                   mac=":".join(f"{b:02x}" for b in m)) for m in macs)
        u = parse_stanza(build_route_update("cn", "a/bgp-peer", f"25/242/{vrf}", entries))
        assert isinstance(u, RouteUpdate)
        self.assertEqual(u.items, entries)
        self.assertEqual(u.vrf, vrf)


class BuilderCacheTests(SynchronousTestCase):
    """The builders keep the parts shared by an agent's routes; output must not depend on
    what was built before, nor on the cache being full."""

    def test_same_bytes_cold_and_warm(self) -> None:
        from vrtwist.xmpp import stanzas

        entries = [
            RouteEntry(1, 1, f"10.0.0.{i}/32", (NextHop("192.0.2.1", 16 + i, ("gre", "udp"),
                                                       virtual_network="v<1>"),),
                       virtual_network="v<1>", local_preference=100 + i % 2)
            for i in range(4)
        ] + [RouteEntry(25, 242, "10.0.0.9/32", (NextHop("192.0.2.1", 7, tags=(3,)),),
                        mac="02:00:00:00:00:09", security_groups=(5,))]
        for e in entries:
            stanzas._pieces.clear()
            cold = build_route_publish("a&b", "blue", e, True, 3)
            warm = build_route_publish("a&b", "blue", e, True, 3)
            self.assertEqual(cold, warm)
            p = parse_stanza(frame(cold)[0])
            assert isinstance(p, Publish)
            self.assertEqual(p.entry, e)
        # labels differ per route and are never taken from the cache
        a, b = (build_route_publish("a", "blue", e, True, 1) for e in entries[:2])
        self.assertIn(b"<label>16</label>", a)
        self.assertIn(b"<label>17</label>", b)

    def test_cache_is_bounded(self) -> None:
        from vrtwist.xmpp import stanzas

        for i in range(stanzas._PIECES_MAX + 10):
            build_route_publish("a", "blue", RouteEntry(1, 1, "10.0.0.1/32", (
                NextHop(f"192.0.{i >> 8 & 255}.{i & 255}", 5),)))
        self.assertLessEqual(len(stanzas._pieces), stanzas._PIECES_MAX)


class BadStanzaTests(SynchronousTestCase):
    def check(self, data: bytes, fragment: str) -> None:
        with self.assertRaises(StanzaError) as cm:
            parse_stanza(data)
        self.assertIn(fragment, str(cm.exception))

    def test_malformed_xml(self) -> None:
        self.check(b"<iq type='set'><pubsub></iq>", "malformed XML")

    def test_entity_expansion_refused(self) -> None:
        bomb = (b'<?xml version="1.0"?><!DOCTYPE iq [<!ENTITY a "aaaaaaaaaa">'
                b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><iq type="set">&b;</iq>')
        self.check(bomb, "refused: a document type declaration")

    def test_external_entity_refused(self) -> None:
        self.check(b'<!DOCTYPE iq SYSTEM "file:///etc/passwd"><iq>&x;</iq>', "refused")

    def test_undefined_entity(self) -> None:
        self.check(b'<iq type="set">&lol;</iq>', "undefined entity")

    def test_iq_without_payload(self) -> None:
        self.check(b'<iq type="set"></iq>', "without a payload")

    def test_get_iq(self) -> None:
        self.check(b'<iq type="get"><pubsub xmlns="http://jabber.org/protocol/pubsub">'
                   b'<subscribe node="x"/></pubsub></iq>', "type 'get'")

    def test_bad_prefix(self) -> None:
        bad = INET_PUBLISH.split(b"</iq>")[0] + b"</iq>"
        self.check(bad.replace(b"<address>10.0.0.4/32", b"<address>10.0.0.400/32"), "bad prefix")

    def test_prefix_family_mismatch(self) -> None:
        bad = INET_PUBLISH.split(b"</iq>")[0] + b"</iq>"
        self.check(bad.replace(b"<address>10.0.0.4/32", b"<address>fd00::1/128"), "does not match")

    def test_bad_label(self) -> None:
        bad = CN_UPDATE.replace(b"<label>47</label>", b"<label>x47</label>")
        self.check(bad, "label is not an integer")
        self.check(CN_UPDATE.replace(b"<label>47</label>", b"<label>99999999</label>"), "out of range")

    def test_bad_nexthop(self) -> None:
        self.check(CN_UPDATE.replace(b"<address>10.1.1.3", b"<address>nowhere"), "not IPv4")

    def test_bad_mac(self) -> None:
        self.check(EVPN_PUBLISH.replace(b"<mac>02:55:b4:9e:32:b8</mac>", b"<mac>zz</mac>"), "bad mac")

    def test_bad_items_node(self) -> None:
        self.check(CN_RETRACT.replace(b'node="1/1/', b'node="x/'), "not afi/safi/vrf")

    def test_unknown_family(self) -> None:
        self.check(CN_UPDATE.replace(b"<af>1</af><safi>1</safi>", b"<af>7</af><safi>1</safi>"),
                   "unsupported address family")

    def test_publish_with_two_items(self) -> None:
        pub = frame(INET_PUBLISH)[0]
        item = re.search(rb"<item>.*</item>", pub, re.S).group(0)  # type: ignore[union-attr]
        self.check(pub.replace(item, item + item), "2 items")

    def test_unknown_stanza(self) -> None:
        self.check(b"<presence/>", "unexpected stanza")

    def test_collection_without_target(self) -> None:
        self.check(b'<iq type="set"><pubsub xmlns="http://jabber.org/protocol/pubsub">'
                   b'<collection node="v"></collection></pubsub></iq>', "without associate")


texts = st.text(alphabet=st.characters(min_codepoint=9, max_codepoint=0x2FF,
                                       blacklist_categories=("Cs",)), max_size=12)  # type: ignore[arg-type]


class FastPathTests(SynchronousTestCase):
    """The canonical-form fast path must agree with the full parser, or step aside."""

    @settings(max_examples=150, deadline=None)
    @given(prefix=prefixes4, label=st.integers(0, (1 << 24) - 1), vrf=texts, vn=texts,
           sender=texts, encaps=st.lists(st.sampled_from(["gre", "udp", "vxlan"]), max_size=3),
           sgs=st.lists(st.integers(0, 1 << 31), max_size=3),
           tags=st.lists(st.integers(0, 1 << 31), max_size=3), lp=st.integers(0, 1 << 31),
           mac=st.one_of(st.none(), st.binary(min_size=6, max_size=6)),
           sub=st.sampled_from(["interface", "", "static"]), add=st.booleans())
    def test_fast_equals_full(self, prefix: str, label: int, vrf: str, vn: str, sender: str,
                              encaps: list[str], sgs: list[int], tags: list[int], lp: int,
                              mac: bytes | None, sub: str, add: bool) -> None:
        from vrtwist.xmpp.stanzas import parse_fast, parse_stanza_full

        macs = ":".join(f"{b:02x}" for b in mac) if mac is not None else ""
        entry = RouteEntry(25 if mac is not None else 1, 242 if mac is not None else 1, prefix,
                           (NextHop("10.1.2.3", label, tuple(encaps), "", vn if mac is None else "",
                                    0, tuple(tags)),),
                           mac=macs, virtual_network=vn, security_groups=tuple(sgs),
                           local_preference=lp, sub_protocol=sub if mac is None else "interface")
        stanzas = frame(build_route_publish(sender, vrf, entry, add, 1))
        stanzas.append(build_route_update(sender, "x/bgp-peer", f"1/1/{vrf}", [entry, entry]))
        stanzas.append(build_retract(sender, "x/bgp-peer", f"1/1/{vrf}", [prefix, "a"]))
        for data in stanzas:
            try:
                full = parse_stanza_full(data)
            except StanzaError:
                self.assertIsNone(parse_fast(data))
                continue
            fast = parse_fast(data)
            if fast is not None:
                self.assertEqual(fast, full)
            self.assertEqual(parse_stanza(data), full)

    def test_canonical_stanzas_take_the_fast_path(self) -> None:
        from vrtwist.xmpp.stanzas import parse_fast, parse_stanza_full

        e = RouteEntry(1, 1, "10.0.0.1/32", (NextHop("10.1.1.1", 5),))
        pub, coll = frame(build_route_publish("a", "v", e, True, 1))
        self.assertIsNotNone(parse_fast(pub))
        self.assertIsNotNone(parse_fast(coll))
        self.assertIsNotNone(parse_fast(build_route_update("cn", "a", "1/1/v", [e])))
        self.assertIsNotNone(parse_fast(build_retract("cn", "a", "1/1/v", ["10.0.0.1/32"])))
        sub = build_subscribe("a", "virtual-machine:x", service="config")
        self.assertEqual(parse_fast(sub), parse_stanza_full(sub))
        unsub = build_unsubscribe("a", "blue", iq_id="u1")
        self.assertEqual(parse_fast(unsub), parse_stanza_full(unsub))

    def test_entry_tails_are_remembered_by_their_text(self) -> None:
        """Routes of one agent share everything after the label: matched once, reused,
        and a tail that does not match is never remembered."""
        from vrtwist.xmpp import stanzas

        stanzas._TAILS.clear()
        entries = [RouteEntry(1, 1, f"10.0.0.{i}/32", (NextHop("10.1.1.1", 5 + i, ("udp",)),),
                              virtual_network="vn", local_preference=200) for i in range(3)]
        msg = build_route_update("cn", "a", "1/1/v", entries)
        u = stanzas.parse_fast(msg)
        assert isinstance(u, RouteUpdate)
        self.assertEqual(u.items, tuple(entries))
        self.assertEqual(len(stanzas._TAILS), 1)
        self.assertEqual(stanzas.parse_fast(msg), u)  # from the memo: same records
        bad = msg.replace(b"<med>0</med>", b"<med>x</med>")
        self.assertIsNone(stanzas.parse_fast(bad))
        self.assertEqual(len(stanzas._TAILS), 1)
        for i in range(stanzas._TAILS_MAX + 5):
            e = RouteEntry(1, 1, "10.0.0.1/32", (NextHop("10.1.1.1", 5),), sequence_number=i)
            self.assertIsNotNone(stanzas.parse_fast(build_route_update("cn", "a", "1/1/v", [e])))
        self.assertLessEqual(len(stanzas._TAILS), stanzas._TAILS_MAX)

    def test_non_canonical_forms_go_to_the_full_parser(self) -> None:
        from vrtwist.xmpp.stanzas import parse_fast

        e = RouteEntry(1, 1, "10.0.0.1/32", (NextHop("10.1.1.1", 5),), virtual_network="a&b")
        pub, _ = frame(build_route_publish("a", "v", e, True, 1))
        self.assertIsNone(parse_fast(pub))  # an escaped value
        p = parse_stanza(pub)
        assert isinstance(p, Publish) and p.entry is not None
        self.assertEqual(p.entry.virtual_network, "a&b")
        self.assertIsNone(parse_fast(INET_PUBLISH.split(b"</iq>")[0] + b"</iq>"))  # real agent form
        bad = build_route_update("cn", "a", "1/1/v", [e]).replace(b"10.0.0.1/32", b"10.0.0.1/33")
        self.assertIsNone(parse_fast(bad))
        with self.assertRaises(StanzaError):
            parse_stanza(bad)

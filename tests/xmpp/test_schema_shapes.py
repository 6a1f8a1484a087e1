"""Every route stanza vrtwist builds has the structure of the real XMPP schemas, and the
control node takes stanzas laid out exactly as the real agent prints them.

The facts restate, in this project's words, the newest ``xmpp_unicast.xsd`` and
``xmpp_enet.xsd`` (tungstenfabric/tf-api-client ``schema/``): each complex type's
elements in order, with the kind of value each holds; and what the real agent's and
control node's builders (tf-controller ``controller_peer.cc``, ``xmpp_message_builder.cc``)
fill in.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.xmpp.agent_link import LocalRouteInfo
from vrtwist.xmpp.framing import StanzaBytes, StanzaSplitter
from vrtwist.xmpp.stanzas import (
    NextHop,
    RouteEntry,
    RouteUpdate,
    build_agent_eor,
    build_route_publish,
    build_route_update,
    parse_stanza,
)
from vrtwist.xmpp.testing import MemAgent, make_node

from .test_agent_link import LinkHarness

INT, STR, BOOL, LIST = "int", "str", "bool", "list"

#: (element, kind) in schema order, per complex type.
UNICAST = {
    "entry": [("nlri", "IPAddressType"), ("next-hops", "NextHopListType"), ("version", INT),
              ("virtual-network", STR), ("mobility", "MobilityType"),
              ("sequence-number", INT), ("security-group-list", LIST),
              ("community-tag-list", LIST), ("local-preference", INT), ("med", INT),
              ("load-balance", "LoadBalanceType"), ("sub-protocol", STR)],
    "IPAddressType": [("af", INT), ("safi", INT), ("address", STR)],
    "NextHopType": [("af", INT), ("address", STR), ("mac", STR), ("label", INT), ("vni", INT),
                    ("tunnel-encapsulation-list", LIST), ("virtual-network", STR),
                    ("tag-list", LIST), ("local-sequence-number", INT)],
}
ENET = {
    "entry": [("nlri", "EnetAddressType"), ("next-hops", "EnetNextHopListType"),
              ("olist", LIST), ("virtual-network", STR), ("mobility", "MobilityType"),
              ("sequence-number", INT), ("security-group-list", LIST),
              ("local-preference", INT), ("med", INT),
              ("edge-replication-not-supported", BOOL),
              ("assisted-replication-supported", BOOL), ("leaf-olist", LIST),
              ("replicator-address", STR), ("etree-leaf", BOOL)],
    "EnetAddressType": [("af", INT), ("safi", INT), ("ethernet-tag", INT), ("mac", STR),
                        ("address", STR), ("group", STR), ("source", STR), ("flags", INT)],
    "EnetNextHopType": [("af", INT), ("address", STR), ("mac", STR), ("label", INT),
                        ("l3-label", INT), ("tunnel-encapsulation-list", LIST),
                        ("tag-list", LIST), ("local-sequence-number", INT)],
}
#: The tunnel encapsulations each schema names.
ENCAPS_UNICAST = {"gre", "mpls", "udp", "vxlan"}
ENCAPS_ENET = {"gre", "udp", "vxlan"}


def _in_order(case: SynchronousTestCase, elem: ET.Element, spec: list[tuple[str, str]],
              where: str) -> None:
    names = [c.tag for c in elem]
    order = [n for n, _ in spec]
    case.assertEqual([n for n in names if n not in order], [], f"{where}: unknown elements")
    case.assertEqual(names, sorted(names, key=order.index), f"{where}: out of schema order")
    kinds = dict(spec)
    for c in elem:
        text = (c.text or "").strip()
        kind = kinds[c.tag]
        if kind == INT:
            case.assertRegex(text, r"^-?[0-9]+$", f"{where}/{c.tag}")
        elif kind == BOOL:
            case.assertIn(text, ("true", "false"), f"{where}/{c.tag}")


def check_entry(case: SynchronousTestCase, entry: ET.Element) -> None:
    evpn = entry.find("nlri/af") is not None and entry.findtext("nlri/af") == "25"
    schema = ENET if evpn else UNICAST
    _in_order(case, entry, schema["entry"], "entry")
    nlri = entry.find("nlri")
    assert nlri is not None
    _in_order(case, nlri, schema["EnetAddressType" if evpn else "IPAddressType"], "nlri")
    hops = entry.find("next-hops")
    assert hops is not None
    case.assertTrue(len(hops) >= 1)
    for nh in hops:
        case.assertEqual(nh.tag, "next-hop")
        _in_order(case, nh, schema["EnetNextHopType" if evpn else "NextHopType"], "next-hop")
        encaps = {e.text for e in nh.iterfind("tunnel-encapsulation-list/tunnel-encapsulation")}
        case.assertLessEqual(encaps, ENCAPS_ENET if evpn else ENCAPS_UNICAST)


def entries(data: bytes) -> list[ET.Element]:
    """The ``<entry>`` elements of the stanzas in ``data`` (stream bytes included)."""
    out: list[ET.Element] = []
    for event in StanzaSplitter().feed(data):
        if isinstance(event, StanzaBytes):
            root = ET.fromstring(event.data)
            for el in root.iter():  # pubsub's namespace is inherited: compare local names
                el.tag = el.tag.rpartition("}")[2]
            out.extend(root.iter("entry"))
    return out


def pretty(data: bytes) -> bytes:
    """A stanza printed the way pugixml's default format prints it (the real agent's
    writer): one element a line, tab indentation, text kept on its element's line, a line
    break at the end."""
    toks = re.findall(rb"<[^>]*>|[^<]+", data.strip())
    out: list[bytes] = []
    depth, i = 0, 0
    while i < len(toks):
        tok = toks[i]
        if tok.startswith(b"</"):
            depth -= 1
            out.append(b"\t" * depth + tok)
        elif tok.endswith(b"/>"):
            out.append(b"\t" * depth + tok)
        elif i + 1 < len(toks) and toks[i + 1].startswith(b"</"):
            out.append(b"\t" * depth + tok + toks[i + 1])  # <a></a>
            i += 1
        elif i + 2 < len(toks) and not toks[i + 1].startswith(b"<"):
            out.append(b"\t" * depth + tok + toks[i + 1] + toks[i + 2])  # <a>text</a>
            i += 2
        else:
            out.append(b"\t" * depth + tok)
            depth += 1
        i += 1
    return b"\n".join(out) + b"\n"


class BuiltStanzaShapeTests(SynchronousTestCase):
    def test_agent_publishes(self) -> None:
        h = LinkHarness()
        h.link.host_mac = "52:54:00:12:34:56"
        h.link.localRouteAdded(LocalRouteInfo("p1", "vm1", "vn", "default-domain:p:net1:net1",
                                              "02:00:00:00:00:01", "10.0.0.1", "fd00::1", 17,
                                              "127.0.0.2"))
        h.establish()
        data = h.tr.value()
        found = entries(data)
        self.assertEqual(len(found), 3)  # inet, inet6, EVPN
        for e in found:
            check_entry(self, e)
        inet = next(e for e in found if e.findtext("nlri/af") == "1")
        # the real agent: the host interface's MAC, the network's fq-name in the next
        # hop, the entry's network left empty
        self.assertEqual(inet.findtext("next-hops/next-hop/mac"), "52:54:00:12:34:56")
        self.assertEqual(inet.findtext("next-hops/next-hop/virtual-network"),
                         "default-domain:p:net1")
        self.assertEqual(inet.findtext("virtual-network"), "")
        self.assertEqual(inet.findtext("next-hops/next-hop/local-sequence-number"), "0")
        evpn = next(e for e in found if e.findtext("nlri/af") == "25")
        self.assertEqual(evpn.findtext("virtual-network"), "")
        self.assertEqual((evpn.findtext("nlri/group"), evpn.findtext("nlri/source"),
                          evpn.findtext("nlri/flags")), ("", "", "0"))

    def test_control_node_updates(self) -> None:
        nh = NextHop("10.1.1.3", 47, ("gre", "udp"), virtual_network="d:p:vn", tags=(65543,),
                     local_sequence=2)
        items = [
            RouteEntry(1, 1, "2.0.0.2/32", (nh,), virtual_network="d:p:vn"),
            RouteEntry(25, 242, "2.0.0.2/32", (nh._replace(virtual_network=""),),
                       mac="02:00:00:00:00:02", virtual_network="d:p:vn", group="0.0.0.0",
                       source="0.0.0.0"),
        ]
        for entry in items:
            node = "1/1/d:p:vn:vn" if entry.afi == 1 else "25/242/d:p:vn:vn"
            data = build_route_update("network-control@contrailsystems.com", "w1/bgp-peer", node,
                                      [entry])
            (e,) = entries(data)
            check_entry(self, e)
            parsed = parse_stanza(data)
            assert isinstance(parsed, RouteUpdate)
            self.assertEqual(parsed.items, (entry,))

    def test_agent_eor_bytes(self) -> None:
        self.assertEqual(
            build_agent_eor("host1"),
            b'\n<message from="host1" to="network-control@contrailsystems.com/bgp-peer">\n\t'
            b'<event xmlns="http://jabber.org/protocol/pubsub">\n<items node="0/0/EndOfRib">'
            b"</items>\n\t</event>\n</message>\n")


class RealAgentLayoutTests(SynchronousTestCase):
    """The control node reads stanzas with the real agent's whitespace (pugixml's
    indented print) just as the compact ones, and reflects them in the schema's shape."""

    def test_whitespace_formatted_publish_and_eor(self) -> None:
        clock, _node, factory = make_node()
        a, b = MemAgent(factory, "a"), MemAgent(factory, "b", host="127.0.0.3")
        for m in (a, b):
            m.open()
            m.subscribe("d:p:vn:vn")
        b.received()
        hop = NextHop("10.9.0.1", 21, ("gre", "udp"), mac="52:54:00:00:00:01",
                      virtual_network="d:p:vn", local_sequence=4)
        inet = RouteEntry(1, 1, "10.0.0.5/32", (hop,))
        evpn = RouteEntry(25, 242, "10.0.0.5/32", (hop._replace(mac="", virtual_network=""),),
                          mac="02:00:00:00:00:05")
        for entry in (inet, evpn):
            data = build_route_publish("a", "d:p:vn:vn", entry, True, 1)
            pub, sep, coll = data.partition(b"</iq>")
            formatted = pretty(pub + sep) + pretty(coll)
            self.assertIn(b"\n\t\t\t\t<entry>\n", formatted)  # really re-laid out
            a.send(formatted)
        a.send(build_agent_eor("a"))
        self.assertFalse(a.closed)
        clock.advance(1)
        got, _retracts, _eors = b.routes()
        self.assertEqual(set(got), {"10.0.0.5/32", "02:00:00:00:00:05,10.0.0.5/32"})
        # reflected as the real control node fills them: the entry names the network,
        # the EVPN nlri carries group and source
        self.assertEqual(got["10.0.0.5/32"].virtual_network, "d:p:vn")
        self.assertEqual(got["10.0.0.5/32"].next_hops[0].local_sequence, 4)
        mac_route = got["02:00:00:00:00:05,10.0.0.5/32"]
        self.assertEqual((mac_route.virtual_network, mac_route.group, mac_route.source),
                         ("d:p:vn", "0.0.0.0", "0.0.0.0"))


class RelayPatchTests(SynchronousTestCase):
    def test_patched_text_equals_a_rebuild(self) -> None:
        """The control node fills an agent's canonical item by text: the very bytes a
        rebuild would give, and nothing when the text is not the canonical one."""
        from vrtwist.xmpp.control import _patched, as_control_node_sends
        from vrtwist.xmpp.stanzas import entry_xml

        hop = NextHop("10.9.0.1", 21, ("gre", "udp"), mac="52:54:00:00:00:01",
                      virtual_network="d:p:a&b")
        for old in (RouteEntry(1, 1, "10.0.0.5/32", (hop,)),
                    RouteEntry(25, 242, "10.0.0.5/32", (hop._replace(mac="", virtual_network=""),),
                               mac="02:00:00:00:00:05")):
            new = as_control_node_sends(old, "d:p:a&b")
            self.assertIsNot(new, old)
            self.assertEqual(_patched(entry_xml(old), old, new), entry_xml(new))
            self.assertEqual(_patched("<entry>odd</entry>", old, new), "")

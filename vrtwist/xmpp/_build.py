"""Builders: records in, the bytes the real peers write out.

Builders write elements in the order of the ``xmpp_unicast.xsd`` / ``xmpp_enet.xsd``
generated encoders, which the real peers use.  The parts that routes of one agent share
(next hop, network, attributes) are built once and kept in a bounded cache, so a burst
of routes formats only its prefixes and labels.  Public names are re-exported by
:mod:`vrtwist.xmpp.stanzas`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ._records import (
    AFI_L2VPN,
    CONTROL_NODE_JID,
    EOR_NODE,
    PUBSUB_NS,
    TLS_NS,
    ConfigLink,
    ConfigNode,
    NextHop,
    RouteEntry,
)

_XML_DECL = b'<?xml version="1.0"?>\n'


def _esc(value: object) -> str:
    text = str(value)
    if "&" in text or "<" in text or ">" in text or '"' in text or "'" in text:
        text = (
            text.replace("&", "&amp;")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
            .replace('"', "&quot;")
            .replace("'", "&apos;")
        )
    return text


def _iq_head(sender: str, service: str, iq_id: str | None) -> str:
    ident = f' id="{_esc(iq_id)}"' if iq_id is not None else ""
    return (
        f'<iq type="set" from="{_esc(sender)}" to="{CONTROL_NODE_JID}/{service}"{ident}>'
        f'<pubsub xmlns="{PUBSUB_NS}">'
    )


def build_subscribe(
    sender: str,
    node: str,
    instance_id: int | None = None,
    service: str = "bgp-peer",
    iq_id: str | None = None,
    no_ribout: bool = False,
) -> bytes:
    """A routing-instance subscribe (with ``instance-id``) or a config subscribe."""
    if instance_id is None:
        body = f'<subscribe node="{_esc(node)}" />'
    else:
        extra = "<no-ribout>true</no-ribout>" if no_ribout else ""
        body = (
            f'<subscribe node="{_esc(node)}"><options><instance-id>{int(instance_id)}'
            f"</instance-id>{extra}</options></subscribe>"
        )
    return (_iq_head(sender, service, iq_id) + body + "</pubsub></iq>").encode()


def build_unsubscribe(
    sender: str, node: str, service: str = "bgp-peer", iq_id: str | None = None
) -> bytes:
    return (
        _iq_head(sender, service, iq_id) + f'<unsubscribe node="{_esc(node)}" /></pubsub></iq>'
    ).encode()


def publish_node(vrf: str, entry: RouteEntry) -> str:
    """The publish node the real agent uses (EVPN carries no VRF in it)."""
    if entry.afi == AFI_L2VPN:
        return f"{entry.afi}/{entry.safi}/{entry.item_id}"
    return f"{entry.afi}/{entry.safi}/{vrf}/{entry.address}"


def items_node(vrf: str, afi: int, safi: int) -> str:
    return f"{afi}/{safi}/{vrf}"


#: Built pieces of the builders below, by what they depend on (routes of one agent share
#: next hop, network and attributes and differ in prefix and label, so publishing a burst
#: formats only those).  Cleared when it grows past ``_PIECES_MAX`` entries.
_pieces: dict[tuple[Any, ...], Any] = {}
_PIECES_MAX = 4096


def _remember(key: tuple[Any, ...], value: Any) -> Any:
    if len(_pieces) >= _PIECES_MAX:
        _pieces.clear()
    _pieces[key] = value
    return value


def _next_hop_parts(nh: NextHop, evpn: bool) -> tuple[str, str]:
    """A next hop's XML before and after its label (the label alone varies per port)."""
    key = ("nh", evpn, nh.address, nh.mac, nh.encapsulations, nh.virtual_network,
           nh.l3_label, nh.tags, nh.local_sequence)
    parts = _pieces.get(key)
    if parts is not None:
        return parts  # type: ignore[no-any-return]
    encaps = "".join(
        f"<tunnel-encapsulation>{_esc(e)}</tunnel-encapsulation>" for e in nh.encapsulations
    )
    tags = "".join(f"<tag>{int(t)}</tag>" for t in nh.tags)
    tag_list = f"<tag-list>{tags}</tag-list>" if tags else "<tag-list />"
    tag_list += f"<local-sequence-number>{int(nh.local_sequence)}</local-sequence-number>"
    head = f"<next-hop><af>1</af><address>{_esc(nh.address)}</address><mac>{_esc(nh.mac)}</mac><label>"
    if evpn:
        tail = (
            f"</label><l3-label>{int(nh.l3_label)}</l3-label>"
            f"<tunnel-encapsulation-list>{encaps}</tunnel-encapsulation-list>{tag_list}"
            "</next-hop>"
        )
    else:
        tail = (
            f"</label><vni>0</vni><tunnel-encapsulation-list>{encaps}</tunnel-encapsulation-list>"
            f"<virtual-network>{_esc(nh.virtual_network)}</virtual-network>{tag_list}"
            "</next-hop>"
        )
    return _remember(key, (head, tail))  # type: ignore[no-any-return]


def _next_hop_xml(nh: NextHop, evpn: bool) -> str:
    head, tail = _next_hop_parts(nh, evpn)
    return f"{head}{int(nh.label)}{tail}"


def _entry_tail(entry: RouteEntry, evpn: bool) -> str:
    """An entry's XML after its next hops: the same for every route with the same
    network and attributes."""
    key = ("tail", evpn, entry.virtual_network, entry.sequence_number,
           entry.local_preference, entry.med, entry.security_groups, entry.sub_protocol)
    tail = _pieces.get(key)
    if tail is not None:
        return tail  # type: ignore[no-any-return]
    sgs = "".join(f"<security-group>{int(s)}</security-group>" for s in entry.security_groups)
    sgl = f"<security-group-list>{sgs}</security-group-list>" if sgs else "<security-group-list />"
    if evpn:
        tail = (
            f"</next-hops><olist /><virtual-network>"
            f"{_esc(entry.virtual_network)}</virtual-network>"
            f'<mobility seqno="0" sticky="false" /><sequence-number>{int(entry.sequence_number)}'
            f"</sequence-number>{sgl}<local-preference>{int(entry.local_preference)}"
            f"</local-preference><med>{int(entry.med)}</med>"
            "<edge-replication-not-supported>false</edge-replication-not-supported>"
            "<assisted-replication-supported>false</assisted-replication-supported>"
            "<leaf-olist /><replicator-address></replicator-address>"
            "<etree-leaf>true</etree-leaf></entry>"
        )
    else:
        tail = (
            f"</next-hops><version>1</version><virtual-network>"
            f"{_esc(entry.virtual_network)}</virtual-network>"
            f'<mobility seqno="0" sticky="false" /><sequence-number>{int(entry.sequence_number)}'
            f"</sequence-number>{sgl}<community-tag-list />"
            f"<local-preference>{int(entry.local_preference)}</local-preference>"
            f"<med>{int(entry.med)}</med><load-balance><load-balance-fields />"
            "<load-balance-decision>field-hash</load-balance-decision></load-balance>"
            f"<sub-protocol>{_esc(entry.sub_protocol)}</sub-protocol></entry>"
        )
    return _remember(key, tail)  # type: ignore[no-any-return]


def entry_xml(entry: RouteEntry) -> str:
    """The ``<entry>`` of a route, elements in XSD order (empty ones included)."""
    evpn = entry.afi == AFI_L2VPN
    hops = "".join(_next_hop_xml(nh, evpn) for nh in entry.next_hops)
    if evpn:
        return (
            f"<entry><nlri><af>{entry.afi}</af><safi>{entry.safi}</safi>"
            f"<ethernet-tag>{int(entry.ethernet_tag)}</ethernet-tag><mac>{_esc(entry.mac)}</mac>"
            f"<address>{_esc(entry.address)}</address><group>{_esc(entry.group)}</group>"
            f"<source>{_esc(entry.source)}</source><flags>{int(entry.flags)}</flags></nlri>"
            f"<next-hops>{hops}{_entry_tail(entry, True)}"
        )
    return (
        f"<entry><nlri><af>{entry.afi}</af><safi>{entry.safi}</safi>"
        f"<address>{_esc(entry.address)}</address></nlri><next-hops>{hops}"
        f"{_entry_tail(entry, False)}"
    )


def _iq_open(sender: str, service: str) -> str:
    """``<iq type="set" from=... to=...`` of an agent's iq, up to its ``id``."""
    key = ("iq", sender, service)
    head = _pieces.get(key)
    if head is None:
        head = _remember(
            key, f'<iq type="set" from="{_esc(sender)}" to="{CONTROL_NODE_JID}/{service}"'
        )
    return head  # type: ignore[no-any-return]


def build_route_publish(
    sender: str, vrf: str, entry: RouteEntry, add: bool = True, seq: int = 0
) -> bytes:
    """The publish + collection iq pair for one route; ``add=False`` withdraws it."""
    evpn = entry.afi == AFI_L2VPN
    if evpn:
        enode = _esc(publish_node(vrf, entry))
    else:
        enode = f"{entry.afi}/{entry.safi}/{_esc(vrf)}/{_esc(entry.address)}"
    l2 = "_l2" if evpn else ""
    op = "associate" if add else "dissociate"
    head = _iq_open(sender, "bgp-peer")
    pubsub = f'<pubsub xmlns="{PUBSUB_NS}">'
    return (
        f'{head} id="pubsub{l2}{seq}">{pubsub}<publish node="{enode}"><item>'
        f"{entry_xml(entry)}</item></publish></pubsub></iq>"
        f'{head} id="collection{l2}{seq}">{pubsub}<collection node="{_esc(vrf)}"><{op} '
        f'node="{enode}" /></collection></pubsub></iq>'
    ).encode()


def build_eor_iq_pair(sender: str) -> bytes:
    """End-of-RIB as the control node reads it: an empty publish then an empty collection."""
    return (
        _iq_head(sender, "bgp-peer", None)
        + "<publish></publish></pubsub></iq>"
        + _iq_head(sender, "bgp-peer", None)
        + "<collection></collection></pubsub></iq>"
    ).encode()


def build_agent_eor(sender: str) -> bytes:
    """End-of-RIB as the real agent sends it once its route walk is done: a ``<message>``
    to the control node's bgp-peer resource, items node ``0/0/EndOfRib``, the agent's own
    line breaks and tabs."""
    return (
        f'\n<message from="{_esc(sender)}" to="{CONTROL_NODE_JID}/bgp-peer">'
        f'\n\t<event xmlns="{PUBSUB_NS}">\n<items node="{EOR_NODE}"></items>'
        "\n\t</event>\n</message>\n"
    ).encode()


def build_eor_message(sender: str, to: str) -> bytes:
    """End-of-RIB in the ``<message>`` form (what both real peers send)."""
    return (
        f'<message from="{_esc(sender)}" to="{_esc(to)}">\n\t<event xmlns="{PUBSUB_NS}">\n'
        f'<items node="{EOR_NODE}"></items>\n\t</event>\n</message>'
    ).encode()


def _message_head(sender: str, to: str, node: str) -> str:
    return (
        f'<message from="{_esc(sender)}" to="{_esc(to)}">'
        f'<event xmlns="{PUBSUB_NS}"><items node="{_esc(node)}">'
    )


def build_route_update(sender: str, to: str, node: str, entries: Iterable[RouteEntry]) -> bytes:
    """A control-node reach message: one ``<item>`` per entry for an ``afi/safi/vrf`` node."""
    body = "".join(f'<item id="{_esc(e.item_id)}">{entry_xml(e)}</item>' for e in entries)
    return (_message_head(sender, to, node) + body + "</items></event></message>").encode()


def build_retract(sender: str, to: str, node: str, item_ids: Iterable[str]) -> bytes:
    body = "".join(f'<retract id="{_esc(i)}" />' for i in item_ids)
    return (_message_head(sender, to, node) + body + "</items></event></message>").encode()


def _config_xml(item: ConfigNode | ConfigLink) -> str:
    if isinstance(item, ConfigLink):
        return (
            f'<link><node type="{_esc(item.left[0])}"><name>{_esc(item.left[1])}</name></node>'
            f'<node type="{_esc(item.right[0])}"><name>{_esc(item.right[1])}</name></node>'
            f'<metadata type="{_esc(item.metadata)}">'
            + "".join(_plain_xml(k, v) for k, v in item.properties.items())
            + "</metadata></link>"
        )
    props = "".join(_plain_xml(k, v) for k, v in item.properties.items())
    return f'<node type="{_esc(item.type)}"><name>{_esc(item.name)}</name>{props}</node>'


def _plain_xml(tag: str, value: Any) -> str:
    if isinstance(value, list):
        return "".join(_plain_xml(tag, v) for v in value)
    if isinstance(value, dict):
        return f"<{tag}>" + "".join(_plain_xml(k, v) for k, v in value.items()) + f"</{tag}>"
    return f"<{tag}>{_esc(value)}</{tag}>"


def build_config(
    to: str,
    updates: Sequence[ConfigNode | ConfigLink] = (),
    deletes: Sequence[ConfigNode | ConfigLink] = (),
    sender: str = CONTROL_NODE_JID,
) -> bytes:
    """A config iq as the control node sends it, XML declaration in front (mid-stream)."""
    body = ""
    if updates:
        body += "<update>" + "".join(_config_xml(i) for i in updates) + "</update>"
    if deletes:
        body += "<delete>" + "".join(_config_xml(i) for i in deletes) + "</delete>"
    return _XML_DECL + (
        f'<iq type="set" from="{_esc(sender)}" to="{_esc(to)}/config"><config>{body}</config></iq>'
    ).encode()


def build_features(starttls: bool = True) -> bytes:
    inner = f'<starttls xmlns="{TLS_NS}"><required/></starttls>' if starttls else ""
    return f"<stream:features>{inner}</stream:features>".encode()


STARTTLS = f'<starttls xmlns="{TLS_NS}"/>'.encode()
PROCEED = f'<proceed xmlns="{TLS_NS}"/>'.encode()

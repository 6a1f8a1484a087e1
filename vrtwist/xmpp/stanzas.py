"""Sans-IO builders and parsers for the stanzas of the Contrail XMPP dialect.

Every stanza framed by :mod:`vrtwist.xmpp.framing` is parsed alone, by
:func:`vrtwist.xmlsafe.parse` on exactly the bytes received: expat itself refuses any
DTD, so no entity can be declared and nothing can expand.  The fast path below accepts
only canonical stanzas that parser would accept and read the same.  Every malformed
input raises :class:`StanzaError` and nothing else.  Builders write elements in the
order of the ``xmpp_unicast.xsd`` / ``xmpp_enet.xsd`` generated encoders, which the real
peers use.

No Twisted imports: bytes in, records out; records in, bytes out.
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from vrtwist import xmlsafe

__all__ = [
    "PUBSUB_NS",
    "TLS_NS",
    "EOR_NODE",
    "CONTROL_NODE_JID",
    "AFI_INET",
    "AFI_INET6",
    "AFI_L2VPN",
    "SAFI_UNICAST",
    "SAFI_ENET",
    "ENCAP_NAMES",
    "StanzaError",
    "UnsupportedFamily",
    "NextHop",
    "RouteEntry",
    "Subscribe",
    "Unsubscribe",
    "Publish",
    "Collection",
    "RouteUpdate",
    "EndOfRib",
    "ConfigNode",
    "ConfigLink",
    "ConfigUpdate",
    "StreamFeatures",
    "StartTls",
    "TlsProceed",
    "TlsFailure",
    "Stanza",
    "parse_stanza",
    "parse_stanza_full",
    "parse_fast",
    "build_subscribe",
    "build_unsubscribe",
    "build_route_publish",
    "build_eor_iq_pair",
    "build_eor_message",
    "build_route_update",
    "build_retract",
    "build_config",
    "build_features",
    "STARTTLS",
    "PROCEED",
    "items_node",
    "publish_node",
]

PUBSUB_NS = "http://jabber.org/protocol/pubsub"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
CONTROL_NODE_JID = "network-control@contrailsystems.com"
EOR_NODE = "0/0/EndOfRib"

AFI_INET = 1
AFI_INET6 = 2
AFI_L2VPN = 25
SAFI_UNICAST = 1
SAFI_ENET = 242

#: Wire names of the tunnel encapsulations and the names the agent's config uses.
ENCAP_NAMES = {"udp": "MPLSoUDP", "gre": "MPLSoGRE", "vxlan": "VXLAN"}

#: The ``afi/safi`` pairs whose items this package reads (inet, inet6, EVPN).
_FAMILIES = frozenset({(AFI_INET, SAFI_UNICAST), (AFI_INET6, SAFI_UNICAST), (AFI_L2VPN, SAFI_ENET)})

_XML_DECL = b'<?xml version="1.0"?>\n'


class StanzaError(ValueError):
    """A framed stanza is not well formed or not a shape this dialect allows."""


class UnsupportedFamily(StanzaError):
    """A route of an address family this package does not handle (multicast, MVPN...)."""


# ---------------------------------------------------------------------------- records
#
# The records built for every stanza of a route burst (subscribe, publish, collection,
# control-node update) are plain slotted dataclasses, hashable but not frozen: a frozen
# dataclass sets each field through ``object.__setattr__`` and costs three times as much
# to build.  Treat them as immutable all the same.


class NextHop(NamedTuple):
    """One next hop of a route: the tunnel endpoint, label and allowed encapsulations.

    A named tuple rather than a frozen dataclass: tens of thousands are built per second
    on the hot paths, and a tuple is built and compared in C (about 3x cheaper).
    """

    address: str
    label: int
    encapsulations: tuple[str, ...] = ("gre", "udp")
    mac: str = ""
    virtual_network: str = ""
    l3_label: int = 0
    tags: tuple[int, ...] = ()


class RouteEntry(NamedTuple):
    """A route item: inet/inet6 (``address`` is the prefix) or EVPN (``mac`` + address).

    A named tuple for the same reason as :class:`NextHop`.
    """

    afi: int
    safi: int
    address: str
    next_hops: tuple[NextHop, ...]
    mac: str = ""
    ethernet_tag: int = 0
    virtual_network: str = ""
    sequence_number: int = 0
    local_preference: int = 100
    med: int = 0
    security_groups: tuple[int, ...] = ()
    sub_protocol: str = "interface"

    @property
    def item_id(self) -> str:
        """The key the control node uses for ``<item id>`` and ``<retract id>``."""
        if self.afi == AFI_L2VPN:
            prefix = f"{self.ethernet_tag}-" if self.ethernet_tag else ""
            return f"{prefix}{self.mac},{self.address}"
        return self.address


@dataclass(slots=True, unsafe_hash=True)
class Subscribe:
    """``<subscribe node>``: a routing instance (bgp-peer) or a config object (config)."""

    node: str
    service: str
    instance_id: int | None = None
    no_ribout: bool = False
    sender: str = ""


@dataclass(slots=True, unsafe_hash=True)
class Unsubscribe:
    node: str
    service: str
    sender: str = ""


@dataclass(slots=True, unsafe_hash=True)
class Publish:
    """First half of a route update; ``node == ""`` with no entry is half an EoR."""

    node: str
    entry: RouteEntry | None
    sender: str = ""
    #: The ``<entry>`` exactly as received when it was in canonical form (a reflector can
    #: forward it without re-encoding); empty otherwise.
    raw_entry: str = field(default="", compare=False, repr=False)


@dataclass(slots=True, unsafe_hash=True)
class Collection:
    """Second half: ``node`` is the VRF, ``associate``/``dissociate`` the publish node."""

    node: str
    associate: str | None = None
    dissociate: str | None = None
    sender: str = ""


@dataclass(slots=True, unsafe_hash=True)
class RouteUpdate:
    """A control-node message: reach items or retracts for one ``afi/safi/vrf`` node."""

    node: str
    items: tuple[RouteEntry, ...] = ()
    retracts: tuple[str, ...] = ()

    @property
    def family(self) -> tuple[int, int]:
        afi, safi, _ = self.node.split("/", 2)
        return int(afi), int(safi)

    @property
    def vrf(self) -> str:
        return self.node.split("/", 2)[2]


@dataclass(frozen=True, slots=True)
class EndOfRib:
    """End-of-RIB in the ``<message>`` form (node ``0/0/EndOfRib``)."""

    sender: str = ""


@dataclass(frozen=True, slots=True)
class ConfigNode:
    """One IFMap object: its type, fq name and properties as plain Python values."""

    type: str
    name: str
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConfigLink:
    """A reference between two IFMap objects (``metadata`` names the link type)."""

    left: tuple[str, str]
    right: tuple[str, str]
    metadata: str
    #: What the metadata element carries (e.g. ``ipam-subnets`` of a VN-IPAM link).
    properties: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class ConfigUpdate:
    """``<config>`` with its ``<update>`` and ``<delete>`` blocks, in document order."""

    updates: tuple[ConfigNode | ConfigLink, ...] = ()
    deletes: tuple[ConfigNode | ConfigLink, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamFeatures:
    starttls: bool
    required: bool


@dataclass(frozen=True, slots=True)
class StartTls:
    pass


@dataclass(frozen=True, slots=True)
class TlsProceed:
    pass


@dataclass(frozen=True, slots=True)
class TlsFailure:
    pass


Stanza = (
    Subscribe
    | Unsubscribe
    | Publish
    | Collection
    | RouteUpdate
    | EndOfRib
    | ConfigUpdate
    | StreamFeatures
    | StartTls
    | TlsProceed
    | TlsFailure
)

# ---------------------------------------------------------------------------- parsing


def _local(tag: str) -> str:
    # Tags are kept as written (no namespace processing): "stream:features" -> "features".
    return tag.rpartition(":")[2]


def _parse_xml(data: bytes) -> ET.Element:
    # Keepalive bytes may lead a unit; what is left is parsed as is, never rewritten.
    try:
        return xmlsafe.parse(data.lstrip(b" \t\r\n\xc8\x80"), encoding="utf-8")
    except xmlsafe.XmlRefused as exc:
        raise StanzaError(f"XML {exc}") from None
    except xmlsafe.XmlError as exc:
        raise StanzaError(f"malformed XML: {exc}") from None


def _text(elem: ET.Element | None, default: str = "") -> str:
    if elem is None or elem.text is None:
        return default
    return elem.text.strip()


#: An integer field as the peers write it: ASCII digits, at most a 64-bit value's worth
#: (``int()`` alone would take "٣", "1_000" or 4,000 digits, and raise on 5,000).
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,20}")
#: An ``afi/safi/vrf`` items node; afi and safi in ASCII digits.
_ITEMS_NODE = re.compile(r"([0-9]{1,5})/([0-9]{1,5})/(.+)", re.S)
#: How deep a config object's properties may nest (real IFMap objects: about 8).
_MAX_CONFIG_DEPTH = 32


def _int(elem: ET.Element | None, what: str, default: int = 0) -> int:
    text = _text(elem)
    if not text:
        return default
    if _INT_TEXT.fullmatch(text) is None:
        raise StanzaError(f"{what} is not an integer: {text[:40]!r}")
    return int(text)


def _items_family(node: str) -> tuple[int, int] | None:
    """``(afi, safi)`` of an ``afi/safi/vrf`` node, or None if it is not one."""
    m = _ITEMS_NODE.fullmatch(node)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2))


def _service(to: str) -> str:
    # The real mux dispatches on a substring of "to".
    if "bgp-peer" in to:
        return "bgp-peer"
    if "config" in to:
        return "config"
    return "bgp-peer" if not to else to.rpartition("/")[2]


#: What a field check that missed a case could raise; turned into StanzaError.
_MISSED = (ValueError, TypeError, LookupError, AttributeError, RecursionError)


def parse_stanza(data: bytes) -> Stanza:
    """Parse one framed stanza into a record; :class:`StanzaError` says what is wrong."""
    try:
        fast = parse_fast(data)
        if fast is not None:
            return fast
        return _parse_full(data)
    except StanzaError:
        raise
    except _MISSED as exc:
        raise StanzaError(f"stanza not understood ({type(exc).__name__})") from None


def parse_stanza_full(data: bytes) -> Stanza:
    """The general parser (expat, no DTD): every shape, every formatting, every error.

    Raises :class:`StanzaError` and nothing else: the fields are checked before they
    are converted, and whatever a check missed is still turned into a
    :class:`StanzaError` here, so a peer can never end a session with a traceback.
    """
    try:
        return _parse_full(data)
    except StanzaError:
        raise
    except _MISSED as exc:
        raise StanzaError(f"stanza not understood ({type(exc).__name__})") from None


def _parse_full(data: bytes) -> Stanza:
    root = _parse_xml(data)
    tag = _local(root.tag)
    if tag == "iq":
        return _parse_iq(root)
    if tag == "message":
        return _parse_message(root)
    if tag == "features":
        tls = None
        for child in root:
            if _local(child.tag) == "starttls":
                tls = child
        if tls is None:
            return StreamFeatures(False, False)
        required = any(_local(c.tag) == "required" for c in tls)
        return StreamFeatures(True, required)
    if tag == "starttls":
        return StartTls()
    if tag == "proceed":
        return TlsProceed()
    if tag == "failure":
        return TlsFailure()
    raise StanzaError(f"unexpected stanza <{tag}>")


def _parse_iq(root: ET.Element) -> Stanza:
    sender = root.get("from", "")
    to = root.get("to", "")
    iq_type = root.get("type", "")
    children = list(root)
    if not children:
        raise StanzaError("iq without a payload")
    payload = children[0]
    kind = _local(payload.tag)
    if kind == "config":
        if iq_type != "set":
            raise StanzaError(f"config iq of type {iq_type!r}")
        return _parse_config(payload)
    if kind != "pubsub":
        raise StanzaError(f"iq with unexpected payload <{kind}>")
    if iq_type != "set":
        raise StanzaError(f"pubsub iq of type {iq_type!r} (only 'set' is used)")
    ops = list(payload)
    if not ops:
        raise StanzaError("pubsub iq without an operation")
    op = ops[0]
    name = _local(op.tag)
    node = op.get("node")
    if name == "subscribe" or name == "unsubscribe":
        if not node:
            raise StanzaError(f"{name} without a node")
        service = _service(to)
        if name == "unsubscribe":
            return Unsubscribe(node, service, sender)
        instance_id = None
        no_ribout = False
        for opts in root.iter("options"):
            iid = opts.find("instance-id")
            if iid is not None:
                instance_id = _int(iid, "instance-id")
            nr = opts.find("no-ribout")
            if nr is not None:
                no_ribout = _text(nr).lower() in ("true", "1")
        return Subscribe(node, service, instance_id, no_ribout, sender)
    if name == "publish":
        items = op.findall("item")
        if not node and not items:
            return Publish("", None, sender)
        if not node:
            raise StanzaError("publish without a node")
        if len(items) != 1:
            raise StanzaError(f"publish with {len(items)} items (exactly 1 expected)")
        entry = items[0].find("entry")
        if entry is None:
            raise StanzaError("publish item without an entry")
        try:
            return Publish(node, _parse_entry(entry), sender)
        except UnsupportedFamily:
            # e.g. the multicast-tree builder's 1/241 route: a well-formed publish of a
            # family we do not reflect; the pair is accepted and dropped.
            return Publish(node, None, sender)
    if name == "collection":
        assoc = op.find("associate")
        dissoc = op.find("dissociate")
        if assoc is None and dissoc is None:
            if not node:
                return Collection("", None, None, sender)
            raise StanzaError("collection without associate or dissociate")
        if not node:
            raise StanzaError("collection without a node")
        return Collection(
            node,
            assoc.get("node", "") if assoc is not None else None,
            dissoc.get("node", "") if dissoc is not None else None,
            sender,
        )
    raise StanzaError(f"unknown pubsub operation <{name}>")


def _parse_message(root: ET.Element) -> Stanza:
    event = root.find("event")
    if event is None:
        raise StanzaError("message without an event")
    items = event.find("items")
    if items is None:
        raise StanzaError("event without items")
    node = items.get("node", "")
    if node == EOR_NODE:
        return EndOfRib(root.get("from", ""))
    family = _items_family(node)
    if family is None:
        raise StanzaError(f"items node {node[:80]!r} is not afi/safi/vrf")
    if family not in _FAMILIES:
        # Multicast (1/241), MVPN (1/5), labeled inet (1/4): not used by this agent, and a
        # real control node sends them; they are accepted and carry nothing for us.
        return RouteUpdate(node, (), ())
    retracts = tuple(r.get("id", "") for r in items.iter("retract"))
    if retracts:
        # Like the real agent: a message with retracts is handled as retracts only.
        if any(not r for r in retracts):
            raise StanzaError("retract without an id")
        return RouteUpdate(node, (), retracts)
    entries = []
    for item in items.iter("item"):
        entry = item.find("entry")
        if entry is None:
            raise StanzaError(f"item {item.get('id', '')!r} without an entry")
        entries.append(_parse_entry(entry))
    return RouteUpdate(node, tuple(entries), ())


def _children(elem: ET.Element) -> dict[str, ET.Element]:
    """Children by tag in one pass (the first of repeated tags wins)."""
    out: dict[str, ET.Element] = {}
    for child in elem:
        out.setdefault(child.tag, child)
    return out


def _parse_entry(entry: ET.Element) -> RouteEntry:
    f = _children(entry)
    nlri_elem = f.get("nlri")
    if nlri_elem is None:
        raise StanzaError("entry without nlri")
    nlri = _children(nlri_elem)
    afi = _int(nlri.get("af"), "nlri af")
    safi = _int(nlri.get("safi"), "nlri safi")
    if (afi, safi) not in _FAMILIES:
        raise UnsupportedFamily(f"unsupported address family {afi}/{safi}")
    address = _text(nlri.get("address"))
    mac = ""
    etag = 0
    if afi == AFI_L2VPN:
        mac = _text(nlri.get("mac")).lower()
        etag = _int(nlri.get("ethernet-tag"), "ethernet-tag")
        if not _MAC.fullmatch(mac):
            raise StanzaError(f"EVPN route with bad mac {mac[:40]!r}")
        if address and address != "0.0.0.0/0":
            _check_prefix(address, None)
    elif afi == AFI_INET or afi == AFI_INET6:
        _check_prefix(address, afi)
    else:
        raise UnsupportedFamily(f"unsupported address family {afi}/{safi}")
    hops = []
    nhs = f.get("next-hops")
    if nhs is not None:
        for nh_elem in nhs:
            if nh_elem.tag != "next-hop":
                continue
            nh = _children(nh_elem)
            addr = _text(nh.get("address"))
            if not _IPV4.fullmatch(addr):
                raise StanzaError(f"next-hop address {addr[:40]!r} is not IPv4")
            label = _int(nh.get("label"), "next-hop label")
            if not 0 <= label < (1 << 24):
                raise StanzaError(f"next-hop label {label} out of range")
            encl = nh.get("tunnel-encapsulation-list")
            encaps = tuple(_text(e) for e in encl) if encl is not None else ()
            if not encaps and label:
                encaps = ("gre",)  # what the control node assumes
            tags = nh.get("tag-list")
            hops.append(
                NextHop(
                    addr,
                    label,
                    encaps,
                    _text(nh.get("mac")),
                    _text(nh.get("virtual-network")),
                    _int(nh.get("l3-label"), "l3-label"),
                    tuple(_int(t, "tag") for t in tags) if tags is not None and len(tags) else (),
                )
            )
    sgl = f.get("security-group-list")
    return RouteEntry(
        afi,
        safi,
        address,
        tuple(hops),
        mac,
        etag,
        _text(f.get("virtual-network")),
        _int(f.get("sequence-number"), "sequence-number"),
        _int(f.get("local-preference"), "local-preference", 100),
        _int(f.get("med"), "med"),
        tuple(_int(sg, "security-group") for sg in sgl) if sgl is not None and len(sgl) else (),
        _text(f.get("sub-protocol")) or "interface",
    )


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_IPV4_PREFIX = re.compile(rf"({_OCTET}(?:\.{_OCTET}){{3}})/(3[0-2]|[12]?[0-9])")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def _check_prefix(prefix: str, afi: int | None) -> None:
    if _IPV4_PREFIX.fullmatch(prefix):
        if afi is not None and afi != AFI_INET:
            raise StanzaError(f"prefix {prefix[:60]!r} does not match address family {afi}")
        return
    if "/" not in prefix:
        raise StanzaError(f"prefix {prefix[:60]!r} without a length")
    try:
        net = ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        raise StanzaError(f"bad prefix {prefix[:60]!r}") from None
    if afi is not None and net.version != (4 if afi == AFI_INET else 6):
        raise StanzaError(f"prefix {prefix[:60]!r} does not match address family {afi}")


def _plain(elem: ET.Element, depth: int = 0) -> Any:
    """An element as plain data: leaf text, or a dict of children (repeats become lists)."""
    if depth > _MAX_CONFIG_DEPTH:
        raise StanzaError(f"config nested deeper than {_MAX_CONFIG_DEPTH} elements")
    children = list(elem)
    if not children:
        if elem.attrib:
            return dict(elem.attrib) | ({"#text": elem.text.strip()} if elem.text else {})
        return (elem.text or "").strip()
    out: dict[str, Any] = {}
    for child in children:
        key = _local(child.tag)
        value = _plain(child, depth + 1)
        if key in out:
            prev = out[key]
            if isinstance(prev, list):
                prev.append(value)
            else:
                out[key] = [prev, value]
        else:
            out[key] = value
    return out


def _parse_config_items(block: ET.Element) -> tuple[ConfigNode | ConfigLink, ...]:
    out: list[ConfigNode | ConfigLink] = []
    for child in block:
        kind = _local(child.tag)
        if kind == "node":
            ctype = child.get("type", "")
            name = _text(child.find("name"))
            if not ctype or not name:
                raise StanzaError("config node without type or name")
            props = _plain(child)
            props.pop("name", None)
            out.append(ConfigNode(ctype, name, props))
        elif kind == "link":
            nodes = child.findall("node")
            meta = child.find("metadata")
            if len(nodes) != 2 or meta is None:
                raise StanzaError("config link needs two nodes and a metadata")
            out.append(
                ConfigLink(
                    (nodes[0].get("type", ""), _text(nodes[0].find("name"))),
                    (nodes[1].get("type", ""), _text(nodes[1].find("name"))),
                    meta.get("type", ""),
                    _plain(meta) if len(meta) else {},
                )
            )
        else:
            raise StanzaError(f"unexpected <{kind}> in config")
    return tuple(out)


def _parse_config(config: ET.Element) -> ConfigUpdate:
    updates: list[ConfigNode | ConfigLink] = []
    deletes: list[ConfigNode | ConfigLink] = []
    for block in config:
        kind = _local(block.tag)
        if kind == "update":
            updates.extend(_parse_config_items(block))
        elif kind == "delete":
            deletes.extend(_parse_config_items(block))
        else:
            raise StanzaError(f"unexpected <{kind}> in config")
    return ConfigUpdate(tuple(updates), tuple(deletes))


# ---------------------------------------------------------------------------- building


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
           nh.l3_label, nh.tags)
    parts = _pieces.get(key)
    if parts is not None:
        return parts  # type: ignore[no-any-return]
    encaps = "".join(
        f"<tunnel-encapsulation>{_esc(e)}</tunnel-encapsulation>" for e in nh.encapsulations
    )
    tags = "".join(f"<tag>{int(t)}</tag>" for t in nh.tags)
    tag_list = f"<tag-list>{tags}</tag-list>" if tags else "<tag-list />"
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
            f"<address>{_esc(entry.address)}</address></nlri>"
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


# ---------------------------------------------------------------------------- fast path
#
# The hot stanzas (route publish, collection, control-node items) are matched against
# the exact canonical form the builders above write.  The patterns accept only text and
# attribute values without markup, entity references or characters an XML parser would
# normalise, so a match is well-formed XML that parses to the same record; anything else
# (another peer's formatting, escapes, errors) returns None and takes the full parser.

# (U+FFFE and U+FFFF are not XML characters: the parser refuses them, so must this)
_A = r'([^"<&>\x00-\x1f\ufffe\uffff]*)'  # an attribute value needing no unescaping/normalising
_TX = r"([^<&>\x00-\x08\x0b\x0c\x0d\x0e-\x1f\ufffe\uffff]*)"  # element text, same rule
_NUM = r"([0-9]{1,10})"
_ENCS = r"((?:<tunnel-encapsulation>[a-z]{1,16}</tunnel-encapsulation>){0,8})"
_TAGS = r"(?:<tag-list />|<tag-list>((?:<tag>[0-9]{1,10}</tag>){0,64})</tag-list>)"
_SGL = (
    r"(?:<security-group-list />|<security-group-list>"
    r"((?:<security-group>[0-9]{1,10}</security-group>){0,64})</security-group-list>)"
)
# An entry is matched in two parts: the head, up to the first next hop's label, which
# differs from route to route, and the rest, which for the routes of one agent (same next
# hop, network, encapsulations, attributes) is the very same text every time.  The rest is
# matched once and its values kept by its text (``_TAILS``), so a burst of routes costs
# one short match each.
_INET_HEAD = (
    r"<entry><nlri><af>([12])</af><safi>1</safi><address>" + _TX + r"</address></nlri>"
    r"<next-hops><next-hop><af>1</af><address>" + _TX + r"</address><mac>" + _TX + r"</mac>"
    r"<label>" + _NUM + r"</label>"
)
_INET_TAIL = (
    r"<vni>0</vni><tunnel-encapsulation-list>" + _ENCS
    + r"</tunnel-encapsulation-list><virtual-network>" + _TX + r"</virtual-network>" + _TAGS
    + r"</next-hop></next-hops><version>1</version><virtual-network>" + _TX
    + r'</virtual-network><mobility seqno="0" sticky="false" /><sequence-number>' + _NUM
    + r"</sequence-number>" + _SGL + r"<community-tag-list /><local-preference>" + _NUM
    + r"</local-preference><med>" + _NUM + r"</med><load-balance><load-balance-fields />"
    r"<load-balance-decision>field-hash</load-balance-decision></load-balance>"
    r"<sub-protocol>" + _TX + r"</sub-protocol></entry>"
)
_EVPN_HEAD = (
    r"<entry><nlri><af>25</af><safi>242</safi><ethernet-tag>" + _NUM + r"</ethernet-tag>"
    r"<mac>([0-9a-f]{2}(?::[0-9a-f]{2}){5})</mac><address>" + _TX + r"</address></nlri>"
    r"<next-hops><next-hop><af>1</af><address>" + _TX + r"</address><mac>" + _TX + r"</mac>"
    r"<label>" + _NUM + r"</label>"
)
_EVPN_TAIL = (
    r"<l3-label>" + _NUM + r"</l3-label>"
    r"<tunnel-encapsulation-list>" + _ENCS + r"</tunnel-encapsulation-list>" + _TAGS
    + r"</next-hop></next-hops><olist /><virtual-network>" + _TX + r"</virtual-network>"
    r'<mobility seqno="0" sticky="false" /><sequence-number>' + _NUM + r"</sequence-number>"
    + _SGL + r"<local-preference>" + _NUM + r"</local-preference><med>" + _NUM + r"</med>"
    r"<edge-replication-not-supported>false</edge-replication-not-supported>"
    r"<assisted-replication-supported>false</assisted-replication-supported>"
    r"<leaf-olist /><replicator-address></replicator-address><etree-leaf>true</etree-leaf>"
    r"</entry>"
)
#: The whole canonical entries (tests, and the shape the two parts add up to).
_INET_ENTRY = _INET_HEAD + _INET_TAIL
_EVPN_ENTRY = _EVPN_HEAD + _EVPN_TAIL
_IQ_HEAD = (
    r'<iq type="set" from="' + _A + r'" to="' + _A + r'"(?: id="' + _A + r'")?>'
    r'<pubsub xmlns="http://jabber.org/protocol/pubsub">'
)
_FAST_PUBLISH_TAIL = "</item></publish></pubsub></iq>"
# The hot path matches the iq head once, then only the body that follows it.
# One pattern per iq kind, head included (one match call per stanza); the kind is read
# from the first characters after the pubsub element before choosing the pattern.
_PUBSUB_OPEN = '<pubsub xmlns="http://jabber.org/protocol/pubsub"><'
_FAST_PUBLISH = re.compile(_IQ_HEAD + r'<publish node="' + _A + r'"><item>')
_FAST_COLLECTION = re.compile(
    _IQ_HEAD + r'<collection node="' + _A + r'"><(associate|dissociate) node="' + _A
    + r'" /></collection></pubsub></iq>'
)
_FAST_SUBSCRIBE = re.compile(
    _IQ_HEAD + r'<(subscribe|unsubscribe) node="' + _A + r'" /></pubsub></iq>'
)
_FAST_INET_HEAD = re.compile(_INET_HEAD)
_FAST_INET_TAIL = re.compile(_INET_TAIL)
_FAST_EVPN_HEAD = re.compile(_EVPN_HEAD)
_FAST_EVPN_TAIL = re.compile(_EVPN_TAIL)
_FAST_MESSAGE = re.compile(
    r'<message from="' + _A + r'" to="' + _A + r'"><event xmlns="http://jabber.org/protocol'
    r'/pubsub"><items node="' + _A + r'">'
)
_FAST_ITEM = re.compile(r'<item id="' + _A + r'">')
_FAST_RETRACT = re.compile(r'<retract id="' + _A + r'" />')
_FAST_MESSAGE_TAIL = "</items></event></message>"
_TAG_VALUES = re.compile(r">([0-9]+)<")
_ENC_VALUES = re.compile(r">([a-z]+)<")


#: Parsed values of entry tails by their text (see ``_INET_HEAD``); bounded.
_TAILS: dict[tuple[bool, str], tuple[Any, ...]] = {}
_TAILS_MAX = 1024
#: Next-hop addresses already checked to be IPv4 (remote nodes are few); bounded.
_NH_ADDRESSES: set[str] = set()
_END_ENTRY = "</entry>"


def _tail_values(evpn: bool, tail: str) -> tuple[Any, ...] | None:
    """The values of an entry's text after its label, from the memo or matched now."""
    values = _TAILS.get((evpn, tail))
    if values is not None:
        return values
    if evpn:
        m = _FAST_EVPN_TAIL.fullmatch(tail)
        if m is None:
            return None
        l3, encs, tags, vn, seq, sgs, lp, med = m.groups()
        nh_vn, sub, l3_label = "", "", int(l3)
    else:
        m = _FAST_INET_TAIL.fullmatch(tail)
        if m is None:
            return None
        encs, nh_vn, tags, vn, seq, sgs, lp, med, sub = m.groups()
        l3_label = 0
    values = (
        tuple(_ENC_VALUES.findall(encs)) if encs else (),
        nh_vn.strip(),
        l3_label,
        tuple(int(t) for t in _TAG_VALUES.findall(tags)) if tags else (),
        vn.strip(),
        int(seq),
        int(lp),
        int(med),
        tuple(int(s) for s in _TAG_VALUES.findall(sgs)) if sgs else (),
        sub.strip() or "interface",
    )
    if len(_TAILS) >= _TAILS_MAX:
        _TAILS.clear()
    _TAILS[(evpn, tail)] = values
    return values


def _fast_entry(text: str, pos: int) -> tuple[RouteEntry, int] | None:
    m = _FAST_INET_HEAD.match(text, pos)
    if m is not None:
        af, address, nh_addr, nh_mac, label = m.groups()
        afi = int(af)
        mac = ""
        etag = 0
        evpn = False
    else:
        m = _FAST_EVPN_HEAD.match(text, pos)
        if m is None:
            return None
        etag_s, mac, address, nh_addr, nh_mac, label = m.groups()
        afi, etag, evpn = AFI_L2VPN, int(etag_s), True
    head_end = m.end()
    end = text.find(_END_ENTRY, head_end)
    if end < 0:
        return None
    end += len(_END_ENTRY)
    values = _tail_values(evpn, text[head_end:end])
    if values is None:
        return None
    enc_t, nh_vn, l3_label, tags, vn, seq, lp, med, sgs, sub = values
    lab = int(label)
    if lab >= 1 << 24:
        return None
    if nh_addr not in _NH_ADDRESSES:
        if not _IPV4.fullmatch(nh_addr):
            return None
        if len(_NH_ADDRESSES) >= 4096:
            _NH_ADDRESSES.clear()
        _NH_ADDRESSES.add(nh_addr)
    try:
        if evpn:
            if address and address != "0.0.0.0/0":
                _check_prefix(address, None)
        else:
            _check_prefix(address, afi)
    except StanzaError:
        return None
    if not enc_t and lab:
        enc_t = ("gre",)
    nh = NextHop(nh_addr, lab, enc_t, nh_mac.strip(), nh_vn, l3_label, tags)
    entry = RouteEntry(
        afi, AFI_SAFI[afi], address, (nh,), mac, etag, vn, seq, lp, med, sgs, sub
    )
    return entry, end


AFI_SAFI = {AFI_INET: SAFI_UNICAST, AFI_INET6: SAFI_UNICAST, AFI_L2VPN: SAFI_ENET}


def parse_fast(data: bytes) -> Stanza | None:
    """The record for a canonical hot stanza, or None to use the full parser."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    head = text[:4]
    if head == "<iq ":
        at = text.find(_PUBSUB_OPEN, 20, 1200)
        if at < 0:
            return None
        at += len(_PUBSUB_OPEN)
        kind = text[at : at + 2]
        if kind == "pu":
            m = _FAST_PUBLISH.match(text)
            if m is None or not m.group(4):
                return None
            start = m.end()
            got = _fast_entry(text, start)
            if got is None or len(text) != got[1] + len(_FAST_PUBLISH_TAIL) or \
                    not text.endswith(_FAST_PUBLISH_TAIL):
                return None
            return Publish(m.group(4), got[0], m.group(1), text[start : got[1]])
        if kind == "co":
            m = _FAST_COLLECTION.fullmatch(text)
            if m is None:
                return None
            sender, _to, _id, node, op, target = m.groups()
            if not node:
                return None
            if op == "associate":
                return Collection(node, target, None, sender)
            return Collection(node, None, target, sender)
        m = _FAST_SUBSCRIBE.fullmatch(text)
        if m is None:
            return None
        sender, to, _id, op, node = m.groups()
        if not node:
            return None
        if op == "subscribe":
            return Subscribe(node, _service(to), None, False, sender)
        return Unsubscribe(node, _service(to), sender)
    if head == "<mes":
        m = _FAST_MESSAGE.match(text)
        if m is None:
            return None
        node = m.group(3)
        if _items_family(node) not in _FAMILIES:
            return None  # the full parser says why, or reads the family as carrying nothing
        pos = m.end()
        if text.startswith("<retract ", pos):
            ids = []
            while True:
                r = _FAST_RETRACT.match(text, pos)
                if r is None:
                    break
                if not r.group(1):
                    return None
                ids.append(r.group(1))
                pos = r.end()
            if text[pos:] != _FAST_MESSAGE_TAIL:
                return None
            return RouteUpdate(node, (), tuple(ids))
        entries = []
        while True:
            it = _FAST_ITEM.match(text, pos)
            if it is None:
                break
            got = _fast_entry(text, it.end())
            if got is None or not text.startswith("</item>", got[1]):
                return None
            entries.append(got[0])
            pos = got[1] + 7
        if not entries or text[pos:] != _FAST_MESSAGE_TAIL or node == EOR_NODE:
            return None
        return RouteUpdate(node, tuple(entries), ())
    return None

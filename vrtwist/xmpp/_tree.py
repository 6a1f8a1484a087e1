"""The general stanza parser: expat builds a tree, the tree is read into records.

Every stanza framed by :mod:`vrtwist.xmpp.framing` is parsed alone, by
:func:`vrtwist.xmlsafe.parse` on exactly the bytes received: expat itself refuses any
DTD, so no entity can be declared and nothing can expand.  This parser takes every
shape and every formatting a peer may send; the fast path (:mod:`._fastparse`) hands
it whatever it does not recognise.  Public names are re-exported by
:mod:`vrtwist.xmpp.stanzas`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from vrtwist import xmlsafe

from ._records import (
    _FAMILIES,
    _IPV4,
    _MAC,
    AFI_INET,
    AFI_INET6,
    AFI_L2VPN,
    EOR_NODE,
    Collection,
    ConfigLink,
    ConfigNode,
    ConfigUpdate,
    EndOfRib,
    NextHop,
    Publish,
    RouteEntry,
    RouteUpdate,
    Stanza,
    StanzaError,
    StartTls,
    StreamFeatures,
    Subscribe,
    TlsFailure,
    TlsProceed,
    Unsubscribe,
    UnsupportedFamily,
    _check_prefix,
    _items_family,
    _service,
)

__all__ = ["parse_stanza_full"]

#: An integer field as the peers write it: ASCII digits, at most a 64-bit value's worth
#: (``int()`` alone would take "٣", "1_000" or 4,000 digits, and raise on 5,000).
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,20}")
#: How deep a config object's properties may nest (real IFMap objects: about 8).
_MAX_CONFIG_DEPTH = 32

#: What a field check that missed a case could raise; turned into StanzaError.
_MISSED = (ValueError, TypeError, LookupError, AttributeError, RecursionError)


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


def _int(elem: ET.Element | None, what: str, default: int = 0) -> int:
    text = _text(elem)
    if not text:
        return default
    if _INT_TEXT.fullmatch(text) is None:
        raise StanzaError(f"{what} is not an integer: {text[:40]!r}")
    return int(text)


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
        return _parse_features(root)
    if tag == "starttls":
        return StartTls()
    if tag == "proceed":
        return TlsProceed()
    if tag == "failure":
        return TlsFailure()
    raise StanzaError(f"unexpected stanza <{tag}>")


def _parse_features(root: ET.Element) -> StreamFeatures:
    tls = None
    for child in root:
        if _local(child.tag) == "starttls":
            tls = child
    if tls is None:
        return StreamFeatures(False, False)
    required = any(_local(c.tag) == "required" for c in tls)
    return StreamFeatures(True, required)


# ---------------------------------------------------------------------------- iq


def _parse_iq(root: ET.Element) -> Stanza:
    sender = root.get("from", "")
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
    parse = _PUBSUB_OPS.get(name)
    if parse is None:
        raise StanzaError(f"unknown pubsub operation <{name}>")
    return parse(root, op, sender)


def _parse_subscribe(root: ET.Element, op: ET.Element, sender: str) -> Stanza:
    """``<subscribe>`` or ``<unsubscribe>``; the options are read anywhere in the iq."""
    name = _local(op.tag)
    node = op.get("node")
    if not node:
        raise StanzaError(f"{name} without a node")
    service = _service(root.get("to", ""))
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


def _parse_publish(root: ET.Element, op: ET.Element, sender: str) -> Publish:
    node = op.get("node")
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


def _parse_collection(root: ET.Element, op: ET.Element, sender: str) -> Collection:
    node = op.get("node")
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


#: The pubsub operations by element name: ``(iq, operation, sender) -> record``.
_PUBSUB_OPS: dict[str, Callable[[ET.Element, ET.Element, str], Stanza]] = {
    "subscribe": _parse_subscribe,
    "unsubscribe": _parse_subscribe,
    "publish": _parse_publish,
    "collection": _parse_collection,
}


# ---------------------------------------------------------------------------- message


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


# ---------------------------------------------------------------------------- entry


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
    afi, safi, address, mac, etag = _parse_nlri(nlri)
    nhs = f.get("next-hops")
    hops: tuple[NextHop, ...] = ()
    if nhs is not None:
        hops = tuple(_parse_next_hop(_children(nh)) for nh in nhs if nh.tag == "next-hop")
    sgl = f.get("security-group-list")
    evpn = afi == AFI_L2VPN
    return RouteEntry(
        afi,
        safi,
        address,
        hops,
        mac,
        etag,
        _text(f.get("virtual-network")),
        _int(f.get("sequence-number"), "sequence-number"),
        _int(f.get("local-preference"), "local-preference", 100),
        _int(f.get("med"), "med"),
        tuple(_int(sg, "security-group") for sg in sgl) if sgl is not None and len(sgl) else (),
        _text(f.get("sub-protocol")) or "interface",
        _text(nlri.get("group")) if evpn else "",
        _text(nlri.get("source")) if evpn else "",
        _int(nlri.get("flags"), "nlri flags") if evpn else 0,
    )


def _parse_nlri(nlri: dict[str, ET.Element]) -> tuple[int, int, str, str, int]:
    """``(afi, safi, address, mac, ethernet tag)`` of an entry's checked ``<nlri>``."""
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
    return afi, safi, address, mac, etag


def _parse_next_hop(nh: dict[str, ET.Element]) -> NextHop:
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
    return NextHop(
        addr,
        label,
        encaps,
        _text(nh.get("mac")),
        _text(nh.get("virtual-network")),
        _int(nh.get("l3-label"), "l3-label"),
        tuple(_int(t, "tag") for t in tags) if tags is not None and len(tags) else (),
        _int(nh.get("local-sequence-number"), "local-sequence-number"),
    )


# ---------------------------------------------------------------------------- config


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


def _config_node(elem: ET.Element) -> ConfigNode:
    ctype = elem.get("type", "")
    name = _text(elem.find("name"))
    if not ctype or not name:
        raise StanzaError("config node without type or name")
    props = _plain(elem)
    props.pop("name", None)
    return ConfigNode(ctype, name, props)


def _config_link(elem: ET.Element) -> ConfigLink:
    nodes = elem.findall("node")
    meta = elem.find("metadata")
    if len(nodes) != 2 or meta is None:
        raise StanzaError("config link needs two nodes and a metadata")
    return ConfigLink(
        (nodes[0].get("type", ""), _text(nodes[0].find("name"))),
        (nodes[1].get("type", ""), _text(nodes[1].find("name"))),
        meta.get("type", ""),
        _plain(meta) if len(meta) else {},
    )


def _parse_config_items(block: ET.Element) -> tuple[ConfigNode | ConfigLink, ...]:
    out: list[ConfigNode | ConfigLink] = []
    for child in block:
        kind = _local(child.tag)
        if kind == "node":
            out.append(_config_node(child))
        elif kind == "link":
            out.append(_config_link(child))
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

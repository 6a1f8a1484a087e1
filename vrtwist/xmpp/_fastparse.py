"""The fast path: canonical hot stanzas matched by regular expressions, checked as the
tree parser checks them.

The hot stanzas (route publish, collection, control-node items) are matched against
the exact canonical form the builders (:mod:`._build`) write.  The patterns accept only text and
attribute values without markup, entity references or characters an XML parser would
normalise, so a match is well-formed XML that parses to the same record; anything else
(another peer's formatting, escapes, errors) returns None and takes the full parser.

Public names are re-exported by :mod:`vrtwist.xmpp.stanzas`.
"""

from __future__ import annotations

import re
from typing import Any

from ._records import (
    _FAMILIES,
    _IPV4,
    _IPV4_PREFIX,
    AFI_INET,
    AFI_L2VPN,
    AFI_SAFI,
    EOR_NODE,
    Collection,
    NextHop,
    Publish,
    RouteEntry,
    RouteUpdate,
    Stanza,
    StanzaError,
    Subscribe,
    Unsubscribe,
    _check_prefix,
    _items_family,
    _service,
)

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
    + r"<local-sequence-number>" + _NUM + r"</local-sequence-number>"
    + r"</next-hop></next-hops><version>1</version><virtual-network>" + _TX
    + r'</virtual-network><mobility seqno="0" sticky="false" /><sequence-number>' + _NUM
    + r"</sequence-number>" + _SGL + r"<community-tag-list /><local-preference>" + _NUM
    + r"</local-preference><med>" + _NUM + r"</med><load-balance><load-balance-fields />"
    r"<load-balance-decision>field-hash</load-balance-decision></load-balance>"
    r"<sub-protocol>" + _TX + r"</sub-protocol></entry>"
)
_EVPN_HEAD = (
    r"<entry><nlri><af>25</af><safi>242</safi><ethernet-tag>" + _NUM + r"</ethernet-tag>"
    r"<mac>([0-9a-f]{2}(?::[0-9a-f]{2}){5})</mac><address>" + _TX + r"</address>"
    r"<group>" + _TX + r"</group><source>" + _TX + r"</source><flags>" + _NUM + r"</flags></nlri>"
    r"<next-hops><next-hop><af>1</af><address>" + _TX + r"</address><mac>" + _TX + r"</mac>"
    r"<label>" + _NUM + r"</label>"
)
_EVPN_TAIL = (
    r"<l3-label>" + _NUM + r"</l3-label>"
    r"<tunnel-encapsulation-list>" + _ENCS + r"</tunnel-encapsulation-list>" + _TAGS
    + r"<local-sequence-number>" + _NUM + r"</local-sequence-number>"
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
        l3, encs, tags, lseq, vn, seq, sgs, lp, med = m.groups()
        nh_vn, sub, l3_label = "", "", int(l3)
    else:
        m = _FAST_INET_TAIL.fullmatch(tail)
        if m is None:
            return None
        encs, nh_vn, tags, lseq, vn, seq, sgs, lp, med, sub = m.groups()
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
        int(lseq),
    )
    if len(_TAILS) >= _TAILS_MAX:
        _TAILS.clear()
    _TAILS[(evpn, tail)] = values
    return values


def _fast_entry(text: str, pos: int) -> tuple[RouteEntry, int] | None:
    """The canonical ``<entry>`` at ``pos`` and the offset after it, or None."""
    m = _FAST_INET_HEAD.match(text, pos)
    if m is not None:
        af, address, nh_addr, nh_mac, label = m.groups()
        afi = int(af)
        mac = group = source = ""
        etag = flags = 0
        evpn = False
    else:
        m = _FAST_EVPN_HEAD.match(text, pos)
        if m is None:
            return None
        etag_s, mac, address, group, source, flags_s, nh_addr, nh_mac, label = m.groups()
        afi, etag, evpn, flags = AFI_L2VPN, int(etag_s), True, int(flags_s)
    head_end = m.end()
    end = text.find(_END_ENTRY, head_end)
    if end < 0:
        return None
    end += len(_END_ENTRY)
    tail = text[head_end:end]
    values = _TAILS.get((evpn, tail))  # the memo, without a call: the usual case
    if values is None:
        values = _tail_values(evpn, tail)
    lab = int(label)
    if values is None or not _fields_valid(evpn, afi, address, nh_addr, lab):
        return None
    enc_t, nh_vn, l3_label, tags, vn, seq, lp, med, sgs, sub, lseq = values
    if not enc_t and lab:
        enc_t = ("gre",)
    nh = NextHop(nh_addr, lab, enc_t, nh_mac.strip(), nh_vn, l3_label, tags, lseq)
    entry = RouteEntry(
        afi, AFI_SAFI[afi], address, (nh,), mac, etag, vn, seq, lp, med, sgs, sub,
        group.strip(), source.strip(), flags,
    )
    return entry, end


def _fields_valid(evpn: bool, afi: int, address: str, nh_addr: str, label: int) -> bool:
    """The tree parser's checks of the fields the patterns leave open (False: let it decide)."""
    if label >= 1 << 24:
        return False
    if nh_addr not in _NH_ADDRESSES:
        if not _IPV4.fullmatch(nh_addr):
            return False
        if len(_NH_ADDRESSES) >= 4096:
            _NH_ADDRESSES.clear()
        _NH_ADDRESSES.add(nh_addr)
    if afi == AFI_INET and _IPV4_PREFIX.fullmatch(address):
        return True  # what _check_prefix accepts first, without the call: the usual case
    try:
        if evpn:
            if address and address != "0.0.0.0/0":
                _check_prefix(address, None)
        else:
            _check_prefix(address, afi)
    except StanzaError:
        return False
    return True


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
            return _fast_publish(text)
        if kind == "co":
            return _fast_collection(text)
        return _fast_subscribe(text)
    if head == "<mes":
        return _fast_message(text)
    return None


def _fast_publish(text: str) -> Publish | None:
    m = _FAST_PUBLISH.match(text)
    if m is None or not m.group(4):
        return None
    start = m.end()
    got = _fast_entry(text, start)
    if got is None or len(text) != got[1] + len(_FAST_PUBLISH_TAIL) or \
            not text.endswith(_FAST_PUBLISH_TAIL):
        return None
    return Publish(m.group(4), got[0], m.group(1), text[start : got[1]])


def _fast_collection(text: str) -> Collection | None:
    m = _FAST_COLLECTION.fullmatch(text)
    if m is None:
        return None
    sender, _to, _id, node, op, target = m.groups()
    if not node:
        return None
    if op == "associate":
        return Collection(node, target, None, sender)
    return Collection(node, None, target, sender)


def _fast_subscribe(text: str) -> Subscribe | Unsubscribe | None:
    m = _FAST_SUBSCRIBE.fullmatch(text)
    if m is None:
        return None
    sender, to, _id, op, node = m.groups()
    if not node:
        return None
    if op == "subscribe":
        return Subscribe(node, _service(to), None, False, sender)
    return Unsubscribe(node, _service(to), sender)


def _fast_message(text: str) -> RouteUpdate | None:
    m = _FAST_MESSAGE.match(text)
    if m is None:
        return None
    node = m.group(3)
    if _items_family(node) not in _FAMILIES:
        return None  # the full parser says why, or reads the family as carrying nothing
    pos = m.end()
    if text.startswith("<retract ", pos):
        return _fast_retracts(text, pos, node)
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


def _fast_retracts(text: str, pos: int, node: str) -> RouteUpdate | None:
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

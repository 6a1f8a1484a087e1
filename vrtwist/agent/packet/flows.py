"""Flow setup on a flow miss, and flow aging, as the vRouter agent does them.

The datapath holds the first packets of a new flow in a HOLD entry and traps one of them
(FLOW_MISS) with the entry's index, key next hop and generation. Here the agent:

1. builds the forward key from the trapped packet and the key next hop, and the reverse
   key from the route to the destination (the out next hop decides the reverse key's
   next hop: a local VM's own policy next hop, else the trapped one);
2. decides the action: no route to the source or the destination is a "short flow":
   both flows of the pair written as DROP with that reason (``NoSrcRt``/``NoDstRt``),
   as the real agent marks a flow and its reverse short together; otherwise the default
   policy of a network with no ACL, which is to allow (FORWARD);
3. writes the reverse flow first (``fr_index`` -1, linked to the trapped entry) and then
   the forward flow at the trapped index and generation, linked to the reverse's new
   index; the datapath then releases the held packets. The agent never re-injects them.

Aging reads the statistics the datapath writes into the shared-memory entries: a pair
whose byte counts did not move for the age time (180 s by default) in both directions is
deleted; pairs the datapath evicted (closed TCP) are forgotten without a delete.

The route view and the flow channel are injected; nothing here does I/O of its own.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol

from twisted.internet.defer import Deferred

from vrtwist.logfields import Logger
from vrtwist.packet.headers import (
    ETH_P_IP,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Ethernet,
    IPv4,
    PacketError,
)
from vrtwist.pkt0.codec import AgentHeader
from vrtwist.sandesh import constants as C
from vrtwist.shmem import layout as L
from vrtwist.shmem.entries import port_to_wire

__all__ = [
    "DEFAULT_AGE",
    "FlowCounters",
    "FlowDecision",
    "FlowKey",
    "FlowSetup",
    "RouteView",
    "analyse",
    "flow_request",
    "reverse_hop",
    "reverse_key",
    "short_decision",
    "with_mirrors",
]

#: the real agent's default flow idle time (``FlowAgeTime``)
DEFAULT_AGE: Final = 180.0
#: flow setups in flight at once; more traps wait for the datapath to re-trap (HOLD)
MAX_IN_FLIGHT: Final = 4096
#: a HOLD entry unchanged this long has no setup coming (``kAuditTimeout``): its trap was
#: lost, e.g. while the agent was away; the datapath never traps it again by itself
AUDIT_TIMEOUT: Final = 5.0

DR_NO_SRC_ROUTE: Final = 0x04
DR_NO_DST_ROUTE: Final = 0x05
#: ENOENT/EBADF: the entry is gone or was reused; the agent ignores them
_STALE: Final = frozenset({2, 9})
_EEXIST: Final = 17
#: the flags of each flow of a pair: active, linked to the other
_LINKED: Final = L.FLAG_ACTIVE | L.RFLOW_VALID
#: ICMP types whose identifier is the flow's source port (echo, timestamp, mask)
_ICMP_ECHO_TYPES: Final = frozenset({0, 8, 13, 14, 17, 18})

Key = tuple[Any, ...]
#: answers ``RouteView.out_of`` keeps at most (a trap names any key next hop it likes)
_MAX_OUTS: Final = 4096


class FlowChannel(Protocol):
    """Applies one FLOW_SET (its ``vr_flow_req`` fields, as :func:`flow_request` makes
    them); fires with ``(resp_code, index, gen_id)`` from the datapath's answer, index -1
    when the answer carried none. A channel that can answer synchronously (the embedded
    datapath) also has ``set_now(fields) -> (resp_code, index, gen_id)``; flow setup then
    calls that and creates no Deferred or coroutine per setup."""

    def __call__(self, fields: dict[str, int]) -> Deferred[tuple[int, int, int]]: ...


class PolicyStep(Protocol):
    """Gives a flow decision the configured policy's actions (see ``flowpolicy``)."""

    @property
    def active(self) -> bool: ...

    def apply(self, d: FlowDecision) -> FlowDecision: ...


class RouteView:
    """The agent's own routes (what it programs into the datapath), indexed for LPM.

    Fed with the model's desired objects and told which keys changed, so a flow miss costs
    one dict probe per prefix length present in the VRF, not a walk over every route.
    """

    def __init__(self, desired: Mapping[Key, tuple[str, dict[str, Any]]]) -> None:
        self._desired = desired
        #: vrf -> plen -> prefix int -> route fields
        self._routes: dict[int, dict[int, dict[int, dict[str, Any]]]] = {}
        #: vrf -> (mask, that prefix length's table), longest prefix first
        self._plens: dict[int, list[tuple[int, dict[int, dict[str, Any]]]]] = {}
        #: (route next hop, key next hop) -> ``out_of``'s answer, until the next change
        self._outs: dict[tuple[int, int], tuple[int, int]] = {}
        self.changed(list(desired))

    def changed(self, keys: Iterable[Key]) -> None:
        self._outs.clear()
        touched: set[int] = set()
        for key in keys:
            if len(key) != 5 or key[1] != C.AF_INET:
                continue
            _, _, vrf, packed, plen = key
            prefix = int.from_bytes(packed, "big")
            table = self._routes.setdefault(vrf, {})
            entry = self._desired.get(key)
            if entry is None:
                table.get(plen, {}).pop(prefix, None)
            else:
                table.setdefault(plen, {})[prefix] = entry[1]
            touched.add(vrf)
        for vrf in touched:
            table = self._routes[vrf]
            self._plens[vrf] = [((0xFFFFFFFF << (32 - p)) & 0xFFFFFFFF, table[p])
                                for p in sorted((p for p, t in table.items() if t), reverse=True)]

    def lookup(self, vrf: int, addr: bytes) -> dict[str, Any] | None:
        """The longest-prefix route to ``addr`` (4 raw bytes) in ``vrf``."""
        value = int.from_bytes(addr, "big")
        for mask, table in self._plens.get(vrf, ()):
            hit = table.get(value & mask)
            if hit is not None:
                return hit
        return None

    def out_of(self, out_nh: int, key_nh: int) -> tuple[int, int]:
        """(the reverse flow's key next hop, the local VM vif it leaves by or -1) of a
        flow whose route's next hop is ``out_nh`` and whose own key next hop is
        ``key_nh``: a local VM's own policy next hop, else ``out_nh`` itself for a next
        hop that is not a tunnel, receive or resolve one, else ``key_nh``. Kept until the
        next change (every change to the desired objects comes through ``changed``)."""
        found = self._outs.get((out_nh, key_nh))
        if found is None:
            if len(self._outs) >= _MAX_OUTS:
                self._outs.clear()
            found = self._outs[(out_nh, key_nh)] = self._resolve_out(out_nh, key_nh)
        return found

    def _resolve_out(self, out_nh: int, key_nh: int) -> tuple[int, int]:
        nh = self.nexthop(out_nh)
        if nh is not None and nh.get("nhr_type") == C.NH_ENCAP:
            oifs = nh.get("nhr_encap_oif_id") or [-1]
            vif = self.interface(int(oifs[0]))
            if vif is not None and vif.get("vifr_type") == C.VIF_TYPE_VIRTUAL:
                return int(vif.get("vifr_nh_id", key_nh)), int(oifs[0])
        elif nh is not None and nh.get("nhr_type") not in (C.NH_TUNNEL, C.NH_RCV, C.NH_RESOLVE):
            return out_nh, -1
        return key_nh, -1

    def nexthop(self, nh_id: int) -> dict[str, Any] | None:
        entry = self._desired.get(("nh", nh_id))
        return entry[1] if entry else None

    def interface(self, vif: int) -> dict[str, Any] | None:
        entry = self._desired.get(("vif", vif))
        return entry[1] if entry else None


class FlowKey(NamedTuple):
    """A flow's key as the datapath hashes it: raw IPv4 addresses, host-order ports."""

    sip: bytes
    dip: bytes
    proto: int
    sport: int
    dport: int
    nh_id: int

    def text(self) -> str:
        return "%s:%d -> %s:%d proto %d nh %d" % (
            ipaddress.IPv4Address(self.sip), self.sport, ipaddress.IPv4Address(self.dip),
            self.dport, self.proto, self.nh_id)  # fmt: skip


#: the IPv4 header without options and the two L4 ports after it
_IP4_PORTS: Final = struct.Struct("!BBHHHBBH4s4sHH").unpack_from
_AF_INET: Final = C.AF_INET
#: a key record straight from its six fields (``FlowKey(...)`` is a Python call)
_new_key: Final = tuple.__new__


def flow_request(
    key: FlowKey, index: int, gen: int, action: int, flags: int, *, flow_vrf: int = 0,
    src_nh_index: int = 0, rindex: int = -1, drop_reason: int = 0,
) -> dict[str, int]:
    """The fields of the FLOW_SET ``vr_flow_req`` for ``key`` at ``index``/``gen``.

    Addresses and ports go in the "network bytes held in a host integer" form of the
    vRouter's messages; the keywords are the further fields the agent sets, without
    their ``fr_`` prefix (their defaults are the datapath's for an absent field). A
    mapping, not a Sandesh object: the embedded datapath takes it as it is, and only the
    ksync channel builds the message. One literal: it is built twice per flow setup.
    """
    return {
        "fr_op": 0,
        "fr_index": index,
        "fr_gen_id": gen,
        "fr_action": action,
        "fr_flags": flags,
        "fr_ecmp_nh_index": 0xFFFFFFFF,
        "fr_family": C.AF_INET,
        "fr_flow_proto": key.proto,
        "fr_flow_sport": port_to_wire(key.sport),
        "fr_flow_dport": port_to_wire(key.dport),
        "fr_flow_nh_id": key.nh_id,
        "fr_flow_sip_l": int.from_bytes(key.sip, "little"),
        "fr_flow_dip_l": int.from_bytes(key.dip, "little"),
        "fr_flow_vrf": flow_vrf,
        "fr_src_nh_index": src_nh_index,
        "fr_rindex": rindex,
        "fr_drop_reason": drop_reason,
    }


#: ``fr_mir_id`` of "no mirror" (the real agent writes -1 in the i16)
NO_MIRROR: Final = 0xFFFF


def with_mirrors(fields: dict[str, int], mirrors: tuple[int, ...]) -> dict[str, int]:
    """``fields`` of a FLOW_SET with the mirror flag and up to two mirror indices (the
    real ``FlowTableKSyncEntry::Encode``); the datapath clones each packet of the flow
    to those mirror entries before the flow's action."""
    if mirrors:
        fields["fr_flags"] |= L.FLAG_MIRROR
        fields["fr_mir_id"] = mirrors[0]
        fields["fr_sec_mir_id"] = mirrors[1] if len(mirrors) > 1 else NO_MIRROR
    return fields


@dataclass(slots=True)
class FlowDecision:
    """What the agent writes for one trapped flow. Treated as immutable (the policy step
    makes a new one with ``dataclasses.replace``); not frozen, because a frozen
    dataclass's ``__init__`` costs three times as much, once per flow setup."""

    forward: FlowKey
    reverse: FlowKey | None
    action: int
    drop_reason: int
    vrf: int
    dvrf: int
    src_nh: int
    reverse_src_nh: int
    #: the reverse flow's action and drop reason when policy made them differ (-1: same)
    reverse_action: int = -1
    reverse_drop_reason: int = 0
    #: the trapped packet's vif, the local VM vif it goes to (-1: none), whether it was
    #: a TCP packet with ACK set: what the flow policy needs of the trap
    in_vif: int = -1
    out_vif: int = -1
    tcp_ack: bool = False
    #: a short flow (no route one way): both flows DROP with its reason, no policy
    short: bool = False
    #: datapath mirror indices (at most two) each direction sends copies to
    mirrors: tuple[int, ...] = ()
    reverse_mirrors: tuple[int, ...] = ()


def _ports(frame: bytes | memoryview, proto: int, l4: int, end: int) -> tuple[int, int]:
    if proto in (IPPROTO_TCP, IPPROTO_UDP):
        if end - l4 < 4:
            raise PacketError("truncated L4 ports")
        return int.from_bytes(frame[l4 : l4 + 2], "big"), int.from_bytes(frame[l4 + 2 : l4 + 4], "big")
    if proto == IPPROTO_ICMP:
        if end - l4 < 8:
            raise PacketError("truncated ICMP header")
        icmp_type = frame[l4]
        if icmp_type in _ICMP_ECHO_TYPES:
            return int.from_bytes(frame[l4 + 4 : l4 + 6], "big"), 0
        return 0, icmp_type
    return 0, 0


#: UDP destination ports of MPLSoUDP (the IANA port and the vRouter's own) and of VXLAN
_MPLS_UDP_PORTS: Final = frozenset({6635, 51234})
_VXLAN_PORT: Final = 4789
_GRE: Final = 47


def _mpls_payload(frame: bytes | memoryview, at: int) -> int:
    """Offset of the IPv4 header under the MPLS label stack at ``at`` (an L2 label's
    payload is an Ethernet frame: its IPv4 header then)."""
    for _ in range(2):
        if len(frame) - at < 4:
            raise PacketError("truncated MPLS header")
        word = int.from_bytes(frame[at : at + 4], "big")
        at += 4
        if word & 0x100:  # bottom of stack
            break
    else:
        raise PacketError("MPLS label stack deeper than two")
    if len(frame) > at and frame[at] >> 4 == 4:
        return at
    eth = Ethernet.parse(frame, at)
    if eth.ethertype != ETH_P_IP:
        raise PacketError("tunnelled frame is not IPv4")
    return at + eth.length


def tunnel_payload(frame: bytes | memoryview, l3: int, ip: IPv4) -> int | None:
    """Offset of the inner IPv4 header of a tunnel packet (MPLSoGRE, MPLSoUDP, VXLAN)
    whose outer IPv4 header is at ``l3``; None when it is not a tunnel packet."""
    l4 = l3 + ip.header_length
    if ip.is_fragment:
        return None
    if ip.proto == _GRE and len(frame) - l4 >= 4:
        flags = int.from_bytes(frame[l4 : l4 + 2], "big")
        if flags & ~0xA000 or int.from_bytes(frame[l4 + 2 : l4 + 4], "big") != 0x8847:
            return None
        return _mpls_payload(frame, l4 + 4 + 4 * bool(flags & 0x8000) + 4 * bool(flags & 0x2000))
    if ip.proto == IPPROTO_UDP and len(frame) - l4 >= 8:
        dport = int.from_bytes(frame[l4 + 2 : l4 + 4], "big")
        if dport in _MPLS_UDP_PORTS:
            return _mpls_payload(frame, l4 + 8)
        if dport == _VXLAN_PORT:
            eth = Ethernet.parse(frame, l4 + 16)
            if eth.ethertype != ETH_P_IP:
                raise PacketError("VXLAN frame is not IPv4")
            return l4 + 16 + eth.length
    return None


def _ipv4_of(frame: bytes | memoryview) -> tuple[int, IPv4]:
    eth = Ethernet.parse(frame)
    if eth.ethertype != ETH_P_IP:
        raise PacketError("flow trap of a non-IPv4 packet")
    return eth.length, IPv4.parse(frame, eth.length)


def analyse(hdr: AgentHeader, frame: bytes | memoryview, routes: RouteView,
            fabric: tuple[int, bytes] | None = None,
            parsed: tuple[int, IPv4] | None = None) -> FlowDecision:
    """The flow pair for a trapped IPv4 packet; raises PacketError for what is not one.

    ``fabric`` is (fabric vif, this node's fabric address): a packet trapped from the
    fabric to that address is a tunnel packet, trapped with its outer headers; its flow
    is the inner packet's (in the VRF and with the key next hop the trap names).
    ``parsed`` is (IPv4 header offset, IPv4 header) when the caller already parsed them
    (the trap dispatcher does), so the packet is not parsed twice."""
    l3, ip = _ipv4_of(frame) if parsed is None else parsed
    if fabric is not None and hdr.ifindex == fabric[0] and ip.dst == fabric[1]:
        inner = tunnel_payload(frame, l3, ip)
        if inner is not None:
            l3 = inner
            ip = IPv4.parse(frame, l3)
    if ip.frag & 0x1FFF:  # a fragment, and not the first
        raise PacketError("non-first fragment")
    l4 = l3 + 20 + len(ip.options)
    proto = ip.proto
    sport, dport = _ports(frame, proto, l4, min(len(frame), l3 + ip.total_length))
    ack = proto == IPPROTO_TCP and len(frame) > l4 + 13 and bool(frame[l4 + 13] & 0x10)
    return _decide(hdr, routes, ip.src, ip.dst, proto, sport, dport, ack)


def _decide(hdr: AgentHeader, routes: RouteView, sip: bytes, dip: bytes, proto: int,
            sport: int, dport: int, ack: bool) -> FlowDecision:
    """:func:`analyse` once the packet's 5-tuple is read (TCP ACK flag included)."""
    key_nh = hdr.param_1
    vrf = hdr.vrf
    forward = _new_key(FlowKey, (sip, dip, proto, sport, dport, key_nh))
    lookup = routes.lookup
    src_route = lookup(vrf, sip)
    dst_route = lookup(vrf, dip)
    if src_route is None or dst_route is None:
        return short_decision(forward, vrf, src_route is None, dst_route, routes)
    out_nh = int(dst_route.get("rtr_nh_id", 0))
    reverse_nh, out_vif = routes.out_of(out_nh, key_nh)
    if proto == IPPROTO_ICMP:
        reverse = _new_key(FlowKey, (dip, sip, proto, sport, dport, reverse_nh))
    else:
        reverse = _new_key(FlowKey, (dip, sip, proto, dport, sport, reverse_nh))
    return FlowDecision(
        forward, reverse, L.ACTION_FORWARD, 0, vrf, vrf,
        int(src_route.get("rtr_nh_id", 0)), out_nh, -1, 0, hdr.ifindex, out_vif, ack,
    )  # fmt: skip


def reverse_hop(key_nh: int, dst_route: Mapping[str, Any],
                routes: RouteView) -> tuple[int, int, int]:
    """(reverse key next hop, out next hop, out VM vif or -1) of a flow whose destination
    route is ``dst_route``: a local VM's own flow key next hop, else the out next hop
    when it is an interface's, else the forward key's (tunnels, receive, resolve)."""
    out_nh = int(dst_route.get("rtr_nh_id", 0))
    nh = routes.nexthop(out_nh)
    if nh is not None and nh.get("nhr_type") == C.NH_ENCAP:
        oifs = nh.get("nhr_encap_oif_id") or [-1]
        vif = routes.interface(int(oifs[0]))
        if vif is not None and vif.get("vifr_type") == C.VIF_TYPE_VIRTUAL:
            return int(vif.get("vifr_nh_id", key_nh)), out_nh, int(oifs[0])
    elif nh is not None and nh.get("nhr_type") not in (C.NH_TUNNEL, C.NH_RCV, C.NH_RESOLVE):
        return out_nh, out_nh, -1
    return key_nh, out_nh, -1


def reverse_key(forward: FlowKey, nh_id: int) -> FlowKey:
    """The reverse flow's key (an ICMP flow keeps its identifier as the source port)."""
    if forward.proto == IPPROTO_ICMP:
        return FlowKey(forward.dip, forward.sip, forward.proto, forward.sport, forward.dport,
                       nh_id)
    return FlowKey(forward.dip, forward.sip, forward.proto, forward.dport, forward.sport, nh_id)


def short_decision(forward: FlowKey, vrf: int, no_source: bool,
                   dst_route: Mapping[str, Any] | None, routes: RouteView) -> FlowDecision:
    """A short flow: the real agent (``PktFlowInfo::Add``) makes the reverse flow too and
    marks both short with one reason, so both directions are written DROP with
    ``NoSrcRt``/``NoDstRt``; the reverse key's next hop is the forward key's when there
    is no destination route to take it from."""
    reason = DR_NO_SRC_ROUTE if no_source else DR_NO_DST_ROUTE
    nh_id = forward.nh_id
    if dst_route is not None:
        nh_id = reverse_hop(forward.nh_id, dst_route, routes)[0]
    return FlowDecision(forward, reverse_key(forward, nh_id), L.ACTION_DROP, reason, vrf, vrf,
                        0, 0, reverse_action=L.ACTION_DROP, reverse_drop_reason=reason,
                        short=True)


@dataclass
class FlowCounters:
    traps: int = 0
    malformed: int = 0
    pairs: int = 0
    short_flows: int = 0
    duplicates: int = 0
    busy: int = 0
    failed: int = 0
    stale: int = 0
    aged: int = 0
    evicted: int = 0
    audited: int = 0
    denied: int = 0
    revaluated: int = 0


@dataclass(slots=True)
class _Pair:
    fwd_index: int
    fwd_gen: int
    forward: FlowKey
    rev_index: int
    rev_gen: int
    reverse: FlowKey | None
    last_bytes: int = -1
    last_change: float = 0.0
    #: what was written (re-evaluation writes again only what a policy change altered)
    decision: FlowDecision | None = None


@dataclass
class FlowSetup:
    """Answers flow traps with FLOW_SET pairs and ages what it created."""

    routes: RouteView
    channel: FlowChannel
    now: Callable[[], float]
    age: float = DEFAULT_AGE
    counters: FlowCounters = field(default_factory=FlowCounters)
    #: (fabric vif, fabric address) -> tunnel packets trapped from the fabric are parsed
    fabric: Callable[[], tuple[int, bytes] | None] | None = None
    _pending: set[tuple[int, int]] = field(default_factory=set)
    pairs: dict[int, _Pair] = field(default_factory=dict)
    #: HOLD entries seen by the audit: index -> (generation, first seen)
    _holds: dict[int, tuple[int, float]] = field(default_factory=dict)
    #: network policies and security groups; None or inactive: every routed flow passes
    policy: PolicyStep | None = None
    #: the channel ``_calls`` were looked up on, and its (set_now, set_pair_values)
    _calls_of: Any = field(default=None, init=False, repr=False, compare=False)
    _calls: tuple[Any, Any] = field(default=(None, None), init=False, repr=False,
                                    compare=False)

    _log = Logger()

    def trap_received(self, hdr: AgentHeader, frame: bytes | memoryview,
                      parsed: tuple[int, IPv4] | None = None) -> Deferred[None] | None:
        """Handle one FLOW_MISS / FLOW_ACTION_HOLD trap (fire-and-forget); ``parsed`` as
        for :func:`analyse`. Returns None when it completed at once (or was refused)."""
        c = self.counters
        c.traps += 1
        token = (hdr.param, hdr.param_5)
        if token in self._pending:
            c.duplicates += 1
            return None
        if len(self._pending) >= MAX_IN_FLIGHT:
            c.busy += 1
            return None
        try:
            decision = analyse(hdr, frame, self.routes,
                               self.fabric() if self.fabric is not None else None, parsed)
        except PacketError:
            c.malformed += 1
            return None
        return self._setup(hdr, token, decision)

    def trap_ipv4(self, hdr: AgentHeader, frame: bytes | memoryview) -> bool:
        """:meth:`trap_received` of the common trap, read in one unpack: an untagged
        IPv4 packet with a plain 20-byte header, TCP or UDP, not a later fragment, not a
        tunnel packet to this node. False, with nothing done or counted, for any other
        frame (the dispatcher then parses it and calls :meth:`trap_received`)."""
        size = len(frame)
        if size < 38 or frame[12] != 8 or frame[13] or frame[14] != 0x45:
            return False
        _, _, tlen, _, frag, _, proto, _, sip, dip, sport, dport = _IP4_PORTS(frame, 14)
        if tlen < 24 or frag & 0x1FFF or (proto != IPPROTO_TCP and proto != IPPROTO_UDP):
            return False
        fabric = self.fabric
        if fabric is not None:
            fab = fabric()
            if fab is not None and hdr.ifindex == fab[0] and dip == fab[1]:
                return False
        c = self.counters
        c.traps += 1
        token = (hdr.param, hdr.param_5)
        pending = self._pending
        if token in pending:
            c.duplicates += 1
            return True
        if len(pending) >= MAX_IN_FLIGHT:
            c.busy += 1
            return True
        ack = proto == IPPROTO_TCP and size > 47 and bool(frame[47] & 0x10)  # 34 + 13: flags
        self._setup(hdr, token, _decide(hdr, self.routes, sip, dip, proto, sport, dport, ack))
        return True

    def _channel_calls(self) -> tuple[Any, Any]:
        """The channel's ``set_now`` and ``set_pair_values`` (None: it has none), looked
        up once per channel rather than once per trap."""
        channel = self.channel
        self._calls_of = channel
        self._calls = (getattr(channel, "set_now", None),
                       getattr(channel, "set_pair_values", None))
        return self._calls

    def _setup(self, hdr: AgentHeader, token: tuple[int, int],
               decision: FlowDecision) -> Deferred[None] | None:
        """The policy step, then the pair written over the channel."""
        policy = self.policy
        if policy is not None and not decision.short and policy.active:
            decision = policy.apply(decision)
        if self.channel is self._calls_of:
            set_now, set_values = self._calls
        else:
            set_now, set_values = self._channel_calls()
        self._pending.add(token)
        if set_now is not None:
            # an embedded datapath answers at once: no Deferred, no coroutine per setup
            try:
                if (set_values is None or decision.reverse is None or decision.mirrors
                        or decision.reverse_mirrors):
                    self._program_now(set_now, hdr.param, hdr.param_5, decision)
                else:
                    self._program_values(set_now, set_values, hdr.param, hdr.param_5,
                                         decision)
            except Exception:  # noqa: BLE001 - as a failed Deferred would: logged, and
                # the pkt0 reader goes on with the next trap
                self.counters.failed += 1
                self._log.failure("flow setup of entry {index} failed", index=hdr.param)
            finally:
                self._pending.discard(token)
            return None
        d = self._program(hdr.param, hdr.param_5, decision)

        def done(result: object) -> None:
            self._pending.discard(token)
            return None

        d.addBoth(done)
        return d

    def _program_values(self, set_now: Callable[[dict[str, int]], tuple[int, int, int]],
                        set_values: Callable[[tuple[int, ...], tuple[int, ...]],
                                             tuple[int, ...] | None],
                        index: int, gen: int, d: FlowDecision) -> None:
        """:meth:`_program_now` of a pair without mirrors for a channel that takes the
        two requests' values (``set_pair_values``, the values of :func:`flow_request`'s
        mapping in its order): no mapping is built unless the pair is refused, when the
        two requests go one by one and say what is wrong."""
        done = set_values(*self.pair_values(index, gen, d))
        if done is not None:
            self._forward_done(0, index, gen, d, done[0], done[1])
            return
        code, rev_index, rev_gen = set_now(self._reverse_request(index, d))
        if not self._reverse_ok(code, rev_index):
            return
        code = set_now(self._forward_request(index, gen, d, rev_index))[0]
        self._forward_done(code, index, gen, d, rev_index, rev_gen)

    @staticmethod
    def pair_values(index: int, gen: int,
                    d: FlowDecision) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The values of :meth:`_reverse_request` and of :meth:`_forward_request` (with
        ``fr_rindex`` -1) in :func:`flow_request`'s order, for a pair without mirrors;
        the reverse shares the forward's converted addresses when it has them."""
        assert d.reverse is not None
        sip, dip, proto, sport, dport, nh = d.forward
        rsip, rdip, rproto, rsport, rdport, rnh = d.reverse
        sip_l = int.from_bytes(sip, "little")
        dip_l = int.from_bytes(dip, "little")
        if rsip is dip and rdip is sip:
            rsip_l, rdip_l = dip_l, sip_l
        else:
            rsip_l, rdip_l = int.from_bytes(rsip, "little"), int.from_bytes(rdip, "little")
        action = d.action
        rev_action = action if d.reverse_action < 0 else d.reverse_action
        return (
            (0, -1, 0, rev_action, _LINKED, 0xFFFFFFFF, _AF_INET, rproto,
             ((rsport & 0xFF) << 8) | ((rsport >> 8) & 0xFF),
             ((rdport & 0xFF) << 8) | ((rdport >> 8) & 0xFF),
             rnh, rsip_l, rdip_l, d.dvrf, d.reverse_src_nh, index, d.reverse_drop_reason),
            (0, index, gen, action, _LINKED, 0xFFFFFFFF, _AF_INET, proto,
             ((sport & 0xFF) << 8) | ((sport >> 8) & 0xFF),
             ((dport & 0xFF) << 8) | ((dport >> 8) & 0xFF),
             nh, sip_l, dip_l, d.vrf, d.src_nh, -1, d.drop_reason),
        )  # fmt: skip

    def _program_now(self, set_now: Callable[[dict[str, int]], tuple[int, int, int]],
                     index: int, gen: int, d: FlowDecision) -> None:
        """:meth:`_program` for a channel that answers synchronously. One that can also
        write both flows in one call (``set_pair_now(reverse, forward)`` -> the reverse's
        (index, gen), or None when it took neither) is given the pair first."""
        if d.reverse is None:
            self._short_done(set_now(self._short_request(index, gen, d))[0])
            return
        rev = self._reverse_request(index, d)
        set_pair = getattr(self.channel, "set_pair_now", None)
        if set_pair is not None:
            fwd = self._forward_request(index, gen, d, -1)
            done = set_pair(rev, fwd)
            if done is not None:
                self._forward_done(0, index, gen, d, done[0], done[1])
                return
        code, rev_index, rev_gen = set_now(rev)
        if not self._reverse_ok(code, rev_index):
            return
        code = set_now(self._forward_request(index, gen, d, rev_index))[0]
        self._forward_done(code, index, gen, d, rev_index, rev_gen)

    def _program(self, index: int, gen: int, d: FlowDecision) -> Deferred[None]:
        """Write the pair over a channel that answers later (ksync): the reverse, then,
        once its index is known, the forward. Callbacks, not a coroutine: one Deferred
        per request and none per setup (the agent's hot path over ksync)."""
        if d.reverse is None:
            return self.channel(self._short_request(index, gen, d)).addCallback(
                self._short_answered)
        return self.channel(self._reverse_request(index, d)).addCallback(
            self._reverse_answered, index, gen, d)

    def _short_answered(self, answer: tuple[int, int, int]) -> None:
        self._short_done(answer[0])

    def _reverse_answered(self, answer: tuple[int, int, int], index: int, gen: int,
                          d: FlowDecision) -> Deferred[None] | None:
        code, rev_index, rev_gen = answer
        if not self._reverse_ok(code, rev_index):
            return None
        return self.channel(self._forward_request(index, gen, d, rev_index)).addCallback(
            self._forward_answered, index, gen, d, rev_index, rev_gen)

    def _forward_answered(self, answer: tuple[int, int, int], index: int, gen: int,
                          d: FlowDecision, rev_index: int, rev_gen: int) -> None:
        self._forward_done(answer[0], index, gen, d, rev_index, rev_gen)

    @staticmethod
    def _short_request(index: int, gen: int, d: FlowDecision) -> dict[str, int]:
        """A short flow (no route one way): the forward entry alone, as DROP."""
        return flow_request(d.forward, index, gen, L.ACTION_DROP, L.FLAG_ACTIVE,
                            flow_vrf=d.vrf, drop_reason=d.drop_reason)

    def _short_done(self, code: int) -> None:
        if code < 0:
            self._failed(code)
        else:
            self.counters.short_flows += 1

    @staticmethod
    def _reverse_request(index: int, d: FlowDecision) -> dict[str, int]:
        """The reverse flow, written first at a new index and linked to the trapped one."""
        assert d.reverse is not None
        rev_action = d.action if d.reverse_action < 0 else d.reverse_action
        f = flow_request(d.reverse, -1, 0, rev_action, _LINKED, flow_vrf=d.dvrf,
                         src_nh_index=d.reverse_src_nh, rindex=index,
                         drop_reason=d.reverse_drop_reason)
        return with_mirrors(f, d.reverse_mirrors) if d.reverse_mirrors else f

    def _reverse_ok(self, code: int, rev_index: int) -> bool:
        if code < 0 and -code != _EEXIST:
            self._failed(code)
            return False
        if rev_index < 0:
            self._failed(-71)  # EPROTO: no index in the answer
            return False
        return True

    @staticmethod
    def _forward_request(index: int, gen: int, d: FlowDecision, rev_index: int) -> dict[str, int]:
        """The forward flow at the trapped index and generation, linked to the reverse."""
        f = flow_request(d.forward, index, gen, d.action, _LINKED, flow_vrf=d.vrf,
                         src_nh_index=d.src_nh, rindex=rev_index, drop_reason=d.drop_reason)
        return with_mirrors(f, d.mirrors) if d.mirrors else f

    def _forward_done(self, code: int, index: int, gen: int, d: FlowDecision,
                      rev_index: int, rev_gen: int) -> None:
        if code < 0:
            self._failed(code)
            return
        c = self.counters
        if d.short:
            c.short_flows += 1
        else:
            c.pairs += 1
            if d.action == L.ACTION_DROP:
                c.denied += 1
        self.pairs[index] = _Pair(index, gen, d.forward, rev_index, rev_gen & 0xFF, d.reverse,
                                  -1, self.now(), d)

    def revaluate(self) -> list[Deferred[tuple[int, int, int]]]:
        """Apply the policy again to every pair this agent set up (after a policy or a
        port's security groups changed) and re-write, at the same index and generation,
        the flows whose action changed: a stream a new rule denies stops, and one a
        removed rule had denied flows again (``FlowMgmt``'s re-evaluation)."""
        out: list[Deferred[tuple[int, int, int]]] = []
        policy = self.policy
        if policy is None:
            return out
        for pair in list(self.pairs.values()):
            old = pair.decision
            if old is None or old.reverse is None or pair.reverse is None or old.short:
                continue
            new = policy.apply(old)
            rev_action = new.action if new.reverse_action < 0 else new.reverse_action
            was = old.action if old.reverse_action < 0 else old.reverse_action
            if (new.action, new.drop_reason, rev_action, new.reverse_drop_reason,
                    new.mirrors, new.reverse_mirrors) == (
                    old.action, old.drop_reason, was, old.reverse_drop_reason, old.mirrors,
                    old.reverse_mirrors):
                continue
            self.counters.revaluated += 1
            pair.decision = new
            flags = _LINKED
            out.append(self.channel(with_mirrors(flow_request(
                pair.reverse, pair.rev_index, pair.rev_gen, rev_action, flags,
                flow_vrf=new.dvrf, src_nh_index=new.reverse_src_nh, rindex=pair.fwd_index,
                drop_reason=new.reverse_drop_reason), new.reverse_mirrors)))  # fmt: skip
            out.append(self.channel(with_mirrors(flow_request(
                pair.forward, pair.fwd_index, pair.fwd_gen, new.action, flags,
                flow_vrf=new.vrf, src_nh_index=new.src_nh, rindex=pair.rev_index,
                drop_reason=new.drop_reason), new.mirrors)))  # fmt: skip
        return out

    def _failed(self, code: int) -> None:
        if -code in _STALE:
            self.counters.stale += 1
        else:
            self.counters.failed += 1
            self._log.warn("flow setup refused by the datapath: {code}", code=code)

    def audit_pass(self, held: Iterable[int],
                   read: Callable[[int], Any]) -> list[Deferred[tuple[int, int, int]]]:
        """One audit pass over the HOLD entries (``held``: their indices).

        An entry still HOLD with the same generation ``AUDIT_TIMEOUT`` after it was first
        seen, and not being set up, is deleted (its held packets are dropped): the next
        packet of that flow makes a new entry, which the datapath traps. This is how
        flows whose trap never reached this agent (it was restarting) recover.
        """
        now = self.now()
        out: list[Deferred[tuple[int, int, int]]] = []
        seen: dict[int, tuple[int, float]] = {}
        for index in held:
            entry = read(index)
            if entry is None or entry.action != L.ACTION_HOLD:
                continue
            gen = entry.gen_id
            if (index, gen) in self._pending:
                continue
            first = self._holds.get(index)
            if first is None or first[0] != gen:
                seen[index] = (gen, now)
                continue
            if now - first[1] < AUDIT_TIMEOUT:
                seen[index] = first
                continue
            self.counters.audited += 1
            key = FlowKey(ipaddress.IPv4Address(entry.sip).packed,
                          ipaddress.IPv4Address(entry.dip).packed, entry.proto, entry.sport,
                          entry.dport, entry.nh_id)
            out.append(self.channel(flow_request(key, index, gen, L.ACTION_DROP, 0)))
        self._holds = seen
        return out

    def age_pass(self, read: Callable[[int], Any]) -> list[Deferred[tuple[int, int, int]]]:
        """One aging pass over the pairs this agent created.

        ``read(index)`` returns the shared-memory entry (``FlowEntry``) or None. Idle pairs
        (no byte moved in either direction for ``age`` seconds) are deleted; pairs whose
        entries the datapath evicted or reused are forgotten.
        """
        now = self.now()
        out: list[Deferred[tuple[int, int, int]]] = []
        for index, pair in list(self.pairs.items()):
            fwd, rev = read(pair.fwd_index), read(pair.rev_index)
            gone = (
                fwd is None or rev is None
                or fwd.gen_id != pair.fwd_gen or rev.gen_id != pair.rev_gen
                or not fwd.active or not rev.active
            )  # fmt: skip
            if gone or (fwd.flags | rev.flags) & L.FLAG_EVICTED:
                del self.pairs[index]
                self.counters.evicted += 1
                continue
            total = fwd.total_bytes + rev.total_bytes
            if total != pair.last_bytes:
                pair.last_bytes = total
                pair.last_change = now
                continue
            if now - pair.last_change < self.age:
                continue
            del self.pairs[index]
            self.counters.aged += 1
            for key, idx, gen in ((pair.forward, pair.fwd_index, pair.fwd_gen),
                                  (pair.reverse, pair.rev_index, pair.rev_gen)):
                if key is not None:
                    out.append(self.channel(flow_request(key, idx, gen, L.ACTION_DROP, 0)))
        return out

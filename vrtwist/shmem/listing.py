"""Read-only views of the mapped tables and the ``flow -l`` / ``rt --family bridge`` text.

The output reproduces ``utils/flow.c`` ``flow_dump_table`` and ``utils/rt.c``
``vr_bridge_print_route`` character for character (same padding, same 70-column
wrapping quirks), so scripts written against the real tools keep working.
"""

from __future__ import annotations

import ipaddress
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from vrtwist.shmem import layout as L
from vrtwist.shmem.entries import (
    BridgeEntry,
    FlowEntry,
    parse_bridge_entry,
    parse_flow_entry,
    snapshot_bridge,
    snapshot_flow,
)
from vrtwist.shmem.htable import map_file

__all__ = [
    "BridgeTableView",
    "FlowMatch",
    "FlowTableView",
    "MatchError",
    "ether_ntoa",
    "format_bridge_entry",
    "format_flow",
    "parse_match",
    "write_flow_table",
]


class MatchError(ValueError):
    """A ``--match`` string the real tool would refuse."""


class FlowTableView:
    """A read-only mapping of ``flow.shmem`` (entry count = size / 256, as the tools do)."""

    def __init__(self, path: str, size: int | None = None) -> None:
        self.map = map_file(path, size)
        self.size = len(self.map)
        self.num_entries = self.size // L.FLOW_ENTRY_SIZE

    def close(self) -> None:
        self.map.close()

    def get(self, index: int) -> FlowEntry | None:
        """A consistent snapshot of an active entry, or None."""
        raw = snapshot_flow(self.map, index)
        return parse_flow_entry(raw, index) if raw is not None else None

    def raw_entry(self, index: int) -> FlowEntry:
        off = index * L.FLOW_ENTRY_SIZE
        return parse_flow_entry(self.map[off : off + L.FLOW_ENTRY_SIZE], index)

    def active_indices(self) -> list[int]:
        """Indices whose fe_flags has ACTIVE, from one strided read of the flags column."""
        n = self.num_entries
        mv = memoryview(self.map)
        try:
            words = mv[: n * L.FLOW_ENTRY_SIZE].cast("H")
            col = words[L.OFF_FE_FLAGS // 2 :: L.FLOW_ENTRY_SIZE // 2].tolist()
            words.release()
        finally:
            mv.release()
        return [i for i, f in enumerate(col) if f & L.FLAG_ACTIVE]

    def next_indices(self) -> list[int]:
        """hentry_next_index of every entry."""
        n = self.num_entries
        mv = memoryview(self.map)
        try:
            words = mv[: n * L.FLOW_ENTRY_SIZE].cast("I")
            col = words[L.OFF_HENTRY_NEXT_INDEX // 4 :: L.FLOW_ENTRY_SIZE // 4].tolist()
            words.release()
        finally:
            mv.release()
        return col

    def __iter__(self) -> Iterator[FlowEntry]:
        for i in self.active_indices():
            e = self.get(i)
            if e is not None:
                yield e


class BridgeTableView:
    """A read-only mapping of ``bridge.shmem``."""

    def __init__(self, path: str, size: int | None = None) -> None:
        self.map: mmap.mmap = map_file(path, size)
        self.num_entries = len(self.map) // L.BRIDGE_ENTRY_SIZE

    def close(self) -> None:
        self.map.close()

    def __iter__(self) -> Iterator[BridgeEntry]:
        mv = memoryview(self.map)
        try:
            words = mv[: self.num_entries * L.BRIDGE_ENTRY_SIZE].cast("B")
            col = words[L.OFF_BE_FLAGS :: L.BRIDGE_ENTRY_SIZE].tolist()
            words.release()
        finally:
            mv.release()
        for i, f in enumerate(col):
            if f & L.BE_VALID:
                raw = snapshot_bridge(self.map, i)
                if raw is not None:
                    yield parse_bridge_entry(raw, i)


# -- --match ------------------------------------------------------------------------
_PROTOS = (("tcp", 6), ("udp", 17), ("icmp6", 58), ("icmp", 1), ("sctp", 132))
_PROTO_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPV6", 132: "SCTP"}


@dataclass
class FlowMatch:
    """Parsed ``--match``: up to two (address, port) ends, a VRF and a protocol."""

    family: int = 0
    ends: list[tuple[str | None, int]] | None = None
    vrf: int = -1
    proto: int = -1

    def header(self) -> str:
        parts: list[str] = []
        for addr, port in self.ends or []:
            s = "[%s]" % addr if addr is not None else "[*]"
            s += ":%u" % port if port >= 0 else ":*"
            parts.append(s)
        if self.proto >= 0:
            parts.append("Protocol %s" % _PROTO_NAMES.get(self.proto, str(self.proto)))
        if self.vrf >= 0:
            parts.append("VRF %d" % self.vrf)
        return "Listing flows matching (" + ", ".join(parts) + ")\n\n"

    def active(self) -> bool:
        return bool(self.family) or self.proto > 0 or self.vrf > 0

    def _end(self, e: FlowEntry, which: int, end: tuple[str | None, int]) -> bool:
        addr, port = end
        if addr is None and port < 0:
            return False
        ip = e.sip if which == 0 else e.dip
        if addr is None or ipaddress.ip_address(ip) == ipaddress.ip_address(addr):
            if port < 0:
                return True
            return (e.sport if which == 0 else e.dport) == port
        return False

    def _ends_match(self, e: FlowEntry, ends: list[tuple[str | None, int]]) -> bool:
        """One end given: either side of the flow; two: one side each, either way round."""
        smatch = dmatch = False
        if ends:
            smatch = self._end(e, 0, ends[0])
            if not smatch:
                dmatch = self._end(e, 1, ends[0])
        if len(ends) > 1:
            if smatch:
                if not self._end(e, 1, ends[1]):
                    return False
                dmatch = True
            elif dmatch:
                if not self._end(e, 0, ends[1]):
                    return False
                smatch = True
            else:
                smatch = self._end(e, 0, ends[1])
                if not smatch:
                    dmatch = self._end(e, 1, ends[1])
        if not smatch and not dmatch:
            return False
        if len(ends) > 1 and not (smatch and dmatch):
            return False
        return True

    def matches(self, e: FlowEntry) -> bool:
        if self.vrf >= 0 and e.vrf != self.vrf:
            return False
        if self.proto >= 0 and e.proto != self.proto:
            return False
        if not self.family:
            return True
        if (e.type == L.VP_TYPE_IP6) != (self.family == L.AF_INET6):
            return False
        return self._ends_match(e, self.ends or [])


def _split_end(text: str) -> tuple[str, str, int]:
    """``addr``, ``addr:port``, ``[v6]:port`` or a bare v6 address: (addr, port, family)."""
    port = "-1"
    if text.startswith("["):
        close = text.rfind("]")
        if close < 0:
            raise MatchError("match: No closing ']'")
        if len(text) - close - 1 < 2 or text[close + 1] != ":":
            raise MatchError("match: match string should be in [aa:aa::aa:aa]:p format")
        addr, port, family = text[1:close], text[close + 2 :], L.AF_INET6
    elif text.count(":") >= 2:
        addr, family = text, L.AF_INET6
    elif ":" in text:
        addr, port = text.split(":", 1)
        family = L.AF_INET
    else:
        addr, family = text, L.AF_INET
    return addr, port, family


def _tuple(m: FlowMatch, text: str) -> None:
    text = text.strip()
    if m.ends is None:
        m.ends = []
    if len(m.ends) >= 2:
        raise MatchError(
            'match: Why do you specify "%s" when both ends of the flow are already specified' % text
        )
    addr, port, family = _split_end(text)
    if m.family and m.family != family:
        raise MatchError("match: You are trying to match v4 and v6 flow together")
    if addr != "*":
        try:
            parsed = ipaddress.ip_address(addr)
        except ValueError as e:
            raise MatchError("match: invalid address %r" % addr) from e
        if (parsed.version == 6) != (family == L.AF_INET6):
            raise MatchError("match: invalid address %r" % addr)
    m.family = family
    p = -1
    if port and port != "*" and port != "-1":
        try:
            p = int(port, 0)
        except ValueError as e:
            raise MatchError("match: invalid port %r" % port) from e
    m.ends.append((None if addr == "*" else addr, p))


def parse_match(text: str) -> FlowMatch:
    """Parse ``"ip:port[,ip:port] & vrf N & proto P"`` as the real tool does."""
    m = FlowMatch()
    for token in (t.strip() for t in text.split("&")):
        if not token:
            continue
        if token.startswith("proto"):
            name = token[len("proto") :].strip()
            for pname, num in _PROTOS:
                if name.startswith(pname):
                    m.proto = num
                    break
            else:
                raise MatchError('Unsupported protocol "%s"' % name)
        elif token.startswith("vrf"):
            try:
                m.vrf = int(token[len("vrf") :].strip(), 0)
            except ValueError as e:
                raise MatchError("match: invalid vrf %r" % token) from e
        else:
            for part in token.split(","):
                if part.strip():
                    _tuple(m, part)
    return m


# -- formatting ----------------------------------------------------------------------
LEGEND = (
    "Action:F=Forward, D=Drop N=NAT(S=SNAT, D=DNAT, Ps=SPAT, Pd=DPAT, L=Link Local Port)\n"
    " Other:K(nh)=Key_Nexthop, S(nh)=RPF_Nexthop\n"
    " Flags:E=Evicted, Ec=Evict Candidate, N=New Flow, M=Modified Dm=Delete Marked\n"
    "TCP(r=reverse):S=SYN, F=FIN, R=RST, C=HalfClose, E=Established, D=Dead\n"
    "\n"
)
HEADER = (
    "    Index            "
    + " " * 4
    + "Source:Port/Destination:Port                  "
    + " " * 4
    + "Proto(V)\n"
    + "-" * 65
    + "-" * 18
    + "\n"
)
_ACTION = {L.ACTION_HOLD: "H", L.ACTION_FORWARD: "F", L.ACTION_DROP: "D", L.ACTION_NAT: "N"}
_NAT_BITS = (
    (L.FLAG_SNAT, "S"),
    (L.FLAG_SPAT, "Ps"),
    (L.FLAG_DNAT, "D"),
    (L.FLAG_DPAT, "Pd"),
    (L.FLAG_LINK_LOCAL, "L"),
)
_TCP_BITS = (
    (L.TCP_SYN, "S"),
    (L.TCP_SYN_R, "Sr"),
    (L.TCP_ESTABLISHED, "E"),
    (L.TCP_ESTABLISHED_R, "Er"),
    (L.TCP_FIN, "F"),
    (L.TCP_FIN_R, "Fr"),
    (L.TCP_RST, "R"),
    (L.TCP_HALF_CLOSE, "C"),
    (L.TCP_DEAD, "D"),
)


def _ip4(v: int) -> str:
    return "%d.%d.%d.%d" % (v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF, v >> 24)


_FLAG_STR: dict[int, str] = {}
_TCP_STR: dict[int, str] = {}
_NAT_STR: dict[int, str] = {}


def _flag_str(f: int) -> str:
    f &= (
        L.FLAG_EVICTED
        | L.FLAG_EVICT_CANDIDATE
        | L.FLAG_NEW_FLOW
        | L.FLAG_MODIFIED
        | L.FLAG_DELETE_MARKED
    )
    s = _FLAG_STR.get(f)
    if s is None:
        s = ""
        if f & L.FLAG_EVICTED:
            s += "E"
        if f & L.FLAG_EVICT_CANDIDATE:
            s += "Ec"
        if f & L.FLAG_NEW_FLOW:
            s += "N"
        if f & L.FLAG_MODIFIED:
            s += "M"
        if f & L.FLAG_DELETE_MARKED:
            s += "Dm"
        _FLAG_STR[f] = s
    return s


def _tcp_str(t: int) -> str:
    s = _TCP_STR.get(t)
    if s is None:
        s = _TCP_STR[t] = "TCP:" + "".join(c for bit, c in _TCP_BITS if t & bit) + ", "
    return s


def _nat_str(f: int) -> str:
    s = _NAT_STR.get(f)
    if s is None:
        s = _NAT_STR[f] = "(%s)" % "".join(c for bit, c in _NAT_BITS if f & bit)
    return s


def _wrapped(parts: list[str], text: str, printed: int) -> int:
    """Append a field, and a line break once the line reaches 70 columns: the new count."""
    parts.append(text)
    printed += len(text)
    if printed >= 70:
        parts.append("\n")
        return 0
    return printed


def _flow_summary(e: FlowEntry) -> str:
    """The ``(Gen: ..., QOS:..., S(nh):...,`` part of a flow's block."""
    f = e.flags
    action = e.action
    s = "(Gen: %u, " % e.gen_id
    if e.type == L.VP_TYPE_IP or e.type == L.VP_TYPE_IP6:
        s += "K(nh):%u, " % e.nh_id
    s += "Action:" + _ACTION.get(action, "U")
    if action == L.ACTION_NAT:
        s += _nat_str(f)
    elif action == L.ACTION_DROP:
        s += "(%s)" % L.DROP_REASONS.get(e.drop_reason, str(e.drop_reason))
    s += ", Flags:" + _flag_str(f) + ", "
    if e.proto == L.IPPROTO_TCP:
        s += _tcp_str(e.tcp_flags)
    if e.ecmp_nh_index >= 0:
        s += "E:%d, " % e.ecmp_nh_index
    s += "QOS:%d, S(nh):%u, " % (e.qos_id, e.src_nh_index)
    return s


def format_flow(e: FlowEntry) -> str:
    """The per-flow block of ``flow -l`` (without the overflow chain and blank lines)."""
    f = e.flags
    tail = "    " if e.type == L.VP_TYPE_IP6 else ""
    src = "%s:%-5d%s" % (e.sip, e.sport, tail)
    head = "%9d%s    %-46s    %3d (%d%s)\n%25s%s:%-5d%s\n" % (
        e.index,
        "<=>%-9d" % e.rflow if e.rflow >= 0 else "            ",
        src,
        e.proto,
        e.vrf,
        "->%d" % e.dvrf if f & L.FLAG_VRFT else "",
        "",
        e.dip,
        e.dport,
        tail,
    )
    s = _flow_summary(e)
    parts = [head]
    printed = _wrapped(parts, s, 0)
    printed = _wrapped(parts, " Stats:%u/%u, " % (e.packets, e.bytes), printed)
    if f & L.FLAG_MIRROR:
        t = " Mirror Index :"
        if e.mirror_id < L.DEFAULT_MAX_MIRRORS:
            t += " %d" % e.mirror_id
        if e.sec_mirror_id < L.DEFAULT_MAX_MIRRORS:
            t += ", %d, " % e.sec_mirror_id
        printed = _wrapped(parts, t, printed)
    _wrapped(parts, " SPort %d," % e.udp_src_port, printed)
    parts.append(" TTL %d," % e.ttl)  # the real tool does not count this one
    if e.flags1 & L.FLAG1_HBS_LEFT:
        parts.append(" HbsLeft,")
    elif e.flags1 & L.FLAG1_HBS_RIGHT:
        parts.append(" HbsRight,")
    parts.append(" Sinfo %s)" % _ip4(e.src_info))
    return "".join(parts)


#: overflow entries listed after an entry that is itself inside a chain; the head of
#: a chain lists the whole chain once, so what follows the others is a bounded
#: reminder (the real tool reprints the rest of the chain after every member, which
#: is quadratic on a long chain: 32K entries in one chain gave gigabytes of text)
CHAIN_SHOWN = 32


def _chain_heads(nexts: list[int]) -> list[bool]:
    """Which entries start a chain: a next index set and no entry pointing at them."""
    n = len(nexts)
    pointed = [False] * n
    for nxt in nexts:
        if nxt < n:
            pointed[nxt] = True
    return [nexts[i] != L.INVALID_INDEX and not pointed[i] for i in range(n)]


def _oflow_chain(i: int, active: bool, nexts: list[int], seen: bytearray | None, limit: int) -> str:
    """``Oflow entries:`` after entry ``i``, in the real tool's layout.

    A chain head walks until the end, ``limit`` or an entry already listed from
    another head (``seen``: a merge or a loop in a corrupt table); every other entry
    walks at most ``limit`` steps. Either way the walk ends, and " ..." says it was cut.
    """
    nxt = nexts[i]
    if nxt == L.INVALID_INDEX:
        return ""
    n = len(nexts)
    parts: list[str] = []
    if not active:
        parts.append("%6d" % i)
    parts.append("\n     Oflow entries:\n\t")
    j = 0
    steps = 0
    while nxt != L.INVALID_INDEX:
        if nxt >= n or steps >= limit or (seen is not None and seen[nxt]):
            parts.append(" ...")
            break
        if seen is not None:
            seen[nxt] = 1
        t = " %d" % nxt
        parts.append(t)
        j += len(t)
        if j > 65:
            parts.append("\n     ")
            j = 0
        nxt = nexts[nxt]
        steps += 1
    return "".join(parts)


def write_flow_table(
    out: TextIO,
    view: FlowTableView,
    data: dict[str, Any],
    match: FlowMatch | None = None,
    show_evicted: bool = False,
) -> int:
    """Write the whole ``flow -l`` listing; return the number of flows printed."""
    w = out.write
    w("Flow table(size %d, entries %u)\n\n" % (view.size, view.num_entries))
    w(
        "Entries: Created %d Added %d Deleted %d Changed %dProcessed %d Used Overflow entries %u\n"
        % (
            data["ftable_created"],
            data["ftable_added"],
            data["ftable_deleted"],
            data["ftable_changed"],
            data["ftable_processed"],
            data["ftable_oflow_entries"],
        )
    )
    hold = data.get("ftable_hold_stat") or []
    assert isinstance(hold, list)
    w(
        "(Created Flows/CPU: %s)(oflows %u)\n\n"
        % (" ".join(str(h) for h in hold), data["ftable_hold_oflows"])
    )
    w(LEGEND)
    if match is not None and match.active():
        w(match.header())
    w(HEADER)
    active = set(view.active_indices())
    nexts = view.next_indices()
    chained = {i for i, n in enumerate(nexts) if n != L.INVALID_INDEX}
    heads = _chain_heads(nexts)
    seen = bytearray(len(nexts))  # entries already listed after some chain head
    count = 0
    buf: list[str] = []
    for i in sorted(active | chained):
        block = ""
        is_active = False
        if i in active:
            e = view.get(i)
            if e is not None:
                if e.flags & L.FLAG_EVICTED and not show_evicted:
                    continue
                if match is not None and not match.matches(e):
                    continue
                block = format_flow(e)
                is_active = True
                count += 1
        chain = ""
        if i in chained:
            if heads[i]:
                chain = _oflow_chain(i, is_active, nexts, seen, len(nexts))
            else:
                chain = _oflow_chain(i, is_active, nexts, None, CHAIN_SHOWN)
        if is_active or chain:
            buf.append(block + chain + "\n\n")
        if len(buf) >= 4096:
            w("".join(buf))
            buf.clear()
    w("".join(buf))
    return count


# -- bridge ------------------------------------------------------------------------------
def ether_ntoa(mac: bytes) -> str:
    """glibc ``ether_ntoa``: lower-case hex without leading zeros."""
    return ":".join("%x" % b for b in mac)


BRIDGE_LEGEND = (
    "Flags: L=Label Valid, Df=DHCP flood, Mm=Mac Moved, L2c=L2 Evpn Control Word, "
    "N=New Entry, Ec=EvpnControlProcessing\n"
)
_BE_BITS = (
    (L.BE_LABEL_VALID, "L"),
    (L.BE_FLOOD_DHCP, "Df"),
    (L.BE_MAC_MOVED, "Mm"),
    (L.BE_L2_CONTROL_DATA, "L2c"),
    (L.BE_MAC_NEW, "N"),
    (L.BE_EVPN_CONTROL_PROCESSING, "Ec"),
)


def format_bridge_entry(e: BridgeEntry) -> str:
    """One row of ``rt --dump VRF --family bridge`` (``vr_bridge_print_route``)."""
    flags = "".join(c for bit, c in _BE_BITS if e.flags & bit)
    idx = "%-9d" % e.index
    mac = ether_ntoa(e.mac)
    row = idx + " " * max(0, 12 - len(idx)) + mac + " " * max(0, 20 - len(mac))
    row += " %9s" % flags + " " * 11
    row += " %9d" % e.label if e.flags & L.BE_LABEL_VALID else " %9c" % "-"
    row += " " * 6 + "%7d" % e.nh_id + " " * 4 + "%12d\n" % e.packets
    return row

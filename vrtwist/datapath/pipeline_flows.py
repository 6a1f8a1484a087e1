"""The flow stage and mirroring (``dp-core/vr_flow.c``, ``vr_mirror.c``).

Lookup in the shared-memory flow table with the ingress next hop in the key, statistics
and TCP flags into shared memory on a hit, the action (RPF, VRF translate, mirror,
drop, NAT, TTL), and on a miss a HOLD entry with a three-packet queue whose first
packet is trapped to the agent; the agent's FLOW_SET replays what was held.
"""

from __future__ import annotations

import struct

from vrtwist.datapath import constants as C
from vrtwist.datapath import offload
from vrtwist.datapath import pipeline_defs as D
from vrtwist.datapath.pipeline_core import (
    ACTION_DROP,
    ACTION_FORWARD,
    ACTION_HOLD,
    ACTION_NAT,
    AF_INET,
    FE_ACTIVE,
    FE_EVICT_CANDIDATE,
    FE_MIRROR,
    FE_VRFT,
    FLOW_KEY4,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    U16,
    VHOST_TYPES,
    ZERO4,
    Packet,
    PipelineCore,
)
from vrtwist.datapath.tables import Interface, NextHop
from vrtwist.packet.checksum import checksum_update16
from vrtwist.shmem import layout as L
from vrtwist.shmem.flowtable import FlowTableFull, FlowVerdict

__all__ = ["FlowStage"]

_FLOW_KEY6 = struct.Struct("<BBH4sI32s")
_SEQ_ACK = struct.Struct("!II")
_ECMP_FLAGS = C.NH_FLAG_COMPOSITE_ECMP | C.NH_FLAG_COMPOSITE_LU_ECMP
_U32_LE = struct.Struct("<I")  # an outer source address as fe_src_info holds it
_PHYSICAL = C.VIF_TYPE_PHYSICAL
_NH_ENCAP = C.NH_ENCAP
_VIRTUAL = C.VIF_TYPE_VIRTUAL
_VIRTUAL_VLAN = C.VIF_TYPE_VIRTUAL_VLAN
#: fe_src_info's position in a FlowVerdict (an index is the cheapest read of one)
_SRC_INFO = FlowVerdict._fields.index("src_info")
#: ICMP/ICMPv6 types whose identifier makes the source port (echo, timestamp, mask)
_ICMP_ID_TYPES = frozenset((0, 8, 13, 14, 17, 18, 128, 129))


def _icmp_ports(buf: bytes | bytearray | memoryview, l4: int) -> bytes:
    """ICMP's key ports: the identifier of echo and the like as source, else the type."""
    itype = buf[l4]
    if itype in _ICMP_ID_TYPES:
        return bytes(buf[l4 + 4 : l4 + 6]) + b"\x00\x00"
    return b"\x00\x00" + bytes((itype, 0))


def _l4_ports(buf: bytes | bytearray | memoryview, l4: int, proto: int) -> bytes:
    """The key ports of an IPv4 first fragment (as ``_flow_key`` reads them)."""
    if proto in (6, 17, 132):
        return bytes(buf[l4 : l4 + 4]) if len(buf) - l4 >= 4 else ZERO4
    if proto == 1 and len(buf) - l4 >= 8:
        return _icmp_ports(buf, l4)
    return ZERO4


def _tunnelled(buf: bytes | bytearray | memoryview, l3: int) -> bool:
    """GRE, or UDP to an MPLS or VXLAN port: a fabric packet to decapsulate, not flowed."""
    proto = buf[l3 + 9]
    if proto == 47:
        return True
    if proto != 17:
        return False
    l4 = l3 + (buf[l3] & 0x0F) * 4
    return len(buf) - l4 >= 4 and U16.unpack_from(buf, l4 + 2)[0] in (6635, 51234, 4789)


class FlowStage(PipelineCore):
    """The flow stage and mirroring (``dp-core/vr_flow.c``, ``vr_mirror.c``)."""

    def _flow_key(self, pkt: Packet, lookup: bool = False) -> bytes | None:
        """The flow key (KS 5.5): 20 bytes for IPv4, 44 for IPv6; None: no flow.

        IPv4 fragments take their ports from the fragment table; with ``lookup`` (the
        flow stage) the first one fills it and a later one whose first has not been seen
        is held or dropped, which returns b"" (the packet is consumed).
        """
        buf = pkt.buf
        l3 = pkt.l3
        if pkt.type == D.VP_TYPE_IP:
            if len(buf) - l3 < 20:
                return None
            proto = buf[l3 + 9]
            l4 = l3 + (buf[l3] & 0x0F) * 4
            frag = ((buf[l3 + 6] & 0x3F) << 8) | buf[l3 + 7]  # MF or an offset
            icmp = 1
        else:
            if len(buf) - l3 < 40:
                return None
            proto = buf[l3 + 6]
            l4 = l3 + 40
            frag = 0
            icmp = 58
        ports = ZERO4
        if frag:
            found = self._fragment_ports(pkt, l4, proto, lookup)
            if found is None:
                return b""
            ports = found
        elif proto == 6 or proto == 17 or proto == 132:
            if len(buf) - l4 >= 4:
                ports = bytes(buf[l4 : l4 + 4])
        elif proto == icmp and len(buf) - l4 >= 8:
            ports = _icmp_ports(buf, l4)
        vif = pkt.vif
        nh_id = vif.nh_id
        if vif.type == C.VIF_TYPE_PHYSICAL and pkt.nh is not None:
            nh_id = pkt.nh.id
        if pkt.type == D.VP_TYPE_IP:
            return FLOW_KEY4.pack(AF_INET, proto, 0, ports, nh_id, bytes(buf[l3 + 12 : l3 + 20]))
        return _FLOW_KEY6.pack(C.AF_INET6, proto, 0, ports, nh_id, bytes(buf[l3 + 8 : l3 + 40]))

    def _flow_forward(self, pkt: Packet) -> bool:
        """``vr_flow_forward``: False when the flow consumed the packet (held, dropped)."""
        flags = pkt.flags
        if flags & (D.VP_FLAG_MULTICAST | D.VP_FLAG_FLOW_SET) or self.flows is None:
            return True
        vif = pkt.vif
        if pkt.vlan != D.VLAN_ID_INVALID and not vif.flags & C.VIF_FLAG_SERVICE_IF:
            return True
        if not (flags & D.VP_FLAG_FLOW_GET or vif.flags & C.VIF_FLAG_POLICY_ENABLED):
            return True
        tcp_at, key = self._flow_l4_key(pkt)
        if tcp_at < 0:
            return True
        if not key:
            return key is None  # b"": a fragment held or dropped
        pkt.flags |= D.VP_FLAG_FLOW_SET
        index = self.flows.lookup(key)
        if index < 0:
            return self._flow_miss(pkt, key)
        return self._flow_hit(pkt, index, tcp_at)

    def _flow_l4_key(self, pkt: Packet) -> tuple[int, bytes | None]:
        """``_flow_l4``, then ``_flow_key`` of the flow stage when there is a flow: one
        pass over the header of an unfragmented IPv4 packet from a vif other than the
        fabric (a VM's, the common case), the two calls for any other."""
        buf = pkt.buf
        l3 = pkt.l3
        vif = pkt.vif
        if (
            pkt.type != D.VP_TYPE_IP
            or vif.type == _PHYSICAL
            or len(buf) - l3 < 20
            or (buf[l3 + 6] & 0x3F) | buf[l3 + 7]  # MF or an offset
        ):
            tcp_at = self._flow_l4(pkt)
            return tcp_at, self._flow_key(pkt, True) if tcp_at >= 0 else None
        if buf[l3 + 16] & 0xF0 == 0xE0 or buf[l3 + 16 : l3 + 20] == b"\xff\xff\xff\xff":
            return -1, None
        proto = buf[l3 + 9]
        l4 = l3 + (buf[l3] & 0x0F) * 4
        ports = ZERO4
        if proto == 6 or proto == 17 or proto == 132:
            if len(buf) - l4 >= 4:
                ports = bytes(buf[l4 : l4 + 4])
        elif proto == 1 and len(buf) - l4 >= 8:
            ports = _icmp_ports(buf, l4)
        key = FLOW_KEY4.pack(AF_INET, proto, 0, ports, vif.nh_id, bytes(buf[l3 + 12 : l3 + 20]))
        return l4 if proto == 6 else 0, key

    def _fragment_ports(self, pkt: Packet, l4: int, proto: int, lookup: bool) -> bytes | None:
        """Key ports of an IPv4 fragment (``vr_inet_proto_flow`` with ``vr_fragment.c``).

        The first fragment's own ports, recorded in the fragment table for the rest;
        a later fragment's from there. Without ``lookup`` only the table is read. A later
        fragment whose first has not been seen waits in the assembler (None: consumed);
        one released from there that still finds nothing is dropped NO_FRAG_ENTRY.
        """
        buf = pkt.buf
        l3 = pkt.l3
        key = (pkt.dvrf, bytes(buf[l3 + 12 : l3 + 20]), (buf[l3 + 4] << 8) | buf[l3 + 5])
        offset = (((buf[l3 + 6] & 0x1F) << 8) | buf[l3 + 7]) * 8
        if not lookup:
            if offset:
                return self.frag_table.peek(key) or ZERO4
            return _l4_ports(buf, l4, proto)
        now = self.now()
        for held in self.frag_assembler.expire(now):
            self._drop(held, D.DROP_FRAGMENTS)
        size = ((buf[l3 + 2] << 8) | buf[l3 + 3]) - (l4 - l3)
        if not offset:  # the first fragment
            ports = _l4_ports(buf, l4, proto)
            self.frag_table.add(key, ports, size, now)
            if key in self.frag_assembler:
                self.frag_release.append(key)  # after this one has gone on
            return ports
        entry = self.frag_table.get(key, now)
        if entry is not None:
            self.frag_table.account(key, entry, offset + size, not buf[l3 + 6] & 0x20, size)
            return entry.ports
        if pkt.flags & D.VP_FLAG_FRAG_RELEASED:
            self._drop(pkt, D.DROP_NO_FRAG_ENTRY)
            return None
        pkt.buf = bytes(buf)  # the caller may reuse its buffer
        refused = self.frag_assembler.hold(key, pkt, now)
        if refused:
            self._drop(pkt, D.DROP_FRAGMENTS if refused == "fragments" else D.DROP_FRAGMENT_QUEUE_FAIL)
        return None

    def release_fragments(self) -> None:
        """Fragments whose first fragment has now been seen go through the flow stage again."""
        keys = self.frag_release
        while keys:
            for pkt in self.frag_assembler.release(keys.pop(0)):
                pkt.flags = (pkt.flags & ~D.VP_FLAG_FLOW_SET) | D.VP_FLAG_FRAG_RELEASED
                if self._flow_forward(pkt):
                    self._reinject(pkt)

    def _flow_l4(self, pkt: Packet) -> int:
        """Whether the packet gets a flow: -1 if not, else its TCP header's offset (0: none).

        No flow for short headers, IPv4 multicast or broadcast, IPv6 multicast, and
        tunnel packets on the fabric not yet decapsulated.
        """
        buf = pkt.buf
        l3 = pkt.l3
        if pkt.type == D.VP_TYPE_IP:
            if len(buf) - l3 < 20:
                return -1
            if buf[l3 + 16] & 0xF0 == 0xE0 or buf[l3 + 16 : l3 + 20] == b"\xff\xff\xff\xff":
                return -1
            if pkt.vif.type == C.VIF_TYPE_PHYSICAL and not pkt.outer_src and _tunnelled(buf, l3):
                return -1
            if buf[l3 + 9] != 6 or (buf[l3 + 6] & 0x1F) | buf[l3 + 7]:
                return 0  # not TCP, or a fragment without the TCP header
            result: int = l3 + (buf[l3] & 0x0F) * 4
            return result
        if pkt.type == D.VP_TYPE_IP6:
            if len(buf) - l3 < 40 or buf[l3 + 24] == 0xFF:  # multicast destination
                return -1
            return l3 + 40 if buf[l3 + 6] == 6 else 0
        return -1

    def _flow_hit(self, pkt: Packet, index: int, tcp_at: int) -> bool:
        """``vr_flow_lookup`` found the flow: statistics, TCP state, hold or action."""
        flows = self.flows
        assert flows is not None
        v: FlowVerdict = flows.verdict(index)
        if v.flags & FE_EVICT_CANDIDATE:
            self._drop(pkt, D.DROP_FLOW_EVICT)
            return False
        vif = pkt.vif  # a VM's packet from the vif on record costs these two tests only
        if vif.idx != v[_SRC_INFO] or vif.type == _PHYSICAL:
            self._record_source(pkt, index, v[_SRC_INFO])
        buf = pkt.buf
        pkt.flow_index = index
        if v.ecmp_nh_index >= 0:
            pkt.ecmp_nh_index = v.ecmp_nh_index
        pkt.udp_src_port = v.udp_src_port
        flows.add_stats(index, len(buf) - pkt.off, 1)
        self.flow_last_used[index] = self.now()
        dead = False
        if tcp_at and len(buf) - tcp_at >= 20:
            dead = self._tcp_digest(pkt, index, v.rflow, tcp_at)
        if v.action == ACTION_HOLD:
            return self._enqueue(pkt, index)
        forward = self._flow_action(pkt, v)
        if dead:
            flows.mark_evict(index)  # the closed connection's pair is evicted
        return forward

    def _record_source(self, pkt: Packet, index: int, recorded: int) -> None:
        """``vr_flow_lookup`` keeps ``fe_src_info`` up to date on every packet: the outer
        source address on the fabric, the vif of a VM; other vifs leave it. The reverse
        flow's ECMP choice reads it. Written only when it changed."""
        src = _source_of(pkt)
        if src is not None and src != recorded:
            flows = self.flows
            assert flows is not None
            flows.set_src_info(index, src)

    def _tcp_digest(self, pkt: Packet, index: int, rflow: int, l4: int) -> bool:
        """``vr_flow_tcp_digest``: connection state of this flow and its reverse.

        Returns True when both directions are closed (DEAD): the flow is evicted.
        """
        flows = self.flows
        assert flows is not None
        buf = pkt.buf
        seq, ack = _SEQ_ACK.unpack_from(buf, l4 + 4)
        tflags = buf[l4 + 13]
        fe, fe_seq = flows.tcp_state(index)
        reverse = rflow >= 0 and rflow != index
        rfe, rfe_seq = flows.tcp_state(rflow) if reverse else (0, 0)
        old_rfe = rfe
        if tflags & 0x04 and self.datapath.ops.get("vo_uncond_close_flow_on_tcp_rst"):
            fe |= TCP_RST | L.TCP_DEAD
            rfe |= TCP_RST | L.TCP_DEAD
        if tflags & 0x02:  # SYN, or SYN-ACK
            fe_seq = seq
            fe |= TCP_SYN
            rfe |= L.TCP_SYN_R
            if tflags & 0x10 and reverse and ack == (rfe_seq + 1) & 0xFFFFFFFF:
                rfe |= L.TCP_ESTABLISHED
                fe |= L.TCP_ESTABLISHED_R
        elif tflags & 0x01:  # FIN: its sequence is the last byte sent
            hlen = (buf[l4 + 12] >> 4) * 4
            fe_seq = (seq + max(0, len(buf) - l4 - hlen)) & 0xFFFFFFFF
            fe |= TCP_FIN
            rfe |= L.TCP_FIN_R
        if tflags & 0x10 and not tflags & 0x02:
            if fe & L.TCP_FIN_R and reverse and ack == (rfe_seq + 1) & 0xFFFFFFFF:
                rfe |= L.TCP_HALF_CLOSE
                if fe & L.TCP_HALF_CLOSE:
                    fe |= L.TCP_DEAD
                    rfe |= L.TCP_DEAD
            elif fe & L.TCP_SYN_R and not fe & L.TCP_ESTABLISHED_R:
                fe |= L.TCP_ESTABLISHED_R
                rfe |= L.TCP_ESTABLISHED
        flows.set_tcp_state(index, fe, fe_seq)
        if reverse and rfe != old_rfe:
            flows.set_tcp_state(rflow, rfe, rfe_seq)
        return bool(fe & L.TCP_DEAD) and (not reverse or bool(rfe & L.TCP_DEAD))

    def _flow_action(self, pkt: Packet, v: FlowVerdict) -> bool:
        """``vr_flow_action``: RPF, VRF translate, mirror, then the action."""
        src_nh = self.tables.nexthops.get(v.src_nh_index)
        # a VM's own next hop passes RPF without ``_rpf``'s call; anything else takes it
        if (src_nh is None or src_nh.type != _NH_ENCAP or src_nh.oif is not pkt.vif) and not (
            self._rpf(pkt, v)
        ):
            return False
        pkt.dvrf = v.vrf
        flags = v.flags
        if flags & FE_VRFT:
            pkt.dvrf = v.dvrf
            pkt.to_me = True
        if flags & FE_MIRROR:
            if v.mirror_id < D.MAX_MIRROR:
                self._mirror(pkt, v.mirror_id)
            if v.sec_mirror_id < D.MAX_MIRROR:
                self._mirror(pkt, v.sec_mirror_id)
        action = v.action
        if action == ACTION_DROP:
            self._drop(pkt, D.DROP_FLOW_ACTION_DROP)
            return False
        if action == ACTION_NAT and pkt.type != D.VP_TYPE_IP:
            self._drop(pkt, D.DROP_FLOW_ACTION_INVALID)  # NAT66 is not in this datapath
            return False
        if action == ACTION_NAT:
            if not self._nat(pkt, v):
                return False
        elif action != ACTION_FORWARD:
            self._drop(pkt, D.DROP_FLOW_ACTION_INVALID)
            return False
        if v.ttl and pkt.type == D.VP_TYPE_IP:
            b = pkt.writable()
            l3 = pkt.l3
            old = (b[l3 + 8] << 8) | b[l3 + 9]
            b[l3 + 8] = v.ttl
            csum = (b[l3 + 10] << 8) | b[l3 + 11]
            U16.pack_into(b, l3 + 10, checksum_update16(csum, old, (v.ttl << 8) | b[l3 + 9]))
        return True

    def _rpf(self, pkt: Packet, v: FlowVerdict) -> bool:
        """The flow's source next hop must exist and accept where the packet came from."""
        src_nh = self.tables.nexthops.get(v.src_nh_index)
        if src_nh is None:
            self._drop(pkt, D.DROP_INVALID_NH)
            return False
        if src_nh.type == C.NH_COMPOSITE and src_nh.flags & _ECMP_FLAGS:
            valid = self._validate_ecmp_src(pkt, src_nh, v)
        else:
            valid = self._validate_src(pkt, src_nh)
        if not valid:
            self._drop(pkt, D.DROP_INVALID_SOURCE)
        return valid

    def _validate_src(self, pkt: Packet, nh: NextHop) -> bool:
        if nh.type == C.NH_ENCAP:
            return nh.oif is pkt.vif
        if nh.type == C.NH_TUNNEL:
            return pkt.outer_src == struct.pack("<I", nh.tun_dip)
        if nh.type == C.NH_COMPOSITE:
            return any(c is not None and self._validate_src(pkt, c) for c, _ in nh.components)
        return True

    def _validate_ecmp_src(self, pkt: Packet, nh: NextHop, v: FlowVerdict) -> bool:
        """``nh_ecmp_validate_src``: any member may be the source; a different member than
        the reverse flow uses becomes the reverse flow's ECMP index (RPF over ECMP)."""
        for i, (member, _label) in enumerate(nh.components):
            if member is not None and self._validate_src(pkt, member):
                flows = self.flows
                if v.rflow >= 0 and flows is not None:
                    flows.set_ecmp_index(v.rflow, i)
                return True
        return False

    def _nat(self, pkt: Packet, v: FlowVerdict) -> bool:
        """``vr_inet_flow_nat``: addresses and ports from the reverse flow's key."""
        flows = self.flows
        if v.rflow < 0 or flows is None:
            self._drop(pkt, D.DROP_FLOW_NAT_NO_RFLOW)
            return False
        table = getattr(flows, "entry", None)
        if table is None:
            self._drop(pkt, D.DROP_FLOW_NAT_NO_RFLOW)
            return False
        r = table(v.rflow)
        if not r.flags & FE_ACTIVE:
            self._drop(pkt, D.DROP_FLOW_NAT_NO_RFLOW)
            return False
        # a GSO super-frame keeps its partial checksum (the pseudo header's sum, not
        # inverted): computed again below, the ports left to whoever finishes it
        partial = not self._settle(pkt)
        b = pkt.writable()
        l3 = pkt.l3
        l4 = l3 + (b[l3] & 0x0F) * 4
        proto = b[l3 + 9]
        rsip = bytes(int(x) for x in r.sip.split("."))
        rdip = bytes(int(x) for x in r.dip.split("."))
        changes: list[tuple[int, bytes]] = []
        if v.flags & 0x0002:  # SNAT: source := reverse destination
            changes.append((l3 + 12, rdip))
        if v.flags & 0x0008:  # DNAT: destination := reverse source
            changes.append((l3 + 16, rsip))
        if proto in (6, 17):
            if v.flags & 0x0004:  # SPAT
                changes.append((l4, r.dport.to_bytes(2, "big")))
            if v.flags & 0x0010:  # DPAT
                changes.append((l4 + 2, r.sport.to_bytes(2, "big")))
        l4_csum = l4 + (16 if proto == 6 else 6)
        has_l4_csum = proto == 6 or (proto == 17 and b[l4_csum : l4_csum + 2] != b"\x00\x00")
        _rewrite16(b, l3, l4, l4_csum if has_l4_csum and not partial else -1, changes)
        if partial:
            length = U16.unpack_from(b, l3 + 2)[0] - (l4 - l3)
            pseudo = bytes(b[l3 + 12 : l3 + 20]) + bytes((0, proto)) + U16.pack(length)
            U16.pack_into(b, l4_csum, offload.checksum(pseudo))
        return True

    def _flow_miss(self, pkt: Packet, key: bytes) -> bool:
        nh = pkt.nh
        if nh is not None and nh.flags & (C.NH_FLAG_RELAXED_POLICY | C.NH_FLAG_FLOW_LOOKUP):
            return True
        buf = pkt.buf
        if pkt.type == D.VP_TYPE_IP and ((buf[pkt.l3 + 6] & 0x1F) << 8) | buf[pkt.l3 + 7]:
            self._drop(pkt, D.DROP_FLOW_UNUSABLE)
            return False
        vif = pkt.vif
        if vif.flags & C.VIF_FLAG_DROP_NEW_FLOWS:
            self._drop(pkt, D.DROP_NEW_FLOWS)
            return False
        flows = self.flows
        assert flows is not None
        vtype = vif.type
        # another vif's packet leaves fe_src_info 0, as made
        src_info = vif.idx if vtype == _VIRTUAL or vtype == _VIRTUAL_VLAN else _source_of(pkt) or 0
        nbytes = len(buf) - pkt.off
        # the packet is counted as the entry is made, but for a super-frame: its trap
        # reads the counters back, and carries them as they were before it
        whole = pkt.gso is None
        try:
            index, gen = flows.hold_on_miss(
                key, pkt.dvrf, src_info, nbytes if whole else 0, 1 if whole else 0
            )
        except FlowTableFull:
            self._drop(pkt, D.DROP_FLOW_TABLE_FULL)
            return False
        pkt.flow_index = index
        if whole and index not in self.held:
            held = self._trap_new(pkt, index, gen)  # the trap carries zero counters
        else:  # a queue there already traps nothing: the counters are read by nobody
            held = self._enqueue(pkt, index)
            if not whole:
                flows.add_stats(index, nbytes, 1)
        self.flow_last_used[index] = self.now()
        return held

    def _enqueue(self, pkt: Packet, index: int) -> bool:
        """``vr_enqueue_flow``: 3 packets held; the first one's clone trapped to the agent."""
        queue = self.held.get(index)
        if queue is None:
            queue = self.held[index] = []
        if len(queue) >= D.FLOW_QUEUE_ENTRIES:
            self._drop(pkt, D.DROP_FLOW_QUEUE_LIMIT_EXCEEDED)
            return False
        pkt.buf = bytes(pkt.buf)  # the caller may reuse its buffer
        queue.append(pkt)
        if len(queue) == 1:
            flows = self.flows
            assert flows is not None
            new = flows.take_new_flow(index)
            v = flows.verdict(index)
            nbytes, npackets = flows.stats(index)
            oflow = ((nbytes >> 32) & 0xFFFF) | ((npackets >> 32) & 0xFF) << 16
            code = D.TRAP_FLOW_MISS if new else D.TRAP_FLOW_ACTION_HOLD
            nh_id = pkt.nh.id if pkt.nh is not None else pkt.vif.nh_id
            stats = (nbytes & 0xFFFFFFFF, npackets & 0xFFFFFFFF, oflow, v.gen_id)
            if pkt.gso is not None:  # a super-frame: the agent gets its first wire segment
                copy = pkt.clone()
                copy.dvrf = v.vrf
                self._trap(copy, code, param=index, param_1=nh_id, stats=stats)
                return False
            self._trap_held(pkt, v.vrf, code, index, nh_id, stats)
        return False

    def _trap_held(self, pkt: Packet, vrf: int, code: int, index: int, nh_id: int,
                   stats: tuple[int, int, int, int]) -> None:
        """The trap is a copy of the held packet in the entry's VRF; the held packet is
        immutable bytes now, so its bytes are the copy (no Packet clone per miss)."""
        buf = pkt.buf
        vif = pkt.vif
        # a decapsulated packet is trapped from the start of its frame, outer headers
        # included (the agent reads the label or VNI from them)
        whole = pkt.outer_src and vif.type == C.VIF_TYPE_PHYSICAL
        frame = buf if whole or not pkt.start else buf[pkt.start :]
        if not self.trapper.trap(vif.idx, vrf, code, index, nh_id, stats, frame):
            self._drop(pkt, D.DROP_TRAP_NO_IF)

    def _trap_new(self, pkt: Packet, index: int, gen: int) -> bool:
        """``_enqueue`` of the first packet of an entry just created: what the trap says
        of the entry is known (in the packet's VRF, generation ``gen``, no counters yet),
        so it is not read back (``_trap_held`` inline)."""
        flows = self.flows
        assert flows is not None
        buf = pkt.buf
        if type(buf) is not bytes:
            buf = pkt.buf = bytes(buf)  # the caller may reuse its buffer
        self.held[index] = [pkt]
        code = D.TRAP_FLOW_MISS if flows.take_new_flow(index) else D.TRAP_FLOW_ACTION_HOLD
        vif = pkt.vif
        nh = pkt.nh
        nh_id = nh.id if nh is not None else vif.nh_id
        start = pkt.start
        if start and not (pkt.outer_src and vif.type == _PHYSICAL):
            buf = buf[start:]
        if not self.trapper.trap(vif.idx, pkt.dvrf, code, index, nh_id, (0, 0, 0, gen), buf):
            self._drop(pkt, D.DROP_TRAP_NO_IF)
        return False

    def flow_set(self, index: int) -> None:
        """The agent set flow ``index``: replay or drop what it held (``vr_flow_work``)."""
        queue = self.held.get(index)
        if not queue or self.flows is None:
            return
        v = self.flows.verdict(index)
        if v.flags & FE_ACTIVE and v.action == ACTION_HOLD:
            return
        del self.held[index]
        for pkt in queue:
            if not v.flags & FE_ACTIVE:
                self._drop(pkt, D.DROP_FLOW_ACTION_DROP)
                continue
            if not self._flow_action(pkt, v):
                continue
            if pkt.nh is None and pkt.vif.type == _VIRTUAL and not pkt.to_me:
                pkt.off = pkt.start  # ``_reinject`` of a VM's packet, without its call
                self._bridge_input(pkt)
            else:
                self._reinject(pkt)

    def _reinject(self, pkt: Packet) -> None:
        """``vr_reinject_packet``: continue where the flow stage stopped it."""
        nh = pkt.nh
        if nh is not None and nh.type != C.NH_L2_RCV:
            return self._nh_output(pkt, nh)
        vtype = pkt.vif.type
        if vtype in VHOST_TYPES or (vtype == C.VIF_TYPE_PHYSICAL and pkt.label < 0):
            pkt.off = pkt.l3
            return self._ip_input(pkt)
        if pkt.to_me and nh is not None:
            return self._l3_input(pkt)
        pkt.off = pkt.start
        self._bridge_input(pkt)

    def _port_mirror(self, pkt: Packet, vif: Interface) -> None:
        self._mirror(pkt, vif.mir_id)

    def _mirror(self, pkt: Packet, mirror_id: int) -> None:
        """``vr_mirror``: a clone to the mirror's next hop, before the original continues."""
        if pkt.flags & D.VP_FLAG_FROM_DP:
            return
        found = self.tables.mirrors.get(mirror_id)
        if found is None:
            return
        nh, fields = found
        if not nh.flags & C.NH_FLAG_VALID:
            return
        copy = pkt.clone()
        copy.flags = D.VP_FLAG_FROM_DP | D.VP_FLAG_FLOW_SET
        if pkt.vif.type != C.VIF_TYPE_PHYSICAL:
            copy.off = copy.start
        if fields.get("mirr_flags", 0) & D.MIRROR_FLAG_DYNAMIC:
            meta = b"\xff\x00"
            copy.buf = bytes(copy.buf[: copy.off]) + meta + bytes(copy.buf[copy.off :])
            copy.l3 += len(meta)
        else:
            copy.label = fields.get("mirr_vni", 0)
        if nh.vrf >= 0:
            copy.dvrf = nh.vrf
        copy.flow_index = -1
        copy.outer_src = b""
        self._nh_output(copy, nh)


def _rewrite16(b: bytearray, l3: int, l4: int, l4_csum: int,
               changes: list[tuple[int, bytes]]) -> None:  # fmt: skip
    """Write NAT's new addresses and ports, the IPv4 checksum and (``l4_csum`` >= 0)
    the transport checksum updated incrementally (RFC 1624)."""
    for at, new in changes:
        for i in (0, 2)[: len(new) // 2]:
            old = U16.unpack_from(b, at + i)[0]
            nw = U16.unpack_from(new, i)[0]
            if at < l4:
                c = U16.unpack_from(b, l3 + 10)[0]
                U16.pack_into(b, l3 + 10, checksum_update16(c, old, nw))
            if l4_csum >= 0 and len(b) >= l4_csum + 2:
                c = U16.unpack_from(b, l4_csum)[0]
                U16.pack_into(b, l4_csum, checksum_update16(c, old, nw))
            U16.pack_into(b, at + i, nw)


def _source_of(pkt: Packet) -> int | None:
    """What ``vr_flow_lookup`` writes into ``fe_src_info`` for ``pkt``: the vif of a VM,
    the outer source address on the fabric; None for other vifs, which leave it."""
    vif = pkt.vif
    vtype = vif.type
    if vtype == _VIRTUAL or vtype == _VIRTUAL_VLAN:
        return vif.idx
    if vtype == _PHYSICAL:
        outer = pkt.outer_src
        return _U32_LE.unpack(outer)[0] if outer else 0
    return None

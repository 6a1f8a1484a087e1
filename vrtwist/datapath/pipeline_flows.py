"""The flow stage and mirroring (``dp-core/vr_flow.c``, ``vr_mirror.c``).

Lookup in the shared-memory flow table with the ingress next hop in the key, statistics
and TCP flags into shared memory on a hit, the action (RPF, VRF translate, mirror,
drop, NAT, TTL), and on a miss a HOLD entry with a three-packet queue whose first
packet is trapped to the agent; the agent's FLOW_SET replays what was held.
"""

from __future__ import annotations

import struct

from vrtwist.datapath import constants as C
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
#: ICMP/ICMPv6 types whose identifier makes the source port (echo, timestamp, mask)
_ICMP_ID_TYPES = frozenset((0, 8, 13, 14, 17, 18, 128, 129))


class FlowStage(PipelineCore):
    """The flow stage and mirroring (``dp-core/vr_flow.c``, ``vr_mirror.c``)."""

    def _flow_key(self, pkt: Packet) -> bytes | None:
        """The flow key (KS 5.5): 20 bytes for IPv4, 44 for IPv6; None: no flow."""
        buf = pkt.buf
        l3 = pkt.l3
        if pkt.type == D.VP_TYPE_IP:
            if len(buf) - l3 < 20:
                return None
            proto = buf[l3 + 9]
            l4 = l3 + (buf[l3] & 0x0F) * 4
            first = not ((buf[l3 + 6] & 0x1F) << 8) | buf[l3 + 7]
            icmp = 1
        else:
            if len(buf) - l3 < 40:
                return None
            proto = buf[l3 + 6]
            l4 = l3 + 40
            first = True
            icmp = 58
        ports = ZERO4
        if first:
            if proto == 6 or proto == 17 or proto == 132:
                if len(buf) - l4 >= 4:
                    ports = bytes(buf[l4 : l4 + 4])
            elif proto == icmp and len(buf) - l4 >= 8:
                itype = buf[l4]
                if itype in _ICMP_ID_TYPES:  # echo and the like: the id is the source port
                    ports = bytes(buf[l4 + 4 : l4 + 6]) + b"\x00\x00"
                else:
                    ports = b"\x00\x00" + bytes((itype, 0))
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
        buf = pkt.buf
        l3 = pkt.l3
        if pkt.type == D.VP_TYPE_IP:
            if len(buf) - l3 < 20:
                return True
            if buf[l3 + 16] & 0xF0 == 0xE0 or buf[l3 + 16 : l3 + 20] == b"\xff\xff\xff\xff":
                return True
            if vif.type == C.VIF_TYPE_PHYSICAL and not pkt.outer_src:
                proto = buf[l3 + 9]
                if proto == 47:
                    return True
                if proto == 17:
                    l4 = l3 + (buf[l3] & 0x0F) * 4
                    if len(buf) - l4 >= 4 and U16.unpack_from(buf, l4 + 2)[0] in (
                        6635,
                        51234,
                        4789,
                    ):
                        return True
            tcp_at = l3 + (buf[l3] & 0x0F) * 4 if buf[l3 + 9] == 6 else 0
        elif pkt.type == D.VP_TYPE_IP6:
            if len(buf) - l3 < 40 or buf[l3 + 24] == 0xFF:  # multicast destination
                return True
            tcp_at = l3 + 40 if buf[l3 + 6] == 6 else 0
        else:
            return True
        key = self._flow_key(pkt)
        if key is None:
            return True
        pkt.flags |= D.VP_FLAG_FLOW_SET
        flows = self.flows
        index = flows.lookup(key)
        if index < 0:
            return self._flow_miss(pkt, key)
        v: FlowVerdict = flows.verdict(index)
        if v.flags & FE_EVICT_CANDIDATE:
            self._drop(pkt, D.DROP_FLOW_EVICT)
            return False
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
        tables = self.tables
        src_nh = tables.nexthops.get(v.src_nh_index)
        if src_nh is None:
            self._drop(pkt, D.DROP_INVALID_NH)
            return False
        if not self._validate_src(pkt, src_nh):
            self._drop(pkt, D.DROP_INVALID_SOURCE)
            return False
        pkt.dvrf = v.vrf
        if v.flags & FE_VRFT:
            pkt.dvrf = v.dvrf
            pkt.to_me = True
        if v.flags & FE_MIRROR:
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

    def _validate_src(self, pkt: Packet, nh: NextHop) -> bool:
        if nh.type == C.NH_ENCAP:
            return nh.oif is pkt.vif
        if nh.type == C.NH_TUNNEL:
            return pkt.outer_src == struct.pack("<I", nh.tun_dip)
        if nh.type == C.NH_COMPOSITE:
            return any(c is not None and self._validate_src(pkt, c) for c, _ in nh.components)
        return True

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
        ports: list[tuple[int, bytes]] = []
        if proto in (6, 17):
            if v.flags & 0x0004:  # SPAT
                ports.append((l4, r.dport.to_bytes(2, "big")))
            if v.flags & 0x0010:  # DPAT
                ports.append((l4 + 2, r.sport.to_bytes(2, "big")))
        l4_csum = l4 + (16 if proto == 6 else 6)
        has_l4_csum = proto == 6 or (proto == 17 and b[l4_csum : l4_csum + 2] != b"\x00\x00")
        for at, new in changes + ports:
            for i in (0, 2)[: len(new) // 2]:
                old = U16.unpack_from(b, at + i)[0]
                nw = U16.unpack_from(new, i)[0]
                if at < l4:
                    c = U16.unpack_from(b, l3 + 10)[0]
                    U16.pack_into(b, l3 + 10, checksum_update16(c, old, nw))
                if has_l4_csum and len(b) >= l4_csum + 2:
                    c = U16.unpack_from(b, l4_csum)[0]
                    U16.pack_into(b, l4_csum, checksum_update16(c, old, nw))
                U16.pack_into(b, at + i, nw)
        return True

    def _flow_miss(self, pkt: Packet, key: bytes) -> bool:
        nh = pkt.nh
        if nh is not None and nh.flags & (C.NH_FLAG_RELAXED_POLICY | C.NH_FLAG_FLOW_LOOKUP):
            return True
        buf = pkt.buf
        if pkt.type == D.VP_TYPE_IP and ((buf[pkt.l3 + 6] & 0x1F) << 8) | buf[pkt.l3 + 7]:
            self._drop(pkt, D.DROP_FLOW_UNUSABLE)
            return False
        if pkt.vif.flags & C.VIF_FLAG_DROP_NEW_FLOWS:
            self._drop(pkt, D.DROP_NEW_FLOWS)
            return False
        assert self.flows is not None
        src_info = pkt.vif.idx if not pkt.outer_src else struct.unpack("<I", pkt.outer_src)[0]
        try:
            index, _gen = self.flows.hold_on_miss(key, pkt.dvrf, src_info)
        except FlowTableFull:
            self._drop(pkt, D.DROP_FLOW_TABLE_FULL)
            return False
        pkt.flow_index = index
        nbytes = len(buf) - pkt.off
        held = self._enqueue(pkt, index)  # the trap carries the new entry's zero counters
        self.flows.add_stats(index, nbytes, 1)
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
            # the trap is a copy of the held packet in the entry's VRF; the held packet is
            # immutable bytes now, so its bytes are the copy (no Packet clone per miss)
            buf = pkt.buf
            vif = pkt.vif
            # a decapsulated packet is trapped from the start of its frame, outer headers
            # included (the agent reads the label or VNI from them)
            whole = pkt.outer_src and vif.type == C.VIF_TYPE_PHYSICAL
            frame = buf if whole or not pkt.start else buf[pkt.start :]
            if not self.trapper.trap(
                vif.idx,
                v.vrf,
                D.TRAP_FLOW_MISS if new else D.TRAP_FLOW_ACTION_HOLD,
                index,
                pkt.nh.id if pkt.nh is not None else vif.nh_id,
                (nbytes & 0xFFFFFFFF, npackets & 0xFFFFFFFF, oflow, v.gen_id),
                frame,
            ):
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

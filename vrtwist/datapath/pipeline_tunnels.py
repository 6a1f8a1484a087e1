"""Tunnel next hops and fabric decapsulation (``vr_nexthop.c``, ``vr_mpls.c``, ``vr_vxlan.c``).

MPLSoGRE, MPLSoUDP and VXLAN encapsulation byte for byte as the DPDK vRouter emits it
(outer IP id counter, UDP source-port jhash, MTU/DF rules and inner fragmentation), and
the receive side: RCV next hop, GRE/UDP port demultiplexing, ILM and VNI tables.
"""

from __future__ import annotations

import struct

from vrtwist.datapath import constants as C
from vrtwist.datapath import offload
from vrtwist.datapath import pipeline_defs as D
from vrtwist.datapath.pipeline_core import (
    AF_INET,
    GRE_MPLS,
    TUNNEL_KINDS,
    U16,
    U32,
    UDP_HDR,
    VXLAN_HDR,
    VXLAN_I,
    W2,
    ZERO4,
    Frame,
    Packet,
    PipelineCore,
    ip4_header,
)
from vrtwist.datapath.tables import Interface, NextHop
from vrtwist.packet.checksum import checksum
from vrtwist.sandesh.addr import int_to_port
from vrtwist.shmem.jhash import jhash, jhash_words5

__all__ = ["TunnelStage"]


def _outer_ip4(buf: Frame, l4: int) -> bool:
    """The UDP header at ``l4`` follows an untagged IPv4 header without options."""
    return l4 == 34 and buf[12:14] == b"\x08\x00" and buf[14] == 0x45 and buf[23] == 17


class TunnelStage(PipelineCore):
    """Tunnel next hops and fabric decapsulation (``vr_nexthop.c``, ``vr_mpls.c``, ``vr_vxlan.c``)."""

    def _next_ip_id(self) -> int:
        """``vr_generate_unique_ip_id``: 1, 2, ... 65535, 1, ... (0 skipped)."""
        ident = (self._ip_id + 1) & 0xFFFF
        if ident == 0:
            ident = 1
        self._ip_id = ident
        return ident

    def udp_src_port(self, pkt: Packet) -> int:
        """``dpdk_get_udp_src_port``: a jhash of the inner 5-tuple mapped to 49152-65535."""
        buf = pkt.buf
        seed = self.hash_seed
        if pkt.type == D.VP_TYPE_IP:
            l3 = pkt.l3
            sip, dip = struct.unpack_from("<II", buf, l3 + 12)
            sport = dport = 0
            proto = buf[l3 + 9]
            l4 = l3 + (buf[l3] & 0x0F) * 4
            frag = U16.unpack_from(buf, l3 + 6)[0] & 0x1FFF
            if proto in (6, 17) and len(buf) - l4 >= 4:
                # a later fragment's ports come from the fragment table
                ports = self._flow_key_ports(pkt, l4, proto) if frag else buf
                sport, dport = struct.unpack_from("<HH", ports, 0 if frag else l4)
            key = (sip, dip, pkt.dvrf, sport, dport)
            port = self._port_cache.get(key)
            if port is not None:
                return port
            # rte_jhash(key, 20, seed): the seed enters the first three words' state
            h = jhash_words5(
                (sip + seed) & 0xFFFFFFFF,
                (dip + seed) & 0xFFFFFFFF,
                (pkt.dvrf + seed) & 0xFFFFFFFF,
                sport,
                dport,
            )
            port = ((h * 16383) >> 32) + 49152
            cache = self._port_cache
            if len(cache) >= 65536:
                cache.clear()
            cache[key] = port
            return port
        # any other type: vr_hash of 14 bytes at the data pointer, then of (hash, vrf)
        h = jhash(bytes(buf[pkt.off : pkt.off + 14]), seed)
        h = jhash(W2.pack(h, pkt.dvrf & 0xFFFFFFFF), seed)
        return ((h * 16383) >> 32) + 49152

    def _nh_tunnel_offload(self, pkt: Packet, nh: NextHop) -> None:
        """A tunnel next hop: a frame with offload state is encapsulated segment by
        segment (each then fits the fabric MTU as the sender's MSS meant it to); into
        a UDP tunnel through a port that takes offload, as UDP GSO super-frames."""
        if pkt.gso is None:
            return self._nh_tunnel(pkt, nh)
        if self._uso_fits(pkt, nh):
            return self._tunnel_uso(pkt, nh)
        for seg in self._segments(pkt):
            self._nh_tunnel(seg, nh)
        return None

    def _uso_fits(self, pkt: Packet, nh: NextHop) -> bool:
        """A TCP super-frame into an MPLSoUDP or VXLAN tunnel whose fabric port takes
        offload, with nothing :meth:`_nh_tunnel` would refuse or treat specially."""
        gso = pkt.gso
        oif = nh.oif
        out = self.offload_output
        return (
            gso is not None
            and gso[1] & ~offload.GSO_ECN in (offload.GSO_TCPV4, offload.GSO_TCPV6)
            and oif is not None
            and out is not None
            and bool(nh.flags & (C.NH_FLAG_TUNNEL_UDP_MPLS | C.NH_FLAG_TUNNEL_VXLAN))
            and not nh.flags & C.NH_FLAG_L3_VXLAN
            and nh.family == AF_INET
            and (pkt.label >= 0 or bool(nh.flags & C.NH_FLAG_TUNNEL_VXLAN))
            and pkt.outer_src != nh.tun_dip.to_bytes(4, "little")
            and not oif.flags & C.VIF_FLAG_MIRROR_TX
            and out.accepts_offload(oif.idx)
        )

    def _tunnel_uso(self, pkt: Packet, nh: NextHop) -> None:
        """The segments of a TCP super-frame, each encapsulated as :meth:`_nh_tunnel`
        would, leave as few UDP GSO super-frames (``VIRTIO_NET_HDR_GSO_UDP_L4``): the
        port writes each once and the kernel (or the device) cuts it into the very
        datagrams, giving each its outer IP ID, lengths and UDP checksum. Built in one
        pass: each segment's headers fixed and checksummed, the payload joined once.
        The receiving datapath may merge them back (:meth:`_tunnel_gro`)."""
        oif = nh.oif
        gso = pkt.gso
        assert oif is not None and gso is not None
        buf = pkt.buf
        try:
            segs = offload.tcp_segment_parts(buf, pkt.off, pkt.l3, len(buf) - gso[4], gso[3])
        except offload.OffloadError:
            pkt.gso = None
            return self._drop(pkt, D.DROP_INVALID_PACKET)
        overhead, _payload = self._tunnel_payload(pkt, nh, oif)
        size = len(segs[0][0]) + len(segs[0][1])  # the first (largest) segment
        mtu = self._mtu(oif)
        if len(segs) < 2 or (mtu and size + overhead > mtu):  # DF traps, fragments
            for seg in self._segments(pkt):
                self._nh_tunnel(seg, nh)
            return None
        # datagrams per super-frame: its IP length, and the kernel's UDP_MAX_SEGMENTS;
        # as even as can be, so that none is left alone
        most = min(64, (0xFFFF - 28) // (overhead - 28 + size))
        per = -(-len(segs) // -(-len(segs) // most))
        for at in range(0, len(segs), per):
            self._uso_frame(pkt, nh, oif, segs[at : at + per], size)
        return None

    def _uso_frame(self, pkt: Packet, nh: NextHop, oif: Interface,
                   segs: list[tuple[bytes, offload.Payload]], size: int) -> None:  # fmt: skip
        """One UDP GSO super-frame: outer headers once, then per segment its tunnel
        header (the UDP header's tail: MPLS label or VXLAN header) and the segment."""
        mid, _proto, ident = self._tunnel_header(pkt, nh, size, len(segs))
        tail = mid[8:]
        parts: list[Frame] = [b""]
        for head, data in segs:
            parts += (tail, head, data)
        total = 8 + sum(len(p) for p in parts)
        sip = nh.tun_sip.to_bytes(4, "little")
        dip = nh.tun_dip.to_bytes(4, "little")
        partial = offload.checksum(sip + dip + U16.pack(17) + U16.pack(total))
        parts[0] = (
            nh.encap
            + ip4_header(20 + total, ident, 17, sip, dip)
            + mid[:4]
            + U16.pack(total)
            + U16.pack(partial)
        )
        frame = b"".join(parts)
        length = len(frame)
        hdr = len(nh.encap) + 28
        p = pkt.sibling(pkt.buf)
        p.gso = (offload.F_NEEDS_CSUM, offload.GSO_UDP_L4, length - hdr, len(tail) + size,
                 length - hdr + 8, 6)  # fmt: skip
        self._vif_tx(p, oif, frame)

    def _tunnel_gro(self, pkt: Packet) -> bool:
        """A UDP GSO super-frame from the fabric whose datagrams carry one in-order
        run of a TCP connection through one tunnel becomes one frame that carries a
        TCP super-frame (a software GRO, :func:`offload.merge_tcp_chunks`): it is then
        decapsulated once and leaves whole to a VM port that takes offload. False:
        not such a frame (the caller segments it)."""
        gso = pkt.gso
        if gso is None or gso[1] != offload.GSO_UDP_L4 or pkt.start or not gso[2]:
            return False
        buf = pkt.buf
        length = len(buf)
        l4 = length - gso[4]
        if length - gso[2] != l4 + 8 or gso[5] != 6 or not _outer_ip4(buf, l4):
            return False
        inner_at = self._tunnel_inner_at(buf, l4 + 8)
        if inner_at is None:
            return False
        merged = offload.merge_tcp_chunks(buf, l4 + 8, gso[3], inner_at)
        if merged is None:
            return False
        pkt.buf, pkt.gso = merged
        return True

    def _tunnel_inner_at(self, buf: Frame, at: int) -> int | None:
        """Where the inner IPv4 header starts in a tunnel datagram's payload at ``at``:
        after the MPLS label (its next hop says IP or Ethernet) or the VXLAN header."""
        if len(buf) < at + 8:
            return None
        dport = U16.unpack_from(buf, at - 6)[0]
        if dport in D.MPLS_OVER_UDP_PORTS:
            word = U32.unpack_from(buf, at)[0]
            label = word >> 12
            nh = self.tables.mpls.get(label)
            if not word & 0x100 or nh is None:  # a label stack is not merged
                return None
            if nh.family == AF_INET:
                return 4
            if nh.family != C.AF_BRIDGE:
                return None
            cw = nh.flags & C.NH_FLAG_L2_CONTROL_DATA or (
                nh.type == C.NH_COMPOSITE and label >= 1024
            )
            eth = 8 if cw else 4
        elif dport == D.VXLAN_PORT:
            eth = 8
        else:
            return None
        if buf[at + eth + 12 : at + eth + 14] != b"\x08\x00":
            return None
        return eth + 14

    def _nh_tunnel(self, pkt: Packet, nh: NextHop) -> None:
        oif = nh.oif
        flags = nh.flags
        if not flags & TUNNEL_KINDS or oif is None:
            return self._drop(pkt, D.DROP_INVALID_NH)
        if nh.family != AF_INET:
            return self._drop(pkt, D.DROP_INVALID_NH)
        if pkt.label < 0 and not flags & C.NH_FLAG_TUNNEL_UDP:
            # the vRouter re-runs vr_forward for MPLS tunnels (label lost after a hold);
            # held packets here keep their label, so a missing one is a bad route
            return self._drop(pkt, D.DROP_INVALID_LABEL)
        dip = nh.tun_dip.to_bytes(4, "little")
        if pkt.outer_src and pkt.outer_src == dip:
            return self._drop(pkt, D.DROP_PKT_LOOP)
        sip = nh.tun_sip.to_bytes(4, "little")
        overhead, payload = self._tunnel_payload(pkt, nh, oif)
        plen = len(payload)
        mtu = self._mtu(oif)
        fragment = False
        if mtu and plen + overhead > mtu:
            if self._df(pkt):
                return self._tunnel_df(pkt, overhead, plen, mtu)
            fragment = pkt.type == D.VP_TYPE_IP
        mid, proto, ident = self._tunnel_header(pkt, nh, plen)
        if fragment:
            return self._tunnel_fragments(pkt, nh, oif, sip, dip, proto, mid, payload, mtu)
        frame = (
            nh.encap
            + ip4_header(20 + len(mid) + plen, ident, proto, sip, dip)
            + mid
            + bytes(payload)
        )
        self._vif_tx(pkt, oif, frame)

    def _tunnel_payload(self, pkt: Packet, nh: NextHop, oif: Interface) -> tuple[int, Frame]:
        """The encapsulation's overhead and the bytes it carries."""
        flags = nh.flags
        if flags & C.NH_FLAG_TUNNEL_VXLAN:
            payload: Frame = self._data(pkt)
            if flags & C.NH_FLAG_L3_VXLAN and pkt.off != pkt.start:
                payload = nh.rw_dst_mac + oif.mac + bytes(pkt.buf[pkt.start + 12 :])
            return 36, payload
        overhead = 32 if flags & C.NH_FLAG_TUNNEL_UDP_MPLS else 28
        if flags & C.NH_FLAG_L2_CONTROL_DATA and pkt.off == pkt.start:
            overhead += 4
        return overhead, self._data(pkt)

    def _tunnel_df(self, pkt: Packet, overhead: int, plen: int, mtu: int) -> None:
        """Too big with DF set: trap HANDLE_DF with the room left (multicast: drop)."""
        if pkt.flags & D.VP_FLAG_MULTICAST:
            return self._drop(pkt, D.DROP_MCAST_DF_BIT)
        # the room left for the IP packet: the inner Ethernet header of an L3 VXLAN frame
        # (pushed by _tunnel_payload) counts like one the packet came with
        l2 = plen - (len(pkt.buf) - pkt.l3) if pkt.type == D.VP_TYPE_IP else (
            pkt.l3 - pkt.off if pkt.l3 > pkt.off else 0)
        param = mtu - (overhead + max(l2, 0))
        return self._trap(pkt, D.TRAP_HANDLE_DF, param=param, param_1=pkt.flow_index)

    def _tunnel_header(
        self, pkt: Packet, nh: NextHop, plen: int, count: int = 1
    ) -> tuple[bytes, int, int]:
        """What follows the outer IP header (GRE or UDP, then MPLS/VXLAN), its protocol
        and the outer IP id; ``count`` datagrams alike (UDP GSO) take that many IDs."""
        flags = nh.flags
        if flags & C.NH_FLAG_TUNNEL_GRE:
            self._vrf_count(pkt.dvrf, "gre_mpls_tunnels")
            if pkt.type == D.VP_TYPE_IP:
                ident = U16.unpack_from(pkt.buf, pkt.l3 + 4)[0]
            else:
                ident = self._next_ip_id()
            return GRE_MPLS + self._mpls_word(pkt, nh), 47, ident
        if flags & C.NH_FLAG_TUNNEL_VXLAN:
            name = "vxlan_tunnels"
            tail = VXLAN_HDR.pack(VXLAN_I, (pkt.label & 0xFFFFFF) << 8)
            dport, default_sport = D.VXLAN_PORT, 52000
        elif flags & C.NH_FLAG_TUNNEL_UDP_MPLS:
            name = "udp_mpls_tunnels"
            tail = self._mpls_word(pkt, nh)
            dport, default_sport = D.MPLS_OVER_UDP_DST_PORT, 51000
        else:
            # plain UDP (an analyzer's mirror next hop): both ports are the next hop's,
            # given as the vRouter's messages carry ports (network order in the integer)
            name = "udp_tunnels"
            tail = b""
            dport, default_sport = int_to_port(nh.tun_dport), int_to_port(nh.tun_sport)
        self.vrf_stats[(pkt.dvrf, name)] += count
        if tail:
            sport = pkt.udp_src_port or self.udp_src_port(pkt) or default_sport
        else:
            sport = default_sport or self.udp_src_port(pkt)
        mid = UDP_HDR.pack(sport, dport, 8 + len(tail) + plen, 0) + tail
        ident = self._next_ip_id()
        if count > 1:  # the kernel numbers the datagrams on from the first
            self._ip_id = (ident + count - 1) & 0xFFFF
        return mid, 17, ident

    def _mpls_word(self, pkt: Packet, nh: NextHop) -> bytes:
        ttl = pkt.ttl or 64
        word = U32.pack(((pkt.label & 0xFFFFF) << 12) | 0x100 | (ttl & 0xFF))
        if nh.flags & C.NH_FLAG_L2_CONTROL_DATA and pkt.off == pkt.start:
            word += ZERO4
        if nh.flags & C.NH_FLAG_TUNNEL_MPLS_O_MPLS:
            word = U32.pack(((nh.transport_label & 0xFFFFF) << 12) | (ttl & 0xFF)) + word
        return word

    def _df(self, pkt: Packet) -> bool:
        if pkt.type == D.VP_TYPE_IP6:
            return True
        if pkt.type != D.VP_TYPE_IP:
            return False
        return bool(pkt.buf[pkt.l3 + 6] & 0x40)

    def _mtu(self, vif: Interface) -> int:
        """``dpdk_if_get_mtu``: the physical port's MTU is the vif's less its L2 header."""
        if vif.type == C.VIF_TYPE_PHYSICAL and vif.mtu:
            return vif.mtu - (18 if self.vlan_tci is not None else 14)
        return vif.mtu

    def _tunnel_fragments(
        self,
        pkt: Packet,
        nh: NextHop,
        oif: Interface,
        sip: bytes,
        dip: bytes,
        proto: int,
        mid: bytes,
        payload: Frame,
        mtu: int,
    ) -> None:
        """``dpdk_fragment_packet``: fragment the inner IPv4 packet, copy outer headers."""
        data = bytes(payload)
        inner_at = pkt.l3 - pkt.off  # inner Ethernet kept in front of each fragment
        prefix_inner = data[:inner_at]
        ip = data[inner_at:]
        ihl = (ip[0] & 0x0F) * 4
        hdr = bytearray(ip[:ihl])
        body = ip[ihl : U16.unpack_from(ip, 2)[0]]
        outer_len = len(nh.encap) + 20 + len(mid) + len(prefix_inner)
        step = (mtu - outer_len - ihl) // 8 * 8
        if step <= 0:
            return self._drop(pkt, D.DROP_FRAGMENTS)
        base_off = U16.unpack_from(hdr, 6)[0]
        more = base_off & 0x2000
        base = base_off & 0x1FFF
        ident = U16.unpack_from(hdr, 4)[0]
        pos = 0
        while pos < len(body):
            chunk = body[pos : pos + step]
            last = pos + len(chunk) >= len(body)
            h = bytearray(hdr)
            U16.pack_into(h, 2, ihl + len(chunk))
            U16.pack_into(h, 6, (base + pos // 8) | (more if last else 0x2000))
            h[10:12] = b"\x00\x00"
            U16.pack_into(h, 10, checksum(h))
            inner = prefix_inner + bytes(h) + chunk
            head = bytearray(mid)
            if proto == 17:
                U16.pack_into(head, 4, len(mid) + len(inner))
            outer = ip4_header(20 + len(mid) + len(inner), ident, proto, sip, dip)
            self._vif_tx(pkt, oif, nh.encap + outer + bytes(head) + inner)
            pos += len(chunk)

    def _nh_rcv(self, pkt: Packet, nh: NextHop) -> None:
        self._vrf_count(pkt.dvrf, "receives")
        if pkt.type != D.VP_TYPE_IP:
            return self._drop(pkt, D.DROP_INVALID_PROTOCOL)
        self._ip_rcv(pkt, nh)

    def _ip_rcv(self, pkt: Packet, nh: NextHop | None) -> None:
        """``vr_ip_rcv``: tunnels are decapsulated, everything else goes to the host."""
        buf = pkt.buf
        l3 = pkt.l3
        l4 = l3 + (buf[l3] & 0x0F) * 4
        proto = buf[l3 + 9]
        frag = U16.unpack_from(buf, l3 + 6)[0] & 0x3FFF
        if not frag and proto == 47 and len(buf) - l4 >= 4:
            gflags, gproto = struct.unpack_from("!HH", buf, l4)
            if not gflags & ~0xA000 and gproto == 0x8847:
                hlen = 4 + 4 * bool(gflags & 0x8000) + 4 * bool(gflags & 0x2000)
                return self._mpls_input(pkt, l4 + hlen)
        elif not frag and proto == 17 and len(buf) - l4 >= 8:
            dport = U16.unpack_from(buf, l4 + 2)[0]
            if dport in D.MPLS_OVER_UDP_PORTS:
                return self._mpls_input(pkt, l4 + 8)
            if dport == D.VXLAN_PORT:
                return self._vxlan_input(pkt, l4 + 8)
        self._to_host(pkt, nh)

    def _to_host(self, pkt: Packet, nh: NextHop | None) -> None:
        vif = nh.oif if nh is not None and nh.oif is not None else None
        if vif is None:
            vif = self._bridge_vif(pkt.vif)
        if vif is None:
            vif = next(
                (v for v in self.tables.interfaces.values() if v.type == C.VIF_TYPE_HOST), None
            )
        if vif is None:
            return self._drop(pkt, D.DROP_TRAP_NO_IF)
        if pkt.start == pkt.l3:
            frame: Frame = vif.mac + vif.mac + b"\x08\x00" + bytes(pkt.buf[pkt.l3 :])
        else:
            frame = memoryview(pkt.buf)[pkt.start :]
        self._vif_tx(pkt, vif, frame)

    def _mpls_input(self, pkt: Packet, at: int) -> None:
        """``vr_mpls_input``: pop the label, its NH decides L3 (AF_INET) or L2 (AF_BRIDGE)."""
        buf = pkt.buf
        if len(buf) - at < 4:
            return self._drop(pkt, D.DROP_PULL)
        word = U32.unpack_from(buf, at)[0]
        if word >> 12 == 0xFFFFF and not word & 0x100:
            at += 4
            if len(buf) - at < 4:
                return self._drop(pkt, D.DROP_PULL)
            word = U32.unpack_from(buf, at)[0]
        label = word >> 12
        if label >= self.tables.config.mpls_labels:
            return self._drop(pkt, D.DROP_INVALID_LABEL)
        ttl = (word & 0xFF) - 1
        if ttl <= 0:
            return self._drop(pkt, D.DROP_TTL_EXCEEDED)
        pkt.outer_src = bytes(buf[pkt.l3 + 12 : pkt.l3 + 16])
        pkt.label = label
        pkt.ttl = ttl
        nh = self.tables.mpls.get(label)
        if nh is None:
            return self._drop(pkt, D.DROP_INVALID_LABEL)
        reason = self._mpls_payload(pkt, nh, label, at + 4)
        if reason:
            return self._drop(pkt, reason)
        self._decap_vrf(pkt, nh)
        pkt.flags &= ~D.VP_FLAG_MULTICAST
        pkt.vlan = D.VLAN_ID_INVALID
        self._nh_output(pkt, nh)

    def _mpls_payload(self, pkt: Packet, nh: NextHop, label: int, at: int) -> int:
        """Point ``pkt`` at what the label carries (an IP packet or an Ethernet frame);
        0, or the drop reason."""
        buf = pkt.buf
        if nh.family == AF_INET:
            if len(buf) <= at or buf[at] >> 4 not in (4, 6):
                return D.DROP_INVALID_PROTOCOL
            pkt.type = D.VP_TYPE_IP if buf[at] >> 4 == 4 else D.VP_TYPE_IP6
            pkt.start = pkt.off = pkt.l3 = at
            return 0
        if nh.family != C.AF_BRIDGE:
            return D.DROP_INVALID_NH
        if nh.flags & C.NH_FLAG_L2_CONTROL_DATA or (nh.type == C.NH_COMPOSITE and label >= 1024):
            if buf[at : at + 4] != ZERO4:
                return D.DROP_INVALID_PACKET
            at += 4
        pkt.start = pkt.off = at
        pkt.vlan = D.VLAN_ID_INVALID
        if not self._classify(pkt):
            return D.DROP_INVALID_PACKET
        return 0

    @staticmethod
    def _decap_vrf(pkt: Packet, nh: NextHop) -> None:
        if nh.vrf >= 0 and nh.type != C.NH_ENCAP:
            pkt.dvrf = nh.vrf
        elif nh.oif is not None:
            pkt.dvrf = nh.oif.vrf

    def _vxlan_input(self, pkt: Packet, at: int) -> None:
        """``vr_vxlan_input``: the VNI's next hop gets the inner Ethernet frame."""
        buf = pkt.buf
        if len(buf) - at < 8:
            return self._drop(pkt, D.DROP_PULL)
        w0, w1 = VXLAN_HDR.unpack_from(buf, at)
        pkt.outer_src = bytes(buf[pkt.l3 + 12 : pkt.l3 + 16])
        if not w0 & VXLAN_I:
            return self._drop(pkt, D.DROP_INVALID_VNID)
        vni = w1 >> 8
        nh = self.tables.vxlan.get(vni)
        if nh is None:
            return self._drop(pkt, D.DROP_INVALID_VNID)
        pkt.label = vni
        pkt.start = pkt.off = at + 8
        pkt.vlan = D.VLAN_ID_INVALID
        pkt.flags = 0
        if not self._classify(pkt):
            return self._drop(pkt, D.DROP_INVALID_PACKET)
        self._decap_vrf(pkt, nh)
        pkt.flags &= ~D.VP_FLAG_MULTICAST
        if w0 & 0x01000000:
            return self._trap(pkt, D.TRAP_ROUTER_ALERT)
        self._nh_output(pkt, nh)

"""TCP super-frames across a UDP tunnel in memory: the sender writes UDP GSO
super-frames (one per up to 64 KiB of datagrams) to a fabric port that takes offload,
the receiver merges such a super-frame back into one TCP super-frame (a software GRO)
and writes it whole to a VM port that takes offload."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from tests.datapath.pipeline_world import World
from tests.datapath.test_offload_pipeline import (
    MSS,
    PAYLOAD,
    OffloadOutput,
    carried,
    payload_of,
    super_frame,
    valid_tcp,
)
from tests.datapath.test_pipeline import ROUTER_MAC, tunnel_pair
from vrtwist.datapath import constants as C
from vrtwist.datapath import offload

L2_DST = "de:ad:be:ef:00:09"  # tunnel_pair's bridge entry: MPLS label 128, Ethernet inside


def offloading(w: World) -> OffloadOutput:
    out = OffloadOutput()
    w.pipeline = type(w.pipeline)(w.dp, out, w.trap, flows=w.flows)
    w.out = out
    return out


def valid_udp(frame: bytes) -> bool:
    """An untagged IPv4 UDP datagram whose UDP checksum (if any) verifies."""
    total = struct.unpack_from("!H", frame, 16)[0]
    udp = frame[34 : 14 + total]
    if udp[6:8] == b"\x00\x00":
        return True
    pseudo = frame[26:34] + struct.pack("!BBH", 0, 17, len(udp))
    return offload.checksum(pseudo + udp) == 0xFFFF


def zero_udp_checksum(frame: bytes) -> bytes:
    return frame[:40] + b"\x00\x00" + frame[42:]


class SenderTests(SynchronousTestCase):
    def send(
        self, kind: int, dst: str, payload: bytes = PAYLOAD
    ) -> tuple[World, World, bytes, bytes]:
        """The super-frame through A, with a fabric port that takes offload; the one
        UDP GSO frame written and its vnet header."""
        a, b = tunnel_pair(kind)
        out = offloading(a)
        frame, vnet = super_frame(dst=dst, payload=payload)
        a.pipeline.receive(3, frame, carried(frame, vnet))
        self.assertEqual(a.drops(), {})
        ((vif, uso, uso_vnet),) = out.vnets
        self.assertEqual(vif, 0)
        self.assertEqual(out.frames, [])
        return a, b, uso, uso_vnet

    def test_one_udp_gso_frame_stands_for_the_datagrams_one_by_one(self) -> None:
        for kind, dst, tail in ((C.NH_FLAG_TUNNEL_UDP_MPLS, ROUTER_MAC, 4),
                                (C.NH_FLAG_TUNNEL_UDP_MPLS, L2_DST, 4 + 14),
                                (C.NH_FLAG_TUNNEL_VXLAN, L2_DST, 8 + 14)):  # fmt: skip
            sender, _b, uso, vnet = self.send(kind, dst)
            flags, gso_type, hdr_len, size, start, off = offload.VNET_HDR.unpack(vnet)
            self.assertEqual((flags, gso_type, hdr_len, start, off),
                             (offload.F_NEEDS_CSUM, offload.GSO_UDP_L4, 42, 34, 6))  # fmt: skip
            self.assertEqual(size, tail + 40 + MSS)
            # what the kernel cuts it into ...
            wires = [bytes(w) for w in offload.finish(uso, vnet)]
            # ... is what the pipeline sends one by one to a port without offload
            a, _b = tunnel_pair(kind)
            plain = offloading(a)
            plain.plain.add(0)
            frame, fvnet = super_frame(dst=dst)
            a.pipeline.receive(3, frame, carried(frame, fvnet))
            one_by_one = plain.on(0)
            self.assertEqual(len(wires), 6)
            self.assertTrue(all(valid_udp(w) for w in wires))
            # but for the UDP checksum, which UDP GSO always computes
            self.assertEqual([zero_udp_checksum(w) for w in wires], one_by_one)
            # the per-VRF tunnel counters count datagrams either way
            self.assertEqual(dict(sender.pipeline.vrf_stats), dict(a.pipeline.vrf_stats))
            self.assertIn(6, dict(a.pipeline.vrf_stats).values())

    def test_more_than_64_kib_of_datagrams_is_cut_into_several(self) -> None:
        payload = bytes(range(256)) * 255  # 65280 bytes: 66 segments, 70 KiB encapsulated
        a, _b = tunnel_pair(C.NH_FLAG_TUNNEL_UDP_MPLS)
        out = offloading(a)
        frame, vnet = super_frame(dst=L2_DST, payload=payload)
        a.pipeline.receive(3, frame, carried(frame, vnet))
        self.assertEqual(len(out.vnets), 2)
        self.assertTrue(all(len(f) <= 14 + 0xFFFF for _v, f, _h in out.vnets))
        wires = [bytes(w) for _v, f, h in out.vnets for w in offload.finish(f, h)]
        self.assertEqual(len(wires), 66)
        ids = [struct.unpack_from("!H", w, 18)[0] for w in wires]
        self.assertEqual(ids, list(range(ids[0], ids[0] + 66)))  # one IP ID per datagram
        self.assertEqual(payload_of(wires, 14 + 28 + 4 + 14), payload)

    def test_a_fabric_port_without_offload_gets_the_datagrams(self) -> None:
        a, _b = tunnel_pair(C.NH_FLAG_TUNNEL_UDP_MPLS)
        out = offloading(a)
        out.plain.add(0)
        frame, vnet = super_frame(dst=L2_DST)
        a.pipeline.receive(3, frame, carried(frame, vnet))
        self.assertEqual(out.vnets, [])
        self.assertEqual(len(out.on(0)), 6)

    def test_gre_is_never_udp_gso(self) -> None:
        a, _b = tunnel_pair(C.NH_FLAG_TUNNEL_GRE)
        out = offloading(a)
        frame, vnet = super_frame(dst=L2_DST)
        a.pipeline.receive(3, frame, carried(frame, vnet))
        self.assertEqual(out.vnets, [])
        self.assertEqual(len(out.on(0)), 6)


class ReceiverTests(SynchronousTestCase):
    def across(self, kind: int, dst: str) -> tuple[World, bytes, bytes]:
        a, b = tunnel_pair(kind)
        out = offloading(a)
        frame, vnet = super_frame(dst=dst)
        a.pipeline.receive(3, frame, carried(frame, vnet))
        ((_vif, uso, uso_vnet),) = out.vnets
        offloading(b)
        return b, uso, uso_vnet

    def test_merged_back_into_one_tcp_super_frame(self) -> None:
        for kind, dst in ((C.NH_FLAG_TUNNEL_UDP_MPLS, ROUTER_MAC),
                          (C.NH_FLAG_TUNNEL_UDP_MPLS, L2_DST),
                          (C.NH_FLAG_TUNNEL_VXLAN, L2_DST)):  # fmt: skip
            b, uso, vnet = self.across(kind, dst)
            b.pipeline.receive(0, uso, carried(uso, vnet))
            self.assertEqual(b.drops(), {})
            ((vif, got, got_vnet),) = b.out.vnets  # type: ignore[attr-defined]
            self.assertEqual(vif, 4)
            flags, gso_type, _hdr, size, start, off = offload.VNET_HDR.unpack(got_vnet)
            self.assertEqual((flags, gso_type, size, start, off),
                             (offload.F_NEEDS_CSUM, offload.GSO_TCPV4, MSS, 34, 16))  # fmt: skip
            segs = [bytes(s) for s in offload.finish(got, got_vnet)]
            self.assertEqual(len(segs), 6)
            self.assertTrue(all(valid_tcp(s) for s in segs))
            self.assertEqual(payload_of(segs), PAYLOAD)
            self.assertEqual(b.counters(4)["opackets"], 1)

    def test_not_one_run_is_segmented_and_nothing_is_lost(self) -> None:
        b, uso, vnet = self.across(C.NH_FLAG_TUNNEL_UDP_MPLS, L2_DST)
        size = offload.VNET_HDR.unpack(vnet)[3]
        seq_at = 42 + 2 * size + 4 + 14 + 20 + 4  # the third datagram's TCP sequence
        for bad in (
            uso[:seq_at] + b"\x00\x00\x00\x00" + uso[seq_at + 4 :],  # out of order
            uso[: seq_at + 9] + b"\x18" + uso[seq_at + 10 :],  # PSH in the middle
        ):
            b.out.frames.clear()
            b.pipeline.receive(0, bad, carried(bad, vnet))
            self.assertEqual(b.drops(), {})
            self.assertEqual(b.out.vnets, [])  # type: ignore[attr-defined]
            got = b.out.on(4)
            self.assertEqual(len(got), 6)
            self.assertEqual(len(payload_of(got)), len(PAYLOAD))

    def test_merge_refusals(self) -> None:
        _b, uso, vnet = self.across(C.NH_FLAG_TUNNEL_UDP_MPLS, L2_DST)
        size = offload.VNET_HDR.unpack(vnet)[3]
        merge = offload.merge_tcp_chunks
        self.assertIsNotNone(merge(uso, 42, size, 4 + 14))
        self.assertIsNone(merge(uso, 42, size, 4))  # no IPv4 header there
        self.assertIsNone(merge(uso, 42, size - 1, 4 + 14))  # chunks do not line up
        other = 42 + size + 4  # the second datagram's inner Ethernet header
        changed = uso[:other] + b"\x02" + uso[other + 1 :]
        self.assertIsNone(merge(changed, 42, size, 4 + 14))  # another tunnel header
        self.assertIsNone(merge(uso[:60], 42, size, 4 + 14))


class SegmentPartsTests(SynchronousTestCase):
    def test_every_segment_checksummed_for_odd_sizes_and_flags(self) -> None:
        for size, mss, flags in ((1, 1000, 0x19), (999, 500, 0x98), (4097, 1337, 0x11),
                                 (65000, 1348, 0x18)):  # fmt: skip
            payload = bytes((i * 7 + 3) & 0xFF for i in range(size))
            frame, vnet = super_frame(payload=payload)
            frame = frame[:47] + bytes([flags]) + frame[48:]
            segs = [
                bytes(s)
                for s in offload.finish(frame, vnet[:4] + struct.pack("=H", mss) + vnet[6:])
            ]
            self.assertEqual(len(segs), -(-size // mss))
            self.assertTrue(all(valid_tcp(s) for s in segs))
            self.assertEqual(payload_of(segs), payload)
            got = [s[47] for s in segs]
            self.assertEqual(got[-1], flags & ~0x80 if len(segs) > 1 else flags)  # CWR: first only
            self.assertTrue(all(f == flags & ~0x09 for f in got[:1][: len(segs) - 1]))
            self.assertTrue(all(f == flags & ~0x89 for f in got[1:-1]))
            seqs = [struct.unpack_from("!I", s, 38)[0] for s in segs]
            self.assertEqual(seqs, [1000 + i * mss for i in range(len(segs))])
            ids = [struct.unpack_from("!H", s, 18)[0] for s in segs]
            self.assertEqual(ids, [7 + i for i in range(len(segs))])

    def test_ipv6_and_ipv4_with_options_take_the_general_path(self) -> None:
        payload = bytes((i * 13 + 1) & 0xFF for i in range(3001))
        tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 7, 0, 0x50, 0x18, 512, 0, 0)
        sip6, dip6 = bytes(range(16)), bytes(range(16, 32))
        ip6 = struct.pack("!IHBB16s16s", 0x60000000, 20 + len(payload), 6, 64, sip6, dip6)
        pseudo6 = offload.checksum(sip6 + dip6 + struct.pack("!IxxxB", 20 + len(payload), 6))
        tcp6 = tcp[:16] + struct.pack("!H", pseudo6) + tcp[18:]
        frame6 = bytes(12) + b"\x86\xdd" + ip6 + tcp6 + payload
        vnet6 = offload.VNET_HDR.pack(offload.F_NEEDS_CSUM, offload.GSO_TCPV6, 74, 1000, 54, 16)
        segs6 = [bytes(s) for s in offload.finish(frame6, vnet6)]
        self.assertEqual(len(segs6), 4)
        for s in segs6:
            seg_tcp = s[54:]
            self.assertEqual(struct.unpack_from("!H", s, 18)[0], len(seg_tcp))
            head = s[22:54] + struct.pack("!IxxxB", len(seg_tcp), 6)
            self.assertEqual(offload.checksum(head + seg_tcp), 0xFFFF)
        self.assertEqual(b"".join(s[74:] for s in segs6), payload)
        frame, _vnet = super_frame(payload=payload)
        ip = bytearray(frame[14:34])
        ip[0] = 0x46  # a 4-byte option (end of list): the header grows to 24 bytes
        ip[2:4] = struct.pack("!H", 24 + 20 + len(payload))
        ip += bytes(4)
        ip[10:12] = b"\x00\x00"
        ip[10:12] = struct.pack("!H", ~offload.checksum(ip) & 0xFFFF)
        framed = frame[:14] + bytes(ip) + frame[34:]
        vnet4 = offload.VNET_HDR.pack(offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 58, 1000, 38, 16)
        segs = [bytes(s) for s in offload.finish(framed, vnet4)]
        self.assertEqual(len(segs), 4)
        self.assertTrue(all(valid_tcp(s) for s in segs))
        self.assertEqual(b"".join(s[58:] for s in segs), payload)

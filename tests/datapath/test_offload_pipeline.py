"""GSO super-frames through the pipeline in memory: kept whole to a port that takes a
vnet header, segmented where the frame cannot leave whole (a port without one, a tunnel,
a trap)."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.datapath.test_pipeline import ROUTER_MAC, VM_MAC, bridged, routed, tunnel_pair
from vrtwist.datapath import constants as C
from vrtwist.datapath import offload
from vrtwist.datapath import pipeline_defs as D
from vrtwist.datapath.interfaces import IOffloadOutput, IOffloadPipeline
from vrtwist.datapath.testing import RecordingOutput, World, ip_bytes, mac
from vrtwist.shmem import layout as L

PAYLOAD = bytes(range(256)) * 20  # 5120 bytes: 6 segments of 1000 (the last 120)
MSS = 1000


@implementer(IOffloadOutput)
class OffloadOutput(RecordingOutput):
    """Records frames with their vnet header; vifs in ``plain`` take no vnet header."""

    def __init__(self) -> None:
        super().__init__()
        self.plain: set[int] = set()
        self.vnets: list[tuple[int, bytes, bytes]] = []

    def accepts_offload(self, vif_index: int) -> bool:
        return vif_index not in self.plain

    def transmit_offload(self, vif_index: int, frame: bytes | bytearray | memoryview,
                         vnet: bytes) -> bool:  # fmt: skip
        if vif_index in self.refuse:
            return False
        self.vnets.append((vif_index, bytes(frame), vnet))
        return True


def super_frame(dst: str = "de:ad:be:ef:00:01", payload: bytes = PAYLOAD) -> tuple[bytes, bytes]:
    """A TCP super-frame as a veth hands it over: partial checksum, GSO TCPv4, MSS 1000."""
    sip, dip = ip_bytes("1.1.1.1"), ip_bytes("2.2.2.2")
    tcp_len = 20 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, 7, 0x4000, 64, 6, 0, sip, dip)
    ip = ip[:10] + struct.pack("!H", ~offload.checksum(ip) & 0xFFFF) + ip[12:]
    pseudo = offload.checksum(sip + dip + struct.pack("!BBH", 0, 6, tcp_len))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 0, 0x50, 0x18, 512, pseudo, 0)
    frame = mac(dst) + mac(VM_MAC) + b"\x08\x00" + ip + tcp + payload
    vnet = offload.VNET_HDR.pack(offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 54, MSS, 34, 16)
    return frame, vnet


def carried(frame: bytes, vnet: bytes) -> offload.Gso:
    gso = offload.carried(vnet, len(frame))
    assert gso is not None
    return gso


def valid_tcp(frame: bytes, l3: int = 14) -> bool:
    """IPv4 header and TCP checksums of a wire frame both verify."""
    ihl = (frame[l3] & 0x0F) * 4
    if offload.checksum(frame[l3 : l3 + ihl]) != 0xFFFF:
        return False
    total = struct.unpack_from("!H", frame, l3 + 2)[0]
    tcp = frame[l3 + ihl : l3 + total]
    pseudo = frame[l3 + 12 : l3 + 20] + struct.pack("!BBH", 0, 6, len(tcp))
    return offload.checksum(pseudo + tcp) == 0xFFFF


def payload_of(frames: list[bytes], l3: int = 14) -> bytes:
    return b"".join(f[l3 + 40 : l3 + struct.unpack_from("!H", f, l3 + 2)[0]] for f in frames)


class KeptWholeTests(SynchronousTestCase):
    def world(self, **options: object) -> tuple[World, OffloadOutput]:
        w = World(**options)  # type: ignore[arg-type]
        out = OffloadOutput()
        w.pipeline.output = out
        w.pipeline.offload_output = out
        w.out = out
        return w, out

    def test_seams(self) -> None:
        w, out = self.world()
        self.assertTrue(verifyObject(IOffloadOutput, out))
        self.assertTrue(verifyObject(IOffloadPipeline, w.pipeline))

    def test_bridged_super_frame_leaves_whole_with_its_vnet_header(self) -> None:
        w, out = self.world()
        bridged(w)
        frame, vnet = super_frame()
        w.pipeline.receive(1, frame, carried(frame, vnet))
        self.assertTrue(out.vnets == [(2, frame, vnet)])
        self.assertEqual(out.frames, [])
        self.assertEqual(w.counters(2)["opackets"], 1)
        self.assertEqual(w.counters(2)["obytes"], len(frame))
        self.assertEqual(w.drops(), {})

    def test_a_pushed_tag_moves_the_checksum_start(self) -> None:
        w, out = self.world(vlan_tci=5, vtest_vlan=True)
        bridged(w)
        frame, vnet = super_frame()
        w.pipeline.receive(1, frame, carried(frame, vnet))
        ((_vif, got, got_vnet),) = out.vnets
        self.assertEqual(got, frame[:12] + b"\x81\x00\x00\x05" + frame[12:])
        self.assertEqual(offload.VNET_HDR.unpack(got_vnet),
                         (offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 58, MSS, 38, 16))  # fmt: skip

    def test_routed_super_frame_ttl_and_ip_checksum_fixed(self) -> None:
        w, out = self.world()
        routed(w)
        w.encap_nh(20, 2, family=C.AF_INET)
        w.route("2.2.2.2", 32, 20)
        frame, vnet = super_frame()  # to the router's MAC of routed()
        w.pipeline.receive(1, frame, carried(frame, vnet))
        ((vif, got, got_vnet),) = out.vnets
        self.assertEqual(vif, 2)
        self.assertEqual(got[:14].hex(), "deadbeef0051deadbeef00520800")
        self.assertEqual(got[14 + 8], 63)
        self.assertEqual(offload.checksum(got[14:34]), 0xFFFF)
        self.assertEqual(got[34:], frame[34:])
        self.assertEqual(got_vnet, vnet)
        # what the kernel makes of it: six valid segments carrying the payload
        segs = [bytes(s) for s in offload.finish(got, got_vnet)]
        self.assertEqual(len(segs), 6)
        self.assertTrue(all(valid_tcp(s) for s in segs))
        self.assertEqual(payload_of(segs), PAYLOAD)


class SegmentedTests(SynchronousTestCase):
    def test_a_port_without_vnet_header_gets_wire_segments(self) -> None:
        w = World()  # RecordingOutput: no offload at all
        bridged(w)
        frame, vnet = super_frame()
        w.pipeline.receive(1, frame, carried(frame, vnet))
        segs = w.out.on(2)
        self.assertEqual(len(segs), 6)
        self.assertTrue(all(valid_tcp(s) and len(s) <= 14 + 40 + MSS for s in segs))
        self.assertEqual(payload_of(segs), PAYLOAD)
        self.assertEqual([s for s in segs], [bytes(s) for s in offload.finish(frame, vnet)])
        self.assertEqual(w.counters(2)["opackets"], 1)  # one packet for the vif, as received

    def test_offload_output_with_a_plain_port(self) -> None:
        w = World()
        out = OffloadOutput()
        out.plain.add(2)
        w.pipeline = type(w.pipeline)(w.dp, out, w.trap, flows=w.flows)
        bridged(w)
        frame, vnet = super_frame()
        w.pipeline.receive(1, frame, carried(frame, vnet))
        self.assertEqual(out.vnets, [])
        self.assertEqual(len(out.on(2)), 6)

    def test_a_refused_super_frame_counts_one_drop(self) -> None:
        w = World()
        bridged(w)
        w.out.refuse.add(2)
        frame, vnet = super_frame()
        w.pipeline.receive(1, frame, carried(frame, vnet))
        self.assertEqual(w.drops(), {"vds_interface_tx_discard": 1})
        self.assertEqual(w.counters(2)["oerrors"], 1)

    def test_tunnel_segments_before_encapsulation(self) -> None:
        """MPLSoUDP with a 1500-byte fabric: every segment fits, crosses, arrives."""
        a, b = tunnel_pair(C.NH_FLAG_TUNNEL_UDP_MPLS)
        out = OffloadOutput()  # a fabric port without vnet headers
        out.plain.add(0)
        a.pipeline = type(a.pipeline)(a.dp, out, a.trap, flows=a.flows)
        frame, vnet = super_frame(dst=ROUTER_MAC)
        a.pipeline.receive(3, frame, carried(frame, vnet))
        self.assertEqual(out.vnets, [])
        wires = out.on(0)
        self.assertEqual(len(wires), 6)
        self.assertTrue(all(len(x) <= 1514 for x in wires))
        self.assertEqual(a.drops(), {})
        for x in wires:
            b.pipeline.receive(0, x)
        got = b.out.on(4)
        self.assertEqual(b.drops(), {})
        self.assertTrue(all(valid_tcp(g) for g in got))
        self.assertEqual(payload_of(got), PAYLOAD)

    def test_flow_miss_traps_one_segment_and_the_held_frame_leaves_whole(self) -> None:
        w = World()
        out = OffloadOutput()
        w.pipeline = type(w.pipeline)(w.dp, out, w.trap, flows=w.flows)
        bridged(w, policy=True)
        w.encap_nh(12, 2, flags=C.NH_FLAG_VALID | C.NH_FLAG_POLICY_ENABLED)
        frame, vnet = super_frame()
        w.pipeline.receive(1, frame, carried(frame, vnet))
        ((_vif, _vrf, code, index, _nh, _stats, trapped),) = w.trap.traps
        self.assertEqual(code, D.TRAP_FLOW_MISS)
        self.assertEqual(len(trapped), 14 + 40 + MSS)
        self.assertTrue(valid_tcp(trapped))
        self.assertEqual(out.vnets, [])
        entry = w.flows.entry(index)
        w.flow(fr_index=index, fr_gen_id=entry.gen_id, fr_flow_proto=6,
               fr_flow_sport=int.from_bytes(frame[34:36], "little"),
               fr_flow_dport=int.from_bytes(frame[36:38], "little"))  # fmt: skip
        self.assertEqual(len(out.vnets), 1)
        self.assertTrue(out.vnets[0] == (2, frame, vnet))

    def test_nat_of_a_super_frame_keeps_its_partial_checksum_right(self) -> None:
        """DNAT + DPAT on a super-frame kept whole: every segment the kernel would cut
        from it carries the new address and port and verifies."""
        w = World()
        out = OffloadOutput()
        w.pipeline = type(w.pipeline)(w.dp, out, w.trap, flows=w.flows)
        bridged(w, policy=True)
        frame, vnet = super_frame()
        rev = w.flow(fr_flow_proto=6,
                     fr_flow_sip_l=struct.unpack("<I", ip_bytes("9.9.9.9"))[0],
                     fr_flow_dip_l=struct.unpack("<I", ip_bytes("1.1.1.1"))[0],
                     fr_flow_sport=struct.unpack("<H", (99).to_bytes(2, "big"))[0],
                     fr_flow_dport=int.from_bytes(frame[34:36], "little"))  # fmt: skip
        w.flow(fr_flow_proto=6, fr_action=L.ACTION_NAT,
               fr_flags=L.FLAG_ACTIVE | L.RFLOW_VALID | L.FLAG_DNAT | L.FLAG_DPAT,
               fr_rindex=rev.fresp_index, fr_flow_sport=int.from_bytes(frame[34:36], "little"),
               fr_flow_dport=int.from_bytes(frame[36:38], "little"))  # fmt: skip
        w.pipeline.receive(1, frame, carried(frame, vnet))
        ((_vif, got, got_vnet),) = out.vnets
        self.assertEqual(got[30:34], ip_bytes("9.9.9.9"))
        self.assertEqual(got[36:38], (99).to_bytes(2, "big"))
        # the field still holds the pseudo header's sum, now of the new addresses
        pseudo = got[26:34] + struct.pack("!BBH", 0, 6, len(got) - 34)
        self.assertEqual(struct.unpack_from("!H", got, 50)[0], offload.checksum(pseudo))
        segs = [bytes(x) for x in offload.finish(got, got_vnet)]
        self.assertEqual(len(segs), 6)
        self.assertTrue(all(valid_tcp(x) for x in segs))
        self.assertEqual(payload_of(segs), PAYLOAD)

    def test_bad_offload_state_is_dropped_and_counted(self) -> None:
        w = World()
        bridged(w)
        frame, vnet = super_frame()
        odd = frame[:12] + b"\x88\xb5" + frame[14:]  # GSO TCP over a non-IP EtherType
        w.pipeline.receive(1, odd, carried(odd, vnet))
        self.assertEqual(w.out.frames, [])
        self.assertEqual(w.drops(), {"vds_invalid_packet": 1})
        w.pipeline.receive(1, frame, carried(frame, vnet))  # the next frame still passes
        self.assertEqual(len(w.out.on(2)), 6)


class CarriedStateTests(SynchronousTestCase):
    def test_round_trip_and_refusals(self) -> None:
        frame, vnet = super_frame()
        gso = carried(frame, vnet)
        self.assertEqual(offload.vnet_for(gso, len(frame)), vnet)
        self.assertEqual(offload.vnet_for(gso, len(frame) + 4)[4:],
                         offload.VNET_HDR.pack(1, 1, 58, MSS, 38, 16)[4:])  # fmt: skip
        self.assertIsNone(offload.carried(bytes(10), len(frame)))
        udp_gso = offload.VNET_HDR.pack(1, offload.GSO_UDP_L4, 42, 100, 34, 6)
        self.assertEqual(offload.carried(udp_gso, len(frame)),
                         (1, offload.GSO_UDP_L4, len(frame) - 42, 100, len(frame) - 34, 6))  # fmt: skip
        ufo = offload.VNET_HDR.pack(1, offload.GSO_UDP, 42, 100, 34, 6)
        self.assertIsNone(offload.carried(ufo, len(frame)))  # not carried: refused at the port
        outside = offload.VNET_HDR.pack(1, 0, 0, 0, len(frame), 16)
        self.assertIsNone(offload.carried(outside, len(frame)))

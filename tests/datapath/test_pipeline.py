"""The packet pipeline frame by frame: flows, drops, traps, tunnels, ARP, counters."""

from __future__ import annotations

import shutil
import struct
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.datapath import constants as C
from vrtwist.datapath import pipeline_defs as D
from vrtwist.datapath.dispatcher import make
from vrtwist.datapath.droplog import RECORD, DropRecord
from vrtwist.datapath.testing import World, ip_bytes, mac, udp_frame
from vrtwist.packet.checksum import checksum, ipv4_ttl_decrement
from vrtwist.packet.headers import ARP, ETH_P_ARP, Ethernet, IPv4
from vrtwist.shmem import layout as L
from vrtwist.shmem.service import install

VM_MAC = "de:ad:be:ef:00:02"  # source of udp_frame()
ROUTER_MAC = "00:00:5e:00:01:00"
F = udp_frame()  # the vtest frame


def bridged(world: World, *, policy: bool = False) -> None:
    """vif 1 -> bridge entry de:ad:be:ef:00:01 -> ENCAP AF_BRIDGE NH 12 -> vif 2."""
    flags = C.VIF_FLAG_POLICY_ENABLED if policy else 0
    world.vif(1, mac_=VM_MAC, flags=flags)
    world.vif(2, mac_="de:ad:be:ef:00:01", flags=flags)
    world.encap_nh(12, 2)
    world.bridge_route("de:ad:be:ef:00:01", 12)


def routed(world: World, nh_id: int = 12) -> None:
    """vif 1 (VM) -> L2_RCV for de:ad:be:ef:00:01 -> route 2.2.2.2/32 in VRF 0."""
    world.vif(1, mac_=VM_MAC)
    world.vif(2, mac_="de:ad:be:ef:00:01", mtu=2514)
    world.nh(13, C.NH_L2_RCV, nhr_family=0)
    world.bridge_route("de:ad:be:ef:00:01", 13)


class FlowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.w = World()
        bridged(self.w, policy=True)

    def test_miss_holds_three_traps_first_and_replays_on_set(self) -> None:
        w = self.w
        for n in range(5):
            w.pipeline.receive(1, udp_frame(ident=n + 1))
        self.assertEqual(w.out.frames, [])
        self.assertEqual(w.drops(), {"vds_flow_queue_limit_exceeded": 2})
        (trap,) = w.trap.traps
        vif, vrf, code, index, nh_id, stats, frame = trap
        self.assertEqual((vif, vrf, code, nh_id), (1, 0, D.TRAP_FLOW_MISS, 0))
        entry = w.flows.entry(index)
        self.assertEqual(entry.action, L.ACTION_HOLD)
        self.assertEqual(stats, (0, 0, 0, entry.gen_id))  # the fresh entry's old counters
        self.assertEqual(frame, udp_frame(ident=1))
        self.assertFalse(entry.flags & L.FLAG_NEW_FLOW)  # cleared by the trap
        # the agent allows it: the three held packets leave, in order
        resp = w.flow(fr_index=index, fr_gen_id=entry.gen_id)
        self.assertEqual(resp.fresp_index, index)
        self.assertEqual(w.out.on(2), [udp_frame(ident=n + 1) for n in range(3)])
        self.assertEqual(w.pipeline.held, {})
        # later packets hit the flow and are counted in shared memory
        w.pipeline.receive(1, F)
        self.assertEqual(len(w.out.on(2)), 4)
        self.assertEqual(w.flows.stats(index), (6 * len(F), 6))
        self.assertEqual(len(w.trap.traps), 1)

    def test_hold_then_drop_and_delete(self) -> None:
        w = self.w
        w.pipeline.receive(1, F)
        index = w.trap.traps[0][3]
        gen = w.flows.entry(index).gen_id
        w.flow(fr_index=index, fr_gen_id=gen, fr_action=L.ACTION_DROP)
        self.assertEqual(w.drops(), {"vds_flow_action_drop": 1})
        w.pipeline.receive(1, F)
        self.assertEqual(w.drops(), {"vds_flow_action_drop": 2})
        self.assertEqual(w.out.frames, [])
        # a second flow held, then deleted by the agent: its packets are dropped
        w.pipeline.receive(1, udp_frame(sport=1))
        index2 = w.trap.traps[1][3]
        w.flow(
            fr_index=index2,
            fr_flags=0,
            fr_flow_sport=256,
            fr_gen_id=w.flows.entry(index2).gen_id,
        )
        self.assertEqual(w.drops(), {"vds_flow_action_drop": 3})
        self.assertNotIn(index2, w.pipeline.held)

    def test_hold_action_trap_for_existing_hold_entry(self) -> None:
        w = self.w
        w.flow(fr_action=L.ACTION_HOLD)
        w.pipeline.receive(1, F)
        self.assertEqual(w.trap.traps[0][2], D.TRAP_FLOW_ACTION_HOLD)

    def test_forward_flow_rpf_and_ttl(self) -> None:
        w = self.w
        w.encap_nh(14, 2)  # an RPF next hop on another vif than the ingress
        w.flow(fr_src_nh_index=14)
        w.pipeline.receive(1, F)
        self.assertEqual(w.drops(), {"vds_invalid_source": 1})
        w.flow(fr_flow_sport=32, fr_src_nh_index=99)
        w.pipeline.receive(1, udp_frame(sport=32 << 8))
        self.assertEqual(w.drops()["vds_invalid_nh"], 1)
        w.flow(fr_flow_sport=33, fr_ttl=9)
        w.pipeline.receive(1, udp_frame(sport=33 << 8))
        (out,) = w.out.on(2)
        self.assertEqual(out[22], 9)
        self.assertEqual(checksum(out[14:34]), 0)

    def test_new_flows_fragments_and_full_table(self) -> None:
        w = self.w
        # a non-first fragment before its first one waits in the assembler
        w.pipeline.receive(1, udp_frame(frag=0x2001))
        self.assertEqual((w.drops(), len(w.pipeline.frag_assembler)), ({}, 1))
        w.vif(
            3, mac_="de:ad:be:ef:00:03", flags=C.VIF_FLAG_POLICY_ENABLED | C.VIF_FLAG_DROP_NEW_FLOWS
        )
        w.pipeline.receive(3, F)
        self.assertEqual(w.drops()["vds_drop_new_flow"], 1)
        # one bucket of four, no overflow: four flows fill it, the next miss finds no slot
        small = World(flow_entries=4, flow_oentries=0)
        bridged(small, policy=True)
        for n in range(4):
            small.flow(fr_flow_sport=100 + n)
        small.pipeline.receive(1, F)
        self.assertEqual(small.drops(), {"vds_flow_table_full": 1})
        self.assertEqual(small.pipeline.held, {})

    def test_trap_without_agent(self) -> None:
        w = self.w
        w.trap.accept = False
        w.pipeline.receive(1, F)
        self.assertEqual(w.drops(), {"vds_trap_no_if": 1})
        self.assertEqual(len(next(iter(w.pipeline.held.values()))), 1)  # original stays held

    def test_nat(self) -> None:
        w = self.w
        # reverse flow 2.2.2.2:31 <- 9.9.9.9:99 ; forward DNAT to 9.9.9.9, DPAT to 99
        rev = w.flow(
            fr_flow_sip_l=struct.unpack("<I", ip_bytes("9.9.9.9"))[0],
            fr_flow_dip_l=struct.unpack("<I", ip_bytes("1.1.1.1"))[0],
            fr_flow_sport=struct.unpack("<H", (99).to_bytes(2, "big"))[0],
        )
        w.flow(
            fr_action=L.ACTION_NAT,
            fr_flags=L.FLAG_ACTIVE | L.RFLOW_VALID | L.FLAG_DNAT | L.FLAG_DPAT,
            fr_rindex=rev.fresp_index,
        )
        w.pipeline.receive(1, F)
        (out,) = w.out.on(2)
        ip = IPv4.parse(out, 14)
        self.assertEqual((ip.src, ip.dst), (ip_bytes("1.1.1.1"), ip_bytes("9.9.9.9")))
        self.assertEqual(out[36:38], (99).to_bytes(2, "big"))
        self.assertEqual(checksum(out[14:34]), 0)
        w.flow(fr_flow_sport=40, fr_action=L.ACTION_NAT, fr_flags=L.FLAG_ACTIVE | L.FLAG_DNAT)
        w.pipeline.receive(1, udp_frame(sport=40 << 8))
        self.assertEqual(w.drops(), {"vds_flow_nat_no_rflow": 1})

    def test_tcp_flags_tracked(self) -> None:
        w = self.w
        w.flow(fr_flow_proto=6)
        tcp = bytes.fromhex("1f001f0000000001000000005002ffff00000000")
        ip = IPv4(ip_bytes("1.1.1.1"), ip_bytes("2.2.2.2"), 6, 40).pack()
        w.pipeline.receive(1, F[:14] + ip + tcp)
        key = struct.pack(
            "<BBHHHI4s4s", 2, 6, 0, 31, 31, 0, ip_bytes("1.1.1.1"), ip_bytes("2.2.2.2")
        )
        self.assertTrue(w.flows.entry(w.flows.lookup(key)).tcp_flags & L.TCP_SYN)
        self.assertIn(w.flows.lookup(key), w.pipeline.flow_last_used)


class DropTests(SynchronousTestCase):
    """Each drop reason reached once, charged to the right vif and logged."""

    def test_unknown_vif_and_short_frame(self) -> None:
        w = World()
        w.pipeline.receive(7, F)
        self.assertEqual(w.drops(), {"vds_invalid_if": 1})
        bridged(w)
        w.pipeline.receive(1, F[:13])
        self.assertEqual(w.drops()["vds_interface_drop"], 1)
        self.assertEqual(w.counters(1)["ierrors"], 1)
        self.assertEqual(w.dp.tables.interfaces[1].drops, {"vds_interface_drop": 1})

    def test_l2_no_route_and_tx_discard(self) -> None:
        w = World()
        bridged(w)
        w.pipeline.receive(1, udp_frame(dst="de:ad:be:ef:00:99"))
        w.pipeline.receive(1, udp_frame(dst="ff:ff:ff:ff:ff:ff"))
        self.assertEqual(w.drops(), {"vds_l2_no_route": 2})
        w.out.refuse.add(2)
        w.pipeline.receive(1, F)
        self.assertEqual(w.drops()["vds_interface_tx_discard"], 1)
        self.assertEqual(w.counters(2)["oerrors"], 1)
        self.assertEqual(w.dp.tables.interfaces[2].drops, {"vds_interface_tx_discard": 1})

    def test_unknown_unicast_flood(self) -> None:
        w = World()
        bridged(w)
        w.vif(3, mac_="de:ad:be:ef:00:03", flags=C.VIF_FLAG_UNKNOWN_UC_FLOOD)
        w.encap_nh(15, 1)
        w.nh(16, C.NH_COMPOSITE, flags=C.NH_FLAG_VALID | C.NH_FLAG_MCAST, nhr_family=C.AF_BRIDGE,
             nhr_nh_list=[12, 15], nhr_label_list=[0, 0])  # fmt: skip
        w.bridge_route("ff:ff:ff:ff:ff:ff", 16)
        w.pipeline.receive(3, udp_frame(dst="de:ad:be:ef:00:99"))
        self.assertEqual(len(w.out.on(1)), 1)
        self.assertEqual(len(w.out.on(2)), 1)
        self.assertEqual(w.drops(), {"vds_cloned_original": 1})
        self.assertEqual(w.pipeline.vrf_stats[(0, "uuc_floods")], 1)
        # the ingress vif never gets its own flood back
        w.pipeline.receive(1, udp_frame(dst="ff:ff:ff:ff:ff:ff"))
        self.assertEqual((len(w.out.on(1)), len(w.out.on(2))), (1, 2))

    def test_routed_drops(self) -> None:
        w = World()
        routed(w)
        w.pipeline.receive(1, udp_frame(dip="3.3.3.3"))  # no route: NH 0 discards
        self.assertEqual(w.drops(), {"vds_discard": 1})
        w.pipeline.receive(1, udp_frame(ttl=0))
        self.assertEqual(w.drops()["vds_ttl_exceeded"], 1)
        arp_less = udp_frame()[:12] + b"\x88\xb5" + bytes(20)
        w.pipeline.receive(1, arp_less)
        self.assertEqual(w.drops()["vds_invalid_protocol"], 1)
        bad_ihl = bytearray(F)
        bad_ihl[14] = 0x44
        w.pipeline.receive(1, bytes(bad_ihl))
        self.assertEqual(w.drops()["vds_invalid_protocol"], 2)
        # log: the last drop, reason + 1, the vif, the addresses
        page = w.dp.drop_log.page(0, 0)
        records = [RECORD.unpack_from(page, i) for i in range(0, len(page), RECORD.size)]
        reasons = [r[2] for r in records if r[2]]
        self.assertEqual(reasons, [D.DROP_DISCARD + 1, D.DROP_TTL_EXCEEDED + 1,
                                   D.DROP_INVALID_PROTOCOL + 1, D.DROP_INVALID_PROTOCOL + 1])  # fmt: skip
        self.assertIsInstance(DropRecord(), DropRecord)
        self.assertEqual(records[0][5][:4], ip_bytes("1.1.1.1"))
        self.assertEqual(records[0][6][:4], ip_bytes("3.3.3.3"))
        self.assertEqual(records[0][3], 1)

    def test_zero_ttl_trap_resolve_invalid_nh(self) -> None:
        w = World()
        routed(w)
        w.nh(20, C.NH_RESOLVE)
        w.route("2.2.2.0", 24, 20)
        w.pipeline.receive(1, udp_frame(ttl=1))
        w.pipeline.receive(1, udp_frame())
        codes = [t[2] for t in w.trap.traps]
        self.assertEqual(codes, [D.TRAP_ZERO_TTL, D.TRAP_RESOLVE])
        self.assertEqual(w.trap.traps[0][6][22], 0)  # trapped with its decremented TTL
        w.nh(21, C.NH_ENCAP, flags=0)  # not VALID
        w.route("2.2.2.2", 32, 21)
        w.pipeline.receive(1, udp_frame())
        self.assertEqual(w.drops(), {"vds_invalid_nh": 1})


class RoutingTests(SynchronousTestCase):
    def test_encap_l3_and_ecmp_and_vrf_translate(self) -> None:
        w = World()
        routed(w)
        w.encap_nh(20, 2, family=C.AF_INET)
        w.vif(3, mac_="de:ad:be:ef:00:03")
        w.encap_nh(21, 3, family=C.AF_INET)
        w.nh(22, C.NH_COMPOSITE, flags=C.NH_FLAG_VALID | C.NH_FLAG_COMPOSITE_ECMP,
             nhr_nh_list=[20, 21], nhr_label_list=[-1, -1])  # fmt: skip
        w.route("2.2.2.0", 24, 22)
        for n in range(32):
            w.pipeline.receive(1, udp_frame(dip=f"2.2.2.{n}", sport=n))
        a, b = w.out.on(2), w.out.on(3)
        self.assertEqual(len(a) + len(b), 32)
        self.assertTrue(a and b)  # both members used
        self.assertEqual(a[0][:14].hex(), "deadbeef0051deadbeef00520800")
        self.assertEqual(a[0][14 + 8], 63)
        self.assertEqual(len(a[0]), len(F))  # L2 header replaced after L2_RCV pulled it
        # VRF translate: VRF 0's 5.5.5.5 is looked up again in VRF 4
        w.nh(23, C.NH_VRF_TRANSLATE, nhr_vrf=4)
        w.route("5.5.5.5", 32, 23)
        w.route("5.5.5.5", 32, 20, vrf=4)
        w.pipeline.receive(1, udp_frame(dip="5.5.5.5"))
        # one decrement only: none at the AF_INET VRF translate, one at the second lookup
        self.assertEqual(w.out.on(2)[-1][14 + 8], 63)

    def test_vtest_vlan_tagging(self) -> None:
        w = World(vlan_tci=5, vtest_vlan=True)
        bridged(w)
        w.pipeline.receive(1, F)
        (out,) = w.out.on(2)
        self.assertEqual(out, F[:12] + b"\x81\x00\x00\x05" + F[12:])
        only_phys = World(vlan_tci=5)
        bridged(only_phys)
        only_phys.pipeline.receive(1, F)
        self.assertEqual(only_phys.out.on(2), [F])  # a VM vif is not tagged


def ip_int_of(frame: bytes, at: int) -> int:
    """An IPv4 address of ``frame`` as a flow request field (host order of wire bytes)."""
    return int.from_bytes(frame[at : at + 4], "little")


def port_of(frame: bytes, at: int) -> int:
    """A port of ``frame`` as a flow request field (the wire's two bytes, as read)."""
    return int.from_bytes(frame[at : at + 2], "little")


def _routed(frame: bytes) -> bytearray:
    out = bytearray(frame)
    ipv4_ttl_decrement(out, 14)
    return out


def tunnel_pair(kind: int, *, l3_vxlan: bool = False) -> tuple[World, World]:
    """Compute A (VM vif 3 in VRF 1, fabric vif 0) tunnels to compute B (VM vif 4).

    A: L2_RCV for the router MAC, route 2.2.2.2/32 -> tunnel NH 20 label 48; bridge
    entry de:ad:be:ef:00:09 -> NH 20 label 128. B: 10.0.0.2/32 -> RCV; label/VNI 48 is
    L3 (ENCAP AF_INET to vif 4, or VRF_TRANSLATE for VXLAN), 128 is L2.
    """
    a, b = World(), World()
    for w, me in ((a, "00:11:11:11:11:11"), (b, "00:22:22:22:22:22")):
        w.vif(0, C.VIF_TYPE_PHYSICAL, mac_=me, mtu=1514)
        w.vif(1, C.VIF_TYPE_HOST, mac_=me)
    a.vif(3, mac_=VM_MAC, vrf=1)
    a.nh(13, C.NH_L2_RCV, nhr_family=0)
    a.bridge_route(ROUTER_MAC, 13, vrf=1)
    extra = C.NH_FLAG_L3_VXLAN if l3_vxlan else 0
    a.tunnel_nh(20, 0, kind, sip="10.0.0.1", dip="10.0.0.2", extra_flags=extra,
                nhr_rw_dst_mac=mac("00:00:5e:00:01:00"))  # fmt: skip
    a.route("2.2.2.2", 32, 20, label=48, vrf=1)
    a.bridge_route("de:ad:be:ef:00:09", 20, vrf=1, label=128)
    b.vif(4, mac_="de:ad:be:ef:00:09", vrf=1)
    b.nh(1, C.NH_RCV, nhr_encap_oif_id=[1])
    b.route("10.0.0.2", 32, 1)
    b.encap_nh(30, 4, family=C.AF_INET)
    b.encap_nh(32, 4, family=C.AF_BRIDGE)
    b.nh(33, C.NH_VRF_TRANSLATE, nhr_vrf=1, nhr_family=C.AF_BRIDGE)
    b.nh(34, C.NH_L2_RCV, nhr_family=0)
    b.bridge_route("00:00:5e:00:01:00", 34, vrf=1)
    b.bridge_route("de:ad:be:ef:00:09", 32, vrf=1)
    b.route("2.2.2.2", 32, 30, vrf=1)
    if kind == C.NH_FLAG_TUNNEL_VXLAN:
        b.request("vr_vxlan_req", vxlanr_vnid=48, vxlanr_nhid=33)
        b.request("vr_vxlan_req", vxlanr_vnid=128, vxlanr_nhid=33)
    else:
        b.request("vr_mpls_req", mr_label=48, mr_nhid=30)
        b.request("vr_mpls_req", mr_label=128, mr_nhid=32)
    return a, b


class TunnelRoundTripTests(SynchronousTestCase):
    def cross(self, a: World, b: World, frame: bytes) -> bytes:
        a.pipeline.receive(3, frame)
        (wire,) = a.out.on(0)
        b.pipeline.receive(0, wire)
        self.assertEqual(b.drops(), {})
        (got,) = b.out.on(4)
        return got

    def l3(self, kind: int, l3_vxlan: bool = False) -> bytes:
        a, b = tunnel_pair(kind, l3_vxlan=l3_vxlan)
        got = self.cross(a, b, udp_frame(dst=ROUTER_MAC))
        inner = bytearray(udp_frame())
        # routed once by A; an EVPN type-5 (L3 VXLAN) packet is routed again by B
        for _ in range(2 if l3_vxlan else 1):
            ipv4_ttl_decrement(inner, 14)
        self.assertEqual(got[14:], bytes(inner[14:]))
        return a.out.on(0)[0]

    def l2(self, kind: int) -> bytes:
        a, b = tunnel_pair(kind)
        frame = udp_frame(dst="de:ad:be:ef:00:09")
        self.assertEqual(self.cross(a, b, frame), frame)
        return a.out.on(0)[0]

    def test_mplsoudp(self) -> None:
        wire = self.l3(C.NH_FLAG_TUNNEL_UDP_MPLS)
        self.assertEqual(wire[14 + 20 + 2 : 14 + 20 + 4], (6635).to_bytes(2, "big"))
        wire = self.l2(C.NH_FLAG_TUNNEL_UDP_MPLS)
        self.assertEqual(wire[42:46].hex(), "00080140")  # label 128, S, TTL 64 unrouted

    def test_mplsogre(self) -> None:
        wire = self.l3(C.NH_FLAG_TUNNEL_GRE)
        self.assertEqual(wire[18:20], b"\x00\x01")  # outer ID = inner ID
        self.l2(C.NH_FLAG_TUNNEL_GRE)

    def test_vxlan(self) -> None:
        self.l3(C.NH_FLAG_TUNNEL_VXLAN, l3_vxlan=True)
        wire = self.l2(C.NH_FLAG_TUNNEL_VXLAN)
        self.assertEqual(wire[42:50].hex(), "0800000000008000")

    def test_flow_trap_of_a_decapsulated_packet_keeps_the_outer_headers(self) -> None:
        """A tunnel packet to a policy next hop is held and trapped from the start of its
        frame (outer Ethernet, IP, UDP, label), as the vRouter resets a trap copy, so the
        agent can read the label; the held packet itself still leaves decapsulated."""
        for kind in (C.NH_FLAG_TUNNEL_UDP_MPLS, C.NH_FLAG_TUNNEL_GRE):
            a, b = tunnel_pair(kind)
            b.encap_nh(30, 4, family=C.AF_INET,
                       flags=C.NH_FLAG_VALID | C.NH_FLAG_POLICY_ENABLED)
            a.pipeline.receive(3, udp_frame(dst=ROUTER_MAC))
            (wire,) = a.out.on(0)
            b.pipeline.receive(0, wire)
            self.assertEqual(b.out.on(4), [])  # held
            ((vif, vrf, code, index, nh_id, _stats, frame),) = b.trap.traps
            self.assertEqual((vif, vrf, code, nh_id), (0, 1, D.TRAP_FLOW_MISS, 30))
            self.assertEqual(len(frame), len(wire))
            self.assertEqual(frame[:22], wire[:22])  # outer Ethernet, IP up to the TTL (routed)
            self.assertEqual(frame[26:], wire[26:])  # addresses, UDP/GRE, label, inner packet
            entry = b.flows.entry(index)
            inner = udp_frame()
            b.flow(fr_index=index, fr_gen_id=entry.gen_id, fr_flow_vrf=1,
                   fr_flow_nh_id=30, fr_flow_sip_l=ip_int_of(inner, 26),
                   fr_flow_dip_l=ip_int_of(inner, 30), fr_flow_sport=port_of(inner, 34),
                   fr_flow_dport=port_of(inner, 36))
            (out,) = b.out.on(4)
            self.assertEqual(out[14:], bytes(_routed(inner)[14:]))
            self.assertEqual(b.drops(), {})

    def test_decap_refusals(self) -> None:
        a, b = tunnel_pair(C.NH_FLAG_TUNNEL_UDP_MPLS)
        a.pipeline.receive(3, udp_frame(dst=ROUTER_MAC))
        (wire,) = a.out.on(0)
        bad = bytearray(wire)
        bad[42:45] = b"\x00\x09\x01"  # label 144: no ILM entry
        b.pipeline.receive(0, bytes(bad))
        self.assertEqual(b.drops(), {"vds_invalid_label": 1})
        b.pipeline.receive(0, wire[:44])  # MPLS header cut
        self.assertEqual(b.drops()["vds_pull"], 1)
        ttl1 = bytearray(wire)
        ttl1[45] = 1
        b.pipeline.receive(0, bytes(ttl1))
        self.assertEqual(b.drops()["vds_ttl_exceeded"], 1)
        v, bv = tunnel_pair(C.NH_FLAG_TUNNEL_VXLAN)
        v.pipeline.receive(3, udp_frame(dst="de:ad:be:ef:00:09"))
        (vw,) = v.out.on(0)
        unknown = bytearray(vw)
        unknown[48] = 7
        bv.pipeline.receive(0, bytes(unknown))
        noflag = bytearray(vw)
        noflag[42] = 0
        bv.pipeline.receive(0, bytes(noflag))
        self.assertEqual(bv.drops(), {"vds_invalid_vnid": 2})
        bv.pipeline.receive(0, vw[:60])  # inner Ethernet cut
        self.assertEqual(bv.drops()["vds_invalid_packet"], 1)
        self.assertEqual(bv.out.on(4), [])

    def test_loop_and_host_delivery(self) -> None:
        a, b = tunnel_pair(C.NH_FLAG_TUNNEL_UDP_MPLS)
        # B sends a decapsulated L3 packet straight back to the tunnel source: loop
        b.tunnel_nh(40, 0, C.NH_FLAG_TUNNEL_UDP_MPLS, sip="10.0.0.2", dip="10.0.0.1")
        b.request("vr_mpls_req", mr_label=48, mr_nhid=40)
        a.pipeline.receive(3, udp_frame(dst=ROUTER_MAC))
        b.pipeline.receive(0, a.out.on(0)[0])
        self.assertEqual(b.drops(), {"vds_pkt_loop": 1})
        # plain IPv4 to the host address goes to the vhost vif
        host = udp_frame(dst="00:22:22:22:22:22", dip="10.0.0.2", dport=22)
        b.pipeline.receive(0, host)
        (up,) = b.out.on(1)
        self.assertEqual(up[:14], host[:14])
        self.assertEqual(up[22], 63)
        # IPv6 from the fabric is cross-connected unchanged
        v6 = F[:12] + b"\x86\xdd" + bytes(40)
        b.pipeline.receive(0, v6)
        self.assertEqual(b.out.on(1)[-1], v6)


class MtuTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.w = World()
        routed(self.w)
        self.w.vif(0, C.VIF_TYPE_PHYSICAL, mac_="00:11:11:11:11:11", mtu=214)  # port MTU 200
        self.w.tunnel_nh(20, 0, C.NH_FLAG_TUNNEL_UDP_MPLS)
        self.w.route("2.2.2.2", 32, 20, label=48)

    def test_df_set_traps_handle_df(self) -> None:
        w = self.w
        big = udp_frame(payload=bytes(300), frag=IPv4_DF)
        w.pipeline.receive(1, big)
        ((_vif, _vrf, code, param, param_1, _, frame),) = w.trap.traps
        self.assertEqual((code, param, param_1), (D.TRAP_HANDLE_DF, 200 - 32, -1))
        self.assertEqual(len(frame), D.AGENT_MIN_PACKET_LEN)
        self.assertEqual(w.out.frames, [])

    def test_df_into_l3_vxlan_counts_the_inner_ethernet_header(self) -> None:
        """A routed packet into L3 VXLAN gets an inner Ethernet header: the MTU the trap
        reports leaves room for it (else the sender's next try is still too big)."""
        w = self.w
        w.tunnel_nh(21, 0, C.NH_FLAG_TUNNEL_VXLAN, extra_flags=C.NH_FLAG_L3_VXLAN,
                    nhr_rw_dst_mac=mac("00:00:5e:00:01:00"))
        w.route("2.2.2.3", 32, 21, label=48)
        w.pipeline.receive(1, udp_frame(dip="2.2.2.3", payload=bytes(300), frag=IPv4_DF))
        ((_vif, _vrf, code, param, _p1, _, _frame),) = w.trap.traps
        self.assertEqual((code, param), (D.TRAP_HANDLE_DF, 200 - 36 - 14))
        # a packet of exactly that size goes through, in one frame
        fits = udp_frame(dip="2.2.2.3", payload=bytes(param - 28), frag=IPv4_DF)
        w.pipeline.receive(1, fits)
        (out,) = w.out.on(0)
        self.assertEqual(len(out), 14 + 200)

    def test_df_clear_fragments_inner(self) -> None:
        w = self.w
        payload = bytes(range(256)) + bytes(44)
        w.pipeline.receive(1, udp_frame(payload=payload, ident=77))
        frags = w.out.on(0)
        self.assertEqual(len(frags), 3)
        data = b""
        for n, f in enumerate(frags):
            self.assertLessEqual(len(f), 200)
            outer = IPv4.parse(f, 14)
            self.assertEqual((outer.ident, outer.total_length), (77, len(f) - 14))
            self.assertEqual(checksum(f[14:34]), 0)
            self.assertEqual(int.from_bytes(f[38:40], "big"), len(f) - 34)  # UDP length
            inner = IPv4.parse(f, 46)
            self.assertEqual(checksum(f[46:66]), 0)
            self.assertEqual(inner.frag & 0x1FFF, len(data) // 8)
            self.assertEqual(bool(inner.frag & 0x2000), n < 2)
            data += f[66:]
        self.assertEqual(data, udp_frame(payload=payload)[34:])


IPv4_DF = 0x4000


class ArpTests(SynchronousTestCase):
    def request(self, tpa: str, dst: str = ROUTER_MAC) -> bytes:
        arp = ARP(1, mac(VM_MAC), ip_bytes("1.1.1.1"), bytes(6), ip_bytes(tpa)).pack()
        return Ethernet(mac(dst), mac(VM_MAC), ETH_P_ARP).pack() + arp + bytes(18)

    def test_proxy_reply_layout(self) -> None:
        w = World()
        w.vif(1, mac_=ROUTER_MAC)
        w.encap_nh(12, 1)
        w.bridge_route(VM_MAC, 12)
        w.nh(20, C.NH_RESOLVE)
        w.route("1.1.1.0", 24, 20, label_flags=0x2)  # ARP_PROXY
        w.pipeline.receive(1, self.request("1.1.1.9"))
        (reply,) = w.out.on(1)
        self.assertEqual(len(reply), 14 + 28 + 18)  # request padding kept
        self.assertEqual(Ethernet.parse(reply), Ethernet(mac(VM_MAC), mac(ROUTER_MAC), ETH_P_ARP))
        self.assertEqual(
            ARP.parse(reply, 14),
            ARP(2, mac(ROUTER_MAC), ip_bytes("1.1.1.9"), mac(VM_MAC), ip_bytes("1.1.1.1")),
        )
        self.assertEqual(w.pipeline.vrf_stats[(0, "arp_virtual_proxy")], 1)

    def test_invalid_arp_and_unproxied(self) -> None:
        w = World()
        w.vif(1, mac_=ROUTER_MAC)
        bad = bytearray(self.request("1.1.1.9"))
        bad[20:22] = b"\x00\x07"  # op 7
        w.pipeline.receive(1, bytes(bad))
        self.assertEqual(w.drops(), {"vds_invalid_arp": 1})
        # no proxy flag, no bridge entry: the unicast request is bridged and finds nothing
        w.pipeline.receive(1, self.request("1.1.1.9"))
        self.assertEqual(w.drops()["vds_l2_no_route"], 1)
        self.assertEqual(w.pipeline.vrf_stats[(0, "arp_virtual_flood")], 1)


class MirrorTests(SynchronousTestCase):
    def test_port_mirror_rx_dynamic_metadata(self) -> None:
        w = World()
        bridged(w)
        w.vif(3, mac_="de:ad:be:ef:00:03")
        w.encap_nh(13, 3)
        w.request("vr_mirror_req", mirr_index=2, mirr_nhid=13, mirr_flags=D.MIRROR_FLAG_DYNAMIC)
        w.vif(1, mac_=VM_MAC, flags=C.VIF_FLAG_MIRROR_RX, vifr_mir_id=2)
        w.pipeline.receive(1, F)
        self.assertEqual(w.out.on(3), [b"\xff\x00" + F])
        self.assertEqual(w.out.on(2), [F])
        self.assertEqual(w.out.frames[0][0], 3)  # the copy first


def agent_frame(ifindex: int, vrf: int, cmd: int, inner: bytes, param: int = 0) -> bytes:
    """pkt0 from the agent: Ethernet, agent_hdr (30 bytes), the packet."""
    eth = mac("00:00:00:00:00:02") + mac("00:00:00:00:00:01") + b"\x08\x00"
    hdr = struct.pack("!HHHII", ifindex, vrf, cmd, param, param) + bytes(16)
    return eth + hdr + inner


class AgentAndHostTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.w = World()
        bridged(self.w)
        self.w.vif(5, C.VIF_TYPE_AGENT, mac_="00:00:00:00:00:05")

    def test_route_injects_as_if_received(self) -> None:
        w = self.w
        w.pipeline.receive(5, agent_frame(1, 0, 1, F))
        self.assertEqual(w.out.on(2), [F])
        self.assertEqual(w.counters(5)["ipackets"], 1)

    def test_switch_transmits_and_refusals(self) -> None:
        w = self.w
        w.pipeline.receive(5, agent_frame(1, 0, 0, F))
        self.assertEqual(w.out.on(1), [F])
        w.pipeline.receive(5, agent_frame(9, 0, 0, F))
        self.assertEqual(w.drops(), {"vds_invalid_if": 1})
        w.pipeline.receive(5, agent_frame(1, 0, 7, F))
        self.assertEqual(w.drops()["vds_invalid_packet"], 1)
        w.pipeline.receive(5, agent_frame(1, 0, 1, F)[:50])
        self.assertEqual(w.drops()["vds_invalid_packet"], 2)
        self.assertEqual(w.counters(5)["ierrors"], 1)
        self.assertEqual(len(w.out.frames), 1)

    def test_dhcp_trapped(self) -> None:
        w = self.w
        w.vif(3, mac_="de:ad:be:ef:00:03", flags=C.VIF_FLAG_DHCP_ENABLED)
        dhcp = udp_frame(dst="ff:ff:ff:ff:ff:ff", dip="255.255.255.255", sport=68, dport=67)
        w.pipeline.receive(3, dhcp)
        ((vif, _vrf, code, *_rest, frame),) = w.trap.traps
        self.assertEqual((vif, code, frame), (3, D.TRAP_L3_PROTOCOLS, dhcp))
        self.assertEqual(w.out.frames, [])

    def test_broadcast_arp_proxied_by_the_flood_composite(self) -> None:
        w = self.w
        w.vif(3, mac_=ROUTER_MAC)
        w.nh(16, C.NH_COMPOSITE, flags=C.NH_FLAG_VALID | C.NH_FLAG_MCAST, nhr_family=C.AF_BRIDGE,
             nhr_nh_list=[12], nhr_label_list=[0])  # fmt: skip
        w.bridge_route("ff:ff:ff:ff:ff:ff", 16)
        w.encap_nh(17, 3)
        w.bridge_route(VM_MAC, 17)
        w.nh(20, C.NH_RESOLVE)
        w.route("1.1.1.0", 24, 20, label_flags=0x2)
        req = ArpTests().request("1.1.1.9", dst="ff:ff:ff:ff:ff:ff")
        w.pipeline.receive(3, req)
        (reply,) = w.out.on(3)
        self.assertEqual(ARP.parse(reply, 14).op, 2)
        self.assertEqual(w.out.on(2), [])  # answered, not flooded
        self.assertEqual(w.drops(), {})

    def test_vhost_and_fabric_cross_connect(self) -> None:
        w = World()
        w.vif(0, C.VIF_TYPE_PHYSICAL, mac_="00:11:11:11:11:11")
        w.vif(1, C.VIF_TYPE_HOST, mac_="00:11:11:11:11:11")
        out = udp_frame(src="00:11:11:11:11:11", dst="00:99:99:99:99:99", dip="10.9.9.9")
        w.pipeline.receive(1, out)  # no route for it in the fabric VRF: NH 0 discards
        self.assertEqual(w.drops(), {"vds_discard": 1})
        bcast = udp_frame(dst="ff:ff:ff:ff:ff:ff")
        w.pipeline.receive(0, bcast)
        self.assertEqual(w.out.on(1), [bcast])
        w.pipeline.receive(1, bcast)
        self.assertEqual(w.out.on(0), [bcast])
        self.assertEqual((w.counters(0)["opackets"], w.counters(1)["opackets"]), (1, 1))

    def test_sub_interface(self) -> None:
        w = World()
        w.vif(1, mac_=VM_MAC)
        w.vif(6, C.VIF_TYPE_VIRTUAL_VLAN, mac_=VM_MAC, vrf=3, vifr_parent_vif_idx=1,
              vifr_vlan_id=7, vifr_ovlan_id=7)  # fmt: skip
        w.encap_nh(18, 6)
        w.bridge_route("de:ad:be:ef:00:01", 18, vrf=3)
        tagged = F[:12] + b"\x81\x00\x00\x07" + F[12:]
        w.pipeline.receive(1, tagged)  # the parent's port: VLAN 7 belongs to vif 6
        self.assertEqual(w.out.on(1), [tagged])  # out through the parent with its tag
        self.assertEqual(w.counters(1)["ipackets"], 0)
        self.assertEqual(w.counters(6)["ipackets"], 1)
        w.pipeline.receive(6, F)  # untagged on a sub-interface
        self.assertEqual(w.drops(), {"vds_pull": 1})


def tcp_frame(a_to_b: bool, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    """TCP between A (1.1.1.1:1000 on vif 1) and B (2.2.2.2:80 on vif 2)."""
    sip, dip, sport, dport = ("1.1.1.1", "2.2.2.2", 1000, 80)
    dst, src = "de:ad:be:ef:00:01", VM_MAC
    if not a_to_b:
        sip, dip, sport, dport, dst, src = dip, sip, dport, sport, src, dst
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 1000, 0, 0) + payload
    ip = IPv4(ip_bytes(sip), ip_bytes(dip), 6, 20 + len(tcp)).pack()
    return mac(dst) + mac(src) + b"\x08\x00" + ip + tcp


def port_word(port: int) -> int:
    """A port as fr_flow_sport carries it: the wire bytes read little-endian."""
    return struct.unpack("<H", port.to_bytes(2, "big"))[0]


class TcpAndIpv6FlowTests(SynchronousTestCase):
    def pair(self) -> tuple[World, int, int]:
        w = World()
        bridged(w, policy=True)
        w.encap_nh(15, 1)
        w.bridge_route(VM_MAC, 15)
        a, b = ip_bytes("1.1.1.1"), ip_bytes("2.2.2.2")
        common = {"fr_flow_proto": 6}
        fwd = w.flow(**common, fr_flow_sport=port_word(1000), fr_flow_dport=port_word(80))
        rev = w.flow(
            **common,
            fr_flow_sip_l=struct.unpack("<I", b)[0],
            fr_flow_dip_l=struct.unpack("<I", a)[0],
            fr_flow_sport=port_word(80),
            fr_flow_dport=port_word(1000),
            fr_flags=L.FLAG_ACTIVE | L.RFLOW_VALID,
            fr_rindex=fwd.fresp_index,
        )
        w.flow(
            **common,
            fr_index=fwd.fresp_index,
            fr_gen_id=fwd.fresp_gen_id,
            fr_flow_sport=port_word(1000),
            fr_flow_dport=port_word(80),
            fr_flags=L.FLAG_ACTIVE | L.RFLOW_VALID,
            fr_rindex=rev.fresp_index,
        )
        return w, fwd.fresp_index, rev.fresp_index

    def test_handshake_close_and_eviction(self) -> None:
        w, f, r = self.pair()
        syn, ack, fin = 0x02, 0x10, 0x01
        w.pipeline.receive(1, tcp_frame(True, 100, 0, syn))
        w.pipeline.receive(2, tcp_frame(False, 500, 101, syn | ack))
        state = w.flows.tcp_state
        self.assertEqual(state(f)[1], 100)
        self.assertTrue(state(f)[0] & L.TCP_ESTABLISHED)
        self.assertTrue(state(r)[0] & L.TCP_ESTABLISHED_R)
        w.pipeline.receive(1, tcp_frame(True, 101, 501, ack))
        self.assertTrue(state(f)[0] & L.TCP_ESTABLISHED_R)
        self.assertTrue(state(r)[0] & L.TCP_ESTABLISHED)
        # A closes (FIN with 5 bytes), B acks it and closes, A acks: both half closed
        w.pipeline.receive(1, tcp_frame(True, 101, 501, fin | ack, b"hello"))
        self.assertEqual(state(f)[1], 106)
        self.assertTrue(state(r)[0] & L.TCP_FIN_R)
        w.pipeline.receive(2, tcp_frame(False, 501, 107, fin | ack))
        self.assertTrue(state(f)[0] & L.TCP_HALF_CLOSE)
        self.assertFalse(w.flows.entry(f).flags & L.FLAG_EVICTED)
        w.pipeline.receive(1, tcp_frame(True, 107, 502, ack))  # both DEAD: evicted
        self.assertTrue(w.flows.entry(f).flags & L.FLAG_EVICTED)
        self.assertTrue(w.flows.entry(r).flags & L.FLAG_EVICTED)
        self.assertEqual((len(w.out.on(1)), len(w.out.on(2))), (2, 4))  # all forwarded
        self.assertEqual(w.drops(), {})

    def test_ipv6_flow_hold_and_forward(self) -> None:
        w = World()
        bridged(w, policy=True)
        src, dst = (
            bytes.fromhex("20010db8" + "00" * 11 + "01"),
            bytes.fromhex("20010db8" + "00" * 11 + "02"),
        )
        udp = struct.pack("!HHHH", 1000, 2000, 12, 0) + b"abcd"
        v6 = mac("de:ad:be:ef:00:01") + mac(VM_MAC) + b"\x86\xdd"
        v6 += struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + src + dst + udp
        w.pipeline.receive(1, v6)
        ((_, _, code, index, *_),) = w.trap.traps
        self.assertEqual(code, D.TRAP_FLOW_MISS)
        e = w.flows.entry(index)
        self.assertEqual((e.family, e.proto, e.sport, e.dport), (C.AF_INET6, 17, 1000, 2000))
        su, sl = struct.unpack("<QQ", src)
        du, dl = struct.unpack("<QQ", dst)
        w.flow(
            fr_index=index, fr_gen_id=e.gen_id, fr_family=C.AF_INET6, fr_flow_sip_u=su,
            fr_flow_sip_l=sl, fr_flow_dip_u=du, fr_flow_dip_l=dl,
            fr_flow_sport=port_word(1000), fr_flow_dport=port_word(2000),
        )  # fmt: skip
        self.assertEqual(w.out.on(2), [v6])
        w.flow(
            fr_index=index, fr_gen_id=e.gen_id, fr_family=C.AF_INET6, fr_flow_sip_u=su,
            fr_flow_sip_l=sl, fr_flow_dip_u=du, fr_flow_dip_l=dl, fr_action=L.ACTION_NAT,
            fr_flow_sport=port_word(1000), fr_flow_dport=port_word(2000),
        )  # fmt: skip
        w.pipeline.receive(1, v6)
        self.assertEqual(w.drops(), {"vds_flow_action_invalid": 1})
        self.assertEqual(len(w.out.on(2)), 1)


class RareDropTests(SynchronousTestCase):
    def test_evict_candidate(self) -> None:
        w = World()
        bridged(w, policy=True)
        index = w.flow().fresp_index
        # another forwarding core marked it (the flags word of the shared entry)
        at = index * L.FLOW_ENTRY_SIZE + L.OFF_FE_FLAGS
        flags = struct.unpack_from("<H", w.flows.buf, at)[0]
        struct.pack_into("<H", w.flows.buf, at, flags | L.FLAG_EVICT_CANDIDATE)
        w.pipeline.receive(1, F)
        self.assertEqual(w.drops(), {"vds_flow_evict": 1})
        self.assertEqual(w.out.frames, [])

    def test_mtu_below_one_fragment(self) -> None:
        w = World()
        routed(w)
        w.vif(0, C.VIF_TYPE_PHYSICAL, mac_="00:11:11:11:11:11", mtu=14 + 60)
        w.tunnel_nh(20, 0, C.NH_FLAG_TUNNEL_UDP_MPLS)
        w.route("2.2.2.2", 32, 20, label=48)
        w.pipeline.receive(1, F)
        self.assertEqual(w.drops(), {"vds_frag_err": 1})
        self.assertEqual(w.out.frames, [])

    def test_multicast_with_df_too_big_for_the_tunnel(self) -> None:
        w = World()
        bridged(w)
        w.vif(0, C.VIF_TYPE_PHYSICAL, mac_="00:11:11:11:11:11", mtu=14 + 200)
        w.tunnel_nh(20, 0, C.NH_FLAG_TUNNEL_GRE)
        w.nh(16, C.NH_COMPOSITE, flags=C.NH_FLAG_VALID | C.NH_FLAG_MCAST, nhr_family=C.AF_BRIDGE,
             nhr_nh_list=[20], nhr_label_list=[128])  # fmt: skip
        w.bridge_route("ff:ff:ff:ff:ff:ff", 16)
        w.pipeline.receive(1, udp_frame(dst="ff:ff:ff:ff:ff:ff", payload=bytes(300), frag=IPv4_DF))
        self.assertEqual(w.drops(), {"vds_mcast_df_bit": 1, "vds_cloned_original": 1})
        w.pipeline.receive(1, udp_frame(dst="ff:ff:ff:ff:ff:ff"))  # small: label 128 to the fabric
        (wire,) = w.out.on(0)
        self.assertEqual(wire[38:42].hex(), "00080140")


class ResetTests(SynchronousTestCase):
    def test_reset_keeps_the_pipeline_attached(self) -> None:
        """vrouter_ops RESET over the real shared-memory files: held packets go, replay stays."""
        run_dir = tempfile.mkdtemp(prefix="pp-reset-")
        self.addCleanup(shutil.rmtree, run_dir, True)
        w = World()
        shared = install(w.dp, run_dir, 1024, 1024)
        self.addCleanup(shared.close)
        w.pipeline = type(w.pipeline)(w.dp, w.out, w.trap, flows=shared.flows)
        w.flows = shared.flows
        bridged(w, policy=True)
        w.pipeline.receive(1, F)
        self.assertEqual(len(w.pipeline.held), 1)
        w.dp.handle(make("vrouter_ops", {"h_op": C.OP_RESET}))
        self.assertEqual(w.pipeline.held, {})
        self.assertEqual(w.dp.tables.interfaces, {})
        bridged(w, policy=True)
        w.pipeline.receive(1, F)
        (index,) = w.pipeline.held
        w.flow(fr_index=index, fr_gen_id=shared.flows.entry(index).gen_id)
        self.assertEqual(w.out.on(2), [F])


class MssTests(SynchronousTestCase):
    def syn(self, mss: int, pad_nop: bool = False) -> bytes:
        opts = (b"\x01" if pad_nop else b"") + b"\x02\x04" + mss.to_bytes(2, "big")
        opts += b"\x00" * (-len(opts) % 4)
        tcp = struct.pack("!HHIIBBHHH", 1000, 80, 1, 0, (5 + len(opts) // 4) << 4, 0x02, 1000, 0, 0)
        tcp += opts
        ip = IPv4(ip_bytes("1.1.1.1"), ip_bytes("2.2.2.2"), 6, 20 + len(tcp))
        seg = bytearray(tcp)
        seg[16:18] = checksum(seg, ip.pseudo_sum(len(seg))).to_bytes(2, "big")
        return mac("de:ad:be:ef:00:01") + mac(VM_MAC) + b"\x08\x00" + ip.pack() + bytes(seg)

    def test_syn_mss_clamped_to_the_fabric(self) -> None:
        w = World()
        bridged(w)
        w.pipeline.receive(1, self.syn(1460))
        self.assertEqual(w.out.on(2), [self.syn(1460)])  # no physical vif: untouched
        w.vif(0, C.VIF_TYPE_PHYSICAL, mac_="00:11:11:11:11:11", mtu=1514)
        for nop in (False, True):
            w.pipeline.receive(1, self.syn(1460, nop))
            out = w.out.on(2)[-1]
            at = 34 + 20 + (1 if nop else 0)
            # port MTU 1500 - 62 (bridged overlay) - 20 - 20 = 1398
            self.assertEqual(int.from_bytes(out[at + 2 : at + 4], "big"), 1398)
            ip = IPv4.parse(out, 14)
            self.assertEqual(checksum(out[34:], ip.pseudo_sum(len(out) - 34)), 0)
        w.pipeline.receive(1, self.syn(1200))
        self.assertEqual(w.out.on(2)[-1], self.syn(1200))  # already small enough


class BufferTypeTests(SynchronousTestCase):
    def test_bytearray_and_memoryview_frames(self) -> None:
        """The port layer may hand in its own (reused) buffer: outputs do not alias it."""
        for make_buf in (bytearray, lambda b: memoryview(bytearray(b))):
            w = World()
            routed(w)
            w.tunnel_nh(20, 2, C.NH_FLAG_TUNNEL_UDP_MPLS)
            w.route("2.2.2.2", 32, 20, label=48)
            w.encap_nh(12, 2)
            w.bridge_route("de:ad:be:ef:00:07", 12)
            buf = make_buf(udp_frame(dst="de:ad:be:ef:00:01"))
            w.pipeline.receive(1, buf)
            bridged_buf = make_buf(udp_frame(dst="de:ad:be:ef:00:07"))
            w.pipeline.receive(1, bridged_buf)
            buf[:] = bytes(len(buf))  # the port reuses its buffers
            bridged_buf[:] = bytes(len(bridged_buf))
            tunnelled, bridged_out = w.out.on(2)
            self.assertEqual(tunnelled[-len(F) + 14 :][:8], bytes.fromhex("4500006c00010000"))
            self.assertEqual(bridged_out, udp_frame(dst="de:ad:be:ef:00:07"))


class FabricArpTests(SynchronousTestCase):
    def test_underlay_garp_trapped_and_cross_connected(self) -> None:
        w = World()
        w.vif(0, C.VIF_TYPE_PHYSICAL, mac_="00:11:11:11:11:11")
        w.vif(1, C.VIF_TYPE_HOST, mac_="00:11:11:11:11:11")
        garp = ArpTests().request("1.1.1.1", dst="ff:ff:ff:ff:ff:ff")
        w.pipeline.receive(0, garp)
        self.assertEqual(w.out.on(1), [garp])
        ((vif, _, code, *_rest, frame),) = w.trap.traps
        self.assertEqual((vif, code, frame), (0, D.TRAP_ARP, garp))
        # an ordinary request from the fabric for an unknown address goes to the host
        w.pipeline.receive(0, ArpTests().request("10.0.0.9", dst="ff:ff:ff:ff:ff:ff"))
        self.assertEqual(len(w.out.on(1)), 2)
        self.assertEqual(w.drops(), {})


class VlanTciTests(SynchronousTestCase):
    def test_physical_tx_tagged_and_port_mtu(self) -> None:
        w = World(vlan_tci=5)
        routed(w)
        w.vif(0, C.VIF_TYPE_PHYSICAL, mac_="00:11:11:11:11:11", mtu=14 + 150)
        w.tunnel_nh(20, 0, C.NH_FLAG_TUNNEL_GRE)
        w.route("2.2.2.2", 32, 20, label=48)
        w.pipeline.receive(1, F)  # 108-byte IP packet + 28 = 136 <= 150 - 4
        (wire,) = w.out.on(0)
        self.assertEqual(wire[12:16], b"\x81\x00\x00\x05")
        self.assertEqual(wire[16:18], b"\x08\x00")
        self.assertEqual(len(wire), 14 + 4 + 20 + 4 + 4 + 108)
        w.pipeline.receive(1, udp_frame(payload=bytes(92), frag=IPv4_DF))  # 120 + 28 > 146
        self.assertEqual([t[2:4] for t in w.trap.traps], [(D.TRAP_HANDLE_DF, 146 - 28)])

"""IPv6 neighbour discovery answered by the datapath, frame by frame.

A VM's neighbour solicitation is answered from the inet6 route of its target when the
route has ARP_PROXY (or the vif MAC_PROXY): the advertisement goes back to the VM with
the route's stitched MAC or our own; otherwise, and for duplicate address detection,
the solicitation is flooded. In the multicast next hop router solicitations and DHCPv6
go to the agent, advertisements to the agent and to the flood.
"""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.datapath import constants as C
from vrtwist.datapath import pipeline_defs as D
from vrtwist.datapath.testing import World, mac
from vrtwist.packet.checksum import checksum
from vrtwist.packet.headers import ETH_P_IPV6, ICMP, UDP, Ethernet, IPv6, l4_checksum

VM_MAC = "de:ad:be:ef:00:02"
PEER_MAC = "de:ad:be:ef:00:01"
ROUTER_MAC = "00:00:5e:00:01:00"
VM_IP = "fd00::1"
PEER_IP = "fd00::2"
ARP_PROXY = 0x2


def ip6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def solicited_node(target: str) -> str:
    return str(ipaddress.IPv6Address(b"\xff\x02" + bytes(9) + b"\x01\xff" + ip6(target)[13:]))


def icmp6_frame(
    icmp: bytes,
    *,
    src: str = VM_IP,
    dst: str | None = None,
    src_mac: str = VM_MAC,
    dst_mac: str | None = None,
) -> bytes:
    """Ethernet + IPv6 (hop limit 255) + the ICMPv6 message, checksum filled in."""
    dst = dst or "ff02::1"
    ip = IPv6(ip6(src), ip6(dst), 58, len(icmp), 255)
    csum = l4_checksum(ip, icmp)
    icmp = icmp[:2] + csum.to_bytes(2, "big") + icmp[4:]
    if dst_mac is None:
        dst_mac = "33:33:" + ip6(dst)[12:].hex(":")
    return Ethernet(mac(dst_mac), mac(src_mac), ETH_P_IPV6).pack() + ip.pack() + icmp


def ns_frame(target: str = PEER_IP, *, src: str = VM_IP, **more: str) -> bytes:
    body = ICMP(135, 0).pack() + ip6(target)
    if src != "::":  # a DAD probe has no source link-layer option
        body += b"\x01\x01" + mac(more.get("src_mac", VM_MAC))
    more.setdefault("dst", solicited_node(target))
    return icmp6_frame(body, src=src, **more)


def nd_world(*, vif1_flags: int = 0) -> World:
    """VM on vif 1 (its MAC bridged to NH 17), peer VM on vif 2, flood composite to vif 2,
    our own MAC an L2_RCV entry."""
    w = World()
    w.vif(1, flags=vif1_flags)  # a VM vif carries the VRRP MAC
    w.vif(2)
    w.encap_nh(12, 2)
    w.encap_nh(17, 1)
    w.bridge_route(PEER_MAC, 12)
    w.bridge_route(VM_MAC, 17)
    w.nh(16, C.NH_COMPOSITE, flags=C.NH_FLAG_VALID | C.NH_FLAG_MCAST, nhr_family=C.AF_BRIDGE,
         nhr_nh_list=[12, 17], nhr_label_list=[0, 0])  # fmt: skip
    w.bridge_route("ff:ff:ff:ff:ff:ff", 16)
    w.nh(13, C.NH_L2_RCV, nhr_family=0)
    w.bridge_route(ROUTER_MAC, 13)
    return w


def route6(w: World, prefix: str, plen: int, nh_id: int, *, flags: int = 0, mac_: str = "") -> None:
    w.request(
        "vr_route_req",
        rtr_family=C.AF_INET6,
        rtr_vrf_id=0,
        rtr_prefix=ip6(prefix),
        rtr_prefix_len=plen,
        rtr_nh_id=nh_id,
        rtr_label=0,
        rtr_label_flags=flags,
        **({"rtr_mac": mac(mac_)} if mac_ else {}),
    )


class NeighbourProxyTests(SynchronousTestCase):
    def assert_advertisement(self, frame: bytes, ns: bytes, answer_mac: str, flags: int) -> None:
        """The NA as ``vr_neighbor_proxy`` builds it over ``ns``."""
        eth = Ethernet.parse(frame)
        self.assertEqual((eth.dst, eth.src, eth.ethertype), (mac(VM_MAC), mac(answer_mac), 0x86DD))
        ip = IPv6.parse(frame, 14)
        asked = IPv6.parse(ns, 14)
        self.assertEqual((ip.src, ip.dst), (ns[14 + 48 : 14 + 64], asked.src))
        self.assertEqual((ip.hop_limit, ip.payload_length, ip.next_header), (255, 32, 58))
        icmp = frame[54:]
        self.assertEqual(len(frame), len(ns))
        self.assertEqual((icmp[0], icmp[1], icmp[4], icmp[5:8]), (136, 0, flags, bytes(3)))
        self.assertEqual(icmp[8:24], ns[14 + 48 : 14 + 64])  # the target, unchanged
        self.assertEqual(icmp[24:32], b"\x02\x01" + mac(answer_mac))
        self.assertEqual(checksum(icmp, ip.pseudo_sum(len(icmp))), 0)

    def test_solicitation_answered_from_a_proxy_route(self) -> None:
        w = nd_world()
        route6(w, PEER_IP, 128, 12, flags=ARP_PROXY)
        ns = ns_frame()
        w.pipeline.receive(1, ns)
        (na,) = w.out.on(1)
        self.assert_advertisement(na, ns, ROUTER_MAC, 0xC0)  # Solicited + Router: our MAC
        self.assertEqual(w.out.on(2), [])  # answered, not flooded
        self.assertEqual(w.trap.traps, [])
        self.assertEqual(w.drops(), {})
        self.assertEqual(w.pipeline.vrf_stats[(0, "arp_virtual_proxy")], 1)

    def test_stitched_route_answers_with_the_bridge_mac(self) -> None:
        w = nd_world()
        route6(w, PEER_IP, 128, 12, flags=ARP_PROXY, mac_=PEER_MAC)
        ns = ns_frame()
        w.pipeline.receive(1, ns)
        (na,) = w.out.on(1)
        self.assert_advertisement(na, ns, PEER_MAC, 0x40)  # Solicited only
        self.assertEqual(w.pipeline.vrf_stats[(0, "arp_virtual_stitch")], 1)

    def test_unicast_solicitation_to_the_router_mac(self) -> None:
        """nh_l2_rcv: neighbour unreachability detection aimed at our MAC."""
        w = nd_world()
        route6(w, PEER_IP, 128, 12, flags=ARP_PROXY)
        ns = ns_frame(dst=PEER_IP, dst_mac=ROUTER_MAC)
        w.pipeline.receive(1, ns)
        (na,) = w.out.on(1)
        self.assert_advertisement(na, ns, ROUTER_MAC, 0xC0)
        self.assertEqual(w.out.on(2), [])

    def test_mac_proxy_vif_answers_without_a_broadcast_entry(self) -> None:
        w = World()
        w.vif(1, mac_="00:00:5e:00:01:09", flags=C.VIF_FLAG_MAC_PROXY)
        ns = ns_frame()
        w.pipeline.receive(1, ns)
        (na,) = w.out.on(1)  # MAC_PROXY: straight back out of the vif
        self.assert_advertisement(na, ns, "00:00:5e:00:01:09", 0xC0)

    def test_flooded_without_proxy_for_dad_and_with_arp_flood(self) -> None:
        w = nd_world()
        route6(w, PEER_IP, 128, 12)  # no ARP_PROXY: the owner answers itself
        plain = ns_frame()
        w.pipeline.receive(1, plain)
        self.assertEqual(w.out.on(2), [plain])
        self.assertEqual(w.out.on(1), [])  # never back to the sender
        route6(w, PEER_IP, 128, 12, flags=ARP_PROXY)
        dad = ns_frame(src="::")
        w.pipeline.receive(1, dad)
        self.assertEqual(w.out.on(2), [plain, dad])  # duplicate address detection: bridged
        route6(w, PEER_IP, 128, 12, flags=ARP_PROXY | 0x8)  # ARP_FLOOD, not stitched
        w.pipeline.receive(1, plain)
        self.assertEqual(w.out.on(2), [plain, dad, plain])
        self.assertEqual(w.out.on(1), [])
        self.assertEqual(w.drops(), {"vds_cloned_original": 3})

    def test_no_arp_proxy_vif_drops(self) -> None:
        w = nd_world(vif1_flags=C.VIF_FLAG_NO_ARP_PROXY)
        route6(w, PEER_IP, 128, 12, flags=ARP_PROXY)
        w.pipeline.receive(1, ns_frame())
        self.assertEqual(w.out.frames, [])
        self.assertEqual(w.drops(), {"vds_invalid_arp": 1})

    def test_short_or_malformed_solicitation_is_only_bridged(self) -> None:
        w = nd_world()
        route6(w, PEER_IP, 128, 12, flags=ARP_PROXY)
        truncated = ns_frame()[:-8]  # no link-layer option left to answer to
        w.pipeline.receive(1, truncated)
        self.assertEqual(w.out.on(2), [truncated])
        self.assertEqual(w.out.on(1), [])


class MulticastControlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.w = nd_world()

    def test_router_solicitation_goes_to_the_agent_only(self) -> None:
        rs = icmp6_frame(ICMP(133, 0).pack(), dst="ff02::2")
        self.w.pipeline.receive(1, rs)
        ((vif, vrf, code, *_rest, frame),) = self.w.trap.traps
        self.assertEqual((vif, vrf, code, frame), (1, 0, D.TRAP_L3_PROTOCOLS, rs))
        self.assertEqual(self.w.out.frames, [])

    def test_advertisement_is_trapped_and_flooded(self) -> None:
        na = icmp6_frame(ICMP(136, 0, rest=0x20000000).pack() + ip6(VM_IP), dst="ff02::1")
        self.w.pipeline.receive(1, na)
        self.assertEqual([t[2] for t in self.w.trap.traps], [D.TRAP_L3_PROTOCOLS])
        self.assertEqual(self.w.out.on(2), [na])

    def test_dhcpv6_trapped_and_flooded_only_with_flood_dhcp(self) -> None:
        w = self.w
        udp = UDP(546, 547, 8 + 4).pack() + b"\x01\x00\x00\x01"
        ip = IPv6(ip6("fe80::1"), ip6("ff02::1:2"), 17, len(udp), 1)
        frame = Ethernet(mac("33:33:00:01:00:02"), mac(VM_MAC), ETH_P_IPV6).pack() + ip.pack() + udp
        w.pipeline.receive(1, frame)
        self.assertEqual([t[2] for t in w.trap.traps], [D.TRAP_L3_PROTOCOLS])
        self.assertEqual(w.out.frames, [])
        w.request("vr_route_req", rtr_family=C.AF_BRIDGE, rtr_vrf_id=0, rtr_mac=mac(VM_MAC),
                  rtr_nh_id=17, rtr_label=0, rtr_label_flags=C.VR_BE_FLOOD_DHCP_FLAG)  # fmt: skip
        w.pipeline.receive(1, frame)
        self.assertEqual(len(w.trap.traps), 2)
        self.assertEqual(w.out.on(2), [frame])

    def test_other_ipv6_multicast_is_just_flooded(self) -> None:
        echo = icmp6_frame(ICMP(128, 0, rest=0x00010001).pack(), dst="ff02::1")
        self.w.pipeline.receive(1, echo)
        self.assertEqual(self.w.trap.traps, [])
        self.assertEqual(self.w.out.on(2), [echo])

"""Two nodes over a fabric, in memory: the agent's model of VRF 0 and tunnels, the fabric
MAC resolver, flow setup of tunnel packets, and ``--encap``.

``TwoNodeTests`` joins two real pipelines back to back on their fabric vifs, each
programmed with what its agent's model wants, with pkt0 in memory: ARP resolution of
the tunnel destination, then a VM's ping routed into MPLSoUDP/MPLSoGRE, decapsulated
and flowed on the other node.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.agent import tap
from vrtwist.agent.dpstate import NH, ROUTE, DatapathModel
from vrtwist.agent.packet.arp import (
    RESOLVE_AGING,
    RESOLVE_RETRY,
    RESOLVE_TRIES,
    FabricResolver,
    resolve_request,
)
from vrtwist.agent.packet.flows import AUDIT_TIMEOUT, FlowSetup, analyse, tunnel_payload
from vrtwist.agent.packet.service import held_indices
from vrtwist.agent.packet.services import PacketServices, VmPort
from vrtwist.datapath import constants as C
from vrtwist.packet.headers import ARP, ETH_P_ARP, ETH_P_IP, IPPROTO_ICMP, Ethernet, IPv4
from vrtwist.pkt0 import constants as K
from vrtwist.pkt0.codec import AgentHeader
from vrtwist.shmem import layout as L
from vrtwist.xmpp.agent_link import linkKwargsFromOptions, parse_encap

from .test_packet_services import VRRP, Node, icmp_echo, port

MAC_A = bytes.fromhex("0200c0000201")
MAC_B = bytes.fromhex("0200c0000202")


def _ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


class ModelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.m = DatapathModel(fabric_ip="192.0.2.1", fabric_name="nonexistent0")
        self.changed: list[Any] = []
        self.m.listeners.append(lambda keys: self.changed.extend(keys))
        self.m.portAdded(port(1, "10.1.1.3"))
        self.vrf = self.m.vrfNames()[0]

    def test_fabric_address_is_a_receive_route_answered_by_proxy(self) -> None:
        key = (ROUTE, C.AF_INET, 0, _ip("192.0.2.1"), 32)
        fields = self.m.desired[key][1]
        self.assertEqual(fields["rtr_label_flags"], C.VR_RT_ARP_PROXY_FLAG)
        nh = self.m.desired[(NH, fields["rtr_nh_id"])][1]
        self.assertEqual((nh["nhr_type"], nh["nhr_vrf"]), (C.NH_RCV, 0))
        self.assertEqual(self.m.fabric_rcv_nh, fields["rtr_nh_id"])

    def test_no_fabric_address_no_receive_route(self) -> None:
        m = DatapathModel(fabric_name="nonexistent0")
        self.assertFalse([k for k in m.desired if k[0] == ROUTE])
        self.assertEqual(m.fabric_rcv_nh, 0)

    def test_remote_route_is_routed_and_tunnel_gets_the_resolved_mac(self) -> None:
        m = self.m
        m.addRemoteRoute(self.vrf, "10.1.1.9", 32, "192.0.2.2", 20, mac="02:00:00:00:00:09")
        vrf_id = m.vrf_id_of(port(1, "x").vn_id)
        route = m.desired[(ROUTE, C.AF_INET, vrf_id, _ip("10.1.1.9"), 32)][1]
        # proxy ARP with the vif's MAC, no stitched remote MAC: the VM's frames are routed
        self.assertEqual(route["rtr_label_flags"],
                         C.VR_RT_LABEL_VALID_FLAG | C.VR_RT_ARP_PROXY_FLAG)
        self.assertEqual(route["rtr_mac"], [])
        nh_id = route["rtr_nh_id"]
        src = m.fabric_mac()
        self.assertEqual(bytes(m.desired[(NH, nh_id)][1]["nhr_encap"]),
                         bytes(6) + src + b"\x08\x00")
        self.assertEqual(m.tunnel_destinations(), {"192.0.2.2"})
        self.changed.clear()
        m.set_fabric_mac("192.0.2.2", MAC_B)
        self.assertEqual(self.changed, [(NH, nh_id)])
        self.assertEqual(bytes(m.desired[(NH, nh_id)][1]["nhr_encap"]), MAC_B + src + b"\x08\x00")
        # the same MAC again changes nothing; a second encapsulation starts resolved
        self.changed.clear()
        m.set_fabric_mac("192.0.2.2", MAC_B)
        self.assertEqual(self.changed, [])
        m.addRemoteRoute(self.vrf, "10.1.1.10", 32, "192.0.2.2", 21, encap="gre")
        gre = m.desired[(ROUTE, C.AF_INET, vrf_id, _ip("10.1.1.10"), 32)][1]["rtr_nh_id"]
        self.assertNotEqual(gre, nh_id)
        self.assertEqual(bytes(m.desired[(NH, gre)][1]["nhr_encap"])[:6], MAC_B)
        # forgotten: back to zeros
        m.set_fabric_mac("192.0.2.2", None)
        self.assertEqual(bytes(m.desired[(NH, nh_id)][1]["nhr_encap"])[:6], bytes(6))
        m.set_fabric_mac("192.0.2.2", None)  # unknown: nothing

    def test_bad_mac_is_refused_and_nothing_changes(self) -> None:
        m = self.m
        m.addRemoteRoute(self.vrf, "10.1.1.9", 32, "192.0.2.2", 20)
        before = dict(m.desired)
        self.changed.clear()
        self.assertRaises(ValueError, m.set_fabric_mac, "192.0.2.2", b"\x01\x02")
        self.assertEqual((m.desired, self.changed, m.fabric_macs), (before, [], {}))

    def test_tunnels_leave_the_destinations(self) -> None:
        m = self.m
        m.addRemoteRoute(self.vrf, "10.1.1.9", 32, "192.0.2.2", 20)
        m.deleteRemoteRoute(self.vrf, "10.1.1.9", 32)
        self.assertEqual(m.tunnel_destinations(), set())


class Sent:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.up = True

    def __call__(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return self.up


def arp_from(mac: bytes, ip: str, op: int = 2, to: bytes = MAC_A) -> bytes:
    return (Ethernet(to, mac, ETH_P_ARP).pack()
            + ARP(op, mac, _ip(ip), to, _ip("192.0.2.1")).pack())


class ResolverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sent = Sent()
        self.told: list[tuple[str, bytes | None]] = []
        self.r = FabricResolver(self.clock, self.sent, lambda: (MAC_A, _ip("192.0.2.1")),
                                lambda a, m: self.told.append((a, m)))

    def test_request_retries_reply_aging(self) -> None:
        r, clock = self.r, self.clock
        r.wanted(["192.0.2.2"])
        self.assertEqual(self.sent.frames, [resolve_request(MAC_A, _ip("192.0.2.1"),
                                                            _ip("192.0.2.2"))])
        req = Ethernet.parse(self.sent.frames[0])
        arp = ARP.parse(self.sent.frames[0], 14)
        self.assertEqual((req.dst, req.src, req.ethertype), (b"\xff" * 6, MAC_A, ETH_P_ARP))
        self.assertEqual((arp.op, arp.sha, arp.spa, arp.tha, arp.tpa),
                         (1, MAC_A, _ip("192.0.2.1"), bytes(6), _ip("192.0.2.2")))
        # no answer: one request every RESOLVE_RETRY, and it goes on past RESOLVE_TRIES
        clock.pump([RESOLVE_RETRY] * (RESOLVE_TRIES + 2))
        self.assertEqual(len(self.sent.frames), RESOLVE_TRIES + 3)
        r.wanted(["192.0.2.2"])  # the same set again sends nothing new
        self.assertEqual(len(self.sent.frames), RESOLVE_TRIES + 3)
        self.assertTrue(r.received(arp_from(MAC_B, "192.0.2.2")))
        self.assertEqual(self.told, [("192.0.2.2", MAC_B)])
        clock.advance(RESOLVE_AGING - 1)
        self.assertEqual(len(self.sent.frames), RESOLVE_TRIES + 3)  # quiet while fresh
        clock.advance(1)
        self.assertEqual(len(self.sent.frames), RESOLVE_TRIES + 4)  # one refresh, MAC kept
        self.assertEqual(r.macs, {"192.0.2.2": MAC_B})
        # the node answers from a new NIC: told once
        r.received(arp_from(MAC_A[:5] + b"\x09", "192.0.2.2"))
        self.assertEqual(self.told[-1], ("192.0.2.2", MAC_A[:5] + b"\x09"))
        # no longer wanted: forgotten, no more requests
        r.wanted([])
        self.assertEqual(self.told[-1], ("192.0.2.2", None))
        n = len(self.sent.frames)
        clock.advance(RESOLVE_AGING * 2)
        self.assertEqual(len(self.sent.frames), n)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_request_from_the_target_resolves_it_too(self) -> None:
        self.r.wanted(["192.0.2.2"])
        self.assertTrue(self.r.received(arp_from(MAC_B, "192.0.2.2", op=1, to=b"\xff" * 6)))
        self.assertEqual(self.r.macs, {"192.0.2.2": MAC_B})

    def test_ignored_arp_keeps_state(self) -> None:
        r = self.r
        r.wanted(["192.0.2.2"])
        for frame in (arp_from(MAC_B, "192.0.2.7"),  # not wanted
                      arp_from(bytes(6), "192.0.2.2"),  # zero MAC
                      arp_from(b"\x01" + MAC_B[1:], "192.0.2.2"),  # multicast MAC
                      arp_from(MAC_B, "192.0.2.2")[:30],  # cut
                      Ethernet(MAC_A, MAC_B, ETH_P_IP).pack() + bytes(28)):  # not ARP
            self.assertFalse(r.received(frame))
        self.assertEqual((r.macs, self.told), ({}, []))
        self.clock.advance(RESOLVE_RETRY)
        self.assertEqual(len(self.sent.frames), 2)  # still resolving

    def test_send_failure_keeps_retrying_and_stop_cancels(self) -> None:
        self.sent.up = False
        self.r.wanted(["192.0.2.2", "not-an-address"])
        self.assertEqual(self.r.sent, 0)
        self.sent.up = True
        self.clock.advance(RESOLVE_RETRY)
        self.assertEqual(self.r.sent, 1)
        self.r.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


def _mpls(label: int, inner: bytes) -> bytes:
    return ((label << 12) | 0x100 | 64).to_bytes(4, "big") + inner


def _outer(proto: int, payload: bytes, dst: str = "192.0.2.1") -> bytes:
    ip = IPv4(_ip("192.0.2.2"), _ip(dst), proto, 20 + len(payload), 9)
    return Ethernet(MAC_A, MAC_B, ETH_P_IP).pack() + ip.pack() + payload


INNER = icmp_echo(bytes.fromhex("020000000001"), "10.1.1.9", "10.1.1.3")[14:]


def _udp(dport: int, payload: bytes) -> bytes:
    return (4321).to_bytes(2, "big") + dport.to_bytes(2, "big") + \
        (8 + len(payload)).to_bytes(2, "big") + b"\x00\x00" + payload


class TunnelParseTests(SynchronousTestCase):
    def routes(self) -> Any:
        node = Node()
        return node.routes

    def test_each_encapsulation_reaches_the_inner_packet(self) -> None:
        eth = Ethernet(VRRP, MAC_B, ETH_P_IP).pack()
        frames = {
            "udp": _outer(17, _udp(6635, _mpls(20, INNER))),
            "udp-51234": _outer(17, _udp(51234, _mpls(20, INNER))),
            "gre": _outer(47, b"\x00\x00\x88\x47" + _mpls(20, INNER)),
            "gre-key": _outer(47, b"\x20\x00\x88\x47" + bytes(4) + _mpls(20, INNER)),
            "two labels": _outer(17, _udp(6635, (0xFFFFF << 12).to_bytes(4, "big")
                                         + _mpls(20, INNER))),
            "l2 label": _outer(17, _udp(6635, _mpls(20, eth + INNER))),
            "vxlan": _outer(17, _udp(4789, b"\x08" + bytes(7) + eth + INNER)),
        }
        for name, frame in frames.items():
            ip = IPv4.parse(frame, 14)
            at = tunnel_payload(frame, 14, ip)
            self.assertIsNotNone(at, name)
            self.assertEqual(frame[at:], INNER, name)

    def test_not_tunnels(self) -> None:
        for frame in (_outer(17, _udp(53, INNER)), _outer(47, b"\x00\x00\x08\x00" + INNER),
                      _outer(47, b"\x40\x00\x88\x47" + _mpls(20, INNER)), _outer(6, INNER)):
            self.assertIsNone(tunnel_payload(frame, 14, IPv4.parse(frame, 14)))

    def test_flow_of_a_tunnel_packet_is_the_inner_one_only_from_the_fabric(self) -> None:
        routes = self.routes()
        frame = _outer(17, _udp(6635, _mpls(20, INNER)))
        hdr = AgentHeader(0, 1, K.AGENT_TRAP_FLOW_MISS, 5, 3)
        d = analyse(hdr, frame, routes, (0, _ip("192.0.2.1")))
        self.assertEqual((d.forward.sip, d.forward.dip, d.forward.proto, d.forward.nh_id),
                         (_ip("10.1.1.9"), _ip("10.1.1.3"), IPPROTO_ICMP, 3))
        # not from the fabric vif, or not to this node: the outer packet is the flow
        for hdr2, fabric in ((AgentHeader(4, 1, K.AGENT_TRAP_FLOW_MISS, 5, 3),
                              (0, _ip("192.0.2.1"))), (hdr, (0, _ip("192.0.2.77"))), (hdr, None)):
            d = analyse(hdr2, frame, routes, fabric)
            self.assertEqual((d.forward.sip, d.forward.dip), (_ip("192.0.2.2"), _ip("192.0.2.1")))

    def test_bad_tunnel_packets_are_malformed(self) -> None:
        routes = self.routes()
        hdr = AgentHeader(0, 1, K.AGENT_TRAP_FLOW_MISS, 5, 3)
        flows = FlowSetup(routes, lambda req: None, lambda: 0.0,  # type: ignore[arg-type]
                          fabric=lambda: (0, _ip("192.0.2.1")))
        for frame in (_outer(17, _udp(6635, b"\x00\x01")),  # label cut
                      _outer(17, _udp(6635, (20 << 12).to_bytes(4, "big") * 3 + INNER)),
                      _outer(17, _udp(6635, _mpls(20, b"\x60" + bytes(40)))),  # not IPv4
                      _outer(17, _udp(4789, b"\x08" + bytes(7) + b"\x00" * 10))):
            flows.trap_received(hdr, frame)
        self.assertEqual(flows.counters.malformed, 4)
        self.assertEqual(flows.pairs, {})


class FabricArpDispatchTests(SynchronousTestCase):
    def test_only_non_vm_arp_reaches_the_resolver(self) -> None:
        got: list[tuple[int, bytes]] = []
        vm = VmPort(3, 1, bytes.fromhex("020000000001"), "10.1.1.3")
        services = PacketServices(lambda vif: None if vif == 0 else vm, lambda *a: True,
                                  lambda: VRRP,
                                  fabric_arp=lambda vif, f: got.append((vif, bytes(f))))
        frame = arp_from(MAC_B, "192.0.2.2")
        services.trap_received(AgentHeader(0, 0, K.AGENT_TRAP_ARP), memoryview(frame))
        services.trap_received(AgentHeader(3, 1, K.AGENT_TRAP_ARP), memoryview(frame))
        self.assertEqual(got, [(0, frame)])
        self.assertEqual(services.counters.arp, 2)


class FabricNode(Node):
    """A ``Node`` with the fabric MAC resolver a real agent runs."""

    resolver: FabricResolver


def fabric_node(fabric_ip: str, mac: bytes, ports: list[Any], vxlan: bool = False) -> FabricNode:
    """A packet-service ``Node`` with a fabric address and MAC, a resolver, and flow setup
    that parses tunnel packets; the datapath follows every change of the model."""
    node = FabricNode(fabric_ip, ports, mac, vxlan)
    node.resolver = FabricResolver(
        node.clock, lambda f: node.agent_end.send_switch(0, 0, f),
        lambda: (mac, _ip(fabric_ip)), node.model.set_fabric_mac)
    node.flows.fabric = lambda: (0, _ip(fabric_ip))
    node.services._fabric_arp = lambda vif, f: node.resolver.received(f)
    node.model.listeners.append(lambda keys: node.apply())
    return node


class TwoNodeTests(SynchronousTestCase):
    """Node A (192.0.2.1, VM 10.1.1.3) and node B (192.0.2.2, VM 10.1.1.5), fabric vifs
    joined back to back; each learns the other's VM route as a controller would give it."""

    def setUp(self) -> None:
        self.nodes()

    def nodes(self, vxlan: bool = False) -> None:
        self.a = fabric_node("192.0.2.1", MAC_A, [port(1, "10.1.1.3"), port(2, "10.1.1.4")],
                             vxlan)
        self.b = fabric_node("192.0.2.2", MAC_B, [port(3, "10.1.1.5"), port(4, "10.1.1.6")],
                             vxlan)

    def pump(self) -> None:
        """Move what each node sent on its fabric vif to the other, until quiet."""
        for _ in range(20):
            moved = False
            for src, dst in ((self.a, self.b), (self.b, self.a)):
                frames = src.world.out.on(0)
                src.world.out.frames = [(i, f) for i, f in src.world.out.frames if i != 0]
                for f in frames:
                    dst.world.pipeline.receive(0, f)
                    moved = True
            if not moved:
                return

    def learn(self, encap: str) -> None:
        for here, there in ((self.a, self.b), (self.b, self.a)):
            vrf = here.model.vrfNames()[0]
            ids = there.model.port_ids(there.ports[0].id)
            assert ids is not None
            # as the controller's items give them: the inet route's L3 label and the EVPN
            # route's L2 label, or over VXLAN the network's VNI for both
            vxlan = encap == "vxlan"
            assert there.ports[0].ip_address is not None
            here.model.addRemoteRoute(vrf, there.ports[0].ip_address, 32, there.fabric_ip,
                                      ids["vni"] if vxlan else ids["label"], encap=encap,
                                      l2_label=ids["vni"] if vxlan else ids["l2_label"])
            here.resolver.wanted(here.model.tunnel_destinations())

    def ping_across(self, encap: str) -> None:
        a, b = self.a, self.b
        self.learn(encap)
        self.pump()  # ARP requests and the datapath's proxy answers
        self.assertEqual(a.resolver.macs, {"192.0.2.2": MAC_B})
        self.assertEqual(b.resolver.macs, {"192.0.2.1": MAC_A})
        vm1 = a.vif_of(1)
        echo = icmp_echo(bytes.fromhex("020000000001"), "10.1.1.3", "10.1.1.5")
        a.world.pipeline.receive(vm1, echo)  # flow miss on A: set up, released
        (wire,) = a.world.out.on(0)
        self.assertEqual(wire[:12], MAC_B + MAC_A)
        self.pump()  # B: flow miss with the outer headers, set up, delivered to VM 3
        vm3 = b.vif_of(1)
        (got,) = b.world.out.on(vm3)
        self.assertEqual(got[:12], bytes.fromhex("020000000003") + VRRP)
        self.assertEqual(got[14 + 12 : 14 + 20], echo[14 + 12 : 14 + 20])
        # nothing dropped but the host's copy of each ARP reply (no host vif here)
        self.assertEqual((a.world.drops(), b.world.drops()),
                         ({"vds_invalid_if": 1}, {"vds_invalid_if": 1}))
        self.assertEqual((a.flows.counters.pairs, b.flows.counters.pairs), (1, 1))
        self.assertEqual(b.flows.counters.malformed, 0)
        return None

    def test_mpls_over_udp(self) -> None:
        self.ping_across("udp")

    def test_mpls_over_gre(self) -> None:
        self.ping_across("gre")

    def test_vxlan(self) -> None:
        """VXLAN: the label is the network's VNI; the routed packet travels as a frame to the VRRP
        MAC (EVPN type 5), is bridged into the VRF by the VNI's VRF-translate next hop and
        routed again to the VM."""
        self.nodes(vxlan=True)
        self.ping_across("vxlan")


class PathMtuTests(SynchronousTestCase):
    def test_too_big_for_the_tunnel_gets_frag_needed(self) -> None:
        """A DF packet too big for VXLAN over the fabric: the datapath traps it
        (cut to its first bytes) and the agent answers the VM with ICMP 3/4 and the MTU
        that leaves room for the tunnel and inner Ethernet headers; that size then fits."""
        t = TwoNodeTests("test_vxlan")
        t.nodes(vxlan=True)
        t.learn("vxlan")
        t.pump()
        a = t.a
        vm1 = a.vif_of(1)

        def echo(size: int) -> bytes:
            ip = IPv4(_ip("10.1.1.3"), _ip("10.1.1.5"), IPPROTO_ICMP, 28 + size, 1, 64,
                      frag=0x4000)
            body = bytearray(bytes((8, 0, 0, 0, 0, 7, 0, 1)) + bytes(size))
            return Ethernet(VRRP, bytes.fromhex("020000000001"), ETH_P_IP).pack() + \
                ip.pack() + bytes(body)

        a.world.pipeline.receive(vm1, echo(1472))
        (err,) = a.world.out.on(vm1)
        self.assertEqual(a.world.out.on(0), [])
        eth = Ethernet.parse(err)
        ip = IPv4.parse(err, 14)
        self.assertEqual((eth.dst, ip.dst, ip.proto), (bytes.fromhex("020000000001"),
                                                        _ip("10.1.1.3"), IPPROTO_ICMP))
        icmp = err[34:]
        mtu = int.from_bytes(icmp[6:8], "big")
        # the datapath's port MTU is the vif's less its Ethernet header (1486 here)
        port_mtu = a.world.dp.tables.interfaces[0].mtu - 14
        self.assertEqual((icmp[0], icmp[1], mtu), (3, 4, port_mtu - 36 - 14))
        quoted = IPv4.parse(icmp, 8)  # the quoted header (as routed: TTL 63)
        self.assertEqual((quoted.src, quoted.dst, quoted.total_length, quoted.ttl),
                         (_ip("10.1.1.3"), _ip("10.1.1.5"), 1500, 63))
        a.world.out.frames.clear()
        a.world.pipeline.receive(vm1, echo(mtu - 28))
        (wire,) = a.world.out.on(0)
        self.assertEqual(len(wire), 14 + port_mtu)


class HoldAuditTests(SynchronousTestCase):
    def test_orphan_hold_entry_is_deleted_and_the_flow_recovers(self) -> None:
        """A flow's first packet trapped while the agent is away leaves a HOLD entry the
        datapath never traps again; the audit deletes it after AUDIT_TIMEOUT, and the
        next packet of the flow makes a new entry that the agent sets up."""
        n = Node()
        flows, world = n.flows, n.world
        handler = n.agent_end.handler
        n.agent_end.handler = None  # the agent is away: the trap is lost
        echo = icmp_echo(bytes.fromhex("020000000001"), "10.1.1.3", "10.1.1.4")
        world.pipeline.receive(n.vif_of(1), echo)
        n.agent_end.handler = handler
        (held,) = held_indices(world.flows.buf)
        self.assertEqual(world.out.on(n.vif_of(2)), [])
        read = world.flows.entry
        self.assertEqual(flows.audit_pass(held_indices(world.flows.buf), read), [])
        n.clock.advance(AUDIT_TIMEOUT - 0.5)
        self.assertEqual(flows.audit_pass(held_indices(world.flows.buf), read), [])
        n.clock.advance(0.5)
        (d,) = flows.audit_pass(held_indices(world.flows.buf), read)
        self.assertEqual(self.successResultOf(d)[0], 0)
        self.assertEqual(flows.counters.audited, 1)
        self.assertEqual(held_indices(world.flows.buf), [])
        self.assertFalse(read(held).action == L.ACTION_HOLD and read(held).flags
                         & L.FLAG_ACTIVE)
        # the next packet: a new entry, trapped, set up, delivered
        world.pipeline.receive(n.vif_of(1), echo)
        self.assertEqual(len(world.out.on(n.vif_of(2))), 1)
        self.assertEqual(flows.counters.pairs, 1)

    def test_entries_being_set_up_or_forwarding_are_left_alone(self) -> None:
        n = Node()
        echo = icmp_echo(bytes.fromhex("020000000001"), "10.1.1.3", "10.1.1.4")
        n.world.pipeline.receive(n.vif_of(1), echo)  # set up at once: FORWARD
        active = [i for i in range(n.world.flows.ht.total)
                  if n.world.flows.entry(i).flags & L.FLAG_ACTIVE]
        self.assertEqual(len(active), 2)
        for _ in range(3):
            n.clock.advance(AUDIT_TIMEOUT)
            self.assertEqual(n.flows.audit_pass(active, n.world.flows.entry), [])
        self.assertEqual(n.flows.counters.audited, 0)


class EncapOptionTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(parse_encap("gre"), ("gre",))
        self.assertEqual(parse_encap(" UDP, gre "), ("udp", "gre"))
        for bad, why in (("", "at least one"), ("ipip", "ipip not one of"),
                         ("udp,udp", "twice")):
            with self.assertRaises(ValueError) as cm:
                parse_encap(bad)
            self.assertIn(why, str(cm.exception))

    def test_option_reaches_the_link(self) -> None:
        o = tap.Options()
        o.parseOptions(["--encap", "gre", "--controller", "tcp:127.0.0.1:5269"])
        kw = linkKwargsFromOptions(o)
        self.assertEqual(kw["encapsulations"], ("gre",))
        self.assertEqual(kw["encap_priority"], ("gre", "udp", "vxlan"))
        self.assertNotIn("encapsulations", linkKwargsFromOptions(tap.Options()))
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--encap", "ipip"])

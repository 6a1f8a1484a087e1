"""The agent's packet services against the real pipeline, joined by pkt0 in memory.

The datapath is programmed with exactly what the agent's model wants for two VM ports;
traps travel as pkt0 frames through the datapath and agent endpoints, and the agent's
answers come back as SWITCH commands that the pipeline executes on the agent vif.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vrtwist.agent.dpstate import AGENT_VIF, VIF, DatapathModel
from vrtwist.agent.model import Port
from vrtwist.agent.packet.flows import FlowKey, FlowSetup, RouteView, flow_request
from vrtwist.agent.packet.service import LocalFlowChannel
from vrtwist.agent.packet.services import Announcer, PacketServices, VmPort
from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import make
from vrtwist.datapath.testing import World
from vrtwist.packet import dhcp as D
from vrtwist.packet.checksum import checksum
from vrtwist.packet.headers import ETH_P_IP, IPPROTO_ICMP, IPPROTO_UDP, UDP, Ethernet, IPv4
from vrtwist.pkt0.endpoints import OTHER_BUDGET, AgentEndpoint, DatapathEndpoint, TrapLimiter
from vrtwist.pkt0.transport import IPkt0Transport
from vrtwist.shmem import layout as L

VRRP = bytes.fromhex("00005e000100")
VHOST = bytes.fromhex("525400123456")
VN = "31111111-2222-3333-4444-555555555555"


def port(n: int, ip: str) -> Port:
    return Port(
        id=f"1111111{n}-2222-3333-4444-555555555555",
        instance_id=f"2111111{n}-2222-3333-4444-555555555555",
        vn_id=VN, vm_project_id="41111111-2222-3333-4444-555555555555",
        display_name=f"vm{n}", ip_address=ip, ip6_address=None, type=0,
        system_name=f"tapsvc{n}", mac_address=f"02:00:00:00:00:0{n}",
        plen=24, gateway="10.1.1.1", dns_server="10.1.1.2",
    )  # fmt: skip


@implementer(IPkt0Transport)
class Wire:
    """Delivers each frame at once to ``deliver``."""

    def __init__(self) -> None:
        self.deliver: Any = None
        self.frames = 0

    def send(self, frame: bytes) -> bool:
        self.frames += 1
        self.deliver(frame)
        return True


def icmp_echo(src_mac: bytes, sip: str, dip: str, ident: int = 7, seq: int = 1) -> bytes:
    body = bytearray(bytes((8, 0, 0, 0)) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + b"ping" * 8)
    body[2:4] = checksum(body).to_bytes(2, "big")
    ip = IPv4(bytes(map(int, sip.split("."))), bytes(map(int, dip.split("."))), IPPROTO_ICMP, 20 + len(body), 1)
    return Ethernet(VRRP, src_mac, ETH_P_IP).pack() + ip.pack() + bytes(body)


class Node:
    """One node: the real pipeline, the agent's model and services, pkt0 in memory."""

    def __init__(self, fabric_ip: str = "192.0.2.1", ports: list[Port] | None = None,
                 fabric_mac: bytes | None = None, vxlan: bool = False) -> None:
        self.world = World()
        dp = self.world.dp
        self.fabric_ip = fabric_ip
        self.model = DatapathModel(fabric_ip=fabric_ip, fabric_name="nonexistent0")
        self.model.vxlan = vxlan
        if fabric_mac is not None:  # as read from the fabric device
            name, fields = self.model.desired[(VIF, 0)]
            self.model.desired[(VIF, 0)] = (name, {**fields, "vifr_mac": list(fabric_mac)})
        self.clock = Clock()
        self.ports = ports or [port(1, "10.1.1.3"), port(2, "10.1.1.4")]
        for p in self.ports:
            self.model.portAdded(p)
        self.apply()
        agent_vif = dp.tables.interfaces[AGENT_VIF]
        self.dp_end = DatapathEndpoint(lambda: (AGENT_VIF, bytes(agent_vif.mac)))
        self.agent_end = AgentEndpoint()
        to_agent, to_dp = Wire(), Wire()
        to_agent.deliver = self.agent_end.frame_received
        to_dp.deliver = lambda frame: self.world.pipeline.receive(AGENT_VIF, frame)
        self.dp_end.transport, self.agent_end.transport = to_agent, to_dp
        self.world.pipeline.trapper = self.dp_end
        self.routes = RouteView(self.model.desired)
        self.flows = FlowSetup(self.routes, LocalFlowChannel(self.world.dp), self.clock.seconds)
        self.services = PacketServices(self.vm_port, self.agent_end.send_switch, lambda: VHOST, self.flows)
        self.agent_end.handler = self.services

    def apply(self) -> None:
        order = {"vif": 0, "nh": 1, "mpls": 2, "vxlan": 2, "mirror": 2, "route": 3}
        def rank(kv: Any) -> tuple[int, int]:
            key = kv[0]
            return order[key[0]], -key[1] if key[0] == "route" else 0  # bridge entries first

        for _key, (name, fields) in sorted(self.model.desired.items(), key=rank):
            reply = self.world.dp.handle(make(name, {"h_op": C.OP_ADD, **fields}))
            assert int(reply[0][0].resp_code) >= 0, (name, fields, reply[0][0].resp_code)

    def vif_of(self, n: int) -> int:
        ids = self.model.port_ids(self.ports[n - 1].id)
        assert ids is not None
        return ids["vif"]

    def vm_port(self, vif: int) -> VmPort | None:
        for p in self.ports:
            ids = self.model.port_ids(p.id)
            if ids and ids["vif"] == vif:
                return VmPort(vif, ids["vrf"], bytes.fromhex(p.mac_address.replace(":", "")),
                              p.ip_address, p.plen, p.gateway, p.dns_server, p.display_name)
        return None


class EndToEndTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = Node()

    def test_dhcp_through_the_pipeline(self) -> None:
        """A VM's broadcast DISCOVER is trapped, answered by the agent, delivered to the VM."""
        n = self.node
        vm1 = n.vif_of(1)
        msg = D.DhcpMessage(1, 0xABCD, 0, D.BROADCAST_FLAG, bytes(4), bytes(4), bytes(4), bytes(4),
                            bytes.fromhex("020000000001"), {})
        payload = D.build(msg, [(53, b"\x01")])
        udp = UDP(68, 67, 8 + len(payload)).pack()
        ip = IPv4(bytes(4), b"\xff" * 4, IPPROTO_UDP, 28 + len(payload)).pack()
        frame = Ethernet(b"\xff" * 6, bytes.fromhex("020000000001"), ETH_P_IP).pack() + ip + udp + payload
        n.world.pipeline.receive(vm1, frame)
        out = n.world.out.on(vm1)
        self.assertEqual(len(out), 1, n.world.drops())
        offer = D.parse(out[0][42:])
        self.assertEqual(offer.message_type, D.MSG["offer"])
        self.assertEqual(offer.yiaddr, bytes((10, 1, 1, 3)))
        self.assertEqual(offer.options[3], bytes((10, 1, 1, 1)))
        self.assertEqual(n.services.dhcp.counters.offers, 1)

    def test_ping_between_vms_sets_up_flows(self) -> None:
        """VM1 pings VM2: flow miss, the agent writes the pair, the held echo reaches VM2,
        and VM2's reply rides the reverse flow without another trap."""
        n = self.node
        vm1, vm2 = n.vif_of(1), n.vif_of(2)
        n.world.pipeline.receive(vm1, icmp_echo(bytes.fromhex("020000000001"), "10.1.1.3", "10.1.1.4"))
        got = n.world.out.on(vm2)
        self.assertEqual(len(got), 1, (n.world.drops(), n.flows.counters, n.services.counters))
        self.assertEqual(n.flows.counters.pairs, 1)
        echo = Ethernet.parse(got[0])
        self.assertEqual(echo.dst, bytes.fromhex("020000000002"))
        # the reply: no new trap, forwarded by the reverse flow
        traps = n.dp_end.counters.traps
        reply = bytearray(icmp_echo(bytes.fromhex("020000000002"), "10.1.1.4", "10.1.1.3"))
        reply[34] = 0  # echo reply
        reply[36:38] = b"\x00\x00"
        reply[36:38] = checksum(reply[34:]).to_bytes(2, "big")
        n.world.pipeline.receive(vm2, bytes(reply))
        self.assertEqual(len(n.world.out.on(vm1)), 1, n.world.drops())
        self.assertEqual(n.dp_end.counters.traps, traps)
        fwd = n.world.flows.entry(next(iter(n.flows.pairs)))
        self.assertEqual(fwd.action, L.ACTION_FORWARD)
        self.assertGreater(fwd.packets, 0)

    def test_deferred_channel_sets_up_the_same_pair(self) -> None:
        """A channel without ``set_now`` (ksync's kind, answering later) goes through the
        Deferred path and writes the same pair the synchronous one does."""
        n = self.node
        local = n.flows.channel
        n.flows.channel = lambda fields: local(fields)  # no set_now
        vm1, vm2 = n.vif_of(1), n.vif_of(2)
        n.world.pipeline.receive(vm1, icmp_echo(bytes.fromhex("020000000001"), "10.1.1.3", "10.1.1.4"))
        self.assertEqual(len(n.world.out.on(vm2)), 1, n.world.drops())
        self.assertEqual((n.flows.counters.pairs, n.flows.counters.failed), (1, 0))
        self.assertEqual(n.flows._pending, set())
        pair = next(iter(n.flows.pairs.values()))
        self.assertEqual(n.world.flows.entry(pair.fwd_index).rflow, pair.rev_index)
        self.assertEqual(n.world.flows.entry(pair.rev_index).rflow, pair.fwd_index)

    def test_a_failing_synchronous_channel_is_counted_not_raised(self) -> None:
        """A bug under the embedded channel does not escape into the pkt0 reader: the
        setup is counted as failed and logged, and the next trap is handled."""
        n = self.node

        class Broken:
            def __call__(self, fields: dict[str, int]) -> Any:
                raise AssertionError("not used")

            def set_now(self, fields: dict[str, int]) -> tuple[int, int, int]:
                raise RuntimeError("flow table bug")

        local = n.flows.channel
        n.flows.channel = Broken()
        vm1, vm2 = n.vif_of(1), n.vif_of(2)
        n.world.pipeline.receive(vm1, icmp_echo(bytes.fromhex("020000000001"), "10.1.1.3", "10.1.1.4"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual((n.flows.counters.failed, n.flows.counters.pairs), (1, 0))
        self.assertEqual(n.flows._pending, set())
        n.flows.channel = local
        n.world.pipeline.receive(vm1, icmp_echo(bytes.fromhex("020000000001"), "10.1.1.3",
                                                "10.1.1.4", ident=2))
        self.assertEqual(n.flows.counters.pairs, 1)
        self.assertEqual(len(n.world.out.on(vm2)), 1, n.world.drops())

    def test_ping_gateway(self) -> None:
        """An echo to the gateway is answered by the agent over pkt0."""
        n = self.node
        vm1 = n.vif_of(1)
        n.world.pipeline.receive(vm1, icmp_echo(bytes.fromhex("020000000001"), "10.1.1.3", "10.1.1.1"))
        got = n.world.out.on(vm1)
        self.assertEqual(len(got), 1, (n.world.drops(), n.flows.counters, n.services.counters))
        ip = IPv4.parse(got[0], 14)
        self.assertEqual((ip.src, ip.dst), (bytes((10, 1, 1, 1)), bytes((10, 1, 1, 3))))
        self.assertEqual(got[0][34], 0)

    def test_no_route_is_a_short_flow(self) -> None:
        """A destination with no route: the agent writes a DROP flow; nothing leaves."""
        n = self.node
        vm1 = n.vif_of(1)
        n.world.pipeline.receive(vm1, icmp_echo(bytes.fromhex("020000000001"), "10.1.1.3", "192.0.2.77"))
        self.assertEqual(n.flows.counters.short_flows, 1)
        self.assertEqual([f for i, f in n.world.out.frames if i != AGENT_VIF], [])

    def test_announcements(self) -> None:
        """Port up: the gateway and DNS are announced three times, 2 s apart."""
        n = self.node
        sent: list[tuple[int, int, bytes]] = []
        ann = Announcer(n.clock, lambda vif, vrf, f: sent.append((vif, vrf, f)) or True)  # type: ignore[func-returns-value]
        vm = n.vm_port(n.vif_of(1))
        assert vm is not None
        ann.port_up(vm)
        n.clock.advance(2)
        n.clock.advance(2)
        n.clock.advance(2)
        self.assertEqual(len(sent), 6)
        self.assertEqual(sent[0][2][:12], bytes.fromhex("020000000001") + VRRP)
        self.assertEqual(sent[0][2][28:32], bytes((10, 1, 1, 1)))
        self.assertEqual(sent[1][2][28:32], bytes((10, 1, 1, 2)))
        ann.port_up(vm)
        ann.port_down(vm.vif)
        n.clock.advance(10)
        self.assertEqual(len(sent), 8)


class StormTests(SynchronousTestCase):
    def test_dhcp_storm_is_budgeted_and_other_vms_unaffected(self) -> None:
        """VM1 sends 1,000 DISCOVERs in one instant: its trap budget (a burst of 100) caps
        what reaches the agent, the rest are dropped and counted, and VM2's request
        right after is still answered."""
        n = Node()
        n.dp_end.limiter = TrapLimiter(n.clock.seconds)
        vm1, vm2 = n.vif_of(1), n.vif_of(2)

        def discover(mac: bytes, xid: int) -> bytes:
            msg = D.DhcpMessage(1, xid, 0, D.BROADCAST_FLAG, bytes(4), bytes(4), bytes(4),
                                bytes(4), mac, {})
            payload = D.build(msg, [(53, b"\x01")])
            udp = UDP(68, 67, 8 + len(payload)).pack()
            ip = IPv4(bytes(4), b"\xff" * 4, IPPROTO_UDP, 28 + len(payload)).pack()
            return Ethernet(b"\xff" * 6, mac, ETH_P_IP).pack() + ip + udp + payload

        for i in range(1000):
            n.world.pipeline.receive(vm1, discover(bytes.fromhex("020000000001"), i))
        self.assertEqual(len(n.world.out.on(vm1)), OTHER_BUDGET[1])
        self.assertEqual(n.dp_end.counters.rate_limited, 1000 - OTHER_BUDGET[1])
        self.assertEqual(n.world.drops().get("vds_trap_no_if"), 1000 - OTHER_BUDGET[1])
        n.world.pipeline.receive(vm2, discover(bytes.fromhex("020000000002"), 7))
        self.assertEqual(len(n.world.out.on(vm2)), 1)
        n.clock.advance(1)  # the budget refills
        n.world.pipeline.receive(vm1, discover(bytes.fromhex("020000000001"), 5000))
        self.assertEqual(len(n.world.out.on(vm1)), OTHER_BUDGET[1] + 1)


class RequestTests(SynchronousTestCase):
    def test_flow_request_fields(self) -> None:
        """One literal with every field the agent sets, the others at the datapath's
        defaults: what the pair's requests and the embedded one-call pair rely on."""
        key = FlowKey(bytes((10, 1, 1, 3)), bytes((10, 1, 1, 4)), 6, 40000, 80, 12)
        flags = L.FLAG_ACTIVE | L.RFLOW_VALID
        req = flow_request(key, 7, 3, L.ACTION_FORWARD, flags, flow_vrf=2, src_nh_index=15,
                           rindex=99, drop_reason=4)
        self.assertEqual(req["fr_flow_sport"], 0x409C)  # 40000 in network byte order
        self.assertEqual(req["fr_flow_sip_l"], 0x0301010A)
        self.assertEqual(
            {k: req[k] for k in ("fr_index", "fr_gen_id", "fr_action", "fr_flags",
                                 "fr_flow_vrf", "fr_src_nh_index", "fr_rindex",
                                 "fr_drop_reason")},
            {"fr_index": 7, "fr_gen_id": 3, "fr_action": L.ACTION_FORWARD, "fr_flags": flags,
             "fr_flow_vrf": 2, "fr_src_nh_index": 15, "fr_rindex": 99, "fr_drop_reason": 4},
        )  # fmt: skip
        plain = flow_request(key, -1, 0, L.ACTION_DROP, 0)
        self.assertEqual(
            (plain["fr_flow_vrf"], plain["fr_src_nh_index"], plain["fr_rindex"],
             plain["fr_drop_reason"]), (0, 0, -1, 0))  # fmt: skip
        self.assertEqual(len(req), 17)


class RouteViewOutTests(SynchronousTestCase):
    def test_out_of_follows_changes(self) -> None:
        """The reverse key next hop of a route's next hop is kept, and forgotten when the
        desired objects change: a VM vif given a new policy next hop is seen at once."""
        desired: dict[Any, tuple[str, dict[str, Any]]] = {
            ("nh", 20): ("vr_nexthop_req", {"nhr_type": 2, "nhr_encap_oif_id": [4]}),  # ENCAP
            ("vif", 4): ("vr_interface_req", {"vifr_type": 3, "vifr_nh_id": 21}),  # VIRTUAL
            ("nh", 30): ("vr_nexthop_req", {"nhr_type": 3}),  # TUNNEL
            ("nh", 40): ("vr_nexthop_req", {"nhr_type": 6}),  # COMPOSITE
        }
        routes = RouteView(desired)
        self.assertEqual(routes.out_of(20, 5), (21, 4))
        self.assertEqual(routes.out_of(30, 5), (5, -1))
        self.assertEqual(routes.out_of(40, 5), (40, -1))
        self.assertEqual(routes.out_of(99, 5), (5, -1))  # no such next hop
        desired[("vif", 4)] = ("vr_interface_req", {"vifr_type": 3, "vifr_nh_id": 22})
        self.assertEqual(routes.out_of(20, 5), (21, 4))  # kept until told
        routes.changed([("vif", 4)])
        self.assertEqual(routes.out_of(20, 5), (22, 4))

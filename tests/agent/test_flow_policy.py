"""Flow setup with security groups and network policies, through the real pipeline."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.agent.packet.flowpolicy import FlowPolicy, LocalPort
from vrtwist.agent.policy import (
    DR_OUT_SG,
    DR_POLICY,
    DR_SG,
    PolicyConfig,
    gateway_set,
    network_policy_from_json,
    security_group_from_json,
)
from vrtwist.packet.checksum import checksum
from vrtwist.packet.headers import ETH_P_IP, IPPROTO_TCP, Ethernet, IPv4
from vrtwist.shmem import layout as L

from .test_packet_services import VN, VRRP, Node, icmp_echo

SG_WEB = "51111111-2222-3333-4444-555555555555"
MAC1 = bytes.fromhex("020000000001")
MAC2 = bytes.fromhex("020000000002")


def echo_reply() -> bytes:
    reply = bytearray(icmp_echo(MAC2, "10.1.1.4", "10.1.1.3"))
    reply[34] = 0
    reply[36:38] = b"\x00\x00"
    reply[36:38] = checksum(reply[34:]).to_bytes(2, "big")
    return bytes(reply)


def tcp(flags: int, sport: int = 40000, dport: int = 22) -> bytes:
    """A TCP segment from VM1 to VM2 (``flags``: 0x02 SYN, 0x10 ACK)."""
    seg = (sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(8)
           + bytes((0x50, flags)) + (65535).to_bytes(2, "big") + bytes(4))
    ip = IPv4(bytes((10, 1, 1, 3)), bytes((10, 1, 1, 4)), IPPROTO_TCP, 20 + len(seg), 1)
    return Ethernet(VRRP, MAC1, ETH_P_IP).pack() + ip.pack() + seg


class FlowPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = n = Node()
        self.cfg = PolicyConfig()
        ports = {n.vif_of(i + 1): p for i, p in enumerate(n.ports)}

        def port_of(vif: int) -> LocalPort | None:
            p = ports.get(vif)
            return (p.id, p.vn_id, gateway_set([p.gateway, p.dns_server])) if p else None

        n.flows.policy = FlowPolicy(self.cfg, port_of, lambda vrf: VN)
        def revaluate() -> None:
            n.flows.revaluate()

        self.cfg.listeners.append(revaluate)

    def ping(self) -> int:
        """VM1 pings VM2; how many echoes reached VM2 (all time)."""
        n = self.node
        n.world.pipeline.receive(n.vif_of(1), icmp_echo(MAC1, "10.1.1.3", "10.1.1.4"))
        return len(n.world.out.on(n.vif_of(2)))

    def entries(self) -> tuple[object, object]:
        n = self.node
        pair = next(iter(n.flows.pairs.values()))
        return n.world.flows.entry(pair.fwd_index), n.world.flows.entry(pair.rev_index)

    def web_group(self, *rules: dict[str, object]) -> None:
        self.cfg.set_group(security_group_from_json(SG_WEB, {"name": "web",
                                                              "rules": list(rules)}))

    def test_no_policy_allows(self) -> None:
        self.assertEqual(self.ping(), 1)
        fwd, _ = self.entries()
        self.assertEqual(fwd.action, L.ACTION_FORWARD)  # type: ignore[attr-defined]

    def test_sg_without_icmp_ingress_drops_with_out_sg(self) -> None:
        self.web_group({"direction": "ingress", "protocol": "tcp", "ports": [80, 80]},
                       {"direction": "egress"})
        self.cfg.set_port_groups(self.node.ports[1].id, [SG_WEB])
        self.assertEqual(self.ping(), 0)
        fwd, rev = self.entries()
        self.assertEqual((fwd.action, fwd.drop_reason),  # type: ignore[attr-defined]
                         (L.ACTION_DROP, DR_OUT_SG))
        self.assertEqual(rev.action, L.ACTION_DROP)  # type: ignore[attr-defined]
        self.assertEqual(self.node.flows.counters.denied, 1)
        # the flow stays a pair: packets hit the DROP entry, no new trap
        traps = self.node.dp_end.counters.traps
        self.assertEqual(self.ping(), 0)
        self.assertEqual(self.node.dp_end.counters.traps, traps)

    def test_reply_allowed_by_reflexive_sg(self) -> None:
        """VM2 allows no egress at all, yet answers VM1's ping: its reply rides the
        reverse flow, which copies the forward flow's SG result."""
        self.web_group({"direction": "ingress"})
        self.cfg.set_port_groups(self.node.ports[1].id, [SG_WEB])
        self.assertEqual(self.ping(), 1)
        self.node.world.pipeline.receive(self.node.vif_of(2), echo_reply())
        self.assertEqual(len(self.node.world.out.on(self.node.vif_of(1))), 1)

    def test_egress_deny_then_allow_resumes(self) -> None:
        self.web_group({"direction": "egress", "protocol": "udp"})
        self.cfg.set_port_groups(self.node.ports[0].id, [SG_WEB])
        self.assertEqual(self.ping(), 0)
        fwd, _ = self.entries()
        self.assertEqual(fwd.drop_reason, DR_SG)  # type: ignore[attr-defined]
        index = next(iter(self.node.flows.pairs))
        gen = fwd.gen_id  # type: ignore[attr-defined]
        self.web_group({"direction": "egress", "protocol": "udp"},
                       {"direction": "egress", "protocol": "icmp"})
        self.assertEqual(self.node.flows.counters.revaluated, 1)
        fwd, rev = self.entries()
        self.assertEqual(fwd.action, L.ACTION_FORWARD)  # type: ignore[attr-defined]
        self.assertEqual(rev.action, L.ACTION_FORWARD)  # type: ignore[attr-defined]
        self.assertEqual((next(iter(self.node.flows.pairs)), fwd.gen_id),  # type: ignore[attr-defined]
                         (index, gen))
        self.assertEqual(self.ping(), 1)
        # the reply rides the reverse flow
        self.node.world.pipeline.receive(self.node.vif_of(2), echo_reply())
        self.assertEqual(len(self.node.world.out.on(self.node.vif_of(1))), 1)

    def test_new_policy_stops_a_running_flow(self) -> None:
        self.assertEqual(self.ping(), 1)
        self.cfg.set_policy(network_policy_from_json("no-icmp", {
            "networks": [VN], "rules": [{"action": "deny", "protocol": "icmp"}]}))
        fwd, _ = self.entries()
        self.assertEqual((fwd.action, fwd.drop_reason),  # type: ignore[attr-defined]
                         (L.ACTION_DROP, DR_POLICY))
        self.assertEqual(self.ping(), 1)  # the second echo is dropped
        self.cfg.delete_policy("no-icmp")
        fwd, _ = self.entries()
        self.assertEqual(fwd.action, L.ACTION_FORWARD)  # type: ignore[attr-defined]
        self.assertEqual(self.ping(), 2)
        # a change that alters no flow's action re-writes nothing
        self.assertEqual(self.node.flows.counters.revaluated, 2)
        self.web_group({"direction": "ingress"})  # a group no port uses
        self.assertEqual(self.node.flows.counters.revaluated, 2)

    def test_gateway_ping_passes_any_sg(self) -> None:
        self.web_group({"direction": "egress", "protocol": "tcp"})
        self.cfg.set_port_groups(self.node.ports[0].id, [SG_WEB])
        n = self.node
        n.world.pipeline.receive(n.vif_of(1), icmp_echo(MAC1, "10.1.1.3", "10.1.1.1"))
        self.assertEqual(len(n.world.out.on(n.vif_of(1))), 1)

    def test_tcp_ack_flow_passes_if_the_reverse_direction_allows(self) -> None:
        """VM1 may not open connections (no egress rule) but accepts them from VM2: a
        SYN from VM1 is dropped, a mid-stream ACK of a connection VM2 opened passes."""
        self.web_group({"direction": "ingress", "protocol": "tcp"})
        self.cfg.set_port_groups(self.node.ports[0].id, [SG_WEB])
        n = self.node
        n.world.pipeline.receive(n.vif_of(1), tcp(0x02, 40000))
        n.world.pipeline.receive(n.vif_of(1), tcp(0x10, 40001))
        self.assertEqual(len(n.world.out.on(n.vif_of(2))), 1)
        by_port = {p.forward.sport: n.world.flows.entry(i) for i, p in n.flows.pairs.items()}
        self.assertEqual((by_port[40000].action, by_port[40000].drop_reason),
                         (L.ACTION_DROP, DR_SG))
        self.assertEqual(by_port[40001].action, L.ACTION_FORWARD)

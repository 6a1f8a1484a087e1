"""Flows a previous agent left in the table: adopted, re-evaluated, or deleted.

One agent sets up flows through the real pipeline; a second one (a new ``FlowSetup``
over the same datapath, as after a restart with ``--datapath external``) finds them in
the table with its own, possibly changed, configuration.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.agent.packet.flowaudit import FlowAdoption, vm_sources
from vrtwist.agent.packet.flowpolicy import FlowPolicy, LocalPort
from vrtwist.agent.packet.flows import AUDIT_TIMEOUT, FlowKey, FlowSetup, RouteView, flow_request
from vrtwist.agent.packet.service import LocalFlowChannel
from vrtwist.agent.policy import (
    DR_OUT_SG,
    DR_POLICY,
    DR_UNKNOWN,
    PolicyConfig,
    gateway_set,
    network_policy_from_json,
    security_group_from_json,
)
from vrtwist.shmem import layout as L

from .test_flow_policy import MAC1, tcp
from .test_packet_services import VN, Node, icmp_echo

SG = "61111111-2222-3333-4444-555555555555"


def policy_for(n: Node, cfg: PolicyConfig) -> FlowPolicy:
    ports = {n.vif_of(i + 1): p for i, p in enumerate(n.ports)}

    def port_of(vif: int) -> LocalPort | None:
        p = ports.get(vif)
        return (p.id, p.vn_id, gateway_set([p.gateway, p.dns_server])) if p else None

    return FlowPolicy(cfg, port_of, lambda vrf: VN)


class AdoptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = Node()

    def ping(self) -> int:
        n = self.node
        n.world.pipeline.receive(n.vif_of(1), icmp_echo(MAC1, "10.1.1.3", "10.1.1.4"))
        return len(n.world.out.on(n.vif_of(2)))

    def read(self, index: int) -> Any:
        e = self.node.world.flows.entry(index)
        return e if e.active else None

    def active(self) -> list[int]:
        flows = self.node.world.flows
        return [i for i in range(flows.ht.total) if flows.entry(i).active]

    def restart(self, cfg: PolicyConfig | None = None,
                routes: RouteView | None = None) -> tuple[FlowSetup, FlowAdoption]:
        """A new agent over the same datapath (the old one's FlowSetup is dropped)."""
        n = self.node
        flows = FlowSetup(routes or RouteView(n.model.desired), LocalFlowChannel(n.world.dp),
                          n.clock.seconds)
        if cfg is not None:
            flows.policy = policy_for(n, cfg)
        n.services.flows = flows
        n.flows = flows
        adoption = FlowAdoption(flows, lambda: vm_sources(n.model.desired), settled=True)
        return flows, adoption

    def pair_entries(self, flows: FlowSetup) -> tuple[Any, Any]:
        (pair,) = flows.pairs.values()
        w = self.node.world.flows
        return w.entry(pair.fwd_index), w.entry(pair.rev_index)

    def test_unchanged_pair_is_adopted_untouched(self) -> None:
        self.assertEqual(self.ping(), 1)
        old = {i: self.node.world.flows.entry(i) for i in self.active()}
        (old_pair,) = self.node.flows.pairs.values()
        flows, adoption = self.restart()
        self.assertEqual(adoption.adopt_pass(self.active(), self.read), [])
        self.assertEqual((adoption.counters.adopted, adoption.counters.rewritten), (1, 0))
        self.assertTrue(adoption.finished)
        (pair,) = flows.pairs.values()
        # the forward flow is the ping's, as the previous agent set it up
        self.assertEqual((pair.fwd_index, pair.rev_index, pair.forward),
                         (old_pair.fwd_index, old_pair.rev_index, old_pair.forward))
        self.assertEqual({i: self.node.world.flows.entry(i) for i in self.active()}, old)
        self.assertEqual(self.ping(), 2)
        # adopted pairs age as the agent's own
        self.node.clock.advance(flows.age + 1)
        flows.age_pass(self.read)
        self.node.clock.advance(flows.age + 1)
        flows.age_pass(self.read)
        self.assertEqual((flows.counters.aged, self.active()), (1, []))

    def test_security_group_added_while_away_stops_the_flow(self) -> None:
        """VM2 now accepts TCP only. Between two local VMs the table does not say which
        side pinged: the two readings differ under the new group, so the pair is deleted
        and the next echo request is set up afresh, and dropped."""
        self.assertEqual(self.ping(), 1)
        cfg = PolicyConfig()
        cfg.set_group(security_group_from_json(SG, {"name": "tcp-only", "rules": [
            {"direction": "ingress", "protocol": "tcp"}, {"direction": "egress"}]}))
        cfg.set_port_groups(self.node.ports[1].id, [SG])
        flows, adoption = self.restart(cfg)
        self.assertEqual(len(adoption.adopt_pass(self.active(), self.read)), 2)
        self.assertEqual((adoption.counters.deleted, self.active()), (1, []))
        self.assertEqual(self.ping(), 1)  # dropped now
        fwd, rev = self.pair_entries(flows)
        self.assertEqual((fwd.action, fwd.drop_reason), (L.ACTION_DROP, DR_OUT_SG))
        self.assertEqual((rev.action, rev.drop_reason), (L.ACTION_DROP, DR_UNKNOWN))

    def test_policy_added_while_away_rewrites_the_pair_in_place(self) -> None:
        """A network policy denying ICMP both ways treats both readings alike: the pair
        is adopted and re-written at its index and generation, and follows later changes
        like the agent's own."""
        self.assertEqual(self.ping(), 1)
        (before,) = self.node.flows.pairs.values()
        cfg = PolicyConfig()
        cfg.set_policy(network_policy_from_json("no-icmp", {
            "networks": [VN], "rules": [{"action": "deny", "protocol": "icmp"}]}))
        flows, adoption = self.restart(cfg)
        self.assertEqual(len(adoption.adopt_pass(self.active(), self.read)), 2)
        self.assertEqual((adoption.counters.adopted, adoption.counters.rewritten), (1, 1))
        fwd, rev = self.pair_entries(flows)
        self.assertEqual({fwd.index, rev.index}, {before.fwd_index, before.rev_index})
        self.assertEqual((fwd.action, fwd.drop_reason, rev.action, rev.drop_reason),
                         (L.ACTION_DROP, DR_POLICY, L.ACTION_DROP, DR_POLICY))
        self.assertEqual(self.ping(), 1)  # dropped now
        cfg.delete_policy("no-icmp")
        flows.revaluate()
        self.assertEqual(self.pair_entries(flows)[0].action, L.ACTION_FORWARD)
        self.assertEqual(self.ping(), 2)

    def test_policy_removed_while_away_lets_the_flow_pass(self) -> None:
        cfg = PolicyConfig()
        cfg.set_policy(network_policy_from_json("no-icmp", {
            "networks": [VN], "rules": [{"action": "deny", "protocol": "icmp"}]}))
        self.node.flows.policy = policy_for(self.node, cfg)
        self.assertEqual(self.ping(), 0)
        fwd, _ = self.pair_entries(self.node.flows)
        self.assertEqual((fwd.action, fwd.drop_reason), (L.ACTION_DROP, DR_POLICY))
        flows, adoption = self.restart(PolicyConfig())
        adoption.adopt_pass(self.active(), self.read)
        fwd, rev = self.pair_entries(flows)
        self.assertEqual((fwd.action, rev.action), (L.ACTION_FORWARD, L.ACTION_FORWARD))
        self.assertEqual(self.ping(), 1)

    def test_pair_of_a_removed_port_is_deleted_once_settled(self) -> None:
        self.assertEqual(self.ping(), 1)
        n = self.node
        n.model.portDeleted(n.ports[1])  # the datapath still has it: not re-applied
        flows, adoption = self.restart()
        adoption.settled = False
        entries = self.active()
        self.assertEqual(len(entries), 2)
        # routes may still come back (the controller's): nothing goes before settled
        self.assertEqual(adoption.adopt_pass(entries, self.read), [])
        n.clock.advance(AUDIT_TIMEOUT + 1)
        self.assertEqual(adoption.adopt_pass(entries, self.read), [])
        self.assertFalse(adoption.finished)
        adoption.settled = True
        # seen unmatched for the audit timeout already: deleted now
        self.assertEqual(len(adoption.adopt_pass(entries, self.read)), 2)
        self.assertEqual((self.active(), flows.pairs, adoption.counters.deleted), ([], {}, 1))
        self.assertTrue(adoption.finished)  # nothing left to wait for: no more passes

    def test_unmatched_pair_waits_the_audit_timeout_after_settled(self) -> None:
        self.assertEqual(self.ping(), 1)
        self.node.model.portDeleted(self.node.ports[1])
        _flows, adoption = self.restart()
        self.assertEqual(adoption.adopt_pass(self.active(), self.read), [])
        self.node.clock.advance(AUDIT_TIMEOUT)
        self.assertEqual(len(adoption.adopt_pass(self.active(), self.read)), 2)

    def test_asymmetric_pair_is_set_up_again_from_its_next_packet(self) -> None:
        """VM1 accepts TCP but may not open connections: its SYN to VM2 was denied. Read
        the other way round (VM2 opening to VM1) the pair would pass, so the new agent
        cannot tell from the table: it deletes the pair, and the SYN's retransmission is
        denied again."""
        cfg = PolicyConfig()
        cfg.set_group(security_group_from_json(SG, {"name": "in-only", "rules": [
            {"direction": "ingress", "protocol": "tcp"}]}))
        cfg.set_port_groups(self.node.ports[0].id, [SG])
        n = self.node
        n.flows.policy = policy_for(n, cfg)
        n.world.pipeline.receive(n.vif_of(1), tcp(0x02, 40000, 22))
        flows, adoption = self.restart(cfg)
        self.assertEqual(len(adoption.adopt_pass(self.active(), self.read)), 2)
        self.assertEqual(self.active(), [])
        n.world.pipeline.receive(n.vif_of(1), tcp(0x02, 40000, 22))
        self.assertEqual(len(n.world.out.on(n.vif_of(2))), 0)
        (pair,) = flows.pairs.values()
        self.assertEqual(pair.forward.dport, 22)
        self.assertEqual(n.world.flows.entry(pair.fwd_index).action, L.ACTION_DROP)

    def test_lower_port_is_the_forward_flow_when_nothing_fits(self) -> None:
        n = self.node
        n.world.pipeline.receive(n.vif_of(1), tcp(0x02, 40000, 22))
        cfg = PolicyConfig()
        cfg.set_policy(network_policy_from_json("no-22", {"networks": [VN], "rules": [
            {"action": "deny", "protocol": "tcp", "dst-ports": [22, 22]}]}))
        flows, adoption = self.restart(cfg)
        adoption.adopt_pass(self.active(), self.read)
        (pair,) = flows.pairs.values()
        self.assertEqual(pair.forward.dport, 22)
        fwd, _ = self.pair_entries(flows)
        self.assertEqual((fwd.action, fwd.drop_reason), (L.ACTION_DROP, DR_POLICY))

    def test_single_and_hold_entries_and_own_pairs_are_left_alone(self) -> None:
        n = self.node
        ids = n.model.port_ids(n.ports[0].id)
        assert ids is not None
        key = FlowKey(bytes((10, 1, 1, 3)), bytes((10, 1, 1, 9)), 6, 1000, 80, ids["l3_nh"])
        code = LocalFlowChannel(n.world.dp).set_now(flow_request(
            key, -1, 0, L.ACTION_FORWARD, L.FLAG_ACTIVE, flow_vrf=ids["vrf"]))[0]
        self.assertGreaterEqual(code, 0)
        hold, _gen = n.world.flows.hold_on_miss(b"\x01" * 44, ids["vrf"])
        single = [i for i in self.active() if i != hold]
        flows, adoption = self.restart()
        self.assertEqual(self.ping(), 1)  # the new agent's own pair
        (own,) = flows.pairs.values()
        before = {i: n.world.flows.entry(i) for i in self.active()}
        self.assertEqual(adoption.adopt_pass(self.active(), self.read), [])
        self.assertEqual(adoption.counters.adopted, 0)
        self.assertEqual(flows.pairs, {own.fwd_index: own})
        self.assertEqual({i: n.world.flows.entry(i) for i in self.active()}, before)
        self.assertIn(single[0], before)

    def test_short_pair_is_adopted_as_it_is(self) -> None:
        n = self.node
        n.world.pipeline.receive(n.vif_of(1), icmp_echo(MAC1, "10.1.1.3", "192.0.2.77"))
        written = {i: n.world.flows.entry(i) for i in self.active()}
        self.assertEqual(len(written), 2)
        flows, adoption = self.restart()
        self.assertEqual(adoption.adopt_pass(self.active(), self.read), [])
        self.assertEqual(adoption.counters.adopted, 1)
        self.assertEqual({i: n.world.flows.entry(i) for i in self.active()}, written)
        (pair,) = flows.pairs.values()
        self.assertEqual(pair.forward.dip, bytes((192, 0, 2, 77)))


class AdoptionMetricsTests(SynchronousTestCase):
    def test_outcomes_are_counted(self) -> None:
        from tests.introspect.test_metrics import agent_state, scrape
        from vrtwist.agent.introspect import AgentCollector

        a = agent_state()
        n = Node()
        adoption = FlowAdoption(n.flows, dict)
        adoption.counters.adopted, adoption.counters.deleted = 3, 1
        a.packets.adoption = adoption
        m = scrape(AgentCollector(a))
        self.assertEqual(m[("vrouter_flows_adopted_total", (("outcome", "adopted"),))], 3)
        self.assertEqual(m[("vrouter_flows_adopted_total", (("outcome", "rewritten"),))], 0)
        self.assertEqual(m[("vrouter_flows_adopted_total", (("outcome", "deleted"),))], 1)

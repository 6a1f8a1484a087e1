"""What each direction of a flow pair is written as, checked in ``flow -l`` form.

The real agent (``tungstenfabric/tf-controller:src/vnsw/agent/pkt/flow_entry.cc``):

* a forward flow denied by a security group (SG, OutSG) copies its SG summary to the
  reverse flow (``UpdateReflexiveAction``); the reverse flow's own SG actions only get
  the TRAP bit, which does not reach its action, so it is DROP with no list of its own
  to blame: reason Unknown;
* a forward flow denied by network policy never reaches the SG step, so the reverse flow
  has nothing to copy and is decided by its own network policy;
* a short flow (no route one way) is made with its reverse flow, both short with one
  reason (``PktFlowInfo::Add``, ``FlowEntry::InitFlowCmn``): both DROP with it.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.agent.policy import PolicyConfig, network_policy_from_json, security_group_from_json
from vrtwist.shmem.listing import format_flow

from .test_flow_adoption import policy_for
from .test_flow_policy import MAC1
from .test_packet_services import VN, Node, icmp_echo

SG = "71111111-2222-3333-4444-555555555555"


class DirectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = Node()
        self.cfg = PolicyConfig()
        self.node.flows.policy = policy_for(self.node, self.cfg)

    def ping(self, dst: str = "10.1.1.4") -> None:
        n = self.node
        n.world.pipeline.receive(n.vif_of(1), icmp_echo(MAC1, "10.1.1.3", dst))

    def listing(self) -> tuple[str, str]:
        """``flow -l`` of the forward and the reverse flow of the one pair."""
        (pair,) = self.node.flows.pairs.values()
        w = self.node.world.flows
        fwd, rev = w.entry(pair.fwd_index), w.entry(pair.rev_index)
        self.assertEqual((fwd.rflow, rev.rflow), (rev.index, fwd.index))
        return format_flow(fwd), format_flow(rev)

    def assert_action(self, block: str, key: tuple[str, str], action: str) -> None:
        lines = block.splitlines()
        self.assertIn(key[0] + ":", lines[0])
        self.assertIn(key[1] + ":", lines[1])
        self.assertIn(f"Action:{action},", block)

    def test_out_sg_deny_reverse_is_drop_unknown(self) -> None:
        self.cfg.set_group(security_group_from_json(SG, {"name": "tcp-only", "rules": [
            {"direction": "ingress", "protocol": "tcp"}, {"direction": "egress"}]}))
        self.cfg.set_port_groups(self.node.ports[1].id, [SG])
        self.ping()
        fwd, rev = self.listing()
        self.assert_action(fwd, ("10.1.1.3", "10.1.1.4"), "D(OutSG)")
        self.assert_action(rev, ("10.1.1.4", "10.1.1.3"), "D(Unknown)")

    def test_sg_deny_reverse_is_drop_unknown(self) -> None:
        self.cfg.set_group(security_group_from_json(SG, {"name": "udp-out", "rules": [
            {"direction": "egress", "protocol": "udp"}]}))
        self.cfg.set_port_groups(self.node.ports[0].id, [SG])
        self.ping()
        fwd, rev = self.listing()
        self.assert_action(fwd, ("10.1.1.3", "10.1.1.4"), "D(SG)")
        self.assert_action(rev, ("10.1.1.4", "10.1.1.3"), "D(Unknown)")

    def test_one_way_policy_deny_leaves_the_reverse_forwarding(self) -> None:
        self.cfg.set_policy(network_policy_from_json("no-icmp-out", {
            "networks": [VN], "rules": [{"action": "deny", "protocol": "icmp",
                                         "src": "10.1.1.3/32"}]}))
        self.ping()
        fwd, rev = self.listing()
        self.assert_action(fwd, ("10.1.1.3", "10.1.1.4"), "D(Policy)")
        self.assert_action(rev, ("10.1.1.4", "10.1.1.3"), "F")

    def test_both_way_policy_deny_drops_both_with_policy(self) -> None:
        self.cfg.set_policy(network_policy_from_json("no-icmp", {
            "networks": [VN], "rules": [{"action": "deny", "protocol": "icmp"}]}))
        self.ping()
        fwd, rev = self.listing()
        self.assert_action(fwd, ("10.1.1.3", "10.1.1.4"), "D(Policy)")
        self.assert_action(rev, ("10.1.1.4", "10.1.1.3"), "D(Policy)")

    def test_short_flow_is_a_pair_dropped_both_ways(self) -> None:
        self.ping("192.0.2.77")
        fwd, rev = self.listing()
        self.assert_action(fwd, ("10.1.1.3", "192.0.2.77"), "D(NoDstRt)")
        self.assert_action(rev, ("192.0.2.77", "10.1.1.3"), "D(NoDstRt)")
        c = self.node.flows.counters
        self.assertEqual((c.short_flows, c.pairs, c.denied), (1, 0, 0))
        # a policy change does not touch it (short flows have no policy)
        self.cfg.set_policy(network_policy_from_json("any", {"networks": [VN], "rules": []}))
        self.node.flows.revaluate()
        self.assertEqual(c.revaluated, 0)

    def test_short_flow_ages_like_a_pair(self) -> None:
        self.ping("192.0.2.77")
        n = self.node
        w = n.world.flows

        def read(i: int) -> Any:
            e = w.entry(i)
            return e if e.active else None

        for _ in range(2):
            n.clock.advance(n.flows.age + 1)
            n.flows.age_pass(read)
        self.assertEqual((n.flows.counters.aged, n.flows.pairs), (1, {}))

    def test_no_source_route_reverse_takes_the_destination_vm_next_hop(self) -> None:
        """A spoofed source (no route): NoSrcRt both ways; the reverse key is the one the
        destination VM's replies would have."""
        n = self.node
        n.world.pipeline.receive(n.vif_of(1), icmp_echo(MAC1, "192.0.2.9", "10.1.1.4"))
        (pair,) = n.flows.pairs.values()
        ids = n.model.port_ids(n.ports[1].id)
        assert ids is not None
        self.assertEqual(pair.reverse.nh_id if pair.reverse else -1,
                         n.model.desired[("vif", ids["vif"])][1]["vifr_nh_id"])
        fwd, rev = self.listing()
        self.assert_action(fwd, ("192.0.2.9", "10.1.1.4"), "D(NoSrcRt)")
        self.assert_action(rev, ("10.1.1.4", "192.0.2.9"), "D(NoSrcRt)")

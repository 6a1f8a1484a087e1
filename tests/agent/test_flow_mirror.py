"""Mirror copies for a network policy rule's ``mirror-to``, through the real pipeline.

The policy names an analyzer (address, UDP port); the agent's model gets a mirror entry
for it (a plain-UDP tunnel next hop from the fabric address, and ``vr_mirror_req`` with
the dynamic flag), flows the rule matches are written with the mirror flag and index,
and the datapath sends a copy of each of their packets to the analyzer: the frame as
the VM sent it, after the mirror metadata (an empty TLV list: ``ff 00``), in UDP from
the fabric address to the analyzer's port.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.agent.dpstate import MIRROR, MIRROR_SPORT, NH
from vrtwist.agent.policy import (
    ACTION_MIRROR,
    ANALYZER_PORT,
    MAX_ANALYZERS,
    Analyzer,
    PolicyConfig,
    PolicyValidationError,
    network_policy_from_json,
)
from vrtwist.datapath import constants as C
from vrtwist.packet.headers import IPPROTO_UDP, Ethernet, IPv4
from vrtwist.shmem import layout as L

from .test_flow_adoption import policy_for
from .test_flow_policy import MAC1
from .test_packet_services import VN, Node, icmp_echo

ANALYZER = "192.0.2.50"


def mirror_rule(**extra: Any) -> dict[str, Any]:
    return {"action": "pass", "protocol": "icmp", "mirror-to": {
        "analyzer-name": "an-1", "analyzer-ip-address": ANALYZER, **extra}}


class MirrorRestTests(SynchronousTestCase):
    def test_mirror_to_round_trip(self) -> None:
        p = network_policy_from_json("m", {"networks": [VN], "rules": [mirror_rule()]})
        self.assertEqual(p.rules[0].mirror, Analyzer("an-1", ANALYZER, ANALYZER_PORT))
        again = network_policy_from_json("m", p.to_json())
        self.assertEqual(again, p)
        self.assertEqual(p.to_json()["rules"][0]["mirror-to"]["udp-port"], 8099)
        self.assertEqual(p.rules[0].aces()[0].action & ACTION_MIRROR, ACTION_MIRROR)

    def test_bad_mirror_to_is_refused_with_each_fault(self) -> None:
        with self.assertRaises(PolicyValidationError) as e:
            network_policy_from_json("m", {"networks": [VN], "rules": [
                {"action": "pass", "mirror-to": {"analyzer-name": "bad name",
                                                 "analyzer-ip-address": "224.0.0.1",
                                                 "udp-port": 70000, "x": 1}}]})
        self.assertEqual(e.exception.problems, ["rules[0].mirror-to.x: unknown member"])
        with self.assertRaises(PolicyValidationError) as e:
            network_policy_from_json("m", {"networks": [VN], "rules": [
                {"action": "pass", "mirror-to": {"analyzer-name": "bad name",
                                                 "analyzer-ip-address": "224.0.0.1",
                                                 "udp-port": 0}}]})
        self.assertEqual(len(e.exception.problems), 3, e.exception.problems)
        for field in ("analyzer-name", "analyzer-ip-address", "udp-port"):
            self.assertTrue(any(field in p for p in e.exception.problems), field)
        with self.assertRaises(PolicyValidationError):
            network_policy_from_json("m", {"networks": [VN], "rules": [
                {"action": "pass", "mirror": "an-1", **mirror_rule()}]})

    def test_analyzers_are_bounded_and_one_address_per_name(self) -> None:
        cfg = PolicyConfig()
        cfg.set_policy(network_policy_from_json("a", {"networks": [VN], "rules": [
            mirror_rule()]}))
        other = network_policy_from_json("b", {"networks": [VN], "rules": [
            mirror_rule(**{"udp-port": 9000})]})
        with self.assertRaises(PolicyValidationError):
            cfg.set_policy(other)
        self.assertEqual(sorted(cfg.policies), ["a"])  # nothing else stored
        rules = [{"action": "pass", "mirror-to": {
            "analyzer-name": f"an-{i}", "analyzer-ip-address": f"192.0.2.{i + 1}"}}
            for i in range(MAX_ANALYZERS + 1)]
        with self.assertRaises(PolicyValidationError):
            network_policy_from_json("many", {"networks": [VN], "rules": rules})


class MirrorPipelineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = n = Node()
        self.cfg = PolicyConfig()
        n.flows.policy = policy_for(n, self.cfg)
        n.flows.policy.mirror_index = n.model.mirror_index

    def configure(self, *rules: dict[str, Any]) -> None:
        n = self.node
        self.cfg.set_policy(network_policy_from_json("mirror", {"networks": [VN],
                                                                "rules": list(rules)}))
        n.model.set_mirrors({k: (a.ip, a.port) for k, a in self.cfg.analyzers().items()
                             if a.ip is not None})
        n.apply()

    def copies(self) -> list[bytes]:
        return self.node.world.out.on(self.node.model.fabric_vif)

    def test_model_programs_a_udp_mirror_entry(self) -> None:
        self.configure(mirror_rule())
        m = self.node.model
        index = m.mirror_index("an-1")
        assert index is not None
        name, mirror = m.desired[(MIRROR, index)]
        self.assertEqual((name, mirror["mirr_flags"]), ("vr_mirror_req",
                                                        C.VR_MIRROR_FLAG_DYNAMIC))
        _, nh = m.desired[(NH, mirror["mirr_nhid"])]
        self.assertEqual((nh["nhr_type"], nh["nhr_flags"]),
                         (C.NH_TUNNEL, C.NH_FLAG_VALID | C.NH_FLAG_TUNNEL_UDP))
        self.assertIn(ANALYZER, m.tunnel_destinations())  # its MAC is resolved by ARP
        m.set_mirrors({})
        self.assertNotIn((MIRROR, index), m.desired)
        self.assertNotIn((NH, mirror["mirr_nhid"]), m.desired)

    def test_ping_is_copied_to_the_analyzer(self) -> None:
        n = self.node
        self.configure(mirror_rule(**{"udp-port": 9999}))
        echo = icmp_echo(MAC1, "10.1.1.3", "10.1.1.4")
        n.world.pipeline.receive(n.vif_of(1), echo)
        self.assertEqual(len(n.world.out.on(n.vif_of(2))), 1)  # the ping itself goes on
        (copy,) = self.copies()
        eth = Ethernet.parse(copy)
        ip = IPv4.parse(copy, eth.length)
        self.assertEqual((ip.src, ip.dst, ip.proto),
                         (bytes((192, 0, 2, 1)), bytes((192, 0, 2, 50)), IPPROTO_UDP))
        udp = copy[eth.length + ip.header_length:]
        self.assertEqual((int.from_bytes(udp[:2], "big"), int.from_bytes(udp[2:4], "big")),
                         (MIRROR_SPORT, 9999))
        self.assertEqual(udp[8:], b"\xff\x00" + echo)
        (pair,) = n.flows.pairs.values()
        fwd = n.world.flows.entry(pair.fwd_index)
        self.assertTrue(fwd.flags & L.FLAG_MIRROR)
        self.assertEqual(fwd.mirror_id, n.model.mirror_index("an-1"))

    def test_rule_removed_stops_the_copies(self) -> None:
        n = self.node
        self.configure(mirror_rule())
        n.world.pipeline.receive(n.vif_of(1), icmp_echo(MAC1, "10.1.1.3", "10.1.1.4"))
        self.assertEqual(len(self.copies()), 1)
        self.cfg.set_policy(network_policy_from_json("mirror", {"networks": [VN], "rules": [
            {"action": "pass", "protocol": "icmp"}]}))
        n.flows.revaluate()
        n.world.pipeline.receive(n.vif_of(1), icmp_echo(MAC1, "10.1.1.3", "10.1.1.4"))
        self.assertEqual(len(self.copies()), 1)
        self.assertEqual(len(n.world.out.on(n.vif_of(2))), 2)
        (pair,) = n.flows.pairs.values()
        self.assertFalse(n.world.flows.entry(pair.fwd_index).flags & L.FLAG_MIRROR)

    def test_name_only_mirror_sets_the_bit_and_sends_nothing(self) -> None:
        n = self.node
        self.configure({"action": "pass", "protocol": "icmp", "mirror": "an-1"})
        n.world.pipeline.receive(n.vif_of(1), icmp_echo(MAC1, "10.1.1.3", "10.1.1.4"))
        self.assertEqual((self.copies(), len(n.world.out.on(n.vif_of(2)))), ([], 1))

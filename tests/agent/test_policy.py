"""The flow policy matcher in memory: each MatchAcl rule, SGs, reflexive and ACK rules."""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.agent import policy as P
from vrtwist.agent.policy import (
    ACTION_DENY,
    ACTION_IMPLICIT_DENY,
    ACTION_MIRROR,
    ACTION_PASS,
    Ace,
    Endpoint,
    FlowHeader,
    FlowSides,
    PolicyConfig,
    PolicyValidationError,
    decide,
    match_acl,
    network_policy_from_json,
    security_group_from_json,
    security_groups_from_json,
)

VN1 = "31111111-2222-3333-4444-555555555555"
VN2 = "32222222-2222-3333-4444-555555555555"
PORT_A = "11111111-2222-3333-4444-555555555555"
PORT_B = "11111112-2222-3333-4444-555555555555"
SG1 = "51111111-2222-3333-4444-555555555555"
SG2 = "52222222-2222-3333-4444-555555555555"
GW = P.gateway_set(["10.1.1.1", "10.1.1.2"])


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def hdr(sip: str = "10.1.1.3", dip: str = "10.1.1.4", proto: int = 6, sport: int = 40000,
        dport: int = 22, vn: str | None = VN1) -> FlowHeader:
    return FlowHeader(ip(sip), ip(dip), proto, sport, dport, vn, vn)


def prefix(text: str) -> Endpoint:
    net = ipaddress.IPv4Network(text)
    return Endpoint(int(net.network_address), int(net.netmask))


class MatchAclTests(SynchronousTestCase):
    def test_empty_list_is_implicit_allow(self) -> None:
        self.assertEqual(match_acl(hdr(), []), ACTION_PASS)

    def test_empty_list_without_implicit_allow_denies(self) -> None:
        self.assertEqual(match_acl(hdr(), [], implicit_allow=False),
                         ACTION_DENY | ACTION_IMPLICIT_DENY)

    def test_nothing_matched_is_implicit_deny(self) -> None:
        acl = [Ace(ACTION_PASS, protocol=17)]
        self.assertEqual(match_acl(hdr(), [acl]), ACTION_DENY | ACTION_IMPLICIT_DENY)

    def test_gateway_icmp_and_dns_always_pass(self) -> None:
        deny_all = [[Ace(ACTION_DENY)]]
        self.assertEqual(match_acl(hdr(dip="10.1.1.1", proto=1, dport=0), deny_all, gateway=GW),
                         ACTION_PASS)
        self.assertEqual(match_acl(hdr(dip="10.1.1.2", proto=17, dport=53), deny_all, gateway=GW),
                         ACTION_PASS)
        self.assertEqual(match_acl(hdr(sip="10.1.1.2", proto=17, sport=53), deny_all, gateway=GW),
                         ACTION_PASS)
        # TCP to the gateway, and ICMP elsewhere, are matched as usual
        self.assertEqual(match_acl(hdr(dip="10.1.1.1"), deny_all, gateway=GW), ACTION_DENY)
        self.assertEqual(match_acl(hdr(proto=1, dport=0), deny_all, gateway=GW), ACTION_DENY)

    def test_matching_actions_or_until_terminal(self) -> None:
        acl = [Ace(ACTION_PASS | ACTION_MIRROR, protocol=6), Ace(ACTION_DENY, dports=(22, 22)),
               Ace(ACTION_PASS, terminal=True), Ace(ACTION_DENY)]
        self.assertEqual(match_acl(hdr(), [acl]), ACTION_PASS | ACTION_MIRROR | ACTION_DENY)
        # port 80: the terminal pass stops the walk before the last deny
        self.assertEqual(match_acl(hdr(dport=80), [acl]), ACTION_PASS | ACTION_MIRROR)

    def test_prefixes_ports_and_networks(self) -> None:
        ace = Ace(ACTION_PASS, src=prefix("10.1.1.0/24"), dst=Endpoint(network=VN1),
                  protocol=6, sports=(1024, 65535), dports=(20, 25))
        self.assertTrue(ace.matches(hdr()))
        self.assertFalse(ace.matches(hdr(sip="10.1.2.3")))
        self.assertFalse(ace.matches(hdr(sport=80)))
        self.assertFalse(ace.matches(hdr(dport=26)))
        self.assertFalse(ace.matches(hdr(proto=17)))
        self.assertFalse(ace.matches(hdr(vn=VN2)))


def sg(uuid: str, *rules: dict[str, object]) -> P.SecurityGroup:
    return security_group_from_json(uuid, {"rules": list(rules)})


class DecideTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cfg = PolicyConfig()

    def sides(self, src: str | None = PORT_A, dst: str | None = PORT_B,
              ack: bool = False) -> FlowSides:
        return FlowSides(src, dst, VN1, VN1, GW, ack)

    def test_nothing_configured_passes(self) -> None:
        v = decide(self.cfg, hdr(), self.sides())
        self.assertFalse(v.forward_drops or v.reverse_drops)
        self.assertFalse(self.cfg.active)

    def test_port_without_sg_rules_is_implicit_allow(self) -> None:
        self.cfg.set_group(sg(SG1))  # a group with no rules
        self.cfg.set_port_groups(PORT_A, [SG1])
        self.cfg.set_port_groups(PORT_B, [SG1])
        self.assertFalse(decide(self.cfg, hdr(), self.sides()).forward_drops)

    def test_sg_egress_deny_is_sg(self) -> None:
        self.cfg.set_group(sg(SG1, {"direction": "egress", "protocol": "udp"}))
        self.cfg.set_port_groups(PORT_A, [SG1])
        v = decide(self.cfg, hdr(), self.sides())
        self.assertEqual((v.forward_drops, v.forward_reason), (True, P.DR_SG))
        # reflexive: the reverse flow copies the forward SG result (no reason of its own)
        self.assertEqual((v.reverse_drops, v.reverse_reason), (True, P.DR_UNKNOWN))

    def test_destination_ingress_deny_is_out_sg(self) -> None:
        self.cfg.set_group(sg(SG1, {"direction": "ingress", "protocol": "tcp",
                                    "ports": [80, 80]}))
        self.cfg.set_port_groups(PORT_B, [SG1])
        v = decide(self.cfg, hdr(), self.sides())
        self.assertEqual((v.forward_drops, v.forward_reason), (True, P.DR_OUT_SG))
        self.assertFalse(decide(self.cfg, hdr(dport=80), self.sides()).forward_drops)

    def test_ingress_rule_with_remote_prefix(self) -> None:
        self.cfg.set_group(sg(SG1, {"direction": "ingress", "remote": "10.1.1.3/32"}))
        self.cfg.set_port_groups(PORT_B, [SG1])
        self.assertFalse(decide(self.cfg, hdr(), self.sides()).forward_drops)
        self.assertTrue(decide(self.cfg, hdr(sip="10.1.1.9"), self.sides()).forward_drops)

    def test_reverse_allowed_by_forward_sg(self) -> None:
        """B only allows egress to port 9: A's connection to B:22 is still answered,
        since the reverse flow copies the forward result instead of matching B's egress."""
        self.cfg.set_group(sg(SG1, {"direction": "egress", "protocol": "tcp", "ports": [9, 9]},
                              {"direction": "ingress"}))
        self.cfg.set_port_groups(PORT_B, [SG1])
        v = decide(self.cfg, hdr(), self.sides())
        self.assertFalse(v.forward_drops or v.reverse_drops)

    def test_tcp_ack_passes_if_either_direction_allows(self) -> None:
        # A may only receive from B's port 22 and send nothing: a SYN from A to B:22 is
        # denied, a mid-stream packet (ACK) of that connection passes by the reverse check
        self.cfg.set_group(sg(SG1, {"direction": "ingress", "protocol": "tcp"}))
        self.cfg.set_port_groups(PORT_A, [SG1])
        self.assertTrue(decide(self.cfg, hdr(), self.sides()).forward_drops)
        v = decide(self.cfg, hdr(), self.sides(ack=True))
        self.assertFalse(v.forward_drops or v.reverse_drops)
        # denied both ways: the ACK does not help, and the reason is the forward one
        self.cfg.set_group(sg(SG1, {"direction": "ingress", "protocol": "udp"}))
        v = decide(self.cfg, hdr(), self.sides(ack=True))
        self.assertEqual((v.forward_drops, v.forward_reason), (True, P.DR_SG))

    def test_non_ack_reverse_sg_deny_reason(self) -> None:
        # A allows egress; B denies ingress; B's egress and A's ingress are checked too
        self.cfg.set_group(sg(SG1, {"direction": "egress"}))
        self.cfg.set_group(sg(SG2, {"direction": "ingress", "protocol": "udp"}))
        self.cfg.set_port_groups(PORT_A, [SG1])
        self.cfg.set_port_groups(PORT_B, [SG2])
        v = decide(self.cfg, hdr(), self.sides())
        self.assertEqual(v.forward_reason, P.DR_OUT_SG)

    def test_network_policy_deny_is_policy_and_skips_sg(self) -> None:
        self.cfg.set_policy(network_policy_from_json("no-ssh", {
            "networks": [VN1],
            "rules": [{"action": "deny", "protocol": "tcp", "dst-ports": [22, 22]}]}))
        v = decide(self.cfg, hdr(), self.sides(src=None, dst=None))
        self.assertEqual((v.forward_drops, v.forward_reason), (True, P.DR_POLICY))
        # the reverse flow (from port 22) is matched on its own header: not denied
        self.assertFalse(v.reverse_drops)
        # anything else passes: the config node's trailing VN->VN and any->any passes
        self.assertFalse(decide(self.cfg, hdr(dport=80), self.sides()).forward_drops)

    def test_bidirectional_rule_denies_reverse_too(self) -> None:
        self.cfg.set_policy(network_policy_from_json("no-ssh", {
            "networks": [VN1],
            "rules": [{"action": "deny", "direction": "<>", "protocol": "tcp",
                       "dst-ports": [22, 22]}]}))
        v = decide(self.cfg, hdr(), self.sides())
        self.assertEqual((v.reverse_drops, v.reverse_reason), (True, P.DR_POLICY))

    def test_local_flow_checks_the_other_networks_acl(self) -> None:
        self.cfg.set_policy(network_policy_from_json("vn2-closed", {
            "networks": [VN2], "rules": [{"action": "deny", "src": VN1}]}))
        sides = FlowSides(PORT_A, PORT_B, VN1, VN2, GW)
        h = FlowHeader(ip("10.1.1.3"), ip("10.2.2.4"), 6, 40000, 22, VN1, VN2)
        v = decide(self.cfg, h, sides)
        self.assertEqual((v.forward_drops, v.forward_reason), (True, P.DR_OUT_POLICY))
        # a remote destination: no out policy
        self.assertFalse(decide(self.cfg, h, FlowSides(PORT_A, None, VN1, VN2, GW)).forward_drops)

    def test_gateway_icmp_passes_an_sg_without_icmp(self) -> None:
        self.cfg.set_group(sg(SG1, {"direction": "egress", "protocol": "tcp"}))
        self.cfg.set_port_groups(PORT_A, [SG1])
        v = decide(self.cfg, hdr(dip="10.1.1.1", proto=1, sport=7, dport=0), self.sides(dst=None))
        self.assertFalse(v.forward_drops)


class ValidationTests(SynchronousTestCase):
    def test_security_group_round_trip(self) -> None:
        body = {"name": "web", "rules": [
            {"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
             "remote": "10.0.0.0/8", "ports": [80, 443]},
            {"direction": "egress", "ethertype": "IPv6", "protocol": "any", "remote": "any",
             "ports": "any"}]}
        g = security_group_from_json(SG1, body)
        self.assertEqual(g.to_json(), {"uuid": SG1, **body})
        self.assertEqual(len(g.ingress), 1)
        self.assertEqual(g.egress, ())  # IPv6 rules make no IPv4 entry

    def test_security_group_errors_name_each_field(self) -> None:
        with self.assertRaises(PolicyValidationError) as e:
            security_group_from_json(SG1, {"rules": [
                {"direction": "up"}, {"direction": "ingress", "ports": [9, 1]},
                {"direction": "egress", "remote": "10.0.0.1/8"}, {"direction": "egress",
                                                                  "colour": 1}]})
        text = str(e.exception)
        for part in ("rules[0].direction", "rules[1].ports", "rules[2].remote",
                     "rules[3].colour: unknown member"):
            self.assertIn(part, text)

    def test_too_many_rules(self) -> None:
        rules = [{"direction": "ingress"}] * (P.MAX_RULES + 1)
        with self.assertRaises(PolicyValidationError) as e:
            security_group_from_json(SG1, {"rules": rules})
        self.assertIn("at most", str(e.exception))

    def test_policy_errors(self) -> None:
        with self.assertRaises(PolicyValidationError) as e:
            network_policy_from_json("p", {"networks": ["nope"], "rules": [
                {"action": "allow"}, {"action": "pass", "protocol": 300},
                {"action": "pass", "src": "vn1"}]})
        text = str(e.exception)
        for part in ("networks[0]", "rules[0].action", "rules[1].protocol", "rules[2].src"):
            self.assertIn(part, text)
        with self.assertRaises(PolicyValidationError):
            network_policy_from_json("bad name", {"networks": []})

    def test_port_groups(self) -> None:
        self.assertEqual(security_groups_from_json({"security-groups": [SG1.upper()]}), [SG1])
        with self.assertRaises(PolicyValidationError):
            security_groups_from_json([SG1, SG1])
        cfg = PolicyConfig()
        with self.assertRaises(PolicyValidationError):
            cfg.set_port_groups(PORT_A, [SG1])  # unknown group
        self.assertEqual(cfg.port_groups, {})

    def test_group_in_use_cannot_be_deleted(self) -> None:
        cfg = PolicyConfig()
        cfg.set_group(sg(SG1))
        cfg.set_port_groups(PORT_A, [SG1])
        with self.assertRaises(ValueError):
            cfg.delete_group(SG1)
        self.assertIn(SG1, cfg.groups)
        cfg.set_port_groups(PORT_A, [])
        self.assertTrue(cfg.delete_group(SG1))

    def test_json_round_trip(self) -> None:
        cfg = PolicyConfig()
        cfg.set_group(sg(SG1, {"direction": "ingress", "protocol": "icmp"}))
        cfg.set_port_groups(PORT_A, [SG1])
        cfg.set_policy(network_policy_from_json("p1", {"networks": [VN1], "rules": [
            {"action": "pass", "mirror": "analyzer-1", "terminal": True}]}))
        other = PolicyConfig()
        other.load_json(cfg.to_json())
        self.assertEqual(other.to_json(), cfg.to_json())
        self.assertEqual(other.vn_acl(VN1)[0].action, ACTION_PASS | ACTION_MIRROR)

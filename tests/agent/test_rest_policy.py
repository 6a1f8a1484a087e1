"""The REST API's security groups and network policies: validation, storage, restart."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.agent.helpers import tempdir
from vrtwist.agent.policy import MAX_GROUPS_PER_PORT, PolicyConfig
from vrtwist.agent.store import PolicyFile, PortFileError
from vrtwist.agent.testing import InMemoryAgent

SG = "51111111-2222-3333-4444-555555555555"
PORT = "11111111-2222-3333-4444-555555555555"
VN = "31111111-2222-3333-4444-555555555555"
GROUP = {"name": "web", "rules": [
    {"direction": "ingress", "protocol": "tcp", "ports": [80, 80], "remote": "0.0.0.0/0"},
    {"direction": "egress"}]}
POLICY = {"networks": [VN], "rules": [
    {"action": "deny", "direction": "<>", "protocol": "tcp", "src": "any", "dst": VN,
     "dst-ports": [22, 22]}]}


class PolicyRestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempdir(self)
        self.file = PolicyFile(self.dir)
        self.agent = InMemoryAgent(self.dir)
        self.api = self.agent.api
        self.api._save_policy = self.file.save
        self.policy = self.api.policy

    def saved(self) -> Any:
        with open(os.path.join(self.dir, "policy.json")) as f:
            return json.load(f)

    def test_security_group_put_get_list_delete(self) -> None:
        call = self.agent.call
        self.assertEqual(call("PUT", f"/security-groups/{SG.upper()}", GROUP), (200, {}))
        code, body = call("GET", f"/security-groups/{SG}")
        self.assertEqual(code, 200)
        self.assertEqual((body["uuid"], body["name"], len(body["rules"])), (SG, "web", 2))
        self.assertEqual(body["rules"][0]["ports"], [80, 80])
        self.assertEqual(call("GET", "/security-groups")[1], [body])
        self.assertEqual(self.saved()["security-groups"], [body])
        self.assertEqual(call("DELETE", f"/security-groups/{SG}"), (200, {}))
        self.assertEqual(call("GET", f"/security-groups/{SG}")[0], 404)
        self.assertEqual(call("DELETE", f"/security-groups/{SG}")[0], 404)
        self.assertEqual(self.saved()["security-groups"], [])

    def test_bad_group_is_400_and_nothing_stored(self) -> None:
        bad = {"name": "web", "rules": [{"direction": "ingress", "ports": [80, 70]}]}
        code, body = self.agent.call("PUT", f"/security-groups/{SG}", bad)
        self.assertEqual(code, 400)
        self.assertIn("rules[0].ports", body["error"])
        code, body = self.agent.call("PUT", "/security-groups/not-a-uuid", GROUP)
        self.assertEqual(code, 400)
        self.assertIn("uuid", body["error"])
        self.assertEqual(self.agent.call("PUT", f"/security-groups/{SG}", raw=b"{nope")[0], 400)
        self.assertEqual(self.policy.groups, {})
        self.assertFalse(os.path.exists(os.path.join(self.dir, "policy.json")))

    def test_port_groups(self) -> None:
        call = self.agent.call
        code, body = call("PUT", f"/port/{PORT}/security-groups", [SG])
        self.assertEqual(code, 400)
        self.assertIn(f"unknown group {SG}", body["error"])
        call("PUT", f"/security-groups/{SG}", GROUP)
        self.assertEqual(call("PUT", f"/port/{PORT}/security-groups",
                              {"security-groups": [SG]}), (200, {}))
        self.assertEqual(call("GET", f"/port/{PORT}/security-groups"), (200, [SG]))
        code, body = call("DELETE", f"/security-groups/{SG}")
        self.assertEqual(code, 409)
        self.assertIn(PORT, body["error"])
        too_many = [SG] * (MAX_GROUPS_PER_PORT + 1)
        self.assertEqual(call("PUT", f"/port/{PORT}/security-groups", too_many)[0], 400)
        self.assertEqual(call("GET", f"/port/{PORT}/security-groups"), (200, [SG]))
        self.assertEqual(call("PUT", f"/port/{PORT}/security-groups", []), (200, {}))
        self.assertEqual(call("GET", f"/port/{PORT}/security-groups"), (200, []))
        self.assertEqual(call("DELETE", f"/security-groups/{SG}"), (200, {}))

    def test_network_policies(self) -> None:
        call = self.agent.call
        self.assertEqual(call("PUT", "/network-policies/no-ssh", POLICY), (200, {}))
        code, body = call("GET", "/network-policies/no-ssh")
        self.assertEqual(code, 200)
        self.assertEqual((body["networks"], body["rules"][0]["dst-ports"]), ([VN], [22, 22]))
        self.assertEqual(call("GET", "/network-policies")[1], [body])
        code, err = call("PUT", "/network-policies/no-ssh", {"networks": [VN], "rules": [
            {"action": "drop"}]})
        self.assertEqual(code, 400)
        self.assertIn("rules[0].action", err["error"])
        self.assertEqual(call("GET", "/network-policies/no-ssh")[1], body)  # unchanged
        self.assertEqual(call("PUT", "/network-policies/bad%20name", POLICY)[0], 400)
        self.assertEqual(call("DELETE", "/network-policies/no-ssh"), (200, {}))
        self.assertEqual(call("GET", "/network-policies/no-ssh")[0], 404)

    def test_survives_a_restart(self) -> None:
        call = self.agent.call
        call("PUT", f"/security-groups/{SG}", GROUP)
        call("PUT", f"/port/{PORT}/security-groups", [SG])
        call("PUT", "/network-policies/no-ssh", POLICY)
        loaded = self.file.load()
        assert loaded is not None and loaded.error is None
        again = PolicyConfig()
        again.load_json(loaded.body)
        self.assertEqual(again.to_json(), self.policy.to_json())
        self.assertEqual(again.port_groups, {PORT: (SG,)})

    def test_unwritable_file_is_500_and_rolled_back(self) -> None:
        def refuse(body: dict[str, Any]) -> None:
            raise PortFileError(28, "cannot write policy.json: No space left on device")
        self.api._save_policy = refuse
        code, body = self.agent.call("PUT", f"/security-groups/{SG}", GROUP)
        self.assertEqual(code, 500)
        self.assertIn("No space left", body["error"])
        self.assertEqual(self.policy.groups, {})

    def test_port_api_unchanged(self) -> None:
        """The port API's paths still answer as before (vrouter-port-control's)."""
        self.assertEqual(self.agent.call("GET", f"/port/{PORT}")[0], 404)
        self.assertEqual(self.agent.call("DELETE", f"/port/{PORT}"), (200, {}))


class AgentStartupTests(SynchronousTestCase):
    """What the agent loads from ``policy.json`` when it starts."""

    def agent(self) -> Any:
        from vrtwist.agent.service import AgentService

        return AgentService(None, run_dir="/nonexistent", state_dir=self.dir, rest="tcp:0")

    def setUp(self) -> None:
        self.dir = tempdir(self)

    def test_saved_policy_is_loaded(self) -> None:
        cfg = PolicyConfig()
        cfg.load_json({"security-groups": [{"uuid": SG, **GROUP}],
                       "port-security-groups": {PORT: [SG]},
                       "network-policies": [{"name": "no-ssh", **POLICY}]})
        PolicyFile(self.dir).save(cfg.to_json())
        agent = self.agent()
        agent._load_policy(PolicyFile(self.dir))
        self.assertEqual(agent.policy.to_json(), cfg.to_json())
        self.assertTrue(agent.policy.active)

    def test_unusable_file_loads_nothing(self) -> None:
        for text in (b"[1]", b"{not json", json.dumps(
                {"port-security-groups": {PORT: [SG]}}).encode()):  # a group never defined
            with open(os.path.join(self.dir, "policy.json"), "wb") as f:
                f.write(text)
            agent = self.agent()
            agent._load_policy(PolicyFile(self.dir))
            self.assertFalse(agent.policy.active, text)
            self.assertEqual(agent.policy.to_json()["port-security-groups"], {})

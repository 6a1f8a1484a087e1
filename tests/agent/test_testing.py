"""The shipped in-memory agent (``vrtwist.agent.testing``) does what it says."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.agent.helpers import SAMPLE, tempdir
from vrtwist.agent.testing import InMemoryAgent


class InMemoryAgentTests(SynchronousTestCase):
    def test_a_port_reaches_store_and_datapath(self) -> None:
        """A POSTed port is answered, persisted and programmed into the datapath."""
        agent = InMemoryAgent(tempdir(self))
        status, _ = agent.call("POST", "/port", SAMPLE)
        self.assertEqual(status, 200)
        status, body = agent.call("GET", "/port/" + SAMPLE["id"])
        self.assertEqual(status, 200)
        self.assertEqual(body["mac-address"], SAMPLE["mac-address"])
        self.assertTrue(agent.store.exists(SAMPLE["id"]))
        ids = agent.model.port_ids(SAMPLE["id"])
        assert ids is not None
        self.assertEqual(agent.datapath.tables.interfaces[ids["vif"]].name, SAMPLE["system-name"])

    def test_raw_bad_body_is_a_400(self) -> None:
        agent = InMemoryAgent(tempdir(self))
        status, body = agent.call("POST", "/port", raw=b"{not json")
        self.assertEqual(status, 400)
        self.assertIsNotNone(body)
        self.assertEqual(list(agent.store.load_ports()), [])

    def test_two_agents_share_a_datapath(self) -> None:
        first = InMemoryAgent(tempdir(self))
        second = InMemoryAgent(tempdir(self), datapath=first.datapath)
        self.assertIs(second.datapath, first.datapath)

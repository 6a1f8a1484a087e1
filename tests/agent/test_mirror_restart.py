"""An analyzer's mirror entry through an agent restart (``--datapath external``).

The new agent finds the entry (and its plain-UDP next hop) in the datapath: an analyzer
the policies still name takes the same mirror index and next hop again, so the flows
kept through the restart still copy to it, and nothing is rewritten; an analyzer named
no more is deleted.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.agent.helpers import port_body, tempdir
from tests.agent.test_datapath_sync import _CountingChannel, _Restarted
from vrtwist.agent.dpstate import DatapathModel
from vrtwist.agent.ksync_sync import DatapathSync
from vrtwist.agent.ports import PortTable
from vrtwist.agent.store import PortStore
from vrtwist.agent.testing import InMemoryAgent
from vrtwist.datapath.dispatcher import Datapath

ANALYZER = ("192.0.2.50", 8099)


def restarted(state_dir: str, dp: Datapath, analyzers: dict[str, tuple[str, int]]) -> _Restarted:
    """As AgentService starts with --datapath=external: adopt, replay the ports, set the
    policies' analyzers (the packet service does, before the synchroniser starts)."""
    agent = _Restarted.__new__(_Restarted)
    InMemoryAgent.__init__(agent, state_dir, datapath=Datapath())
    agent.clock = MemoryReactorClock()
    agent.store = PortStore(state_dir)
    agent.table = PortTable(agent.store, agent.clock, tap_check=False)
    agent.model = DatapathModel(os_index=lambda name: 0)
    agent.model.fabric_ip = "192.0.2.1"  # as the first agent had it (set after its base)
    agent.datapath = dp
    agent.sync = DatapathSync(agent.model)
    counting = _CountingChannel(dp, agent)
    agent.sync.channel = counting
    done: list[object] = []
    Deferred.fromCoroutine(agent.sync.adopt()).addBoth(done.append)
    assert done == [0] or (done and isinstance(done[0], int)), done
    agent.sync.channel = None
    agent.table.observe(agent.model)
    agent.table.replay()
    agent.model.set_mirrors(analyzers)
    agent.sync.attach(counting)
    return agent


class MirrorRestartTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempdir(self)
        first = InMemoryAgent(self.dir)
        first.model.fabric_ip = "192.0.2.1"
        first.call("POST", "/port", port_body(1))
        first.model.set_mirrors({"an-1": ANALYZER})
        first.model.set_fabric_mac(ANALYZER[0], bytes.fromhex("0200c0000232"))
        self.assertEqual(first.sync.errors, {})
        self.dp = first.datapath
        index = first.model.mirror_index("an-1")
        assert index is not None
        self.index: int = index
        self.nh, _ = self.dp.tables.mirrors[index]

    def test_named_analyzer_keeps_its_entry(self) -> None:
        second = restarted(self.dir, self.dp, {"an-1": ANALYZER})
        self.assertEqual(second.sync.errors, {})
        self.assertEqual(second.model.mirror_index("an-1"), self.index)
        self.assertEqual(second.writes, 0)  # the same next hop and MAC: nothing sent
        self.assertIs(self.dp.tables.mirrors[self.index][0], self.nh)

    def test_analyzer_named_no_more_is_deleted(self) -> None:
        second = restarted(self.dir, self.dp, {})
        self.assertEqual(second.sync.errors, {})
        self.assertNotIn(self.index, self.dp.tables.mirrors)
        second.sync.release_learnt()  # its next hop counts as a tunnel kept until synced
        self.assertNotIn(self.nh.id, self.dp.tables.nexthops)

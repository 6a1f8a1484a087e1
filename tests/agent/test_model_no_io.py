"""The agent's DatapathModel is state: it reads nothing from the host unless the service
injects the lookups (``host_if_index``, ``host_if_mac``)."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.agent import dpstate
from vrtwist.agent.dpstate import VIF, VROUTER_MAC, DatapathModel


def _fail(name: str) -> bytes | None:
    raise AssertionError(f"host lookup of {name} from the model's constructor")


class ModelNoIoTests(SynchronousTestCase):
    def fabric(self, model: DatapathModel) -> dict[str, Any]:
        return model.desired[(VIF, model.fabric_vif)][1]

    def test_constructor_reads_no_mac(self) -> None:
        self.patch(dpstate, "host_if_mac", _fail)
        model = DatapathModel(fabric_name="lo", os_index=lambda name: 0)
        self.assertEqual(bytes(self.fabric(model)["vifr_mac"]), bytes(VROUTER_MAC))
        self.assertEqual(self.fabric(model)["vifr_os_idx"], 0)

    def test_injected_lookups_are_used(self) -> None:
        asked: list[str] = []

        def mac(name: str) -> bytes:
            asked.append(name)
            return bytes.fromhex("020000000042")

        model = DatapathModel(fabric_name="eth9", os_index=lambda name: 7, if_mac=mac)
        self.assertEqual(asked, ["eth9"])
        self.assertEqual(bytes(self.fabric(model)["vifr_mac"]), bytes.fromhex("020000000042"))
        self.assertEqual(self.fabric(model)["vifr_os_idx"], 7)

    def test_the_service_injects_the_host_lookups(self) -> None:
        from vrtwist.agent.service import AgentService

        state = tempfile.mkdtemp(prefix="hc-state-")
        self.addCleanup(shutil.rmtree, state)
        agent = AgentService(None, run_dir="/nonexistent", state_dir=state, rest="tcp:0",
                             fabric="lo")
        self.assertIs(agent.model._if_mac, dpstate.host_if_mac)
        self.assertIs(agent.model._os_index, dpstate.host_if_index)
        self.assertEqual(bytes(self.fabric(agent.model)["vifr_mac"]), bytes(6))  # lo's MAC

"""The TAP check against real interfaces (root: a TAP device is created for the test).

As in the real agent, only the start-up replay checks that a port's interface exists; a
REST add is accepted whatever the OS holds."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.agent.helpers import port_body, tempdir
from vrtwist.agent.dpstate import DatapathModel
from vrtwist.agent.ksync_sync import DatapathSync, LocalChannel
from vrtwist.agent.ports import interface_exists
from vrtwist.agent.testing import InMemoryAgent


def _make_tap(case: SynchronousTestCase) -> str:
    if os.geteuid() != 0:
        raise SkipTest("creating a TAP device needs root")
    ip = shutil.which("ip")
    if ip is None or not os.path.exists("/dev/net/tun"):
        raise SkipTest("needs the ip tool and /dev/net/tun")
    name = "io" + uuid.uuid4().hex[:8]  # this suite's name prefix
    r = subprocess.run([ip, "tuntap", "add", "dev", name, "mode", "tap"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SkipTest(f"cannot create a TAP device: {r.stderr.strip()}")
    case.addCleanup(subprocess.run, [ip, "link", "del", name], capture_output=True)
    return name


class RealTapTests(SynchronousTestCase):
    def test_existing_tap_is_accepted_and_its_ifindex_programmed(self) -> None:
        tap = _make_tap(self)
        self.assertTrue(interface_exists(tap))
        agent = InMemoryAgent(tempdir(self), tap_check=True, exists=interface_exists)
        agent.model = DatapathModel()  # real if_nametoindex
        agent.sync = DatapathSync(agent.model)
        agent.sync.attach(LocalChannel(agent.datapath))
        agent.table._observers.clear()
        agent.table.observe(agent.model)
        b = port_body(1, **{"system-name": tap})
        self.assertEqual(agent.call("POST", "/port", b), (200, {}))
        ids = agent.model.port_ids(b["id"])
        assert ids is not None
        vif = agent.datapath.tables.interfaces[ids["vif"]]
        self.assertEqual(vif.os_idx, socket.if_nametoindex(tap))
        code, got = agent.call("GET", f"/port/{b['id']}")
        self.assertEqual((code, got["attached"]), (200, True))

    def test_missing_tap_is_accepted_over_rest(self) -> None:
        """As the real agent's REST handler: Nova/os-vif plug before the TAP exists."""
        agent = InMemoryAgent(tempdir(self), tap_check=True, exists=interface_exists)
        missing = "iomissing0"
        b = port_body(1, **{"system-name": missing})
        self.assertEqual(agent.call("POST", "/port", b), (200, {}))
        self.assertEqual(len(agent.table), 1)
        self.assertTrue(agent.store.exists(b["id"]))
        self.assertIsNotNone(agent.model.port_ids(b["id"]))  # programmed
        code, got = agent.call("GET", f"/port/{b['id']}")
        self.assertEqual((code, got["system-name"], got["attached"]), (200, missing, False))

    def test_replay_skips_a_port_whose_tap_is_gone_and_keeps_its_file(self) -> None:
        d = tempdir(self)
        first = InMemoryAgent(d, tap_check=False)
        first.call("POST", "/port", port_body(1, **{"system-name": "vrtgone0"}))
        second = InMemoryAgent(d, tap_check=True, exists=interface_exists)
        added, skipped = second.table.replay()
        self.assertEqual(added, 0)
        self.assertEqual(len(skipped), 1)
        self.assertIn("vrtgone0", skipped[0])
        self.assertTrue(second.store.exists(port_body(1)["id"]))

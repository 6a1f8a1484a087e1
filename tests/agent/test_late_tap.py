"""A port added before its TAP exists (Nova/os-vif order) attaches when the TAP appears.

Real processes (root): ``twistd -n vrouter`` with its embedded datapath and the TAP check
on, a real TAP created after the REST add; ``GET /port`` and ``vif --list`` follow it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

from twisted.trial.unittest import SkipTest, TestCase

from tests.agent.helpers import port_body, tempdir
from tests.agent.procs import Twistd, agent_args
from tests.agent.test_e2e import http_call, utility
from tests.polling import wait_until

#: This suite's device name prefix (parallel runs must not collide).
PFX = "io"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "creating a TAP device needs root"
    if shutil.which("ip") is None or not os.path.exists("/dev/net/tun"):
        return "needs the ip tool and /dev/net/tun"
    return None


class LateTapTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        reason = _skip_reason()
        if reason:
            raise SkipTest(reason)
        self.dir = tempdir(self)
        self.run_dir = os.path.join(self.dir, "run")
        self.state = os.path.join(self.dir, "state")
        self.agent = Twistd(self.dir, "vrouter", agent_args(self.run_dir, self.state), "agent")
        self.addCleanup(self.agent.stop)
        self.port = self.agent.rest_port()

    def test_add_before_the_tap_then_attach(self) -> None:
        tap = PFX + "l" + uuid.uuid4().hex[:8]
        b = port_body(1, **{"system-name": tap})
        self.assertEqual(http_call(self.port, "POST", "/port", b)[0::2], (200, {}))
        status, _reason, got = http_call(self.port, "GET", f"/port/{b['id']}")
        self.assertEqual((status, got["system-name"], got["attached"]), (200, tap, False))
        self.assertTrue(os.path.isfile(os.path.join(self.state, "ports", b["id"])))
        out = utility("vif", "--sock-dir", self.run_dir, "--list")
        self.assertIn(f"Virtual: {tap}", out)
        self.assertIn("Status: DOWN (waiting for the device)", out)

        r = subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SkipTest(f"cannot create a TAP device: {r.stderr.strip()}")
        self.addCleanup(subprocess.run, ["ip", "link", "del", tap], capture_output=True)
        subprocess.run(["ip", "link", "set", tap, "up"], check=True)

        wait_until(lambda: http_call(self.port, "GET", f"/port/{b['id']}")[2]["attached"],
                   "GET to say the port is attached", timeout=30)
        out = utility("vif", "--sock-dir", self.run_dir, "--list")
        block = out[out.index(f"Virtual: {tap}"):]
        self.assertIn("Status: UP", block.split("\n\n")[0])

"""An agent restarted under a running TCP stream re-evaluates the flows it finds.

``twistd vrouter-dp`` and ``twistd vrouter --datapath external``; two VMs (network
namespaces behind veth pairs) on one node, a TCP echo stream between them. The agent is
killed with SIGKILL and started again:

* with nothing changed, the stream keeps answering, and the new agent adopts the pair
  as it is (no entry re-written or deleted);
* with a security group written into its state directory while it was away (VM2 takes
  ICMP only), the stream stops once the new agent has audited the table.

Needs root and ``ip``; skips otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from typing import IO

from twisted.trial.unittest import TestCase

from tests.agent.helpers import port_body
from tests.agent.procs import BIN, SMALL_TABLES, Twistd, agent_args
from tests.agent.test_vm_policy import rest
from tests.agent.test_vm_traffic import Vm
from tests.agent.twonodes import sh, skip_reason
from tests.polling import wait_until

PFX = "af%d" % (os.getpid() % 10000)
VN = "9c9c9c9c-2222-3333-4444-555555555555"
SG = "5c5c5c5c-2222-3333-4444-555555555555"
VM2 = "10.68.1.12"

#: the VM2 side: echoes what it reads on one connection
SERVER = ("import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,"
          "socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',5003));s.listen(1);print('listening',flush=True)\n"
          "c,_=s.accept()\n"
          "while True:\n d=c.recv(100)\n if not d: break\n c.sendall(d)")
#: the VM1 side: a byte every 0.1 s over one connection; "ok" for each echo within 0.5 s,
#: "no" otherwise, each with the time
CLIENT = ("import socket,time\n"
          "for i in range(50):\n"
          " try:\n  s=socket.create_connection(('" + VM2 + "',5003),timeout=5);break\n"
          " except OSError: time.sleep(0.1)\n"
          "s.settimeout(0.5)\n"
          "while True:\n"
          " try:\n  s.sendall(b'x')\n  s.recv(10);print('ok',time.time(),flush=True)\n"
          " except OSError: print('no',time.time(),flush=True)\n"
          " time.sleep(0.1)")


class RestartFlowTests(TestCase):
    timeout = 240
    skip = skip_reason()

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="af-restart-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.run_dir = os.path.join(self.dir, "run")
        self.state = os.path.join(self.dir, "state")
        self.vms = []
        for n in (1, 2):
            vm = Vm(n, f"02:68:00:00:00:0{n}", PFX)
            self.addCleanup(vm.cleanup)
            self.vms.append(vm)
        dp = Twistd(self.dir, "vrouter-dp", ["--run-dir", self.run_dir, *SMALL_TABLES], "dp")
        self.addCleanup(dp.stop)
        wait_until(lambda: os.path.exists(os.path.join(self.run_dir, "dpdk_netlink")),
                   "the datapath socket")
        self.args = agent_args(self.run_dir, self.state, "--datapath", "external")
        self.agent = Twistd(self.dir, "vrouter", self.args, "agent1")
        self.addCleanup(self.agent.kill)
        port = self.agent.rest_port()
        self.port_ids = []
        for n, vm in enumerate(self.vms, 1):
            body = port_body(n, vn=VN, **{
                "ip-address": f"10.68.1.{10 + n}", "mac-address": f"02:68:00:00:00:0{n}",
                "system-name": vm.host, "display-name": f"vm{n}", "plen": 24,
                "gateway": "10.68.1.1", "dns-server": "10.68.1.2",
            })  # fmt: skip
            self.assertEqual(rest(port, "POST", "/port", body)[0], 200)
            self.port_ids.append(body["id"])
        vifs = os.path.join(BIN, "vif")
        wait_until(lambda: sh(vifs, "--sock-dir", self.run_dir, "--list",
                              check=False).stdout.count("Status: UP") >= 2 or None,
                   "both VM vifs attached", 30)
        for n, vm in enumerate(self.vms, 1):
            vm.run("ip", "addr", "add", f"10.68.1.{10 + n}/24", "dev", vm.guest)

    def flows(self) -> str:
        return sh(os.path.join(BIN, "flow"), "--sock-dir", self.run_dir, "-l").stdout

    def stream(self) -> IO[str]:
        vm1, vm2 = self.vms
        server = subprocess.Popen(["ip", "netns", "exec", vm2.ns, "python3", "-c", SERVER],
                                  stdout=subprocess.PIPE, text=True)
        self.addCleanup(server.kill)
        assert server.stdout is not None
        # the client connects once: a refused first attempt would leave a second pair
        self.assertEqual(server.stdout.readline().strip(), "listening")
        client = subprocess.Popen(["ip", "netns", "exec", vm1.ns, "python3", "-u", "-c",
                                   CLIENT], stdout=subprocess.PIPE, text=True)
        self.addCleanup(client.kill)
        assert client.stdout is not None
        out = client.stdout
        for _ in range(60):
            if out.readline().startswith("ok"):
                return out
        self.fail("the stream never answered\n" + self.flows())

    @staticmethod
    def answers(out: IO[str], since: float, count: int) -> list[str]:
        """The next ``count`` answers given after ``since`` (older lines are skipped)."""
        got: list[str] = []
        while len(got) < count:
            word, at = out.readline().split()
            if float(at) >= since:
                got.append(word)
        return got

    def restart(self, name: str) -> Twistd:
        self.agent.kill(signal.SIGKILL)
        agent = Twistd(self.dir, "vrouter", self.args, name)
        self.addCleanup(agent.kill)
        agent.rest_port()
        return agent

    def audited(self, agent: Twistd) -> re.Match[str]:
        pattern = re.compile(r"flows left by the previous agent: (\d+) pair\(s\) adopted, "
                             r"(\d+) re-written, (\d+) deleted")
        found = wait_until(lambda: pattern.search(agent.text()), "the flow audit", 30)
        assert found is not None
        return found

    def stream_flows(self) -> list[str]:
        """The ``flow -l`` lines (index and key) of the stream's two flows."""
        return sorted(line.split("(")[0].strip() for line in self.flows().splitlines()
                      if ":5003" in line)

    def test_restart_with_nothing_changed_keeps_the_stream(self) -> None:
        out = self.stream()
        before = self.stream_flows()
        self.assertEqual(len(before), 2, self.flows())
        agent = self.restart("agent2")
        adopted, rewritten, deleted = map(int, self.audited(agent).groups())
        self.assertEqual((adopted >= 1, rewritten, deleted), (True, 0, 0))
        answers = self.answers(out, time.time(), 30)
        # a loaded machine may miss the 0.5 s once or twice, never for long
        self.assertLessEqual(answers.count("no"), 2, answers)
        self.assertEqual(answers[-5:], ["ok"] * 5)
        self.assertEqual(self.stream_flows(), before)  # the same entries, kept as they were
        self.assertNotIn("Action:D", self.flows())

    def test_security_group_added_while_away_stops_the_stream(self) -> None:
        out = self.stream()
        self.agent.kill(signal.SIGKILL)
        # what PUT /security-groups and /port/<uuid>/security-groups would have saved
        with open(os.path.join(self.state, "policy.json"), "w") as f:
            json.dump({"security-groups": [{"uuid": SG, "name": "icmp-only", "rules": [
                {"direction": "ingress", "protocol": "icmp"}]}],
                "network-policies": [], "port-security-groups": {self.port_ids[1]: [SG]}}, f)
        self.assertEqual(self.answers(out, time.time(), 3), ["ok"] * 3)  # no agent: goes on
        agent = Twistd(self.dir, "vrouter", self.args, "agent2")
        self.addCleanup(agent.kill)
        agent.rest_port()
        adopted, rewritten, deleted = map(int, self.audited(agent).groups())
        self.assertEqual((adopted >= 1, rewritten, deleted), (True, adopted, 0))
        # stopped at once, and stays stopped
        self.assertEqual(self.answers(out, time.time(), 6), ["no"] * 6, self.flows())
        flows = self.flows()
        self.assertIn("Action:D(OutSG)", flows)
        self.assertIn("Action:D(Unknown)", flows)

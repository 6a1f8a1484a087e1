"""Security groups and network policies on a real ``twistd vrouter`` with two VMs.

The VMs are network namespaces behind veth pairs (as in ``test_vm_traffic``). Ping
works; a security group without an ICMP ingress rule on the second VM stops it at once
(the running flow is re-evaluated, ``flow -l`` shows it DROP with the OutSG reason);
adding the rule makes it work again. A TCP stream stops while a network policy denies it
and resumes when the policy is removed. Needs root and ``ip``; skips otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from typing import Any

from twisted.trial.unittest import TestCase

from tests.agent.helpers import port_body
from tests.agent.procs import BIN, Twistd, agent_args
from tests.agent.test_vm_traffic import Vm
from tests.agent.twonodes import sh, skip_reason
from tests.polling import wait_until

PFX = "po%d" % (os.getpid() % 100000)
VN = "9b9b9b9b-2222-3333-4444-555555555555"
SG = "5b5b5b5b-2222-3333-4444-555555555555"
VM1, VM2 = "10.67.1.11", "10.67.1.12"


def rest(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class VmPolicyTests(TestCase):
    timeout = 240
    skip = skip_reason()

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmpolicy-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.run_dir = os.path.join(self.dir, "run")
        self.vms = []
        for n in (1, 2):
            vm = Vm(n, f"02:67:00:00:00:0{n}", PFX)
            self.addCleanup(vm.cleanup)
            self.vms.append(vm)
        self.agent = Twistd(self.dir, "vrouter",
                            agent_args(self.run_dir, os.path.join(self.dir, "state")), "agent")
        self.addCleanup(self.agent.stop)
        self.port = self.agent.rest_port()
        self.port_ids = []
        for n, vm in enumerate(self.vms, 1):
            body = port_body(n, vn=VN, **{
                "ip-address": f"10.67.1.{10 + n}", "mac-address": f"02:67:00:00:00:0{n}",
                "system-name": vm.host, "display-name": f"vm{n}", "plen": 24,
                "gateway": "10.67.1.1", "dns-server": "10.67.1.2",
            })  # fmt: skip
            self.assertEqual(rest(self.port, "POST", "/port", body)[0], 200)
            self.port_ids.append(body["id"])
        vifs = os.path.join(BIN, "vif")
        wait_until(lambda: sh(vifs, "--sock-dir", self.run_dir, "--list",
                              check=False).stdout.count("Status: UP") >= 2 or None,
                   "both VM vifs attached", 30)
        for n, vm in enumerate(self.vms, 1):
            vm.run("ip", "addr", "add", f"10.67.1.{10 + n}/24", "dev", vm.guest)

    def ping(self, count: int = 2) -> bool:
        r = self.vms[0].run("ping", "-c", str(count), "-i", "0.2", "-W", "1", VM2, check=False)
        return r.returncode == 0

    def flows(self) -> str:
        return sh(os.path.join(BIN, "flow"), "--sock-dir", self.run_dir, "-l").stdout

    def icmp_action(self) -> str:
        """The action of the forward ICMP flow VM1 -> VM2 in ``flow -l``."""
        out = self.flows()
        m = re.search(r"10\.67\.1\.11:\d+\s.*?\n\s+10\.67\.1\.12:\d+\s*\n"
                      r"\(Gen: \d+, K\(nh\):\d+, Action:([^,]+),", out, re.S)
        if m is None:
            raise AssertionError("no ICMP flow VM1 -> VM2 in\n" + out)
        return m.group(1)

    def group(self, *rules: dict[str, Any]) -> None:
        code, body = rest(self.port, "PUT", f"/security-groups/{SG}",
                          {"name": "vm2", "rules": list(rules)})
        self.assertEqual(code, 200, body)

    def test_security_group_stops_and_allows_ping(self) -> None:
        self.assertTrue(self.ping(), self.agent.text()[-3000:])
        self.assertEqual(self.icmp_action(), "F")
        # VM2 accepts TCP only: the running ICMP flow is re-evaluated and dropped
        self.group({"direction": "ingress", "protocol": "tcp"}, {"direction": "egress"})
        code, body = rest(self.port, "PUT", f"/port/{self.port_ids[1]}/security-groups", [SG])
        self.assertEqual(code, 200, body)
        self.assertFalse(self.ping())
        self.assertEqual(self.icmp_action(), "D(OutSG)")
        # the rule added: the same flow forwards again
        self.group({"direction": "ingress", "protocol": "tcp"},
                   {"direction": "ingress", "protocol": "icmp", "remote": "10.67.1.0/24"},
                   {"direction": "egress"})
        self.assertTrue(self.ping(), self.flows())
        self.assertEqual(self.icmp_action(), "F")
        code, ports = rest(self.port, "GET", f"/port/{self.port_ids[1]}/security-groups")
        self.assertEqual((code, ports), (200, [SG]))

    def test_policy_stops_and_resumes_a_tcp_stream(self) -> None:
        vm1, vm2 = self.vms
        server = subprocess.Popen(
            ["ip", "netns", "exec", vm2.ns, "python3", "-c",
             "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,"
             "socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',5002));s.listen(1);c,_=s.accept()\n"
             "while True:\n d=c.recv(100)\n if not d: break\n c.sendall(d)"],
            stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.addCleanup(server.kill)
        # the client echoes a line a second through a socket it keeps open; it prints
        # how many answers came back within each second
        client = subprocess.Popen(
            ["ip", "netns", "exec", vm1.ns, "python3", "-u", "-c",
             "import socket,time\n"
             "for i in range(50):\n"
             " try:\n  s=socket.create_connection(('10.67.1.12',5002),timeout=5);break\n"
             " except OSError: time.sleep(0.1)\n"
             "s.settimeout(0.2)\n"
             "while True:\n"
             " try:\n  s.sendall(b'x')\n  s.recv(10);print('ok',flush=True)\n"
             " except OSError: print('no',flush=True)\n"
             " time.sleep(0.1)"],
            stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.addCleanup(client.kill)
        assert client.stdout is not None
        out = client.stdout

        def expect(word: str, within: int = 40) -> None:
            for _ in range(within):
                if out.readline().strip() == word:
                    return
            self.fail(f"the stream never answered {word!r}\n{self.flows()}")

        expect("ok")
        code, body = rest(self.port, "PUT", "/network-policies/no-5002", {
            "networks": [VN], "rules": [{"action": "deny", "protocol": "tcp",
                                         "dst-ports": [5002, 5002]}]})
        self.assertEqual(code, 200, body)
        expect("no")
        for _ in range(3):  # stays stopped
            self.assertEqual(out.readline().strip(), "no")
        self.assertIn("Action:D(Policy)", self.flows())
        self.assertEqual(rest(self.port, "DELETE", "/network-policies/no-5002")[0], 200)
        expect("ok", 80)  # TCP retransmits with back-off: give it time

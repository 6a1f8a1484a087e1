"""Two VMs on one node through a real ``twistd vrouter``: DHCP with a real client, ARP,
ping between the VMs and to the gateway, a TCP stream, and flows set up by the agent.

Each "VM" is a network namespace behind a veth pair: the host end is the interface named
in the port (the datapath attaches the vif to it), the VM end lives in the namespace and
carries the port's MAC. Needs root, ``ip`` and ``dhclient``; skips with the reason
otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from twisted.trial.unittest import TestCase

from tests.agent.helpers import port_body
from tests.agent.procs import BIN, Twistd, agent_args
from tests.agent.twonodes import sh, skip_reason
from tests.polling import wait_until

PFX = "sv%d" % (os.getpid() % 100000)
VN = "9a9a9a9a-2222-3333-4444-555555555555"
GATEWAY, DNS = "10.66.1.1", "10.66.1.2"


def rest(port: int, method: str, path: str, body: Any = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return int(r.status)


class Vm:
    """A namespace behind a veth pair; the host end is what the port names."""

    def __init__(self, n: int, mac: str, prefix: str = PFX) -> None:
        self.ns = f"{prefix}vm{n}"
        self.host = f"{prefix}h{n}"
        self.guest = f"{prefix}g{n}"
        sh("ip", "netns", "add", self.ns)
        os.makedirs(f"/etc/netns/{self.ns}", exist_ok=True)
        # dhclient-script writes resolv.conf: keep it inside the namespace's view
        with open(f"/etc/netns/{self.ns}/resolv.conf", "w") as f:
            f.write("")
        sh("ip", "link", "add", self.host, "type", "veth", "peer", "name", self.guest)
        sh("ip", "link", "set", self.guest, "netns", self.ns)
        sh("ip", "-n", self.ns, "link", "set", self.guest, "address", mac)
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.ns, "link", "set", self.guest, "up")
        sh("sysctl", "-qw", f"net.ipv6.conf.{self.host}.disable_ipv6=1", check=False)
        sh("ip", "link", "set", self.host, "up")

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *args, check=check, timeout=timeout)

    def dhcp(self, workdir: str) -> str:
        lease = os.path.join(workdir, f"{self.ns}.leases")
        pid = os.path.join(workdir, f"{self.ns}.pid")
        self.run("dhclient", "-1", "-4", "-lf", lease, "-pf", pid, self.guest, timeout=60)
        return self.run("ip", "-4", "-o", "addr", "show", "dev", self.guest).stdout

    def cleanup(self) -> None:
        out = sh("ip", "netns", "pids", self.ns, check=False).stdout.split()
        for p in out:
            sh("kill", p, check=False)
        sh("ip", "link", "del", self.host, check=False)
        sh("ip", "netns", "del", self.ns, check=False)
        shutil.rmtree(f"/etc/netns/{self.ns}", ignore_errors=True)


class TwoVmsTests(TestCase):
    timeout = 240
    skip = skip_reason()

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmtraffic-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        run_dir, state = os.path.join(self.dir, "run"), os.path.join(self.dir, "state")
        self.run_dir = run_dir
        self.vms = []
        for n in (1, 2):
            vm = Vm(n, f"02:66:00:00:00:0{n}")
            self.addCleanup(vm.cleanup)
            self.vms.append(vm)
        self.agent = Twistd(self.dir, "vrouter", agent_args(run_dir, state), "agent")
        self.addCleanup(self.agent.stop)
        self.port = self.agent.rest_port()
        for n, vm in enumerate(self.vms, 1):
            body = port_body(n, vn=VN, **{
                "ip-address": f"10.66.1.{10 + n}", "mac-address": f"02:66:00:00:00:0{n}",
                "system-name": vm.host, "display-name": f"vm{n}", "plen": 24,
                "gateway": GATEWAY, "dns-server": DNS,
            })  # fmt: skip
            self.assertEqual(rest(self.port, "POST", "/port", body), 200)

    def vif_list(self) -> str:
        return sh(os.path.join(BIN, "vif"),
                  "--sock-dir", self.run_dir, "--list", check=False).stdout

    def test_dhcp_ping_tcp_and_flows(self) -> None:
        vm1, vm2 = self.vms
        wait_until(lambda: self.vif_list().count("Status: UP") >= 2 or None,
                   "both VM vifs attached", 30)
        # a real DHCP client in each VM gets the port's address, prefix and gateway
        for n, vm in enumerate(self.vms, 1):
            addr = vm.dhcp(self.dir)
            self.assertIn(f"inet 10.66.1.{10 + n}/24", addr)
            routes = vm.run("ip", "-4", "route").stdout
            self.assertIn(f"default via {GATEWAY}", routes)
        # VM to VM (ARP answered by the datapath, flow set up by the agent) and the gateway
        r = vm1.run("ping", "-c", "3", "-i", "0.2", "-W", "2", "10.66.1.12", check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + self.agent.text()[-3000:])
        r = vm2.run("ping", "-c", "2", "-i", "0.2", "-W", "2", GATEWAY, check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # a TCP stream, every byte checked
        server = subprocess.Popen(
            ["ip", "netns", "exec", vm2.ns, "python3", "-c",
             "import socket,hashlib;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,"
             "socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',5001));s.listen(1);c,_=s.accept();"
             "h=hashlib.sha256();n=0\n"
             "while True:\n d=c.recv(65536)\n if not d: break\n h.update(d);n+=len(d)\n"
             "print(n,h.hexdigest())"],
            stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.addCleanup(server.kill)
        payload_cmd = (
            "import socket,hashlib,time,os\n"
            "data=os.urandom(4*1024*1024)\n"
            "for i in range(50):\n"
            " try:\n  s=socket.create_connection(('10.66.1.12',5001),timeout=5);break\n"
            " except OSError: time.sleep(0.1)\n"
            "s.sendall(data);s.close();print(hashlib.sha256(data).hexdigest())"
        )
        sent = vm1.run("python3", "-c", payload_cmd, timeout=120).stdout.strip()
        out, _ = server.communicate(timeout=120)
        nbytes, digest = out.split()
        self.assertEqual((int(nbytes), digest), (4 * 1024 * 1024, sent))
        # the flows the agent set up are in the table with live counters; the TCP pair
        # was evicted by the datapath when the connection closed (FIN both ways)
        flows = sh(os.path.join(BIN, "flow"), "--sock-dir", self.run_dir, "-l").stdout
        self.assertIn("10.66.1.11:", flows)
        evicted = sh(os.path.join(BIN, "flow"), "--sock-dir", self.run_dir, "-l",
                     "--show-evicted").stdout
        self.assertIn("10.66.1.12:5001", evicted)

    def test_flow_set_to_drop_stops_traffic_and_counts(self) -> None:
        """UDP between the VMs flows through an agent-made flow; `flow -d` on it stops the
        traffic, and `flow -l` shows its packet counter still moving (the drops)."""
        vm1, vm2 = self.vms
        wait_until(lambda: self.vif_list().count("Status: UP") >= 2 or None,
                   "both VM vifs attached", 30)
        for n, vm in enumerate(self.vms, 1):
            vm.run("ip", "addr", "add", f"10.66.1.{10 + n}/24", "dev", vm.guest)
        receiver = subprocess.Popen(
            ["ip", "netns", "exec", vm2.ns, "python3", "-c",
             "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
             "s.bind(('0.0.0.0',7001));s.settimeout(1.5)\n"
             "while True:\n"
             " try: d=s.recv(100)\n"
             " except OSError: continue\n"
             " print(d.decode(),flush=True)"],
            stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.addCleanup(receiver.kill)

        def send(tag: str, count: int) -> None:
            vm1.run("python3", "-c",
                    "import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                    "s.bind(('0.0.0.0',7000))\n"
                    f"for i in range({count}): s.sendto(b'{tag}%d'%i,('10.66.1.12',7001));"
                    "time.sleep(0.05)")  # fmt: skip

        def flow_line() -> tuple[int, int, str]:
            """(index, packets, action) of the forward flow 10.66.1.11:7000 -> :7001."""
            out = sh(os.path.join(BIN, "flow"), "--sock-dir", self.run_dir, "-l").stdout
            m = re.search(r"(\d+)(?:<=>\d+)?\s+10\.66\.1\.11:7000\s.*?\n\s+10\.66\.1\.12:7001"
                          r"\s*\n\(Gen: \d+, K\(nh\):\d+, Action:(\w+)[^,]*,.*?Stats:(\d+)/",
                          out, re.S)
            if m:
                return int(m.group(1)), int(m.group(3)), m.group(2)
            raise AssertionError("no flow for 10.66.1.11:7000 in\n" + out)

        send("a", 5)
        index, before, action = wait_until(lambda: flow_line(), "the UDP flow", 10)
        self.assertEqual(action, "F")
        self.assertGreaterEqual(before, 1)
        r = sh(os.path.join(BIN, "flow"), "--sock-dir", self.run_dir, "-d", str(index),
               check=False)  # fmt: skip
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        send("b", 5)
        time.sleep(0.5)
        index2, after, action = flow_line()
        self.assertEqual((index2, action), (index, "D"))
        self.assertGreaterEqual(after, before + 5)  # the dropped packets are counted
        receiver.kill()
        got = receiver.communicate()[0].split()
        self.assertIn("a4", got)
        self.assertFalse([x for x in got if x.startswith("b")], got)

"""End to end on loopback: one or two ``twistd vrouter-control`` and three ``twistd vrouter``
processes (fabric IPs 127.0.0.2..4), ports added over REST, checked with ``rt --dump`` and
``nh --list`` as a user would."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from tests.agent.procs import CONTROL_PORT_RE, REST_PORT_RE, logged_port
from tests.polling import wait_until

BIN = os.path.dirname(sys.executable)
VN = "20000000-0000-0000-0000-000000000001"




def wait_for(pred: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Block until ``pred()`` holds (these nodes are subprocesses)."""
    wait_until(pred, what, timeout, 0.1)


class Node:
    """One ``twistd vrouter`` with the embedded datapath, in its own run directory."""

    def __init__(self, base: str, index: int, controllers: list[int]) -> None:
        self.index = index
        self.fabric_ip = f"127.0.0.{index}"
        self.run = os.path.join(base, f"run{index}")
        self.state = os.path.join(base, f"state{index}")
        os.makedirs(self.run)
        os.makedirs(self.state)
        self.rest = 0  # listens on port 0; read back from the log by ready()
        args = [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "vrouter", "--run-dir", self.run,
                "--state-dir", self.state, "--rest", "tcp:0:interface=127.0.0.1",
                "--fabric-ip", self.fabric_ip, "--hostname", f"node{index}", "--no-tap-check",
                "--flow-entries", "1024", "--bridge-entries", "1024"]
        for p in controllers:
            args += ["--controller", f"tcp:127.0.0.1:{p}"]
        self.log_path = os.path.join(base, f"node{index}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=base, stdout=self.log, stderr=subprocess.STDOUT)

    def tool(self, *args: str) -> str:
        out = subprocess.run([os.path.join(BIN, args[0]), "--sock-dir", self.run, *args[1:]],
                             capture_output=True, text=True, timeout=20)
        return out.stdout

    def ready(self) -> bool:
        if not os.path.exists(os.path.join(self.run, "dpdk_netlink")):
            return False
        if not self.rest:
            self.rest = logged_port(self.log_path, REST_PORT_RE) or 0
            if not self.rest:
                return False
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.rest}/port/none", timeout=2)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def add_port(self, n: int) -> None:
        body = {"id": f"0000000{self.index}-0000-0000-0000-0000000000{n:02d}",
                "instance-id": f"1000000{self.index}-0000-0000-0000-0000000000{n:02d}",
                "vn-id": VN, "vm-project-id": "30000000-0000-0000-0000-000000000001",
                "display-name": f"vm{self.index}-{n}", "ip-address": f"10.1.{n}.{self.index}",
                "ip6-address": f"fd00::{n}:{self.index}", "type": 0,
                "system-name": f"tap{self.index}-{n}",
                "mac-address": f"02:00:00:00:{n:02x}:0{self.index}", "rx-vlan-id": -1,
                "tx-vlan-id": -1}
        req = urllib.request.Request(f"http://127.0.0.1:{self.rest}/port", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def delete_port(self, n: int) -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.rest}/port/0000000{self.index}-0000-0000-0000-0000000000{n:02d}",
            method="DELETE")
        urllib.request.urlopen(req, timeout=10).read()

    def vrfs(self) -> set[int]:
        """VRF ids of the VM interfaces, from ``vif --list``."""
        return {int(v) for v in re.findall(r"Type:Virtual.*?Vrf:(\d+)", self.tool("vif", "--list"),
                                            re.S)}

    def routes(self) -> dict[str, int]:
        """prefix -> next-hop id, from ``rt --dump <vrf>`` (inet and inet6) of every VM VRF."""
        out = "".join(self.tool("rt", "--dump", str(v), "--family", fam)
                      for v in sorted(self.vrfs()) for fam in ("inet", "inet6"))
        return {m.group(1): int(m.group(2)) for m in
                re.finditer(r"^(\S+/\d+)\s+\d+\s+\S*\s+\d+\s+(\d+)", out, re.M)}

    def tunnels(self) -> dict[int, str]:
        """next-hop id -> tunnel destination, from ``nh --list``."""
        out = self.tool("nh", "--list")
        return {int(m.group(1)): m.group(2) for m in
                re.finditer(r"Id:(\d+)\s+Type:Tunnel.*?Dip:(\S+)", out, re.S)}

    def remote(self) -> dict[str, str]:
        """prefix -> tunnel destination for every route through a tunnel."""
        tun = self.tunnels()
        return {p: tun[nh] for p, nh in self.routes().items() if nh in tun}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        self.log.close()


class EndToEndTests(SynchronousTestCase):
    def setUp(self) -> None:
        for tool in ("twistd", "rt", "nh", "vif"):
            if not os.path.exists(os.path.join(BIN, tool)):
                raise self.skipTest(f"console script {tool} not installed")
        try:
            import vrtwist.agent.tap
            import vrtwist.datapath.service  # noqa: F401
        except ImportError as e:
            raise self.skipTest(f"agent or datapath not available: {e}") from None
        self.base = tempfile.mkdtemp(prefix="vrtwist-e2e-")
        self.cns: dict[int, subprocess.Popen[bytes]] = {}

    def start_cn(self, name: str, port: int = 0) -> int:
        """Start control node ``name`` on ``port`` (0: any, read back from its log)."""
        path = os.path.join(self.base, f"{name}.log")
        log = open(path, "ab")
        self.addCleanup(log.close)
        proc = subprocess.Popen(
            [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "vrouter-control", "--xmpp",
             f"tcp:{port}:interface=127.0.0.1", "--hostname", name, "--gr-time", "2",
             "--introspect", "none"],
            cwd=self.base, stdout=log, stderr=subprocess.STDOUT)
        if not port:
            found = wait_until(lambda: logged_port(path, CONTROL_PORT_RE), f"{name} to listen", 30)
            assert found is not None  # wait_until returns only a true value
            port = found
        self.cns[port] = proc
        self.addCleanup(self.stop_cn, port)
        return port

    def stop_cn(self, port: int) -> None:
        proc = self.cns[port]
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=20)

    def test_three_agents_two_control_nodes(self) -> None:
        cn1 = self.start_cn("cn1")
        cn2 = self.start_cn("cn2")
        nodes = {i: Node(self.base, i, [cn1, cn2]) for i in (2, 3, 4)}
        for n in nodes.values():
            self.addCleanup(n.stop)
        for n in nodes.values():
            wait_for(n.ready, f"node{n.index} to listen")
        for n in nodes.values():
            n.add_port(1)
            # the agent itself created the fabric vif 0 its tunnel next hops leave by
            self.assertIn("vif0/0", n.tool("vif", "--list"))

        def everyone_has(expected: dict[int, dict[str, str]]) -> Callable[[], bool]:
            return lambda: all(nodes[i].remote() == want for i, want in expected.items())

        full = {i: {p: f"127.0.0.{j}" for j in nodes if j != i
                    for p in (f"10.1.1.{j}/32", f"fd00::1:{j}/128")} for i in nodes}
        wait_for(everyone_has(full), "every node to have tunnel routes to the other two VMs")
        [vrf] = nodes[2].vrfs()
        bridge = nodes[2].tool("rt", "--dump", str(vrf), "--family", "bridge")
        self.assertIn("2:0:0:0:1:3", bridge)
        self.assertIn("2:0:0:0:1:4", bridge)

        # Deleting a port withdraws its routes everywhere (and the tunnel goes with it).
        nodes[2].delete_port(1)
        wait_for(lambda: not {"10.1.1.2/32", "fd00::1:2/128"} & (
                 set(nodes[3].remote()) | set(nodes[4].remote())), "the withdraw of 10.1.1.2")
        self.assertNotIn("127.0.0.2", nodes[3].tunnels().values())
        nodes[2].add_port(1)
        wait_for(everyone_has(full), "10.1.1.2 back everywhere")

        # Restarting the control node: forwarding state stays, then it reconverges.
        self.stop_cn(cn1)
        time.sleep(0.5)
        self.assertEqual(nodes[3].remote(), full[3])
        # the agents were told this port: it comes back on the same one
        self.start_cn("cn1", cn1)
        nodes[4].add_port(2)
        wait_for(lambda: nodes[3].remote().get("10.1.2.4/32") == "127.0.0.4",
                 "a route added around the restart to reach node3")

        # The second control node takes over when the first is stopped for good.
        self.stop_cn(cn1)
        nodes[3].add_port(2)
        wait_for(lambda: nodes[2].remote().get("10.1.2.3/32") == "127.0.0.3",
                 "node2 to learn node3's new route through cn2", timeout=45)
        with open(os.path.join(self.base, "cn2.log")) as f:
            self.assertIn("agent node2 connected", f.read())

        # Killing an agent removes its routes from the others after the GR time (2 s).
        nodes[4].stop(signal.SIGKILL)
        wait_for(lambda: not any(d == "127.0.0.4" for d in nodes[2].remote().values())
                 and not any(d == "127.0.0.4" for d in nodes[3].remote().values()),
                 "node4's routes to be retracted")
        self.assertEqual(nodes[2].remote(), {"10.1.1.3/32": "127.0.0.3", "10.1.2.3/32": "127.0.0.3",
                                             "fd00::1:3/128": "127.0.0.3",
                                             "fd00::2:3/128": "127.0.0.3"})

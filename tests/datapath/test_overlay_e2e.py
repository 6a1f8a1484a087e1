"""Two compute nodes over a fabric: MPLSoUDP, MPLSoGRE and VXLAN between two real
``twistd vrouter-dp`` processes, each in its own network namespace (root).

Node X and node Y are namespaces joined by a fabric veth pair; VM A sits behind node X,
VM B behind node Y (each a namespace behind a veth pair). Each datapath is programmed with
the real utilities only (``vif``, ``nh``, ``rt``, ``mpls``, ``vxlan``) as a compute node
bridging its VM to the other node: fabric vif 0, vhost vif 1 cross-connected to it, the
VM's vif in VRF 1, a receive route for the node's own fabric address, an L2 next hop to
the local VM reached by an incoming label (or VNI), and a tunnel next hop with a labelled
bridge entry for the remote VM. ICMP echo and a TCP stream checked byte for byte must cross.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase

from tests.datapath.ports_world import skip_reason
from tests.polling import wait_until
from tests.streams import tcp_stream
from vrtwist.datapath.testing import (
    Vm,
    build_two_nodes,
    node_config,
    program_node,
    remove_namespaces,
    run,
    start_vrouter_dp,
    stop_processes,
)

PFX = "ov%d" % (os.getpid() % 100000)
BIN = os.path.dirname(sys.executable)
FX, FY = "02:fa:00:00:00:01", "02:fa:00:00:00:02"
IPX, IPY = "192.0.2.1", "192.0.2.2"
MAC_A, MAC_B = "02:aa:00:00:00:01", "02:bb:00:00:00:02"
IP_A, IP_B = "10.88.1.1", "10.88.1.2"
LABEL = 128


class OverlayTests(TestCase):
    timeout = 180
    skip = skip_reason()

    def setUp(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        nodes = build_two_nodes(PFX, Vm(MAC_A, IP_A), Vm(MAC_B, IP_B), (FX, FY))
        self.addCleanup(remove_namespaces, nodes.namespaces)
        self.addCleanup(stop_processes, self.procs)  # first, before the namespaces go
        self.a, self.b, self.x, self.y = nodes.a, nodes.b, nodes.x, nodes.y

    def start_nodes(self, encap: str) -> list[str]:
        run_dirs = []
        for node, config in (
            (self.x, node_config("fx", FX, FY, IPX, IPY, "va", MAC_A, MAC_B, encap, LABEL)),
            (self.y, node_config("fy", FY, FX, IPY, IPX, "vb", MAC_B, MAC_A, encap, LABEL)),
        ):
            run_dir = tempfile.mkdtemp(prefix=PFX)
            self.addCleanup(shutil.rmtree, run_dir, True)
            run_dirs.append(run_dir)
            self.procs.append(start_vrouter_dp(node, run_dir))
            program_node(node, run_dir, config)
        for node, run_dir in zip((self.x, self.y), run_dirs, strict=True):
            def up(node: str = node, run_dir: str = run_dir) -> bool:
                out = run("ip", "netns", "exec", node, os.path.join(BIN, "vif"), "--sock-dir",
                         run_dir, "--list").stdout  # fmt: skip
                return out.count("Status: UP") >= 2

            wait_until(up, f"both vifs of {node} up", 20, 0.1)
        return run_dirs

    def crosses(self, encap: str) -> None:
        run_dirs = self.start_nodes(encap)
        r = run("ip", "netns", "exec", self.a, "ping", "-c", "3", "-i", "0.2", "-W", "2", IP_B,
               check=False)  # fmt: skip
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        server, client, expected = tcp_stream(IP_B, 5301, 2 * 1024 * 1024)
        srv = subprocess.Popen(["ip", "netns", "exec", self.b, sys.executable, "-c", server],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(srv.kill)
        sent = run("ip", "netns", "exec", self.a, sys.executable, "-c", client, timeout=120)
        self.assertEqual(sent.returncode, 0, sent.stderr)
        out, err = srv.communicate(timeout=120)
        self.assertEqual(out.strip(), expected, err)
        # the fabric vif of node X carried the tunnel: its tx counters moved
        vif0 = run("ip", "netns", "exec", self.x, os.path.join(BIN, "vif"), "--sock-dir",
                  run_dirs[0], "--get", "0").stdout  # fmt: skip
        self.assertNotIn("TX packets:0 ", vif0)
        vm = run("ip", "netns", "exec", self.y, os.path.join(BIN, "vif"), "--sock-dir",
                 run_dirs[1], "--get", "3").stdout  # fmt: skip
        # the veths hand over TCP super-frames: into a UDP tunnel they leave node X as
        # UDP GSO super-frames (larger than the fabric MTU on average; GRE: one by one)
        # and node Y merges them back into TCP super-frames for VM B
        for counters, gso in ((vif0, encap != "gre"), (vm, encap != "gre")):
            packets, size = (int(n) for n in re.findall(r"TX packets:(\d+)\s+bytes:(\d+)",
                                                        counters)[0])  # fmt: skip
            self.assertEqual(size / packets > 1514, gso, counters)

    def test_mplsoudp(self) -> None:
        self.crosses("udp")

    def test_mplsogre(self) -> None:
        self.crosses("gre")

    def test_vxlan(self) -> None:
        self.crosses("vxlan")

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

PFX = "ov%d" % (os.getpid() % 100000)
BIN = os.path.dirname(sys.executable)
FX, FY = "02:fa:00:00:00:01", "02:fa:00:00:00:02"
IPX, IPY = "192.0.2.1", "192.0.2.2"
MAC_A, MAC_B = "02:aa:00:00:00:01", "02:bb:00:00:00:02"
IP_A, IP_B = "10.88.1.1", "10.88.1.2"
LABEL = 128


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def node_config(dev: str, mac: str, peer_mac: str, ip: str, peer_ip: str, vm_dev: str,
                vm_mac: str, remote_vm_mac: str, encap: str) -> list[list[str]]:  # fmt: skip
    tunnel = {"udp": ["--udp"], "gre": [], "vxlan": ["--vxlan"]}[encap]
    incoming = (["vxlan", "--create", str(LABEL), "--nh", "32"] if encap == "vxlan"
                else ["mpls", "--create", str(LABEL), "--nh", "32"])  # fmt: skip
    return [
        ["vif", "--add", dev, "--type", "physical", "--id", "0", "--mac", mac],
        ["vif", "--add", "vhost0", "--type", "vhost", "--id", "1", "--xconnect", dev,
         "--mac", mac],
        ["vif", "--add", vm_dev, "--type", "virtual", "--id", "3", "--vrf", "1", "--mac",
         "00:00:5e:00:01:00"],
        ["nh", "--create", "1", "--type", "1", "--oif", "1"],
        ["rt", "-c", "-v", "0", "-f", "0", "-p", ip, "-l", "32", "-n", "1"],
        ["nh", "--create", "32", "--type", "2", "--oif", "3", "--l2"],
        incoming,
        ["rt", "-c", "-v", "1", "-f", "1", "-e", vm_mac, "-n", "32"],
        ["nh", "--create", "20", "--type", "3", "--oif", "0", *tunnel, "--smac", mac,
         "--dmac", peer_mac, "--sip", ip, "--dip", peer_ip],
        ["rt", "-c", "-v", "1", "-f", "1", "-e", remote_vm_mac, "-n", "20", "-t", str(LABEL),
         "-x", "2"],
    ]  # fmt: skip


class OverlayTests(TestCase):
    timeout = 180
    skip = skip_reason()

    def setUp(self) -> None:
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.addCleanup(self._cleanup)
        self.a, self.b, self.x, self.y = (PFX + s for s in "abxy")
        for ns in (self.a, self.b, self.x, self.y):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.x, "link", "add", "fx", "type", "veth", "peer", "name", "fy",
           "netns", self.y)  # fmt: skip
        for node, dev, mac in ((self.x, "fx", FX), (self.y, "fy", FY)):
            sh("ip", "-n", node, "link", "set", dev, "address", mac)
            sh("ip", "-n", node, "link", "set", dev, "up")
        for ns, node, side, mac, ip, other_ip, other_mac in (
            (self.a, self.x, "va", MAC_A, IP_A, IP_B, MAC_B),
            (self.b, self.y, "vb", MAC_B, IP_B, IP_A, MAC_A),
        ):
            sh("ip", "-n", node, "link", "add", side, "type", "veth", "peer", "name", "eth0",
               "netns", ns)  # fmt: skip
            sh("ip", "-n", node, "link", "set", side, "up")
            # room for the overlay headers on the 1500-byte fabric
            sh("ip", "-n", ns, "link", "set", "eth0", "address", mac, "mtu", "1400")
            sh("ip", "-n", ns, "addr", "add", ip + "/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "neigh", "replace", other_ip, "lladdr", other_mac, "dev", "eth0")

    def _cleanup(self) -> None:
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)

    def start_nodes(self, encap: str) -> list[str]:
        run_dirs = []
        for node, config in (
            (self.x, node_config("fx", FX, FY, IPX, IPY, "va", MAC_A, MAC_B, encap)),
            (self.y, node_config("fy", FY, FX, IPY, IPX, "vb", MAC_B, MAC_A, encap)),
        ):
            run_dir = tempfile.mkdtemp(prefix=PFX)
            self.addCleanup(shutil.rmtree, run_dir, True)
            run_dirs.append(run_dir)
            log = os.path.join(run_dir, "vrouter-dp.log")
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", node, os.path.join(BIN, "twistd"), "-n", "--pidfile=",
                 "--logfile", log, "vrouter-dp", "--run-dir", run_dir, "--flow-entries",
                 "4096", "--bridge-entries", "4096"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))  # fmt: skip
            proc = self.procs[-1]

            def started(run_dir: str = run_dir, proc: subprocess.Popen[bytes] = proc,
                        log: str = log) -> bool:
                self.assertIsNone(proc.poll(), log)  # exited: fail at once
                return os.path.exists(os.path.join(run_dir, "dpdk_netlink"))

            wait_until(started, "vrouter-dp to start", 30)
            for tool, *args in config:
                r = sh("ip", "netns", "exec", node, os.path.join(BIN, tool), "--sock-dir",
                       run_dir, *args, check=False)  # fmt: skip
                self.assertEqual(r.returncode, 0, (tool, args, r.stdout, r.stderr))
        for node, run_dir in zip((self.x, self.y), run_dirs, strict=True):
            def up(node: str = node, run_dir: str = run_dir) -> bool:
                out = sh("ip", "netns", "exec", node, os.path.join(BIN, "vif"), "--sock-dir",
                         run_dir, "--list").stdout  # fmt: skip
                return out.count("Status: UP") >= 2

            wait_until(up, f"both vifs of {node} up", 20, 0.1)
        return run_dirs

    def crosses(self, encap: str) -> None:
        run_dirs = self.start_nodes(encap)
        r = sh("ip", "netns", "exec", self.a, "ping", "-c", "3", "-i", "0.2", "-W", "2", IP_B,
               check=False)  # fmt: skip
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        server, client, expected = tcp_stream(IP_B, 5301, 2 * 1024 * 1024)
        srv = subprocess.Popen(["ip", "netns", "exec", self.b, sys.executable, "-c", server],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(srv.kill)
        sent = sh("ip", "netns", "exec", self.a, sys.executable, "-c", client, timeout=120)
        self.assertEqual(sent.returncode, 0, sent.stderr)
        out, err = srv.communicate(timeout=120)
        self.assertEqual(out.strip(), expected, err)
        # the fabric vif of node X carried the tunnel: its tx counters moved
        vif0 = sh("ip", "netns", "exec", self.x, os.path.join(BIN, "vif"), "--sock-dir",
                  run_dirs[0], "--get", "0").stdout  # fmt: skip
        self.assertNotIn("TX packets:0 ", vif0)
        vm = sh("ip", "netns", "exec", self.y, os.path.join(BIN, "vif"), "--sock-dir",
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

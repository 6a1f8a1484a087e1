"""A network policy's ``mirror-to`` on a real ``twistd vrouter``: copies at the analyzer.

Two VMs (network namespaces behind veth pairs) on one node whose fabric is a veth into
a third namespace, the analyzer, which listens on UDP. A policy rule mirroring the VMs'
ICMP to the analyzer makes each echo of VM1's ping arrive there as a UDP datagram from
the node's fabric address: the mirror metadata (``ff 00``), then the frame as VM1 sent
it. Needs root and ``ip``; skips otherwise.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile

from twisted.trial.unittest import TestCase

from tests.agent.helpers import port_body
from tests.agent.procs import BIN, SMALL_TABLES, Twistd, agent_args
from tests.agent.test_vm_policy import rest
from tests.agent.test_vm_traffic import Vm
from tests.agent.twonodes import sh, skip_reason
from tests.polling import wait_until
from vrtwist.agent.dpstate import MIRROR_SPORT

PFX = "af%dm" % (os.getpid() % 1000)
VN = "9d9d9d9d-2222-3333-4444-555555555555"
FABRIC_IP, ANALYZER = "192.168.79.1", "192.168.79.50"
VM1, VM2 = "10.69.1.11", "10.69.1.12"

#: the analyzer: prints "source-address source-port payload-hex" per datagram on 8099
LISTENER = ("import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',8099))\n"
            "print('ready',flush=True)\n"
            "while True:\n"
            " d,a=s.recvfrom(65535);print(a[0],a[1],d.hex(),flush=True)")


class MirrorTests(TestCase):
    timeout = 240
    skip = skip_reason()

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="af-mirror-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.run_dir = os.path.join(self.dir, "run")
        self.fabric, self.peer, self.ns = f"{PFX}f", f"{PFX}p", f"{PFX}an"
        sh("ip", "netns", "add", self.ns)
        self.addCleanup(sh, "ip", "netns", "del", self.ns, check=False)
        sh("ip", "link", "add", self.fabric, "type", "veth", "peer", "name", self.peer)
        self.addCleanup(sh, "ip", "link", "del", self.fabric, check=False)
        sh("ip", "link", "set", self.peer, "netns", self.ns)
        sh("ip", "-n", self.ns, "addr", "add", f"{ANALYZER}/24", "dev", self.peer)
        sh("ip", "-n", self.ns, "link", "set", self.peer, "up")
        sh("sysctl", "-qw", f"net.ipv6.conf.{self.fabric}.disable_ipv6=1", check=False)
        sh("ip", "link", "set", self.fabric, "up")
        self.vms = []
        for n in (1, 2):
            vm = Vm(n, f"02:69:00:00:00:0{n}", PFX)
            self.addCleanup(vm.cleanup)
            self.vms.append(vm)

    def start(self, external: bool = False) -> None:
        """The node: ``twistd vrouter`` (embedded datapath), or ``twistd vrouter-dp`` and
        an agent with ``--datapath external`` (ksync and pkt0 over their sockets)."""
        extra: tuple[str, ...] = ()
        if external:
            dp = Twistd(self.dir, "vrouter-dp", ["--run-dir", self.run_dir, *SMALL_TABLES,
                                                 "--fabric", self.fabric], "dp")
            self.addCleanup(dp.stop)
            wait_until(lambda: os.path.exists(os.path.join(self.run_dir, "dpdk_netlink")),
                       "the datapath socket")
            extra = ("--datapath", "external")
        args = agent_args(self.run_dir, os.path.join(self.dir, "state"),
                          "--fabric", self.fabric, "--fabric-ip", FABRIC_IP, *extra)
        self.agent = Twistd(self.dir, "vrouter", args, "agent")
        self.addCleanup(self.agent.stop)
        self.port = self.agent.rest_port()
        for n, vm in enumerate(self.vms, 1):
            body = port_body(n, vn=VN, **{
                "ip-address": f"10.69.1.{10 + n}", "mac-address": f"02:69:00:00:00:0{n}",
                "system-name": vm.host, "display-name": f"vm{n}", "plen": 24,
                "gateway": "10.69.1.1", "dns-server": "10.69.1.2",
            })  # fmt: skip
            self.assertEqual(rest(self.port, "POST", "/port", body)[0], 200)
        vifs = os.path.join(BIN, "vif")
        wait_until(lambda: sh(vifs, "--sock-dir", self.run_dir, "--list",
                              check=False).stdout.count("Status: UP") >= 3 or None,
                   "the fabric and both VM vifs attached", 30)
        for n, vm in enumerate(self.vms, 1):
            vm.run("ip", "addr", "add", f"10.69.1.{10 + n}/24", "dev", vm.guest)

    def test_ping_is_copied_to_the_analyzer(self) -> None:
        self.start()
        self.copied()

    def test_ping_is_copied_with_an_external_datapath(self) -> None:
        self.start(external=True)
        self.copied()

    def copied(self) -> None:
        """A ping VM1 -> VM2 under a mirror rule: its echo requests reach the analyzer."""
        listener = subprocess.Popen(["ip", "netns", "exec", self.ns, "python3", "-u", "-c",
                                     LISTENER], stdout=subprocess.PIPE, text=True)
        self.addCleanup(listener.kill)
        assert listener.stdout is not None
        self.assertEqual(listener.stdout.readline().strip(), "ready")
        code, body = rest(self.port, "PUT", "/network-policies/mirror-icmp", {
            "networks": [VN], "rules": [{"action": "pass", "protocol": "icmp", "mirror-to": {
                "analyzer-name": "an-1", "analyzer-ip-address": ANALYZER}}]})
        self.assertEqual(code, 200, body)
        mirrors = sh(os.path.join(BIN, "mirror"), "--sock-dir", self.run_dir, "--dump").stdout
        self.assertIn("Flags:D", mirrors.replace(" ", ""), mirrors)
        # the first copies may leave before the analyzer's MAC is resolved: ping until
        # one arrives
        vm1 = self.vms[0]
        for _ in range(10):
            r = vm1.run("ping", "-c", "3", "-i", "0.2", "-W", "1", VM2, check=False)
            self.assertEqual(r.returncode, 0, r.stdout)  # the ping itself goes on
            line = self._next_copy(listener)
            if line is not None:
                break
        else:
            self.fail("no copy reached the analyzer\n" + self.agent.text()[-3000:])
        src, sport, payload = line.split()
        frame = bytes.fromhex(payload)
        self.assertEqual((src, int(sport)), (FABRIC_IP, MIRROR_SPORT))
        self.assertEqual(frame[:2], b"\xff\x00")  # the mirror metadata: no TLV
        inner = frame[2:]
        self.assertEqual(inner[6:12], bytes.fromhex("026900000001"))  # from VM1's MAC
        self.assertEqual(inner[12:14], b"\x08\x00")
        self.assertEqual(inner[14 + 9], 1)  # ICMP
        self.assertEqual(inner[14 + 12:14 + 20], bytes((10, 69, 1, 11, 10, 69, 1, 12)))

    @staticmethod
    def _next_copy(listener: subprocess.Popen[str]) -> str | None:
        """A copy of an echo request VM1 -> VM2, if one arrived within 2 s."""
        assert listener.stdout is not None
        while True:
            ready, _, _ = select.select([listener.stdout], [], [], 2.0)
            if not ready:
                return None
            line = listener.stdout.readline()
            payload = bytes.fromhex(line.split()[2])
            if payload[2 + 14 + 20:2 + 14 + 21] == b"\x08":  # an echo request
                return line

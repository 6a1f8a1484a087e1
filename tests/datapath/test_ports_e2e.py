"""End to end: two namespaces joined by ``twistd vrouter-dp``'s real pipeline (root).

The datapath is programmed only with the real utilities (``vif``, ``nh``, ``rt``) over
its ksync socket: one VIRTUAL vif per namespace veth, an L2 ENCAP next hop to each and
a bridge route per namespace MAC. The namespaces have static neighbours, so no ARP is
needed (the bridge table has no broadcast entry here); ICMP echo and a 4 MiB TCP
transfer (veth TSO and checksum offload on) must arrive intact, the TCP stream as GSO
super-frames carried whole from one veth to the other.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorUNIX
from twisted.trial.unittest import TestCase

from tests.datapath.ports_world import PFX, PING, Devices, in_netns, run_tool, sh, skip_reason
from tests.polling import wait_for
from tests.streams import tcp_stream
from vrtwist.cli import nh as nh_cli
from vrtwist.cli import rt as rt_cli
from vrtwist.cli import vif as vif_cli
from vrtwist.datapath.service import makeDatapathService

_SKIP = skip_reason()

MAC1, MAC2 = "02:77:00:00:00:01", "02:77:00:00:00:02"
IP1, IP2 = "10.77.1.1", "10.77.1.2"


class TwoNamespacesTests(TestCase):
    timeout = 180
    if _SKIP:
        skip = _SKIP

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]  # trial waits for the Deferred
        self.run_dir = tempfile.mkdtemp(prefix=PFX)
        self.addCleanup(shutil.rmtree, self.run_dir, True)
        self.dev = Devices()
        self.addCleanup(self.dev.cleanup)
        self.n1, self.n2 = self.dev.netns(PFX + "e1"), self.dev.netns(PFX + "e2")
        for ns, veth, peer, mac, ip, other_ip, other_mac in (
            (self.n1, PFX + "w1", PFX + "q1", MAC1, IP1, IP2, MAC2),
            (self.n2, PFX + "w2", PFX + "q2", MAC2, IP2, IP1, MAC1),
        ):
            self.dev.veth(veth, peer, ns)
            sh("ip", "-n", ns, "link", "set", peer, "address", mac)
            sh("ip", "-n", ns, "addr", "add", ip + "/24", "dev", peer)
            sh("ip", "-n", ns, "neigh", "replace", other_ip, "lladdr", other_mac, "dev", peer)
        self.top = makeDatapathService(self.run_dir, 4096, 4096, reactor=IReactorUNIX(reactor))
        self.top.startService()
        self.addCleanup(self.top.stopService)
        for argv in (
            (vif_cli.main, "--add", PFX + "w1", "--type", "virtual", "--id", "1", "--mac",
             "00:00:5e:00:01:00", "--vrf", "0"),
            (vif_cli.main, "--add", PFX + "w2", "--type", "virtual", "--id", "2", "--mac",
             "00:00:5e:00:01:00", "--vrf", "0"),
            (nh_cli.main, "--create", "21", "--type", "2", "--oif", "1", "--l2"),
            (nh_cli.main, "--create", "22", "--type", "2", "--oif", "2", "--l2"),
            (rt_cli.main, "-c", "-v", "0", "-f", "1", "-e", MAC1, "-n", "21"),
            (rt_cli.main, "-c", "-v", "0", "-f", "1", "-e", MAC2, "-n", "22"),
        ):  # fmt: skip
            code, out = yield self.tool(argv[0], *argv[1:])
            self.assertEqual(code, 0, (argv, out))
        ports = self.top.packets.ports  # type: ignore[attr-defined]
        yield wait_for(lambda: ports.state(1) == ports.state(2) == "attached")

    def tool(self, main: Callable[[list[str]], int], *argv: str) -> Deferred[tuple[int, str]]:
        return run_tool(self.run_dir, main, *argv)

    @inlineCallbacks
    def test_ping(self) -> Any:
        result = yield in_netns(self.n1, "python3", "-c", PING, IP2, "5")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("5 received", result.stdout)
        code, text = yield self.tool(vif_cli.main, "--get", "2")
        self.assertEqual(code, 0)
        self.assertIn("Status: UP", text)
        tables = self.top.datapath.tables  # type: ignore[attr-defined]
        self.assertGreaterEqual(tables.interfaces[1].counters["ipackets"], 5)
        self.assertGreaterEqual(tables.interfaces[2].counters["opackets"], 5)

    @inlineCallbacks
    def test_tcp(self) -> Any:
        server, client, expected = tcp_stream(IP2, 5201, 4 * 1024 * 1024, timeout=100)
        got = in_netns(self.n2, "python3", "-c", server, timeout=120)
        sent = yield in_netns(self.n1, "python3", "-c", client, timeout=120)
        self.assertEqual(sent.returncode, 0, sent.stderr)
        result = yield got
        self.assertEqual(result.stdout.strip(), expected, result.stderr)
        # it crossed as GSO super-frames, kept whole from one veth to the other: fewer
        # frames than wire segments on both vifs, and the bytes (checked above) intact
        ports = self.top.packets.ports  # type: ignore[attr-defined]
        self.assertGreater(ports.ports[1].stats["rx_offload"], 0)
        self.assertGreater(ports.ports[2].stats["tx_offload"], 0)
        self.assertEqual(ports.ports[1].stats["gso"], 0)  # nothing segmented in Python
        tables = self.top.datapath.tables  # type: ignore[attr-defined]
        vif1, vif2 = tables.interfaces[1].counters, tables.interfaces[2].counters
        self.assertGreater(vif1["ibytes"], 4 * 1024 * 1024)
        self.assertLess(vif1["ipackets"] * 1514, vif1["ibytes"])
        self.assertLess(vif2["opackets"] * 1514, vif2["obytes"])

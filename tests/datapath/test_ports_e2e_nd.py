"""End to end: IPv6 between two namespaces whose neighbour discovery the datapath answers.

``twistd vrouter-dp``'s real pipeline, programmed with the real utilities over its ksync
socket: a VIRTUAL vif per namespace veth, an L2 ENCAP next hop to each, a bridge route
per namespace MAC, a flood composite as the broadcast entry, and an inet6 /128 route per
address with the proxy flag and the owner's MAC (stitched). The namespaces have no static
neighbours: ``ping -6`` only works because the datapath answers the kernel's neighbour
solicitations with the owner's MAC.
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

from tests.datapath.ports_world import PFX, Devices, in_netns, run_tool, sh, skip_reason
from tests.polling import wait_for
from vrtwist.cli import nh as nh_cli
from vrtwist.cli import rt as rt_cli
from vrtwist.cli import vif as vif_cli
from vrtwist.datapath.service import makeDatapathService

_SKIP = skip_reason() or (None if shutil.which("ping") else "needs ping")

MAC1, MAC2 = "02:77:00:00:06:01", "02:77:00:00:06:02"
IP1, IP2 = "fd77::1", "fd77::2"


class NeighbourDiscoveryTests(TestCase):
    timeout = 120
    if _SKIP:
        skip = _SKIP

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]  # trial waits for the Deferred
        self.run_dir = tempfile.mkdtemp(prefix=PFX)
        self.addCleanup(shutil.rmtree, self.run_dir, True)
        self.dev = Devices()
        self.addCleanup(self.dev.cleanup)
        self.n1, self.n2 = self.dev.netns(PFX + "n1"), self.dev.netns(PFX + "n2")
        for ns, veth, peer, mac, ip in (
            (self.n1, PFX + "v1", PFX + "u1", MAC1, IP1),
            (self.n2, PFX + "v2", PFX + "u2", MAC2, IP2),
        ):
            self.dev.veth(veth, peer, ns)
            sh("ip", "-n", ns, "link", "set", peer, "address", mac)
            # the helper turns IPv6 off on test devices; this test is about IPv6
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{peer}.disable_ipv6=0")
            sh("ip", "-n", ns, "-6", "addr", "add", ip + "/64", "dev", peer, "nodad")
        self.top = makeDatapathService(self.run_dir, 4096, 4096, reactor=IReactorUNIX(reactor))
        self.top.startService()
        self.addCleanup(self.top.stopService)
        for argv in (
            (vif_cli.main, "--add", PFX + "v1", "--type", "virtual", "--id", "1", "--mac",
             "00:00:5e:00:01:00", "--vrf", "0"),
            (vif_cli.main, "--add", PFX + "v2", "--type", "virtual", "--id", "2", "--mac",
             "00:00:5e:00:01:00", "--vrf", "0"),
            (nh_cli.main, "--create", "21", "--type", "2", "--oif", "1", "--l2"),
            (nh_cli.main, "--create", "22", "--type", "2", "--oif", "2", "--l2"),
            (nh_cli.main, "--create", "30", "--type", "6", "--l2", "--cmc", "--cni", "21",
             "--lbl", "0", "--cni", "22", "--lbl", "0"),
            (rt_cli.main, "-c", "-v", "0", "-f", "1", "-e", MAC1, "-n", "21"),
            (rt_cli.main, "-c", "-v", "0", "-f", "1", "-e", MAC2, "-n", "22"),
            (rt_cli.main, "-c", "-v", "0", "-f", "1", "-e", "ff:ff:ff:ff:ff:ff", "-n", "30"),
            (rt_cli.main, "-c", "-v", "0", "-f", "2", "-p", IP1, "-l", "128", "-n", "21",
             "-P", "-e", MAC1),
            (rt_cli.main, "-c", "-v", "0", "-f", "2", "-p", IP2, "-l", "128", "-n", "22",
             "-P", "-e", MAC2),
        ):  # fmt: skip
            code, out = yield self.tool(argv[0], *argv[1:])
            self.assertEqual(code, 0, (argv, out))
        ports = self.top.packets.ports  # type: ignore[attr-defined]
        yield wait_for(lambda: ports.state(1) == ports.state(2) == "attached")

    def tool(self, main: Callable[[list[str]], int], *argv: str) -> Deferred[tuple[int, str]]:
        return run_tool(self.run_dir, main, *argv)

    @inlineCallbacks
    def test_ping6_through_answered_solicitations(self) -> Any:
        result = yield in_netns(self.n1, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", IP2)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("3 received", result.stdout)
        neigh = yield in_netns(self.n1, "ip", "-6", "neigh", "show", IP2)
        self.assertIn(MAC2, neigh.stdout)  # learnt from the datapath's advertisement
        stats = self.top.packets.pipeline.vrf_stats  # type: ignore[attr-defined]
        self.assertGreaterEqual(stats[(0, "arp_virtual_stitch")], 1)

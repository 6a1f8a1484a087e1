"""The vRouter utilities against a real ``twistd -n vrouter-dp`` subprocess.

Each test starts its own forwarding extension in a temporary run directory. Most checks
call the tools' ``main()`` in this process (fast); ``RealProcessTests`` also runs every
console script as a subprocess, as a user would.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from vrtwist.cli import dropstats, mirror, mpls, nh, rt, vif, vrfstats, vrouter, vxlan
from vrtwist.datapath import constants as C
from vrtwist.ksync.blocking import open_ksync
from vrtwist.sandesh import ADD, schema
from vrtwist.vtest.runner import spawned_vrouter

MAC1 = "de:ad:be:ef:00:02"


class VrouterDpCase(SynchronousTestCase):
    """Starts a vrouter-dp subprocess for the test; ``self.sock`` is its run dir."""

    def setUp(self) -> None:
        self._stack = contextlib.ExitStack()
        self.sock = self._stack.enter_context(spawned_vrouter())
        self.addCleanup(self._stack.close)

    def tool(self, main: Callable[[Sequence[str] | None], int], *args: str) -> tuple[int, str]:
        out = io.StringIO()
        err = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--sock-dir", self.sock, *args])
        return code, out.getvalue() + err.getvalue()

    def ok(self, main: Callable[[Sequence[str] | None], int], *args: str) -> str:
        code, text = self.tool(main, *args)
        self.assertEqual(code, 0, text)
        return text

    def request(self, msg: Any) -> Any:
        with open_ksync(self.sock) as ks:
            return ks.request(msg)


class VifTests(VrouterDpCase):
    def test_lifecycle(self) -> None:
        self.ok(vif.main, "--add", "tap1", "--mac", MAC1, "--vrf", "2", "--type", "virtual",
                "--transport", "pmd", "--vif", "3", "--policy")  # fmt: skip
        # no --vif and no such OS interface: the lowest free index
        self.ok(vif.main, "--add", "nosuchdev0", "--type", "virtual")
        self.ok(vif.main, "--add", "phys", "--type", "physical", "--vif", "7")
        text = self.ok(vif.main, "--list")
        self.assertTrue(text.startswith("Vrouter Interface Table\n\nFlags: P=Policy, "))
        self.assertIn("vif0/3      PMD: tap1\n", text)
        self.assertIn("            Type:Virtual HWaddr:de:ad:be:ef:00:02 IPaddr:0.0.0.0\n", text)
        self.assertIn("            Vrf:2 Mcast Vrf:65535 Flags:PL3L2 QOS:0 Ref:1\n", text)
        self.assertIn("            RX packets:0  bytes:0 errors:0\n", text)
        self.assertIn("vif0/0      Virtual: nosuchdev0\n", text)
        self.assertIn("vif0/7      PCI: Mock\n", text)
        text = self.ok(vif.main, "--get", "3", "--get-drop-stats")
        self.assertIn("vif0/3 ", text)
        self.assertIn("Invalid IF                    0\n", text)
        self.ok(vif.main, "--set", "3", "--vlan", "5", "--vrf", "9")
        self.request(
            schema.vr_interface_req(h_op=ADD, vifr_idx=3, vifr_type=C.VIF_TYPE_VIRTUAL,
                                    vifr_flags=C.VIF_FLAG_SERVICE_IF, vifr_vrf=-1)
        )  # fmt: skip
        self.assertIn("VRF table(vlan:vrf):\n5:9, \n", self.ok(vif.main, "--get", "3"))
        self.ok(vif.main, "--delete", "tap1")
        self.ok(vif.main, "--delete", "0")
        code, text = self.tool(vif.main, "--get", "3")
        self.assertEqual((code, text), (1, "vRouter(Response): No such file or directory (2)\n"))
        code, text = self.tool(vif.main, "--delete", "3")
        self.assertEqual((code, text), (1, "vRouter(Response): No such device (19)\n"))
        # the failed requests lost nothing
        self.assertIn("vif0/7", self.ok(vif.main, "--list"))

    def test_usage_errors(self) -> None:
        code, text = self.tool(vif.main, "--add", "x")
        self.assertEqual(code, 2)
        self.assertIn("--add needs --type", text)
        code, text = self.tool(vif.main, "--add", "x", "--type", "bogus")
        self.assertEqual(code, 2)
        self.assertIn("invalid type", text)
        with contextlib.redirect_stderr(io.StringIO()):
            self.assertRaises(SystemExit, vif.main, ["--sock-dir", self.sock, "--mac", "zz"])

    def test_dpdk_style_add_rate_and_create(self) -> None:
        # the DPDK set-up scripts' form: a numeric name with --pmd is the PMD index,
        # --id the vif index; --vif is an OS index (and the vif index without --id)
        self.ok(vif.main, "--add", "0", "--mac", MAC1, "--vrf", "0", "--vhost-phys",
                "--type", "physical", "--pmd", "--id", "2")  # fmt: skip
        self.ok(vif.main, "--add", "vhost0", "--mac", MAC1, "--vrf", "0", "--type", "vhost",
                "--xconnect", "0", "--pmd", "--id", "5")  # fmt: skip
        self.ok(vif.main, "--add", "mon0", "--type", "monitoring", "--vif", "5", "--id", "9")
        code, text = self.tool(vif.main, "--add", "mon1", "--type", "monitoring")
        self.assertEqual((code, "needs --vif" in text), (2, True), text)
        code, text = self.tool(vif.main, "--add", "v", "--type", "vhost", "--xconnect", "nosuch")
        self.assertEqual(code, 2, text)
        self.assertIn("nosuch does not seem to be a valid physical interface name", text)
        with open_ksync(self.sock) as ks:
            got = {
                o.vifr_idx: o
                for o in ks.dump(schema.vr_interface_req(h_op=C.OP_DUMP, vifr_marker=-1))
            }
        self.assertEqual(sorted(got), [2, 5, 9])
        self.assertEqual((got[2].vifr_os_idx, got[2].vifr_flags & C.VIF_FLAG_PMD), (0, 0x2000))
        self.assertEqual((got[5].vifr_type, got[5].vifr_cross_connect_idx), (C.VIF_TYPE_HOST, [0]))
        self.assertEqual((got[9].vifr_os_idx, list(got[9].vifr_mac)), (5, [2, 0, 0, 0, 0, 0]))
        text = self.ok(vif.main, "--list")
        self.assertIn("vif0/2      PMD: 0\n", text)
        self.assertIn("vif0/9      Monitoring: mon0 for vif0/5\n", text)
        self.assertIn("            RX queue errors to lcore 0\n", text)
        text = self.ok(vif.main, "--list", "--core", "0")
        self.assertIn("            Core 0 RX packets:0  bytes:0 errors:0\n", text)
        self.assertIn(
            "            Core 0 TX packets:0  bytes:0 errors:0\n            Drops:0\n", text
        )
        # --rate: the real tool's screens, two refreshes
        self.patch(vif, "_RATE_INTERVAL", 0.01)
        text = self.ok(vif.main, "--list", "--rate", "--iterations", "2")
        self.assertEqual(text.count("Interface rate statistics\n-------------------------\n"), 2)
        self.assertIn("Errors   Packets              Errors   Packets\n", text)
        self.assertIn("Physical: 0".ljust(30) + "vif0/2".ljust(24) + "0        0      ", text)
        text = self.ok(vif.main, "--get", "5", "--rate", "--iterations", "1")
        self.assertIn("            RX device packets:0  bytes:0 errors:0\n", text)
        self.assertIn("            TX port   packets:0 errors:0\n", text)
        code, text = self.tool(vif.main, "--rate")
        self.assertEqual(code, 2, text)
        # --create: the host side of a vhost, as a persistent TAP (needs CAP_NET_ADMIN)
        if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
            raise SkipTest("vif --create needs root and /dev/net/tun")
        name = "vrtc%d" % (os.getpid() % 100000)
        self.addCleanup(subprocess.run, ["ip", "link", "del", name], capture_output=True)
        self.ok(vif.main, "--create", name, "--mac", "02:00:00:00:0c:01")
        with open("/sys/class/net/%s/address" % name) as f:
            self.assertEqual(f.read().strip(), "02:00:00:00:0c:01")
        code, text = self.tool(vif.main, "--create", "x" * 20)
        self.assertEqual(code, 1)
        self.assertIn("vhost_create: interface name must be 1 to 15 bytes.", text)

    def test_rate_pages_on_a_terminal(self) -> None:
        """On a terminal ``--list --rate`` shows what fits and pages with ``j``/``k``."""
        import fcntl
        import pty
        import struct
        import termios

        for i in (1, 2, 3):
            self.ok(vif.main, "--add", "tap%d" % i, "--type", "virtual", "--id", str(i))
        master, slave = pty.openpty()
        # 12 rows: (12 - 9) // 3 = one vif a screen
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 12, 200, 0, 0))
        proc = subprocess.Popen(
            [sys.executable, "-m", "vrtwist.cli.vif", "--sock-dir", self.sock, "--list",
             "--rate", "--iterations", "2"],
            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
        )  # fmt: skip
        os.close(slave)
        self.addCleanup(os.close, master)
        out = b""
        sent = False
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if not sent and out.count(b"Key 'q' for quit") == 1:
                os.write(master, b"j")
                sent = True
        self.assertEqual(proc.wait(30), 0, out)
        screens = out.decode().split("Interface rate statistics")[1:]
        self.assertEqual(len(screens), 2, out)
        self.assertIn("Virtual: tap1", screens[0])
        self.assertNotIn("tap2", screens[0])
        self.assertIn("Virtual: tap2", screens[1])
        self.assertNotIn("tap1", screens[1])


class NexthopLabelTests(VrouterDpCase):
    def setUp(self) -> None:
        super().setUp()
        self.ok(vif.main, "--add", "tap1", "--type", "virtual", "--vif", "1", "--mac", MAC1)

    def test_nh_kinds(self) -> None:
        self.ok(nh.main, "--create", "21", "--type", "2", "--oif", "1", "--vrf", "0",
                "--smac", MAC1, "--dmac", "de:ad:be:ef:00:01")  # fmt: skip
        self.ok(nh.main, "--create", "12", "--type", "3", "--oif", "1", "--vrf", "0",
                "--sip", "1.1.2.2", "--dip", "2.2.1.1")  # fmt: skip
        self.ok(nh.main, "--create", "13", "--type", "3", "--oif", "1", "--vrf", "0",
                "--sip", "1.1.2.2", "--dip", "2.2.1.1", "--udp", "--sport", "60166",
                "--dport", "6635")  # fmt: skip
        self.ok(nh.main, "--create", "30", "--type", "6", "--cni", "21", "--lbl", "5",
                "--cni", "12", "--lbl", "6", "--ecmp")  # fmt: skip
        for nh_type, nh_id in ((1, 40), (4, 41), (5, 42), (7, 43), (8, 44)):
            self.ok(nh.main, "--create", str(nh_id), "--type", str(nh_type), "--oif", "1")
        text = self.ok(nh.main, "--list")
        self.assertIn(
            "Id:21         Type:Encap          Fmly:AF_BRIDGE  Rid:0  Ref_cnt:2          Vrf:0\n"
            "              Flags:Valid, \n"
            "              EncapFmly:0806 Oif:1 Len:14\n"
            "              Encap Data: de ad be ef 00 01 de ad be ef 00 02 08 00 \n\n",
            text,
        )
        self.assertIn("Flags:Valid, MPLSoGRE, \n", text)
        self.assertIn("Sip:1.1.2.2 Dip:2.2.1.1", text)
        self.assertIn("Sport:60166 Dport:6635\n", text)
        self.assertIn("Sub NH(label): 21(5) 12(6)\n", text)
        for name in ("Receive", "Resolve", "Drop", "Vrf_Translate", "L2 Receive"):
            self.assertIn("Type:%-13s" % name, text)
        text = self.ok(nh.main, "--get", "30")
        self.assertEqual(text.count("Id:"), 3)  # the composite and its two members
        code, text = self.tool(nh.main, "--create", "50", "--type", "2", "--oif", "9")
        self.assertEqual((code, text), (1, "vRouter(Response): Invalid argument (22)\n"))
        code, text = self.tool(nh.main, "--delete", "99")
        self.assertEqual(code, 1)
        self.ok(nh.main, "--delete", "30")
        self.assertNotIn("Id:30 ", self.ok(nh.main, "--list"))

    def test_mpls_vxlan_mirror(self) -> None:
        self.ok(nh.main, "--create", "21", "--type", "2", "--oif", "1")
        self.ok(mpls.main, "--create", "4", "--nh", "21")
        self.assertEqual(
            self.ok(mpls.main, "--dump"),
            "MPLS Input Label Map\n\n   Label    NextHop\n-------------------\n"
            "       4        21\n",
        )
        self.assertIn("       4        21\n", self.ok(mpls.main, "--get", "4"))
        self.ok(mpls.main, "--delete", "4")
        code, text = self.tool(mpls.main, "--get", "4")
        self.assertEqual((code, text), (1, "vRouter(Response): No such file or directory (2)\n"))
        code, text = self.tool(mpls.main, "--create", "9999", "--nh", "21")
        self.assertEqual(code, 1)
        self.ok(vxlan.main, "--create", "100", "--nh", "21")
        self.assertEqual(
            self.ok(vxlan.main, "--dump"),
            "VXLAN Table\n\n VNID    NextHop\n----------------\n    100    21\n",
        )
        self.ok(vxlan.main, "--delete", "100")
        self.ok(mirror.main, "--create", "2", "--nh", "21", "--vni", "77", "--dyn")
        text = self.ok(mirror.main, "--dump")
        self.assertIn("    2         21       D         77       0\n", text)
        self.ok(mirror.main, "--delete", "2")
        self.assertEqual(self.tool(mirror.main, "--delete", "2")[0], 1)


class RouteAndStatsTests(VrouterDpCase):
    def test_rt(self) -> None:
        self.ok(vif.main, "--add", "tap1", "--type", "virtual", "--vif", "1", "--mac", MAC1)
        self.ok(nh.main, "--create", "21", "--type", "2", "--oif", "1")
        self.request(
            schema.vr_route_req(h_op=ADD, rtr_family=C.AF_INET, rtr_vrf_id=0,
                                rtr_prefix=[10, 1, 0, 0], rtr_prefix_len=16, rtr_nh_id=21,
                                rtr_label=48, rtr_label_flags=C.VR_RT_LABEL_VALID_FLAG)
        )  # fmt: skip
        self.request(
            schema.vr_route_req(h_op=ADD, rtr_family=C.AF_INET6, rtr_vrf_id=0,
                                rtr_prefix=[0x20, 1, 0xD, 0xB8] + [0] * 12, rtr_prefix_len=32,
                                rtr_nh_id=21)
        )  # fmt: skip
        self.request(
            schema.vr_route_req(h_op=ADD, rtr_family=C.AF_BRIDGE, rtr_vrf_id=0,
                                rtr_mac=[0xDE, 0xAD, 0xBE, 0xEF, 0, 1], rtr_nh_id=21)
        )  # fmt: skip
        text = self.ok(rt.main, "--dump", "0")
        self.assertIn("vRouter inet4 routing table 0/0/unicast\n", text)
        self.assertIn(
            "10.1.0.0/16            16            L         48             21        -\n",
            text,
        )
        text = self.ok(rt.main, "--dump", "0", "--family", "inet6")
        self.assertIn("2001:db8::/32", text)
        text = self.ok(rt.main, "--get", "10.1.2.3/32", "--vrf", "0")
        self.assertIn("Match 10.1.2.3/32 in vRouter inet4 table 0/0/unicast", text)
        self.assertIn("10.1.0.0/16", text)
        text = self.ok(rt.main, "--dump", "0", "--family", "bridge")
        self.assertIn("vRouter bridge table 0/0", text)
        self.assertIn("de:ad:be:ef:0:1", text)
        code, text = self.tool(rt.main, "--dump", "0", "--family", "mpls")
        self.assertEqual(code, 2)
        # the hidden create/delete options
        self.ok(rt.main, "-c", "-v", "0", "-p", "10.1.2.0", "-l", "24", "-n", "21", "-P")
        self.assertIn("10.1.2.0/24            24            P", self.ok(rt.main, "--dump", "0"))
        text = self.ok(rt.main, "--get", "10.1.2.3/32", "--vrf", "0")
        self.assertIn("10.1.2.0/24", text)
        code, text = self.tool(rt.main, "-d", "-v", "0", "-p", "10.1.2.0", "-l", "24", "-n", "77")
        self.assertEqual((code, text), (1, "vRouter(Response): No such file or directory (2)\n"))
        self.ok(rt.main, "-d", "-v", "0", "-p", "10.1.2.0", "-l", "24", "-n", "0")
        self.assertNotIn("10.1.2.0/24", self.ok(rt.main, "--dump", "0"))
        code, text = self.tool(rt.main, "-c", "-v", "0", "-f", "2", "-p", "10.0.0.1", "-n", "21")
        self.assertEqual(code, 2)

    def test_rt_expanded_dump_and_monitor(self) -> None:
        self.ok(vif.main, "--add", "tap1", "--type", "virtual", "--id", "1", "--mac", MAC1)
        self.ok(nh.main, "--create", "21", "--type", "2", "--oif", "1")
        self.ok(rt.main, "-c", "-v", "2", "-p", "10.1.0.0", "-l", "16", "-n", "21")
        self.ok(rt.main, "-c", "-v", "2", "-p", "10.1.2.5", "-l", "32", "-n", "21", "-t", "20")
        rows = self.ok(rt.main, "--dump", "2").splitlines()[3:]
        # the vRouter's trie view: 255 /8 leaves, 256 /16 under 10/8 but 10.1/16 expanded
        # into 255 /24 and 256 /32 leaves
        self.assertEqual(len(rows), 255 + 255 + 255 + 256)
        self.assertEqual(rows[0], "0.0.0.0/8               0                       -"
                                  "              0        -")  # fmt: skip
        self.assertIn("10.0.0.0/16             0                       -              0        -",
                      rows)  # fmt: skip
        self.assertIn("10.1.1.0/24            16                       -             21        -",
                      rows)  # fmt: skip
        self.assertIn("10.1.2.4/32            16                       -             21        -",
                      rows)  # fmt: skip
        self.assertIn("10.1.2.5/32            32            L         20             21        -",
                      rows)  # fmt: skip
        self.assertEqual(rows[-1].split()[:3], ["255.0.0.0/8", "0", "-"])
        # a VRF without routes: the header only
        self.assertTrue(self.ok(rt.main, "--dump", "7").endswith("Stitched MAC(Index)\n"))
        text = self.ok(rt.main, "--get", "192.0.2.1/32", "--vrf", "2")
        self.assertTrue(text.endswith("0.0.0.0/0               0                       -"
                                      "              0        -\n"), text)  # fmt: skip

        text = self.ok(rt.main, "--get", "10.1.2.77/24", "--vrf", "2")
        self.assertTrue(text.startswith("Match 10.1.2.0/24 in vRouter inet4 table 0/2/unicast\n\n"))
        self.assertTrue(text.endswith("\n10.1.0.0/16            16                       -"
                                      "             21        -\n"), text)  # fmt: skip
        # --get of a bridge entry, by MAC
        self.ok(rt.main, "-c", "-v", "2", "-f", "1", "-e", "02:00:00:00:00:07", "-n", "21")
        text = self.ok(rt.main, "--get", "02:00:00:00:00:07", "--vrf", "2", "--family", "bridge")
        self.assertTrue(
            text.startswith("Match 2:0:0:0:0:7 in vRouter bridge table 0/2/unicast\n\n")
        )
        self.assertIn("vRouter bridge table 0/2\nIndex       DestMac", text)
        self.assertRegex(text, r"\n\d+ +2:0:0:0:0:7 +- +21 +0\n$")
        code, text = self.tool(rt.main, "--get", "02:00:00:00:00:08", "--vrf", "2", "--family",
                                "bridge")  # fmt: skip
        self.assertEqual((code, text), (1, "vRouter(Response): No such file or directory (2)\n"))
        code, text = self.tool(rt.main, "--get", "zz", "--vrf", "2", "--family", "bridge")
        self.assertEqual(code, 2, text)
        code, text = self.tool(rt.main, "--get", "10.0.0.1/32", "--vrf", "2", "--family", "inet6")
        self.assertEqual(code, 2, text)

        # --monitor: the changes made between two polls, as the real tool's JSON lines
        sock = self.sock

        class Clock:
            calls = 0

            @staticmethod
            def sleep(_: float) -> None:
                Clock.calls += 1
                if Clock.calls == 1:
                    with open_ksync(sock) as ks:
                        ks.request(
                            schema.vr_route_req(
                                h_op=C.OP_DEL,
                                rtr_family=C.AF_INET,
                                rtr_vrf_id=2,
                                rtr_prefix=[10, 1, 2, 5],
                                rtr_prefix_len=32,
                                rtr_nh_id=0,
                            )
                        )
                        ks.request(
                            schema.vr_route_req(
                                h_op=ADD,
                                rtr_family=C.AF_INET,
                                rtr_vrf_id=2,
                                rtr_prefix=[10, 2, 0, 0],
                                rtr_prefix_len=16,
                                rtr_nh_id=21,
                                rtr_label_flags=C.VR_RT_ARP_PROXY_FLAG,
                            )
                        )
                        ks.request(schema.vr_route_req(
                            h_op=ADD, rtr_family=C.AF_BRIDGE, rtr_vrf_id=2,
                            rtr_mac=[2, 0, 0, 0, 0, 9], rtr_nh_id=21))  # fmt: skip

        self.patch(rt, "time", Clock)
        text = self.ok(rt.main, "--monitor", "--iterations", "2")
        self.assertEqual(
            text.splitlines(),
            [
                '{"operation":"add","family":"AF_INET","vrf_id":2,"prefix":16,'
                '"address":"10.2.0.0","nh_id":21,"flags":{"label_valid":false, '
                '"arp_proxy":true, "arp_trap":false, "arp_flood":false}}',
                '{"operation":"add","family":"AF_BRIDGE"}',
                '{"operation":"delete","family":"AF_INET","vrf_id":2,"prefix":32,'
                '"address":"10.1.2.5","nh_id":21,"flags":{"label_valid":true, '
                '"arp_proxy":false, "arp_trap":false, "arp_flood":false},"label":20}',
            ],
        )

    def test_stats_and_ops(self) -> None:
        text = self.ok(dropstats.main)
        self.assertTrue(text.startswith("Invalid IF                    0\n"))
        self.assertIn("Cloned Original               0\n", text)
        self.assertIn("Statistics for core 0", self.ok(dropstats.main, "--core", "0"))
        self.ok(dropstats.main, "--clear")
        text = self.ok(vrouter.main, "--info")
        self.assertTrue(text.startswith("vRouter/DPDK version         vrtwist-0.1.0 (Built by "))
        self.assertIn("    Interfaces limit                     4352\n", text)
        self.assertIn("    Flow Table limit                     4096\n", text)
        self.assertIn("    MPLS over UDP globally               0\n", text)
        self.ok(vrouter.main, "--set-mudp", "1", "--flow_hold_limit", "7")
        text = self.ok(vrouter.main, "--info")
        self.assertIn("    MPLS over UDP globally               1\n", text)
        self.assertIn("    Flow hold limit:                     7\n", text)
        self.assertIn("    TCP MSS on packets from VM           1\n", text)  # untouched
        self.ok(vif.main, "--add", "tap1", "--type", "virtual", "--vif", "1", "--vrf", "3")
        self.assertEqual(self.ok(vrfstats.main, "--dump").count("Vrf: "), 1)
        self.assertIn("Vrf: 3\nDiscards 0, ", self.ok(vrfstats.main, "--get", "3"))
        # a fresh DPDK vRouter logs at "info"; the level can be changed and read back
        self.assertEqual(self.ok(vrouter.main, "--get-log-level"),
                         "Current log level                        info\n")  # fmt: skip
        self.ok(vrouter.main, "--set-log-level", "debug")
        self.assertIn("debug", self.ok(vrouter.main, "--get-log-level"))
        # dropstats --log against a datapath that has dropped nothing: 200 empty records
        text = self.ok(dropstats.main, "--log", "0")
        self.assertTrue(text.startswith("**********PKT DROP LOG**********\nTotal No. of CPU's 1\n"
                                        "Pkt Drop Log for Core 1\n\nsl no: 0  Epoch Time: 0 "))  # fmt: skip
        self.assertEqual(text.count("sl no: "), 200)
        code, text = self.tool(dropstats.main, "--log", "9")
        self.assertEqual((code, text), (1, "vRouter(Response): Invalid argument (22)\n"))


class ChannelErrorTests(SynchronousTestCase):
    def test_no_vrouter(self) -> None:
        empty = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, empty)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(vif.main(["--sock-dir", empty, "--list"]), 1)
        self.assertIn("cannot connect to %s/dpdk_netlink" % empty, err.getvalue())


class RealProcessTests(VrouterDpCase):
    """Every console script, run the way a user runs it."""

    def run_script(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        exe = os.path.join(os.path.dirname(sys.executable), name)
        return subprocess.run(
            [exe, "--sock-dir", self.sock, *args], capture_output=True, text=True, timeout=60
        )

    def test_scripts(self) -> None:
        steps: list[tuple[str, list[str], int, str]] = [
            ("vif", ["--add", "tap0", "--mac", "00:00:5e:00:01:00", "--vrf", "0",
                     "--type", "virtual"], 0, ""),
            ("vif", ["--list"], 0, "vif0/0      Virtual: tap0"),
            ("nh", ["--create", "10", "--type", "2", "--oif", "0"], 0, ""),
            ("nh", ["--list"], 0, "Id:10         Type:Encap"),
            ("rt", ["--dump", "0"], 0, "Destination           PPL"),
            ("mpls", ["--create", "5", "--nh", "10"], 0, ""),
            ("mpls", ["--dump"], 0, "       5        10"),
            ("vxlan", ["--dump"], 0, "VXLAN Table"),
            ("mirror", ["--dump"], 0, "Mirror Table"),
            ("vrfstats", ["--get", "0"], 0, "Vrf: 0"),
            ("dropstats", [], 0, "Invalid IF"),
            ("vrouter", ["--info"], 0, "Startup parameters"),
            ("mpls", ["--get", "6"], 1, "vRouter(Response): No such file or directory (2)"),
        ]  # fmt: skip
        for name, args, status, needle in steps:
            done = self.run_script(name, *args)
            self.assertEqual(done.returncode, status, (name, args, done.stdout, done.stderr))
            self.assertIn(needle, done.stdout)

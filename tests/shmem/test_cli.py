"""End to end: ``twistd vrouter-dp`` in a subprocess, the ``flow`` utility as a subprocess,
bridge routes over ksync and ``rt``'s bridge dump reading the shared table."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.polling import PollTimeout, wait_until
from vrtwist.ksync.blocking import KsyncConnection, open_ksync
from vrtwist.sandesh import schema
from vrtwist.shmem import layout as L
from vrtwist.shmem.cli_bridge import dump_bridge
from vrtwist.shmem.listing import FlowTableView

TWISTD = "from twisted.scripts.twistd import run; run()"


class _Session:
    """A ksync session whose ``request`` returns the whole reply as a flat object list."""

    def __init__(self, run_dir: str) -> None:
        self.ks: KsyncConnection = open_ksync(run_dir, timeout=30)

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ks.close()

    def request(self, req: object) -> list:  # type: ignore[type-arg]
        (r,) = self.ks.exchange([req])
        assert not isinstance(r, Exception) or hasattr(r, "code"), r
        return [schema.vr_response(h_op=4, resp_code=r.code), *r.objects]  # type: ignore[union-attr]


class FlowUtility(SynchronousTestCase):
    run_dir = ""
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def setUpClass(cls) -> None:
        cls.run_dir = tempfile.mkdtemp(prefix="vrtwist-shmem-")
        cls.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                TWISTD,
                "-n",
                "--pidfile=",
                "-l",
                os.path.join(cls.run_dir, "log"),
                "vrouter-dp",
                "--run-dir",
                cls.run_dir,
                "--flow-entries",
                "2048",
                "--bridge-entries",
                "512",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        def answers() -> bool:
            open_ksync(cls.run_dir).close()
            return True

        try:
            wait_until(answers, "vrouter-dp's ksync", 60)
        except PollTimeout:
            cls.tearDownClass()
            raise RuntimeError("vrouter-dp did not start; see %s/log" % cls.run_dir) from None

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.proc is not None:
            cls.proc.terminate()
            try:
                cls.proc.wait(10)
            except subprocess.TimeoutExpired:
                cls.proc.kill()
            cls.proc = None
        shutil.rmtree(cls.run_dir, ignore_errors=True)

    def flow(self, *args: str) -> tuple[int, str]:
        p = subprocess.run(
            [sys.executable, "-m", "vrtwist.cli.flow", "--sock-dir", self.run_dir, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return p.returncode, p.stdout + p.stderr

    def test_1_perf_creates_pairs_and_list_shows_them(self) -> None:
        code, out = self.flow("-p", "50", "-b", "15")
        self.assertEqual(code, 0, out)
        self.assertIn("Created 50 HOLD entries in ", out)
        self.assertIn("Created 50 HOLD and 50 FWD entries in ", out)
        code, out = self.flow("-l")
        self.assertEqual(code, 0, out)
        entries = 2048 + L.default_overflow(2048)
        self.assertTrue(
            out.startswith("Flow table(size %d, entries %d)\n" % (entries * 256, entries))
        )
        self.assertIn("Entries: Created 50 Added 100 Deleted 0 Changed 0Processed 50 ", out)
        self.assertEqual(out.count("Action:F,"), 100)
        self.assertIn(
            "    Index                Source:Port/Destination:Port                      Proto(V)\n",
            out,
        )

    def test_2_match_get_drop_invalidate(self) -> None:
        code, out = self.flow("--match", "2.2.2.2:7 & proto udp")
        self.assertEqual(code, 0)
        self.assertEqual(out.count("(Gen: "), 0)
        code, out = self.flow("--match", "2.2.2.2:7,1.1.1.1:1000 & vrf 0")
        self.assertEqual(code, 0, out)
        self.assertIn("Listing flows matching ([2.2.2.2]:7, [1.1.1.1]:1000, VRF 0)", out)
        self.assertEqual(out.count("Action:F,"), 2)  # both directions match
        view = self._view()
        try:
            idx = next(e.index for e in view if e.sip == "2.2.2.2" and e.sport == 7)
        finally:
            view.close()
        code, out = self.flow("-d", str(idx))
        self.assertEqual(code, 0, out)
        code, out = self.flow("--get", str(idx))
        self.assertIn("Flow Action:                  DROP:", out)
        self.assertIn("Flow Source:                  [2.2.2.2]:7", out)
        self.assertIn("Flow Statistics:              0/0\n", out)
        self.assertIn("System Wide Packet Drops:     0\n", out)
        self.assertIn(" " * 30 + "Flow Block Drops: 0\n", out)
        code, out = self.flow("-i", str(idx))
        self.assertEqual(code, 0, out)
        code, out = self.flow("--get", str(idx))
        self.assertEqual(code, 1)
        self.assertIn("Flow index %d is not active" % idx, out)

    def test_3_errors(self) -> None:
        code, out = self.flow("-f", "999999")
        self.assertEqual(code, 1)
        self.assertIn("Flow index 999999 is greater than available indices", out)
        code, out = self.flow("--match", "1.1.1.1 & proto gre")
        self.assertNotEqual(code, 0)
        self.assertIn('Unsupported protocol "gre"', out)
        code, out = self.flow()
        self.assertNotEqual(code, 0)
        self.assertIn("Usage:flow", out)
        code, out = self.flow("-e", "3071")  # never used: no request is sent
        self.assertEqual(code, 0, out)

    def test_4_flush(self) -> None:
        code, out = self.flow("-F")
        self.assertEqual(code, 0, out)
        self.assertIn("Scanning flow table", out)
        self.assertRegex(out, r"Deleted \d+ entries in \d+ msec")
        view = self._view()
        try:
            self.assertEqual(view.active_indices(), [])
        finally:
            view.close()

    def test_5_rate_and_stats_once(self) -> None:
        code, out = self.flow("-s", "--iterations", "1")
        self.assertEqual(code, 0, out)
        self.assertIn("Flow Statistics", out)
        code, out = self.flow("-r", "--iterations", "1")
        self.assertEqual(code, 0, out)

    def test_6_ipv6_flow_drop_and_list(self) -> None:
        import socket as so

        sip = so.inet_pton(so.AF_INET6, "2001:db8::10")
        dip = so.inet_pton(so.AF_INET6, "2001:db8::20")
        with _Session(self.run_dir) as c:
            r = c.request(
                schema.vr_flow_req(
                    fr_op=0,
                    fr_index=-1,
                    fr_action=2,
                    fr_flags=1,
                    fr_family=10,
                    fr_flow_sip_u=int.from_bytes(sip[:8], "little"),
                    fr_flow_sip_l=int.from_bytes(sip[8:], "little"),
                    fr_flow_dip_u=int.from_bytes(dip[:8], "little"),
                    fr_flow_dip_l=int.from_bytes(dip[8:], "little"),
                    fr_flow_proto=17,
                    fr_flow_sport=so.htons(5353),
                    fr_flow_dport=so.htons(53),
                    fr_flow_nh_id=4,
                )
            )
        self.assertEqual(r[0].resp_code, 0)
        idx = r[1].fresp_index
        code, out = self.flow("-d", str(idx))
        self.assertEqual(code, 0, out)
        view = self._view()
        try:
            e = view.get(idx)
            assert e is not None
            self.assertEqual((e.sip, e.dport, e.action, e.type), ("2001:db8::10", 53, 0, 3))
        finally:
            view.close()
        code, out = self.flow("--match", "[2001:db8::20]:53")
        self.assertEqual(code, 0, out)
        self.assertIn("2001:db8::10:5353", out)
        self.assertEqual(out.count("(Gen: "), 1)

    def test_7_get_prints_routes_and_next_hops(self) -> None:
        import socket as so

        with _Session(self.run_dir) as c:
            for idx in (31, 32):
                r = c.request(schema.vr_interface_req(
                    h_op=0, vifr_idx=idx, vifr_type=3, vifr_name="tap%d" % idx, vifr_vrf=5,
                    vifr_mac=[2, 0, 0, 0, 0, idx]))  # fmt: skip
                self.assertEqual(r[0].resp_code, 0)
                r = c.request(schema.vr_nexthop_req(
                    h_op=0, nhr_id=idx, nhr_type=2, nhr_family=2, nhr_vrf=5, nhr_flags=1,
                    nhr_encap_oif_id=[idx], nhr_encap=[2, 0, 0, 0, 0, idx] + [0] * 6 + [8, 0]))  # fmt: skip
                self.assertEqual(r[0].resp_code, 0)
            r = c.request(schema.vr_route_req(h_op=0, rtr_family=7, rtr_vrf_id=5,
                                              rtr_mac=[2, 0, 0, 0, 0, 32], rtr_nh_id=32))  # fmt: skip
            self.assertEqual(r[0].resp_code, 0)
            for last, nh, mac in ((3, 31, None), (4, 32, [2, 0, 0, 0, 0, 32])):
                r = c.request(schema.vr_route_req(
                    h_op=0, rtr_family=2, rtr_vrf_id=5, rtr_prefix=[10, 5, 0, last],
                    rtr_prefix_len=32, rtr_nh_id=nh, rtr_mac=mac))  # fmt: skip
                self.assertEqual(r[0].resp_code, 0)
            r = c.request(schema.vr_flow_req(
                fr_op=0, fr_index=-1, fr_action=2, fr_flags=1, fr_family=2, fr_flow_proto=17,
                fr_flow_sip_l=int.from_bytes(so.inet_aton("10.5.0.3"), "little"),
                fr_flow_dip_l=int.from_bytes(so.inet_aton("10.5.0.4"), "little"),
                fr_flow_sport=so.htons(4000), fr_flow_dport=so.htons(53), fr_flow_nh_id=31,
                fr_flow_vrf=5, fr_src_nh_index=31))  # fmt: skip
            self.assertEqual(r[0].resp_code, 0)
            idx = r[1].fresp_index
        code, out = self.flow("--get", str(idx))
        self.assertEqual(code, 0, out)
        pad = " " * 30
        self.assertIn(
            "Flow Action:                  FORWARD\n"
            "Expected Source:              NextHop(Index, VRF, Type): 31, 5, ENCAP\n"
            + pad
            + "Ingress Interface(Index, VRF, OS): vif0/31, 5, \n"
            + pad
            + "Interface Statistics(Out, In, Errors): 0, 0, 0\n"
            "Source Information:           VRF: 5\n"
            + pad
            + "Layer 3 Route Information\n"
            + pad
            + "Matching Route: 10.5.0.3/32\n"
            + pad
            + "NextHop(Index, VRF, Type): 31, 5, ENCAP\n",
            out,
        )
        self.assertIn(
            "Destination Information:      VRF: 5\n"
            + pad
            + "Layer 3 Route Information\n"
            + pad
            + "Matching Route: 10.5.0.4/32\n"
            + pad
            + "NextHop(Index, VRF, Type): 32, 5, ENCAP\n"
            + pad
            + "Egress Interface(Index, VRF, OS): vif0/32, 5, \n"
            + pad
            + "Interface Statistics(Out, In, Errors): 0, 0, 0\n\n"
            + pad
            + "Layer 2 Route Information\n"
            + pad
            + "DestinationMAC: 2:0:0:0:0:20\n"
            + pad
            + "NextHop(Index, VRF, Type): 32, 5, ENCAP\n",
            out,
        )
        self.assertIn("\n\nFlow Flags:", out)
        # a mirrored flow: the mirror entry's next hop, as flow_dump_mirror prints it
        with _Session(self.run_dir) as c:
            r = c.request(schema.vr_mirror_req(h_op=0, mirr_index=2, mirr_nhid=31))
            self.assertEqual(r[0].resp_code, 0)
        code, out = self.flow("-f", str(idx), "--mirror", "2")
        self.assertEqual(code, 0, out)
        code, out = self.flow("--get", str(idx))
        self.assertEqual(code, 0, out)
        self.assertIn(
            "UDP Source Port:              %s\n\n"
            % out.split("UDP Source Port:")[1].split()[0]
            + "Mirror Index:                 2, 0, "
            "Primary Mirror:               NextHop 31 of type 2\nFlow Statistics:              0/0\n",
            out,
        )
        from vrtwist.cli.flow import _format_mirror

        tunnel = schema.vr_nexthop_req(
            nhr_id=9, nhr_type=3, nhr_family=2, nhr_vrf=1,
            nhr_tun_sip=int.from_bytes(so.inet_aton("10.0.0.1"), "little"),
            nhr_tun_dip=int.from_bytes(so.inet_aton("10.0.0.9"), "little"))  # fmt: skip
        self.assertEqual(
            _format_mirror(tunnel),
            "NextHop 9\n"
            + pad
            + "To Destination 10.0.0.9 in VRF 1\n"
            + pad
            + "Tunnel Source IP 10.0.0.1 ",
        )

    def test_bridge_routes_and_rt_dump(self) -> None:
        with _Session(self.run_dir) as c:
            r = c.request(schema.vr_nexthop_req(h_op=0, nhr_id=12, nhr_type=5, nhr_family=7))
            self.assertEqual(r[0].resp_code, 0)
            for i in range(3):
                r = c.request(
                    schema.vr_route_req(
                        h_op=0,
                        rtr_family=7,
                        rtr_vrf_id=2,
                        rtr_mac=[0, 0x5E, 0, 1, 0, i + 1],
                        rtr_nh_id=12,
                        rtr_label=100 + i,
                        rtr_label_flags=L.BE_LABEL_VALID,
                    )
                )
                self.assertEqual(r[0].resp_code, 0)
            bad = c.request(
                schema.vr_route_req(
                    h_op=0,
                    rtr_family=7,
                    rtr_vrf_id=2,
                    rtr_mac=[0, 0x5E, 0, 1, 0, 9],
                    rtr_nh_id=4000,
                )
            )
            self.assertEqual(bad[0].resp_code, -2)
            zero = c.request(
                schema.vr_route_req(
                    h_op=0, rtr_family=7, rtr_vrf_id=2, rtr_mac=[0] * 6, rtr_nh_id=12
                )
            )
            self.assertEqual(zero[0].resp_code, -22)
            got = c.request(
                schema.vr_route_req(
                    h_op=1, rtr_family=7, rtr_vrf_id=2, rtr_mac=[0, 0x5E, 0, 1, 0, 2], rtr_index=-1
                )
            )
            self.assertEqual((got[0].resp_code, got[1].rtr_label, got[1].rtr_nh_id), (0, 101, 12))
            dumped = c.request(
                schema.vr_route_req(h_op=3, rtr_family=7, rtr_vrf_id=2, rtr_mac=[0] * 6)
            )
            self.assertEqual(dumped[0].resp_code, 3)
            d = c.request(
                schema.vr_route_req(
                    h_op=2, rtr_family=7, rtr_vrf_id=2, rtr_mac=[0, 0x5E, 0, 1, 0, 3]
                )
            )
            self.assertEqual(d[0].resp_code, 0)
            d = c.request(
                schema.vr_route_req(
                    h_op=2, rtr_family=7, rtr_vrf_id=2, rtr_mac=[0, 0x5E, 0, 1, 0, 3]
                )
            )
            self.assertEqual(d[0].resp_code, -2)
        out = io.StringIO()
        self.assertEqual(dump_bridge(self.run_dir, 2, out), 0)
        text = out.getvalue()
        self.assertIn("vRouter bridge table 0/2\n", text)
        self.assertIn(
            "Index       DestMac                  Flags           Label/VNID      Nexthop           Stats\n",
            text,
        )
        rows = [line for line in text.splitlines() if ":5e:" in line]
        self.assertEqual(len(rows), 2)
        self.assertRegex(rows[0], r"^\d+ +0:5e:0:1:0:[12] +L +10[01] +12 +0$")
        other = io.StringIO()
        dump_bridge(self.run_dir, 3, other)
        self.assertNotIn(":5e:", other.getvalue())

    def _view(self) -> FlowTableView:
        return FlowTableView(os.path.join(self.run_dir, "flow.shmem"))

"""The vtest runner: every message-only peer file passes against a real server.

``InProcessTests`` serve ksync from this process (the forwarding extension's service
on a real unix socket in a temporary directory) and run the blocking runner in a
thread; ``SpawnTests`` runs the console script, which starts its own ``twistd -n
vrouter-dp`` per file.
"""

from __future__ import annotations

import glob
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.vtest.test_xmlspec import PEER
from vrtwist.datapath.service import makeDatapathService
from vrtwist.vtest import runner

MSG_FILES = sorted(glob.glob(os.path.join(PEER, "msg__*.xml")))
PACKET_FILES = sorted(glob.glob(os.path.join(PEER, "ipv*.xml")))


class InProcessTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        if not MSG_FILES:
            self.skipTest("peer vtest suite not found at %s" % PEER)
        self.run_dir = tempfile.mkdtemp(prefix="vtest-")
        self.service = makeDatapathService(
            self.run_dir, flow_entries=1024, bridge_entries=1024, reactor=IReactorUNIX(reactor)
        )
        self.service.startService()

    def tearDown(self) -> Deferred[None] | None:  # type: ignore[override]  # trial waits
        d: Deferred[None] | None = self.service.stopService()
        return d

    @inlineCallbacks
    def run_one(self, path: str) -> Generator[Deferred[Any], Any, Any]:
        result = yield deferToThread(runner.run_file, path, self.run_dir)
        return result

    @inlineCallbacks
    def test_message_files_pass(self) -> Generator[Deferred[Any], Any, Any]:
        for path in MSG_FILES:
            # a fresh vRouter for each file, as the upstream runner did
            result = yield deferToThread(runner.run_file, path, self.run_dir, True)
            self.assertEqual(result.status, runner.PASS, (path, result.detail))
        self.assertEqual(len(MSG_FILES), 13)

    @inlineCallbacks
    def test_packet_files_run_their_messages(self) -> Generator[Deferred[Any], Any, Any]:
        for path in PACKET_FILES:
            result = yield deferToThread(runner.run_file, path, self.run_dir, True)
            self.assertEqual(result.status, runner.SKIP, (path, result.detail))
            self.assertIn("needs the packet path", result.detail)

    @inlineCallbacks
    def test_mismatch_fails_clearly(self) -> Generator[Deferred[Any], Any, Any]:
        bad = os.path.join(self.run_dir, "bad.xml")
        with open(bad, "w") as f:
            f.write(
                "<test><test_name>bad</test_name><message><vr_interface_req><h_op>Add</h_op>"
                "<vifr_type>3</vifr_type><vifr_idx>1</vifr_idx><vifr_mac>1:2:3:4:5:6</vifr_mac>"
                "<vifr_mtu>1500</vifr_mtu></vr_interface_req><return>0</return></message>"
                "<message><vr_interface_req><h_op>Get</h_op><vifr_idx>1</vifr_idx>"
                "</vr_interface_req><expect><vr_interface_req><vifr_mtu>9000</vifr_mtu>"
                "</vr_interface_req></expect></message>"
                "<message><vr_mpls_req><h_op>Get</h_op><mr_label>3</mr_label></vr_mpls_req>"
                "</message></test>"
            )
        result = yield deferToThread(runner.run_file, bad, self.run_dir, True)
        self.assertEqual(result.status, runner.FAIL)
        self.assertEqual(
            result.detail,
            "message 2 (vr_interface_req Get): vifr_mtu: expected 9000, got 1500",
        )
        with open(bad, "w") as f:
            f.write("<test><message><vr_mpls_req><h_op>Get</h_op></vr_mpls_req></message></test>")
        result = yield deferToThread(runner.run_file, bad, self.run_dir, True)
        self.assertEqual(result.status, runner.FAIL)
        self.assertEqual(
            result.detail,
            "message 1 (vr_mpls_req Get): expected return 0, got -2 (No such file or directory)",
        )
        with open(bad, "w") as f:
            f.write("<test><message>")
        result = yield deferToThread(runner.run_file, bad, self.run_dir)
        self.assertEqual(result.status, runner.FAIL)
        self.assertIn("bad test file", result.detail)

    def test_no_server(self) -> None:
        out = io.StringIO()
        args = runner.build_parser().parse_args(["--sock-dir", "/nonexistent", MSG_FILES[0]])
        self.assertEqual(runner.run(args, out), runner.EXIT_ERROR)
        self.assertIn("cannot connect to /nonexistent/dpdk_netlink", out.getvalue())


class SpawnTests(TestCase):
    timeout = 120

    def test_console_script_spawns_vrouter_dp(self) -> None:
        if not MSG_FILES:
            self.skipTest("peer vtest suite not found at %s" % PEER)
        exe = os.path.join(os.path.dirname(sys.executable), "vrtwist-vtest")
        files = [MSG_FILES[-1], PACKET_FILES[0]]
        done = subprocess.run([exe, "--spawn", "--messages-only", *files], capture_output=True,
                              text=True, timeout=100)  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        lines = done.stdout.splitlines()
        self.assertTrue(lines[0].startswith("PASS msg__vxlan__vxlan_add_get_delete.xml"))
        self.assertTrue(lines[1].startswith("SKIP ipv4__complex__VMs__example.xml"))
        self.assertIn("not run (--messages-only)", lines[1])
        self.assertEqual(lines[2], "2 files: 1 passed, 0 failed, 1 skipped (packet path)")
        # without --messages-only a packet check that cannot run makes the status non-zero
        done = subprocess.run([exe, "--spawn", "--netns-prefix", "ptvt", PACKET_FILES[0]],
                              capture_output=True, text=True, timeout=100)  # fmt: skip
        self.assertEqual(done.returncode, runner.EXIT_NOT_RUN, done.stdout + done.stderr)
        self.assertIn("SKIP ipv4__complex__VMs__example.xml", done.stdout)

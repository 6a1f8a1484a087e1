"""The runner's packet mode: pcap reading, comparison, pcap lookup, and (root, with the
pipeline) the runnable vtests byte for byte through veths in a private namespace."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.vtest.test_xmlspec import PEER
from vrtwist.vtest import runner
from vrtwist.vtest.packets import PacketUnavailable, resolve_pcap
from vrtwist.vtest.pcap import PcapError, compare_frames, parse_pcap, read_pcap

FLOW_ADD = os.path.join(PEER, "ipv4__complex__flow__flow_add.xml")


def pcap(*frames: bytes, magic: bytes = b"\xd4\xc3\xb2\xa1") -> bytes:
    order = "<" if magic[0] in (0xD4, 0x4D) else ">"
    out = magic + struct.pack(order + "HHiIII", 2, 4, 0, 0, 65535, 1)
    for f in frames:
        out += struct.pack(order + "IIII", 1, 2, len(f), len(f)) + f
    return out


class PcapTests(SynchronousTestCase):
    def test_both_byte_orders_and_nanosecond_magic(self) -> None:
        for magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1"):
            self.assertEqual(parse_pcap(pcap(b"ab", b"cde", magic=magic)), [b"ab", b"cde"])

    def test_bad_files_are_refused_clearly(self) -> None:
        good = pcap(b"abcd", b"efgh")
        for data, why in (
            (b"xx", "shorter than a pcap header"),
            (b"\x00" * 24, "bad magic"),
            (good[:-2], "record 2: truncated data"),
            (good[:24] + b"\x01\x00", "record 1: truncated header"),
            (good[:24] + struct.pack("<IIII", 0, 0, 10**6, 10**6), "too large"),
        ):
            with self.assertRaises(PcapError) as e:
                parse_pcap(data)
            self.assertIn(why, str(e.exception))

    def test_peer_pcap(self) -> None:
        path = os.path.join(PEER, "ipv4__pcaps__flow.pcap")
        if not os.path.exists(path):
            self.skipTest("peer vtest suite not found at %s" % PEER)
        frames = read_pcap(path)
        self.assertEqual((len(frames), len(frames[0])), (1000, 122))

    def test_compare_names_the_frame_and_the_byte(self) -> None:
        self.assertIsNone(compare_frames([b"abc", b"def"], [b"abc", b"def"]))
        self.assertEqual(
            compare_frames([b"abc", b"def"], [b"abc", b"dxf"]),
            "frame 2 differs at byte 1: expected 65, got 78 (3/3 bytes)",
        )
        self.assertEqual(
            compare_frames([b"abc"], [b"abcd"]),
            "frame 1: expected 3 bytes, got 4 (equal up to there)",
        )
        self.assertEqual(
            compare_frames([b"a", b"b"], [b"a"]), "frame 2: not received (1 of 2 frames arrived)"
        )
        self.assertEqual(
            compare_frames([b"a"], [b"a", b"z"]), "1 unexpected frame(s) after the 1 expected"
        )


class ResolveTests(SynchronousTestCase):
    def test_flattened_and_upstream_layouts(self) -> None:
        root = tempfile.mkdtemp(prefix="ptvt")
        self.addCleanup(shutil.rmtree, root)
        flat = os.path.join(root, "ipv4__complex__flow__flow_add.xml")
        open(os.path.join(root, "ipv4__pcaps__flow.pcap"), "wb").close()
        self.assertEqual(
            resolve_pcap(flat, "../../pcaps/flow.pcap"),
            os.path.join(root, "ipv4__pcaps__flow.pcap"),
        )
        os.makedirs(os.path.join(root, "ipv4", "complex", "flow"))
        os.makedirs(os.path.join(root, "ipv4", "pcaps"))
        open(os.path.join(root, "ipv4", "pcaps", "flow.pcap"), "wb").close()
        nested = os.path.join(root, "ipv4", "complex", "flow", "flow_add.xml")
        self.assertEqual(
            resolve_pcap(nested, "../../pcaps/flow.pcap"),
            os.path.join(root, "ipv4", "pcaps", "flow.pcap"),
        )
        with self.assertRaises(PacketUnavailable) as e:
            resolve_pcap(flat, "../../pcaps/deadbeef2.pcap")
        self.assertEqual(str(e.exception), "missing pcap ../../pcaps/deadbeef2.pcap")


class SpawnPacketTests(SynchronousTestCase):
    """Real veths in a private namespace; needs root and the pipeline."""

    def setUp(self) -> None:
        if os.geteuid() != 0:
            self.skipTest("needs root (network namespace and veths)")
        if not os.path.exists(FLOW_ADD):
            self.skipTest("peer vtest suite not found at %s" % PEER)

    def run_cli(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        args = runner.build_parser().parse_args(["--spawn", "--netns-prefix", "ptvt", *argv])
        return runner.run(args, out), out.getvalue()

    def test_flow_add_matches_byte_for_byte(self) -> None:
        code, text = self.run_cli(FLOW_ADD)
        self.assertEqual(code, runner.EXIT_OK, text)
        self.assertIn(
            "PASS ipv4__complex__flow__flow_add.xml (Add flow): 5 messages, 1 packet checks", text
        )
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        self.assertNotIn("ptvt-%d-" % os.getpid(), left)

    def test_a_differing_frame_is_reported(self) -> None:
        root = tempfile.mkdtemp(prefix="ptvt")
        self.addCleanup(shutil.rmtree, root)
        frames = read_pcap(os.path.join(PEER, "ipv4__pcaps__flow.pcap"))
        bad = list(frames)
        bad[4] = bad[4][:20] + bytes([bad[4][20] ^ 0xFF]) + bad[4][21:]
        with open(os.path.join(root, "ipv4__pcaps__flow_bad.pcap"), "wb") as f:
            f.write(pcap(*bad))
        with open(FLOW_ADD) as f:
            xml = f.read()
        xml = xml.replace(
            "<pcap_expected_file>../../pcaps/flow.pcap",
            "<pcap_expected_file>../../pcaps/flow_bad.pcap",
        )
        shutil.copy(os.path.join(PEER, "ipv4__pcaps__flow.pcap"), root)
        path = os.path.join(root, "ipv4__complex__flow__flow_add.xml")
        with open(path, "w") as f:
            f.write(xml)
        code, text = self.run_cli(path)
        self.assertEqual(code, runner.EXIT_FAIL, text)
        self.assertIn("frame 5 differs at byte 20: expected %02x, got %02x (122/122 bytes)"
                      % (bad[4][20], frames[4][20]), text)  # fmt: skip


class WholeSuiteTests(SynchronousTestCase):
    """The real vRouter's whole vtest suite, packets included, through veths (root)."""

    def test_every_file(self) -> None:
        if os.geteuid() != 0:
            self.skipTest("needs root (network namespace and veths)")
        if not os.path.exists(FLOW_ADD):
            self.skipTest("peer vtest suite not found at %s" % PEER)
        exe = os.path.join(os.path.dirname(sys.executable), "vrtwist-vtest")
        done = subprocess.run([exe, "--spawn", "--netns-prefix", "ptws", PEER],
                              capture_output=True, text=True, timeout=600)
        lines = done.stdout.splitlines()
        # 13 message files and the 7 packet files whose pcaps exist pass, byte for byte;
        # the 8 whose pcaps are missing are reported as unrunnable: exit status 2
        self.assertEqual(lines[-1], "28 files: 20 passed, 0 failed, 8 skipped (packet path)",
                         done.stdout + done.stderr)
        self.assertEqual(done.returncode, 2)
        self.assertEqual(sum(line.startswith("PASS ipv4__") for line in lines), 7)
        self.assertTrue(all("missing pcap" in line for line in lines if line.startswith("SKIP")))

"""The port layer inside ``twistd vrouter-dp``: vifs added over ksync attach, ``vif --list``
shows the state, the VLAN options, the trap sink, and sans-IO parts (rtnetlink, offloads).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import struct
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.threads import deferToThread
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.datapath.ports_world import PFX, Devices, Sniffer, mkframe, skip_reason
from tests.polling import wait_for
from vrtwist.cli import vif as vif_cli
from vrtwist.datapath import offload
from vrtwist.datapath import tap as dp_tap
from vrtwist.datapath.dispatcher import Datapath
from vrtwist.datapath.links import RTM_DELLINK, RTM_NEWLINK, parse_link_events
from vrtwist.datapath.packets import PacketService
from vrtwist.datapath.ports import TP_STATUS_VLAN_TPID_VALID, TP_STATUS_VLAN_VALID, _retag
from vrtwist.datapath.service import makeDatapathService
from vrtwist.ksync.blocking import open_ksync
from vrtwist.sandesh import ADD, DEL, GET, schema

_SKIP = skip_reason()


class KsyncAttachTests(TestCase):
    """A vif added with ``vif --add`` over the real ksync socket attaches to its TAP."""

    timeout = 60
    if _SKIP:
        skip = _SKIP

    def setUp(self) -> Deferred[Any] | None:  # type: ignore[override]  # trial waits for it
        self.run_dir = tempfile.mkdtemp(prefix=PFX)
        self.addCleanup(shutil.rmtree, self.run_dir, True)
        self.dev = Devices()
        self.addCleanup(self.dev.cleanup)
        self.top = makeDatapathService(self.run_dir, 1024, 1024, reactor=IReactorUNIX(reactor))
        self.top.startService()
        self.addCleanup(self.top.stopService)
        return None

    def cli(self, *argv: str) -> Deferred[tuple[int, str]]:
        def run() -> tuple[int, str]:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = vif_cli.main(["--sock-dir", self.run_dir, *argv])
            return code, out.getvalue()

        return deferToThread(run)

    @inlineCallbacks
    def test_vif_add_attaches_and_list_shows_the_state(self) -> Any:
        name = PFX + "ka"
        code, _ = yield self.cli("--add", name, "--type", "virtual", "--id", "3",
                                 "--mac", "00:00:5e:00:01:00", "--vrf", "0")  # fmt: skip
        self.assertEqual(code, 0)
        code, text = yield self.cli("--list")
        self.assertEqual(code, 0)
        self.assertIn("Status: DOWN (waiting for the device)", text)
        self.dev.tap(name)
        ports = self.top.packets.ports  # type: ignore[attr-defined]
        yield wait_for(lambda: ports.state(3) == "attached")

        def get() -> Any:
            with open_ksync(self.run_dir) as ks:
                return ks.request(schema.vr_interface_req(h_op=GET, vifr_idx=3)).objects[0]

        got = yield deferToThread(get)
        self.assertEqual(got.vifr_os_idx, socket.if_nametoindex(name))
        self.assertEqual(got.vifr_intf_status, 1)
        code, text = yield self.cli("--list")
        self.assertIn("Status: UP", text)
        self.assertIn(
            "Vrf:0 Mcast Vrf:65535 Flags:L3L2 QOS:0 Ref:1\n            Status: UP\n", text
        )
        # frames the kernel sends on the TAP are received by vif 3 (counted by the pipeline)
        sniffer = Sniffer(name)
        self.addCleanup(sniffer.close)
        sniffer.send(mkframe(1))
        datapath = self.top.datapath  # type: ignore[attr-defined]
        yield wait_for(lambda: datapath.tables.interfaces[3].counters["ipackets"] >= 1)
        code, _ = yield self.cli("--delete", "3")
        self.assertEqual(code, 0)
        self.assertEqual(ports.state(3), "none")
        self.assertTrue(socket.if_nametoindex(name))  # the persistent TAP is still there


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> dp_tap.Options:
        o = dp_tap.Options()
        run_dir = tempfile.mkdtemp(prefix=PFX)
        self.addCleanup(shutil.rmtree, run_dir, True)
        o.parseOptions(["--run-dir", run_dir, *argv])
        return o

    def test_vlan_options(self) -> None:
        o = self.parse("--vlan-tci", "5", "--vtest-vlan")
        self.assertEqual(o["vlan-tci"], 5)
        self.assertTrue(o["vtest-vlan"])
        self.assertEqual(self.parse("--vlan-tci", "0x2005")["vlan-tci"], 0x2005)

    def test_bad_vlan_tci_is_refused(self) -> None:
        for bad in ("65536", "-1", "five"):
            with self.assertRaises(usage.UsageError) as e:
                self.parse("--vlan-tci", bad)
            self.assertIn("TCI", str(e.exception))

    def test_vtest_vlan_needs_a_tci(self) -> None:
        o = self.parse("--vtest-vlan")
        with self.assertRaises(ValueError) as e:
            makeDatapathService(o, reactor=IReactorUNIX(reactor))
        self.assertIn("--vlan-tci", str(e.exception))

    def test_no_ports(self) -> None:
        top = makeDatapathService(self.parse("--no-ports"), reactor=IReactorUNIX(reactor))
        self.assertEqual([s.name for s in top], ["datapath", "ksync"])
        top.getServiceNamed("datapath").stopService()
        top = makeDatapathService(self.parse(), reactor=IReactorUNIX(reactor))
        self.assertIn("packets", [s.name for s in top])
        top.getServiceNamed("datapath").stopService()


class TrapAndFallbackTests(SynchronousTestCase):
    def test_no_agent_vif_no_trap(self) -> None:
        """Without an agent vif the trap is refused, so the pipeline counts trap_no_if."""
        dp = Datapath()
        service = PacketService(dp, reactor)
        self.assertFalse(service.trap.trap(7, 0, 2, 0, 0, (0, 0, 0, 0), b"frame" * 10))
        dp.handle(schema.vr_interface_req(h_op=ADD, vifr_idx=2, vifr_type=1, vifr_name="pkt0",
                                          vifr_mac=list(bytes.fromhex("00005e000100"))))
        # an agent vif, but no pkt0 socket (no run directory given): still refused
        self.assertFalse(service.trap.trap(7, 0, 2, 0, 0, (0, 0, 0, 0), b"frame" * 10))

    def test_interface_requests_still_answered_and_errors_kept(self) -> None:
        """The ports hook wraps vr_interface_req: replies and refusals are unchanged."""
        dp = Datapath()
        PacketService(dp, reactor)
        bad = dp.handle(schema.vr_interface_req(h_op=ADD, vifr_idx=10**6, vifr_type=3))
        self.assertLess(bad[0][0].resp_code, 0)
        missing = dp.handle(schema.vr_interface_req(h_op=DEL, vifr_idx=5))
        self.assertLess(missing[0][0].resp_code, 0)
        ok = dp.handle(schema.vr_interface_req(h_op=ADD, vifr_idx=5, vifr_type=3, vifr_name="x"))
        self.assertEqual(ok[0][0].resp_code, 0)
        self.assertIn(5, dp.tables.interfaces)


def _nl(kind: int, index: int, name: bytes, flags: int = 1) -> bytes:
    attr_len = 4 + len(name) + 1
    attr = struct.pack("=HH", attr_len, 3) + name + b"\0"
    attr += bytes(-len(attr) % 4)
    body = struct.pack("=BxHiII", 0, 1, index, flags, 0) + attr
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


class LinkParserTests(SynchronousTestCase):
    def test_new_and_del(self) -> None:
        data = _nl(RTM_NEWLINK, 7, b"pt0a") + _nl(RTM_DELLINK, 8, b"pt0b", 0)
        self.assertEqual(
            list(parse_link_events(data)), [("pt0a", 7, True, 1), ("pt0b", 8, False, 0)]
        )

    def test_truncated_and_foreign_messages_are_skipped(self) -> None:
        good = _nl(RTM_NEWLINK, 7, b"pt0a")
        other = struct.pack("=IHHII", 20, 24, 0, 0, 0) + bytes(4)  # RTM_NEWROUTE
        self.assertEqual(list(parse_link_events(other + good)), [("pt0a", 7, True, 1)])
        self.assertEqual(list(parse_link_events(good[:-3])), [])
        self.assertEqual(list(parse_link_events(struct.pack("=IHHII", 3, 16, 0, 0, 0))), [])


def _tcp4(payload: bytes, flags: int = 0x18) -> bytearray:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 100, 0x4000, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
    tcp = struct.pack("!HHIIBBHHH", 1000, 2000, 5000, 1, 0x50, flags, 65535, 0, 0)
    return bytearray(b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp + payload)


def _valid_tcp4(frame: bytes) -> bool:
    ip = frame[14:34]
    pseudo = ip[12:20] + bytes([0, 6]) + struct.pack("!H", len(frame) - 34)
    return offload.checksum(ip) == 0xFFFF and offload.checksum(pseudo + frame[34:]) == 0xFFFF


class OffloadTests(SynchronousTestCase):
    def test_checksum_vectors(self) -> None:
        # RFC 1071 section 3's example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2
        self.assertEqual(offload.checksum(bytes.fromhex("0001f203f4f5f6f7")), 0xDDF2)
        self.assertEqual(offload.checksum(b"\xab"), 0xAB00)  # odd length: zero-padded
        self.assertEqual(offload.checksum(b"\xff\xff\x00\x00"), 0xFFFF)
        self.assertEqual(offload.checksum(b""), 0)
        self.assertEqual(offload.checksum(b"\x00\x01", 0xFFFE), 0xFFFF)

    def test_segments_carry_sequence_ids_flags_and_valid_checksums(self) -> None:
        payload = bytes(range(256)) * 10  # 2560 bytes -> 1000 + 1000 + 560
        frame = _tcp4(payload, flags=0x19 | 0x80)  # FIN PSH ACK CWR
        vnet = offload.VNET_HDR.pack(1, offload.GSO_TCPV4, 54, 1000, 34, 16)
        segs = offload.finish(frame, vnet)
        self.assertEqual([len(s) - 54 for s in segs], [1000, 1000, 560])
        self.assertEqual(b"".join(bytes(s[54:]) for s in segs), payload)
        self.assertEqual([struct.unpack_from("!I", s, 38)[0] for s in segs], [5000, 6000, 7000])
        self.assertEqual([struct.unpack_from("!H", s, 18)[0] for s in segs], [100, 101, 102])
        self.assertEqual([s[47] for s in segs], [0x90, 0x10, 0x19])
        self.assertTrue(all(_valid_tcp4(bytes(s)) for s in segs))

    def test_partial_checksum_is_finished(self) -> None:
        frame = _tcp4(b"hello")
        tcp_len = len(frame) - 34
        pseudo = bytes(frame[26:34]) + bytes([0, 6]) + struct.pack("!H", tcp_len)
        struct.pack_into("!H", frame, 50, offload.checksum(pseudo))  # what the stack leaves
        vnet = offload.VNET_HDR.pack(offload.F_NEEDS_CSUM, 0, 0, 0, 34, 16)
        ip_sum = offload.checksum(frame[14:34])
        struct.pack_into("!H", frame, 24, ~ip_sum & 0xFFFF)
        (out,) = offload.finish(frame, vnet)
        self.assertTrue(_valid_tcp4(bytes(out)))

    def test_no_offload_is_no_copy(self) -> None:
        frame = bytes(_tcp4(b"x"))
        self.assertIs(offload.finish(frame, bytes(10))[0], frame)

    def test_refusals(self) -> None:
        frame = _tcp4(b"x" * 100)
        with self.assertRaises(offload.OffloadError):  # UDP GSO of a TCP packet
            offload.finish(frame, offload.VNET_HDR.pack(0, offload.GSO_UDP_L4, 0, 50, 34, 6))
        with self.assertRaises(offload.OffloadError):  # UFO: not segmented here
            offload.finish(frame, offload.VNET_HDR.pack(0, offload.GSO_UDP, 0, 50, 34, 6))
        with self.assertRaises(offload.OffloadError):
            offload.finish(frame, offload.VNET_HDR.pack(1, 0, 0, 0, 500, 16))
        with self.assertRaises(offload.OffloadError):
            offload.finish(frame, offload.VNET_HDR.pack(1, offload.GSO_TCPV4, 0, 0, 34, 16))
        arp = bytearray(frame)
        arp[12:14] = b"\x08\x06"
        with self.assertRaises(offload.OffloadError):
            offload.finish(arp, offload.VNET_HDR.pack(1, offload.GSO_TCPV4, 0, 50, 34, 16))


class RetagTests(SynchronousTestCase):
    """The VLAN tag the kernel hands over apart (ring slot or auxdata) goes back in place."""

    def test_tag_after_the_addresses_and_checksum_offsets_moved(self) -> None:
        frame = mkframe(1)
        partial = offload.VNET_HDR.pack(offload.F_NEEDS_CSUM, 0, 0, 0, 34, 6)
        out, vnet = _retag(frame, partial, TP_STATUS_VLAN_VALID, 0x2005, 0)
        self.assertEqual(out, frame[:12] + b"\x81\x00\x20\x05" + frame[12:])
        self.assertEqual(offload.VNET_HDR.unpack(vnet), (offload.F_NEEDS_CSUM, 0, 0, 0, 38, 6))
        status = TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID
        plain = bytes(offload.VNET_HDR.size)
        out, vnet = _retag(frame, plain, status, 7, 0x88A8)  # 802.1ad kept as given
        self.assertEqual(out[12:16], b"\x88\xa8\x00\x07")
        self.assertEqual((out[:12], out[16:]), (frame[:12], frame[12:]))
        self.assertEqual(vnet, plain)  # nothing to move without offload state

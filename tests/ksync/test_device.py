"""The ksync channel with the Windows device's semantics (tf-vrouter ``windows/`` ksync
driver, as summarised in the spec's Windows flavour): per handle sessions, 4,096-byte
messages split or joined across writes, one response per read, an empty read answered at
once with 0 bytes, one message per bulk; in memory and over the Linux transport."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from vrtwist.ksync.device import (
    KSYNC_MAX_BUFFER_SIZE,
    STATUS_BUFFER_TOO_SMALL,
    STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_PARAMETER,
    DeviceClient,
    DeviceError,
    DeviceTransportFactory,
    IKsyncDeviceHandle,
    KsyncDevice,
)
from vrtwist.ksync.netlink import build_request, parse_message
from vrtwist.ksync.testing import MemoryDispatcher
from vrtwist.sandesh import ADD, DUMP, GET, decode, encode, schema

#: The Windows agent's netlink type for ksync (utilities: FAKE_NETLINK_FAMILY).
FAKE_NETLINK_FAMILY = 1


def req(msg: object, seq: int) -> bytes:
    return build_request(encode(msg), seq, nl_type=FAKE_NETLINK_FAMILY)


def mpls_add(label: int, seq: int) -> bytes:
    return req(schema.vr_mpls_req(h_op=ADD, mr_label=label, mr_nhid=label + 1), seq)


def answer(data: bytes) -> tuple[int, int, list[object]]:
    """(seq, nl_type, decoded Sandesh) of one response message."""
    msg = parse_message(data)
    return msg.seq, msg.nl_type, decode(msg.payload)


class DeviceSemanticsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.device = KsyncDevice(MemoryDispatcher())

    def test_interface(self) -> None:
        verifyObject(IKsyncDeviceHandle, self.device.open())

    def test_write_split_and_joined(self) -> None:
        h = self.device.open()
        data = mpls_add(20, 1) + mpls_add(21, 2)
        # byte by byte across the header, then the rest with the second message joined
        for b in data[:10]:
            self.assertEqual(h.write(bytes([b])), 1)
        self.assertEqual(h.read(), b"")  # nothing complete yet: 0 bytes, at once
        self.assertEqual(h.write(data[10:]), len(data) - 10)
        first, second = h.read(), h.read()
        self.assertEqual(answer(first)[:2], (1, FAKE_NETLINK_FAMILY))  # type echoed
        self.assertEqual(answer(second)[0], 2)
        self.assertEqual(answer(first)[2][0].resp_code, 0)  # type: ignore[attr-defined]
        self.assertEqual(h.read(), b"")

    def test_one_response_per_read_and_small_buffer(self) -> None:
        h = self.device.open()
        for label in range(16, 40):
            h.write(mpls_add(label, label))
        h.write(req(schema.vr_mpls_req(h_op=DUMP, mr_marker=-1), 99))
        for _ in range(24):
            h.read()
        # a dump: vr_response + a page (and a DONE), each its own read of at most 4,096
        sizes = []
        while True:
            try:
                data = h.read(64)
            except DeviceError as e:
                self.assertEqual(e.status, STATUS_BUFFER_TOO_SMALL)
                data = h.read(KSYNC_MAX_BUFFER_SIZE)  # kept for the next read
            if not data:
                break
            sizes.append(len(data))
        self.assertGreaterEqual(len(sizes), 2)
        self.assertTrue(all(s <= KSYNC_MAX_BUFFER_SIZE for s in sizes))

    def test_every_handle_is_its_own_session(self) -> None:
        a, b = self.device.open(), self.device.open()
        half = mpls_add(30, 7)
        a.write(half[:20])
        b.write(mpls_add(31, 8))  # b's message is not mixed with a's half
        self.assertEqual(a.read(), b"")
        self.assertEqual(answer(b.read())[0], 8)
        a.write(half[20:])
        self.assertEqual(answer(a.read())[0], 7)
        b.write(req(schema.vr_mpls_req(h_op=GET, mr_label=30), 9))
        got = answer(b.read())[2]
        self.assertEqual(got[1].mr_nhid, 31)  # type: ignore[attr-defined]  # shared tables

    def test_too_long_message_resets_the_buffer_only(self) -> None:
        h = self.device.open()
        h.write(mpls_add(40, 1)[:8])
        bad = bytearray(mpls_add(41, 2))
        bad[0:4] = (KSYNC_MAX_BUFFER_SIZE + 1).to_bytes(4, "little")
        h2 = self.device.open()
        h2.write(mpls_add(42, 3))
        with self.assertRaises(DeviceError) as cm:
            h2.write(bytes(bad))
        self.assertEqual(cm.exception.status, STATUS_INVALID_PARAMETER)
        # the queued answer and the other handle's half message are untouched
        self.assertEqual(answer(h2.read())[0], 3)
        h2.write(mpls_add(43, 4))
        self.assertEqual(answer(h2.read())[0], 4)
        h.write(mpls_add(40, 1)[8:])
        self.assertEqual(answer(h.read())[0], 1)

    def test_ioctl_refused_and_close_drops_responses(self) -> None:
        h = self.device.open()
        with self.assertRaises(DeviceError) as cm:
            h.ioctl(0x00112406)
        self.assertEqual(cm.exception.status, STATUS_INVALID_DEVICE_REQUEST)
        h.write(mpls_add(50, 1))
        h.close()
        self.assertEqual(len(h.responses), 0)
        with self.assertRaises(DeviceError):
            h.read()
        self.assertEqual(self.device.open().read(), b"")  # a new handle starts empty


class LinuxTransportTests(TestCase):
    """The same semantics through the Linux transport: real Unix sockets, a blocking client
    in a thread per handle, as the Windows agent and a utility would hold two handles."""

    timeout = 30

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="io")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "vrouterKsync")
        self.dispatcher = MemoryDispatcher()
        self.port = reactor.listenUNIX(self.path, DeviceTransportFactory(  # type: ignore[attr-defined]
            KsyncDevice(self.dispatcher)))
        self.addCleanup(self.port.stopListening)

    def test_two_handles_one_message_per_bulk(self) -> Deferred[None]:
        results: dict[str, object] = {}
        barrier = threading.Barrier(2)

        def agent() -> None:
            h = DeviceClient(self.path)
            barrier.wait()
            for label in range(16, 26):  # one message per bulk, as the Windows agent
                msg = mpls_add(label, label)
                h.write(msg[:5])
                h.write(msg[5:])
                while not (data := h.read()):
                    pass
                results[f"a{label}"] = answer(data)[0]
            results["empty"] = h.read()
            h.close()

        def utility() -> None:
            h = DeviceClient(self.path)
            barrier.wait()
            h.write(mpls_add(100, 1) + mpls_add(101, 2))
            seqs: list[int] = []
            while len(seqs) < 2:
                data = h.read()
                if data:
                    seqs.append(answer(data)[0])
            results["u"] = seqs
            try:
                h.ioctl(1)
            except DeviceError as e:
                results["ioctl"] = e.status
            h.close()

        def check(_: object) -> None:
            self.assertEqual([results[f"a{n}"] for n in range(16, 26)], list(range(16, 26)))
            self.assertEqual(results["empty"], b"")
            self.assertEqual(results["u"], [1, 2])
            self.assertEqual(results["ioctl"], STATUS_INVALID_DEVICE_REQUEST)
            self.assertEqual(len(self.dispatcher.tables["vr_mpls_req"]), 12)

        from twisted.internet.defer import gatherResults

        return gatherResults([deferToThread(agent), deferToThread(utility)]).addCallback(check)

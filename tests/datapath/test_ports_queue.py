"""The bounded transmit queue of a port, over a real full socket (no root needed).

A ``SOCK_SEQPACKET`` socketpair stands in for the device: a ``Port`` whose writes go to
one end, the other end left unread until it is full, so ``EAGAIN`` is real.
"""

from __future__ import annotations

import errno
import socket
import struct

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.datapath import offload
from vrtwist.datapath import ports as P
from vrtwist.datapath.dispatcher import Datapath, make
from vrtwist.datapath.ports import Frame, Port, PortManager
from vrtwist.sandesh import ADD


class SocketPort(Port):
    kind = "socketpair"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.setblocking(False)
        self.peer.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _read(self) -> Frame | None:
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            return None

    def _write(self, frame: Frame, vnet: bytes) -> None:
        self.sock.send(frame)

    def _close(self) -> None:
        self.sock.close()
        self.peer.close()


class QueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dp = Datapath()
        req = {"h_op": ADD, "vifr_idx": 4, "vifr_type": 3, "vifr_name": "q", "vifr_mac": bytes(6)}
        self.dp.handle(make("vr_interface_req", req))
        self.reactor = MemoryReactor()
        self.manager = PortManager(self.dp.tables, self.reactor)
        self.port = SocketPort(4, "q", 99, b"\x02" * 6, self.manager._deliver, self.manager._lost)
        self.port.start(self.reactor)
        self.manager.ports[4] = self.port
        self.manager.wanted[4] = "q"

    def fill(self) -> int:
        sent = 0
        while self.manager.transmit(4, b"x" * 1000):
            sent += 1
            self.assertLess(sent, 100000)
        return sent

    def test_full_device_queues_a_bounded_number_then_refuses(self) -> None:
        sent = self.fill()
        self.assertEqual(len(self.port.queue), P.TX_QUEUE)
        self.assertEqual(self.port.stats["tx"] + P.TX_QUEUE, sent)
        self.assertEqual(self.port.stats["tx_full"], 1)
        self.assertIn(self.port, self.reactor.writers)
        self.assertFalse(self.manager.transmit(4, b"y"))  # still full: refused, not queued
        self.assertEqual(len(self.port.queue), P.TX_QUEUE)
        # the device drains: doWrite flushes the queue in order and stops writing
        got = 0
        while got < sent:
            while True:
                try:
                    self.port.peer.recv(65536)
                    got += 1
                except BlockingIOError:
                    break
            self.port.doWrite()
        self.assertEqual(len(self.port.queue), 0)
        self.assertNotIn(self.port, self.reactor.writers)
        self.assertEqual(self.port.stats["tx"], sent)

    def test_device_gone_with_queued_frames_counts_them_as_drops(self) -> None:
        self.fill()
        self.port.close()
        vif = self.dp.tables.interfaces[4]
        self.assertEqual(vif.counters["oerrors"], P.TX_QUEUE)
        self.assertEqual(vif.drops["vds_interface_tx_discard"], P.TX_QUEUE)
        self.assertEqual(self.dp.tables.drop_stats["vds_interface_tx_discard"], P.TX_QUEUE)
        self.assertEqual(vif.intf_status, P.WAITING)
        self.assertNotIn(4, self.manager.ports)
        self.assertFalse(self.manager.transmit(4, b"z"))
        self.assertNotIn(self.port, self.reactor.readers)


class RefusingPort(SocketPort):
    """A device that refuses UDP GSO with ``EINVAL``, as an older kernel's ``AF_PACKET``."""

    kind = "refusing"
    vnet_hdr = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.refusals = 0

    def _write(self, frame: Frame, vnet: bytes) -> None:
        if vnet[1] == offload.GSO_UDP_L4:
            self.refusals += 1
            raise OSError(errno.EINVAL, "Invalid argument")
        self.sock.send(frame)


def udp_gso_frame(chunks: int, size: int) -> tuple[bytes, bytes]:
    payload = bytes(i & 0xFF for i in range(chunks * size))
    length = 28 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 9, 0, 64, 17, 0,
                     b"\xc0\x00\x02\x01", b"\xc0\x00\x02\x02")  # fmt: skip
    ip = ip[:10] + struct.pack("!H", ~offload.checksum(ip) & 0xFFFF) + ip[12:]
    partial = offload.checksum(ip[12:20] + struct.pack("!HH", 17, length - 20))
    udp = struct.pack("!HHHH", 50000, 6635, length - 20, partial)
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp + payload
    vnet = offload.VNET_HDR.pack(offload.F_NEEDS_CSUM, offload.GSO_UDP_L4, 42, size, 34, 6)
    return frame, vnet


class RefusedGsoTests(SynchronousTestCase):
    def test_a_refused_gso_type_is_segmented_by_the_port_from_then_on(self) -> None:
        dp = Datapath()
        req = {"h_op": ADD, "vifr_idx": 4, "vifr_type": 3, "vifr_name": "r", "vifr_mac": bytes(6)}
        dp.handle(make("vr_interface_req", req))
        manager = PortManager(dp.tables, MemoryReactor())
        port = RefusingPort(4, "r", 99, b"\x02" * 6, manager._deliver, manager._lost)
        self.addCleanup(port._close)
        manager.ports[4] = port
        frame, vnet = udp_gso_frame(3, 500)
        for _ in range(2):
            self.assertTrue(manager.transmit_offload(4, frame, vnet))
        self.assertEqual(port.refusals, 1)  # asked once, then remembered
        self.assertEqual(port.refused_gso, {offload.GSO_UDP_L4})
        got = [port.peer.recv(2048) for _ in range(6)]
        self.assertEqual([len(g) for g in got], [42 + 500] * 6)
        for g in got:  # each a datagram with its own lengths and a valid UDP checksum
            self.assertEqual(struct.unpack_from("!H", g, 38)[0], 508)
            udp = g[34:]
            pseudo = g[26:34] + struct.pack("!BBH", 0, 17, len(udp))
            self.assertEqual(offload.checksum(pseudo + udp), 0xFFFF)
        self.assertEqual(port.stats["tx"], 6)
        self.assertEqual(port.stats["tx_errors"], 0)


class DrainRoundTests(SynchronousTestCase):
    """A wake-up drains again while frames keep coming (each round flushed), boundedly."""

    def setUp(self) -> None:
        self.got: list[bytes] = []
        self.flushes = 0
        self.arrivals = 0
        self.port = SocketPort(4, "q", 99, b"\x02" * 6, self.deliver, lambda port, n: None)
        self.port.batch_done = self.flushed
        self.addCleanup(self.port.sock.close)
        self.addCleanup(self.port.peer.close)

    def deliver(self, vif: int, frame: Frame, gso: object) -> None:
        self.got.append(bytes(frame))

    def flushed(self) -> None:
        """The end of a round: what arrives now is for the next round."""
        self.flushes += 1
        if self.arrivals:
            self.arrivals -= 1
            self.port.peer.send(b"late %d" % self.flushes)

    def test_frames_arriving_during_a_round_are_read_before_the_reactor_turns(self) -> None:
        for n in range(3):
            self.port.peer.send(b"first %d" % n)
        self.arrivals = 3
        self.port.doRead()
        self.assertEqual(len(self.got), 6)
        self.assertEqual(self.got[3:], [b"late 1", b"late 2", b"late 3"])
        self.assertEqual(self.flushes, 5)  # the last round found nothing
        self.assertEqual(self.port.stats["rx"], 6)

    def test_the_rounds_are_bounded(self) -> None:
        self.port.peer.send(b"first")
        self.arrivals = 100
        self.port.doRead()
        self.assertEqual(self.flushes, P.DRAIN_ROUNDS)
        self.assertEqual(len(self.got), P.DRAIN_ROUNDS)
        self.assertEqual(self.port.sock.recv(100), b"late %d" % P.DRAIN_ROUNDS)  # waits

    def test_a_whole_batch_returns_to_the_reactor_for_the_other_ports(self) -> None:
        self.port.read_batch = 2
        for n in range(5):
            self.port.peer.send(b"first %d" % n)
        self.port.doRead()
        self.assertEqual((len(self.got), self.flushes), (2, 1))

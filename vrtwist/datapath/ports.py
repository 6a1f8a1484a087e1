"""The port layer: vifs attached to OS devices, frames in to the pipeline and out again.

A vif added over ksync whose ``vifr_name`` names an OS interface is attached to it, as
the vRouter attaches its vifs: a TAP through ``/dev/net/tun`` (``TUNSETIFF`` with
``IFF_TAP|IFF_NO_PI``, which also opens an existing persistent TAP made by libvirt,
os-vif or ``ip tuntap``), any other netdev (veth, dummy, a NIC) through an ``AF_PACKET``
socket bound to its ifindex. Each port is a non-blocking reader that drains a bounded
batch per wake-up into ``pipeline.receive``; :class:`PortManager` is the pipeline's
:class:`IFrameOutput` and keeps a bounded queue per port for when the device is full.

Offloads are kept to the egress port, as the vRouter and QEMU do: ``AF_PACKET`` sockets
use ``PACKET_VNET_HDR`` and TAPs ``IFF_VNET_HDR`` with ``TUNSETOFFLOAD`` (checksum, TSO4,
TSO6), so one read can carry a TCP GSO super-frame of up to 64 KiB with its
``virtio_net_hdr``. When the pipeline takes offload state
(:class:`~vrtwist.datapath.interfaces.IOffloadPipeline`) the frame goes through it whole
and leaves whole through a port that takes a vnet header too (the kernel, in C, segments
it where it must); the pipeline segments in software only where the frame cannot leave
whole (:mod:`vrtwist.datapath.offload`). With another pipeline the ports finish every
frame before delivering it, and TAPs are opened without a vnet header (the kernel then
finishes them).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IReactorFDSet, IReadWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.datapath import constants as C
from vrtwist.datapath import offload, rings
from vrtwist.datapath.interfaces import (
    IOffloadOutput,
    IOffloadPipeline,
    IPacketPipeline,
)
from vrtwist.datapath.offload import Gso
from vrtwist.datapath.tables import Interface, Tables
from vrtwist.logfields import Logger

__all__ = [
    "ATTACHED",
    "WAITING",
    "PacketPort",
    "Port",
    "PortManager",
    "TapPort",
    "device_info",
    "is_tap",
]

_log = Logger()

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
# <linux/sockios.h>
SIOCGIFHWADDR = 0x8927
# <linux/if_packet.h>
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
ETH_P_ALL = 0x0003
# struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci, vlan_tpid
_AUXDATA = struct.Struct("=IIIHHHH")
_TAG = struct.Struct("!HH")  # an 802.1Q/802.1ad tag: TPID, TCI
_IFREQ = struct.Struct("16sH22x")

#: ``vifr_intf_status`` values the port layer reports (``vif --list`` prints Status)
ATTACHED = 1
WAITING = 2

#: vif types that own an OS device (the agent vif, pkt0, has its own channel)
ATTACHABLE_TYPES = frozenset(
    (C.VIF_TYPE_VIRTUAL, C.VIF_TYPE_PHYSICAL, C.VIF_TYPE_HOST, C.VIF_TYPE_GATEWAY)
)
#: frames drained per wake-up and port, so one busy port cannot starve the others
READ_BATCH = 64
#: drain rounds per wake-up at most (each after the previous one found frames)
DRAIN_ROUNDS = 8
#: frames queued per port while its device refuses more (EAGAIN/ENOBUFS)
TX_QUEUE = 256
_MAX_FRAME = 65536 + 14 + 8

Frame = bytes | bytearray | memoryview
Deliver = Callable[[int, Frame, Gso | None], None]
_VNET_ZERO = bytes(offload.VNET_HDR_LEN)


def is_tap(name: str) -> bool:
    """True when ``name`` is a TAP (a tun device in TAP mode), from sysfs."""
    try:
        with open(f"/sys/class/net/{name}/tun_flags") as f:
            return bool(int(f.read().strip(), 16) & IFF_TAP)
    except (OSError, ValueError):
        return False


def device_info(name: str) -> tuple[int, bytes] | None:
    """(ifindex, MAC) of the device ``name``, or None when it does not exist."""
    if not name or len(name.encode()) > 15 or "/" in name:
        return None
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            ifr = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, _IFREQ.pack(name.encode(), 0) + bytes(8))
        except OSError:
            return index, b""
    family = struct.unpack_from("=H", ifr, 16)[0]
    mac = bytes(ifr[18:24]) if family == 1 else b""  # ARPHRD_ETHER
    return index, mac


@implementer(IReadWriteDescriptor)
class Port:
    """One attached device: reads batches into ``deliver``, writes with a bounded queue."""

    kind = "device"
    #: writes take a ``virtio_net_hdr`` (a GSO super-frame can leave whole)
    vnet_hdr = False

    def __init__(self, vif_index: int, name: str, ifindex: int, mac: bytes,
                 deliver: Deliver, lost: Callable[[Port, int], None], *,
                 gso: bool = False) -> None:  # fmt: skip
        self.vif_index = vif_index
        #: deliver offload state with the frame instead of finishing it here
        self.gso = gso
        #: the offload state of the frame ``_read`` returned last
        self.rx_gso: Gso | None = None
        self.name = name
        self.ifindex = ifindex
        self.mac = mac
        self.deliver = deliver
        #: called with (port, frames lost) when the device went away under queued frames
        self.lost = lost
        self.queue: deque[tuple[Frame, bytes]] = deque()
        self.reactor: IReactorFDSet | None = None
        self.writing = False
        self.closed = False
        self.stats = {"rx": 0, "tx": 0, "queued": 0, "tx_full": 0, "rx_errors": 0,
                      "rx_offload": 0, "tx_offload": 0, "gso": 0, "csum": 0,
                      "rx_dropped": 0, "tx_errors": 0}  # fmt: skip
        self._pending: deque[Frame] = deque()
        #: GSO types the device refused (EINVAL): frames of them are segmented here
        self.refused_gso: set[int] = set()
        #: frames drained per wake-up
        self.read_batch = READ_BATCH
        #: called around each drained batch (the manager flushes the tx rings after)
        self.batch_begin: Callable[[], None] = _nothing
        self.batch_done: Callable[[], None] = _nothing
        #: called when a first frame waits in the tx ring since the last flush
        self.wants_flush: Callable[[Port], None] = _flush_now
        #: the pipeline's own ``receive`` and what to call when it raises, for the ring
        #: drain's loop (set by the manager; without them frames go through ``deliver``)
        self.receive: Callable[..., None] | None = None
        self.receive_failed: Callable[[int, Frame], None] = _nothing_failed

    # -- device specifics ------------------------------------------------------
    def fileno(self) -> int:
        raise NotImplementedError

    def _read(self) -> Frame | None:
        """One frame, or None when the device has nothing more (EAGAIN)."""
        raise NotImplementedError

    def _write(self, frame: Frame, vnet: bytes) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    @property
    def dirty(self) -> bool:
        """Frames written but not yet handed to the kernel (a tx ring to flush)."""
        return False

    def flush(self) -> None:
        """Hand what ``dirty`` counts to the kernel."""

    def _offload_in(self, frame: Frame, vnet: bytes | bytearray) -> Frame | None:
        """A frame read with a non-zero vnet header: its offload state kept for the
        pipeline, or the frame finished here (segments after the first wait in
        ``_pending``); None when the request cannot be honoured (counted)."""
        if self.gso:
            carried = offload.carried(vnet, len(frame))
            if carried is not None:
                self.rx_gso = carried
                self.stats["rx_offload"] += 1
                return frame
        self.rx_gso = None
        try:
            frames = offload.finish(bytes(frame), vnet)
        except offload.OffloadError as e:
            self.stats["rx_errors"] += 1
            _log.debug("port {name}: {error}", name=self.name, error=str(e))
            return None
        if len(frames) > 1:
            self.stats["gso"] += 1
            self._pending.extend(frames[1:])
        else:
            self.stats["csum"] += 1
        return frames[0]

    # -- reactor side ----------------------------------------------------------
    def start(self, reactor: IReactorFDSet) -> None:
        self.reactor = reactor
        reactor.addReader(self)

    def logPrefix(self) -> str:
        return f"{self.kind}:{self.name}"

    def doRead(self) -> None:
        """Drain and flush, again while frames keep coming: a round that finds any (but
        less than a whole batch) is followed by another before the reactor's turn, whose
        own cost per wake-up is that of dozens of frames."""
        stats = self.stats
        for _ in range(DRAIN_ROUNDS):
            before = stats["rx"]
            self.batch_begin()
            try:
                self._drain()
            finally:
                self.batch_done()
            got = stats["rx"] - before
            if not got or got >= self.read_batch or self.closed:
                return

    def _drain(self) -> None:
        deliver, vif, read, stats = self.deliver, self.vif_index, self._read, self.stats
        n = 0
        for _ in range(self.read_batch):
            try:
                frame = read()
            except OSError as e:
                self._gone(e)
                break
            if frame is None:
                break
            n += 1
            deliver(vif, frame, self.rx_gso)
            if self.closed:  # the pipeline's work detached us (vif deleted)
                break
        while self._pending and not self.closed:  # a segmented burst is delivered whole
            n += 1
            deliver(vif, self._pending.popleft(), None)
        stats["rx"] += n

    def transmit(self, frame: Frame, vnet: bytes = _VNET_ZERO) -> bool:
        """Send now, else queue (bounded); False when the frame is dropped.

        ``vnet`` is the frame's ``virtio_net_hdr``, only for a port with ``vnet_hdr``.
        """
        if self.closed:
            return False
        if self.queue:
            return self._enqueue(frame, vnet)
        if self.refused_gso and vnet[1] in self.refused_gso:
            return self._transmit_finished(frame, vnet)
        try:
            self._write(frame, vnet)
        except BlockingIOError:
            return self._enqueue(frame, vnet)
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                return self._enqueue(frame, vnet)
            if e.errno == errno.EINVAL and vnet[1]:
                self.refused_gso.add(vnet[1])
                return self._transmit_finished(frame, vnet)
            return False  # device down or gone: the pipeline counts the drop
        self.stats["tx"] += 1
        if vnet is not _VNET_ZERO:
            self.stats["tx_offload"] += 1
        return True

    def _transmit_finished(self, frame: Frame, vnet: bytes) -> bool:
        """What the kernel refused to take whole (a GSO type its ``AF_PACKET`` or TAP
        does not know: UDP GSO on an older kernel), segmented here instead."""
        try:
            frames = offload.finish(bytes(frame), vnet)
        except offload.OffloadError:
            self.stats["tx_errors"] += 1
            return False
        self.stats["gso"] += 1
        return all([self.transmit(f) for f in frames])

    def _enqueue(self, frame: Frame, vnet: bytes) -> bool:
        if len(self.queue) >= TX_QUEUE:
            self.stats["tx_full"] += 1
            return False
        self.queue.append((bytes(frame) if isinstance(frame, memoryview) else frame, vnet))
        self.stats["queued"] += 1
        if not self.writing and self.reactor is not None:
            self.writing = True
            self.reactor.addWriter(self)
        return True

    def doWrite(self) -> None:
        self.flush()
        queue = self.queue
        while queue:
            try:
                self._write(*queue[0])
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    return None
                if e.errno == errno.EINVAL and queue[0][1][1]:  # see transmit: lost
                    self.refused_gso.add(queue.popleft()[1][1])
                    self.stats["tx_errors"] += 1
                    continue
                self._gone(e)
                return None
            queue.popleft()
            self.stats["tx"] += 1
        self.flush()
        if self.dirty:  # the kernel could not take the ring yet
            return None
        self.writing = False
        if self.reactor is not None:
            self.reactor.removeWriter(self)
        return None

    def _gone(self, error: OSError) -> None:
        _log.info("port {name}: device error {error}, detaching", name=self.name,
                  error=os.strerror(error.errno or 0))  # fmt: skip
        self.connectionLost(Failure(error))

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading and writing, release the device (a persistent TAP stays)."""
        if self.closed:
            return
        self.closed = True
        if self.reactor is not None:
            self.reactor.removeReader(self)
            if self.writing:
                self.reactor.removeWriter(self)
        self.writing = False
        pending = len(self.queue)
        self.queue.clear()
        self._close()
        self.lost(self, pending)


class TapPort(Port):
    """A TAP opened through ``/dev/net/tun`` (``IFF_TAP|IFF_NO_PI``).

    With ``gso`` also ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` (``TUN_F_CSUM|TSO4|TSO6``,
    what QEMU asks for a virtio-net guest): the kernel may then hand over partial
    checksums and TCP super-frames, and takes them back the same way.
    """

    kind = "tap"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if self.gso else 0)
        try:
            fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(self.name.encode(), flags))
            if self.gso:
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        self.vnet_hdr = self.gso
        self._vnet = bytearray(offload.VNET_HDR_LEN)
        # one receive buffer, reused: a fresh 64 KiB one per read costs more than the read
        self._buf = bytearray(_MAX_FRAME)
        self._view = memoryview(self._buf)

    def fileno(self) -> int:
        return self.fd

    def _read(self) -> Frame | None:
        if self._pending:
            self.rx_gso = None
            return self._pending.popleft()
        if not self.vnet_hdr:
            try:
                n = os.readv(self.fd, [self._buf])
            except BlockingIOError:
                return None
            return self._view[:n].tobytes()
        while True:
            try:
                n = os.readv(self.fd, [self._vnet, self._buf])
            except BlockingIOError:
                return None
            frame = self._view[: n - offload.VNET_HDR_LEN].tobytes()
            if self._vnet == _VNET_ZERO:
                self.rx_gso = None
                return frame
            out = self._offload_in(frame, self._vnet)
            if out is not None:
                return out

    def _write(self, frame: Frame, vnet: bytes) -> None:
        if self.vnet_hdr:
            os.writev(self.fd, [vnet, frame])
        else:
            os.write(self.fd, frame)

    def _close(self) -> None:
        os.close(self.fd)


class PacketPort(Port):
    """Any other netdev through an ``AF_PACKET`` socket bound to its ifindex.

    Frames the host itself sends on the device (``PACKET_OUTGOING``, including our own
    transmits) are ignored; VLAN tags the driver stripped are put back from
    ``PACKET_AUXDATA``; ``PACKET_VNET_HDR`` gives the offload state (kept for the
    pipeline or finished here, see :meth:`Port._offload_in`) and takes it on writes.
    With ``use_rings`` (the default) frames come and go through ``PACKET_MMAP`` rings
    (:mod:`vrtwist.datapath.rings`): a wake-up drains the rx ring, writes fill the tx
    ring and one ``send`` per batch flushes it; where the kernel refuses rings, or
    for a frame larger than a slot, ``recvmsg``/``sendmsg`` as without them.
    """

    kind = "packet"
    vnet_hdr = True

    def __init__(self, *args: Any, use_rings: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            try:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:  # before Linux 4.20: filtered per frame below
                pass
            self.rings = self._rings(sock) if use_rings else None
            sock.bind((self.name, ETH_P_ALL))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        #: where frames larger than a tx slot go: with a tx ring, ``sendmsg`` on the
        #: ring's socket only flushes the ring (protocol 0: this one receives nothing)
        self.big_sock = sock
        if self.rings is not None:
            self.kind = "packet-ring"
            self.read_batch = rings.RX_FRAMES
            try:
                big = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            except OSError:
                self._close()
                raise
            try:
                big.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
                big.bind((self.name, 0))
                big.setblocking(False)
            except OSError:
                big.close()
                self._close()
                raise
            self.big_sock = big
        self._cmsg = socket.CMSG_SPACE(_AUXDATA.size)
        # receive buffers, reused (see TapPort): the vnet header, then the frame
        self._vnet = bytearray(offload.VNET_HDR_LEN)
        self._buf = bytearray(_MAX_FRAME)
        self._view = memoryview(self._buf)
        #: (vnet header, length) -> the offload state to carry (a handful of shapes)
        self._carried: dict[tuple[bytes, int], Gso | None] = {}

    def _rings(self, sock: socket.socket) -> rings.Rings | None:
        try:
            return rings.Rings(sock, offload.VNET_HDR_LEN)
        except (OSError, ValueError) as e:
            _log.info("port {name}: no packet rings ({error}), one system call per frame",
                      name=self.name, error=str(e))  # fmt: skip
            return None

    def fileno(self) -> int:
        return self.sock.fileno()

    def _read(self) -> Frame | None:
        if self._pending:
            self.rx_gso = None
            return self._pending.popleft()
        if self.rings is not None:
            return self._read_ring(self.rings)
        return self._read_socket()

    def poll_drops(self) -> int:
        """Add what the kernel dropped for a full rx ring since the last look to
        ``rx_dropped`` (also read whenever a frame comes marked ``TP_STATUS_LOSING``)."""
        if self.rings is not None and not self.closed:
            self.stats["rx_dropped"] += self.rings.drops()
        return self.stats["rx_dropped"]

    def _drain(self) -> None:
        """The rx ring's plain slots read and handed to the pipeline in one loop.

        A slot that is not a plain frame (a copy, a loss mark, a VLAN tag to put
        back, offload state the pipeline does not take) goes through ``_read`` as one
        frame at a time; counters are added once per batch.
        """
        ring = self.rings
        receive = self.receive
        if ring is None or receive is None or self._pending:
            return super()._drain()
        failed = self.receive_failed
        vif = self.vif_index
        m = ring.map
        unpack = rings.HDR.unpack_from
        end = ring.rx_end
        n = offloaded = losing = 0
        limit = self.read_batch
        while n < limit:
            off = ring.rx
            status, length, snaplen, mac, _n, _s, _ns, _t, _p = unpack(m, off)
            if not status & rings.TP_STATUS_USER:
                break
            # a full ring marks every frame after a drop LOSING: its drops are read
            # once for the batch, not once per frame
            losing |= status & rings.TP_STATUS_LOSING
            at = off + mac
            vnet = m[at - 10 : at]
            gso: Gso | None = None
            if (
                status & _RING_NOT_PLAIN
                or snaplen < length
                or (vnet != _VNET_ZERO and (gso := self._carry(vnet, snaplen)) is None)
            ):
                frame = self._read()  # this slot, the general way
                if frame is None:
                    break
                gso = self.rx_gso
            else:
                frame = m[at : at + snaplen]
                m[off : off + 4] = _STATUS_KERNEL
                off += rings.FRAME_SIZE
                ring.rx = 0 if off == end else off
                if gso is not None:
                    offloaded += 1
            n += 1
            try:
                if gso is None:
                    receive(vif, frame)
                else:
                    receive(vif, frame, gso)
            except Exception:  # noqa: BLE001 - the manager counts and logs it
                failed(vif, frame)
            if self.closed:  # the pipeline's work detached us (vif deleted)
                break
            while self._pending and not self.closed:  # a segmented burst whole
                n += 1
                self.deliver(vif, self._pending.popleft(), None)
        self._count_batch(n, offloaded, losing)

    def _count_batch(self, frames: int, offloaded: int, losing: int) -> None:
        """The ring drain's counters, once per batch (the kernel's drops if it lost any)."""
        stats = self.stats
        stats["rx"] += frames
        if offloaded:
            stats["rx_offload"] += offloaded
        if losing and self.rings is not None and not self.closed:
            stats["rx_dropped"] += self.rings.drops()

    def _carry(self, vnet: bytes, length: int) -> Gso | None:
        """The offload state the pipeline takes with a frame, or None (then finished
        here), remembered for the few shapes a stream of frames comes in."""
        if not self.gso:
            return None
        memo = self._carried
        key = (vnet, length)
        gso = memo.get(key, _UNKNOWN)
        if gso is _UNKNOWN:
            if len(memo) >= 64:
                memo.clear()
            gso = memo[key] = offload.carried(vnet, length)
        return gso  # type: ignore[no-any-return]

    def _read_ring(self, ring: rings.Rings) -> Frame | None:
        """The next frame from the rx ring (a larger one, marked COPY, from the socket).

        The hot path of small frames: one header unpack, two slices, one store.
        """
        m = ring.map
        unpack = rings.HDR.unpack_from
        while True:
            off = ring.rx
            status, length, snaplen, mac, _n, _s, _ns, tci, tpid = unpack(m, off)
            if not status & rings.TP_STATUS_USER:
                return None
            if status & _RING_SPECIAL or snaplen < length:
                whole = self._ring_special(ring, off, status, snaplen < length)
                if whole is not None:
                    return whole
                continue
            at = off + mac
            vnet = m[at - 10 : at]
            frame = m[at : at + snaplen]
            m[off : off + 4] = _STATUS_KERNEL
            off += rings.FRAME_SIZE
            ring.rx = 0 if off == ring.rx_end else off
            if status & TP_STATUS_VLAN_VALID:
                frame, vnet = _retag(frame, vnet, status, tci, tpid)
            if vnet == _VNET_ZERO:
                self.rx_gso = None
                return frame
            out = self._offload_in(frame, vnet)
            if out is not None:
                return out

    def _ring_special(self, ring: rings.Rings, off: int, status: int,
                      cut: bool) -> Frame | None:  # fmt: skip
        """A slot that is not a plain frame: drops to count, a frame larger than the
        slot to read whole from the socket. None: go on with the next slot."""
        if status & rings.TP_STATUS_LOSING:
            self.stats["rx_dropped"] += ring.drops()
        if status & rings.TP_STATUS_COPY:
            ring.release_rx(off)
            whole = self._read_socket()
            if whole is None:  # the copy found the receive buffer full: lost
                self.stats["rx_dropped"] += 1
            return whole
        if cut:  # cut to the slot and no copy queued: lost
            ring.release_rx(off)
            self.stats["rx_dropped"] += 1
            return None
        # only LOSING: a plain frame, read as one next time round (the flag is gone)
        struct.pack_into("=I", ring.map, off, status & ~rings.TP_STATUS_LOSING)
        return None

    def _read_socket(self) -> Frame | None:
        while True:
            try:
                n, ancillary, _flags, address = self.sock.recvmsg_into(
                    [self._vnet, self._buf], self._cmsg
                )
            except BlockingIOError:
                return None
            if address[2] == PACKET_OUTGOING:
                continue
            vnet = bytes(self._vnet)
            frame = self._view[: n - offload.VNET_HDR_LEN].tobytes()
            for level, kind, value in ancillary:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    status, _l, _s, _m, _n, tci, tpid = _AUXDATA.unpack_from(value)
                    if status & TP_STATUS_VLAN_VALID:
                        frame, vnet = _retag(frame, vnet, status, tci, tpid)
            if vnet == _VNET_ZERO:
                self.rx_gso = None
                return frame
            out = self._offload_in(frame, vnet)
            if out is not None:
                return out

    def transmit(self, frame: Frame, vnet: bytes = _VNET_ZERO) -> bool:
        """Straight into the tx ring when it has room; else as :meth:`Port.transmit`."""
        ring = self.rings
        if (
            ring is not None
            and not self.queue
            and not self.closed
            and len(frame) + offload.VNET_HDR_LEN <= ring.tx_room
            and ring.put(vnet, frame)
        ):
            if ring.tx_pending == 1:
                self.wants_flush(self)
            stats = self.stats
            stats["tx"] += 1
            if vnet is not _VNET_ZERO:
                stats["tx_offload"] += 1
            return True
        return super().transmit(frame, vnet)

    def _write(self, frame: Frame, vnet: bytes) -> None:
        ring = self.rings
        if ring is None:
            self.sock.sendmsg([vnet, frame])
            return
        if len(frame) + offload.VNET_HDR_LEN <= ring.tx_room:
            if not ring.put(vnet, frame):
                self.flush()  # full: the kernel may free slots now, else the frame queues
                if not ring.put(vnet, frame):
                    raise BlockingIOError(errno.EAGAIN, "tx ring full")
            if ring.tx_pending == 1:
                self.wants_flush(self)
            return
        self.flush()  # what is in the ring goes first
        self.big_sock.sendmsg([vnet, frame])

    @property
    def dirty(self) -> bool:
        return self.rings is not None and self.rings.tx_pending > 0

    def flush(self) -> None:
        ring = self.rings
        if ring is None or not ring.tx_pending:
            return
        pending = ring.tx_pending
        try:
            ring.flush()
        except (BlockingIOError, InterruptedError):
            ring.tx_pending = pending  # retried when the socket is writable
            self._want_write()
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                ring.tx_pending = pending
                self._want_write()
            else:
                self.stats["tx_errors"] += pending

    def _want_write(self) -> None:
        if not self.writing and self.reactor is not None and not self.closed:
            self.writing = True
            self.reactor.addWriter(self)

    def _close(self) -> None:
        if self.rings is not None:
            self.rings.close()
        if self.big_sock is not self.sock:
            self.big_sock.close()
        self.sock.close()


_RING_SPECIAL = rings.TP_STATUS_COPY | rings.TP_STATUS_LOSING
#: slots the ring drain's loop leaves to ``_read`` (LOSING alone is a plain frame)
_RING_NOT_PLAIN = rings.TP_STATUS_COPY | TP_STATUS_VLAN_VALID
_STATUS_KERNEL = bytes(4)
_UNKNOWN: Any = object()


def _retag(frame: bytes, vnet: bytes, status: int, tci: int,
           tpid: int) -> tuple[bytes, bytes]:  # fmt: skip
    """The VLAN tag the driver stripped (a ring slot's or auxdata's ``tci``/``tpid``) put
    back after the MAC addresses, and the partial checksum's offsets moved past it; both
    rx paths call it only for a frame that had one."""
    if not status & TP_STATUS_VLAN_TPID_VALID:
        tpid = 0x8100
    return frame[:12] + _TAG.pack(tpid, tci) + frame[12:], _shift_csum(vnet, 4)


def _shift_csum(vnet: bytes, by: int) -> bytes:
    flags, gso, hdr_len, size, start, off = offload.VNET_HDR.unpack(vnet)
    if flags & offload.F_NEEDS_CSUM or gso:
        start += by
        hdr_len += by if hdr_len else 0
    return offload.VNET_HDR.pack(flags, gso, hdr_len, size, start, off)


def _nothing() -> None:
    pass


def _nothing_failed(vif_index: int, frame: Frame) -> None:
    pass


def _flush_now(port: Port) -> None:
    port.flush()


@implementer(IPacketPipeline)
class _NoPipeline:
    def receive(self, vif_index: int, frame: Frame) -> None:
        pass


@implementer(IOffloadOutput)
class PortManager:
    """Keeps every attachable vif's device attached: the pipeline's frame output.

    ``sync()`` reconciles with the interface table (after each vif ADD/DEL);
    ``link_changed`` follows rtnetlink (a device appearing, disappearing, coming back).
    A vif whose device does not exist yet is kept WAITING; deleting a vif closes its
    port and leaves the device as it was.
    """

    def __init__(self, tables: Tables, reactor: IReactorFDSet,
                 pipeline: IPacketPipeline | None = None, *,
                 use_rings: bool = True) -> None:  # fmt: skip
        self.tables = tables
        self.reactor = reactor
        self.ports: dict[int, Port] = {}
        self._pipeline: IPacketPipeline = _NoPipeline()
        self._offloading = False
        #: ports with tx-ring frames to flush at the end of the batch being drained
        self._dirty: set[Port] = set()
        self._batching = False
        #: AF_PACKET ports use PACKET_MMAP rings (False: recvmsg/sendmsg per frame)
        self.use_rings = use_rings
        self.pipeline = _NoPipeline() if pipeline is None else pipeline
        #: vif index -> the device name it waits for / is attached to
        self.wanted: dict[int, str] = {}
        self.running = False
        self.errors: dict[int, str] = {}
        #: frames whose pipeline.receive raised (each is dropped, the port kept)
        self.pipeline_errors = 0

    @property
    def pipeline(self) -> IPacketPipeline:
        return self._pipeline

    @pipeline.setter
    def pipeline(self, pipeline: IPacketPipeline) -> None:
        """Ports carry offload state to the pipeline only when it takes it."""
        self._pipeline = pipeline
        self._offloading = IOffloadPipeline.providedBy(pipeline)
        for port in self.ports.values():
            port.gso = self._offloading
            port.receive = pipeline.receive

    # -- IFrameOutput -----------------------------------------------------------
    def transmit(self, vif_index: int, frame: Frame) -> bool:
        port = self.ports.get(vif_index)
        if port is None:
            return False
        return port.transmit(frame)

    def _flush_later(self, port: Port) -> None:
        """A frame waits in ``port``'s tx ring: flushed with the batch, or now."""
        if self._batching:
            self._dirty.add(port)
        else:
            port.flush()

    def _batch_begin(self) -> None:
        self._batching = True

    def _batch_done(self) -> None:
        """One ``send`` per port that got frames during the batch just drained."""
        self._batching = False
        dirty = self._dirty
        while dirty:
            dirty.pop().flush()

    def accepts_offload(self, vif_index: int) -> bool:
        port = self.ports.get(vif_index)
        return port is not None and port.vnet_hdr

    def transmit_offload(self, vif_index: int, frame: Frame, vnet: bytes) -> bool:
        port = self.ports.get(vif_index)
        if port is None or not port.vnet_hdr:
            return False
        return port.transmit(frame, vnet)

    def _deliver(self, vif_index: int, frame: Frame, gso: Gso | None = None) -> None:
        try:
            if gso is None:
                self.pipeline.receive(vif_index, frame)
            else:
                offloading: Any = self.pipeline  # an IOffloadPipeline (the ports ask)
                offloading.receive(vif_index, frame, gso)
        except Exception:  # noqa: BLE001 - last-resort guard, counted and logged below
            self._pipeline_failed(vif_index, frame)

    def _pipeline_failed(self, vif_index: int, frame: Frame) -> None:
        """Called in the handler of what the pipeline raised on one frame: a pipeline
        bug must cost one frame, not the port (a port closed by the reactor would wait
        for a link event that never comes)."""
        self.pipeline_errors += 1
        n = self.pipeline_errors
        if n & (n - 1) == 0:  # 1, 2, 4, 8 ...: bounded logging
            _log.failure("vif {idx}: pipeline error {n} on a frame of {length} bytes",
                         idx=vif_index, n=n, length=len(frame))  # fmt: skip

    # -- life cycle -------------------------------------------------------------
    def start(self) -> None:
        self.running = True
        self.sync()

    def stop(self) -> None:
        self.running = False
        for index in list(self.ports):
            self._detach(index)

    def state(self, vif_index: int) -> str:
        if vif_index in self.ports:
            return "attached"
        return "waiting" if vif_index in self.wanted else "none"

    def sync(self) -> None:
        """Attach new vifs, detach deleted ones, after any change of the interface table."""
        interfaces = self.tables.interfaces
        for index in list(self.wanted):
            vif = interfaces.get(index)
            if vif is None or self.wanted[index] != vif.name:
                self._detach(index)
                del self.wanted[index]
                self.errors.pop(index, None)
        if not self.running:
            return
        for vif in list(interfaces.values()):
            if vif.idx in self.wanted or not self._attachable(vif):
                continue
            self.wanted[vif.idx] = vif.name
            self._attach(vif)

    @staticmethod
    def _attachable(vif: Interface) -> bool:
        if vif.type not in ATTACHABLE_TYPES or not vif.name:
            return False
        if vif.flags & C.VIF_FLAG_PMD:
            return False
        # the tables mark every physical vif MOCK_DEVICE (no NIC bound, as vtest expects);
        # only on other vifs is the flag a request to keep the vif off any device
        return vif.type == C.VIF_TYPE_PHYSICAL or not vif.flags & C.VIF_FLAG_MOCK_DEVICE

    def resync(self) -> None:
        """Check every wanted device again (after lost link events)."""
        for index, name in list(self.wanted.items()):
            if index in self.ports and device_info(name) is None:
                self._detach(index)
            elif index not in self.ports and self.running:
                vif = self.tables.interfaces.get(index)
                if vif is not None:
                    self._attach(vif)

    def retry_waiting(self) -> None:
        """Try again the vifs still waiting for their device: a link event the watcher
        lost (its socket overran, or the device came up between two looks) must not
        leave a vif waiting for good."""
        if not self.running:
            return
        for index in [i for i in self.wanted if i not in self.ports]:
            vif = self.tables.interfaces.get(index)
            if vif is not None:
                self._attach(vif)

    def link_changed(self, name: str, present: bool) -> None:
        """rtnetlink: ``name`` appeared (or changed) or disappeared."""
        for index, wanted in list(self.wanted.items()):
            if wanted != name:
                continue
            if present and index not in self.ports:
                vif = self.tables.interfaces.get(index)
                if vif is not None:
                    self._attach(vif)
            elif not present and index in self.ports:
                self._detach(index)

    def _attach(self, vif: Interface) -> None:
        info = device_info(vif.name)
        if info is None:
            vif.intf_status = WAITING
            return
        ifindex, mac = info
        if not mac:  # loopback, a TUN (IP, no Ethernet header), a tunnel device ...
            self._refused(vif, "not an Ethernet device")
            return
        try:
            port: Port
            if is_tap(vif.name):
                port = TapPort(vif.idx, vif.name, ifindex, mac, self._deliver, self._lost,
                               gso=self._offloading)  # fmt: skip
            else:
                port = PacketPort(vif.idx, vif.name, ifindex, mac, self._deliver, self._lost,
                                  gso=self._offloading, use_rings=self.use_rings)  # fmt: skip
        except OSError as e:
            self._refused(vif, str(e.strerror))
            return
        port.batch_begin = self._batch_begin
        port.batch_done = self._batch_done
        port.wants_flush = self._flush_later
        port.receive = self.pipeline.receive
        port.receive_failed = self._pipeline_failed
        self.errors.pop(vif.idx, None)
        self.ports[vif.idx] = port
        vif.os_idx = ifindex
        if not any(vif.mac) and mac:
            vif.mac = mac  # the agent normally gives it; the device's own otherwise
        vif.intf_status = ATTACHED
        port.start(self.reactor)
        _log.info("vif {idx}: attached {kind} {name} (ifindex {ifindex})", idx=vif.idx,
                  kind=port.kind, name=vif.name, ifindex=ifindex)  # fmt: skip

    def _refused(self, vif: Interface, why: str) -> None:
        """Keep the vif waiting; log each new reason once (a device may be fixed later)."""
        vif.intf_status = WAITING
        if self.errors.get(vif.idx) != why:
            self.errors[vif.idx] = why
            _log.warn("vif {idx}: cannot attach {name}: {why}", idx=vif.idx, name=vif.name,
                      why=why)  # fmt: skip

    def _detach(self, index: int) -> None:
        port = self.ports.get(index)
        if port is not None:
            port.close()  # calls _lost, which forgets it

    def _lost(self, port: Port, pending: int) -> None:
        self._dirty.discard(port)
        if self.ports.get(port.vif_index) is port:
            del self.ports[port.vif_index]
        vif = self.tables.interfaces.get(port.vif_index)
        if vif is None:
            return
        if pending:
            vif.counters["oerrors"] += pending
            self.tables.count_drop("interface_tx_discard", vif, pending)
        if port.vif_index in self.wanted:
            vif.intf_status = WAITING
            _log.info("vif {idx}: {name} detached, waiting for it", idx=vif.idx, name=port.name)

    def attached(self) -> Iterable[Port]:
        return self.ports.values()

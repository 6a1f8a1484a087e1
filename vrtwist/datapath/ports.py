"""The port layer: vifs attached to OS devices, frames in to the pipeline and out again.

A vif added over ksync whose ``vifr_name`` names an OS interface is attached to it, as
the vRouter attaches its vifs: a TAP through ``/dev/net/tun`` (``TUNSETIFF`` with
``IFF_TAP|IFF_NO_PI``, which also opens an existing persistent TAP made by libvirt,
os-vif or ``ip tuntap``), any other netdev (veth, dummy, a NIC) through an ``AF_PACKET``
socket bound to its ifindex. Each port is a non-blocking reader that drains a bounded
batch per wake-up into ``pipeline.receive``; :class:`PortManager` is the pipeline's
:class:`IFrameOutput` and keeps a bounded queue per port for when the device is full.

TAPs are opened without ``IFF_VNET_HDR``: the kernel then segments and checksums every
frame before handing it over, so no GSO super-frame can reach a device without offloads.
``AF_PACKET`` sockets use ``PACKET_VNET_HDR`` so that partial checksums and TCP GSO
super-frames a veth delivers are finished in software (:mod:`vrtwist.datapath.offload`).
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
from vrtwist.datapath import offload
from vrtwist.datapath.interfaces import IFrameOutput, IPacketPipeline
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
#: frames queued per port while its device refuses more (EAGAIN/ENOBUFS)
TX_QUEUE = 256
_MAX_FRAME = 65536 + 14 + 8

Frame = bytes | bytearray | memoryview
Deliver = Callable[[int, Frame], None]


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

    def __init__(self, vif_index: int, name: str, ifindex: int, mac: bytes,
                 deliver: Deliver, lost: Callable[[Port, int], None]) -> None:  # fmt: skip
        self.vif_index = vif_index
        self.name = name
        self.ifindex = ifindex
        self.mac = mac
        self.deliver = deliver
        #: called with (port, frames lost) when the device went away under queued frames
        self.lost = lost
        self.queue: deque[Frame] = deque()
        self.reactor: IReactorFDSet | None = None
        self.writing = False
        self.closed = False
        self.stats = {"rx": 0, "tx": 0, "queued": 0, "tx_full": 0, "rx_errors": 0}

    # -- device specifics ------------------------------------------------------
    def fileno(self) -> int:
        raise NotImplementedError

    def _read(self) -> Frame | None:
        """One frame, or None when the device has nothing more (EAGAIN)."""
        raise NotImplementedError

    def _write(self, frame: Frame) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # -- reactor side ----------------------------------------------------------
    def start(self, reactor: IReactorFDSet) -> None:
        self.reactor = reactor
        reactor.addReader(self)

    def logPrefix(self) -> str:
        return f"{self.kind}:{self.name}"

    def doRead(self) -> None:
        deliver, vif = self.deliver, self.vif_index
        for _ in range(READ_BATCH):
            try:
                frame = self._read()
            except OSError as e:
                self._gone(e)
                return None
            if frame is None:
                return None
            self.stats["rx"] += 1
            deliver(vif, frame)
            if self.closed:  # the pipeline's work detached us (vif deleted)
                return None
        return None

    def transmit(self, frame: Frame) -> bool:
        """Send now, else queue (bounded); False when the frame is dropped."""
        if self.closed:
            return False
        if self.queue:
            return self._enqueue(frame)
        try:
            self._write(frame)
        except BlockingIOError:
            return self._enqueue(frame)
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                return self._enqueue(frame)
            return False  # device down or gone: the pipeline counts the drop
        self.stats["tx"] += 1
        return True

    def _enqueue(self, frame: Frame) -> bool:
        if len(self.queue) >= TX_QUEUE:
            self.stats["tx_full"] += 1
            return False
        self.queue.append(bytes(frame) if isinstance(frame, memoryview) else frame)
        self.stats["queued"] += 1
        if not self.writing and self.reactor is not None:
            self.writing = True
            self.reactor.addWriter(self)
        return True

    def doWrite(self) -> None:
        queue = self.queue
        while queue:
            try:
                self._write(queue[0])
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    return None
                self._gone(e)
                return None
            queue.popleft()
            self.stats["tx"] += 1
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
    """A TAP opened through ``/dev/net/tun`` (``IFF_TAP|IFF_NO_PI``, no vnet header)."""

    kind = "tap"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(self.name.encode(), IFF_TAP | IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        # one receive buffer, reused: a fresh 64 KiB one per read costs more than the read
        self._buf = bytearray(_MAX_FRAME)
        self._view = memoryview(self._buf)

    def fileno(self) -> int:
        return self.fd

    def _read(self) -> Frame | None:
        try:
            n = os.readv(self.fd, [self._buf])
        except BlockingIOError:
            return None
        return self._view[:n].tobytes()

    def _write(self, frame: Frame) -> None:
        os.write(self.fd, frame)

    def _close(self) -> None:
        os.close(self.fd)


class PacketPort(Port):
    """Any other netdev through an ``AF_PACKET`` socket bound to its ifindex.

    Frames the host itself sends on the device (``PACKET_OUTGOING``, including our own
    transmits) are ignored; VLAN tags the driver stripped are put back from
    ``PACKET_AUXDATA``; ``PACKET_VNET_HDR`` gives the offload state so partial checksums
    and GSO super-frames are finished before the pipeline sees them.
    """

    kind = "packet"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            try:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:  # before Linux 4.20: filtered per frame below
                pass
            sock.bind((self.name, ETH_P_ALL))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self._vnet_zero = bytes(offload.VNET_HDR_LEN)
        self._cmsg = socket.CMSG_SPACE(_AUXDATA.size)
        # receive buffers, reused (see TapPort): the vnet header, then the frame
        self._vnet = bytearray(offload.VNET_HDR_LEN)
        self._buf = bytearray(_MAX_FRAME)
        self._view = memoryview(self._buf)
        self._pending: deque[Frame] = deque()
        self.stats.update(gso=0, csum=0)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _read(self) -> Frame | None:
        if self._pending:
            return self._pending.popleft()
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
            frame: bytes | bytearray = self._view[: n - offload.VNET_HDR_LEN].tobytes()
            for level, kind, value in ancillary:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    status, _l, _s, _m, _n, tci, tpid = _AUXDATA.unpack_from(value)
                    if status & TP_STATUS_VLAN_VALID:
                        if not status & TP_STATUS_VLAN_TPID_VALID:
                            tpid = 0x8100
                        frame = frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]
                        vnet = _shift_csum(vnet, 4)
            if vnet == self._vnet_zero:
                return frame
            try:
                frames = offload.finish(frame, vnet)
            except offload.OffloadError as e:
                self.stats["rx_errors"] += 1
                _log.debug("port {name}: {error}", name=self.name, error=str(e))
                continue
            if len(frames) > 1:
                self.stats["gso"] += 1
                self._pending.extend(frames[1:])
            else:
                self.stats["csum"] += 1
            return frames[0]

    def doRead(self) -> None:
        super().doRead()
        while self._pending and not self.closed:  # a GSO burst is delivered whole
            self.stats["rx"] += 1
            self.deliver(self.vif_index, self._pending.popleft())

    def _write(self, frame: Frame) -> None:
        self.sock.sendmsg([self._vnet_zero, frame])

    def _close(self) -> None:
        self.sock.close()


def _shift_csum(vnet: bytes, by: int) -> bytes:
    flags, gso, hdr_len, size, start, off = offload.VNET_HDR.unpack(vnet)
    if flags & offload.F_NEEDS_CSUM or gso:
        start += by
        hdr_len += by if hdr_len else 0
    return offload.VNET_HDR.pack(flags, gso, hdr_len, size, start, off)


@implementer(IPacketPipeline)
class _NoPipeline:
    def receive(self, vif_index: int, frame: Frame) -> None:
        pass


@implementer(IFrameOutput)
class PortManager:
    """Keeps every attachable vif's device attached: the pipeline's frame output.

    ``sync()`` reconciles with the interface table (after each vif ADD/DEL);
    ``link_changed`` follows rtnetlink (a device appearing, disappearing, coming back).
    A vif whose device does not exist yet is kept WAITING; deleting a vif closes its
    port and leaves the device as it was.
    """

    def __init__(self, tables: Tables, reactor: IReactorFDSet,
                 pipeline: IPacketPipeline | None = None) -> None:  # fmt: skip
        self.tables = tables
        self.reactor = reactor
        self.pipeline: IPacketPipeline = _NoPipeline() if pipeline is None else pipeline
        self.ports: dict[int, Port] = {}
        #: vif index -> the device name it waits for / is attached to
        self.wanted: dict[int, str] = {}
        self.running = False
        self.errors: dict[int, str] = {}
        #: frames whose pipeline.receive raised (each is dropped, the port kept)
        self.pipeline_errors = 0

    # -- IFrameOutput -----------------------------------------------------------
    def transmit(self, vif_index: int, frame: Frame) -> bool:
        port = self.ports.get(vif_index)
        if port is None:
            return False
        return port.transmit(frame)

    def _deliver(self, vif_index: int, frame: Frame) -> None:
        try:
            self.pipeline.receive(vif_index, frame)
        except Exception:  # noqa: BLE001 - last-resort guard, counted and logged below
            # a pipeline bug must cost one frame, not the port (a port closed by the
            # reactor would wait for a link event that never comes)
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
        kind = TapPort if is_tap(vif.name) else PacketPort
        try:
            port = kind(vif.idx, vif.name, ifindex, mac, self._deliver, self._lost)
        except OSError as e:
            self._refused(vif, str(e.strerror))
            return
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

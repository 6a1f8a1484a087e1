"""``PACKET_MMAP`` rings (``TPACKET_V2``) for an ``AF_PACKET`` port: no system call per frame.

The kernel writes received frames into an rx ring shared with us and sends what we put
in a tx ring on one ``send(b"")``; each slot starts with a ``struct tpacket2_hdr`` whose
``tp_status`` says who owns it. ``TPACKET_V2`` because ``TPACKET_V3`` refuses
``PACKET_VNET_HDR``. Slots are 2 KiB: a frame larger than a slot (a GSO super-frame)
is marked ``TP_STATUS_COPY`` in the rx ring and read whole from the socket
(``PACKET_COPY_THRESH``), and is written with ``sendmsg`` on a second socket (on the
ring's own socket ``sendmsg`` only flushes the tx ring). The rings are the bounds: a full rx ring makes the kernel drop (read back from
``PACKET_STATISTICS``), a full tx ring makes the port queue. See the kernel's
``Documentation/networking/packet_mmap.rst``.
"""

from __future__ import annotations

import mmap
import socket
import struct

__all__ = ["FRAME_SIZE", "RX_FRAMES", "TX_FRAMES", "Rings"]

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_COPY_THRESH = 7
PACKET_VERSION = 10
PACKET_TX_RING = 13
TPACKET_V2 = 1
# rx tp_status
TP_STATUS_USER = 0x1
TP_STATUS_COPY = 0x2
TP_STATUS_LOSING = 0x4
# tx tp_status
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 0x1
TP_STATUS_WRONG_FORMAT = 0x4

#: ``struct tpacket2_hdr``: status, len, snaplen, mac, net, sec, nsec, vlan_tci, vlan_tpid
HDR = struct.Struct("=IIIHHIIHH4x")
_U32 = struct.Struct("=I")
_LENS = struct.Struct("=II")
_STATS = struct.Struct("=II")  # struct tpacket_stats: packets, drops
#: where a tx slot's data starts (TPACKET2_HDRLEN less the sockaddr_ll)
TX_DATA = 32
SO_RCVBUFFORCE = 33
#: receive buffer for the frames too large for a slot (about 64 GSO super-frames)
COPY_BUFFER = 1 << 22
FRAME_SIZE = 2048
BLOCK_SIZE = 4096
RX_FRAMES = 256
TX_FRAMES = 256


class Rings:
    """An rx and a tx ring mapped over one ``AF_PACKET`` socket (set up before bind).

    ``PACKET_VNET_HDR`` must already be set: each frame then comes and goes with its
    ``virtio_net_hdr`` in front of it. Raises ``OSError`` when the kernel refuses
    (the port then keeps ``recvmsg``/``sendmsg``).
    """

    def __init__(self, sock: socket.socket, vnet_len: int) -> None:
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        sock.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
        # the copies of frames larger than a slot wait in the socket's receive buffer,
        # each counted at its 64 KiB: room for a burst of them, as root
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, COPY_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, COPY_BUFFER)
        for option, frames in ((PACKET_RX_RING, RX_FRAMES), (PACKET_TX_RING, TX_FRAMES)):
            blocks = frames * FRAME_SIZE // BLOCK_SIZE
            req = struct.pack("=IIII", BLOCK_SIZE, blocks, FRAME_SIZE, frames)
            sock.setsockopt(SOL_PACKET, option, req)
        self.sock = sock
        self.vnet_len = vnet_len
        rx_bytes = RX_FRAMES * FRAME_SIZE
        self.map = mmap.mmap(sock.fileno(), rx_bytes + TX_FRAMES * FRAME_SIZE,
                             mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
        self.rx = 0  # next rx slot's offset
        self.rx_end = rx_bytes
        self.tx_start = rx_bytes
        self.tx = rx_bytes  # next tx slot's offset
        self.tx_end = rx_bytes + TX_FRAMES * FRAME_SIZE
        #: frames put in the tx ring since the last flush
        self.tx_pending = 0
        #: largest frame (with its vnet header) a tx slot takes
        self.tx_room = FRAME_SIZE - TX_DATA

    def next_rx(self) -> tuple[int, int, int, int, int, int] | None:
        """(slot offset, status, tp_len, snaplen, mac offset, vlan tci|tpid<<16) of the
        next frame the kernel handed over, or None when the ring is empty."""
        off = self.rx
        m = self.map
        status, length, snaplen, mac, _net, _s, _ns, tci, tpid = HDR.unpack_from(m, off)
        if not status & TP_STATUS_USER:
            return None
        return off, status, length, snaplen, mac, tci | tpid << 16

    def release_rx(self, off: int) -> None:
        """Give the slot back to the kernel and move on."""
        _U32.pack_into(self.map, off, 0)
        off += FRAME_SIZE
        self.rx = 0 if off == self.rx_end else off

    def put(self, vnet: bytes, frame: bytes | bytearray | memoryview) -> bool:
        """Place one frame in the next tx slot; False when the ring is full."""
        m = self.map
        off = self.tx
        if _U32.unpack_from(m, off)[0] & ~TP_STATUS_WRONG_FORMAT:
            return False  # still queued or being sent by the kernel
        at = off + TX_DATA
        n = len(frame)
        vl = self.vnet_len
        m[at : at + vl] = vnet
        m[at + vl : at + vl + n] = frame
        _LENS.pack_into(m, off + 4, n + vl, n + vl)
        _U32.pack_into(m, off, TP_STATUS_SEND_REQUEST)
        off += FRAME_SIZE
        self.tx = self.tx_start if off == self.tx_end else off
        self.tx_pending += 1
        return True

    def flush(self) -> None:
        """Ask the kernel to send every frame put since the last flush (one system call)."""
        if self.tx_pending:
            self.tx_pending = 0
            self.sock.send(b"", socket.MSG_DONTWAIT)

    def drops(self) -> int:
        """Frames the kernel dropped for a full rx ring since the last call."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        return int(_STATS.unpack(raw)[1])

    def close(self) -> None:
        self.map.close()

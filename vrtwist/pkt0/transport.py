"""pkt0 over unix datagrams, as the DPDK vRouter carries it: one packet per datagram.

The datapath binds ``<run-dir>/dpdk_pkt0`` and sends to ``<run-dir>/agent_pkt0``; the
agent binds ``agent_pkt0`` and sends to ``dpdk_pkt0``. Both ends are the same small
reader: a non-blocking socket registered with the reactor that reads a bounded batch per
wake-up until ``EAGAIN``. The kernel keeps only a handful of datagrams queued per unix
socket, so each end connects its socket to the peer's path and keeps up to
:data:`QUEUE_MAX` frames of its own while the peer catches up; beyond that, and while no
peer is bound, frames are counted and dropped, which is what bounds memory when one side
floods the other. What the bytes mean is the codec's business
(:mod:`vrtwist.pkt0.codec`) and the endpoints' (:mod:`vrtwist.pkt0.endpoints`), so another
packet transport (the Windows ``\\\\.\\vrouterPkt0`` device, one packet per read and
write) plugs in behind :class:`IPkt0Transport` without touching either.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger as _TwistedLogger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from vrtwist.access import SocketAccess, bind_unix
from vrtwist.logfields import Logger

__all__ = [
    "AGENT_SOCKET",
    "DATAPATH_SOCKET",
    "MAX_FRAME",
    "RECOMMENDED_DGRAM_QLEN",
    "IPkt0Receiver",
    "IPkt0Transport",
    "Pkt0Counters",
    "UnixDatagramTransport",
    "bind_datagram",
    "dgram_qlen",
]

#: socket names in the run directory (the DPDK vRouter's ``VR_PKT0_UNIX_NAME`` and the
#: agent's side of it)
DATAPATH_SOCKET = "dpdk_pkt0"
AGENT_SOCKET = "agent_pkt0"

#: the agent reads pkt0 with a 9060-byte buffer; 44 bytes of headers ride on top of a
#: jumbo frame, so accept a little more than that and count anything longer as oversize
MAX_FRAME = 9060 + 44 + 64

#: frames one end keeps while the peer's queue is full; beyond, they are counted and dropped
QUEUE_MAX = 1024
#: seconds between attempts to reach a peer that is not bound
RECONNECT = 0.2

#: ``net.unix.max_dgram_qlen`` as systemd sets it on the hosts it boots (the kernel's own
#: default is 10). The kernel queues at most that many datagrams per unix socket: with 10,
#: a burst of traps waits in the datapath's own queue and the two ends trade a handful per
#: wake-up, which costs 10-20 % more CPU per flow setup (docs/benchmarks.md).
RECOMMENDED_DGRAM_QLEN = 512
_QLEN_PATH = "/proc/sys/net/unix/max_dgram_qlen"
#: whether the low-queue warning was logged by this process already
_qlen_warned = False

_SOCKET_BUFFER = 4 * 1024 * 1024
_DROP_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})
_NO_PEER_ERRNOS = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.ENOTCONN})


class IPkt0Receiver(Interface):
    """Takes each packet a pkt0 transport reads."""

    def frame_received(frame: bytes) -> None:
        """One whole pkt0 frame (outer Ethernet, agent_hdr, inner frame)."""


class IPkt0Transport(Interface):
    """Carries whole pkt0 frames, one per send and one per receive."""

    def send(frame: bytes) -> bool:
        """Send one frame; False when it was dropped (peer full or absent), counted."""


@dataclass
class Pkt0Counters:
    """What one end of the channel did; the datapath and agent export these."""

    sent: int = 0
    received: int = 0
    #: the peer's queue was full and so was ours (:data:`QUEUE_MAX` frames)
    send_dropped: int = 0
    #: nobody bound at the peer's path (the other side is not running)
    no_peer: int = 0
    #: a received datagram longer than :data:`MAX_FRAME` (cut by the kernel, dropped)
    oversize: int = 0


def bind_datagram(path: str, mode: int = 0o600, gid: int | None = None) -> socket.socket:
    """A non-blocking unix datagram socket bound at ``path`` with exactly ``mode``.

    Bound through :func:`vrtwist.access.bind_unix`, so the file never has the umask's
    mode, and ``gid`` (``--socket-group``) gets the group bits. A stale socket file at
    ``path`` (a previous run that was killed) is replaced; anything else there is refused.
    """
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        bind_unix(sock, path, mode, gid)
    except BaseException:
        sock.close()
        raise
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        except OSError:  # pragma: no cover - limited by net.core.*mem_max; keep the default
            pass
    return sock


def dgram_qlen(path: str = _QLEN_PATH) -> int | None:
    """``net.unix.max_dgram_qlen`` of this process's network namespace (None: unknown)."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _warn_low_qlen(log: _TwistedLogger, path: str = _QLEN_PATH) -> bool:
    """Log once per process when the kernel queues fewer pkt0 datagrams than systemd
    hosts do; True when this call logged."""
    global _qlen_warned
    qlen = dgram_qlen(path)
    if _qlen_warned or qlen is None or qlen >= RECOMMENDED_DGRAM_QLEN:
        return False
    _qlen_warned = True
    log.warn(
        "pkt0: net.unix.max_dgram_qlen is {qlen} (systemd hosts set {recommended}): traps "
        "queue in the datapath and flow setup costs more CPU; "
        "sysctl -w net.unix.max_dgram_qlen={recommended}",
        qlen=qlen,
        recommended=RECOMMENDED_DGRAM_QLEN,
    )
    return True


@implementer(IReadDescriptor, IWriteDescriptor, IPkt0Transport)
class UnixDatagramTransport:
    """One end of pkt0: bound at ``local_path``, sending to ``peer_path``."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        local_path: str,
        peer_path: str,
        receiver: IPkt0Receiver,
        access: SocketAccess | None = None,
        batch: int = 256,
        queue_max: int = QUEUE_MAX,
    ) -> None:
        """``access``: who may use the bound socket file (the owner only by default)."""
        self._reactor = reactor
        self.local_path = local_path
        self.peer_path = peer_path
        self._receiver = receiver
        self._access = access if access is not None else SocketAccess()
        self._batch = batch
        self._buffer = bytearray(MAX_FRAME + 1)
        self._sock: socket.socket | None = None
        #: (device, inode) of the socket file we bound, so stop never removes a newer one
        self._identity: tuple[int, int] | None = None
        self._connected = False
        self._retry_at = 0.0
        #: frames waiting for room in the peer's queue (the kernel keeps only a few
        #: datagrams per unix socket: net.unix.max_dgram_qlen, 10 by default)
        self._queue: deque[bytes] = deque()
        self._queue_max = queue_max
        self._writing = False
        self.counters = Pkt0Counters()

    def start(self) -> None:
        """Bind and start reading."""
        access = self._access
        self._sock = bind_datagram(self.local_path, access.mode, access.gid)
        st = os.stat(self.local_path)
        self._identity = (st.st_dev, st.st_ino)
        _warn_low_qlen(self._log)
        self._reactor.addReader(self)

    def stop(self) -> None:
        """Stop reading, close and remove the socket file (only if it is still ours)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._reactor.removeReader(self)
        if self._writing:
            self._writing = False
            self._reactor.removeWriter(self)
        self.counters.send_dropped += len(self._queue)
        self._queue.clear()
        self._connected = False
        try:
            st = os.stat(self.local_path)
            mine = (st.st_dev, st.st_ino) == self._identity
        except OSError:
            mine = False
        sock.close()
        if mine:
            try:
                os.unlink(self.local_path)
            except FileNotFoundError:  # pragma: no cover - raced with an operator
                pass

    # -- IPkt0Transport

    def _peer(self) -> bool:
        """Connect the socket to the peer's path (again after the peer restarted).

        A connected datagram socket polls writable only when the peer's queue has room,
        which is what lets a full peer be waited for instead of spun on. An absent peer is
        tried again at most every :data:`RECONNECT` seconds.
        """
        if self._connected:
            return True
        sock = self._sock
        now = self._reactor.seconds()
        if sock is None or now < self._retry_at:
            return False
        try:
            sock.connect(self.peer_path)
        except OSError:
            self._retry_at = now + RECONNECT
            return False
        self._connected = True
        return True

    def send(self, frame: bytes) -> bool:
        """Send one frame, or queue it (bounded) while the peer's queue is full."""
        sock = self._sock
        if sock is None or not self._peer():
            self.counters.no_peer += 1
            return False
        if self._queue:
            return self._enqueue(frame)  # keep the order
        try:
            sock.send(frame)
        except OSError as e:
            if e.errno in _DROP_ERRNOS:
                return self._enqueue(frame)
            if e.errno in _NO_PEER_ERRNOS:
                self._connected = False
                self.counters.no_peer += 1
            elif e.errno == errno.EMSGSIZE:
                self.counters.oversize += 1
            else:
                raise
            return False
        self.counters.sent += 1
        return True

    def _enqueue(self, frame: bytes) -> bool:
        if len(self._queue) >= self._queue_max:
            self.counters.send_dropped += 1
            return False
        self._queue.append(frame)
        if not self._writing:
            self._writing = True
            self._reactor.addWriter(self)
        return True

    # -- IWriteDescriptor

    def doWrite(self) -> None:
        """Flush queued frames until the peer's queue is full again."""
        sock, queue, counters = self._sock, self._queue, self.counters
        while sock is not None and queue:
            try:
                sock.send(queue[0])
            except OSError as e:
                if e.errno in _DROP_ERRNOS:
                    return
                if e.errno in _NO_PEER_ERRNOS:
                    self._connected = False
                    counters.no_peer += len(queue)
                    queue.clear()
                    break
                if e.errno != errno.EMSGSIZE:
                    raise
                counters.oversize += 1
            else:
                counters.sent += 1
            queue.popleft()
        if self._writing:
            self._writing = False
            self._reactor.removeWriter(self)

    # -- IReadDescriptor

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def doRead(self) -> None:
        """Read up to ``batch`` datagrams, stopping early at ``EAGAIN``."""
        sock = self._sock
        buf = self._buffer
        view = memoryview(buf)
        receiver = self._receiver
        counters = self.counters
        for _ in range(self._batch):
            if sock is None:
                return
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            if n > MAX_FRAME:
                counters.oversize += 1
                continue
            counters.received += 1
            receiver.frame_received(bytes(view[:n]))
            sock = self._sock  # the receiver may have stopped us

    def connectionLost(self, reason: Failure) -> None:
        self.stop()

    def logPrefix(self) -> str:
        return f"pkt0 {os.path.basename(self.local_path)}"

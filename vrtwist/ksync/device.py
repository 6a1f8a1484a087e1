"""The ksync channel with the Windows device's semantics, and a Linux transport for it.

On Windows the agent and the utilities open ``\\\\.\\vrouterKsync`` (a device, not a named
pipe) and use ``WriteFile``/``ReadFile`` on the handle. The driver gives each open handle
its own session: a 4,096-byte reassembly buffer fed by writes (a netlink message may be
split over writes, one write may carry several) and a queue of responses, one popped per
read; a read of an empty queue completes at once with 0 bytes; a read buffer smaller than
the next response fails and keeps it; a message over 4,096 bytes resets the buffer and
fails the write; ``DeviceIoControl`` is refused.

:class:`KsyncDevice` is that session layer, sans-IO, in front of the same dispatcher and
reply framing as the socket server (``vrtwist.ksync.server``): ``open()`` gives an
independent :class:`KsyncDeviceHandle`. :class:`DeviceTransportProtocol` carries handles
over a Unix stream socket on Linux (one connection = one open handle; each operation a
small request, see ``docs/windows.md``), and :class:`DeviceClient` is its blocking client
with the file-like ``write``/``read`` of a Windows handle. A Windows transport plugs the
same ``IKsyncDeviceHandle`` onto ``CreateFile``/``ReadFile``/``WriteFile``.
"""

from __future__ import annotations

import socket
import struct
from collections import deque

from twisted.internet.protocol import Factory, Protocol
from zope.interface import Interface, implementer

from vrtwist.ksync.interfaces import IKsyncDispatcher
from vrtwist.ksync.netlink import HEADERS_LEN, NetlinkFrameError, parse_message
from vrtwist.ksync.server import STYLE_LINUX, KsyncServerProtocol, frame_replies
from vrtwist.logfields import Logger

__all__ = [
    "KSYNC_MAX_BUFFER_SIZE",
    "STATUS_BUFFER_TOO_SMALL",
    "STATUS_INVALID_DEVICE_REQUEST",
    "STATUS_INVALID_PARAMETER",
    "DeviceClient",
    "DeviceError",
    "DeviceTransportFactory",
    "DeviceTransportProtocol",
    "IKsyncDeviceHandle",
    "KsyncDevice",
    "KsyncDeviceHandle",
]

#: The driver's per-handle buffer: the longest netlink message a handle takes or returns.
KSYNC_MAX_BUFFER_SIZE = 4096
_NLMSGHDR = 16
_NLMSG_LEN = struct.Struct("=I")

#: NTSTATUS values the device completes failed requests with.
STATUS_BUFFER_TOO_SMALL = 0xC0000023
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_INVALID_DEVICE_REQUEST = 0xC0000010


class DeviceError(OSError):
    """A device request failed; ``status`` is the NTSTATUS the driver completes it with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class IKsyncDeviceHandle(Interface):
    """One open handle of the ksync device (Windows: a ``CreateFile`` handle)."""

    def write(data: bytes) -> int:
        """WriteFile: append ``data``; every message it completes is processed at once.
        Returns ``len(data)``; DeviceError for a message longer than 4,096 bytes."""

    def read(size: int) -> bytes:
        """ReadFile: the next queued response (one netlink message), or b"" at once when
        there is none; DeviceError(STATUS_BUFFER_TOO_SMALL) keeps it for the next read."""

    def ioctl(code: int) -> bytes:
        """DeviceIoControl: always refused on the ksync device."""

    def close() -> None:
        """CloseHandle: the pending responses are dropped."""


def split_messages(data: bytes) -> list[bytes]:
    """Netlink messages back to back, one bytes object each (by ``nlmsg_len``)."""
    out = []
    o = 0
    while o < len(data):
        (n,) = _NLMSG_LEN.unpack_from(data, o)
        if n < _NLMSGHDR or o + n > len(data):
            raise NetlinkFrameError(f"bad nlmsg_len {n} at offset {o}")
        out.append(data[o:o + n])
        o += n
    return out


@implementer(IKsyncDeviceHandle)
class KsyncDeviceHandle:
    """One handle: its own reassembly buffer and response queue (``KSYNC_DEVICE_CONTEXT``)."""

    def __init__(self, session: KsyncServerProtocol, style: str) -> None:
        self._session = session
        self._style = style
        self._buf = bytearray()
        self.responses: deque[bytes] = deque()
        self.closed = False

    def write(self, data: bytes) -> int:
        self._check_open()
        buf = self._buf
        view = memoryview(data)
        while view:
            want = _NLMSGHDR if len(buf) < _NLMSGHDR else _NLMSG_LEN.unpack_from(buf)[0]
            if len(buf) >= _NLMSGHDR and not _NLMSGHDR <= want <= KSYNC_MAX_BUFFER_SIZE:
                del buf[:]
                raise DeviceError(STATUS_INVALID_PARAMETER,
                                  f"nlmsg_len {want} outside 16..{KSYNC_MAX_BUFFER_SIZE}")
            take = want - len(buf)
            buf += view[:take]
            view = view[take:]
            if len(buf) >= _NLMSGHDR and len(buf) == _NLMSG_LEN.unpack_from(buf)[0]:
                frame = bytes(buf)
                del buf[:]
                self._process(frame)
        return len(data)

    def _process(self, frame: bytes) -> None:
        if len(frame) < HEADERS_LEN:
            raise DeviceError(STATUS_INVALID_PARAMETER, "message shorter than its headers")
        msg = parse_message(frame)
        replies = self._session.process(frame[HEADERS_LEN:])
        self.responses.extend(split_messages(frame_replies(replies, msg, self._style)))

    def read(self, size: int = KSYNC_MAX_BUFFER_SIZE) -> bytes:
        self._check_open()
        if not self.responses:
            return b""
        head = self.responses[0]
        if size < len(head):
            raise DeviceError(STATUS_BUFFER_TOO_SMALL,
                              f"read buffer of {size} bytes for a {len(head)}-byte response")
        return self.responses.popleft()

    def ioctl(self, code: int) -> bytes:
        raise DeviceError(STATUS_INVALID_DEVICE_REQUEST, "the ksync device takes no ioctl")

    def close(self) -> None:
        self.closed = True
        self.responses.clear()
        del self._buf[:]

    def _check_open(self) -> None:
        if self.closed:
            raise DeviceError(STATUS_INVALID_PARAMETER, "handle is closed")


class KsyncDevice:
    """``\\\\.\\vrouterKsync``: every ``open()`` is an independent session."""

    def __init__(self, dispatcher: IKsyncDispatcher, style: str = STYLE_LINUX) -> None:
        self.dispatcher = dispatcher
        self.style = style
        self.handles: list[KsyncDeviceHandle] = []

    def open(self) -> KsyncDeviceHandle:
        handle = KsyncDeviceHandle(KsyncServerProtocol(self.dispatcher, self.style), self.style)
        self.handles = [h for h in self.handles if not h.closed] + [handle]
        return handle


# -- the Linux transport: one Unix stream connection per open handle -----------------------

#: Operation header: op (``W`` write, ``R`` read, ``I`` ioctl), body length.
_OP = struct.Struct("!cI")
#: Answer header: NTSTATUS (0 on success), body length.
_ANSWER = struct.Struct("!II")
#: Largest operation body accepted (a write of several messages at once).
MAX_OP_BODY = 64 * 1024


class DeviceTransportProtocol(Protocol):
    """Serves one open handle: ``W``+bytes is a WriteFile (answer: the count written),
    ``R``+u32 size a ReadFile (answer: one response or nothing), ``I``+u32 code an
    ioctl. The answer of each carries the NTSTATUS the device completes it with."""

    _log = Logger()

    def __init__(self, device: KsyncDevice) -> None:
        self.device = device
        self.handle: KsyncDeviceHandle | None = None
        self._buf = b""

    def connectionMade(self) -> None:
        self.handle = self.device.open()

    def connectionLost(self, reason: object = None) -> None:
        if self.handle is not None:
            self.handle.close()

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= _OP.size:
            op, n = _OP.unpack_from(self._buf)
            if n > MAX_OP_BODY or op not in (b"W", b"R", b"I"):
                self._log.warn("ksync device transport: bad operation {op!r}/{n}", op=op, n=n)
                assert self.transport is not None
                self.transport.loseConnection()
                self._buf = b""
                return
            if len(self._buf) < _OP.size + n:
                return
            body = self._buf[_OP.size:_OP.size + n]
            self._buf = self._buf[_OP.size + n:]
            self._answer(op, body)

    def _answer(self, op: bytes, body: bytes) -> None:
        assert self.handle is not None and self.transport is not None
        status, out = 0, b""
        try:
            if op == b"W":
                out = struct.pack("!I", self.handle.write(body))
            elif op == b"R":
                out = self.handle.read(struct.unpack("!I", body)[0] if len(body) == 4 else 0)
            else:
                self.handle.ioctl(struct.unpack("!I", body)[0] if len(body) == 4 else 0)
        except DeviceError as e:
            status = e.status
        self.transport.write(_ANSWER.pack(status, len(out)) + out)


class DeviceTransportFactory(Factory):
    def __init__(self, device: KsyncDevice) -> None:
        self.device = device

    def buildProtocol(self, addr: object) -> DeviceTransportProtocol:
        return DeviceTransportProtocol(self.device)


@implementer(IKsyncDeviceHandle)
class DeviceClient:
    """A blocking open handle over the Linux transport (what ``CreateFile`` gives on
    Windows): for utilities and tests."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(path)

    def _call(self, op: bytes, body: bytes) -> bytes:
        self._sock.sendall(_OP.pack(op, len(body)) + body)
        status, n = _ANSWER.unpack(self._recv(_ANSWER.size))
        data = self._recv(n)
        if status:
            raise DeviceError(status, "device request failed with NTSTATUS 0x%08X" % status)
        return data

    def _recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self._sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("ksync device transport closed")
            out += chunk
        return out

    def write(self, data: bytes) -> int:
        result: int = struct.unpack("!I", self._call(b"W", data))[0]
        return result

    def read(self, size: int = KSYNC_MAX_BUFFER_SIZE) -> bytes:
        return self._call(b"R", struct.pack("!I", size))

    def ioctl(self, code: int) -> bytes:
        return self._call(b"I", struct.pack("!I", code))

    def close(self) -> None:
        self._sock.close()

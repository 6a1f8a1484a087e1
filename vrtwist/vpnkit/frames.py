"""Sans-IO codec of the vpnkit multiplexer protocol (moby/vpnkit ``libproxy``).

Bytes in, events out; frames in, bytes out.  No Twisted, no clocks, no sockets, so the
same code serves the Twisted multiplexer, the tests and the benchmarks.  Every integer is
little-endian; every length is checked before it is trusted.  Data payloads are handed
out *as they arrive* (``Payload`` events slicing the caller's buffer) instead of being
reassembled, so a 64 KiB frame split over two reads costs no extra copy and the decoder
never holds more than one frame header.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TypeAlias

__all__ = [
    "HANDSHAKE",
    "MAGIC",
    "MAX_UDP_PAYLOAD",
    "BadOpen",
    "Close",
    "Command",
    "Connection",
    "Data",
    "DataHeader",
    "Destination",
    "FrameDecoder",
    "FrameError",
    "HandshakeDecoder",
    "HandshakeError",
    "Open",
    "Payload",
    "Proto",
    "Shutdown",
    "UDPDecoder",
    "UDPRecord",
    "UDPRecordError",
    "Window",
    "encode_close",
    "encode_data_header",
    "encode_frame",
    "encode_handshake",
    "encode_open",
    "encode_shutdown",
    "encode_udp_record",
    "encode_window",
    "parse_frames",
]

#: The 52-byte preamble both ends write right after the stream connects (PR #487).
MAGIC = b"https://github.com/moby/vpnkit multiplexer protocol\n"
assert len(MAGIC) == 52
#: What Go sends: the magic and an empty payload (u16 length 0), 54 bytes.
HANDSHAKE = MAGIC + b"\x00\x00"

#: Largest UDP datagram a Go reader accepts (``UDPBufSize``); longer crashes it.
MAX_UDP_PAYLOAD = 65507

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HDR = struct.Struct("<HBI")  # hdrlen, command, id
_DATA = struct.Struct("<HBII")  # hdrlen, command, id, payloadlen
_WINDOW = struct.Struct("<HBIQ")  # hdrlen, command, id, seq
_CLOSE_LEN = 7
_DATA_LEN = 11
_WINDOW_LEN = 15
_OPEN_MIN = 8 + 1 + 2  # header + connection + proto + shortest destination length field


class Command(IntEnum):
    OPEN = 1
    CLOSE = 2
    SHUTDOWN = 3
    DATA = 4
    WINDOW = 5


class Connection(IntEnum):
    DEDICATED = 1
    MULTIPLEXED = 2


class Proto(IntEnum):
    TCP = 1
    UDP = 2
    UNIX = 3


IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


class FrameError(ValueError):
    """The link carried bytes that are not a frame; the stream cannot be resynchronised."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at link byte {offset})")
        self.reason = message
        self.offset = offset


class HandshakeError(FrameError):
    """The peer's preamble is not the vpnkit multiplexer magic."""


class UDPRecordError(ValueError):
    """A UDP record inside a channel is malformed; only that channel is affected."""


@dataclass(frozen=True, slots=True)
class Destination:
    """Where the accepting side should connect: TCP/UDP ``ip:port`` or a Unix path.

    ``ip_len`` remembers whether the address travelled as 4 bytes or as 16 (Go sends
    IPv4 as v4-mapped IPv6 when it came from JSON); ``ip`` is always the usable address,
    i.e. ``::ffff:a.b.c.d`` is mapped back to ``a.b.c.d``.
    """

    proto: Proto
    ip: IPAddress | None = None
    port: int = 0
    path: str | None = None
    ip_len: int = 0

    def __post_init__(self) -> None:
        if self.proto == Proto.UNIX:
            if self.path is None:
                raise ValueError("a unix destination needs a path")
            return
        if self.ip is None:
            raise ValueError("a tcp/udp destination needs an ip")
        if self.ip.version == 6 and self.ip.ipv4_mapped is not None:
            object.__setattr__(self, "ip", self.ip.ipv4_mapped)
            object.__setattr__(self, "ip_len", 16)
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} out of range")
        if self.ip_len == 0:
            object.__setattr__(self, "ip_len", 4 if self.ip.version == 4 else 16)
        elif self.ip_len not in (4, 16) or (self.ip_len == 4 and self.ip.version == 6):
            raise ValueError(f"ip_len {self.ip_len} cannot carry {self.ip}")

    @classmethod
    def tcp(cls, ip: str, port: int, mapped: bool = False) -> Destination:
        addr = ipaddress.ip_address(ip)
        return cls(Proto.TCP, addr, port, ip_len=16 if mapped else 0)

    @classmethod
    def udp(cls, ip: str, port: int, mapped: bool = False) -> Destination:
        addr = ipaddress.ip_address(ip)
        return cls(Proto.UDP, addr, port, ip_len=16 if mapped else 0)

    @classmethod
    def unix(cls, path: str) -> Destination:
        return cls(Proto.UNIX, path=path)

    def encode(self) -> bytes:
        if self.proto == Proto.UNIX:
            assert self.path is not None
            raw = self.path.encode("utf-8")
            if len(raw) > 0xFFFF:
                raise ValueError("unix path too long")
            return bytes([self.proto]) + _U16.pack(len(raw)) + raw
        assert self.ip is not None
        if self.ip_len == 16 and self.ip.version == 4:
            packed = b"\x00" * 10 + b"\xff\xff" + self.ip.packed
        else:
            packed = self.ip.packed
        return bytes([self.proto]) + _U16.pack(len(packed)) + packed + _U16.pack(self.port)

    def __str__(self) -> str:
        if self.proto == Proto.UNIX:
            return f"unix:{self.path}"
        host = f"[{self.ip}]" if self.ip is not None and self.ip.version == 6 else str(self.ip)
        return f"{self.proto.name.lower()}:{host}:{self.port}"


def _decode_destination(buf: bytes, start: int, end: int, link_offset: int) -> Destination:
    """Parse a Destination that must fit in ``buf[start:end]``; raises ValueError."""
    if end - start < 3:
        raise ValueError("destination truncated")
    proto = buf[start]
    (length,) = _U16.unpack_from(buf, start + 1)
    pos = start + 3
    if proto == Proto.UNIX:
        if pos + length > end:
            raise ValueError(f"unix path length {length} overruns the header")
        try:
            path = bytes(buf[pos : pos + length]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"unix path is not utf-8: {e}") from None
        return Destination(Proto.UNIX, path=path)
    if proto not in (Proto.TCP, Proto.UDP):
        raise ValueError(f"unknown destination protocol {proto}")
    if length not in (4, 16):
        raise ValueError(f"ip length {length} is neither 4 nor 16")
    if pos + length + 2 > end:
        raise ValueError(f"ip length {length} overruns the header")
    raw = bytes(buf[pos : pos + length])
    addr: IPAddress
    if length == 4:
        addr = ipaddress.IPv4Address(raw)
    else:
        v6 = ipaddress.IPv6Address(raw)
        addr = v6.ipv4_mapped or v6
    (port,) = _U16.unpack_from(buf, pos + length)
    return Destination(Proto(proto), addr, port, ip_len=length)


# Frames -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Open:
    id: int
    destination: Destination
    connection: Connection = Connection.MULTIPLEXED


@dataclass(frozen=True, slots=True)
class BadOpen:
    """An Open whose header was well delimited but whose content we cannot honour.

    The link stays in sync (hdrlen tells us where the header ends), so only this
    channel is refused: unknown destination protocol, bad ip length, Dedicated.
    """

    id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Close:
    id: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    id: int


@dataclass(frozen=True, slots=True)
class Window:
    id: int
    seq: int


@dataclass(frozen=True, slots=True)
class Data:
    """A whole Data frame (used for encoding and by :func:`parse_frames`)."""

    id: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DataHeader:
    """A Data frame header: ``length`` payload bytes follow as ``Payload`` events."""

    id: int
    length: int


@dataclass(frozen=True, slots=True)
class Payload:
    """A piece of the current Data frame's payload (possibly the whole of it).

    ``data`` is the caller's bytes object or a read-only ``memoryview`` slice of it (no
    copy); ``bytes(data)`` when a real bytes object is needed.
    """

    id: int
    data: bytes | memoryview = field(repr=False)


Frame: TypeAlias = Open | Close | Shutdown | Window | Data
Event: TypeAlias = Open | BadOpen | Close | Shutdown | Window | DataHeader | Payload


def encode_open(
    id: int, destination: Destination, connection: int = Connection.MULTIPLEXED
) -> bytes:
    dest = destination.encode()
    return _HDR.pack(8 + len(dest), Command.OPEN, id) + bytes([connection]) + dest


def encode_close(id: int) -> bytes:
    return _HDR.pack(_CLOSE_LEN, Command.CLOSE, id)


def encode_shutdown(id: int) -> bytes:
    return _HDR.pack(_CLOSE_LEN, Command.SHUTDOWN, id)


def encode_window(id: int, seq: int) -> bytes:
    return _WINDOW.pack(_WINDOW_LEN, Command.WINDOW, id, seq)


def encode_data_header(id: int, length: int) -> bytes:
    """The 11-byte header of a Data frame; the caller writes the payload after it."""
    return _DATA.pack(_DATA_LEN, Command.DATA, id, length)


def encode_frame(frame: Frame) -> bytes:
    """Canonical bytes of one frame (hdrlen always the canonical value)."""
    if isinstance(frame, Data):
        return encode_data_header(frame.id, len(frame.payload)) + frame.payload
    if isinstance(frame, Window):
        return encode_window(frame.id, frame.seq)
    if isinstance(frame, Close):
        return encode_close(frame.id)
    if isinstance(frame, Shutdown):
        return encode_shutdown(frame.id)
    if isinstance(frame, Open):
        return encode_open(frame.id, frame.destination, frame.connection)
    raise TypeError(f"not a frame: {frame!r}")


def encode_handshake(payload: bytes = b"") -> bytes:
    if len(payload) > 0xFFFF:
        raise ValueError("handshake payload too long")
    return MAGIC + _U16.pack(len(payload)) + payload


class HandshakeDecoder:
    """Consumes the peer's preamble; ``feed`` returns the bytes that follow it, or None."""

    def __init__(self) -> None:
        self._buf = b""
        self.payload: bytes | None = None

    def feed(self, data: bytes) -> bytes | None:
        buf = self._buf + data if self._buf else data
        n = min(len(buf), len(MAGIC))
        if buf[:n] != MAGIC[:n]:
            raise HandshakeError(
                f"not a connection to a multiplexer: bad magic {bytes(buf[:n])[:52]!r}", 0
            )
        if len(buf) < 54:
            self._buf = buf
            return None
        (plen,) = _U16.unpack_from(buf, 52)
        if len(buf) < 54 + plen:
            self._buf = buf
            return None
        self.payload = bytes(buf[54 : 54 + plen])
        self._buf = b""
        return buf[54 + plen :]


class FrameDecoder:
    """Incremental frame parser: ``feed(bytes) -> list of events``.

    Headers are delimited with hdrlen (extra trailing header bytes are skipped, a hdrlen
    shorter than the command needs is an error); Data payloads are streamed out as
    ``Payload`` slices without reassembly.  After a ``FrameError`` the decoder is dead:
    a byte stream without resync markers cannot be trusted again.
    """

    def __init__(self) -> None:
        self._buf = b""  # partial header only; never payload
        self._payload_id = 0
        self._payload_left = 0
        self._consumed = 0  # link bytes before self._buf, for error offsets
        self._dead: FrameError | None = None

    @property
    def in_payload(self) -> bool:
        return self._payload_left > 0

    @property
    def error(self) -> FrameError | None:
        """Set once the stream proved malformed; every later ``feed`` returns nothing."""
        return self._dead

    def feed(self, data: bytes) -> list[Event]:
        """Parse as much as possible; on a malformed frame return the events before it.

        The caller must check :attr:`error` after handling the events.
        """
        if self._dead is not None:
            return []
        events: list[Event] = []
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pos = self._parse(data, events)
        if pos < len(data) and not self._dead:
            self._buf = data[pos:]
        self._consumed += pos
        return events

    def _parse(self, data: bytes, events: list[Event]) -> int:
        """Append ``data``'s events; return where parsing stopped (short or malformed).

        Payload and Data headers, the per-packet frames, are handled inline; the rarer
        control frames go to :meth:`_control`.
        """
        pos = 0
        end = len(data)
        append = events.append
        view: memoryview | None = None
        while pos < end:
            left = self._payload_left
            if left:
                avail = end - pos
                if view is None:
                    view = memoryview(data)  # payload slices without copying
                if avail <= left:
                    append(Payload(self._payload_id, data if pos == 0 else view[pos:]))
                    self._payload_left = left - avail
                    return end
                append(Payload(self._payload_id, view[pos : pos + left]))
                self._payload_left = 0
                pos += left
                continue
            if end - pos < 7:
                break
            hdrlen, cmd, cid = _HDR.unpack_from(data, pos)
            if cmd == Command.DATA:
                if hdrlen < _DATA_LEN:
                    self._error(f"Data header length {hdrlen} < {_DATA_LEN}", pos)
                    break
                if end - pos < hdrlen:
                    break
                (plen,) = _U32.unpack_from(data, pos + 7)
                pos += hdrlen
                append(DataHeader(cid, plen))
                if plen:
                    self._payload_id = cid
                    self._payload_left = plen
                continue
            after = self._control(data, pos, hdrlen, cmd, cid, events)
            if after == pos:  # incomplete, or malformed (then self._dead is set)
                break
            pos = after
        return pos

    def _control(
        self, data: bytes, pos: int, hdrlen: int, cmd: int, cid: int, events: list[Event]
    ) -> int:
        """Decode the control frame at ``pos``; return the position after it.

        ``pos`` itself means: not all there yet, or malformed (:attr:`error` is set).
        """
        if cmd == Command.WINDOW:
            minimum, what = _WINDOW_LEN, "Window header"
        elif cmd == Command.CLOSE or cmd == Command.SHUTDOWN:
            minimum, what = _CLOSE_LEN, "header"
        elif cmd == Command.OPEN:
            minimum, what = _OPEN_MIN, "Open header"
        else:
            self._error(f"unknown command {cmd}", pos)
            return pos
        if hdrlen < minimum:
            self._error(f"{what} length {hdrlen} < {minimum}", pos)
            return pos
        if len(data) - pos < hdrlen:
            return pos
        if cmd == Command.WINDOW:
            events.append(Window(cid, _U64.unpack_from(data, pos + 7)[0]))
        elif cmd == Command.OPEN:
            events.append(self._open(data, pos, hdrlen, cid))
        else:
            events.append(Close(cid) if cmd == Command.CLOSE else Shutdown(cid))
        return pos + hdrlen

    def _open(self, data: bytes, pos: int, hdrlen: int, cid: int) -> Open | BadOpen:
        conn = data[pos + 7]
        if conn == Connection.DEDICATED:
            return BadOpen(cid, "Dedicated connections are not implemented")
        if conn != Connection.MULTIPLEXED:
            return BadOpen(cid, f"unknown connection type {conn}")
        try:
            dest = _decode_destination(data, pos + 8, pos + hdrlen, self._consumed + pos)
        except ValueError as e:
            return BadOpen(cid, str(e))
        return Open(cid, dest, Connection.MULTIPLEXED)

    def _error(self, message: str, pos: int) -> FrameError:
        self._dead = FrameError(message, self._consumed + pos)
        return self._dead


def parse_frames(data: bytes) -> list[Frame | BadOpen]:
    """Decode a complete byte string into whole frames (tests, tools, golden vectors)."""
    dec = FrameDecoder()
    out: list[Frame | BadOpen] = []
    pending: tuple[int, int, list[bytes]] | None = None
    events = dec.feed(data)
    if dec.error is not None:
        raise dec.error
    for ev in events:
        if isinstance(ev, DataHeader):
            if ev.length == 0:
                out.append(Data(ev.id, b""))
            else:
                pending = (ev.id, ev.length, [])
        elif isinstance(ev, Payload):
            assert pending is not None
            pending[2].append(bytes(ev.data))
            if sum(map(len, pending[2])) == pending[1]:
                out.append(Data(pending[0], b"".join(pending[2])))
                pending = None
        else:
            out.append(ev)
    if pending is not None or dec._buf:
        raise FrameError("truncated frame", len(data))
    return out


# UDP records carried inside a UDP channel's Data stream -------------------------------


@dataclass(frozen=True, slots=True)
class UDPRecord:
    """One datagram with the (informational) peer address Go leaves empty."""

    payload: bytes = field(repr=False)
    ip: IPAddress | None = None
    port: int = 0
    zone: str = ""


def encode_udp_record(
    payload: bytes, ip: IPAddress | None = None, port: int = 0, zone: str = ""
) -> bytes:
    if len(payload) > MAX_UDP_PAYLOAD:
        raise UDPRecordError(f"datagram of {len(payload)} bytes exceeds {MAX_UDP_PAYLOAD}")
    packed = ip.packed if ip is not None else b""
    zraw = zone.encode("utf-8")
    total = 10 + len(packed) + len(zraw) + len(payload)
    if total > 0xFFFF:
        raise UDPRecordError(f"record of {total} bytes does not fit a u16 length")
    return b"".join(
        (
            _U16.pack(total),
            _U16.pack(len(packed)),
            packed,
            _U16.pack(port),
            _U16.pack(len(zraw)),
            zraw,
            _U16.pack(len(payload)),
            payload,
        )
    )


class UDPDecoder:
    """Reassembles UDP records from a channel's byte stream (Go splits each in three)."""

    def __init__(self) -> None:
        self._buf = b""

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[UDPRecord]:
        buf = self._buf + data if self._buf else bytes(data)
        out: list[UDPRecord] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            (framelen,) = _U16.unpack_from(buf, pos)
            if framelen < 10:
                raise UDPRecordError(f"record length {framelen} < 10")
            if end - pos < framelen:
                break
            rec = buf[pos : pos + framelen]
            pos += framelen
            out.append(self._record(rec))
        self._buf = buf[pos:]
        return out

    @staticmethod
    def _record(rec: bytes) -> UDPRecord:
        n = len(rec)
        (iplen,) = _U16.unpack_from(rec, 2)
        p = 4 + iplen
        if iplen not in (0, 4, 16) or p + 4 > n:
            raise UDPRecordError(f"bad ip length {iplen} in a {n}-byte record")
        ip: IPAddress | None = None
        if iplen == 4:
            ip = ipaddress.IPv4Address(rec[4:p])
        elif iplen == 16:
            v6 = ipaddress.IPv6Address(rec[4:p])
            ip = v6.ipv4_mapped or v6
        (port,) = _U16.unpack_from(rec, p)
        (zlen,) = _U16.unpack_from(rec, p + 2)
        q = p + 4 + zlen
        if q + 2 > n:
            raise UDPRecordError(f"zone length {zlen} overruns a {n}-byte record")
        zone = rec[p + 4 : q].decode("utf-8", "replace")
        (plen,) = _U16.unpack_from(rec, q)
        if q + 2 + plen != n:
            raise UDPRecordError(f"payload length {plen} disagrees with record length {n}")
        if plen > MAX_UDP_PAYLOAD:
            raise UDPRecordError(f"datagram of {plen} bytes exceeds {MAX_UDP_PAYLOAD}")
        return UDPRecord(rec[q + 2 :], ip, port, zone)

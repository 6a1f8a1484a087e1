"""PROXY protocol version 2 header, sans-IO (no Twisted imports).

The binary header HAProxy defined so that a relay can tell its backend who
really called: 12-byte signature, version/command, family/transport, a 16-bit
length, the addresses, then TLVs. PROXY v2 has no vsock family, so a vsock
caller travels as family ``UNSPEC`` plus a TLV in the custom range
(``0xE0``-``0xEF``): type :data:`PP2_TYPE_VSOCK` carrying source CID, source
port, destination CID, destination port as four big-endian u32. A relay that
receives such a header (``--accept-proxy-protocol``) routes by that CID, which
is how relay-to-relay chaining keeps the guest's identity.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
CMD_LOCAL = 0x0
CMD_PROXY = 0x1
AF_UNSPEC = 0x0
AF_INET = 0x1
AF_INET6 = 0x2
AF_UNIX = 0x3
PROTO_UNSPEC = 0x0
PROTO_STREAM = 0x1
PP2_TYPE_VSOCK = 0xE8

_HEAD = struct.Struct("!12sBBH")
_V4 = struct.Struct("!4s4sHH")
_V6 = struct.Struct("!16s16sHH")
_UNIX = struct.Struct("!108s108s")
_VSOCK = struct.Struct("!IIII")
_TLV = struct.Struct("!BH")

#: Largest header we accept; real ones are well under 256 bytes.
MAX_HEADER = 16 + 1024


class ProxyProtocolError(ValueError):
    """A PROXY v2 header that is malformed, unsupported or too long."""


Address = tuple[str, int] | str | tuple[int, int] | None


@dataclass(frozen=True)
class ProxyHeader:
    """Who called whom. ``family`` picks the address shape:

    * ``AF_INET``/``AF_INET6``: ``(host, port)`` strings and ints;
    * ``AF_UNIX``: paths as ``str``;
    * ``vsock`` (UNSPEC + TLV): ``(cid, port)`` ints;
    * ``AF_UNSPEC`` or LOCAL: ``None``.
    """

    command: int = CMD_PROXY
    family: int = AF_UNSPEC
    source: Address = None
    destination: Address = None
    vsock: bool = False
    tlvs: dict[int, bytes] = field(default_factory=dict)

    @property
    def source_cid(self) -> int | None:
        if self.vsock and isinstance(self.source, tuple):
            return int(self.source[0])
        return None


def encode(h: ProxyHeader) -> bytes:
    """Wire bytes of one header."""
    tlvs = dict(h.tlvs)
    family, proto, body = AF_UNSPEC, PROTO_UNSPEC, b""
    if h.command == CMD_LOCAL:
        pass
    elif h.vsock:
        assert isinstance(h.source, tuple) and isinstance(h.destination, tuple)
        sc, sp = h.source
        dc, dp = h.destination
        tlvs[PP2_TYPE_VSOCK] = _VSOCK.pack(int(sc), int(sp), int(dc), int(dp))
        proto = PROTO_STREAM
    elif h.family in (AF_INET, AF_INET6):
        assert isinstance(h.source, tuple) and isinstance(h.destination, tuple)
        src = ipaddress.ip_address(str(h.source[0]))
        dst = ipaddress.ip_address(str(h.destination[0]))
        if src.version != dst.version:
            raise ProxyProtocolError("source and destination are of different IP versions")
        family = AF_INET if src.version == 4 else AF_INET6
        packer = _V4 if family == AF_INET else _V6
        body = packer.pack(src.packed, dst.packed, int(h.source[1]), int(h.destination[1]))
        proto = PROTO_STREAM
    elif h.family == AF_UNIX:
        assert isinstance(h.source, str) and isinstance(h.destination, str)
        body = _UNIX.pack(h.source.encode(), h.destination.encode())
        family, proto = AF_UNIX, PROTO_STREAM
    for t, v in sorted(tlvs.items()):
        body += _TLV.pack(t, len(v)) + v
    if len(body) > 0xFFFF:
        raise ProxyProtocolError("PROXY v2 header body longer than 65535 bytes")
    return _HEAD.pack(SIGNATURE, 0x20 | h.command, (family << 4) | proto, len(body)) + body


def decode(buf: bytes, maxHeader: int = MAX_HEADER) -> tuple[ProxyHeader, int] | None:
    """Parse a header at the start of ``buf``: (header, bytes used), or None if incomplete."""
    n = min(len(buf), 12)
    if buf[:n] != SIGNATURE[:n]:
        raise ProxyProtocolError("stream does not start with the PROXY v2 signature")
    if len(buf) < 16:
        return None
    _, verCmd, famProto, length = _HEAD.unpack_from(buf)
    if verCmd >> 4 != 2:
        raise ProxyProtocolError(f"PROXY protocol version {verCmd >> 4} is not 2")
    command = verCmd & 0xF
    if command not in (CMD_LOCAL, CMD_PROXY):
        raise ProxyProtocolError(f"PROXY v2 command {command} is neither LOCAL nor PROXY")
    if 16 + length > maxHeader:
        raise ProxyProtocolError(f"PROXY v2 header of {16 + length} bytes exceeds {maxHeader}")
    if len(buf) < 16 + length:
        return None
    body = buf[16 : 16 + length]
    family = famProto >> 4
    if command == CMD_LOCAL:
        return ProxyHeader(command=CMD_LOCAL), 16 + length
    source, destination, pos = _addresses(family, body, length)
    tlvs = _tlvs(body, pos)
    vs = tlvs.pop(PP2_TYPE_VSOCK, None)
    if vs is not None:
        if len(vs) != _VSOCK.size:
            raise ProxyProtocolError(f"vsock TLV is {len(vs)} bytes, not {_VSOCK.size}")
        sc, sp, dc, dp = _VSOCK.unpack(vs)
        return (
            ProxyHeader(CMD_PROXY, AF_UNSPEC, (sc, sp), (dc, dp), True, tlvs),
            16 + length,
        )
    return ProxyHeader(CMD_PROXY, family, source, destination, False, tlvs), 16 + length


def _addresses(family: int, body: bytes, length: int) -> tuple[Address, Address, int]:
    """The address block of ``family`` at the start of ``body``: (source, destination, end)."""
    try:
        if family == AF_INET:
            s, d, sp, dp = _V4.unpack_from(body)
            return (str(ipaddress.IPv4Address(s)), sp), (str(ipaddress.IPv4Address(d)), dp), _V4.size
        if family == AF_INET6:
            s, d, sp, dp = _V6.unpack_from(body)
            return (str(ipaddress.IPv6Address(s)), sp), (str(ipaddress.IPv6Address(d)), dp), _V6.size
        if family == AF_UNIX:
            s, d = _UNIX.unpack_from(body)
            source = s.rstrip(b"\0").decode("utf-8", "replace")
            destination = d.rstrip(b"\0").decode("utf-8", "replace")
            return source, destination, _UNIX.size
    except struct.error:
        raise ProxyProtocolError(
            f"PROXY v2 address block too short for family {family} ({length} bytes)"
        ) from None
    if family != AF_UNSPEC:
        raise ProxyProtocolError(f"PROXY v2 address family {family} is unknown")
    return None, None, 0


def _tlvs(body: bytes, pos: int) -> dict[int, bytes]:
    """The type-length-value entries from ``pos`` to the end of ``body``."""
    tlvs: dict[int, bytes] = {}
    while pos < len(body):
        if pos + 3 > len(body):
            raise ProxyProtocolError(f"truncated TLV header at body offset {pos}")
        t, tl = _TLV.unpack_from(body, pos)
        if pos + 3 + tl > len(body):
            raise ProxyProtocolError(f"TLV type {t:#x} of {tl} bytes overruns the header")
        tlvs[t] = body[pos + 3 : pos + 3 + tl]
        pos += 3 + tl
    return tlvs

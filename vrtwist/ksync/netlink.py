"""Netlink framing of the ksync channel (docs/protocols/ksync.md), sans-IO.

Every message is ``nlmsghdr`` (16 bytes) + ``genlmsghdr`` (4) + ``nlattr`` (4) + Sandesh
payload, headers in host (x86 little-endian) order. On a stream socket the netlink
header itself is the framing: read 16 bytes, then ``nlmsg_len - 16`` more.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "GENL_HDRLEN",
    "GENL_ID_VROUTER",
    "HEADERS_LEN",
    "NLA_HDRLEN",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLMSG_HDRLEN",
    "NLM_F_MULTI",
    "NLM_F_REQUEST",
    "NL_ATTR_VR_MESSAGE_PROTOCOL",
    "NL_REPLY_MAX",
    "NL_REQUEST_MAX",
    "SANDESH_REQUEST",
    "FrameReader",
    "NetlinkFrameError",
    "NetlinkMessage",
    "build_done",
    "build_request",
    "build_response",
    "parse_message",
]

NLMSG_HDRLEN = 16
GENL_HDRLEN = 4
NLA_HDRLEN = 4
#: Bytes before the Sandesh payload.
HEADERS_LEN = NLMSG_HDRLEN + GENL_HDRLEN + NLA_HDRLEN

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLMSG_ERROR = 2
NLMSG_DONE = 3

#: Family id used on non-netlink sockets (NLMSG_MIN_TYPE + 0x10).
GENL_ID_VROUTER = 0x20
#: The only generic netlink command.
SANDESH_REQUEST = 1
#: The only attribute type.
NL_ATTR_VR_MESSAGE_PROTOCOL = 1

#: Largest reply the Agent accepts (KSyncSock::kBufLen); the server never sends more.
NL_REPLY_MAX = 4096
#: Largest request frame the server accepts. The Agent bunches at most 4096 bytes of
#: Sandesh (+24 header bytes); anything far larger is a broken or hostile client.
NL_REQUEST_MAX = 65536

_NLMSGHDR = struct.Struct("<IHHII")
_HEADERS = struct.Struct("<IHHIIBBHHH")
_DONE = struct.Struct("<IHHII")


class NetlinkFrameError(ValueError):
    """A frame's header is impossible (too short, too long); the stream cannot be resynced."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset


class NetlinkMessage(NamedTuple):
    """One parsed netlink message. ``payload`` is empty for NLMSG_DONE / bare headers.

    A NamedTuple because one is built per message on the hot path.
    """

    nl_type: int
    flags: int
    seq: int
    pid: int
    genl_cmd: int = 0
    genl_version: int = 0
    genl_reserved: int = 0
    nla_len: int = 0
    nla_type: int = 0
    payload: bytes = b""
    length: int = 0

    @property
    def is_done(self) -> bool:
        """A bare 16-byte message: NLMSG_DONE closing a multi-part reply."""
        return self.length == NLMSG_HDRLEN

    @property
    def is_multi(self) -> bool:
        return bool(self.flags & NLM_F_MULTI)


def build_request(
    payload: bytes,
    seq: int,
    nl_type: int = GENL_ID_VROUTER,
    pid: int = 0,
    flags: int = NLM_F_REQUEST,
) -> bytes:
    """A request as the utilities build it: nlmsg_len = 24 + L, nla_len = 4 + L, no padding."""
    n = len(payload)
    return (
        _HEADERS.pack(
            HEADERS_LEN + n,
            nl_type,
            flags,
            seq & 0xFFFFFFFF,
            pid & 0xFFFFFFFF,
            SANDESH_REQUEST,
            0,
            0,
            (NLA_HDRLEN + n) & 0xFFFF,
            NL_ATTR_VR_MESSAGE_PROTOCOL,
        )
        + payload
    )


def build_response(
    payload: bytes,
    request: NetlinkMessage,
    flags: int,
    pad: bool = False,
    pid: int = 0,
) -> bytes:
    """A reply echoing the request's type, seq and genl header; nla_len = L (the quirk).

    With ``pad`` the message is padded to 4 bytes and nlmsg_len counts the padding, as the
    Linux kernel module does; without it nlmsg_len = 24 + L, as the DPDK vRouter does.
    """
    n = len(payload)
    total = HEADERS_LEN + n
    padding = (-total) % 4 if pad else 0
    return (
        _HEADERS.pack(
            total + padding,
            request.nl_type,
            flags,
            request.seq,
            pid,
            request.genl_cmd,
            request.genl_version,
            request.genl_reserved,
            n & 0xFFFF,
            NL_ATTR_VR_MESSAGE_PROTOCOL,
        )
        + payload
        + b"\x00" * padding
    )


def build_done(request: NetlinkMessage, pid: int = 0) -> bytes:
    """The bare NLMSG_DONE closing a multi-part reply (16 bytes, flags 0, same seq)."""
    return _DONE.pack(NLMSG_HDRLEN, NLMSG_DONE, 0, request.seq, pid)


def parse_message(frame: bytes) -> NetlinkMessage:
    """Split one whole frame into headers and payload.

    The payload is everything after the 24 header bytes (the DPDK server uses
    ``nlmsg_len - 24``, the Agent the same with up to 3 pad bytes), so the nla_len
    conventions of both directions are accepted.
    """
    if len(frame) == NLMSG_HDRLEN:
        length, nl_type, flags, seq, pid = _NLMSGHDR.unpack(frame)
        return NetlinkMessage(nl_type, flags, seq, pid, length=length)
    if len(frame) < HEADERS_LEN:
        raise NetlinkFrameError("netlink message of %d bytes has no genl/attr header" % len(frame))
    (length, nl_type, flags, seq, pid, cmd, version, reserved, nla_len, nla_type) = (
        _HEADERS.unpack_from(frame)
    )
    return NetlinkMessage(
        nl_type,
        flags,
        seq,
        pid,
        cmd,
        version,
        reserved,
        nla_len,
        nla_type,
        frame[HEADERS_LEN:],
        length,
    )


class FrameReader:
    """Reassemble netlink frames from a byte stream: one buffer, one offset, a hard maximum.

    ``feed`` returns the complete frames found so far; an impossible length raises
    ``NetlinkFrameError`` (the peer is then out of sync and must be dropped).
    """

    def __init__(self, max_frame: int = NL_REQUEST_MAX, min_frame: int = NLMSG_HDRLEN) -> None:
        self._buf = bytearray()
        self._off = 0
        self._max = max_frame
        self._min = min_frame
        self._consumed = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._off

    def feed(self, data: bytes, limit: int | None = None) -> list[bytes]:
        """Add ``data`` and return up to ``limit`` whole frames (all if None)."""
        if limit is None and not self._buf and data.__class__ is bytes:
            return self._feed_direct(data)
        if data:
            self._buf += data
        return self.frames(limit)

    def _feed_direct(self, data: bytes) -> list[bytes]:
        """Nothing buffered: cut frames straight out of ``data`` (one copy, or none for a
        read holding exactly one frame) and buffer only an incomplete tail."""
        out: list[bytes] = []
        off = 0
        end = len(data)
        while end - off >= NLMSG_HDRLEN:
            n = int.from_bytes(data[off : off + 4], "little")
            if n < self._min or n > self._max:
                raise self._bad_length(n, self._consumed + off)
            if end - off < n:
                break
            out.append(data if n == end else data[off : off + n])
            off += n
        self._consumed += off
        if off < end:
            self._buf += data[off:]
        return out

    def _bad_length(self, n: int, offset: int) -> NetlinkFrameError:
        if n < self._min:
            return NetlinkFrameError("nlmsg_len %d shorter than %d" % (n, self._min), offset)
        return NetlinkFrameError("nlmsg_len %d exceeds the maximum of %d" % (n, self._max), offset)

    def frames(self, limit: int | None = None) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf
        off = self._off
        end = len(buf)
        while end - off >= NLMSG_HDRLEN and (limit is None or len(out) < limit):
            n = int.from_bytes(buf[off : off + 4], "little")
            if n < self._min or n > self._max:
                raise self._bad_length(n, self._consumed + off)
            if end - off < n:
                break
            out.append(bytes(buf[off : off + n]))
            off += n
        # Compact once the consumed prefix dominates, so the buffer never grows without bound.
        if off and (off == end or off > 65536):
            del buf[:off]
            self._consumed += off
            off = 0
        self._off = off
        return out

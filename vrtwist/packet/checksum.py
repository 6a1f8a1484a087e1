"""The Internet checksum (RFC 1071) and its incremental update (RFC 1624)."""

from __future__ import annotations

import struct

Buffer = bytes | bytearray | memoryview


def checksum(data: Buffer, start: int = 0) -> int:
    """Ones'-complement checksum of ``data`` folded into ``start`` (a partial sum).

    Uses ``int.from_bytes`` over the whole buffer, folding the big integer: much faster
    in CPython than a 16-bit loop.
    """
    n = len(data)
    if n & 1:
        data = bytes(data) + b"\x00"
        n += 1
    total = int.from_bytes(data, "big") if n else 0
    # fold 16-bit words: x mod 0xFFFF equals the ones'-complement sum (except 0/0xFFFF)
    s = total % 0xFFFF if total else 0
    if s == 0 and total:
        s = 0xFFFF
    s += start
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def checksum_update16(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for one changed 16-bit word."""
    s = (~csum & 0xFFFF) + (~old & 0xFFFF) + (new & 0xFFFF)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


_U16 = struct.Struct("!H")


def ipv4_ttl_decrement(buf: bytearray | memoryview, off: int) -> int:
    """Decrement the TTL of the IPv4 header at ``off`` in place; return the new TTL.

    The header checksum is updated incrementally (the TTL/protocol word changes by
    0x0100), as ``vr_forward`` does.
    """
    ttl = buf[off + 8]
    if ttl == 0:
        raise ValueError("TTL already 0")
    old_word = (ttl << 8) | buf[off + 9]
    buf[off + 8] = ttl - 1
    (csum,) = _U16.unpack_from(buf, off + 10)
    _U16.pack_into(buf, off + 10, checksum_update16(csum, old_word, old_word - 0x100))
    return ttl - 1

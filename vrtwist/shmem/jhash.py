"""Bob Jenkins' lookup3 hash as the vRouter's ``vr_hash`` (the Linux kernel ``jhash``).

Bucket placement in ``flow.shmem`` and ``bridge.shmem`` must match the real
vRouter byte for byte, so this is the same function: initial state
``0xdeadbeef + length + initval``, 12-byte blocks read as little-endian words,
the tail added byte-wise, ``final`` only when at least one tail byte exists.
Pure Python, unrolled: it is on the insert hot path.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["JHASH_INITVAL", "jhash", "jhash_bridge", "jhash_flow4", "jhash_flow6", "jhash_words5"]

JHASH_INITVAL = 0xDEADBEEF
_M = 0xFFFFFFFF

_WORDS = {n: struct.Struct("<%dI" % n) for n in range(3, 3 * 24 + 1, 3)}
_PAD = bytes(12)


_W2 = struct.Struct("<2I")
_W5 = struct.Struct("<5I")
_W11 = struct.Struct("<11I")


def _final(a: int, b: int, c: int) -> int:
    c ^= b
    c = (c - (((b << 14) | (b >> 18)) & _M)) & _M
    a ^= c
    a = (a - (((c << 11) | (c >> 21)) & _M)) & _M
    b ^= a
    b = (b - (((a << 25) | (a >> 7)) & _M)) & _M
    c ^= b
    c = (c - (((b << 16) | (b >> 16)) & _M)) & _M
    a ^= c
    a = (a - (((c << 4) | (c >> 28)) & _M)) & _M
    b ^= a
    b = (b - (((a << 14) | (a >> 18)) & _M)) & _M
    c ^= b
    return (c - (((b << 24) | (b >> 8)) & _M)) & _M


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M
    a ^= ((c << 4) | (c >> 28)) & _M
    c = (c + b) & _M
    b = (b - a) & _M
    b ^= ((a << 6) | (a >> 26)) & _M
    a = (a + c) & _M
    c = (c - b) & _M
    c ^= ((b << 8) | (b >> 24)) & _M
    b = (b + a) & _M
    a = (a - c) & _M
    a ^= ((c << 16) | (c >> 16)) & _M
    c = (c + b) & _M
    b = (b - a) & _M
    b ^= ((a << 19) | (a >> 13)) & _M
    a = (a + c) & _M
    c = (c - b) & _M
    c ^= ((b << 4) | (b >> 28)) & _M
    b = (b + a) & _M
    return a, b, c


def jhash_bridge(key: bytes) -> int:
    """``jhash`` of an 8-byte bridge key, initval 0 (one tail block, no mix)."""
    w0, w1 = _W2.unpack(key)
    a = b = c = (JHASH_INITVAL + 8) & _M
    return _final((a + w0) & _M, (b + w1) & _M, c)


def jhash_flow4(key: bytes, _unpack: Any = _W5.unpack) -> int:
    """``jhash`` of a 20-byte IPv4 flow key, initval 0 (one mix, 8-byte tail)."""
    w0, w1, w2, w3, w4 = _unpack(key)
    return jhash_words5(w0, w1, w2, w3, w4)


def jhash_words5(
    w0: int, w1: int, w2: int, w3: int, w4: int, _M: int = _M, _R: int = 0x100000001
) -> int:
    """``jhash`` of a 20-byte key given as its five little-endian words, initval 0.

    The FLOW_SET path builds the IPv4 key from integers, so it hashes the words without
    re-reading the bytes.  Unrolled, constants bound as locals: this is the insert hot
    path.  A 32-bit rotation left by k of a reduced x is ``(x * 0x100000001) >> (32 - k)``
    (the product holds x twice, side by side) masked to 32 bits.  Only a value about to
    be rotated must be reduced mod 2**32: sums, differences and xors are exact mod 2**32
    on Python's unbounded (two's complement) ints, so each ``a - c`` / xor pair is masked
    once, after the xor, and the additions between rotations are not masked at all.
    """
    a = 0xDEADBEEF + 20 + w0
    b = 0xDEADBEEF + 20 + w1
    c = 0xDEADBEEF + 20 + w2  # < 2**33: reduced before its first rotation below
    c &= _M
    a = ((a - c) ^ ((c * _R) >> 28)) & _M
    c += b
    b = ((b - a) ^ ((a * _R) >> 26)) & _M
    a += c
    c = ((c - b) ^ ((b * _R) >> 24)) & _M
    b += a
    a = ((a - c) ^ ((c * _R) >> 16)) & _M
    c += b
    b = ((b - a) ^ ((a * _R) >> 13)) & _M
    a += c
    c = ((c - b) ^ ((b * _R) >> 28)) & _M
    b = (b + a + w4) & _M
    a += w3
    c = ((c ^ b) - ((b * _R) >> 18)) & _M
    a = ((a ^ c) - ((c * _R) >> 21)) & _M
    b = ((b ^ a) - ((a * _R) >> 7)) & _M
    c = ((c ^ b) - ((b * _R) >> 16)) & _M
    a = ((a ^ c) - ((c * _R) >> 28)) & _M
    b = ((b ^ a) - ((a * _R) >> 18)) & _M
    return ((c ^ b) - ((b * _R) >> 8)) & _M


def jhash_flow6(key: bytes) -> int:
    """``jhash`` of a 44-byte IPv6 flow key, initval 0 (three mixes, 8-byte tail)."""
    w = _W11.unpack(key)
    a = b = c = (JHASH_INITVAL + 44) & _M
    a, b, c = _mix((a + w[0]) & _M, (b + w[1]) & _M, (c + w[2]) & _M)
    a, b, c = _mix((a + w[3]) & _M, (b + w[4]) & _M, (c + w[5]) & _M)
    a, b, c = _mix((a + w[6]) & _M, (b + w[7]) & _M, (c + w[8]) & _M)
    return _final((a + w[9]) & _M, (b + w[10]) & _M, c)


def jhash(key: bytes, initval: int = 0) -> int:
    """Return ``vr_hash(key, len(key), initval)`` as an unsigned 32-bit int."""
    length = len(key)
    if not initval:
        if length == 20:
            return jhash_flow4(key)
        if length == 8:
            return jhash_bridge(key)
        if length == 44:
            return jhash_flow6(key)
    a = b = c = (JHASH_INITVAL + length + initval) & _M
    if length == 0:
        return c
    blocks = (length + 11) // 12
    padded = bytes(key) + _PAD[: blocks * 12 - length] if length % 12 else bytes(key)
    words = (
        _WORDS[blocks * 3].unpack(padded)
        if blocks <= 24
        else struct.unpack("<%dI" % (blocks * 3), padded)
    )
    # the generic path (keys other than the 8, 20 and 44 bytes of the tables) is not hot:
    # it shares __jhash_mix / __jhash_final with the fixed-size paths
    last = (blocks - 1) * 3
    for i in range(0, last, 3):
        a, b, c = _mix((a + words[i]) & _M, (b + words[i + 1]) & _M, (c + words[i + 2]) & _M)
    return _final((a + words[last]) & _M, (b + words[last + 1]) & _M, (c + words[last + 2]) & _M)

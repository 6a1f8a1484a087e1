"""Bob Jenkins' lookup3 hash as the vRouter's ``vr_hash`` (the Linux kernel ``jhash``).

Bucket placement in ``flow.shmem`` and ``bridge.shmem`` must match the real
vRouter byte for byte, so this is the same function: initial state
``0xdeadbeef + length + initval``, 12-byte blocks read as little-endian words,
the tail added byte-wise, ``final`` only when at least one tail byte exists.
Pure Python, unrolled: it is on the insert hot path.
"""

from __future__ import annotations

import struct

__all__ = ["jhash", "JHASH_INITVAL"]

JHASH_INITVAL = 0xDEADBEEF
_M = 0xFFFFFFFF

_WORDS = {n: struct.Struct("<%dI" % n) for n in range(3, 3 * 24 + 1, 3)}
_PAD = bytes(12)


def jhash(key: bytes, initval: int = 0) -> int:
    """Return ``vr_hash(key, len(key), initval)`` as an unsigned 32-bit int."""
    length = len(key)
    a = b = c = (JHASH_INITVAL + length + initval) & _M
    if length == 0:
        return c
    blocks = (length + 11) // 12
    padded = bytes(key) + _PAD[: blocks * 12 - length] if length % 12 else bytes(key)
    words = _WORDS[blocks * 3].unpack(padded) if blocks <= 24 else struct.unpack(
        "<%dI" % (blocks * 3), padded
    )
    i = 0
    last = (blocks - 1) * 3
    while i < last:
        a = (a + words[i]) & _M
        b = (b + words[i + 1]) & _M
        c = (c + words[i + 2]) & _M
        # __jhash_mix
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
        i += 3
    a = (a + words[i]) & _M
    b = (b + words[i + 1]) & _M
    c = (c + words[i + 2]) & _M
    # __jhash_final
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
    c = (c - (((b << 24) | (b >> 8)) & _M)) & _M
    return c

"""The specialised 20-byte jhash against a plain re-statement of lookup3."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.shmem.jhash import jhash, jhash_flow4, jhash_words5

M = 0xFFFFFFFF


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & M


def _reference(key: bytes) -> int:
    """lookup3 for a 20-byte key, initval 0, every step masked as in C."""
    w = struct.unpack("<5I", key)
    a = b = c = (0xDEADBEEF + 20) & M
    a, b, c = (a + w[0]) & M, (b + w[1]) & M, (c + w[2]) & M
    a = (a - c) & M ^ _rol(c, 4)
    c = (c + b) & M
    b = (b - a) & M ^ _rol(a, 6)
    a = (a + c) & M
    c = (c - b) & M ^ _rol(b, 8)
    b = (b + a) & M
    a = (a - c) & M ^ _rol(c, 16)
    c = (c + b) & M
    b = (b - a) & M ^ _rol(a, 19)
    a = (a + c) & M
    c = (c - b) & M ^ _rol(b, 4)
    b = (b + a) & M
    a, b = (a + w[3]) & M, (b + w[4]) & M
    c ^= b
    c = (c - _rol(b, 14)) & M
    a ^= c
    a = (a - _rol(c, 11)) & M
    b ^= a
    b = (b - _rol(a, 25)) & M
    c ^= b
    c = (c - _rol(b, 16)) & M
    a ^= c
    a = (a - _rol(c, 4)) & M
    b ^= a
    b = (b - _rol(a, 14)) & M
    c ^= b
    return (c - _rol(b, 24)) & M


class Flow4(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.binary(min_size=20, max_size=20))
    def test_matches_reference(self, key: bytes) -> None:
        want = _reference(key)
        self.assertEqual(jhash_flow4(key), want)
        self.assertEqual(jhash(key), want)
        self.assertEqual(jhash_words5(*struct.unpack("<5I", key)), want)

    def test_extremes(self) -> None:
        for key in (bytes(20), b"\xff" * 20, b"\x80" * 20, b"\x01" + bytes(19)):
            self.assertEqual(jhash_flow4(key), _reference(key))

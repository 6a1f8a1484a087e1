"""Random add/delete sequences keep the vr_htable invariants a walker relies on."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.shmem import layout as L
from vrtwist.shmem.flowtable import FlowTable
from vrtwist.shmem.jhash import jhash

INVALID = 0xFFFFFFFF


def walk(buf: bytes, entries: int, key: bytes) -> int:
    """Find ``key`` as the vRouter's ``vr_htable_find_hentry`` does: bucket, then chain."""
    b = (jhash(key) % entries) & ~3
    for i in range(b, b + 4):
        off = i * 256
        if (
            buf[off + 20] & 1
            and buf[off + 68] == len(key)
            and buf[off + 24 : off + 24 + len(key)] == key
        ):
            return i
    nxt = struct.unpack_from("<I", buf, (b + 3) * 256 + 16)[0]
    seen = 0
    while nxt != INVALID and seen < 1000:
        off = nxt * 256
        if buf[off + 20] & 1 and buf[off + 24 : off + 24 + len(key)] == key:
            return nxt
        nxt = struct.unpack_from("<I", buf, off + 16)[0]
        seen += 1
    return -1


def key(n: int) -> bytes:
    return (
        struct.pack("<BBH", 2, 6, 0)
        + struct.pack(">HH", n & 0xFFFF, 80)
        + struct.pack("<I", 1)
        + b"\x01\x02\x03\x04"
        + b"\x05\x06\x07\x08"
    )


class Invariants(SynchronousTestCase):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=120))
    def test_random_sequences(self, ops: list[tuple[bool, int]]) -> None:
        entries, oentries = 8, 8
        buf = bytearray((entries + oentries) * 256)
        t = FlowTable(buf, entries, oentries)
        live: dict[int, tuple[int, int]] = {}
        for add, n in ops:
            if add:
                r = t.flow_set(
                    {
                        "fr_index": -1,
                        "fr_action": 2,
                        "fr_flags": 1,
                        "fr_family": 2,
                        "fr_flow_proto": 6,
                        "fr_flow_sport": struct.unpack("<H", struct.pack(">H", n & 0xFFFF))[0],
                        "fr_flow_dport": struct.unpack("<H", struct.pack(">H", 80))[0],
                        "fr_flow_nh_id": 1,
                        "fr_flow_sip_l": 0x04030201,
                        "fr_flow_dip_l": 0x08070605,
                    }
                )
                if n in live:
                    self.assertEqual(r.errno, -17)
                elif r.errno == 0:
                    live[n] = (r.index, r.gen_id)
                else:
                    self.assertEqual(r.errno, -28)
                    self.assertEqual(t.ht.free_overflow, 0)
            elif n in live:
                idx, gen = live.pop(n)
                r = t.flow_set(
                    {
                        "fr_index": idx,
                        "fr_gen_id": gen,
                        "fr_action": 0,
                        "fr_flags": 0,
                        "fr_family": 2,
                        "fr_flow_proto": 6,
                        "fr_flow_sport": struct.unpack("<H", struct.pack(">H", n & 0xFFFF))[0],
                        "fr_flow_dport": struct.unpack("<H", struct.pack(">H", 80))[0],
                        "fr_flow_nh_id": 1,
                        "fr_flow_sip_l": 0x04030201,
                        "fr_flow_dip_l": 0x08070605,
                    }
                )
                self.assertEqual(r.errno, 0)
            snap = bytes(buf)
            for m, (idx, _gen) in live.items():
                self.assertEqual(walk(snap, entries, key(m)), idx)
                self.assertEqual(t.lookup(key(m)), idx)
            self.assertEqual(t.used_entries, len(live))
            # free + used overflow entries account for the whole overflow table, no overlap
            used_o = [
                i
                for i in range(entries, entries + oentries)
                if snap[i * 256 + 20] & L.HENTRY_FLAG_VALID
            ]
            free_o = [
                i
                for i in range(entries, entries + oentries)
                if snap[i * 256 + 20] & L.HENTRY_FLAG_IN_FREE_LIST
            ]
            self.assertEqual(len(used_o) + len(free_o), oentries)
            self.assertEqual(len(used_o), t.used_oflow_entries)
            # every used overflow entry hangs off the 4th entry of its bucket's chain
            for o in used_o:
                head = struct.unpack_from("<I", snap, o * 256 + 12)[0]
                self.assertEqual(head % 4, 3)

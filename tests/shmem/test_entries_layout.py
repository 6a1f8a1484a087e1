"""The construct declarations of flow and bridge entries decode exactly what the
``struct`` formats of ``layout.py`` (the datapath's own access) describe."""

from __future__ import annotations

import random
import socket
import struct

from twisted.trial import unittest

from vrtwist.shmem import layout as L
from vrtwist.shmem.entries import (
    BRIDGE_ENTRY_LAYOUT,
    FLOW_ENTRY_LAYOUT,
    BridgeEntry,
    FlowEntry,
    flat_format,
    parse_bridge_entry,
    parse_flow_entry,
)


def _reference_flow(raw: bytes, index: int) -> FlowEntry:
    """The decoder the listing used before the construct layout (kept as the oracle)."""
    (
        _nxt, h_index, h_bucket, h_next, h_flags, ttl, qos, key, gen, tcp_flags, _hold,
        tcp_seq, rflow, flags, flags1, action, vrf, dvrf, mir, smir, src_nh, nbytes, npkts,
        boflow, poflow, ecmp, drop, etype, udp_sport, src_info, _mme,
    ) = L.FLOW_ENTRY.unpack(raw)  # fmt: skip
    family = key[0]
    if etype == L.VP_TYPE_IP6 or family == L.AF_INET6:
        sip = socket.inet_ntop(socket.AF_INET6, key[12:28])
        dip = socket.inet_ntop(socket.AF_INET6, key[28:44])
    else:
        sip = socket.inet_ntoa(key[12:16])
        dip = socket.inet_ntoa(key[16:20])
    return FlowEntry(
        index, h_index, h_bucket, h_next, h_flags, ttl, qos, family, key[1],
        (key[4] << 8) | key[5], (key[6] << 8) | key[7], int.from_bytes(key[8:12], "little"),
        sip, dip, key[44], gen, tcp_flags, tcp_seq, rflow, flags, flags1, action, vrf, dvrf,
        mir, smir, src_nh, nbytes, npkts, boflow, poflow, ecmp, drop, etype, udp_sport, src_info,
    )  # fmt: skip


def _random_flow(rng: random.Random) -> bytes:
    raw = bytearray(rng.randbytes(L.FLOW_ENTRY_SIZE))
    raw[L.OFF_FE_KEY] = rng.choice((L.AF_INET, L.AF_INET6, 0, 255))
    raw[L.OFF_FE_TYPE] = rng.choice((L.VP_TYPE_IP, L.VP_TYPE_IP6, 0, 7))
    return bytes(raw)


class FlowEntryLayoutTests(unittest.TestCase):
    def test_sizes_match_the_struct_formats(self) -> None:
        self.assertEqual(FLOW_ENTRY_LAYOUT.sizeof(), L.FLOW_ENTRY_SIZE)
        self.assertEqual(FLOW_ENTRY_LAYOUT.sizeof(), L.FLOW_ENTRY.size)
        self.assertEqual(BRIDGE_ENTRY_LAYOUT.sizeof(), L.BRIDGE_ENTRY_SIZE)

    def test_random_entries_decode_as_the_struct_reference(self) -> None:
        rng = random.Random(7)
        for i in range(500):
            raw = _random_flow(rng)
            self.assertEqual(parse_flow_entry(raw, i), _reference_flow(raw, i))

    def test_derived_format_decodes_as_construct_does(self) -> None:
        fmt, names = flat_format(FLOW_ENTRY_LAYOUT)
        fast = struct.Struct("<" + fmt)
        rng = random.Random(10)
        for _ in range(50):
            raw = _random_flow(rng)
            slow = FLOW_ENTRY_LAYOUT.parse(raw)
            for name, value in zip(names, fast.unpack(raw), strict=True):
                outer, _, inner = name.partition(".")
                want = slow[outer][inner] if inner else slow[outer]
                self.assertEqual(value, want, name)

    def test_build_gives_the_struct_bytes(self) -> None:
        rng = random.Random(8)
        for _ in range(100):
            raw = _random_flow(rng)
            raw = raw[:132] + bytes(124)  # the padding is written as zeros
            self.assertEqual(FLOW_ENTRY_LAYOUT.build(FLOW_ENTRY_LAYOUT.parse(raw)), raw)

    def test_key_fields_sit_at_the_layout_offsets(self) -> None:
        raw = bytearray(L.FLOW_ENTRY_SIZE)
        L.FLOW_KEY4.pack_into(raw, L.OFF_FE_KEY, L.AF_INET, 6, 0, 0x5000, 0xBB01, 12,
                              bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)))  # fmt: skip
        raw[L.OFF_FE_KEYLEN] = 20
        L.U16.pack_into(raw, L.OFF_FE_FLAGS, L.FLAG_ACTIVE)
        L.I32.pack_into(raw, L.OFF_FE_RFLOW, -1)
        e = parse_flow_entry(bytes(raw), 3)
        self.assertEqual((e.sip, e.dip, e.proto, e.nh_id, e.key_len), ("10.0.0.1", "10.0.0.2", 6, 12, 20))
        self.assertEqual((e.sport, e.dport), (0x0050, 0x01BB))  # network bytes 00 50 / 01 bb
        self.assertTrue(e.active)
        self.assertEqual(e.rflow, -1)


class BridgeEntryLayoutTests(unittest.TestCase):
    def test_random_entries_decode_as_the_struct_reference(self) -> None:
        rng = random.Random(9)
        for i in range(500):
            raw = rng.randbytes(L.BRIDGE_ENTRY_SIZE)
            _n, hi, hb, hn, hf, mac, vrf, _nh, packets, label, nh_id, flags = L.BRIDGE_ENTRY.unpack(raw)
            want = BridgeEntry(i, hi, hb, hn, hf, mac, vrf, packets, label, nh_id, flags)
            self.assertEqual(parse_bridge_entry(raw, i), want)

    def test_short_entry_is_refused(self) -> None:
        with self.assertRaisesRegex(ValueError, "bridge entry 4: 10 bytes, expected 64"):
            parse_bridge_entry(bytes(10), 4)
        with self.assertRaisesRegex(ValueError, "flow entry 5: 300 bytes, expected 256"):
            parse_flow_entry(bytes(300), 5)

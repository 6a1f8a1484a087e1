"""The construct declarations of pcap headers and DHCP options give the bytes the former
hand-written ``struct`` code gave (kept here as the reference)."""

from __future__ import annotations

import random
import struct

from twisted.trial import unittest

from vrtwist.packet import dhcp as D
from vrtwist.packet import pcap as P
from vrtwist.packet.headers import PacketError
from vrtwist.vtest.pcap import PcapError, parse_pcap


def _reference_options(options: list[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for code, value in options:
        if not value:
            out += bytes((code, 0))
        for i in range(0, len(value), 255):
            chunk = value[i : i + 255]
            out += bytes((code, len(chunk))) + chunk
    out.append(255)
    return bytes(out)


def _reference_pcap(frames: list[bytes]) -> bytes:
    out = bytearray(struct.pack("<IHHiIII", P.MAGIC_US, 2, 4, 0, 0, 65535, 1))
    for f in frames:
        out += struct.pack("<IIII", 0, 0, len(f), len(f)) + f
    return bytes(out)


class DhcpOptionTests(unittest.TestCase):
    def test_encode_matches_the_reference(self) -> None:
        rng = random.Random(1)
        for _ in range(200):
            opts = [
                (rng.randrange(1, 255), rng.randbytes(rng.choice((0, 1, 4, 255, 256, 600))))
                for _ in range(rng.randrange(0, 6))
            ]
            self.assertEqual(D.encode_options(opts), _reference_options(opts))

    def test_parse_round_trip_with_pad_and_repeats(self) -> None:
        raw = b"\x00\x00" + D.encode_options([(53, b"\x01"), (121, bytes(300)), (12, b"")])
        got = D._options(raw)
        self.assertEqual(got, {53: b"\x01", 121: bytes(300), 12: b""})

    def test_options_after_end_are_ignored(self) -> None:
        self.assertEqual(D._options(b"\x35\x01\x03\xff\x0c\x01a"), {53: b"\x03"})

    def test_missing_length_byte_is_named(self) -> None:
        with self.assertRaisesRegex(D.DhcpError, "option 53 at offset 2 has no length byte"):
            D._options(b"\x00\x00\x35")

    def test_value_past_the_end_is_named(self) -> None:
        with self.assertRaisesRegex(D.DhcpError, "option 12 of 5 bytes runs past the message"):
            D._options(b"\x35\x01\x01\x0c\x05ab")

    def test_u32_is_big_endian(self) -> None:
        self.assertEqual(D.u32(3600), b"\x00\x00\x0e\x10")
        self.assertEqual(D.u32(-1), b"\xff\xff\xff\xff")


class PcapLayoutTests(unittest.TestCase):
    def test_dumps_matches_the_reference(self) -> None:
        frames = [bytes(range(60)), b"", bytes(1514)]
        self.assertEqual(P.dumps(frames), _reference_pcap(frames))

    def test_both_byte_orders_and_nanoseconds_read(self) -> None:
        for order, magic, ns in (("<", P.MAGIC_US, False), (">", P.MAGIC_US, False),
                                 ("<", P.MAGIC_NS, True), (">", P.MAGIC_NS, True)):  # fmt: skip
            data = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 9000, 1)
            data += struct.pack(order + "IIII", 5, 250, 3, 7) + b"abc"
            header, records = P.parse(data)
            self.assertEqual(header, P.PcapHeader(9000, 1, ns))
            self.assertEqual(records[0].data, b"abc")
            self.assertEqual(records[0].orig_len, 7)
            self.assertAlmostEqual(records[0].timestamp, 5 + 250 * (1e-9 if ns else 1e-6))
            self.assertEqual(parse_pcap(data), [b"abc"])

    def test_truncated_record_is_refused_by_both_readers(self) -> None:
        data = _reference_pcap([b"abcd"])[:-1]
        with self.assertRaisesRegex(PacketError, "claims 4 bytes, 3 left"):
            P.parse(data)
        with self.assertRaisesRegex(PcapError, "record 1: truncated data"):
            parse_pcap(data)
        with self.assertRaisesRegex(PcapError, "bad magic"):
            parse_pcap(b"\x00" * 24)

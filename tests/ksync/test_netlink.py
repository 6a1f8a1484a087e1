"""Netlink framing of the ksync channel (spec 3), byte for byte."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.ksync.netlink import (
    GENL_ID_VROUTER,
    NLM_F_MULTI,
    FrameReader,
    NetlinkFrameError,
    build_done,
    build_request,
    build_response,
    parse_message,
)
from vrtwist.sandesh import ADD, RESPONSE, encode, encode_many, schema

MPLS = schema.vr_mpls_req(h_op=ADD, mr_label=4, mr_nhid=21)


class BuildTests(SynchronousTestCase):
    def test_request_example(self) -> None:
        """Spec 3.2: 49-byte vr_mpls_req, family 0x20, seq 1."""
        data = build_request(encode(MPLS), seq=1, nl_type=GENL_ID_VROUTER)
        self.assertEqual(
            data[:24],
            bytes.fromhex("49000000 2000 0100 01000000 00000000 01 00 0000 3500 0100"),
        )
        self.assertEqual(data[24:], encode(MPLS))
        self.assertEqual(len(data), 73)

    def test_response_example_padded(self) -> None:
        """Spec 3.3: GET mpls 4 -> 79 payload bytes, Linux header 104 bytes with 1 pad byte."""
        req = parse_message(build_request(encode(MPLS), seq=7, nl_type=0x20, pid=99))
        payload = encode_many([schema.vr_response(h_op=RESPONSE), MPLS])
        self.assertEqual(len(payload), 79)
        data = build_response(payload, req, 0, pad=True, pid=99)
        self.assertEqual(len(data), 104)
        self.assertEqual(
            data[:24],
            bytes.fromhex("68000000 2000 0000 07000000 63000000 01 00 0000 4f00 0100"),
        )
        self.assertEqual(data[-1:], b"\x00")
        m = parse_message(data)
        self.assertEqual((m.nla_len, m.seq, m.nl_type), (79, 7, 0x20))

    def test_response_unpadded_echoes_headers(self) -> None:
        """DPDK: nlmsg_len = 24 + L; type, seq and genl header copied from the request."""
        raw = bytearray(build_request(b"", seq=0xDEADBEEF, nl_type=0x1234))
        raw[16:20] = b"\x01\x05\x07\x00"  # odd genl version/reserved, echoed as-is
        req = parse_message(bytes(raw))
        data = build_response(b"abc", req, NLM_F_MULTI)
        self.assertEqual(
            struct.unpack("<IHHII", data[:16]), (27, 0x1234, NLM_F_MULTI, 0xDEADBEEF, 0)
        )
        self.assertEqual(data[16:20], b"\x01\x05\x07\x00")
        self.assertEqual(data[20:24], b"\x03\x00\x01\x00")

    def test_done(self) -> None:
        req = parse_message(build_request(b"", seq=5, nl_type=0x20))
        self.assertEqual(build_done(req), struct.pack("<IHHII", 16, 3, 0, 5, 0))
        m = parse_message(build_done(req))
        self.assertTrue(m.is_done)
        self.assertFalse(m.is_multi)

    def test_parse_short(self) -> None:
        self.assertRaises(NetlinkFrameError, parse_message, b"\x00" * 20)


class FrameReaderTests(SynchronousTestCase):
    def test_byte_by_byte(self) -> None:
        frames = [build_request(encode(MPLS), seq=i) for i in range(3)]
        stream = b"".join(frames)
        r = FrameReader()
        got: list[bytes] = []
        for i in range(len(stream)):
            got += r.feed(stream[i : i + 1])
        self.assertEqual(got, frames)
        self.assertEqual(r.buffered, 0)

    def test_many_in_one_chunk_and_limit(self) -> None:
        frames = [build_request(encode(MPLS), seq=i) for i in range(10)]
        r = FrameReader()
        self.assertEqual(r.feed(b"".join(frames), limit=4), frames[:4])
        self.assertEqual(r.frames(), frames[4:])

    def test_oversize(self) -> None:
        r = FrameReader(max_frame=4096)
        with self.assertRaises(NetlinkFrameError) as cm:
            r.feed(struct.pack("<IHHII", 4097, 0, 0, 0, 0))
        self.assertIn("exceeds", str(cm.exception))

    def test_undersize(self) -> None:
        r = FrameReader(min_frame=24)
        ok = build_request(b"", seq=1)
        r.feed(ok)
        with self.assertRaises(NetlinkFrameError) as cm:
            r.feed(struct.pack("<IHHII", 16, 3, 0, 0, 0))
        self.assertEqual(cm.exception.offset, 24)

    def test_zero_length_rejected(self) -> None:
        """nlmsg_len 0 would loop forever if accepted."""
        self.assertRaises(NetlinkFrameError, FrameReader().feed, b"\x00" * 16)

    def test_buffer_compacts(self) -> None:
        r = FrameReader()
        one = build_request(encode(MPLS), seq=1)
        for _ in range(5000):
            r.feed(one + one[:10])
            r.feed(one[10:])
        self.assertLess(len(r._buf), 2 * len(one))


class DirectFeedTests(SynchronousTestCase):
    """Reads that start on a frame boundary are cut straight from the received bytes."""

    def test_frames_and_partial_tail(self) -> None:
        frames = [build_request(encode(MPLS), seq=i) for i in range(3)]
        data = b"".join(frames)
        r = FrameReader()
        self.assertEqual(r.feed(data + frames[0][:30]), frames)
        self.assertEqual(r.buffered, 30)
        self.assertEqual(r.feed(frames[0][30:]), [frames[0]])
        self.assertEqual(r.buffered, 0)
        self.assertEqual(r.feed(frames[1]), [frames[1]])

    def test_error_offset_counts_earlier_reads(self) -> None:
        one = build_request(encode(MPLS), seq=1)
        r = FrameReader(max_frame=4096)
        r.feed(one)
        with self.assertRaises(NetlinkFrameError) as cm:
            r.feed(one + struct.pack("<IHHII", 5000, 0, 0, 0, 0))
        self.assertEqual(cm.exception.offset, 2 * len(one))

"""The sans-IO codec: golden vectors from moby/vpnkit go/test_inputs, round trips, errors."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.vpnkit.frames import (
    HANDSHAKE,
    MAGIC,
    MAX_UDP_PAYLOAD,
    BadOpen,
    Close,
    Connection,
    Data,
    DataHeader,
    Destination,
    FrameDecoder,
    FrameError,
    HandshakeDecoder,
    HandshakeError,
    Open,
    Payload,
    Proto,
    Shutdown,
    UDPDecoder,
    UDPRecordError,
    Window,
    encode_frame,
    encode_handshake,
    encode_open,
    encode_udp_record,
    parse_frames,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


LOOPBACK6 = "00000000000000000000000000000001"

# moby/vpnkit:go/test_inputs/*.bin (spec section 1.3), complete files.
GOLDEN: dict[str, tuple[bytes, Any]] = {
    "close.bin": (h("0700 02 06000000"), Close(6)),
    "shutdown.bin": (h("0700 03 07000000"), Shutdown(7)),
    "window.bin": (h("0f00 05 09000000 38a2870000000000"), Window(9, 8888888)),
    "open_multiplexed_connection.bin": (
        h("1d00 01 05000000 02 02 1000" + LOOPBACK6 + "901f"),
        Open(5, Destination.udp("::1", 8080)),
    ),
    "open_multiplexed_unix_connection.bin": (
        h("1300 01 05000000 02 03 0800 2f746d702f666f6f"),
        Open(5, Destination.unix("/tmp/foo")),
    ),
}


class GoldenVectorTests(SynchronousTestCase):
    """Go's TestParse* cases: parse the OCaml-written files, re-serialise identically."""

    def test_vectors_parse_and_reencode(self) -> None:
        for name, (wire, frame) in GOLDEN.items():
            self.assertEqual(parse_frames(wire), [frame], name)
            self.assertEqual(encode_frame(frame), wire, name)

    def test_data_header(self) -> None:
        wire = h("0b00 04 08000000 80000000")
        self.assertEqual(FrameDecoder().feed(wire), [DataHeader(8, 128)])
        payload = bytes(range(128))
        self.assertEqual(encode_frame(Data(8, payload)), wire + payload)
        self.assertEqual(parse_frames(wire + payload), [Data(8, payload)])

    def test_open_dedicated_is_refused_not_fatal(self) -> None:
        wire = h("1100 01 04000000 01 01 0400 7f000001 901f")
        dec = FrameDecoder()
        events = dec.feed(wire + h("0700 02 06000000"))
        self.assertIsInstance(events[0], BadOpen)
        self.assertIn("Dedicated", events[0].reason)  # type: ignore[union-attr]
        self.assertEqual(events[1], Close(6))
        self.assertIsNone(dec.error)
        # and it re-encodes byte for byte (TestParseOpenDedicated)
        self.assertEqual(
            encode_open(4, Destination.tcp("127.0.0.1", 8080), Connection.DEDICATED), wire
        )
        # the same destination, Multiplexed, is an ordinary Open of 127.0.0.1:8080
        ok = encode_open(4, Destination.tcp("127.0.0.1", 8080))
        self.assertEqual(ok, h("1100 01 04000000 02 01 0400 7f000001 901f"))

    def test_v4_mapped_is_mapped_back_and_reencoded_as_16_bytes(self) -> None:
        wire = h("1d00 01 0a000000 02 01 1000 00000000000000000000ffff7f000001 5000")
        (frame,) = parse_frames(wire)
        assert isinstance(frame, Open)
        self.assertEqual(frame.destination.ip, ipaddress.IPv4Address("127.0.0.1"))
        self.assertEqual(frame.destination.ip_len, 16)
        self.assertEqual(str(frame.destination), "tcp:127.0.0.1:80")
        self.assertEqual(encode_frame(frame), wire)
        self.assertEqual(
            encode_frame(Open(10, Destination.tcp("127.0.0.1", 80, mapped=True))), wire
        )

    def test_v4_mapped_given_as_ipv6_is_normalised(self) -> None:
        d = Destination.tcp("::ffff:10.1.2.3", 22)
        self.assertEqual((str(d.ip), d.ip_len), ("10.1.2.3", 16))

    def test_ipv6_destination(self) -> None:
        d = Destination.tcp("2001:db8::5", 443)
        (frame,) = parse_frames(encode_open(3, d))
        assert isinstance(frame, Open)
        self.assertEqual(frame.destination, d)
        self.assertEqual(str(d), "tcp:[2001:db8::5]:443")


class HandshakeTests(SynchronousTestCase):
    def test_go_handshake_is_54_bytes(self) -> None:
        self.assertEqual(len(MAGIC), 52)
        self.assertEqual(HANDSHAKE, MAGIC + b"\x00\x00")
        self.assertEqual(len(HANDSHAKE), 54)

    def test_payload_round_trip_byte_by_byte(self) -> None:
        wire = encode_handshake(b"features") + b"\x07\x00"
        dec = HandshakeDecoder()
        rest = None
        for i in range(len(wire)):
            rest = dec.feed(wire[i : i + 1])
            if rest is not None:
                break
        self.assertEqual(dec.payload, b"features")
        self.assertEqual(rest, b"")

    def test_bytes_after_handshake_are_returned(self) -> None:
        dec = HandshakeDecoder()
        self.assertEqual(dec.feed(HANDSHAKE + b"abc"), b"abc")

    def test_bad_magic(self) -> None:
        with self.assertRaises(HandshakeError) as cm:
            HandshakeDecoder().feed(b"GET / HTTP/1.1\r\n")
        self.assertIn("bad magic", str(cm.exception))

    def test_bad_magic_detected_early(self) -> None:
        self.assertRaises(HandshakeError, HandshakeDecoder().feed, b"X")


class DecoderErrorTests(SynchronousTestCase):
    def test_unknown_command_is_fatal_with_offset(self) -> None:
        dec = FrameDecoder()
        events = dec.feed(h("0700 02 06000000") + h("0700 09 01000000") + h("0700 02 01000000"))
        self.assertEqual(events, [Close(6)])  # what came before is kept
        assert dec.error is not None
        self.assertIn("unknown command 9", str(dec.error))
        self.assertEqual(dec.error.offset, 7)
        self.assertEqual(dec.feed(h("0700 02 06000000")), [])  # dead afterwards

    def test_short_hdrlen_is_fatal(self) -> None:
        for wire in (
            h("0600 02 06000000"),
            h("0a00 04 08000000 01000000"),
            h("0e00 05 09000000 0100000000000000"),
        ):
            dec = FrameDecoder()
            dec.feed(wire)
            self.assertIsInstance(dec.error, FrameError, wire.hex())

    def test_extra_header_bytes_are_skipped(self) -> None:
        wire = h("0900 02 06000000 eeee") + h("0d00 04 08000000 02000000 ffff") + b"hi"
        self.assertEqual(parse_frames(wire), [Close(6), Data(8, b"hi")])

    def test_bad_destination_is_per_channel(self) -> None:
        cases = {
            "unknown destination protocol 9": h("0b00 01 05000000 02 09 0000 0000"),
            "ip length 5": h("1200 01 05000000 02 01 0500 7f00000001 5000"),
            "overruns": h("0d00 01 05000000 02 03 0800 2f74"),
            "connection type 7": h("1100 01 04000000 07 01 0400 7f000001 901f"),
        }
        for reason, wire in cases.items():
            dec = FrameDecoder()
            (ev,) = dec.feed(wire)
            assert isinstance(ev, BadOpen)
            self.assertIn(reason, ev.reason)
            self.assertIsNone(dec.error)

    def test_parse_frames_rejects_truncation(self) -> None:
        self.assertRaises(FrameError, parse_frames, h("0b00 04 08000000 80000000") + b"x")
        self.assertRaises(FrameError, parse_frames, h("0700 02"))

    def test_destination_validation(self) -> None:
        self.assertRaises(ValueError, Destination, Proto.TCP)
        self.assertRaises(ValueError, Destination, Proto.UNIX)
        self.assertRaises(ValueError, Destination.tcp, "1.2.3.4", 70000)
        self.assertRaises(
            ValueError, Destination, Proto.TCP, ipaddress.ip_address("::1"), 1, None, 4
        )

    def test_zero_length_data_accepted(self) -> None:
        self.assertEqual(parse_frames(h("0b00 04 08000000 00000000")), [Data(8, b"")])


def _feed_split(wire: bytes, cuts: list[int]) -> list[object]:
    dec = FrameDecoder()
    events: list[object] = []
    prev = 0
    for c in [*sorted(set(cuts)), len(wire)]:
        if c <= prev or c > len(wire):
            continue
        events.extend(dec.feed(wire[prev:c]))
        prev = c
    assert dec.error is None
    # reassemble payload pieces
    out: list[object] = []
    cur: list[bytes | memoryview] | None = None
    want = 0
    cid = 0
    for ev in events:
        if isinstance(ev, DataHeader):
            if ev.length == 0:
                out.append(Data(ev.id, b""))
            else:
                cur, want, cid = [], ev.length, ev.id
        elif isinstance(ev, Payload):
            assert cur is not None and ev.id == cid
            cur.append(ev.data)
            if sum(map(len, cur)) == want:
                out.append(Data(cid, b"".join(cur)))
                cur = None
        else:
            out.append(ev)
    return out


ids = st.integers(0, 0xFFFFFFFF)
ips = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
destinations = st.one_of(
    st.builds(Destination.tcp, ips, st.integers(0, 65535), st.booleans()),
    st.builds(Destination.udp, ips, st.integers(0, 65535), st.booleans()),
    st.builds(Destination.unix, st.text(min_size=1, max_size=40)),
)
frames = st.one_of(
    st.builds(Open, ids, destinations),
    st.builds(Close, ids),
    st.builds(Shutdown, ids),
    st.builds(Window, ids, st.integers(0, 2**64 - 1)),
    st.builds(Data, ids, st.binary(max_size=300)),
)


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(frames, max_size=12), st.lists(st.integers(0, 4000), max_size=10))
    def test_frames_round_trip_split_anywhere(self, fs: list[object], cuts: list[int]) -> None:
        wire = b"".join(encode_frame(f) for f in fs)  # type: ignore[arg-type]
        self.assertEqual(_feed_split(wire, cuts), fs)
        self.assertEqual(parse_frames(wire), fs)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.binary(max_size=2000), max_size=8),
        st.lists(st.integers(0, 20000), max_size=8),
        st.one_of(st.none(), st.ip_addresses().map(lambda a: a)),
    )
    def test_udp_records_round_trip_split_anywhere(
        self, dgrams: list[bytes], cuts: list[int], ip: object
    ) -> None:
        stream = b"".join(encode_udp_record(d, ip, 53 if ip else 0) for d in dgrams)  # type: ignore[arg-type]
        dec = UDPDecoder()
        got = []
        prev = 0
        for c in [*sorted(set(cuts)), len(stream)]:
            if prev < c <= len(stream):
                got.extend(dec.feed(stream[prev:c]))
                prev = c
        self.assertEqual([r.payload for r in got], dgrams)
        self.assertEqual(dec.buffered, 0)


class UDPRecordTests(SynchronousTestCase):
    def test_go_sends_three_data_frames(self) -> None:
        """Spec 1.9 observed: Data(2)=0f00, Data(8)=0000 0000 0000 0500, Data(5)=ping1."""
        dec = UDPDecoder()
        self.assertEqual(dec.feed(h("0f00")), [])
        self.assertEqual(dec.feed(h("0000 0000 0000 0500")), [])
        (rec,) = dec.feed(b"ping1")
        self.assertEqual(rec.payload, b"ping1")
        self.assertIsNone(rec.ip)
        self.assertEqual(encode_udp_record(b"ping1"), h("0f00 0000 0000 0000 0500") + b"ping1")

    def test_ocaml_style_address(self) -> None:
        rec = encode_udp_record(b"x", ipaddress.ip_address("10.0.0.1"), 5353)
        (r,) = UDPDecoder().feed(rec)
        self.assertEqual((str(r.ip), r.port, r.payload), ("10.0.0.1", 5353, b"x"))

    def test_limits(self) -> None:
        encode_udp_record(b"\0" * MAX_UDP_PAYLOAD)
        self.assertRaises(UDPRecordError, encode_udp_record, b"\0" * (MAX_UDP_PAYLOAD + 1))

    def test_malformed_records(self) -> None:
        self.assertRaises(UDPRecordError, UDPDecoder().feed, h("0500"))  # framelen < 10
        self.assertRaises(UDPRecordError, UDPDecoder().feed, h("0c00 0300 000000 0000 0000 0000"))
        # payload length disagrees with the record length
        self.assertRaises(UDPRecordError, UDPDecoder().feed, h("0c00 0000 0000 0000 0500 6869"))


class ConnectionEnumTests(SynchronousTestCase):
    def test_values(self) -> None:
        self.assertEqual((Connection.DEDICATED, Connection.MULTIPLEXED), (1, 2))
        self.assertEqual((Proto.TCP, Proto.UDP, Proto.UNIX), (1, 2, 3))

"""The binary-clean TELNET codec: byte by byte, any chunking, clear errors."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.vic import telnet as T
from vrtwist.vic.telnet import (
    Command,
    Negotiation,
    Subnegotiation,
    TelnetParser,
    TelnetProtocolError,
    encodeData,
    encodeNegotiation,
    encodeSubnegotiation,
)


def feedAll(chunks: list[bytes]) -> list[object]:
    p = TelnetParser()
    out: list[object] = []
    for c in chunks:
        out.extend(p.feed(c))
    # merge adjacent data events so that chunking does not matter
    merged: list[object] = []
    for ev in out:
        if isinstance(ev, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] = merged[-1] + ev
        else:
            merged.append(ev)
    return merged


class ParserTests(SynchronousTestCase):
    def test_plain_data_passes_untouched(self) -> None:
        data = b"login:\r\n\r\x00\nCR LF NUL stay as they are\r"
        self.assertEqual(TelnetParser().feed(data), [data])

    def test_all_256_values_round_trip(self) -> None:
        data = bytes(range(256)) * 4
        self.assertEqual(feedAll([encodeData(data)]), [data])

    def test_doubled_iac_across_chunk_boundary(self) -> None:
        wire = encodeData(b"a\xffb")
        self.assertEqual(feedAll([wire[:2], wire[2:]]), [b"a\xffb"])

    def test_negotiations_and_commands(self) -> None:
        wire = b"x" + encodeNegotiation(T.WILL, 37) + b"\xff\xf1" + b"y"
        self.assertEqual(feedAll([wire]), [b"x", Negotiation(T.WILL, 37), Command(T.NOP), b"y"])

    def test_subnegotiation_with_iac_in_sequence(self) -> None:
        """The capture's VMOTION-BEGIN: sequence 76 19 ff e9 travels as 76 19 ff ff e9."""
        wire = bytes.fromhex("fffae828761 9ffffe9fff0".replace(" ", ""))
        self.assertEqual(TelnetParser().feed(wire), [Subnegotiation(232, b"\x28\x76\x19\xff\xe9")])
        self.assertEqual(encodeSubnegotiation(232, b"\x28\x76\x19\xff\xe9"), wire)

    def test_every_split_point_gives_the_same_events(self) -> None:
        wire = (
            b"ab"
            + encodeData(b"\xff\xff\x00")
            + encodeNegotiation(T.DO, 0)
            + encodeSubnegotiation(232, b"\x46Shello\xff")
            + b"\r\n"
        )
        whole = feedAll([wire])
        for i in range(len(wire)):
            for j in range(i, len(wire)):
                self.assertEqual(feedAll([wire[:i], wire[i:j], wire[j:]]), whole)

    def test_incomplete_command_is_held(self) -> None:
        p = TelnetParser()
        self.assertEqual(p.feed(b"ab\xff"), [b"ab"])
        self.assertEqual(p.pending_bytes, 1)
        self.assertEqual(p.feed(b"\xfb"), [])
        self.assertEqual(p.feed(b"\x00cd"), [Negotiation(T.WILL, 0), b"cd"])

    def test_se_outside_subnegotiation_is_an_error_with_offset(self) -> None:
        p = TelnetParser()
        p.feed(b"12345")
        with self.assertRaises(TelnetProtocolError) as cm:
            p.feed(b"67\xff\xf0")
        self.assertEqual(cm.exception.offset, 7)

    def test_error_carries_the_events_before_it(self) -> None:
        with self.assertRaises(TelnetProtocolError) as cm:
            TelnetParser().feed(b"abc\xff\xfb\x00de\xff\xfff\xff\xf0tail")
        self.assertEqual(cm.exception.events, [b"abc", Negotiation(T.WILL, 0), b"de\xfff"])

    def test_bad_command_inside_subnegotiation(self) -> None:
        with self.assertRaises(TelnetProtocolError):
            TelnetParser().feed(b"\xff\xfa\xe8\x28\xff\xfb\x00")

    def test_oversized_subnegotiation_is_refused(self) -> None:
        p = TelnetParser(maxSubnegotiation=64)
        p.feed(b"\xff\xfa\xe8" + b"a" * 50)
        with self.assertRaises(TelnetProtocolError):
            p.feed(b"b" * 50)

    def test_data_before_a_bad_command_is_delivered_first(self) -> None:
        """Nothing before the error is lost: events are produced per call, error raised after."""
        p = TelnetParser()
        self.assertEqual(p.feed(b"good"), [b"good"])
        self.assertRaises(TelnetProtocolError, p.feed, b"\xff\xf0")


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=6))
    def test_data_round_trip_any_chunking(self, data: bytes, cuts: list[int]) -> None:
        wire = encodeData(data)
        points = sorted({min(c, len(wire)) for c in cuts})
        chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)])]
        got = b"".join(e for e in feedAll(chunks) if isinstance(e, bytes))
        self.assertEqual(got, data)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=100), st.binary(max_size=100), st.binary(max_size=100))
    def test_subnegotiation_between_data(self, a: bytes, payload: bytes, b: bytes) -> None:
        wire = encodeData(a) + encodeSubnegotiation(232, payload) + encodeData(b)
        expect: list[Any] = (
            ([a] if a else []) + [Subnegotiation(232, payload)] + ([b] if b else [])
        )
        self.assertEqual(feedAll([wire]), expect)


def _ext(e: object) -> bool:
    return isinstance(e, Subnegotiation) and e.option == 232


class LookaheadTests(SynchronousTestCase):
    """``lookahead``: where the first option-232 command ends, parser untouched."""

    def test_prefix_ends_exactly_after_the_command(self) -> None:
        cmd = encodeSubnegotiation(232, b"\x28\x76\x19\xff\xe9")  # BEGIN, 0xFF in the sequence
        wire = encodeData(b"held \xff\xf0 bytes") + cmd + encodeData(b"after")
        p = TelnetParser()
        end = p.lookahead(wire, _ext)
        self.assertEqual(wire[:end], encodeData(b"held \xff\xf0 bytes") + cmd)
        self.assertEqual(p.pending_bytes, 0)  # unchanged
        # feeding that prefix gives the command as its last event
        self.assertEqual(p.feed(wire[:end])[-1], Subnegotiation(232, b"\x28\x76\x19\xff\xe9"))

    def test_no_command_in_view(self) -> None:
        p = TelnetParser()
        self.assertIsNone(p.lookahead(encodeData(b"\xff\xf0" * 10), _ext))
        self.assertIsNone(p.lookahead(b"\xff\xfa\xe8\x28\x01", _ext))  # not complete yet
        self.assertIsNone(p.lookahead(encodeSubnegotiation(24, b"xterm"), _ext))  # other option

    def test_continues_the_parsers_pending_bytes(self) -> None:
        p = TelnetParser()
        self.assertEqual(p.feed(b"ab\xff\xfa\xe8\x28"), [b"ab"])
        end = p.lookahead(b"\x01\x02\xff\xf0rest", _ext)
        self.assertEqual(end, 4)
        self.assertEqual(p.feed(b"\x01\x02\xff\xf0"), [Subnegotiation(232, b"\x28\x01\x02")])

    def test_bad_bytes_give_none_and_leave_the_parser_alone(self) -> None:
        p = TelnetParser()
        self.assertIsNone(p.lookahead(b"x\xff\xfa\xe8\xff\x01\xff\xf0", _ext))
        self.assertEqual(p.feed(b"ok"), [b"ok"])

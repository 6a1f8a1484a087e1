"""Framing of the Contrail XMPP stream: golden header bytes, the mid-stream XML
declaration, keepalives, chunking, and every way a peer can send garbage."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.xmpp.framing import (
    KEEPALIVE,
    FramingError,
    Keepalive,
    StanzaBytes,
    StanzaSplitter,
    StreamEnd,
    StreamHeader,
    build_stream_open,
    build_stream_response,
    parse_stream_header,
)

# The agent's stream open from a real capture (spec A.1), byte for byte.
REAL_AGENT_OPEN = (
    b'<stream:stream from="worker-3" to="network-control@contrailsystems.com" version="1.0" '
    b'xml:lang="en" xmlns="" xmlns:stream="http://etherx.jabber.org/streams"  >'
)
REAL_SERVER_OPEN = (
    b'<stream:stream from="cn1" to="worker-3" id="++123" version="1.0" xml:lang="en" '
    b'xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams"  >'
)
CONFIG_IQ = (
    b'<?xml version="1.0"?>\n<iq type="set" from="network-control@contrailsystems.com" '
    b'to="default-global-system-config:os2/config"><config><update>'
    b'<node type="virtual-machine"><name>213d8cec</name><id-perms><uuid>x</uuid></id-perms>'
    b"</node></update></config></iq>"
)
ROUTE_MSG = (
    b'<message from="network-control@contrailsystems.com" to="worker-3/bgp-peer">'
    b'<event xmlns="http://jabber.org/protocol/pubsub"><items node="1/1/vrf">'
    b'<retract id="2.0.0.2/32" /></items></event></message>'
)


def units(events: list[Any]) -> list[Any]:
    return [e for e in events if not isinstance(e, Keepalive)]


class StreamHeaderTests(SynchronousTestCase):
    def test_agent_open_is_the_real_bytes(self) -> None:
        self.assertEqual(build_stream_open("worker-3"), REAL_AGENT_OPEN)

    def test_server_open_is_the_real_template(self) -> None:
        self.assertEqual(build_stream_response("cn1", "worker-3"), REAL_SERVER_OPEN)

    def test_parse_header_attributes(self) -> None:
        h = parse_stream_header(REAL_AGENT_OPEN)
        self.assertEqual(h.from_, "worker-3")
        self.assertEqual(h.to, "network-control@contrailsystems.com")
        self.assertEqual(h.attributes["xmlns"], "")
        self.assertEqual(list(h.attributes)[-1], "xmlns:stream")

    def test_header_with_declaration_in_front(self) -> None:
        # The 2013 capture shows the server answer preceded by an XML declaration.
        [h] = StanzaSplitter().feed(b'<?xml version="1.0"?>' + REAL_SERVER_OPEN)
        assert isinstance(h, StreamHeader)
        self.assertEqual(h.attributes["id"], "++123")

    def test_escaped_hostname_round_trips(self) -> None:
        [h] = StanzaSplitter().feed(build_stream_open('a"b<c'))
        assert isinstance(h, StreamHeader)
        self.assertEqual(h.from_, 'a"b<c')

    def test_header_without_stream_ns_last_is_refused(self) -> None:
        s = StanzaSplitter()
        bad = b'<stream:stream xmlns:stream="http://etherx.jabber.org/streams" from="x" ' + b"a" * 5000
        with self.assertRaises(FramingError) as cm:
            s.feed(bad)
        self.assertIn("xmlns:stream", str(cm.exception))


class SplitTests(SynchronousTestCase):
    def test_stream_of_units(self) -> None:
        data = REAL_AGENT_OPEN + KEEPALIVE + CONFIG_IQ + b"\n  " + ROUTE_MSG + b"</stream:stream>"
        events = StanzaSplitter().feed(data)
        kinds = [type(e).__name__ for e in events]
        self.assertEqual(
            kinds, ["StreamHeader", "Keepalive", "StanzaBytes", "Keepalive", "StanzaBytes", "StreamEnd"]
        )
        # The mid-stream XML declaration stays with its stanza, as in the real framer.
        assert isinstance(events[2], StanzaBytes)
        self.assertTrue(events[2].data.startswith(b'<?xml version="1.0"?>'))
        self.assertEqual(events[2].name, "iq")
        self.assertEqual(events[4], StanzaBytes("message", ROUTE_MSG))

    def test_keepalive_alone(self) -> None:
        self.assertEqual(StanzaSplitter().feed(KEEPALIVE), [Keepalive()])
        self.assertEqual(StanzaSplitter().feed(b" \n"), [Keepalive()])

    def test_byte_by_byte_equals_one_chunk(self) -> None:
        data = REAL_AGENT_OPEN + CONFIG_IQ + KEEPALIVE + ROUTE_MSG + ROUTE_MSG
        whole = units(StanzaSplitter().feed(data))
        s = StanzaSplitter()
        pieces: list[Any] = []
        for i in range(len(data)):
            pieces.extend(s.feed(data[i : i + 1]))
        self.assertEqual(units(pieces), whole)
        self.assertEqual(s.buffered, 0)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=40))
    def test_any_chunking(self, cuts: list[int]) -> None:
        data = REAL_AGENT_OPEN + (CONFIG_IQ + KEEPALIVE + ROUTE_MSG) * 3 + b"</stream:stream>"
        whole = units(StanzaSplitter().feed(data))
        s = StanzaSplitter()
        out: list[Any] = []
        pos = 0
        for c in cuts:
            out.extend(s.feed(data[pos : pos + c]))
            pos += c
        out.extend(s.feed(data[pos:]))
        self.assertEqual(units(out), whole)

    def test_close_tag_with_space(self) -> None:
        data = b'<iq type="set"><x/></iq >'
        self.assertEqual(StanzaSplitter().feed(data), [StanzaBytes("iq", data)])

    def test_self_closing_iq_is_never_framed(self) -> None:
        s = StanzaSplitter(max_stanza=100)
        self.assertEqual(s.feed(b'<iq type="set"/>'), [])
        with self.assertRaises(FramingError):
            s.feed(b" " * 100)

    def test_starttls_units(self) -> None:
        data = (
            b'<stream:features><starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls"><required/>'
            b'</starttls></stream:features><proceed xmlns="urn:ietf:params:xml:ns:xmpp-tls"/>'
        )
        events = StanzaSplitter().feed(data)
        self.assertEqual([e.name for e in events if isinstance(e, StanzaBytes)],
                         ["stream:features", "proceed"])

    def test_large_buffer_is_compacted(self) -> None:
        s = StanzaSplitter()
        for _ in range(2000):
            s.feed(ROUTE_MSG)
        self.assertLess(len(s._buf), 70000)


class BadInputTests(SynchronousTestCase):
    def test_garbage_bytes(self) -> None:
        s = StanzaSplitter()
        with self.assertRaises(FramingError) as cm:
            s.feed(b"\x00\x01GET / HTTP/1.0\r\n")
        self.assertIn("unexpected byte 0x00", str(cm.exception))

    def test_unknown_element(self) -> None:
        with self.assertRaises(FramingError) as cm:
            StanzaSplitter().feed(b"<presence/>")
        self.assertIn("presence", str(cm.exception))

    def test_partial_unknown_element_waits(self) -> None:
        s = StanzaSplitter()
        self.assertEqual(s.feed(b"<mess"), [])
        self.assertEqual(len(s.feed(b'age><event xmlns="x"/></message>')), 1)

    def test_doctype_outside_stanza(self) -> None:
        with self.assertRaises(FramingError) as cm:
            StanzaSplitter().feed(b'<!DOCTYPE x [<!ENTITY a "b">]><iq></iq>')
        self.assertIn("DTD", str(cm.exception))

    def test_comment_is_skipped(self) -> None:
        events = StanzaSplitter().feed(b"<!-- hi -->" + ROUTE_MSG)
        self.assertEqual(events[-1].data, b"<!-- hi -->" + ROUTE_MSG)  # type: ignore[union-attr]

    def test_oversized_complete_stanza(self) -> None:
        s = StanzaSplitter(max_stanza=64)
        with self.assertRaises(FramingError) as cm:
            s.feed(b"<iq>" + b"x" * 100 + b"</iq>")
        self.assertIn("exceeds the limit of 64", str(cm.exception))

    def test_oversized_incomplete_stanza(self) -> None:
        s = StanzaSplitter(max_stanza=1000)
        s.feed(b"<message>")
        with self.assertRaises(FramingError):
            for _ in range(20):
                s.feed(b"y" * 100)

    def test_error_offset_counts_the_stream(self) -> None:
        s = StanzaSplitter()
        s.feed(ROUTE_MSG)
        with self.assertRaises(FramingError) as cm:
            s.feed(b"junk")
        self.assertEqual(cm.exception.offset, len(ROUTE_MSG))

    def test_stream_end(self) -> None:
        self.assertEqual(StanzaSplitter().feed(b"</stream:stream>"), [StreamEnd()])

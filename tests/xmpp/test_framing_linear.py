"""The framer's work is linear in the bytes fed, however they are split.

Counted with ``StanzaSplitter.scanned`` (bytes examined by its searches), not a clock:
256 KiB of declarations or comments fed in 8-byte pieces examine no more bytes than the
same stream fed at once, give the same units, and lose nothing that follows.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.xmpp.framing import StanzaBytes, StanzaSplitter

IQ = b'<iq type="set" from="a"><pubsub/></iq>'
MESSAGE = b'<message from="cn"><event/></message>'
SIZE = 256 * 1024


def feed(data: bytes, piece: int) -> tuple[list[tuple[str, bytes]], int]:
    s = StanzaSplitter()
    out = []
    for i in range(0, len(data), piece):
        out.extend(s.feed(data[i : i + piece]))
    self_check = s.buffered
    assert self_check == 0, self_check
    return [(e.name, e.data) for e in out if isinstance(e, StanzaBytes)], s.scanned


class LinearTests(SynchronousTestCase):
    def check(self, data: bytes, units: int) -> None:
        whole, scanned_whole = feed(data, len(data))
        pieces, scanned_pieces = feed(data, 8)
        self.assertEqual(pieces, whole)
        self.assertEqual(len(whole), units)
        # Each byte is examined about once either way (a search may look back a few
        # bytes for a delimiter split over two pieces).
        self.assertLessEqual(scanned_whole, len(data))
        self.assertLessEqual(scanned_pieces, 2 * len(data))

    def test_one_long_processing_instruction(self) -> None:
        self.check(b"<?x " + b"a" * SIZE + b"?>" + IQ + MESSAGE, 2)

    def test_one_long_comment(self) -> None:
        self.check(b"<!-- " + b"a" * SIZE + b" -->" + MESSAGE + IQ, 2)

    def test_many_declarations_in_front_of_one_stanza(self) -> None:
        unit = b"<?a b?>\n<!-- c -->\n"
        self.check(unit * (SIZE // len(unit)) + IQ + MESSAGE, 2)

    def test_many_units_each_with_a_declaration(self) -> None:
        unit = b'<?xml version="1.0"?>\n<!-- x -->' + MESSAGE
        n = SIZE // len(unit)
        self.check(unit * n, n)

    def test_whitespace_between_declarations(self) -> None:
        self.check(b"<?a?>" + b" \n" * (SIZE // 2) + b"<!---->" + IQ, 1)

    def test_long_stanza_bodies(self) -> None:
        body = b'<iq type="set" from="a"><pubsub>' + b"x" * SIZE + b"</pubsub></iq>"
        self.check(body + b"<message from='cn'>" + b"y" * SIZE + b"</message>", 2)

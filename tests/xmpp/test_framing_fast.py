"""The splitter's fast path for ``<iq>`` / ``<message>`` agrees with the general path."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.xmpp.framing import FramingError, StanzaBytes, StanzaSplitter

HEADER = (
    b'<stream:stream from="a" to="b" version="1.0" xmlns="jabber:client" '
    b'xmlns:stream="http://etherx.jabber.org/streams">'
)


def _units(chunks: list[bytes], max_stanza: int | None = None) -> list[bytes]:
    sp = StanzaSplitter() if max_stanza is None else StanzaSplitter(max_stanza=max_stanza)
    sp.feed(HEADER)
    out: list[bytes] = []
    for c in chunks:
        out.extend(e.data for e in sp.feed(c) if isinstance(e, StanzaBytes))
    return out


class FastPathTests(SynchronousTestCase):
    def test_split_anywhere(self) -> None:
        """Every split point yields the same units as one read, close tags with spaces too."""
        data = (
            b'<iq type="set" id="1"><pubsub/></iq>'
            b'<message from="x"><event/></message >'
            b'<iq type="set" id="2"><a>&lt;/iq&gt;</a></iq\n>'
            b'<iq type="get" id="3"/></iq>'
        )
        whole = _units([data])
        self.assertEqual(len(whole), 4)
        self.assertTrue(whole[1].endswith(b"</message >"))
        for cut in range(1, len(data)):
            self.assertEqual(_units([data[:cut], data[cut:]]), whole, cut)

    def test_close_tag_not_iq(self) -> None:
        """"</iqx>" is not the close tag: the unit runs to the real one."""
        data = b'<iq type="set"><iqx></iqx></iq>'
        self.assertEqual(_units([data]), [data])

    def test_limit_still_applies(self) -> None:
        """A complete stanza over the size limit is refused on the fast path too."""
        data = b'<iq type="set">' + b"x" * 200 + b"</iq>"
        sp = StanzaSplitter(max_stanza=100)
        sp.feed(HEADER)
        self.assertRaises(FramingError, sp.feed, data)

    def test_limit_applies_to_a_unit_arriving_in_pieces(self) -> None:
        """An <iq> with no close tag yet is refused once it outgrows the limit."""
        sp = StanzaSplitter(max_stanza=100)
        sp.feed(HEADER)
        self.assertEqual(sp.feed(b'<iq type="set">' + b"x" * 50), [])
        self.assertRaises(FramingError, sp.feed, b"x" * 60)

    def test_three_way_split_of_large_units(self) -> None:
        """Units larger than a read, split in three anywhere, resume their close-tag search
        and give the same units (the search never restarts from the unit's start)."""
        body = b"".join(b"<item>%d</item>" % i for i in range(40))
        data = (b'<iq type="set" id="1">' + body + b"</iq>"
                b'<message from="x">' + body + b"</message>"
                b'<iq type="set" id="2">' + body + b"</iq>")
        whole = _units([data])
        self.assertEqual(len(whole), 3)
        for a in range(1, len(data), 37):
            for b in range(a + 1, len(data), 53):
                self.assertEqual(_units([data[:a], data[a:b], data[b:]]), whole, (a, b))

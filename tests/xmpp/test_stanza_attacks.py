"""Hostile stanzas: DTD smuggling, entity bombs, bad numbers, deep nesting.

Each is refused with :class:`StanzaError` (and nothing else), in bounded memory, and the
fast path never accepts what the full parser refuses.
"""

from __future__ import annotations

import tracemalloc

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.xmpp.stanzas import (
    PUBSUB_NS,
    NextHop,
    RouteEntry,
    RouteUpdate,
    StanzaError,
    build_config,
    build_route_publish,
    build_route_update,
    parse_fast,
    parse_stanza,
    parse_stanza_full,
)

XMLNS = f' xmlns="{PUBSUB_NS}"'.encode()


def laughs(depth: int = 9, width: int = 10) -> bytes:
    """An internal subset whose last entity expands to ``width ** depth`` copies."""
    decl = b'<!ENTITY e0 "' + b"A" * 100 + b'">'
    for i in range(1, depth + 1):
        decl += b"<!ENTITY e%d \"%s\">" % (i, (b"&e%d;" % (i - 1)) * width)
    return decl


def smuggled(inner: bytes) -> bytes:
    """The reported bypass: every ``<!`` written ``<`` + pubsub xmlns + ``!``.

    The framer sees one processing instruction from ``<?a`` to the first ``?>``; a
    parser fed the bytes with the pubsub xmlns removed saw ``<?a ?>``, then a DTD.
    """
    return (
        b"<?a ?" + XMLNS + b"><" + XMLNS + b"!DOCTYPE message ["
        + inner.replace(b"<!", b"<" + XMLNS + b"!") + b"]><?b ?>"
        b'<message from="cn" to="a/bgp-peer"><event' + XMLNS + b'><items node="1/1/&e9;">'
        b"</items></event></message>"
    )


def inet(prefix: str = "10.0.0.7/32") -> RouteEntry:
    return RouteEntry(1, 1, prefix, (NextHop("127.0.0.3", 33, ("udp",)),), virtual_network="vn")


def route_update(data: bytes) -> RouteUpdate:
    stanza = parse_stanza(data)
    assert isinstance(stanza, RouteUpdate), stanza
    return stanza


class RefusedTests(SynchronousTestCase):
    def refused(self, data: bytes, fragment: str) -> StanzaError:
        tracemalloc.start()
        try:
            with self.assertRaises(StanzaError) as cm:
                parse_stanza(data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertIn(fragment, str(cm.exception))
        self.assertIs(type(cm.exception), StanzaError)
        self.assertLess(peak, 4 * len(data) + (256 << 10))  # nothing expanded
        self.assertIsNone(parse_fast(data))
        error: StanzaError = cm.exception
        return error

    def test_smuggled_doctype_is_never_a_dtd(self) -> None:
        # Bytes are parsed as received: the "DTD" is text inside a processing
        # instruction, and &e9; is then an undefined entity.
        self.refused(smuggled(laughs()), "undefined entity")

    def test_billion_laughs(self) -> None:
        data = (b"<!DOCTYPE message [" + laughs() + b']><message from="cn"><event>'
                b'<items node="1/1/&e9;"/></event></message>')
        self.refused(data, "refused: a document type declaration")
        self.refused(b'<?xml version="1.0"?>' + data, "refused: a document type declaration")

    def test_external_entity(self) -> None:
        self.refused(b'<!DOCTYPE iq SYSTEM "file:///etc/passwd"><iq>&x;</iq>',
                     "refused: a document type declaration")
        self.refused(b'<!DOCTYPE iq [<!ENTITY x SYSTEM "file:///etc/passwd">]><iq>&x;</iq>',
                     "refused: a document type declaration")

    def test_parameter_entity(self) -> None:
        self.refused(b'<!DOCTYPE iq [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd">%p;]>'
                     b"<iq/>", "refused: a document type declaration")

    def test_dtd_in_utf16(self) -> None:
        # A byte search for "<!" does not see it in UTF-16; the parser does.
        doc = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE iq [<!ENTITY a "b">]><iq>&a;</iq>'
        self.refused(doc.encode("utf-16"), "refused: a document type declaration")
        self.refused(doc.encode("utf-16-le"), "refused: a document type declaration")
        self.refused(doc.encode("utf-8"), "refused: a document type declaration")


class OnlyStanzaErrorTests(SynchronousTestCase):
    def refused(self, data: bytes, fragment: str) -> None:
        with self.assertRaises(StanzaError) as cm:
            parse_stanza(data)
        self.assertIn(fragment, str(cm.exception))
        self.assertIsNone(parse_fast(data))

    def message(self, node: str) -> bytes:
        return build_route_update("cn", "a/bgp-peer", node, [inet()])

    def test_non_ascii_digits_in_node(self) -> None:
        for node in ("\u00b2/1/v", "1/\u0663/v", "\uff11/1/v"):
            self.refused(self.message(node), "is not afi/safi/vrf")
        self.refused(b'<message><event><items node="&#178;/1/v"/></event></message>',
                     "is not afi/safi/vrf")

    def test_huge_numbers(self) -> None:
        self.refused(self.message("9" * 5000 + "/1/v"), "is not afi/safi/vrf")
        self.refused(self.message("1/" + "1" * 5000 + "/v"), "is not afi/safi/vrf")
        for field in (b"label", b"sequence-number", b"med", b"af"):
            data = build_route_update("cn", "a/bgp-peer", "1/1/v", [inet()])
            start = data.index(b"<%s>" % field) + len(field) + 2
            stop = data.index(b"</%s>" % field, start)
            for bad in (b"9" * 5000, "\u0663".encode(), b"1_0", b"0x1"):
                self.refused(data[:start] + bad + data[stop:], "is not an integer")

    def test_config_nested_deep(self) -> None:
        deep = "<a>" * 1000 + "x" + "</a>" * 1000
        data = build_config("a").replace(
            b"<config></config>",
            b'<config><update><node type="t"><name>n</name>' + deep.encode()
            + b"</node></update></config>",
        )
        self.refused(data, "config nested deeper than 32")

    def test_unexpected_exception_becomes_stanza_error(self) -> None:
        # Whatever a field check misses is still a StanzaError, never a bare ValueError.
        # (the fast path and the tree parser each call the items-node check)
        from vrtwist.xmpp import _fastparse, _tree

        saved = getattr(_tree, "_items_family")

        def broken(node: str) -> tuple[int, int] | None:
            raise ValueError("missed")

        setattr(_tree, "_items_family", broken)
        setattr(_fastparse, "_items_family", broken)
        try:
            for data in (self.message("1/1/v"), self.message("1/1/v").replace(b"<item ", b"<item  ")):
                with self.assertRaises(StanzaError) as cm:
                    parse_stanza(data)
                self.assertIn("stanza not understood (ValueError)", str(cm.exception))
        finally:
            setattr(_tree, "_items_family", saved)
            setattr(_fastparse, "_items_family", saved)

    def test_good_stanzas_still_parse(self) -> None:
        self.assertEqual(route_update(self.message("1/1/v")).items, (inet(),))
        self.assertEqual(route_update(self.message("1/241/v")).items, ())


class FastMatchesFullTests(SynchronousTestCase):
    """The fast path accepts only what the full parser accepts, and reads it the same."""

    def variants(self) -> list[bytes]:
        base = [
            build_route_publish("a", "v", inet(), True),
            build_route_update("cn", "a/bgp-peer", "1/1/v", [inet(), inet("10.0.0.8/32")]),
        ]
        out = []
        for data in base:
            text = data.decode()
            for bad in ("\ufffe", "\uffff", "\x7f", "\u0085", "\t", "&amp;", "]]>", "\u00e9"):
                out.append(text.replace('"v', '"v' + bad, 1).encode())
                out.append(text.replace(">vn<", ">vn" + bad + "<", 1).encode())
            for node in ("1/241/v", "9/9/v", "\u00b2/1/v"):
                out.append(text.replace("1/1/v", node).encode())
        return out

    def test_fast_never_accepts_what_full_refuses(self) -> None:
        checked = 0
        for data in self.variants():
            fast = parse_fast(data)
            try:
                full = parse_stanza_full(data)
            except StanzaError:
                self.assertIsNone(fast, data)
                checked += 1
                continue
            if fast is not None:
                self.assertEqual(fast, full)
                checked += 1
        self.assertGreater(checked, 10)

"""The hardened XML entry point refuses every DTD and entity form, in bounded memory."""

from __future__ import annotations

import tracemalloc

from twisted.trial.unittest import SynchronousTestCase

from vrtwist import xmlsafe

_LAUGHS = (
    b'<!DOCTYPE m [<!ENTITY a "' + b"a" * 1000 + b'">'
    + b"".join(
        b"<!ENTITY %c \"%s\">" % (ord("b") + i, (b"&%c;" % (ord("a") + i)) * 10)
        for i in range(8)
    )
    + b']><m node="&i;">&i;</m>'
)


class RefusalTests(SynchronousTestCase):
    def refused(self, data: bytes, why: str, **kw: object) -> None:
        tracemalloc.start()
        try:
            e = self.assertRaises(xmlsafe.XmlRefused, xmlsafe.parse, data, **kw)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertIn(why, str(e))
        # Refused before anything expanded: far less than the 1e11 bytes it would make.
        self.assertLess(peak, 1 << 20)

    def test_billion_laughs(self) -> None:
        self.refused(_LAUGHS, "document type declaration")

    def test_external_entity(self) -> None:
        self.refused(b'<!DOCTYPE m SYSTEM "file:///etc/passwd"><m>&x;</m>', "document type")
        self.refused(
            b'<!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><m>&x;</m>', "document type"
        )

    def test_parameter_entity(self) -> None:
        self.refused(
            b'<!DOCTYPE m [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]><m/>',
            "document type",
        )

    def test_dtd_in_another_encoding(self) -> None:
        data = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE m [<!ENTITY a "b">]><m>&a;</m>'
        self.refused(data.encode("utf-16"), "document type")

    def test_depth_bound(self) -> None:
        deep = b"<a>" * 1000 + b"</a>" * 1000
        self.refused(deep, "nesting deeper than 32", max_depth=32)
        # Unbounded by default, and a depth at the bound is accepted.
        self.assertEqual(xmlsafe.parse(deep).tag, "a")
        ok = b"<a>" * 32 + b"</a>" * 32
        self.assertEqual(xmlsafe.parse(ok, max_depth=32).tag, "a")

    def test_undefined_entity_is_malformed(self) -> None:
        e = self.assertRaises(xmlsafe.XmlError, xmlsafe.parse, b"<m>&lol;</m>")
        self.assertNotIsInstance(e, xmlsafe.XmlRefused)
        self.assertIn("undefined entity", str(e))

    def test_malformed(self) -> None:
        for data in (b"", b"<m>", b"<m></n>", b"\xff\xfe<m/>", b"<m/><n/>"):
            self.assertRaises(xmlsafe.XmlError, xmlsafe.parse, data, encoding="utf-8")


class AcceptTests(SynchronousTestCase):
    def test_tree_as_written(self) -> None:
        root = xmlsafe.parse(
            b'<?xml version="1.0"?><!-- c --><stream:features xmlns:stream="s">'
            b'<starttls xmlns="urn:t"><required/></starttls>&lt;&#65;<![CDATA[<x>]]>'
            b"</stream:features>"
        )
        self.assertEqual(root.tag, "stream:features")
        self.assertEqual(root[0].tag, "starttls")
        self.assertEqual(root[0].get("xmlns"), "urn:t")
        self.assertEqual(root[0][0].tag, "required")
        self.assertEqual(root[0].tail, "<A<x>")

    def test_predefined_and_character_references(self) -> None:
        root = xmlsafe.parse(b'<m a="&quot;&amp;&#x263A;">&apos;&gt;</m>')
        self.assertEqual(root.get("a"), '"&\u263a')
        self.assertEqual(root.text, "'>")

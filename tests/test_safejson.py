"""The one JSON decoder for peer bodies: depth bound, UTF-8 only, strings checked."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.safejson import MAX_DEPTH, JsonInputError, decode_json


class DecodeTests(SynchronousTestCase):
    def refused(self, raw: bytes) -> JsonInputError:
        with self.assertRaises(JsonInputError) as cm:
            decode_json(raw)
        return cm.exception

    def test_values_pass_through(self) -> None:
        value = {"a": [1, 2.5, None, True, {"b": "é ü 中 \U0001f600"}], "c": ""}
        self.assertEqual(decode_json(json.dumps(value).encode()), value)
        self.assertEqual(decode_json(json.dumps(value, ensure_ascii=False).encode()), value)

    def test_depth_bound_is_exact(self) -> None:
        deepest = decode_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
        for _ in range(MAX_DEPTH - 1):
            deepest = deepest[0]
        self.assertEqual(deepest, [])
        e = self.refused(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
        self.assertEqual(e.field, "body")
        self.assertIn("nested %d deep" % (MAX_DEPTH + 1), str(e))
        e = self.refused(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
        self.assertIn("nested 100000 deep", str(e))

    def test_brackets_in_strings_are_not_nesting(self) -> None:
        s = '"\\" [[[[ {{{{' + "[" * 1000 + '"'
        self.assertEqual(decode_json(("[%s]" % s).encode()), [json.loads(s)])

    def test_bad_strings_name_their_place(self) -> None:
        cases = {
            b'{"name": "a\\u0000b"}': "name: U+0000 at offset 1",
            b'{"x": [1, {"y": "\\ud800"}]}': "x[1].y: U+D800",
            b'[{"z": "\\udfffq"}]': "[0].z: U+DFFF",
            b'"\\u001b"': "body: U+001B",
            b'{"k\\u0000": 1}': "key",
        }
        for raw, text in cases.items():
            self.assertIn(text, str(self.refused(raw)), raw)

    def test_not_json_not_utf8_empty(self) -> None:
        self.assertIn("empty", str(self.refused(b"  \n")))
        self.assertIn("not UTF-8", str(self.refused(b'"\xff"')))
        self.assertIn("invalid JSON", str(self.refused(b"{not json")))
        self.assertIn("invalid JSON", str(self.refused(b'"unterminated [[[')))

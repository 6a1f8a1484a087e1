"""Decode JSON from a peer with bounds, and refuse strings no field can hold (sans-IO).

``json.loads`` recurses once per nesting level, so a body nested 100,000 deep raises
``RecursionError`` (a 500 in a web handler, not a 400); and it happily returns strings
with NUL, other control characters or lone surrogates (``"\\ud800"``), which later fail
deep inside a file name, a file write or a C string.  :func:`decode_json` is the one
door every API body goes through: UTF-8 only, nesting bounded before the parser runs,
and every string (keys too) checked, the error naming the field it is in.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate, repeat
from typing import Any

__all__ = ["MAX_DEPTH", "JsonInputError", "check_text", "decode_json"]

#: deepest nesting accepted; the port, VM and gateway bodies use 3 levels at most
MAX_DEPTH = 32

# a JSON string literal (the unrolled form: linear, no catastrophic backtracking)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
# what is left of a body once strings are gone: brackets become 2 (open) or 0 (close)
_BRACKETS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_NOT_BRACKET = bytes(set(range(256)) - set(b"[{]}"))
# characters no field holds: C0 controls (NUL among them), DEL, and surrogates, which
# only a \\u escape can produce and which no UTF-8 file or C string can carry
_BAD_CHAR = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


class JsonInputError(ValueError):
    """A body that is not acceptable JSON; ``field`` says where (``body`` for the whole)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _depth(raw: bytes) -> int:
    """Deepest bracket nesting outside string literals, in C-speed passes."""
    skeleton = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET).translate(_BRACKETS)
    return max(accumulate(map(int.__sub__, skeleton, repeat(1))), default=0)


def check_text(value: str, field: str) -> None:
    """Refuse a string with a control character or a lone surrogate."""
    bad = _BAD_CHAR.search(value)
    if bad is not None:
        raise JsonInputError(
            field,
            "U+%04X at offset %d is not allowed in a string" % (ord(bad.group()), bad.start()),
        )


def _field(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]" if path != "body" else f"[{key}]"
    shown = key if _BAD_CHAR.search(key) is None else ascii(key)
    return shown if path == "body" else f"{path}.{shown}"


def _check_strings(obj: Any) -> None:
    """Every string, key or value, at any depth (iterative: the depth is bounded anyway)."""
    stack: list[tuple[str, Any]] = [("body", obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            check_text(value, path)
        elif isinstance(value, dict):
            for k, v in value.items():
                name = _field(path, k)
                check_text(k, name if _BAD_CHAR.search(k) is None else f"{path} key {name}")
                stack.append((name, v))
        elif isinstance(value, list):
            stack.extend((_field(path, i), v) for i, v in enumerate(value))


def decode_json(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The value of a UTF-8 JSON body, or :class:`JsonInputError` saying why not."""
    if not raw.strip():
        raise JsonInputError("body", "empty, expected JSON")
    depth = _depth(raw)
    if depth > max_depth:
        raise JsonInputError("body", f"JSON nested {depth} deep, more than {max_depth}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JsonInputError("body", f"invalid JSON (not UTF-8 at byte {e.start})") from None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: cannot happen past _depth
        raise JsonInputError("body", f"invalid JSON ({e})") from None
    _check_strings(value)
    return value

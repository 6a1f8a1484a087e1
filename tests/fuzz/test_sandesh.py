"""Sandesh (vRouter ksync payload) decoding: ``decode``/``decode_one`` on any bytes.

Contract: a list of messages or :class:`SandeshDecodeError`; every decoded message
encodes again (what the server does with it next).
"""

from __future__ import annotations

from typing import Any

from tests.fuzz._harness import fuzz_case, mutated, target
from vrtwist.sandesh import (
    SPECS_BY_NAME,
    SandeshDecodeError,
    SandeshEncodeError,
    decode,
    decode_one,
    encode,
)


def _seeds() -> list[bytes]:
    out = []
    for name in sorted(SPECS_BY_NAME):
        spec = SPECS_BY_NAME[name]
        out.append(encode(spec.cls()))
        values: dict[str, Any] = {}
        for i, f in enumerate(spec.fields):
            values[f.name] = [1, 2, 3] if f.wire == 15 else ("x" * i if f.wire == 11 else i)
        try:
            out.append(encode(spec.cls(**values)))
        except (SandeshEncodeError, TypeError, ValueError):
            pass
    return out


SEEDS = _seeds()
# concatenations, as a bunched request carries them
SEEDS += [SEEDS[i] + SEEDS[i + 7] for i in range(0, len(SEEDS) - 7, 5)]


@target("sandesh", mutated(SEEDS, 8192), (SandeshDecodeError,))
def decode_all(data: bytes) -> None:
    for msg in decode(data):
        encode(msg)


@target("sandesh", mutated(SEEDS, 8192), (SandeshDecodeError,))
def decode_exact(data: bytes) -> None:
    decode(data, pad=0)


@target("sandesh", mutated(SEEDS, 8192), (SandeshDecodeError,))
def decode_one_by_one(data: bytes) -> None:
    """The server's fallback path: one message at a time, offsets always move forward."""
    o = 0
    while o < len(data):
        _, nxt = decode_one(data, o)
        assert nxt > o, "decode_one did not advance at %d" % o
        o = nxt


Fuzz = fuzz_case("sandesh")

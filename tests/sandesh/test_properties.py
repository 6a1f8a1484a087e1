"""Property tests: round trips for every message type, truncation, reordering, fuzzing."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.sandesh import (
    MESSAGE_NAMES,
    SPECS_BY_NAME,
    SandeshDecodeError,
    decode,
    decode_one,
    encode,
)
from vrtwist.sandesh._codec import _ENCODERS, _decode_fields_slow, _encode_slow

RANGES = {
    3: (0, 255),
    6: (-(2**15), 2**15 - 1),
    19: (0, 2**16 - 1),
    8: (-(2**31), 2**31 - 1),
    20: (0, 2**32 - 1),
    10: (-(2**63), 2**63 - 1),
    9: (0, 2**64 - 1),
}

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def value_strategy(f: Any) -> st.SearchStrategy[Any]:
    if f.wire == 11:
        return st.text(max_size=20)
    if f.wire == 15:
        lo, hi = RANGES[f.elem]
        return st.lists(st.integers(lo, hi), max_size=8)
    lo, hi = RANGES[f.wire]
    return st.one_of(st.just(0), st.integers(lo, hi))


def message_strategy(name: str) -> st.SearchStrategy[Any]:
    spec = SPECS_BY_NAME[name]
    return st.fixed_dictionaries({f.name: value_strategy(f) for f in spec.fields}).map(
        lambda kw: spec.cls(**kw)
    )


any_message = st.sampled_from(MESSAGE_NAMES).flatmap(message_strategy)


def reorder(data: bytes, name: str, order: list[int]) -> bytes:
    """Re-emit the fields of one encoded message in another order (via the generic reader)."""
    spec = SPECS_BY_NAME[name]
    o = 4 + len(name)
    chunks = []
    for f in spec.fields:
        start = o
        o += 3
        if f.wire == 11:
            (n,) = struct.unpack_from(">i", data, o)
            o += 4 + max(n, 0)
        elif f.wire == 15:
            (n,) = struct.unpack_from(">i", data, o + 1)
            o += 5 + n * {3: 1, 6: 2, 19: 2, 8: 4, 20: 4, 10: 8, 9: 8}[f.elem]
        else:
            o += {3: 1, 6: 2, 19: 2, 8: 4, 20: 4, 10: 8, 9: 8}[f.wire]
        chunks.append(data[start:o])
    assert data[o:] == b"\x00"
    return data[: 4 + len(name)] + b"".join(chunks[i] for i in order) + b"\x00"


class RoundTripTests(SynchronousTestCase):
    def test_every_type_round_trips(self) -> None:
        for name in MESSAGE_NAMES:

            @SETTINGS
            @given(message_strategy(name))
            def check(msg: Any) -> None:
                data = encode(msg)
                self.assertEqual(data, _encode_slow(SPECS_BY_NAME[name], msg))
                # In-range values take the generated encoder, never its fallback.
                self.assertEqual(_ENCODERS[type(msg)][0](msg), data)
                # Decode three times: segment path, then the learned shape path.
                for _ in range(3):
                    self.assertEqual(decode(data), [msg])
                slow, end = _decode_fields_slow(SPECS_BY_NAME[name], data, 4 + len(name), len(data))
                self.assertEqual((slow, end), (msg, len(data)))

            check()

    @SETTINGS
    @given(any_message, st.randoms(use_true_random=False))
    def test_any_field_order(self, msg: Any, rnd: Any) -> None:
        name = type(msg).__name__
        order = list(range(len(SPECS_BY_NAME[name].fields)))
        rnd.shuffle(order)
        self.assertEqual(decode(reorder(encode(msg), name, order)), [msg])

    @SETTINGS
    @given(st.lists(any_message, min_size=1, max_size=5), st.integers(0, 3))
    def test_concatenated_with_padding(self, msgs: list[Any], pad: int) -> None:
        data = b"".join(encode(m) for m in msgs) + b"\x00" * pad
        self.assertEqual(decode(data), msgs)


class UntrustedInputTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(any_message)
    def test_every_truncation_fails_cleanly(self, msg: Any) -> None:
        data = encode(msg)
        step = max(1, len(data) // 40)
        cuts = sorted(set(range(1, len(data), step)) | {len(data) - 1, len(data) - 2, 4, 5})
        for n in cuts:
            with self.assertRaises(SandeshDecodeError):
                decode(data[:n], pad=0)
            if n > 3:
                with self.assertRaises(SandeshDecodeError):
                    decode(data[:n])

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(
        any_message, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4)
    )
    def test_mutations_decode_or_raise_codec_error(
        self, msg: Any, flips: list[tuple[int, int]]
    ) -> None:
        data = bytearray(encode(msg))
        for pos, val in flips:
            data[pos % len(data)] = val
        try:
            decode(bytes(data))
        except SandeshDecodeError as e:
            self.assertTrue(0 <= e.offset <= len(data))

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(st.binary(max_size=200))
    def test_random_bytes(self, data: bytes) -> None:
        """Random bytes decode to known messages or raise the one clear error, with an
        offset inside the input; nothing else escapes."""
        try:
            messages = decode(data)
        except SandeshDecodeError as e:
            self.assertTrue(0 <= e.offset <= len(data), e.offset)
        else:
            self.assertTrue(all(type(m).__name__ in MESSAGE_NAMES for m in messages))

    @settings(max_examples=100, deadline=None, derandomize=True)
    @given(st.sampled_from(MESSAGE_NAMES), st.binary(max_size=120))
    def test_valid_name_random_body(self, name: str, body: bytes) -> None:
        data = struct.pack(">i", len(name)) + name.encode() + body
        try:
            msg, o = decode_one(data)
        except SandeshDecodeError:
            return
        self.assertLessEqual(o, len(data))
        self.assertEqual(type(msg).__name__, name)

    def test_hostile_lengths_do_not_allocate(self) -> None:
        """Declared sizes up to 2**31 in a small buffer fail immediately for every list type."""
        for name, spec in SPECS_BY_NAME.items():
            for f in spec.fields:
                if f.wire not in (11, 15):
                    continue
                hdr = struct.pack(">Bh", f.wire, f.fid)
                body = hdr + (
                    struct.pack(">i", 0x7FFFFFFF)
                    if f.wire == 11
                    else bytes([f.elem]) + struct.pack(">i", 0x7FFFFFFF)
                )
                data = struct.pack(">i", len(name)) + name.encode() + body + b"\x00" * 16
                with self.assertRaises(SandeshDecodeError, msg=f.name):
                    decode(data)

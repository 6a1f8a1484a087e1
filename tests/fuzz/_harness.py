"""The decoder fuzz contract, shared by every target in this package.

A target is a decoder plus the inputs to throw at it. Whatever the input, the decoder must

* return (any value), or raise only the error classes it documents (``errors``);
* finish within :data:`HANG_SECONDS` (a SIGALRM watchdog turns a hang into a failure);
* keep its peak allocation under :func:`memory_bound` of the input's size, so no length
  field can make it reserve memory the bytes it was given do not justify.

The same targets run two ways: briefly inside the test suite (``max_examples`` small,
derandomised) and for as long as asked by ``python -m tests.fuzz`` (see docs/fuzzing.md).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

#: a decoder taking longer than this on one input is hung
HANG_SECONDS = float(os.environ.get("VRTWIST_FUZZ_HANG", "5"))
#: examples per target in the normal test suite (the short run)
SHORT_EXAMPLES = int(os.environ.get("VRTWIST_FUZZ_EXAMPLES", "12"))
#: constant part of the memory bound: caches and code a decoder builds once
MEMORY_FLOOR = 4 << 20
#: bytes a decoder may allocate per input byte (Python objects are large; claims are larger)
MEMORY_PER_BYTE = 256


def scratch_dir() -> str:
    """A private directory for targets that need files, removed when the process exits."""
    if not _SCRATCH:
        _SCRATCH.append(tempfile.mkdtemp(prefix="pv-fuzz-"))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return _SCRATCH[0]


_SCRATCH: list[str] = []


def memory_bound(size: int) -> int:
    """Peak bytes a decoder may allocate for an input of ``size`` bytes."""
    return MEMORY_FLOOR + MEMORY_PER_BYTE * size


class Hang(Exception):
    """Raised by the watchdog (an Exception, so hypothesis reports the input; a decoder
    that swallows it is caught anyway: the alarm repeats and :func:`check` notices)."""


class ContractViolation(AssertionError):
    """The decoder returned, but broke a property of its target (memory, consistency)."""


@dataclass
class Stats:
    """What one target has seen: inputs run, inputs rejected with a documented error."""

    inputs: int = 0
    rejected: int = 0
    peak: int = 0
    seconds: float = 0.0


@dataclass
class Target:
    """One decoder under fuzz."""

    name: str
    family: str
    strategy: st.SearchStrategy[Any]
    run: Callable[[Any], object]
    errors: tuple[type[BaseException], ...]
    size: Callable[[Any], int]
    stats: Stats


TARGETS: dict[str, Target] = {}


def _default_size(value: Any) -> int:
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(_default_size(v) for v in value)
    return len(repr(value))


def target(
    family: str,
    strategy: st.SearchStrategy[Any],
    errors: tuple[type[BaseException], ...] = (),
    size: Callable[[Any], int] = _default_size,
) -> Callable[[Callable[[Any], object]], Callable[[Any], object]]:
    """Register ``fn(input)`` as the target ``<family>.<fn name>``."""

    def register(fn: Callable[[Any], object]) -> Callable[[Any], object]:
        name = "%s.%s" % (family, fn.__name__)
        TARGETS[name] = Target(name, family, strategy, fn, errors, size, Stats())
        return fn

    return register


_FIRED: list[bool] = []


def _alarm(signum: int, frame: FrameType | None) -> None:
    _FIRED.append(True)
    raise Hang("decoder still running after %.1f s" % HANG_SECONDS)


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    old = signal.signal(signal.SIGALRM, _alarm)
    del _FIRED[:]
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)  # repeats until the decoder gives up
    try:
        yield
        if _FIRED:
            raise Hang("decoder ran past %.1f s (and swallowed the alarm)" % seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check(t: Target, value: Any) -> None:
    """Run one input through ``t`` under the contract; raise if it is broken."""
    t.stats.inputs += 1
    started = time.monotonic()
    # traced only while the decoder runs: hypothesis's own work stays at full speed
    outer = tracemalloc.is_tracing()
    if outer:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    else:
        tracemalloc.start()
        base = 0
    try:
        with watchdog(HANG_SECONDS):
            t.run(value)
    except t.errors:
        t.stats.rejected += 1
    finally:
        peak = tracemalloc.get_traced_memory()[1] - base
        if not outer:
            tracemalloc.stop()
        t.stats.seconds += time.monotonic() - started
    t.stats.peak = max(t.stats.peak, peak)
    bound = memory_bound(t.size(value))
    if peak > bound:
        raise ContractViolation(
            "%s allocated %d bytes for a %d-byte input (bound %d)"
            % (t.name, peak, t.size(value), bound)
        )


def run_target(t: Target, examples: int, derandomize: bool, shrink: bool = True) -> None:
    """Fuzz ``t`` with ``examples`` inputs from hypothesis; a broken contract raises.

    ``shrink=False`` reports the first failing input as found (the long run: shrinking a
    hang costs :data:`HANG_SECONDS` per attempt).
    """
    phases = list(Phase) if shrink else [Phase.explicit, Phase.reuse, Phase.generate]

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=derandomize,
        phases=phases,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        check(t, data.draw(t.strategy, label="input"))

    fuzz()


def fuzz_case(family: str) -> type[SynchronousTestCase]:
    """A TestCase with one short-run test per target of ``family`` (the suite's part)."""

    def make(t: Target) -> Callable[[SynchronousTestCase], None]:
        def test(self: SynchronousTestCase) -> None:
            before = t.stats.inputs
            run_target(t, SHORT_EXAMPLES, derandomize=True)
            self.assertGreater(t.stats.inputs, before)

        test.__doc__ = "%s: returns or raises %s only, never hangs, bounded memory" % (
            t.name,
            "/".join(e.__name__ for e in t.errors) or "nothing",
        )
        return test

    body: dict[str, Any] = {}
    for name, t in TARGETS.items():
        if t.family == family:
            body["test_" + name.split(".", 1)[1]] = make(t)
    if not body:
        raise ValueError("no fuzz targets registered for %r" % family)
    return type("Fuzz_" + family, (SynchronousTestCase,), body)


# -- input strategies ------------------------------------------------------------------

_INTERESTING32 = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
                  0x80000000, 0xFFFFFFFF]  # fmt: skip


_DIGITS = re.compile(rb"[0-9]+")
_NUMBERS = [b"0", b"-1", b"65535", b"65536", b"2147483648", b"4294967295", b"4294967296",
            b"99999999999999999999999", b"0x7fffffff", b"100000000", b"-2147483649"]  # fmt: skip


@st.composite
def _mutation(draw: st.DrawFn, seed: bytes, others: list[bytes], max_size: int) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 8))
        n = len(data)
        at = draw(st.integers(0, n)) if n else 0
        if kind == 0 and n:  # flip one byte
            data[min(at, n - 1)] ^= draw(st.integers(1, 255))
        elif kind == 1:  # insert random bytes
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == 2 and n:  # delete a range
            data[at : at + draw(st.integers(1, 16))] = b""
        elif kind == 3 and n:  # duplicate a range
            end = min(n, at + draw(st.integers(1, 64)))
            data[at:at] = data[at:end]
        elif kind == 4 and others:  # splice another seed in
            other = draw(st.sampled_from(others))
            o = draw(st.integers(0, len(other)))
            data[at:] = other[o:]
        elif kind == 5 and n >= 4:  # an interesting little/big-endian 16/32-bit value
            v = draw(st.sampled_from(_INTERESTING32))
            width = draw(st.sampled_from([1, 2, 4]))
            v &= (1 << (8 * width)) - 1
            at = min(at, n - width)
            big = draw(st.booleans())
            data[at : at + width] = v.to_bytes(width, "big") if big else v.to_bytes(width, "little")
        elif kind == 6:  # truncate
            del data[at:]
        elif kind == 7:  # a decimal number in text becomes an extreme one
            m = _DIGITS.search(bytes(data), at) or _DIGITS.search(bytes(data))
            if m:
                data[m.start() : m.end()] = draw(st.sampled_from(_NUMBERS))
        else:  # overwrite a byte with an ASCII character that means something to parsers
            if n:
                data[min(at, n - 1)] = draw(st.sampled_from(b"<>/&;'\"=:?[]{}, \x00\xff\n"))
    return bytes(data[:max_size])


def mutated(seeds: list[bytes], max_size: int = 4096) -> st.SearchStrategy[bytes]:
    """Valid encodings (``seeds``), mutations of them, and plain random bytes."""
    return st.one_of(
        st.sampled_from(seeds),
        st.sampled_from(seeds).flatmap(lambda s: _mutation(s, seeds, max_size)),
        st.binary(max_size=min(max_size, 512)),
    )


def chunked(data: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    """The same bytes cut into arbitrary reads, as a stream decoder receives them."""

    @st.composite
    def cut(draw: st.DrawFn) -> list[bytes]:
        raw = draw(data)
        points = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=8)))
        out, last = [], 0
        for p in [*points, len(raw)]:
            out.append(raw[last:p])
            last = p
        return out

    return cut()

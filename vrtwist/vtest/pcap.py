"""pcap files as the vtest driver reads them, and the frame-by-frame comparison (sans-IO)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["PcapError", "compare_frames", "parse_pcap", "read_pcap"]

_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<",  # microseconds, little-endian
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",  # nanoseconds
    b"\xa1\xb2\x3c\x4d": ">",
}
MAX_PCAP = 64 * 1024 * 1024
MAX_RECORD = 262144


class PcapError(ValueError):
    """Not a pcap file, or a truncated or oversized one."""


def parse_pcap(data: bytes) -> list[bytes]:
    """The frames of a classic pcap file (any endianness, µs or ns timestamps)."""
    if len(data) < 24:
        raise PcapError("shorter than a pcap header (%d bytes)" % len(data))
    order = _MAGICS.get(data[:4])
    if order is None:
        raise PcapError("bad magic %s" % data[:4].hex())
    record = struct.Struct(order + "IIII")
    frames: list[bytes] = []
    at = 24
    while at < len(data):
        if at + 16 > len(data):
            raise PcapError("record %d: truncated header" % (len(frames) + 1))
        _sec, _frac, incl, _orig = record.unpack_from(data, at)
        if incl > MAX_RECORD:
            raise PcapError("record %d: %d bytes is too large" % (len(frames) + 1, incl))
        at += 16
        if at + incl > len(data):
            raise PcapError("record %d: truncated data" % (len(frames) + 1))
        frames.append(data[at : at + incl])
        at += incl
    return frames


def read_pcap(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read(MAX_PCAP + 1)
    if len(data) > MAX_PCAP:
        raise PcapError("%s is larger than %d bytes" % (path, MAX_PCAP))
    return parse_pcap(data)


def compare_frames(expected: Sequence[bytes], got: Sequence[bytes]) -> str | None:
    """None when ``got`` equals ``expected`` byte for byte; else which frame and how."""
    for n, (want, have) in enumerate(zip(expected, got, strict=False), 1):
        if want == have:
            continue
        for k, (a, b) in enumerate(zip(want, have, strict=False)):
            if a != b:
                return "frame %d differs at byte %d: expected %02x, got %02x (%d/%d bytes)" % (
                    n, k, a, b, len(want), len(have),
                )  # fmt: skip
        return "frame %d: expected %d bytes, got %d (equal up to there)" % (
            n, len(want), len(have),
        )  # fmt: skip
    if len(got) < len(expected):
        return "frame %d: not received (%d of %d frames arrived)" % (
            len(got) + 1, len(got), len(expected),
        )  # fmt: skip
    if len(got) > len(expected):
        return "%d unexpected frame(s) after the %d expected" % (
            len(got) - len(expected), len(expected),
        )  # fmt: skip
    return None

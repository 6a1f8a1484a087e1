"""Classic libpcap files: read and write (vtest inputs and expected outputs).

The 24-byte global header is declared with ``construct`` (cold path, read once); the
per-record loop uses a precompiled ``struct``. Both byte orders and the microsecond and
nanosecond magics are read; files are written little-endian, microseconds.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

import construct as cs

from vrtwist.packet.headers import PacketError

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1


def _global(order: str) -> cs.Struct:
    u32 = cs.Int32ul if order == "<" else cs.Int32ub
    u16 = cs.Int16ul if order == "<" else cs.Int16ub
    i32 = cs.Int32sl if order == "<" else cs.Int32sb
    return cs.Struct(
        "magic" / u32,
        "version_major" / u16,
        "version_minor" / u16,
        "thiszone" / i32,
        "sigfigs" / u32,
        "snaplen" / u32,
        "network" / u32,
    )


_GLOBAL = {"<": _global("<"), ">": _global(">")}
_RECORD = {"<": struct.Struct("<IIII"), ">": struct.Struct(">IIII")}


class PcapRecord(NamedTuple):
    """One captured frame; ``timestamp`` in seconds."""

    timestamp: float
    data: bytes
    orig_len: int


class PcapHeader(NamedTuple):
    snaplen: int
    network: int
    nanoseconds: bool


def _order(head: bytes) -> tuple[str, bool]:
    for order in ("<", ">"):
        (magic,) = struct.unpack(order + "I", head[:4])
        if magic == MAGIC_US:
            return order, False
        if magic == MAGIC_NS:
            return order, True
    raise PacketError(f"pcap: bad magic {head[:4].hex()}")


def parse(data: bytes) -> tuple[PcapHeader, list[PcapRecord]]:
    """Every record of a pcap file held in memory."""
    header, records = _read(memoryview(data))
    return header, list(records)


def _read(view: memoryview) -> tuple[PcapHeader, Iterator[PcapRecord]]:
    if len(view) < 24:
        raise PacketError(f"pcap: {len(view)} bytes is shorter than the 24-byte header")
    order, ns = _order(bytes(view[:4]))
    g = _GLOBAL[order].parse(bytes(view[:24]))
    header = PcapHeader(int(g.snaplen), int(g.network), ns)
    rec = _RECORD[order]
    scale = 1e-9 if ns else 1e-6

    def records() -> Iterator[PcapRecord]:
        pos = 24
        end = len(view)
        while pos < end:
            if end - pos < 16:
                raise PacketError(f"pcap: truncated record header at offset {pos}")
            sec, frac, incl, orig = rec.unpack_from(view, pos)
            pos += 16
            if incl > end - pos:
                raise PacketError(
                    f"pcap: record at {pos - 16} claims {incl} bytes, {end - pos} left"
                )
            yield PcapRecord(sec + frac * scale, bytes(view[pos : pos + incl]), orig)
            pos += incl

    return header, records()


def read_file(path: str) -> tuple[PcapHeader, list[PcapRecord]]:
    with open(path, "rb") as f:
        return parse(f.read())


def frames(path: str) -> list[bytes]:
    """Just the frame bytes of every record of a file."""
    return [r.data for r in read_file(path)[1]]


def dumps(
    frames: Iterable[bytes | PcapRecord], snaplen: int = 65535, network: int = LINKTYPE_ETHERNET
) -> bytes:
    """A pcap file (little-endian, microseconds) holding ``frames``."""
    out = bytearray(
        _GLOBAL["<"].build(
            dict(
                magic=MAGIC_US, version_major=2, version_minor=4, thiszone=0, sigfigs=0,
                snaplen=snaplen, network=network,
            )
        )
    )  # fmt: skip
    pack = _RECORD["<"].pack
    for item in frames:
        if isinstance(item, PcapRecord):
            ts, data, orig = item.timestamp, item.data, item.orig_len
        else:
            ts, data, orig = 0.0, item, len(item)
        sec = int(ts)
        usec = round((ts - sec) * 1e6)
        if usec >= 1000000:
            sec, usec = sec + 1, usec - 1000000
        out += pack(sec, usec, len(data), orig)
        out += data
    return bytes(out)


def write(f: BinaryIO, frames: Iterable[bytes | PcapRecord]) -> None:
    f.write(dumps(frames))

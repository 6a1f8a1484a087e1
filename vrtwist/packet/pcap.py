"""Classic libpcap files: read and write (vtest inputs and expected outputs).

Reading and writing pcaps is a cold path (vtest inputs, expected outputs and captures),
so both the 24-byte global header and the 16-byte record header are ``construct``
declarations, compiled once per byte order. Both byte orders and the microsecond and
nanosecond magics are read; files are written little-endian, microseconds.
``vrtwist.vtest.pcap`` reads with the same declarations.
"""

from __future__ import annotations

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


def _record(order: str) -> cs.Struct:
    u32 = cs.Int32ul if order == "<" else cs.Int32ub
    return cs.Struct(
        "ts_sec" / u32,
        "ts_frac" / u32,  # microseconds or nanoseconds, after the magic
        "incl_len" / u32,  # bytes of the frame stored in the file
        "orig_len" / u32,  # bytes of the frame on the wire
    )


GLOBAL_LEN = 24
RECORD_LEN = 16
#: The global and record header declarations by byte order ("<" or ">").
GLOBAL_HEADER = {"<": _global("<").compile(), ">": _global(">").compile()}
RECORD_HEADER = {"<": _record("<").compile(), ">": _record(">").compile()}
_MAGICS = {
    MAGIC_US.to_bytes(4, "little"): ("<", False),
    MAGIC_US.to_bytes(4, "big"): (">", False),
    MAGIC_NS.to_bytes(4, "little"): ("<", True),
    MAGIC_NS.to_bytes(4, "big"): (">", True),
}


class PcapRecord(NamedTuple):
    """One captured frame; ``timestamp`` in seconds."""

    timestamp: float
    data: bytes
    orig_len: int


class PcapHeader(NamedTuple):
    snaplen: int
    network: int
    nanoseconds: bool


def byte_order(head: bytes) -> tuple[str, bool] | None:
    """("<" or ">", nanoseconds?) from a file's first four bytes; None if not a pcap magic."""
    return _MAGICS.get(bytes(head[:4]))


def _order(head: bytes) -> tuple[str, bool]:
    found = byte_order(head)
    if found is None:
        raise PacketError(f"pcap: bad magic {head[:4].hex()}")
    return found


def parse(data: bytes) -> tuple[PcapHeader, list[PcapRecord]]:
    """Every record of a pcap file held in memory."""
    header, records = _read(memoryview(data))
    return header, list(records)


def _read(view: memoryview) -> tuple[PcapHeader, Iterator[PcapRecord]]:
    if len(view) < 24:
        raise PacketError(f"pcap: {len(view)} bytes is shorter than the 24-byte header")
    order, ns = _order(bytes(view[:4]))
    g = GLOBAL_HEADER[order].parse(bytes(view[:24]))
    header = PcapHeader(int(g.snaplen), int(g.network), ns)
    rec = RECORD_HEADER[order]
    scale = 1e-9 if ns else 1e-6

    def records() -> Iterator[PcapRecord]:
        pos = 24
        end = len(view)
        while pos < end:
            if end - pos < 16:
                raise PacketError(f"pcap: truncated record header at offset {pos}")
            r = rec.parse(bytes(view[pos : pos + 16]))
            pos += 16
            incl = r.incl_len
            if incl > end - pos:
                raise PacketError(
                    f"pcap: record at {pos - 16} claims {incl} bytes, {end - pos} left"
                )
            yield PcapRecord(
                r.ts_sec + r.ts_frac * scale, bytes(view[pos : pos + incl]), r.orig_len
            )
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
        GLOBAL_HEADER["<"].build(
            dict(
                magic=MAGIC_US, version_major=2, version_minor=4, thiszone=0, sigfigs=0,
                snaplen=snaplen, network=network,
            )
        )
    )  # fmt: skip
    record = RECORD_HEADER["<"]
    for item in frames:
        if isinstance(item, PcapRecord):
            ts, data, orig = item.timestamp, item.data, item.orig_len
        else:
            ts, data, orig = 0.0, item, len(item)
        sec = int(ts)
        usec = round((ts - sec) * 1e6)
        if usec >= 1000000:
            sec, usec = sec + 1, usec - 1000000
        out += record.build(dict(ts_sec=sec, ts_frac=usec, incl_len=len(data), orig_len=orig))
        out += data
    return bytes(out)


def write(f: BinaryIO, frames: Iterable[bytes | PcapRecord]) -> None:
    f.write(dumps(frames))

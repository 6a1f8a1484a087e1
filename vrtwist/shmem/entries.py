"""Parsed, read-only views of flow and bridge entries, and consistent snapshots.

A reader maps the file read-only while the owner keeps writing.  The owner
publishes an entry by setting its ACTIVE (flow) / VALID (bridge) flag last and
clears it first; the generation id changes on every reuse of a slot.  A reader
therefore takes (flags, gen) before and after copying the 256 bytes and keeps
the copy only if both are equal and the entry is active: the copy can then not
mix two lifetimes of the slot.

The entries are declared with ``construct`` (``FLOW_ENTRY_LAYOUT``,
``BRIDGE_ENTRY_LAYOUT``), which reads as the field tables of docs/protocols/shmem.md.
``flow -l`` decodes up to 500,000 entries in one listing, where construct's own parser
(about 20 us an entry, compiled) would triple the run time; so the decoders unpack with
one ``struct`` format derived from the declaration at import (:func:`flat_format`) and
pick fields by their declared names. The datapath reads and writes single fields
through the ``struct`` objects of :mod:`vrtwist.shmem.layout` at fixed offsets.
"""

from __future__ import annotations

import operator
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import construct as cs
from typing_extensions import Buffer

from vrtwist.shmem import layout as L

__all__ = [
    "BRIDGE_ENTRY_LAYOUT",
    "FLOW_ENTRY_LAYOUT",
    "BridgeEntry",
    "FlowEntry",
    "flat_format",
    "flow_key_bytes",
    "ip4_from_wire",
    "ip4_to_wire",
    "parse_bridge_entry",
    "parse_flow_entry",
    "port_from_wire",
    "port_to_wire",
    "snapshot_bridge",
    "snapshot_flow",
]

_BE16 = struct.Struct(">H")

#: ``vr_hentry_t``: the hash-table link that starts every entry (21 bytes).
_HENTRY = cs.Struct(
    "next_ptr" / cs.Int64ul,  # a pointer of the table's owner: meaningless to readers
    "index" / cs.Int32ul,
    "bucket_index" / cs.Int32ul,
    "next_index" / cs.Int32ul,
    "flags" / cs.Int8ul,
)

#: ``struct vr_flow`` as stored (45 bytes): the first ``key_len`` bytes are hashed.
#: Ports and addresses are network-order bytes (a port read as a host u16 is
#: byte-swapped, as in Sandesh); ``nh_id`` is host order.
_FLOW_KEY = cs.Struct(
    "family" / cs.Int8ul,
    "proto" / cs.Int8ul,
    "unused" / cs.Int16ul,
    "sport" / cs.Int16ul,
    "dport" / cs.Int16ul,
    "nh_id" / cs.Int32ul,
    "ip" / cs.Bytes(32),  # sip then dip: 4 + 4 (IPv4) or 16 + 16 (IPv6)
    "key_len" / cs.Int8ul,
)

#: ``struct vr_flow_entry`` (256 bytes, packed, little-endian host order).
FLOW_ENTRY_LAYOUT = cs.Struct(
    "hentry" / _HENTRY,
    "ttl" / cs.Int8ul,
    "qos_id" / cs.Int16sl,
    "key" / _FLOW_KEY,
    "gen_id" / cs.Int8ul,
    "tcp_flags" / cs.Int16ul,
    "hold_list" / cs.Int64ul,  # pointer
    "tcp_seq" / cs.Int32ul,
    "rflow" / cs.Int32sl,
    "flags" / cs.Int16ul,
    "flags1" / cs.Int16ul,
    "action" / cs.Int16ul,
    "vrf" / cs.Int16ul,
    "dvrf" / cs.Int16ul,
    "mirror_id" / cs.Int8ul,
    "sec_mirror_id" / cs.Int8ul,
    "src_nh_index" / cs.Int32ul,
    "bytes" / cs.Int32ul,
    "packets" / cs.Int32ul,
    "bytes_oflow" / cs.Int16ul,
    "packets_oflow" / cs.Int8ul,
    "ecmp_nh_index" / cs.Int8sl,
    "drop_reason" / cs.Int8ul,
    "type" / cs.Int8ul,
    "udp_src_port" / cs.Int16ul,
    "src_info" / cs.Int32ul,
    "mme" / cs.Int64ul,  # pointer
    "pack" / cs.Padding(124),
)

#: ``struct vr_bridge_entry`` (64 bytes, packed, little-endian host order).
BRIDGE_ENTRY_LAYOUT = cs.Struct(
    "hentry" / _HENTRY,
    "mac" / cs.Bytes(6),
    "vrf" / cs.Int16ul,
    "nh_ptr" / cs.Int64ul,  # pointer
    "packets" / cs.Int64ul,
    "label" / cs.Int32ul,
    "nh_id" / cs.Int32sl,
    "flags" / cs.Int16ul,
    "pack" / cs.Padding(9),
)


def flat_format(layout: cs.Struct, prefix: str = "") -> tuple[str, list[str]]:
    """The little-endian ``struct`` format of a packed layout and its field names, in
    order (nested structs as ``outer.inner``; padding has no name)."""
    fmt = ""
    names: list[str] = []
    for sc in layout.subcons:
        inner = sc.subcon if isinstance(sc, cs.Renamed) else sc
        name = prefix + str(sc.name)
        if isinstance(inner, cs.Struct):
            f, n = flat_format(inner, name + ".")
            fmt, names = fmt + f, names + n
        elif isinstance(inner, cs.FormatField) and inner.fmtstr[0] == "<":
            fmt += inner.fmtstr[1:]
            names.append(name)
        elif isinstance(inner, cs.Bytes) and isinstance(inner.length, int):
            fmt += f"{inner.length}s"
            names.append(name)
        elif isinstance(inner, cs.Padded) and isinstance(inner.length, int):
            fmt += f"{inner.length}x"
        else:
            raise TypeError(f"{name}: {inner!r} has no fixed little-endian struct code")
    return fmt, names


def _picker(layout: cs.Struct, fields: tuple[str, ...]) -> tuple[int, Callable[[bytes], Any]]:
    """(size, function bytes -> tuple of ``fields`` in that order)."""
    fmt, names = flat_format(layout)
    unpack = struct.Struct("<" + fmt)
    pick = operator.itemgetter(*(names.index(f) for f in fields))
    return unpack.size, lambda raw: pick(unpack.unpack(raw))


_FLOW_SIZE, _flow_fields = _picker(
    FLOW_ENTRY_LAYOUT,
    (
        "hentry.index", "hentry.bucket_index", "hentry.next_index", "hentry.flags",
        "ttl", "qos_id", "key.family", "key.proto", "key.sport", "key.dport", "key.nh_id",
        "key.ip", "key.key_len", "gen_id", "tcp_flags", "tcp_seq", "rflow", "flags",
        "flags1", "action", "vrf", "dvrf", "mirror_id", "sec_mirror_id", "src_nh_index",
        "bytes", "packets", "bytes_oflow", "packets_oflow", "ecmp_nh_index", "drop_reason",
        "type", "udp_src_port", "src_info",
    ),
)  # fmt: skip
_BRIDGE_SIZE, _bridge_fields = _picker(
    BRIDGE_ENTRY_LAYOUT,
    (
        "hentry.index", "hentry.bucket_index", "hentry.next_index", "hentry.flags",
        "mac", "vrf", "packets", "label", "nh_id", "flags",
    ),
)  # fmt: skip
assert _FLOW_SIZE == L.FLOW_ENTRY_SIZE and _BRIDGE_SIZE == L.BRIDGE_ENTRY_SIZE
_KEYHDR = struct.Struct("<BBH2s2sI")


def port_to_wire(port: int) -> int:
    """Host port number -> the "network bytes in a host u16" value Sandesh carries."""
    return ((port & 0xFF) << 8) | ((port >> 8) & 0xFF)


port_from_wire = port_to_wire


def ip4_to_wire(addr: str) -> int:
    """Dotted IPv4 -> the little-endian host integer holding its network bytes."""
    return int.from_bytes(socket.inet_aton(addr), "little")


def ip4_from_wire(value: int) -> str:
    return socket.inet_ntoa((value & 0xFFFFFFFF).to_bytes(4, "little"))


def flow_key_bytes(
    family: int, proto: int, sip: bytes, dip: bytes, sport: int, dport: int, nh_id: int
) -> bytes:
    """The hashed part of ``struct vr_flow`` (20 bytes IPv4, 44 bytes IPv6).

    ``sip``/``dip`` are raw network-order address bytes; ports are host numbers.
    """
    return _KEYHDR.pack(family, proto, 0, _BE16.pack(sport), _BE16.pack(dport), nh_id) + sip + dip


class FlowEntry(NamedTuple):
    """One ``struct vr_flow_entry`` as a reader sees it (ports in host order)."""

    index: int  # type: ignore[assignment]
    hentry_index: int
    bucket_index: int
    next_index: int
    hentry_flags: int
    ttl: int
    qos_id: int
    family: int
    proto: int
    sport: int
    dport: int
    nh_id: int
    sip: str
    dip: str
    key_len: int
    gen_id: int
    tcp_flags: int
    tcp_seq: int
    rflow: int
    flags: int
    flags1: int
    action: int
    vrf: int
    dvrf: int
    mirror_id: int
    sec_mirror_id: int
    src_nh_index: int
    bytes: int
    packets: int
    bytes_oflow: int
    packets_oflow: int
    ecmp_nh_index: int
    drop_reason: int
    type: int
    udp_src_port: int
    src_info: int

    @property
    def active(self) -> bool:
        return bool(self.flags & L.FLAG_ACTIVE)

    @property
    def total_bytes(self) -> int:
        return (self.bytes_oflow << 32) | self.bytes

    @property
    def total_packets(self) -> int:
        return (self.packets_oflow << 32) | self.packets


_FLOW_NEW = tuple.__new__


def parse_flow_entry(raw: Buffer, index: int) -> FlowEntry:
    """Decode 256 bytes of a flow entry."""
    data = bytes(raw)
    if len(data) != L.FLOW_ENTRY_SIZE:
        raise ValueError(f"flow entry {index}: {len(data)} bytes, expected {L.FLOW_ENTRY_SIZE}")
    t = _flow_fields(data)
    family, sport, dport, ip = t[6], t[8], t[9], t[11]
    if t[31] == L.VP_TYPE_IP6 or family == L.AF_INET6:  # t[31] is the entry's type
        sip = socket.inet_ntop(socket.AF_INET6, ip[:16])
        dip = socket.inet_ntop(socket.AF_INET6, ip[16:])
    else:
        sip = socket.inet_ntoa(ip[:4])
        dip = socket.inet_ntoa(ip[4:8])
    # ports: network-order bytes read as a little-endian u16, swapped back
    ports = (((sport & 0xFF) << 8) | (sport >> 8), ((dport & 0xFF) << 8) | (dport >> 8))
    return _FLOW_NEW(FlowEntry, (index, *t[:8], *ports, t[10], sip, dip, *t[12:]))


def snapshot_flow(buf: Buffer, index: int, retries: int = 8) -> bytes | None:
    """A consistent copy of an ACTIVE flow entry, or None if it is not active."""
    off = index * L.FLOW_ENTRY_SIZE
    b: Any = buf  # mmap or bytes-like
    for _ in range(retries):
        f1 = L.U16.unpack_from(b, off + L.OFF_FE_FLAGS)[0]
        if not f1 & L.FLAG_ACTIVE:
            return None
        g1 = b[off + L.OFF_FE_GEN_ID]
        raw = bytes(b[off : off + L.FLOW_ENTRY_SIZE])
        f2 = L.U16.unpack_from(b, off + L.OFF_FE_FLAGS)[0]
        g2 = b[off + L.OFF_FE_GEN_ID]
        if (
            f1 == f2
            and g1 == g2
            and L.U16.unpack_from(raw, L.OFF_FE_FLAGS)[0] == f1
            and raw[L.OFF_FE_GEN_ID] == g1
        ):
            return raw
    return None


@dataclass(frozen=True, slots=True)
class BridgeEntry:
    """One ``struct vr_bridge_entry``."""

    index: int
    hentry_index: int
    bucket_index: int
    next_index: int
    hentry_flags: int
    mac: bytes
    vrf: int
    packets: int
    label: int
    nh_id: int
    flags: int

    @property
    def valid(self) -> bool:
        return bool(self.flags & L.BE_VALID)


def parse_bridge_entry(raw: Buffer, index: int) -> BridgeEntry:
    """Decode 64 bytes of a bridge entry."""
    data = bytes(raw)
    if len(data) != L.BRIDGE_ENTRY_SIZE:
        raise ValueError(
            f"bridge entry {index}: {len(data)} bytes, expected {L.BRIDGE_ENTRY_SIZE}"
        )
    return BridgeEntry(index, *_bridge_fields(data))


def snapshot_bridge(buf: Buffer, index: int, retries: int = 8) -> bytes | None:
    """A consistent copy of a VALID bridge entry (flags equal before and after the copy)."""
    off = index * L.BRIDGE_ENTRY_SIZE
    b: Any = buf
    for _ in range(retries):
        f1 = L.U16.unpack_from(b, off + L.OFF_BE_FLAGS)[0]
        if not f1 & L.BE_VALID:
            return None
        raw = bytes(b[off : off + L.BRIDGE_ENTRY_SIZE])
        f2 = L.U16.unpack_from(b, off + L.OFF_BE_FLAGS)[0]
        if f1 == f2 and L.U16.unpack_from(raw, L.OFF_BE_FLAGS)[0] == f1:
            return raw
    return None

"""Parsed, read-only views of flow and bridge entries, and consistent snapshots.

A reader maps the file read-only while the owner keeps writing.  The owner
publishes an entry by setting its ACTIVE (flow) / VALID (bridge) flag last and
clears it first; the generation id changes on every reuse of a slot.  A reader
therefore takes (flags, gen) before and after copying the 256 bytes and keeps
the copy only if both are equal and the entry is active: the copy can then not
mix two lifetimes of the slot.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

from typing_extensions import Buffer

from vrtwist.shmem import layout as L

__all__ = [
    "BridgeEntry",
    "FlowEntry",
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


def parse_flow_entry(raw: Buffer, index: int) -> FlowEntry:
    """Decode 256 bytes of a flow entry."""
    (
        _nxt,
        h_index,
        h_bucket,
        h_next,
        h_flags,
        ttl,
        qos,
        key,
        gen,
        tcp_flags,
        _hold,
        tcp_seq,
        rflow,
        flags,
        flags1,
        action,
        vrf,
        dvrf,
        mir,
        smir,
        src_nh,
        nbytes,
        npkts,
        boflow,
        poflow,
        ecmp,
        drop,
        etype,
        udp_sport,
        src_info,
        _mme,
    ) = L.FLOW_ENTRY.unpack(raw)
    family = key[0]
    if etype == L.VP_TYPE_IP6 or family == L.AF_INET6:
        sip = socket.inet_ntop(socket.AF_INET6, key[12:28])
        dip = socket.inet_ntop(socket.AF_INET6, key[28:44])
    else:
        sip = socket.inet_ntoa(key[12:16])
        dip = socket.inet_ntoa(key[16:20])
    return FlowEntry(
        index,
        h_index,
        h_bucket,
        h_next,
        h_flags,
        ttl,
        qos,
        family,
        key[1],
        (key[4] << 8) | key[5],
        (key[6] << 8) | key[7],
        int.from_bytes(key[8:12], "little"),
        sip,
        dip,
        key[44],
        gen,
        tcp_flags,
        tcp_seq,
        rflow,
        flags,
        flags1,
        action,
        vrf,
        dvrf,
        mir,
        smir,
        src_nh,
        nbytes,
        npkts,
        boflow,
        poflow,
        ecmp,
        drop,
        etype,
        udp_sport,
        src_info,
    )


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
    (_n, hi, hb, hn, hf, mac, vrf, _nh, packets, label, nh_id, flags) = L.BRIDGE_ENTRY.unpack(raw)
    return BridgeEntry(index, hi, hb, hn, hf, mac, vrf, packets, label, nh_id, flags)


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

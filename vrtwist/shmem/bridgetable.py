"""The bridge table in ``bridge.shmem``: owner side (forwarding extension).

Entries are keyed by (MAC, VRF) and placed with the same ``vr_htable`` rules
as flows.  Semantics follow ``dp-core/vr_bridge.c``: ADD creates or updates
(a missing next hop is -ENOENT, a full table -ENOMEM, a zero or wrongly sized
MAC -EINVAL), DEL of an unknown key is -ENOENT.  ``be_flags`` VALID is the
publication flag: set last on create, cleared first on delete.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

from zope.interface import implementer

from vrtwist.shmem import layout as L
from vrtwist.shmem.entries import BridgeEntry, parse_bridge_entry
from vrtwist.shmem.htable import Buffer, HashTable, TableOwner
from vrtwist.shmem.interfaces import IBridgeTable

__all__ = ["BridgeTable", "bridge_key"]

_BODY = L.BRIDGE_BODY
_U16 = L.U16
_KEY = __import__("struct").Struct("<6sH")
_ZERO_MAC = bytes(6)
_ROUTE = __import__("struct").Struct("<IiH")  # be_label, be_nh_id, be_flags at 45


def bridge_key(mac: bytes, vrf: int) -> bytes:
    """The 8 hashed key bytes: MAC then VRF (u16, host order)."""
    return _KEY.pack(mac, vrf & 0xFFFF)


@implementer(IBridgeTable)
class BridgeTable(TableOwner):
    """Owner of the bridge table mapping."""

    def __init__(
        self,
        buf: Buffer,
        entries: int = L.DEFAULT_BRIDGE_ENTRIES,
        oentries: int | None = None,
        *,
        initialise: bool = True,
        path: str = "",
        nexthop_exists: Callable[[int], bool] | None = None,
    ) -> None:
        entries = L.round_entries(entries)
        if oentries is None:
            oentries = L.default_overflow(entries)
        self.ht = HashTable(buf, entries, oentries, L.BRIDGE_ENTRY_SIZE, initialise=initialise)
        self.buf = buf
        self.path = path
        self.nexthop_exists = nexthop_exists
        self._index: dict[bytes, int] = {}

    def entry(self, index: int) -> BridgeEntry:
        if not 0 <= index < self.ht.total:
            raise IndexError("bridge index %d out of range" % index)
        off = index * L.BRIDGE_ENTRY_SIZE
        return parse_bridge_entry(self.buf[off : off + L.BRIDGE_ENTRY_SIZE], index)

    def lookup(self, vrf: int, mac: bytes) -> int:
        """Index of the entry for (vrf, mac), or -1 (the datapath's bridge lookup)."""
        return self._index.get(bridge_key(mac, vrf), -1)

    def add(
        self,
        vrf: int,
        mac: bytes,
        nh_id: int,
        label: int = 0,
        label_flags: int = 0,
        *,
        learned: bool = False,
    ) -> tuple[int, int]:
        """Create or update; return (0 or -errno, index). ``learned`` publishes MAC_NEW."""
        if len(mac) != 6 or mac == _ZERO_MAC:
            return -errno.EINVAL, -1
        if self.nexthop_exists is not None and not self.nexthop_exists(nh_id):
            return -errno.ENOENT, -1
        key = bridge_key(mac, vrf)
        label_flags = label_flags & ~(L.BE_VALID | L.BE_MAC_NEW) & 0xFFFF
        idx = self._index.get(key, -1)
        buf = self.buf
        if idx < 0:
            got = self.ht.allocate(key)
            if got is None:
                return -errno.ENOMEM, -1
            idx = got
            off = idx * L.BRIDGE_ENTRY_SIZE
            _U16.pack_into(buf, off + L.OFF_BE_FLAGS, 0)
            _BODY.pack_into(
                buf,
                off + L.OFF_BE_BODY,
                mac,
                vrf & 0xFFFF,
                0,
                0,
                label if label_flags & L.BE_LABEL_VALID else 0,
                nh_id,
                0,
            )
            self._index[key] = idx
        else:
            off = idx * L.BRIDGE_ENTRY_SIZE
            _m, _v, nh, packets, old_label, _old_nh, old_flags = _BODY.unpack_from(
                buf, off + L.OFF_BE_BODY
            )
            _BODY.pack_into(
                buf,
                off + L.OFF_BE_BODY,
                mac,
                vrf & 0xFFFF,
                nh,
                packets,
                label if label_flags & L.BE_LABEL_VALID else old_label,
                nh_id,
                old_flags,
            )
        if learned:
            label_flags |= L.BE_MAC_NEW
        _U16.pack_into(buf, off + L.OFF_BE_FLAGS, L.BE_VALID | label_flags)
        return 0, idx

    def set_flags(self, index: int, flags: int) -> None:
        """OR ``flags`` into a valid entry's ``be_flags`` (the datapath's MAC_MOVED)."""
        off = index * L.BRIDGE_ENTRY_SIZE + L.OFF_BE_FLAGS
        old = _U16.unpack_from(self.buf, off)[0]
        if old & L.BE_VALID:
            _U16.pack_into(self.buf, off, old | flags)

    def get(self, vrf: int, mac: bytes | None = None, index: int = -1) -> BridgeEntry | None:
        """By index (if >= 0 and valid) or by key; None when absent."""
        if index >= 0 and index != L.INVALID_INDEX:
            if not self.ht.is_valid(index):
                return None
            return self.entry(index)
        if mac is None:
            return None
        idx = self._index.get(bridge_key(mac, vrf), -1)
        return self.entry(idx) if idx >= 0 else None

    def delete(self, vrf: int, mac: bytes) -> int:
        if len(mac) != 6:
            return -errno.EINVAL
        key = bridge_key(mac, vrf)
        idx = self._index.pop(key, -1)
        if idx < 0:
            return -errno.ENOENT
        off = idx * L.BRIDGE_ENTRY_SIZE
        _U16.pack_into(self.buf, off + L.OFF_BE_FLAGS, 0)
        L.U64.pack_into(self.buf, off + L.OFF_BE_PACKETS, 0)
        L.I32.pack_into(self.buf, off + L.OFF_BE_BODY + 28, -1)  # be_nh_id
        self.ht.release(idx)
        return 0

    def route(self, vrf: int, mac: bytes) -> tuple[int, int, int, int] | None:
        """(index, nh id, label, flags) of (vrf, mac): the packet pipeline's bridge lookup.

        One dict probe and one unpack, without parsing the whole entry.
        """
        index = self._index.get(_KEY.pack(mac, vrf & 0xFFFF), -1)
        if index < 0:
            return None
        label, nh_id, flags = _ROUTE.unpack_from(self.buf, index * L.BRIDGE_ENTRY_SIZE + 45)
        return index, nh_id, label, flags

    def add_packets(self, index: int, n: int = 1) -> None:
        """Datapath accounting of ``be_packets``."""
        off = index * L.BRIDGE_ENTRY_SIZE + L.OFF_BE_PACKETS
        L.U64.pack_into(self.buf, off, (L.U64.unpack_from(self.buf, off)[0] + n) & (2**64 - 1))

    def dump(self, vrf: int, marker_mac: bytes = _ZERO_MAC) -> Iterator[BridgeEntry]:
        """Valid entries of ``vrf`` in index order, starting after the marker entry."""
        seen_marker = marker_mac == _ZERO_MAC or not marker_mac
        for i in range(self.ht.total):
            off = i * L.BRIDGE_ENTRY_SIZE
            if not self.buf[off + L.OFF_HENTRY_FLAGS] & L.HENTRY_FLAG_VALID:
                continue
            e = self.entry(i)
            if not e.flags & L.BE_VALID or e.vrf != vrf:
                continue
            if not seen_marker:
                if e.mac == marker_mac:
                    seen_marker = True
                continue
            yield e

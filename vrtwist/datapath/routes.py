"""Inet and inet6 routes per VRF with longest-prefix match.

The real vRouter keeps an expanded multibit trie (``dp-core/vr_ip_mtrie.c``); here each
VRF keeps one dict per prefix length (network int -> entry) plus the list of lengths in
use, longest first. A lookup probes at most one dict per length in use (typically a
handful: /32, /24, /0), so it costs a few dict hits whatever the table size, and adds
and deletes are O(1). Dumps walk the prefixes in (address, length) order from a sorted
key list that is rebuilt lazily after a change.

Validation and error codes follow ``vr_route.c``/``vr_ip_mtrie.c``; see
``docs/datapath.md`` for where the reply differs from the expanded trie's.
"""

from __future__ import annotations

import bisect
import errno
import ipaddress
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from vrtwist.datapath import constants as C
from vrtwist.datapath.tables import Fields, NextHop, TableError, Tables

#: the bridge seam: (vrf, mac) -> bridge-table index, or None when the MAC is unknown
BridgeIndexLookup = Callable[[int, bytes], "int | None"]


@dataclass(eq=False)
class RouteEntry:
    """One prefix and what it resolves to."""

    prefix: int
    plen: int
    nh: NextHop
    label: int
    label_flags: int
    mac: bytes = b""
    bridge_index: int = C.VR_BE_INVALID_INDEX


class VrfRoutes:
    """The routes of one family in one VRF."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_len: dict[int, dict[int, RouteEntry]] = {}
        self._lengths: list[int] = []  # longest first
        self._sorted: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return sum(len(d) for d in self.by_len.values())

    def mask(self, plen: int) -> int:
        if plen == 0:
            return 0
        return ((1 << plen) - 1) << (self.bits - plen)

    def set(self, entry: RouteEntry) -> RouteEntry | None:
        """Insert or replace; returns the entry replaced, if any."""
        bucket = self.by_len.get(entry.plen)
        if bucket is None:
            bucket = self.by_len[entry.plen] = {}
            self._lengths = sorted(self.by_len, reverse=True)
        old = bucket.get(entry.prefix)
        bucket[entry.prefix] = entry
        if old is None:
            self._sorted = None
        return old

    def remove(self, prefix: int, plen: int) -> RouteEntry | None:
        bucket = self.by_len.get(plen)
        if bucket is None:
            return None
        old = bucket.pop(prefix, None)
        if old is not None:
            self._sorted = None
            if not bucket:
                del self.by_len[plen]
                self._lengths = sorted(self.by_len, reverse=True)
        return old

    def lookup(self, address: int) -> RouteEntry | None:
        """Longest-prefix match of one address."""
        bits = self.bits
        for plen in self._lengths:
            shift = bits - plen
            entry = self.by_len[plen].get((address >> shift) << shift)
            if entry is not None:
                return entry
        return None

    def after(self, prefix: int, plen: int, started: bool) -> Iterator[RouteEntry]:
        """Entries in (address, length) order, strictly after the marker if started."""
        if self._sorted is None:
            self._sorted = sorted((p, n) for n, d in self.by_len.items() for p in d)
        keys = self._sorted
        pos = bisect.bisect_right(keys, (prefix, plen)) if started else 0
        for p, n in keys[pos:]:
            entry = self.by_len.get(n, {}).get(p)
            if entry is not None:
                yield entry


def _bytes(value: Any) -> bytes:
    if not value:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return bytes(v & 0xFF for v in value)


class RouteTables:
    """``vr_route_req`` for AF_INET and AF_INET6 over the next hops of :class:`Tables`."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        self.vrfs: dict[tuple[int, int], VrfRoutes] = {}
        self.bridge_index: BridgeIndexLookup | None = None

    def reset(self) -> None:
        for vrf in self.vrfs.values():
            for bucket in vrf.by_len.values():
                for entry in bucket.values():
                    self.tables.release_nexthop(entry.nh)
        self.vrfs.clear()

    @staticmethod
    def bits(family: int) -> int:
        if family == C.AF_INET:
            return 32
        if family == C.AF_INET6:
            return 128
        raise TableError(errno.EINVAL, f"route family {family} is not inet")

    def _key(self, req: Mapping[str, Any], need_prefix: bool = True) -> tuple[int, int, int, int]:
        family = int(req.get("rtr_family") or 0)
        bits = self.bits(family)
        vrf = int(req.get("rtr_vrf_id") or 0)
        plen = int(req.get("rtr_prefix_len") or 0)
        raw = _bytes(req.get("rtr_prefix"))
        if need_prefix and not raw:
            raise TableError(errno.EINVAL, "route without a prefix")
        if raw and len(raw) != bits // 8:
            raise TableError(errno.EINVAL, f"prefix of {len(raw)} bytes for family {family}")
        if not 0 <= vrf < self.tables.config.vrfs:
            raise TableError(errno.EINVAL, f"VRF {vrf} out of range")
        if not 0 <= plen <= bits:
            raise TableError(errno.EINVAL, f"prefix length {plen} out of range")
        address = int.from_bytes(raw, "big") if raw else 0
        return family, vrf, address, plen

    def _table(self, family: int, vrf: int, create: bool) -> VrfRoutes | None:
        table = self.vrfs.get((family, vrf))
        if table is None and create:
            table = self.vrfs[(family, vrf)] = VrfRoutes(self.bits(family))
        return table

    def _bridge_check(self, vrf: int, mac: bytes) -> int:
        if len(mac) != 6 or mac == bytes(6):
            return C.VR_BE_INVALID_INDEX
        if self.bridge_index is None:
            return C.VR_BE_INVALID_INDEX
        index = self.bridge_index(vrf, mac)
        if index is None:
            raise TableError(errno.ENOENT, "stitched MAC is not in the bridge table")
        return index

    def add(self, req: Mapping[str, Any]) -> None:
        family, vrf, address, plen = self._key(req)
        table = self._table(family, vrf, create=True)
        assert table is not None
        nh = self.tables.get_nexthop(int(req.get("rtr_nh_id") or 0))
        if nh is None:
            raise TableError(errno.ENOENT, "route to a missing next hop")
        flags = int(req.get("rtr_label_flags") or 0) & 0xFFFF
        if not flags & C.VR_RT_LABEL_VALID_FLAG and nh.type == C.NH_TUNNEL:
            raise TableError(errno.EINVAL, "route to a tunnel without a label")
        mac = _bytes(req.get("rtr_mac"))
        index = self._bridge_check(vrf, mac)
        label = int(req.get("rtr_label") or 0)
        label = label & 0xFFFFFF if flags & C.VR_RT_LABEL_VALID_FLAG else C.VR_INVALID_LABEL
        entry = RouteEntry(
            prefix=address & table.mask(plen),
            plen=plen,
            nh=nh,
            label=label,
            label_flags=flags,
            mac=mac if len(mac) == 6 and mac != bytes(6) else b"",
            bridge_index=index,
        )
        self.tables.hold_nexthop(nh.id)
        old = table.set(entry)
        if old is not None:
            self.tables.release_nexthop(old.nh)

    def delete(self, req: Mapping[str, Any]) -> None:
        """DEL: the replacement next hop must exist (-ENOENT), as in ``mtrie_delete``.

        A prefix that is not in the table is not an error (the vRouter's delete walk
        ignores it too).
        """
        family, vrf, address, plen = self._key(req)
        table = self._table(family, vrf, create=False)
        if table is None:
            raise TableError(errno.ENOENT, f"no routes in VRF {vrf}")
        if self.tables.get_nexthop(int(req.get("rtr_nh_id") or 0)) is None:
            raise TableError(errno.ENOENT, "route delete names a missing next hop")
        old = table.remove(address & table.mask(plen), plen)
        if old is not None:
            self.tables.release_nexthop(old.nh)

    def get(self, req: Mapping[str, Any]) -> Fields:
        """GET: longest-prefix match of ``rtr_prefix``; a miss answers the discard NH."""
        family, vrf, address, _plen = self._key(req, need_prefix=False)
        table = self._table(family, vrf, create=False)
        entry = table.lookup(address) if table is not None else None
        if entry is None:
            return {
                "rtr_family": family,
                "rtr_vrf_id": vrf,
                "rtr_prefix": _bytes(req.get("rtr_prefix")),
                "rtr_prefix_len": 0,
                "rtr_replace_plen": 0,
                "rtr_nh_id": C.NH_DISCARD_ID,
                "rtr_label": C.VR_INVALID_LABEL,
                "rtr_label_flags": 0,
                "rtr_index": C.VR_BE_INVALID_INDEX,
            }
        return self.entry_fields(family, vrf, entry)

    def entry_fields(self, family: int, vrf: int, entry: RouteEntry) -> Fields:
        width = self.bits(family) // 8
        out: Fields = {
            "rtr_family": family,
            "rtr_vrf_id": vrf,
            "rtr_prefix": entry.prefix.to_bytes(width, "big"),
            "rtr_prefix_len": entry.plen,
            "rtr_replace_plen": entry.plen,
            "rtr_nh_id": entry.nh.id,
            "rtr_label": entry.label,
            "rtr_label_flags": entry.label_flags,
            "rtr_index": entry.bridge_index,
        }
        if entry.mac:
            out["rtr_mac"] = entry.mac
        return out

    def dump(self, req: Mapping[str, Any]) -> Iterator[Fields]:
        """DUMP one VRF after the marker (``rtr_marker`` + ``rtr_marker_plen``)."""
        family = int(req.get("rtr_family") or 0)
        self.bits(family)
        vrf = int(req.get("rtr_vrf_id") or 0)
        if not 0 <= vrf < self.tables.config.vrfs:
            raise TableError(errno.EINVAL, f"VRF {vrf} out of range")
        table = self._table(family, vrf, create=False)
        if table is None:
            return iter(())
        marker = _bytes(req.get("rtr_marker"))
        address = int.from_bytes(marker, "big") if marker else 0
        plen = int(req.get("rtr_marker_plen") or 0)
        return (
            self.entry_fields(family, vrf, entry)
            for entry in table.after(address, plen, bool(marker))
        )

    def route_count(self, family: int, vrf: int) -> int:
        table = self.vrfs.get((family, vrf))
        return len(table) if table is not None else 0

    def vrf_ids(self) -> list[int]:
        return sorted({vrf for _, vrf in self.vrfs})


def prefix_text(family: int, raw: bytes, plen: int) -> str:
    """``a.b.c.d/len`` or ``x::y/len`` for printing."""
    if family == C.AF_INET6:
        return "%s/%d" % (ipaddress.IPv6Address(raw.ljust(16, bytes(1))[:16]), plen)
    return "%s/%d" % (ipaddress.IPv4Address(raw.ljust(4, bytes(1))[:4]), plen)

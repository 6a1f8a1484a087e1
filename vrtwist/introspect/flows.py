"""Reading the shared-memory flow table in bounded pieces: counts and pages of flows.

A table can hold millions of entries; a scrape or a listing reads the flags column a
chunk at a time, so memory stays bounded whatever the table size or the page asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from vrtwist.shmem import layout as L
from vrtwist.shmem.listing import FlowTableView

#: Entries whose flags are read at once (one byte of each: 64 KiB per chunk).
CHUNK = 65536
#: Largest page of flows one request may ask for.
MAX_PAGE = 1000
# fe_flags is little-endian and ACTIVE is bit 0: the low byte of each entry's flags,
# mapped to 1 (active) or 0, is what is counted and searched
_ACTIVE_BIT = bytes((b & L.FLAG_ACTIVE) for b in range(256))
assert L.FLAG_ACTIVE < 0x100


def _active_column(view: FlowTableView, lo: int, hi: int) -> bytes:
    """One byte per entry in [lo, hi): 1 if active, from one strided copy in C."""
    size = L.FLOW_ENTRY_SIZE
    mv = memoryview(view.map)
    try:
        part = mv[lo * size + L.OFF_FE_FLAGS : hi * size : size]
        col = bytes(part)
        part.release()
    finally:
        mv.release()
    return col.translate(_ACTIVE_BIT)


def _active_in(view: FlowTableView, lo: int, hi: int) -> list[int]:
    """Active indices in [lo, hi)."""
    col = _active_column(view, lo, hi)
    out = []
    i = col.find(1)
    while i >= 0:
        out.append(lo + i)
        i = col.find(1, i + 1)
    return out


def count_active(view: FlowTableView) -> int:
    """Active entries of the whole table, a chunk at a time."""
    n = view.num_entries
    return sum(_active_column(view, lo, min(n, lo + CHUNK)).count(1)
               for lo in range(0, n, CHUNK))


def page(view: FlowTableView, start: int, limit: int) -> tuple[list[Any], int | None]:
    """Up to ``limit`` active flows from index ``start`` on, and where the next page starts
    (None at the end of the table)."""
    n = view.num_entries
    out: list[Any] = []
    lo = max(0, start)
    while lo < n and len(out) < limit:
        hi = min(n, lo + CHUNK)
        for i in _active_in(view, lo, hi):
            e = view.get(i)
            if e is not None:
                out.append(e)
                if len(out) >= limit:
                    return out, (i + 1 if i + 1 < n else None)
        lo = hi
    return out, None


class FlowTableSource:
    """``<run-dir>/flow.shmem``, mapped on first use (the datapath may create it later)."""

    def __init__(self, run_dir: str, opener: Callable[[str], FlowTableView] = FlowTableView
                 ) -> None:
        self.path = os.path.join(run_dir, "flow.shmem")
        self._opener = opener
        self._view: FlowTableView | None = None

    def view(self) -> FlowTableView | None:
        if self._view is None:
            try:
                self._view = self._opener(self.path)
            except (OSError, ValueError):
                return None
        return self._view

    def close(self) -> None:
        if self._view is not None:
            self._view.close()
            self._view = None


def flow_json(e: Any) -> dict[str, Any]:
    """One flow entry as the JSON API and the page show it."""
    return {
        "index": e.index, "rflow": e.rflow, "vrf": e.vrf, "dvrf": e.dvrf,
        "proto": e.proto, "sip": e.sip, "sport": e.sport, "dip": e.dip, "dport": e.dport,
        "nh_id": e.nh_id, "action": e.action, "flags": e.flags, "gen_id": e.gen_id,
        "bytes": e.total_bytes, "packets": e.total_packets,
        "drop_reason": e.drop_reason, "tcp_flags": e.tcp_flags,
    }

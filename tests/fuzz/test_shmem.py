"""Shared-memory table readers: what ``flow -l`` and ``rt --dump`` style listings read
from a ``flow.shmem``/``bridge.shmem`` the vRouter writes concurrently (and may leave
corrupt), plus ``flow --match`` expressions and the packet drop log array.

Contracts: any table content lists without raising or looping (overflow chains that
cycle or point outside the table stop), ``parse_match`` raises only :class:`MatchError`,
``unpack_records`` raises only :class:`DropLogError`.
"""

from __future__ import annotations

import io
import os
import struct
from typing import Any

from hypothesis import strategies as st

from tests.fuzz._harness import fuzz_case, mutated, scratch_dir, target
from vrtwist.datapath.droplog import DropLogError, DropRecord, unpack_records
from vrtwist.shmem import layout as L
from vrtwist.shmem.listing import (
    BridgeTableView,
    FlowTableView,
    MatchError,
    format_bridge_entry,
    parse_match,
    write_flow_table,
)

_DATA: dict[str, Any] = {k: 0 for k in ("ftable_created", "ftable_added", "ftable_deleted", "ftable_changed",
                        "ftable_processed", "ftable_oflow_entries", "ftable_hold_oflows")}  # fmt: skip
_DATA["ftable_hold_stat"] = [0, 1]


@st.composite
def _table(draw: st.DrawFn, entry_size: int, flag_off: int, flag: int) -> bytes:
    """``n`` entries: zero, random, or zero with the valid/active flag and a next index
    that is in range, out of range or invalid (so chains may cycle)."""
    n = draw(st.integers(1, 24))
    out = bytearray()
    for _ in range(n):
        kind = draw(st.integers(0, 2))
        if kind == 1:
            out += draw(st.binary(min_size=entry_size, max_size=entry_size))
            continue
        e = bytearray(entry_size)
        if kind == 2:
            e[flag_off] |= flag | draw(st.integers(0, 255))
            e[L.OFF_HENTRY_FLAGS] = draw(st.integers(0, 255))
            nxt = draw(st.one_of(st.integers(0, n + 2), st.just(L.INVALID_INDEX),
                                 st.integers(0, 0xFFFFFFFF)))  # fmt: skip
            struct.pack_into("<I", e, L.OFF_HENTRY_NEXT_INDEX, nxt)
            e[24:80] = draw(st.binary(min_size=56, max_size=56))
        out += e
    return bytes(out)


def _file(data: bytes) -> str:
    path = os.path.join(scratch_dir(), "table.shmem")
    with open(path, "wb") as f:
        f.write(data)
    return path


@target("shmem", _table(L.FLOW_ENTRY_SIZE, L.OFF_FE_FLAGS, L.FLAG_ACTIVE))
def flow_listing(data: bytes) -> None:
    view = FlowTableView(_file(data))
    try:
        out = io.StringIO()
        count = write_flow_table(out, view, _DATA, None, show_evicted=True)
        assert count == len(list(view))
    finally:
        view.close()


@target("shmem", _table(L.BRIDGE_ENTRY_SIZE, L.OFF_BE_FLAGS, L.BE_VALID))
def bridge_listing(data: bytes) -> None:
    view = BridgeTableView(_file(data))
    try:
        for e in view:
            format_bridge_entry(e)
    finally:
        view.close()


_MATCHES = ["10.0.0.1:80", "10.0.0.1:80,10.0.0.2:443 & vrf 2 & proto tcp", "[fe80::1]:53",
            "proto udp", "vrf 0", "1.2.3.4", "::1:22,::2:*"]  # fmt: skip


@target("shmem", st.one_of(st.text(max_size=60), mutated([m.encode() for m in _MATCHES], 120).map(
    lambda b: b.decode("utf-8", "replace"))), (MatchError,))  # fmt: skip
def flow_match(text: str) -> None:
    parse_match(text)


_RECORDS = [DropRecord().pack(), DropRecord(timestamp=1, vp_type=2, drop_reason=3).pack()]


@target("shmem", mutated([*_RECORDS, b"".join(_RECORDS)], 4096), (DropLogError,))
def drop_log(data: bytes) -> None:
    for _ in unpack_records(data):
        pass


Fuzz = fuzz_case("shmem")

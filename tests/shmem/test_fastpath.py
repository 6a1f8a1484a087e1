"""The FLOW_SET fast create path leaves exactly what the general path leaves."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.shmem import flowtable as ft
from vrtwist.shmem import layout as L
from vrtwist.shmem.flowtable import FlowTable

_U32 = st.integers(0, 0xFFFFFFFF)
_FLAGS = st.sampled_from(
    [
        L.FLAG_ACTIVE,
        L.FLAG_ACTIVE | L.FLAG_NEW_FLOW | L.FLAG_EVICTED,
        L.FLAG_ACTIVE | 0x0800,
        0,
        L.FLAG_ACTIVE | L.FLAG_VRFT,
    ]
)

_REQ = st.fixed_dictionaries(
    {
        "fr_index": st.sampled_from([-1, 0xFFFFFFFF, -7, 5]),
        "fr_flags": _FLAGS,
        "fr_action": st.integers(0, 5),
        "fr_family": st.sampled_from([2, 2, 10, 7]),
        "fr_flow_proto": st.sampled_from([6, 17, 1]),
        "fr_flow_sport": st.integers(0, 3),
        "fr_flow_dport": st.integers(0, 0x1FFFF),
        "fr_flow_nh_id": st.integers(0, 2),
        "fr_flow_sip_l": _U32,
        "fr_flow_dip_l": st.integers(0, 3),
        "fr_flow_sip_u": _U32,
        "fr_flow_vrf": st.integers(0, 0x1FFFF),
        "fr_flow_dvrf": st.integers(0, 3),
        "fr_ecmp_nh_index": _U32,
        "fr_src_nh_index": _U32,
        "fr_qos_id": st.integers(-2, 0xFFFF),
        "fr_ttl": st.integers(0, 300),
        "fr_drop_reason": st.integers(0, 300),
        "fr_flags1": _U32,
        "fr_extflags": st.integers(0, 2),
    }
)


def _table() -> FlowTable:
    t = FlowTable(bytearray((16 + 4) * L.FLOW_ENTRY_SIZE), 16, 4)
    t._hashrnd = 12345
    return t


def _run(reqs: list[dict[str, Any]], fast: bool) -> tuple[bytes, list[Any], Any, dict[bytes, int]]:
    saved = ft._FAST_NEED
    if not fast:
        # the fast-path test can never match: every request takes the general path
        ft._FAST_NEED = 0
    try:
        t = _table()
        results = [t.flow_set(dict(r)) for r in reqs]
    finally:
        ft._FAST_NEED = saved
    return bytes(t.buf), results, t.counters, dict(t._index)


class FastPathEquivalence(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(st.lists(_REQ, max_size=30))
    def test_same_table_results_counters(self, reqs: list[dict[str, Any]]) -> None:
        fast = _run(reqs, True)
        slow = _run(reqs, False)
        self.assertEqual(fast[1], slow[1])
        self.assertEqual(fast[2], slow[2])
        self.assertEqual(fast[3], slow[3])
        self.assertEqual(fast[0], slow[0])

    def test_fast_path_taken_and_published(self) -> None:
        t = _table()
        r = t.flow_set({"fr_index": -1, "fr_flags": 1, "fr_action": 2, "fr_family": 2})
        self.assertEqual(r.errno, 0)
        e = t.entry(r.index)
        self.assertEqual(e.flags, L.FLAG_ACTIVE)
        self.assertEqual(e.gen_id, r.gen_id)
        again = t.flow_set({"fr_index": -1, "fr_flags": 1, "fr_action": 2, "fr_family": 2})
        self.assertEqual((again.errno, again.index), (-17, r.index))

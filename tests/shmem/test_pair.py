"""The agent's pair in one call (``flow_set_pair``) leaves exactly what its two FLOW_SETs leave."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.shmem import flowtable as ft
from vrtwist.shmem import layout as L
from vrtwist.shmem.flowtable import FlowSetResult, FlowTable

_LINKED = L.FLAG_ACTIVE | L.RFLOW_VALID
_KEY4 = struct.Struct("<BBHHHIII")


def _table() -> tuple[FlowTable, list[int]]:
    t = FlowTable(bytearray((16 + 4) * L.FLOW_ENTRY_SIZE), 16, 4)
    t._hashrnd = 12345
    seen: list[int] = []
    t.set_listeners.append(seen.append)
    return t, seen


def _request(index: int, gen: int, key: tuple[int, int, int, int, int, int], action: int,
             vrf: int, src_nh: int, rindex: int, drop: int, **more: int) -> dict[str, int]:
    proto, sport, dport, nh, sip, dip = key
    req = {
        "fr_op": 0, "fr_index": index, "fr_gen_id": gen, "fr_action": action,
        "fr_flags": _LINKED, "fr_ecmp_nh_index": 0xFFFFFFFF, "fr_family": 2,
        "fr_flow_proto": proto, "fr_flow_sport": sport, "fr_flow_dport": dport,
        "fr_flow_nh_id": nh, "fr_flow_sip_l": sip, "fr_flow_dip_l": dip, "fr_flow_vrf": vrf,
        "fr_src_nh_index": src_nh, "fr_rindex": rindex, "fr_drop_reason": drop,
    }  # fmt: skip
    req.update(more)
    return req


_KEY = st.tuples(st.sampled_from([6, 17]), st.integers(0, 3), st.integers(0, 2),
                 st.integers(1, 2), st.integers(0, 2), st.integers(0, 2))  # fmt: skip
_CASE = st.fixed_dictionaries({
    "key": _KEY,
    "rkey": _KEY,
    "action": st.sampled_from([0, 2, 2, 3, 1]),
    "raction": st.sampled_from([0, 2, 2, 3]),
    "vrf": st.integers(0, 0x1FFFF),
    "src_nh": st.integers(0, 0x1FFFFFFFF),
    "drop": st.integers(0, 300),
    "gen_off": st.sampled_from([0, 0, 0, 0, 0, 1]),
    "trapped": st.sampled_from([True, True, True, True, False]),
    "tcp": st.sampled_from([0, 0, L.TCP_SYN, L.TCP_SYN | L.TCP_ESTABLISHED]),
    "other_key": st.sampled_from([False, False, False, False, True]),
    "extra": st.sampled_from([{}, {}, {}, {}, {}, {"fr_ttl": 9}]),
})  # fmt: skip


def _setup(c: dict[str, Any]) -> tuple[FlowTable, list[int], int, int]:
    t, seen = _table()
    proto, sport, dport, nh, sip, dip = c["key"]
    index, gen = t.hold_on_miss(_KEY4.pack(2, proto, 0, sport, dport, nh, sip, dip), 3, 7)
    if c["trapped"]:
        t.take_new_flow(index)
    if c["tcp"]:
        t.set_tcp_flags(index, c["tcp"])
    return t, seen, index, gen


def _requests(c: dict[str, Any], index: int, gen: int) -> tuple[dict[str, int], dict[str, int]]:
    fkey = c["key"]
    if c["other_key"]:  # the forward names another key than the trapped entry's
        fkey = (fkey[0], fkey[1] + 1, *fkey[2:])
    rev = _request(-1, 0, c["rkey"], c["raction"], c["vrf"] ^ 1, c["src_nh"] + 1, index,
                   c["drop"] + 1, **c["extra"])  # fmt: skip
    fwd = _request(index, (gen + c["gen_off"]) & 0xFF, fkey, c["action"], c["vrf"],
                   c["src_nh"], -1, c["drop"])  # fmt: skip
    return rev, fwd


def _two(t: FlowTable, rev: dict[str, int], fwd: dict[str, int]) -> list[FlowSetResult]:
    """What the agent's flow setup does with two requests."""
    r = t.flow_set(rev)
    if (r.errno < 0 and r.errno != -17) or r.index < 0:
        return [r]
    return [r, t.flow_set({**fwd, "fr_rindex": r.index})]


class PairEquivalence(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(_CASE)
    def test_same_entries_counters_listeners(self, c: dict[str, Any]) -> None:
        t1, seen1, index, gen = _setup(c)
        rev, fwd = _requests(c, index, gen)
        pair = t1.flow_set_pair(dict(rev), dict(fwd))
        results1 = list(pair) if pair is not None else _two(t1, rev, fwd)
        t2, seen2, _, _ = _setup(c)
        results2 = _two(t2, rev, fwd)
        self.assertEqual(results1, results2)
        self.assertEqual(bytes(t1.buf), bytes(t2.buf))
        self.assertEqual(t1.counters, t2.counters)
        self.assertEqual(t1._index, t2._index)
        self.assertEqual(seen1, seen2)

    def test_common_case_taken_in_one_call(self) -> None:
        """The agent's usual pair (a trapped SYN, FORWARD both ways) is one call."""
        c = {"key": (6, 1, 2, 1, 1, 2), "rkey": (6, 2, 1, 1, 2, 1), "action": 2, "raction": 2,
             "vrf": 1, "src_nh": 5, "drop": 0, "gen_off": 0, "trapped": True, "tcp": 0,
             "other_key": False, "extra": {}}  # fmt: skip
        t, seen, index, gen = _setup(c)
        pair = t.flow_set_pair(*_requests(c, index, gen))
        assert pair is not None
        rev, fwd = pair
        self.assertEqual((fwd.errno, fwd.index, fwd.gen_id), (0, index, gen))
        self.assertEqual(seen, [rev.index, index])
        self.assertEqual(t.entry(index).rflow, rev.index)
        self.assertEqual(t.entry(rev.index).rflow, index)
        self.assertEqual(t.counters.action_count, 1)

    def test_refused_pair_writes_nothing(self) -> None:
        """A stale generation is not the common case: nothing is written, the two
        requests then say what is wrong (-EBADF on the forward)."""
        c = {"key": (6, 1, 2, 1, 1, 2), "rkey": (6, 2, 1, 1, 2, 1), "action": 2, "raction": 2,
             "vrf": 1, "src_nh": 5, "drop": 0, "gen_off": 1, "trapped": True, "tcp": 0,
             "other_key": False, "extra": {}}  # fmt: skip
        t, seen, index, gen = _setup(c)
        before = bytes(t.buf)
        rev, fwd = _requests(c, index, gen)
        self.assertIsNone(t.flow_set_pair(rev, fwd))
        self.assertEqual(bytes(t.buf), before)
        self.assertEqual(seen, [])
        self.assertEqual(_two(t, rev, fwd)[1].errno, -9)


_LINKED_REQ = st.fixed_dictionaries({
    "index": st.sampled_from([-1, -1, 0, 1, 5, 17, 0xFFFFFFFF, 40]),
    "gen": st.integers(0, 3),
    "key": _KEY,
    "action": st.sampled_from([0, 2, 3, 1, 7]),
    "vrf": st.integers(0, 0x1FFFF),
    "src_nh": st.integers(0, 5),
    "rindex": st.sampled_from([-1, 0, 1, 2, 5, 17, 30]),
    "drop": st.integers(0, 300),
    "extra": st.sampled_from([{}, {}, {}, {"fr_ttl": 9}, {"fr_family": 10},
                              {"fr_extflags": 2}, {"fr_flags": L.FLAG_ACTIVE}]),
    # a forward at one of the live entries, with its key and generation
    "aim": st.sampled_from([None, None, 0, 1, 2, 3]),
})  # fmt: skip


def _run_linked(reqs: list[dict[str, Any]], fast: bool) -> tuple[bytes, list[Any], Any, Any]:
    saved = ft._LINKED_FAST
    ft._LINKED_FAST = fast
    try:
        t, seen = _table()
        for i in range(6):  # some live entries to link to, two of them trapped HOLDs
            t.hold_on_miss(_KEY4.pack(2, 6, 0, i, 1, 1, 1, 2), 0, 0)
        t.take_new_flow(0)
        t.take_new_flow(1)
        results = []
        for r in reqs:
            index, gen, key = r["index"], r["gen"], r["key"]
            if r["aim"] is not None:
                index, gen, key = r["aim"], 1, (6, r["aim"], 1, 1, 1, 2)
            results.append(t.flow_set(_request(index, gen, key, r["action"], r["vrf"],
                                               r["src_nh"], r["rindex"], r["drop"],
                                               **r["extra"])))  # fmt: skip
    finally:
        ft._LINKED_FAST = saved
    return bytes(t.buf), results, t.counters, (dict(t._index), seen)


class LinkedEquivalence(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(_LINKED_REQ, max_size=20))
    def test_linked_requests_same_as_general_path(self, reqs: list[dict[str, Any]]) -> None:
        """One flow of a pair at a time (as over ksync): the linked fast path leaves what
        the general path leaves, refusals included."""
        fast = _run_linked(reqs, True)
        slow = _run_linked(reqs, False)
        self.assertEqual(fast[1], slow[1])
        self.assertEqual(fast[2], slow[2])
        self.assertEqual(fast[3], slow[3])
        self.assertEqual(fast[0], slow[0])

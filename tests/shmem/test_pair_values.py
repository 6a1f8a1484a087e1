"""``flow_set_pair_values`` (the agent's pair from the requests' values) is
``flow_set_pair`` of the two mappings: same entries, counters, listener calls, answers."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from twisted.trial.unittest import SynchronousTestCase

from tests.shmem.test_pair import _CASE, _requests, _setup


class PairValuesTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(_CASE)
    def test_same_as_mappings(self, c: dict[str, Any]) -> None:
        if c["extra"]:  # a mapping with more than the 17 fields is never a pair
            return
        t1, seen1, index, gen = _setup(c)
        rev, fwd = _requests(c, index, gen)
        pair = t1.flow_set_pair(rev, fwd)
        t2, seen2, _, _ = _setup(c)
        done = t2.flow_set_pair_values(tuple(rev.values()), tuple(fwd.values()))
        if pair is None:
            self.assertIsNone(done)
        else:
            assert done is not None
            self.assertEqual(done, (pair[0].index, pair[0].gen_id, pair[1].gen_id))
        self.assertEqual(bytes(t1.buf), bytes(t2.buf))
        self.assertEqual(t1.counters, t2.counters)
        self.assertEqual(t1._index, t2._index)
        self.assertEqual(seen1, seen2)

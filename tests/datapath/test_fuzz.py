"""Random request sequences: the dispatcher always answers, and counts stay sane.

A hostile or buggy peer can send any field values in any order; every request must
get a vr_response (never an exception), every reply must encode, and the reference
counts of listed objects must stay positive.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.datapath.dispatcher import Datapath
from vrtwist.sandesh import SPECS_BY_NAME, encode
from vrtwist.sandesh._schema import (
    T_BYTE,
    T_I16,
    T_I32,
    T_I64,
    T_LIST,
    T_STRING,
    T_U16,
    T_U32,
    T_U64,
)

_RANGES = {
    T_BYTE: (0, 255),
    T_I16: (-(1 << 15), (1 << 15) - 1),
    T_U16: (0, (1 << 16) - 1),
    T_I32: (-(1 << 31), (1 << 31) - 1),
    T_U32: (0, (1 << 32) - 1),
    T_I64: (-(1 << 63), (1 << 63) - 1),
    T_U64: (0, (1 << 64) - 1),
}
# request kinds the fuzzer mixes (the table-owning ones, plus stats and ops)
NAMES = [
    "vr_interface_req", "vr_nexthop_req", "vr_route_req", "vr_mpls_req", "vr_vxlan_req",
    "vr_mirror_req", "vr_vrf_assign_req", "vr_vrf_req", "vr_vrf_stats_req",
    "vr_drop_stats_req", "vrouter_ops", "vr_qos_map_req", "vr_fc_map_req", "vr_info_req",
    "vr_mem_stats_req", "vr_pkt_drop_log_req", "vr_hugepage_config", "vr_flow_req",
]  # fmt: skip
# small values hit existing objects; the wide ones hit range checks
_SMALL = st.integers(-2, 12)


def _value(wire: int, elem: int) -> st.SearchStrategy[Any]:
    if wire == T_STRING:
        return st.sampled_from(["", "1", "tap1", "vif0/1", "vif0/99", "\u00e9"])
    if wire == T_LIST:
        lo, hi = _RANGES.get(elem, (0, 255))
        return st.lists(st.one_of(st.integers(lo, hi), st.integers(max(lo, 0), min(hi, 12))),
                        max_size=20)  # fmt: skip
    lo, hi = _RANGES.get(wire, (0, 255))
    return st.one_of(st.integers(max(lo, -2), min(hi, 12)), st.integers(lo, hi))


@st.composite
def requests(draw: st.DrawFn) -> Any:
    name = draw(st.sampled_from(NAMES))
    spec = SPECS_BY_NAME[name]
    values: dict[str, Any] = {}
    for f in spec.fields:
        if f.enum is not None:
            values[f.name] = draw(st.integers(-1, 6))
        elif f.name.endswith(("_family",)):
            values[f.name] = draw(st.sampled_from([0, 2, 7, 10, 99]))
        elif f.name in ("nhr_type", "vifr_type"):
            values[f.name] = draw(st.integers(0, 11))
        elif draw(st.booleans()):
            values[f.name] = draw(_value(f.wire, f.elem))
    return spec.cls(**values)


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(st.lists(requests(), min_size=1, max_size=40))
    def test_always_answers(self, msgs: list[Any]) -> None:
        dp = Datapath()
        for msg in msgs:
            reply = dp.handle(msg)
            self.assertEqual(type(reply[0][0]).__name__, "vr_response")
            for message in reply:
                for obj in message:
                    encode(obj)
            got = dp.dispatch(msg)
            self.assertIsInstance(got.code, int)
            list(got.objects)
            for vif in dp.tables.interfaces.values():
                self.assertGreaterEqual(vif.users, 1)
            for nh in dp.tables.nexthops.values():
                self.assertGreaterEqual(nh.users, 1)

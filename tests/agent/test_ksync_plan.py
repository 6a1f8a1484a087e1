"""The ksync planner and in-flight window on their own: plain data in, ordered ops out."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase

from vrtwist.agent.dpstate import MPLS, NH, ROUTE, VIF, Key
from vrtwist.agent.ksync_plan import (
    State,
    adoptions,
    covering_route,
    delete_request,
    learnt,
    note_route,
    plan,
    tunnels,
)
from vrtwist.agent.ksync_window import InFlightWindow
from vrtwist.datapath import constants as C

V4 = C.AF_INET


def vif(idx: int, vrf: int = 1, nh: int = 10, name: str = "tap0") -> tuple[str, dict[str, Any]]:
    return "vr_interface_req", {"vifr_idx": idx, "vifr_type": 3, "vifr_name": name,
                                "vifr_vrf": vrf, "vifr_nh_id": nh}


def nh(i: int, type_: int = C.NH_ENCAP, vrf: int = 1, **more: Any) -> tuple[str, dict[str, Any]]:
    return "vr_nexthop_req", {"nhr_id": i, "nhr_type": type_, "nhr_vrf": vrf,
                              "nhr_family": V4, **more}


def label(n: int, nhid: int) -> tuple[str, dict[str, Any]]:
    return "vr_mpls_req", {"mr_label": n, "mr_nhid": nhid}


def route(vrf: int, prefix: bytes, plen: int, nhid: int) -> tuple[Key, tuple[str, dict[str, Any]]]:
    key = (ROUTE, V4, vrf, prefix, plen)
    return key, ("vr_route_req", {"rtr_vrf_id": vrf, "rtr_family": V4, "rtr_prefix": prefix,
                                  "rtr_prefix_len": plen, "rtr_nh_id": nhid})


def ops_of(dirty: set[Key], desired: State, applied: State, *, retained: set[Key] | None = None,
           errors: dict[Key, str] | None = None) -> list[tuple[str, Key]]:
    out = plan(dirty, desired, applied, retained=retained or set(), errors=errors or {},
               fabric=(VIF, 0))
    return [(op, key) for _order, op, key, _name, _fields in out]


class PlanTests(TestCase):
    def test_adds_in_dependency_order(self) -> None:
        rkey, r = route(1, b"\x0a\x00\x00\x03", 32, 10)
        desired: State = {rkey: r, (MPLS, 16): label(16, 10), (NH, 10): nh(10),
                          (VIF, 3): vif(3)}
        got = ops_of(set(desired), desired, {})
        self.assertEqual(got, [("add", (VIF, 3)), ("add", (NH, 10)), ("add", (MPLS, 16)),
                               ("add", rkey)])

    def test_deletes_come_first_and_in_reverse_order(self) -> None:
        rkey, r = route(1, b"\x0a\x00\x00\x03", 32, 10)
        applied: State = {rkey: r, (NH, 10): nh(10), (VIF, 3): vif(3)}
        desired: State = {(VIF, 4): vif(4)}
        got = ops_of(set(applied) | set(desired), desired, applied)
        self.assertEqual(got, [("del", rkey), ("del", (NH, 10)), ("del", (VIF, 3)),
                               ("add", (VIF, 4))])

    def test_equal_objects_need_nothing_and_clean_keys_are_not_looked_at(self) -> None:
        desired: State = {(VIF, 3): vif(3), (NH, 10): nh(10)}
        self.assertEqual(ops_of({(VIF, 3)}, desired, dict(desired)), [])
        self.assertEqual(ops_of(set(), desired, {}), [])

    def test_a_changed_object_is_added_over_the_old_one(self) -> None:
        got = ops_of({(VIF, 3)}, {(VIF, 3): vif(3, vrf=2)}, {(VIF, 3): vif(3, vrf=1)})
        self.assertEqual(got, [("add", (VIF, 3))])

    def test_a_next_hop_changing_type_is_deleted_first(self) -> None:
        got = ops_of({(NH, 10)}, {(NH, 10): nh(10, C.NH_TUNNEL)}, {(NH, 10): nh(10)})
        self.assertEqual(got, [("del", (NH, 10)), ("add", (NH, 10))])

    def test_a_failed_object_is_sent_again(self) -> None:
        desired: State = {(VIF, 3): vif(3)}
        got = ops_of({(VIF, 3)}, desired, dict(desired), errors={(VIF, 3): "EINVAL"})
        self.assertEqual(got, [("add", (VIF, 3))])

    def test_retained_objects_are_not_deleted(self) -> None:
        applied: State = {(NH, 10): nh(10, C.NH_TUNNEL), (NH, 11): nh(11)}
        got = ops_of(set(applied), {}, applied, retained={(NH, 10)})
        self.assertEqual(got, [("del", (NH, 11))])

    def test_the_fabric_vif_is_left_as_found(self) -> None:
        fabric = (VIF, 0)
        self.assertEqual(ops_of({fabric}, {fabric: vif(0, vrf=0)}, {fabric: vif(0, vrf=5)}), [])
        # but added when it is missing
        self.assertEqual(ops_of({fabric}, {fabric: vif(0, vrf=0)}, {}), [("add", fabric)])

    def test_the_inputs_are_not_changed(self) -> None:
        desired: State = {(VIF, 3): vif(3)}
        applied: State = {(VIF, 4): vif(4)}
        before = (dict(desired), dict(applied))
        ops_of({(VIF, 3), (VIF, 4)}, desired, applied)
        self.assertEqual((desired, applied), before)


class CoveringRouteTests(TestCase):
    def test_longest_shorter_route_covers(self) -> None:
        k8, r8 = route(1, b"\x0a\x00\x00\x00", 8, 20)
        k24, r24 = route(1, b"\x0a\x01\x02\x00", 24, 21)
        k32, _ = route(1, b"\x0a\x01\x02\x03", 32, 22)
        applied: State = {k8: r8, k24: r24}
        lens: dict[tuple[int, int], set[int]] = {}
        for k in applied:
            note_route(lens, k)
        self.assertEqual(covering_route(applied, lens, k32), r24[1])
        self.assertEqual(covering_route(applied, lens, k24), r8[1])
        self.assertIsNone(covering_route(applied, lens, k8))
        self.assertIsNone(covering_route(applied, lens, (ROUTE, V4, 2, b"\x0a\x01\x02\x03", 32)))

    def test_delete_request_names_the_cover_or_discard(self) -> None:
        k32, r32 = route(1, b"\x0a\x01\x02\x03", 32, 22)
        _, r24 = route(1, b"\x0a\x01\x02\x00", 24, 21)
        bare = delete_request("vr_route_req", k32, r32[1], None)
        self.assertEqual((bare["rtr_nh_id"], bare["rtr_replace_plen"]), (C.NH_DISCARD_ID, 0))
        covered = delete_request("vr_route_req", k32, r32[1], r24[1])
        self.assertEqual((covered["rtr_nh_id"], covered["rtr_replace_plen"]), (21, 24))
        self.assertEqual(delete_request("vr_nexthop_req", (NH, 10), nh(10)[1], None),
                         {"nhr_id": 10})


class AdoptionTests(TestCase):
    def test_a_vm_interface_keeps_its_ids(self) -> None:
        present: State = {
            (VIF, 1): vif(1, vrf=0, name="eth0"),  # not a VM interface
            (VIF, 3): vif(3, vrf=1, nh=10, name="tap0"),
            (NH, 10): nh(10, C.NH_ENCAP, nhr_encap_oif_id=[3]),
            (NH, 11): nh(11, C.NH_ENCAP, nhr_family=C.AF_BRIDGE, nhr_encap_oif_id=[3]),
            (NH, 12): nh(12, C.NH_RCV, nhr_encap_oif_id=[]),
            (MPLS, 16): label(16, 10),
        }
        [(name, adopted)] = adoptions(present)
        self.assertEqual(name, "tap0")
        self.assertEqual((adopted.vif, adopted.vrf_id, adopted.l3_nh, adopted.l2_nh,
                          adopted.label, adopted.rcv_nh, adopted.resolve_nh),
                         (3, 1, 10, 11, 16, 12, None))

    def test_tunnels_and_what_rides_on_them_are_learnt(self) -> None:
        tun = nh(30, C.NH_TUNNEL, vrf=0, nhr_flags=C.NH_FLAG_TUNNEL_GRE,
                 nhr_tun_dip=0x0100000A, nhr_encap=[1, 2, 3, 4, 5, 6, 7, 8])
        rkey, r = route(1, b"\x0a\x09\x00\x01", 32, 30)
        fkey, f = route(0, b"\x0a\x09\x00\x02", 32, 30)  # fabric VRF: not learnt
        present: State = {(NH, 30): tun, rkey: r, fkey: f, (NH, 10): nh(10)}
        self.assertEqual(learnt(present), {(NH, 30), rkey})
        self.assertEqual(tunnels(present), [(30, "gre", 0x0100000A, b"\x01\x02\x03\x04\x05\x06")])


class InFlightWindowTests(TestCase):
    def test_room_waits_for_answers(self) -> None:
        w = InFlightWindow(2)
        w.sent(2)
        waited = ensureDeferred(w.room())
        self.assertNoResult(waited)
        w.answered(1)
        self.successResultOf(waited)
        self.assertEqual(w.in_flight, 1)

    def test_batches_finish_in_order_and_flushes_fire(self) -> None:
        finished: list[int] = []
        w = InFlightWindow(8)
        w.on_finished = lambda: finished.append(w.finished)
        first: Deferred[None] = Deferred()
        second: Deferred[None] = Deferred()
        w.start_batch()
        w.track([first])
        w.start_batch()
        w.track([second])
        flushed = w.when_flushed(pending=False)
        second.callback(None)  # answered first, counted after the batch before it
        self.assertEqual((w.finished, finished), (0, []))
        self.assertFalse(w.settled)
        first.callback(None)
        self.assertEqual((w.finished, finished), (2, [1, 2]))
        self.assertTrue(w.settled)
        self.successResultOf(flushed)

    def test_a_pending_change_is_one_more_batch(self) -> None:
        w = InFlightWindow(8)
        self.successResultOf(w.when_flushed(pending=False))
        d = w.when_flushed(pending=True)
        self.assertNoResult(d)
        w.start_batch()
        w.track([])
        self.successResultOf(d)

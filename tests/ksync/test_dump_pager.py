"""DumpPager: the one implementation of ksync dump paging (clients and the agent use it)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.ksync.clientcore import DumpPager, KsyncProtocolError
from vrtwist.sandesh import schema
from vrtwist.sandesh.constants import AF_BRIDGE, DUMP, GET


class DumpPagerTests(SynchronousTestCase):
    def test_follows_the_marker_until_the_last_page(self) -> None:
        original = schema.vr_interface_req(h_op=GET, vifr_marker=-1)
        pager = DumpPager(original)
        self.assertEqual((pager.request.h_op, original.h_op), (DUMP, GET))
        nxt = pager.page([schema.vr_interface_req(vifr_idx=i) for i in (0, 1, 2)], more=True)
        self.assertIs(nxt, pager.request)
        assert nxt is not None
        self.assertEqual((nxt.vifr_marker, nxt.h_op, original.vifr_marker), (2, DUMP, -1))
        self.assertIsNone(pager.page([schema.vr_interface_req(vifr_idx=3)], more=False))
        self.assertEqual([o.vifr_idx for o in pager.objects], [0, 1, 2, 3])
        self.assertEqual(pager.pages, 2)

    def test_bridge_marker_is_mac_and_index(self) -> None:
        pager = DumpPager(schema.vr_route_req(rtr_family=AF_BRIDGE, rtr_vrf_id=3))
        nxt = pager.page([schema.vr_route_req(rtr_mac=[2, 0, 0, 0, 0, 9], rtr_index=41)], True)
        assert nxt is not None
        self.assertEqual((nxt.rtr_mac, nxt.rtr_index, nxt.rtr_vrf_id),
                         ([2, 0, 0, 0, 0, 9], 41, 3))

    def test_more_without_objects_is_a_protocol_error(self) -> None:
        pager = DumpPager(schema.vr_nexthop_req(nhr_marker=-1))
        pager.page([schema.vr_nexthop_req(nhr_id=1)], more=True)
        e = self.assertRaises(KsyncProtocolError, pager.page, [], True)
        self.assertIn("no objects", str(e))
        self.assertEqual([o.nhr_id for o in pager.objects], [1])  # nothing received is lost

    def test_a_dump_that_never_ends_stops(self) -> None:
        pager = DumpPager(schema.vr_mpls_req(mr_marker=-1), max_pages=3)
        pager.page([schema.vr_mpls_req(mr_label=1)], True)
        pager.page([schema.vr_mpls_req(mr_label=2)], True)
        e = self.assertRaises(KsyncProtocolError, pager.page, [schema.vr_mpls_req(mr_label=3)],
                              True)
        self.assertIn("3 pages", str(e))
        self.assertEqual([o.mr_label for o in pager.objects], [1, 2, 3])

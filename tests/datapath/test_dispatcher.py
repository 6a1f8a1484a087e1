"""The request dispatcher: replies as the vRouter shapes them, paging, seams."""

from __future__ import annotations

import errno
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import BridgeRoutesInMemory, Datapath, fields_of, make
from vrtwist.datapath.interfaces import IBridgeRoutes, IDatapath, IRequestHandler
from vrtwist.ksync.interfaces import IKsyncDispatcher
from vrtwist.sandesh import decode, encode

MAC = list(bytes.fromhex("deadbeef0002"))


def req(name: str, **fields: Any) -> Any:
    return make(name, fields)


class DispatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dp = Datapath()

    def call(self, name: str, **fields: Any) -> list[list[Any]]:
        reply = self.dp.handle(req(name, **fields))
        # every reply survives the codec
        for message in reply:
            decode(b"".join(encode(m) for m in message))
        return reply

    def code(self, name: str, **fields: Any) -> int:
        return int(self.call(name, **fields)[0][0].resp_code)

    def add_vif(self, idx: int) -> None:
        self.assertEqual(
            self.code(
                "vr_interface_req",
                h_op=C.OP_ADD,
                vifr_idx=idx,
                vifr_type=C.VIF_TYPE_VIRTUAL,
                vifr_name="tap%d" % idx,
                vifr_mac=MAC,
            ),
            0,
        )

    def test_interfaces(self) -> None:
        verifyObject(IDatapath, self.dp)
        verifyObject(IKsyncDispatcher, self.dp)
        verifyObject(IBridgeRoutes, self.dp.bridge)
        for handler in self.dp.handlers.values():
            verifyObject(IRequestHandler, handler)

    def test_get_has_response_then_object(self) -> None:
        self.add_vif(1)
        reply = self.call("vr_interface_req", h_op=C.OP_GET, vifr_idx=1)
        self.assertEqual(len(reply), 1)
        resp, obj = reply[0]
        self.assertEqual((resp.h_op, resp.resp_code), (C.OP_RESPONSE, 0))
        self.assertEqual((obj.vifr_idx, obj.vifr_name, obj.vifr_mac), (1, "tap1", MAC))

    def test_get_with_drop_stats(self) -> None:
        self.add_vif(1)
        reply = self.call(
            "vr_interface_req", h_op=C.OP_GET, vifr_idx=1, vifr_flags=C.VIF_FLAG_GET_DROP_STATS
        )
        self.assertEqual(
            [type(m).__name__ for m in reply[0]],
            ["vr_response", "vr_interface_req", "vr_drop_stats_req"],
        )

    def test_errors_answer_only_response(self) -> None:
        reply = self.call("vr_interface_req", h_op=C.OP_GET, vifr_idx=3)
        self.assertEqual(len(reply), 1)
        self.assertEqual(len(reply[0]), 1)
        self.assertEqual(reply[0][0].resp_code, -errno.ENOENT)
        self.assertEqual(self.code("vr_interface_req", h_op=9), -errno.EOPNOTSUPP)
        self.assertEqual(self.code("vr_response", h_op=C.OP_RESPONSE), -errno.EOPNOTSUPP)

    def test_dump_pages_with_marker(self) -> None:
        for i in range(100):
            self.add_vif(i)
        seen: list[int] = []
        marker = -1
        pages = 0
        while True:
            reply = self.call("vr_interface_req", h_op=C.OP_DUMP, vifr_marker=marker)
            code = reply[0][0].resp_code
            objects = reply[1] if len(reply) > 1 else []
            self.assertEqual(code & ~C.DUMP_INCOMPLETE, len(objects))
            self.assertLessEqual(sum(len(encode(o)) for o in objects), C.DUMP_PAGE_SIZE)
            seen += [o.vifr_idx for o in objects]
            pages += 1
            if not code & C.DUMP_INCOMPLETE:
                break
            marker = objects[-1].vifr_idx
        self.assertEqual(seen, list(range(100)))
        self.assertGreater(pages, 1)

    def test_empty_dump(self) -> None:
        reply = self.call("vr_mpls_req", h_op=C.OP_DUMP, mr_marker=-1)
        self.assertEqual(len(reply), 1)
        self.assertEqual(reply[0][0].resp_code, 0)

    def test_dispatch_for_ksync(self) -> None:
        self.add_vif(1)
        got = self.dp.dispatch(req("vr_interface_req", h_op=C.OP_GET, vifr_idx=1))
        self.assertEqual((got.code, got.dump), (0, False))
        self.assertEqual([o.vifr_idx for o in got.objects], [1])
        got = self.dp.dispatch(req("vr_interface_req", h_op=C.OP_DUMP, vifr_marker=-1))
        self.assertTrue(got.dump)
        self.assertEqual([o.vifr_idx for o in got.objects], [1])
        got = self.dp.dispatch(req("vr_nexthop_req", h_op=C.OP_DEL, nhr_id=77))
        self.assertEqual((got.code, list(got.objects)), (-errno.EINVAL, []))

    def test_route_dump_bad_family_is_an_error(self) -> None:
        got = self.dp.dispatch(req("vr_route_req", h_op=C.OP_DUMP, rtr_family=99))
        self.assertEqual(got.code, -errno.ENOENT)

    def test_vxlan_dump_marker_is_vnid(self) -> None:
        self.add_vif(1)
        self.code(
            "vr_nexthop_req",
            h_op=C.OP_ADD,
            nhr_id=21,
            nhr_type=C.NH_ENCAP,
            nhr_family=C.AF_BRIDGE,
            nhr_encap_oif_id=[1],
            nhr_flags=1,
        )
        for vnid in (0, 4, 9):
            self.assertEqual(
                self.code("vr_vxlan_req", h_op=C.OP_ADD, vxlanr_vnid=vnid, vxlanr_nhid=21), 0
            )
        reply = self.call("vr_vxlan_req", h_op=C.OP_DUMP, vxlanr_vnid=0)
        self.assertEqual([o.vxlanr_vnid for o in reply[1]], [0, 4, 9])
        reply = self.call("vr_vxlan_req", h_op=C.OP_DUMP, vxlanr_vnid=4)
        self.assertEqual([o.vxlanr_vnid for o in reply[1]], [9])

    def test_bridge_routes_without_shared_memory(self) -> None:
        self.add_vif(1)
        self.code(
            "vr_nexthop_req",
            h_op=C.OP_ADD,
            nhr_id=21,
            nhr_type=C.NH_ENCAP,
            nhr_family=C.AF_BRIDGE,
            nhr_encap_oif_id=[1],
            nhr_flags=1,
        )
        route = dict(rtr_family=C.AF_BRIDGE, rtr_vrf_id=0, rtr_mac=MAC, rtr_nh_id=21)
        self.assertEqual(self.code("vr_route_req", h_op=C.OP_ADD, **route), 0)
        self.assertEqual(self.dp.tables.nexthops[21].users, 2)
        got = self.call("vr_route_req", h_op=C.OP_GET, **route)[0][1]
        self.assertEqual(got.rtr_nh_id, 21)
        self.assertEqual(self.code("vr_route_req", h_op=C.OP_ADD, **dict(route, rtr_nh_id=5)), -2)
        self.assertEqual(
            self.code("vr_route_req", h_op=C.OP_ADD, **dict(route, rtr_mac=MAC[:5])), -22
        )
        reply = self.call("vr_route_req", h_op=C.OP_DUMP, rtr_family=C.AF_BRIDGE, rtr_vrf_id=0)
        self.assertEqual(len(reply[1]), 1)
        # an inet route may stitch the MAC now that the bridge entry exists
        self.assertEqual(
            self.code(
                "vr_route_req",
                h_op=C.OP_ADD,
                rtr_family=C.AF_INET,
                rtr_prefix=[1, 2, 3, 4],
                rtr_prefix_len=32,
                rtr_nh_id=21,
                rtr_mac=MAC,
            ),
            0,
        )
        self.assertEqual(self.code("vr_route_req", h_op=C.OP_DEL, **route), 0)
        self.assertEqual(self.code("vr_route_req", h_op=C.OP_DEL, **route), -errno.ENOENT)

    def test_registered_handlers_win(self) -> None:
        @implementer(IRequestHandler)
        class Flows:
            def handle(self, request: Any) -> list[list[Any]]:
                return [[Datapath.response(0), make("vr_flow_response", {"fresp_index": 7})]]

        self.assertEqual(self.code("vr_flow_req"), -errno.EOPNOTSUPP)
        self.dp.register("vr_flow_req", Flows())
        self.assertEqual(self.call("vr_flow_req")[0][1].fresp_index, 7)
        self.assertRaises(KeyError, self.dp.register, "vr_nothing", Flows())

        @implementer(IBridgeRoutes)
        class Bridge(BridgeRoutesInMemory):
            pass

        bridge = Bridge(self.dp)
        self.dp.register_bridge(bridge)
        self.assertIs(self.dp.bridge, bridge)

    def test_vrouter_ops(self) -> None:
        ops = self.call("vrouter_ops", h_op=C.OP_GET)[0][1]
        self.assertEqual(ops.vo_interfaces, C.VR_DEF_INTERFACES)
        self.assertEqual(ops.vo_flow_entries, C.VR_DEF_FLOW_ENTRIES)
        self.assertEqual(ops.vo_oflow_entries, 105472)
        self.assertEqual(ops.vo_oflow_bridge_entries, 53248)
        self.assertIn("build-info", ops.vo_build_info)
        knobs = {name: -1 for name in fields_of(ops) if name.startswith("vo_") and "perf" in name}
        knobs["vo_mudp"] = 1
        self.assertEqual(self.code("vrouter_ops", h_op=C.OP_ADD, **knobs), 0)
        ops2 = self.call("vrouter_ops", h_op=C.OP_GET)[0][1]
        self.assertEqual(ops2.vo_mudp, 1)
        self.assertEqual(ops2.vo_perfr, ops.vo_perfr)
        self.dp.add_usage_source(lambda: {"vo_flow_used_entries": 3})
        self.assertEqual(self.call("vrouter_ops", h_op=C.OP_GET)[0][1].vo_flow_used_entries, 3)

    def test_reset(self) -> None:
        self.add_vif(1)
        hooks: list[int] = []
        self.dp.reset_hooks.append(lambda: hooks.append(1))
        self.assertEqual(self.code("vrouter_ops", h_op=C.OP_RESET), 0)
        self.assertEqual(self.dp.tables.interfaces, {})
        self.assertEqual(hooks, [1])

    def test_drop_stats(self) -> None:
        self.dp.tables.count_drop("invalid_if", None, 5)
        got = self.call("vr_drop_stats_req", h_op=C.OP_GET, vds_core=0)[0][1]
        self.assertEqual(got.vds_invalid_if, 5)
        self.assertEqual(self.code("vr_drop_stats_req", h_op=C.OP_RESET), 0)
        got = self.call("vr_drop_stats_req", h_op=C.OP_GET, vds_core=0)[0][1]
        self.assertEqual(got.vds_invalid_if, 0)
        self.assertEqual(self.code("vr_drop_stats_req", h_op=C.OP_GET, vds_core=99), -22)

    def test_vrf_stats_and_misc(self) -> None:
        self.add_vif(1)
        got = self.call("vr_vrf_stats_req", h_op=C.OP_GET, vsr_vrf=0)[0][1]
        self.assertEqual(got.vsr_vrf, 0)
        reply = self.call("vr_vrf_stats_req", h_op=C.OP_DUMP, vsr_marker=-1)
        self.assertEqual([o.vsr_vrf for o in reply[1]], [0])
        self.assertEqual(self.code("vr_mem_stats_req", h_op=C.OP_GET), 0)
        self.assertEqual(self.code("vr_pkt_drop_log_req", h_op=C.OP_GET), 0)
        self.assertEqual(self.code("vr_info_req", h_op=C.OP_DUMP), 1)
        self.assertEqual(self.code("vr_hugepage_config", vhp_op=C.OP_ADD), 0)
        self.assertEqual(self.code("vr_hugepage_config", vhp_op=C.OP_GET), -errno.EOPNOTSUPP)
        self.assertEqual(self.code("vr_qos_map_req", h_op=C.OP_ADD, qmr_id=1), 0)
        self.assertEqual(self.code("vr_qos_map_req", h_op=C.OP_GET, qmr_id=1), 0)
        self.assertEqual(
            self.code(
                "vr_fc_map_req",
                h_op=C.OP_ADD,
                fmr_id=[1],
                fmr_dscp=[1],
                fmr_mpls_qos=[1],
                fmr_dotonep=[1],
                fmr_queue_id=[1],
            ),
            0,
        )
        self.assertEqual(self.code("vr_fc_map_req", h_op=C.OP_ADD, fmr_id=[1]), -22)

"""The loaded vr.thrift matches the newest upstream vr.sandesh catalogue (spec 2.2, 2.3)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.sandesh import MESSAGE_NAMES, SPECS_BY_NAME, schema
from vrtwist.sandesh.constants import ADD, DUMP, FLOW_TABLE_GET, RESET, RESPONSE

FIELD_COUNTS = {
    "vr_nexthop_req": 30,
    "vr_interface_req": 85,
    "vr_vxlan_req": 4,
    "vr_route_req": 14,
    "vr_mpls_req": 5,
    "vr_mirror_req": 9,
    "vr_vrf_req": 7,
    "vr_flow_req": 39,
    "vr_vrf_assign_req": 7,
    "vr_vrf_stats_req": 33,
    "vr_response": 2,
    "vrouter_ops": 47,
    "vr_mem_stats_req": 72,
    "vr_info_req": 9,
    "vr_pkt_drop_log_req": 12,
    "vr_drop_stats_req": 58,
    "vr_qos_map_req": 10,
    "vr_fc_map_req": 8,
    "vr_flow_response": 8,
    "vr_flow_table_data": 17,
    "vr_bridge_table_data": 5,
    "vr_hugepage_config": 7,
}


class SchemaTests(SynchronousTestCase):
    def test_catalogue(self) -> None:
        self.assertEqual(sorted(MESSAGE_NAMES), sorted(FIELD_COUNTS))
        for name, n in FIELD_COUNTS.items():
            self.assertEqual(len(SPECS_BY_NAME[name].fields), n, name)

    def test_declaration_order_is_id_order_except_gaps(self) -> None:
        for name, spec in SPECS_BY_NAME.items():
            ids = [f.fid for f in spec.fields]
            self.assertEqual(ids, sorted(ids), name)
            self.assertEqual(len(set(ids)), len(ids), name)

    def test_spot_checks(self) -> None:
        def field(msg: str, name: str) -> tuple[int, str]:
            f = {f.name: f for f in SPECS_BY_NAME[msg].fields}[name]
            return f.fid, f.type_name

        self.assertEqual(field("vr_interface_req", "vifr_nh_id"), (48, "i32"))
        self.assertEqual(field("vr_interface_req", "vifr_fat_flow_src_prefix_h"), (77, "list<u64>"))
        self.assertEqual(
            field("vr_interface_req", "vifr_fat_flow_exclude_ip6_plen_list"), (68, "list<u16>")
        )
        self.assertEqual(field("vr_interface_req", "vifr_vlan_name"), (92, "list<byte>"))
        self.assertEqual(field("vr_interface_req", "vifr_ip6_u"), (40, "u64"))
        self.assertEqual(field("vr_nexthop_req", "nhr_encap_oif_id"), (6, "list<i32>"))
        self.assertEqual(field("vr_nexthop_req", "nhr_tun_sip"), (10, "u32"))
        self.assertEqual(field("vr_flow_req", "fr_op"), (1, "flow_op"))
        self.assertEqual(field("vr_flow_req", "fr_flow_sport"), (12, "u16"))
        self.assertEqual(field("vr_flow_req", "fr_flags1"), (38, "i16"))
        self.assertEqual(field("vr_hugepage_config", "vhp_psize"), (3, "list<u32>"))
        self.assertEqual(field("vr_hugepage_config", "vhp_mem"), (2, "list<u64>"))
        self.assertEqual(field("vr_bridge_table_data", "btable_op"), (1, "sandesh_op"))
        self.assertEqual(field("vrouter_ops", "vo_build_info"), (12, "string"))
        self.assertEqual(field("vr_fc_map_req", "fmr_id"), (3, "list<i16>"))

    def test_enums_and_defaults(self) -> None:
        self.assertEqual((schema.sandesh_op.ADD, schema.sandesh_op.RESET), (ADD, RESET))
        self.assertEqual(schema.sandesh_op.DUMP, DUMP)
        self.assertEqual(schema.sandesh_op.RESPONSE, RESPONSE)
        self.assertEqual(schema.flow_op.FLOW_TABLE_GET, FLOW_TABLE_GET)
        a, b = schema.vr_route_req(), schema.vr_route_req()
        self.assertEqual((a.h_op, a.rtr_prefix, schema.vrouter_ops().vo_build_info), (0, [], ""))
        a.rtr_prefix.append(1)
        self.assertEqual(b.rtr_prefix, [])  # fresh list per object

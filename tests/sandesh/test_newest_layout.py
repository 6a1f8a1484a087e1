"""The codec speaks the newest upstream vr.sandesh and still reads the old layout.

The facts below restate, in this project's words, what tungstenfabric/tf-vrouter's
``sandesh/vr.sandesh`` declares in its newest revision for every field that changed after
the 2020-06 schema: message, field id, field name and Sandesh type.
"""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.sandesh import SPECS_BY_NAME, SandeshDecodeError, decode, encode, schema

#: (message, id) -> (name, type) of every field the upstream file added or changed since 2020-06.
NEWEST_CHANGES: dict[tuple[str, int], tuple[str, str]] = {
    ("vr_nexthop_req", 6): ("nhr_encap_oif_id", "list<i32>"),  # was i32
    ("vr_nexthop_req", 30): ("nhr_encap_valid", "list<i32>"),
    ("vr_interface_req", 49): ("vifr_cross_connect_idx", "list<i32>"),  # was i32
    ("vr_interface_req", 93): ("vifr_loopback_ip", "u32"),
    ("vr_flow_req", 39): ("fr_underlay_ecmp_index", "byte"),
    ("vrouter_ops", 46): ("vo_uncond_close_flow_on_tcp_rst", "byte"),  # renamed
    ("vrouter_ops", 47): ("vo_genetlink_group_id", "i16"),
    ("vr_pkt_drop_log_req", 10): ("vdl_pkt_droplog_type", "byte"),
    ("vr_pkt_drop_log_req", 11): ("vdl_pkt_droplog_min_sysctl_en", "byte"),
    ("vr_pkt_drop_log_req", 12): ("vdl_pkt_droplog_config", "byte"),
    ("vr_drop_stats_req", 58): ("vds_invalid_underlay_ecmp", "i64"),
}

#: The highest field id of each message in the newest upstream file.
LAST_ID = {
    "vr_nexthop_req": 30,
    "vr_interface_req": 93,
    "vr_flow_req": 39,
    "vrouter_ops": 47,
    "vr_pkt_drop_log_req": 12,
    "vr_drop_stats_req": 58,
    "vr_mem_stats_req": 72,
    "vr_vrf_stats_req": 33,
    "vr_flow_table_data": 17,
    "vr_hugepage_config": 7,
}

T_I16, T_I32, T_LIST, T_U32, T_BYTE = 6, 8, 15, 20, 3


def _name(n: str) -> bytes:
    return struct.pack(">i", len(n)) + n.encode()


def _i32_field(fid: int, v: int, code: int = T_I32) -> bytes:
    return struct.pack(">Bhi", code, fid, v)


def _i32_list(fid: int, vals: list[int]) -> bytes:
    return struct.pack(">BhBi", T_LIST, fid, T_I32, len(vals)) + struct.pack(
        ">%di" % len(vals), *vals
    )


class NewestSchemaTests(SynchronousTestCase):
    def test_every_changed_field(self) -> None:
        for (msg, fid), (name, type_name) in NEWEST_CHANGES.items():
            f = SPECS_BY_NAME[msg].by_id[fid]
            self.assertEqual((f.name, f.type_name), (name, type_name), (msg, fid))

    def test_last_ids(self) -> None:
        for msg, fid in LAST_ID.items():
            self.assertEqual(max(f.fid for f in SPECS_BY_NAME[msg].fields), fid, msg)

    def test_old_name_is_gone(self) -> None:
        self.assertFalse(hasattr(schema.vrouter_ops(), "vo_close_flow_on_tcp_rst"))
        self.assertEqual(schema.vrouter_ops().vo_uncond_close_flow_on_tcp_rst, 0)


class NewestWireTests(SynchronousTestCase):
    def test_newest_peer_lists_decode(self) -> None:
        data = (
            _name("vr_nexthop_req")
            + _i32_field(4, 12)
            + _i32_list(6, [3, 4])
            + _i32_list(30, [1, 0])
            + b"\x00"
        )
        (nh,) = decode(data)
        self.assertEqual((nh.nhr_id, nh.nhr_encap_oif_id, nh.nhr_encap_valid), (12, [3, 4], [1, 0]))
        data = _name("vr_interface_req") + _i32_list(49, [2, 5]) + _i32_field(93, 7, T_U32)
        (vif,) = decode(data + b"\x00")
        self.assertEqual((vif.vifr_cross_connect_idx, vif.vifr_loopback_ip), ([2, 5], 7))

    def test_lists_encoded_with_list_wire_type(self) -> None:
        data = encode(schema.vr_nexthop_req(nhr_id=1, nhr_encap_oif_id=[3, 4]))
        at = data.index(struct.pack(">Bh", T_LIST, 6))
        self.assertEqual(data[at + 3 : at + 16], struct.pack(">Bi2i", T_I32, 2, 3, 4))
        self.assertNotIn(struct.pack(">Bh", T_I32, 6), data)
        data = encode(schema.vr_interface_req(vifr_cross_connect_idx=[9]))
        self.assertIn(struct.pack(">BhBii", T_LIST, 49, T_I32, 1, 9), data)
        self.assertEqual(decode(data)[0].vifr_cross_connect_idx, [9])

    def test_new_scalars_round_trip(self) -> None:
        objs = [
            schema.vr_flow_req(fr_index=5, fr_underlay_ecmp_index=3),
            schema.vrouter_ops(vo_uncond_close_flow_on_tcp_rst=1, vo_genetlink_group_id=26),
            schema.vr_pkt_drop_log_req(
                vdl_pkt_droplog_type=2, vdl_pkt_droplog_min_sysctl_en=1, vdl_pkt_droplog_config=1
            ),
            schema.vr_drop_stats_req(vds_invalid_underlay_ecmp=1 << 40),
        ]
        for o in objs:
            self.assertEqual(decode(encode(o)), [o])
        data = encode(objs[0])
        self.assertIn(struct.pack(">BhB", T_BYTE, 39, 3), data)


class OldLayoutTests(SynchronousTestCase):
    """An old peer's i32 where a list is declared now reads as a one-element list."""

    def test_old_i32_is_one_element_list(self) -> None:
        data = (
            _name("vr_nexthop_req")
            + _i32_field(4, 8)
            + _i32_field(6, 3)
            + _i32_field(9, 2)
            + b"\x00"
        )
        for _ in range(4):  # also after the codec has learnt this type's shapes
            (nh,) = decode(data)
            self.assertEqual((nh.nhr_id, nh.nhr_encap_oif_id, nh.nhr_vrf), (8, [3], 2))
        old_vif = _name("vr_interface_req") + _i32_field(6, 1) + _i32_field(49, 4) + b"\x00"
        (vif,) = decode(old_vif)
        self.assertEqual((vif.vifr_idx, vif.vifr_cross_connect_idx), (1, [4]))

    def test_negative_and_unsigned_code(self) -> None:
        data = _name("vr_nexthop_req") + _i32_field(6, -1, T_U32) + b"\x00"
        self.assertEqual(decode(data)[0].nhr_encap_oif_id, [-1])

    def test_other_width_is_skipped(self) -> None:
        data = (
            _name("vr_nexthop_req")
            + struct.pack(">Bhh", T_I16, 6, 3)
            + _i32_field(4, 11)
            + b"\x00"
        )
        (nh,) = decode(data)
        self.assertEqual((nh.nhr_encap_oif_id, nh.nhr_id), ([], 11))

    def test_truncated_old_scalar(self) -> None:
        good = _name("vr_nexthop_req") + _i32_field(4, 8) + b"\x00"
        bad = _name("vr_nexthop_req") + _i32_field(4, 8) + struct.pack(">Bh", T_I32, 6) + b"\x00"
        with self.assertRaises(SandeshDecodeError) as cm:
            decode(bad, pad=0)
        self.assertIn("nhr_encap_oif_id", str(cm.exception))
        self.assertEqual(cm.exception.offset, len(good) - 1 + 3)
        # The failure leaves the codec intact: the good message and an old-layout one decode.
        self.assertEqual(decode(good)[0].nhr_id, 8)
        (nh,) = decode(_name("vr_nexthop_req") + _i32_field(6, 5) + b"\x00")
        self.assertEqual(nh.nhr_encap_oif_id, [5])

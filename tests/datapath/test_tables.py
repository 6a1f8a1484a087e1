"""Tables of the forwarding extension: validation, error codes, reference counts."""

from __future__ import annotations

import errno
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.datapath import constants as C
from vrtwist.datapath.tables import DatapathConfig, TableError, Tables

MAC1 = bytes.fromhex("deadbeef0002")
MAC2 = bytes.fromhex("deadbeef0001")
ENCAP = MAC1 + MAC2 + b"\x08\x00"


def vif(idx: int, **kw: Any) -> dict[str, Any]:
    req = {
        "vifr_idx": idx,
        "vifr_type": C.VIF_TYPE_VIRTUAL,
        "vifr_name": str(idx),
        "vifr_transport": C.VIF_TRANSPORT_PMD,
        "vifr_vrf": 0,
        "vifr_mac": MAC1,
        "vifr_mtu": 1514,
    }
    req.update(kw)
    return req


def encap_nh(nh_id: int, oif: int, **kw: Any) -> dict[str, Any]:
    req = {
        "nhr_id": nh_id,
        "nhr_type": C.NH_ENCAP,
        "nhr_family": C.AF_BRIDGE,
        "nhr_encap_oif_id": oif,
        "nhr_encap": ENCAP,
        "nhr_flags": C.NH_FLAG_VALID,
    }
    req.update(kw)
    return req


class TablesTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = Tables(DatapathConfig(interfaces=16, nexthops=64, mpls_labels=32, mirrors=8))

    def assertErrno(self, code: int, f: Any, *args: Any) -> TableError:
        e = self.assertRaises(TableError, f, *args)
        self.assertEqual(e.errno, code)
        self.assertEqual(e.resp_code, -code)
        return e


class InterfaceTests(TablesTestCase):
    def test_add_get(self) -> None:
        self.t.interface_add(vif(1))
        got = self.t.interface_get({"vifr_idx": 1}).to_fields()
        self.assertEqual(got["vifr_name"], "1")
        self.assertEqual(got["vifr_mtu"], 1514)
        self.assertEqual(got["vifr_transport"], 2)
        self.assertEqual(got["vifr_mac"], MAC1)
        self.assertEqual(got["vifr_ref_cnt"], 1)
        # neither L3 nor L2 asked: the vRouter enables both
        self.assertEqual(got["vifr_flags"], C.VIF_FLAG_L3_ENABLED | C.VIF_FLAG_L2_ENABLED)

    def test_physical_is_mock_device(self) -> None:
        self.t.interface_add(vif(1, vifr_type=C.VIF_TYPE_PHYSICAL, vifr_flags=1, vifr_mtu=2514))
        self.assertEqual(self.t.interface_get({"vifr_idx": 1}).flags, 67109057)

    def test_bad_type(self) -> None:
        self.assertErrno(errno.EINVAL, self.t.interface_add, vif(1, vifr_type=42))
        self.assertEqual(self.t.interfaces, {})

    def test_bad_mac(self) -> None:
        self.assertErrno(errno.EINVAL, self.t.interface_add, vif(1, vifr_mac=MAC1[:5]))
        self.assertEqual(self.t.interfaces, {})

    def test_index_out_of_range(self) -> None:
        self.assertErrno(errno.EINVAL, self.t.interface_add, vif(16))
        self.assertErrno(errno.EINVAL, self.t.interface_add, vif(-1))

    def test_bad_transport(self) -> None:
        self.assertErrno(errno.EINVAL, self.t.interface_add, vif(1, vifr_transport=9))

    def test_change_keeps_unset(self) -> None:
        self.t.interface_add(vif(1, vifr_vrf=3))
        self.t.interface_add(vif(1, vifr_vrf=-1, vifr_mtu=0, vifr_flags=C.VIF_FLAG_POLICY_ENABLED))
        got = self.t.interface_get({"vifr_idx": 1})
        self.assertEqual((got.vrf, got.mtu), (3, 1514))
        self.assertTrue(got.flags & C.VIF_FLAG_POLICY_ENABLED)

    def test_delete_by_index_and_name(self) -> None:
        self.t.interface_add(vif(1))
        self.t.interface_add(vif(2, vifr_name="tap2"))
        self.t.interface_add(vif(3))
        self.t.interface_del({"vifr_idx": 1})
        self.t.interface_del({"vifr_name": "tap2"})
        self.t.interface_del({"vifr_name": "vif0/3"})
        self.assertEqual(self.t.interfaces, {})
        self.assertErrno(errno.ENODEV, self.t.interface_del, {"vifr_idx": 1})
        self.assertErrno(errno.ENOENT, self.t.interface_get, {"vifr_idx": 1})

    def test_get_by_os_index(self) -> None:
        self.t.interface_add(vif(1, vifr_os_idx=77))
        self.assertEqual(self.t.interface_get({"vifr_idx": 9999, "vifr_os_idx": 77}).idx, 1)

    def test_vhost_needs_cross_connect(self) -> None:
        host = vif(1, vifr_type=C.VIF_TYPE_HOST, vifr_cross_connect_idx=-1)
        self.assertErrno(errno.EINVAL, self.t.interface_add, host)
        host["vifr_cross_connect_idx"] = 5
        self.assertErrno(errno.ENODEV, self.t.interface_add, host)
        self.t.interface_add(vif(0, vifr_type=C.VIF_TYPE_PHYSICAL, vifr_os_idx=5))
        self.t.interface_add(host)

    def test_vhost_cross_connect_list(self) -> None:
        """The newest layout sends a list: every element must name an interface."""
        self.t.interface_add(vif(0, vifr_type=C.VIF_TYPE_PHYSICAL, vifr_os_idx=5))
        self.t.interface_add(vif(2, vifr_type=C.VIF_TYPE_PHYSICAL, vifr_os_idx=6))
        host = vif(1, vifr_type=C.VIF_TYPE_HOST, vifr_cross_connect_idx=[5, 7])
        self.assertErrno(errno.ENODEV, self.t.interface_add, host)
        self.assertErrno(errno.EINVAL, self.t.interface_add, dict(host, vifr_cross_connect_idx=[5, -1]))
        self.assertEqual(sorted(self.t.interfaces), [0, 2])  # the refusals added nothing
        self.t.interface_add(dict(host, vifr_cross_connect_idx=[5, 6]))
        got = self.t.interface_get({"vifr_idx": 1}).to_fields()
        self.assertEqual(got["vifr_cross_connect_idx"], [5, 6])

    def test_vlan_sub_interface(self) -> None:
        sub = vif(2, vifr_type=C.VIF_TYPE_VIRTUAL_VLAN, vifr_parent_vif_idx=1, vifr_vlan_id=5)
        self.assertErrno(errno.EINVAL, self.t.interface_add, sub)
        self.t.interface_add(vif(1))
        self.t.interface_add(sub)
        self.assertEqual(self.t.interfaces[1].users, 2)
        self.assertErrno(errno.EEXIST, self.t.interface_add, dict(sub, vifr_idx=3))
        self.t.interface_del({"vifr_idx": 2})
        self.assertEqual(self.t.interfaces[1].users, 1)

    def test_dump_after_marker(self) -> None:
        for i in (5, 1, 3):
            self.t.interface_add(vif(i))
        self.assertEqual([v.idx for v in self.t.interface_dump(-1)], [1, 3, 5])
        self.assertEqual([v.idx for v in self.t.interface_dump(3)], [5])


class NextHopTests(TablesTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.t.interface_add(vif(1))

    def test_discard_exists(self) -> None:
        nh = self.t.nexthop_get({"nhr_id": 0})
        self.assertEqual((nh.type, nh.family), (C.NH_DISCARD, C.AF_INET))

    def test_encap_holds_interface(self) -> None:
        self.t.nexthop_add(encap_nh(21, 1))
        self.assertEqual(self.t.interfaces[1].users, 2)
        fields = self.t.nexthop_get({"nhr_id": 21}).to_fields()
        self.assertEqual(fields["nhr_encap_oif_id"], [1])
        self.assertEqual(fields["nhr_encap"], ENCAP)
        self.assertEqual(fields["nhr_ref_cnt"], 1)

    def test_encap_missing_interface(self) -> None:
        self.assertErrno(errno.EINVAL, self.t.nexthop_add, encap_nh(21, 9))
        self.assertNotIn(21, self.t.nexthops)
        self.assertEqual(self.t.interfaces[1].users, 1)

    def test_encap_family_checks(self) -> None:
        self.assertErrno(errno.EINVAL, self.t.nexthop_add, encap_nh(21, 1, nhr_family=10))
        self.assertErrno(
            errno.EINVAL,
            self.t.nexthop_add,
            encap_nh(21, 1, nhr_flags=C.NH_FLAG_VALID | C.NH_FLAG_MCAST),
        )
        self.assertErrno(
            errno.EINVAL, self.t.nexthop_add, encap_nh(21, 1, nhr_family=C.AF_INET, nhr_encap=b"")
        )

    def test_out_of_range(self) -> None:
        self.assertErrno(errno.EINVAL, self.t.nexthop_add, encap_nh(64, 1))
        self.assertErrno(errno.EINVAL, self.t.nexthop_add, encap_nh(3, 1, nhr_type=9))
        self.assertErrno(errno.EINVAL, self.t.nexthop_get, {"nhr_id": 64})
        self.assertErrno(errno.ENOENT, self.t.nexthop_get, {"nhr_id": 63})

    def test_tunnel(self) -> None:
        base = {
            "nhr_id": 12,
            "nhr_type": C.NH_TUNNEL,
            "nhr_family": C.AF_INET,
            "nhr_encap_oif_id": 1,
            "nhr_encap": ENCAP,
            "nhr_tun_sip": 0x02020101,
            "nhr_tun_dip": 0x01010202,
            "nhr_flags": C.NH_FLAG_VALID | C.NH_FLAG_TUNNEL_GRE,
        }
        self.assertErrno(errno.EINVAL, self.t.nexthop_add, dict(base, nhr_tun_sip=0))
        self.assertErrno(errno.ENODEV, self.t.nexthop_add, dict(base, nhr_encap_oif_id=7))
        self.assertErrno(errno.EINVAL, self.t.nexthop_add, dict(base, nhr_flags=1))
        self.t.nexthop_add(base)
        self.assertEqual(self.t.nexthops[12].to_fields()["nhr_tun_dip"], 0x01010202)

    def test_receive_needs_interface(self) -> None:
        rcv = {"nhr_id": 5, "nhr_type": C.NH_RCV, "nhr_family": C.AF_INET, "nhr_flags": 1}
        self.assertErrno(errno.ENODEV, self.t.nexthop_add, dict(rcv, nhr_encap_oif_id=9))
        self.t.nexthop_add(dict(rcv, nhr_encap_oif_id=1))

    def test_simple_types(self) -> None:
        for nh_id, nh_type in (
            (2, C.NH_L2_RCV),
            (3, C.NH_RESOLVE),
            (4, C.NH_DISCARD),
            (6, C.NH_VRF_TRANSLATE),
        ):
            self.t.nexthop_add({"nhr_id": nh_id, "nhr_type": nh_type, "nhr_flags": 1})
            self.assertEqual(self.t.nexthops[nh_id].type, nh_type)
        self.assertErrno(
            errno.EINVAL, self.t.nexthop_add, {"nhr_id": 7, "nhr_type": C.NH_DEAD, "nhr_flags": 1}
        )

    def test_composite(self) -> None:
        self.t.nexthop_add(encap_nh(21, 1))
        comp = {
            "nhr_id": 30,
            "nhr_type": C.NH_COMPOSITE,
            "nhr_family": C.AF_INET,
            "nhr_flags": C.NH_FLAG_VALID | C.NH_FLAG_COMPOSITE_ECMP,
            "nhr_nh_list": [21, 22],
            "nhr_label_list": [100, 200],
        }
        self.assertErrno(errno.EINVAL, self.t.nexthop_add, dict(comp, nhr_label_list=[1]))
        self.t.nexthop_add(comp)
        fields = self.t.nexthops[30].to_fields()
        self.assertEqual(fields["nhr_nh_list"], [21, -1])
        self.assertEqual(fields["nhr_label_list"], [100, 200])
        self.assertEqual(self.t.nexthops[21].users, 2)
        self.t.nexthop_del({"nhr_id": 30})
        self.assertEqual(self.t.nexthops[21].users, 1)

    def test_change_rules(self) -> None:
        self.t.nexthop_add(encap_nh(21, 1))
        self.assertErrno(errno.EINVAL, self.t.nexthop_add, encap_nh(21, 1, nhr_type=C.NH_RCV))
        self.assertErrno(errno.EINVAL, self.t.nexthop_add, encap_nh(21, 1, nhr_encap=ENCAP[:12]))
        self.t.interface_add(vif(2))
        obj = self.t.nexthops[21]
        self.t.nexthop_add(encap_nh(21, 2))
        self.assertIs(self.t.nexthops[21], obj)
        self.assertEqual(self.t.interfaces[1].users, 1)
        self.assertEqual(self.t.interfaces[2].users, 2)

    def test_delete_missing(self) -> None:
        self.assertErrno(errno.EINVAL, self.t.nexthop_del, {"nhr_id": 40})

    def test_delete_referenced_lives_on(self) -> None:
        """As in the vRouter: the NH leaves the table, its holders keep it."""
        self.t.nexthop_add(encap_nh(21, 1))
        self.t.mpls_add({"mr_label": 4, "mr_nhid": 21})
        nh = self.t.nexthops[21]
        self.assertEqual(nh.users, 2)
        self.t.nexthop_del({"nhr_id": 21})
        self.assertNotIn(21, self.t.nexthops)
        self.assertEqual(nh.users, 1)
        self.assertIs(nh.oif, self.t.interfaces[1])
        self.assertEqual(self.t.mpls_get({"mr_label": 4})["mr_nhid"], 21)
        self.t.mpls_del({"mr_label": 4})
        self.assertEqual(nh.users, 0)
        self.assertIsNone(nh.oif)
        self.assertEqual(self.t.interfaces[1].users, 1)

    def test_delete_referenced_interface(self) -> None:
        self.t.nexthop_add(encap_nh(21, 1))
        vif1 = self.t.interfaces[1]
        self.t.interface_del({"vifr_idx": 1})
        self.assertEqual(vif1.users, 1)
        self.assertIs(self.t.nexthops[21].oif, vif1)
        self.assertErrno(errno.EINVAL, self.t.nexthop_add, encap_nh(22, 1))


class LabelTests(TablesTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.t.interface_add(vif(1))
        self.t.nexthop_add(encap_nh(21, 1))

    def test_mpls(self) -> None:
        self.assertErrno(errno.EINVAL, self.t.mpls_add, {"mr_label": 32, "mr_nhid": 21})
        self.assertErrno(errno.EINVAL, self.t.mpls_add, {"mr_label": 4, "mr_nhid": 22})
        self.t.mpls_add({"mr_label": 4, "mr_nhid": 21})
        self.t.mpls_add({"mr_label": 4, "mr_nhid": 21})
        self.assertEqual(self.t.nexthops[21].users, 2)
        self.assertEqual(list(self.t.mpls_dump(-1)), [{"mr_label": 4, "mr_nhid": 21}])
        self.assertEqual(list(self.t.mpls_dump(4)), [])
        self.t.mpls_del({"mr_label": 4})
        self.t.mpls_del({"mr_label": 4})  # missing label: 0 as in vr_mpls.c
        self.assertErrno(errno.ENOENT, self.t.mpls_get, {"mr_label": 4})
        self.assertEqual(self.t.nexthops[21].users, 1)

    def test_vxlan(self) -> None:
        self.assertErrno(errno.EINVAL, self.t.vxlan_add, {"vxlanr_vnid": 4, "vxlanr_nhid": 9})
        self.assertErrno(
            errno.EINVAL, self.t.vxlan_add, {"vxlanr_vnid": 1 << 24, "vxlanr_nhid": 21}
        )
        self.t.vxlan_add({"vxlanr_vnid": 4, "vxlanr_nhid": 21})
        self.assertEqual(self.t.vxlan_get({"vxlanr_vnid": 4})["vxlanr_nhid"], 21)
        self.t.vxlan_del({"vxlanr_vnid": 4})
        self.assertErrno(errno.ENOENT, self.t.vxlan_get, {"vxlanr_vnid": 4})
        self.assertEqual(self.t.nexthops[21].users, 1)

    def test_mirror(self) -> None:
        self.assertErrno(errno.EINVAL, self.t.mirror_add, {"mirr_index": 8, "mirr_nhid": 21})
        self.assertErrno(errno.EINVAL, self.t.mirror_add, {"mirr_index": 4, "mirr_nhid": 9})
        self.t.mirror_add({"mirr_index": 4, "mirr_nhid": 21, "mirr_vni": 7})
        got = self.t.mirror_get({"mirr_index": 4})
        self.assertEqual((got["mirr_nhid"], got["mirr_vni"]), (21, 7))
        self.assertErrno(errno.ENODEV, self.t.mirror_get, {"mirr_index": 8})
        self.t.mirror_del({"mirr_index": 4})
        self.assertErrno(errno.EINVAL, self.t.mirror_del, {"mirr_index": 4})
        self.assertErrno(errno.ENOENT, self.t.mirror_get, {"mirr_index": 4})

    def test_vrf_assign(self) -> None:
        req = {"var_vif_index": 1, "var_vlan_id": 10, "var_vif_vrf": 3}
        self.assertErrno(errno.EINVAL, self.t.vrf_assign_set, dict(req, var_vif_index=5))
        self.t.vrf_assign_set(req)
        self.assertEqual(self.t.vrf_assign_get(req)["var_vif_vrf"], 3)
        self.assertEqual(
            len(list(self.t.vrf_assign_dump({"var_vif_index": 1, "var_marker": -1}))), 1
        )
        self.t.vrf_assign_set(req, delete=True)
        self.assertEqual(self.t.vrf_assign_get(req)["var_vif_vrf"], -1)

    def test_vrf_table(self) -> None:
        self.assertErrno(errno.EINVAL, self.t.vrf_add, {"vrf_idx": 5000})
        self.t.vrf_add({"vrf_idx": 3, "vrf_flags": 1})
        self.assertEqual(self.t.vrf_get({"vrf_idx": 3})["vrf_flags"], 1)
        self.t.vrf_del({"vrf_idx": 3})
        self.assertErrno(errno.ENOENT, self.t.vrf_del, {"vrf_idx": 3})

    def test_reset(self) -> None:
        self.t.mpls_add({"mr_label": 4, "mr_nhid": 21})
        self.t.reset()
        self.assertEqual(self.t.interfaces, {})
        self.assertEqual(list(self.t.nexthops), [0])
        self.assertEqual(self.t.mpls, {})


class DropStatsTests(TablesTestCase):
    def test_counts(self) -> None:
        self.t.interface_add(vif(1))
        self.t.count_drop("invalid_if", self.t.interfaces[1], 3)
        self.assertEqual(self.t.drop_stats_fields(0)["vds_invalid_if"], 3)
        self.assertEqual(self.t.drop_stats_fields(0, self.t.interfaces[1])["vds_invalid_if"], 3)
        self.assertNotIn("vds_invalid_if", self.t.drop_stats_fields(2))
        self.assertEqual(self.t.interfaces[1].to_fields()["vifr_dpackets"], 3)


class KeyedTableTests(SynchronousTestCase):
    def test_keys_after_follows_changes(self) -> None:
        from vrtwist.datapath.tables import KeyedTable

        t: KeyedTable[str] = KeyedTable()
        for k in (5, 1, 9):
            t[k] = str(k)
        self.assertEqual(t.keys_after(-1), [1, 5, 9])
        self.assertEqual(t.keys_after(5), [9])
        t[3] = "3"
        del t[9]
        self.assertEqual(t.keys_after(-1), [1, 3, 5])
        t.pop(1)
        t[5] = "five"  # replacing a value keeps the order
        self.assertEqual(t.keys_after(0), [3, 5])
        t.clear()
        self.assertEqual(t.keys_after(-1), [])

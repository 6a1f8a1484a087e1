"""Output formats and argument parsing of the utilities, without a vRouter."""

from __future__ import annotations

import argparse

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.cli import _common as cli
from vrtwist.cli import dropstats, mirror, mpls, nh, rt, vif, vrfstats, vxlan
from vrtwist.datapath import constants as C
from vrtwist.sandesh import ipv4_to_int, schema


class ParseTests(SynchronousTestCase):
    def test_numbers_as_strtoul(self) -> None:
        self.assertEqual(
            [cli.int0(x) for x in ("10", "0x10", "010", "0", "-1")], [10, 16, 8, 0, -1]
        )
        self.assertRaises(argparse.ArgumentTypeError, cli.int0, "ten")

    def test_mac(self) -> None:
        self.assertEqual(cli.mac("de:ad:be:ef:0:1"), [0xDE, 0xAD, 0xBE, 0xEF, 0, 1])
        for bad in ("de:ad:be:ef:00", "de:ad:be:ef:00:01:02", "xx:ad:be:ef:00:01", "1ff:0:0:0:0:0"):
            self.assertRaises(argparse.ArgumentTypeError, cli.mac, bad)
        self.assertEqual(cli.ether_ntoa([0xDE, 0xAD, 0xBE, 0xEF, 0, 1]), "de:ad:be:ef:0:1")
        self.assertEqual(cli.mac_text([1, 2]), "01:02:00:00:00:00")


class FormatTests(SynchronousTestCase):
    def test_vif_block(self) -> None:
        v = schema.vr_interface_req(
            vifr_idx=4, vifr_type=C.VIF_TYPE_VIRTUAL_VLAN, vifr_name="tap4",
            vifr_transport=C.VIF_TRANSPORT_ETH, vifr_mac=[0, 0, 0x5E, 0, 1, 0],
            vifr_ip=ipv4_to_int("10.0.0.4"), vifr_ip6_u=0, vifr_ip6_l=0, vifr_vrf=1,
            vifr_mcast_vrf=1, vifr_flags=C.VIF_FLAG_POLICY_ENABLED | C.VIF_FLAG_MIRROR_RX,
            vifr_mir_id=3, vifr_ref_cnt=2, vifr_parent_vif_idx=1, vifr_vlan_id=100,
            vifr_ovlan_id=100, vifr_nh_id=38, vifr_ipackets=5, vifr_ibytes=500, vifr_dpackets=1,
        )  # fmt: skip
        self.assertEqual(
            vif.format_vif(v),
            "vif0/4      Ethernet: tap4 Vlan(o/i)(,S): 100/100 Parent:vif0/1 NH: 38\n"
            "            Type:Virtual(Vlan) HWaddr:00:00:5e:00:01:00 IPaddr:10.0.0.4\n"
            "            Vrf:1 Mcast Vrf:1 Flags:PMr QOS:0 Ref:2 Mirror index 3\n"
            "            RX packets:5  bytes:500 errors:0\n"
            "            TX packets:0  bytes:0 errors:0\n"
            "            Drops:1\n\n",
        )
        self.assertEqual(vif.flag_string(0), "NULL")
        self.assertIn("Flags: P=Policy, X=Cross Connect, S=Service Chain, Mr=Receive Mirror\n",
                      vif.header())  # fmt: skip

    def test_nh_kinds(self) -> None:
        tun6 = schema.vr_nexthop_req(
            nhr_id=7, nhr_type=C.NH_TUNNEL, nhr_family=C.AF_INET6,
            nhr_flags=C.NH_FLAG_VALID | C.NH_FLAG_TUNNEL_VXLAN, nhr_encap_oif_id=[2],
            nhr_tun_sip6=[0x20, 1, 0xD, 0xB8] + [0] * 11 + [1],
            nhr_tun_dip6=[0x20, 1, 0xD, 0xB8] + [0] * 11 + [2],
        )  # fmt: skip
        text = nh.format_nh(tun6)
        self.assertIn("Fmly:AF_INET6", text)
        self.assertIn("Flags:Valid, Vxlan, ", text)
        self.assertIn("Sip: 2001:db8::1 Dip: 2001:db8::2", text)
        vrft = schema.vr_nexthop_req(nhr_id=8, nhr_type=C.NH_VRF_TRANSLATE, nhr_vrf=3)
        self.assertIn("Flags:None\n              Vrf:3\n\n", nh.format_nh(vrft))
        rcv = schema.vr_nexthop_req(nhr_id=9, nhr_type=C.NH_RCV, nhr_encap_oif_id=[1],
                                    nhr_family=C.AF_INET, nhr_flags=1)  # fmt: skip
        self.assertTrue(nh.format_nh(rcv).endswith("Oif:1\n\n"))
        odd = schema.vr_nexthop_req(nhr_id=10, nhr_type=C.NH_DEAD, nhr_family=99)
        self.assertIn("Fmly:     N/A", nh.format_nh(odd))

    def test_tables(self) -> None:
        self.assertEqual(mpls.format_label(schema.vr_mpls_req(mr_label=4, mr_nhid=21)),
                         "       4        21\n")  # fmt: skip
        self.assertEqual(vxlan.format_vnid(schema.vr_vxlan_req(vxlanr_vnid=4, vxlanr_nhid=21)),
                         "      4    21\n")  # fmt: skip
        row = mirror.format_mirror(schema.vr_mirror_req(mirr_index=1, mirr_nhid=5, mirr_vni=-1))
        self.assertEqual(row, "    1          5               0\n")
        route = schema.vr_route_req(
            rtr_family=C.AF_INET, rtr_prefix=[1, 1, 1, 0], rtr_prefix_len=24,
            rtr_replace_plen=24, rtr_label_flags=C.VR_RT_LABEL_VALID_FLAG | C.VR_RT_ARP_TRAP_FLAG,
            rtr_label=16, rtr_nh_id=12, rtr_mac=[0xDE, 0xAD, 0xBE, 0xEF, 0, 1], rtr_index=3,
        )  # fmt: skip
        self.assertEqual(
            rt.format_inet_route(route),
            "1.1.1.0/24             24           LT         16             12        "
            "de:ad:be:ef:0:1(3)\n",
        )
        self.assertEqual(
            rt.format_bridge_route(
                3, [0xDE, 0xAD, 0xBE, 0xEF, 0, 1], C.VR_BE_LABEL_VALID_FLAG, 48, 12
            ),
            "3           de:ad:be:ef:0:1              L" + " " * 19 + "48           12"
            "               0\n",
        )
        stats = schema.vr_drop_stats_req(vds_flow_action_drop=12)
        text = dropstats.format_drop_stats(stats, 1)
        self.assertTrue(text.startswith("Statistics for core 1\n\n"))
        self.assertIn("Flow Action Drop              12\n", text)
        self.assertIn("Vrf: 2\n", vrfstats.format_vrf_stats(schema.vr_vrf_stats_req(vsr_vrf=2)))

"""ECMP and flows: the chosen member is written back into the shared-memory flow entry.

``nh_composite_ecmp_select_nh`` stores the member it picked in ``fe_ecmp_nh_index`` (what
``flow -l`` prints as ``E:<n>``); a flow whose reverse flow is known picks the member its
reverse flow's packets came in on; RPF over an ECMP source next hop moves the reverse
flow's index to the member the packet really came from.
"""

from __future__ import annotations

import io
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.datapath.test_pipeline import ROUTER_MAC, ip_int_of, port_of, tunnel_pair
from vrtwist.datapath import constants as C
from vrtwist.datapath.testing import World, ip_int, udp_frame
from vrtwist.packet.checksum import checksum
from vrtwist.shmem import layout as L
from vrtwist.shmem.listing import FlowTableView, format_flow, write_flow_table
from vrtwist.shmem.service import install

POLICY = C.VIF_FLAG_POLICY_ENABLED
#: wire port 7936 as a flow request field (host order of the wire bytes)
PORT = 31
ECMP_NH = 22


def ecmp_world(w: World | None = None) -> World:
    """VMs on vifs 1-3 (policy); 2.2.2.0/24 is ECMP over vif 2 (member 0) and vif 3 (member 1);
    1.1.1.1/32 goes to vif 1."""
    w = w if w is not None else World()
    w.vif(1, mac_="de:ad:be:ef:00:02", flags=POLICY)
    w.vif(2, mac_="de:ad:be:ef:00:03", flags=POLICY)
    w.vif(3, mac_="de:ad:be:ef:00:04", flags=POLICY)
    w.nh(13, C.NH_L2_RCV, nhr_family=0)
    w.bridge_route("de:ad:be:ef:00:01", 13)
    w.encap_nh(20, 2, family=C.AF_INET)
    w.encap_nh(21, 3, family=C.AF_INET)
    w.encap_nh(24, 1, family=C.AF_INET)
    w.nh(ECMP_NH, C.NH_COMPOSITE, flags=C.NH_FLAG_VALID | C.NH_FLAG_COMPOSITE_ECMP,
         nhr_nh_list=[20, 21], nhr_label_list=[-1, -1])  # fmt: skip
    w.route("2.2.2.0", 24, ECMP_NH)
    w.route("1.1.1.1", 32, 24)
    return w


def forward_flow(w: World, **more: int) -> int:
    """Flow 1.1.1.1 -> 2.2.2.2 UDP 7936, ECMP index unset unless given."""
    reply = w.flow(fr_flow_sport=PORT, fr_flow_dport=PORT, **more)
    return int(reply.fresp_index)


def reverse_flow(w: World, **more: int) -> int:
    reply = w.flow(
        fr_flow_sport=PORT,
        fr_flow_dport=PORT,
        fr_flow_sip_l=ip_int("2.2.2.2") & 0xFFFFFFFF,
        fr_flow_dip_l=ip_int("1.1.1.1") & 0xFFFFFFFF,
        **more,
    )
    return int(reply.fresp_index)


FORWARD = udp_frame()  # 1.1.1.1 -> 2.2.2.2 from de:ad:be:ef:00:02
REVERSE = udp_frame(sip="2.2.2.2", dip="1.1.1.1")


class EcmpWriteBackTests(SynchronousTestCase):
    def test_chosen_member_is_stored_in_the_flow_and_kept(self) -> None:
        w = ecmp_world()
        index = forward_flow(w)
        self.assertEqual(w.flows.entry(index).ecmp_nh_index, -1)
        self.assertNotIn("E:", format_flow(w.flows.entry(index)))
        for _ in range(3):
            w.pipeline.receive(1, FORWARD)
        chosen = w.flows.entry(index).ecmp_nh_index
        self.assertIn(chosen, (0, 1))
        member_vif = (2, 3)[chosen]
        self.assertEqual(len(w.out.on(member_vif)), 3)
        self.assertEqual(w.out.on(5 - member_vif), [])
        self.assertIn("E:%d, " % chosen, format_flow(w.flows.entry(index)))
        self.assertEqual(w.drops(), {})

    def test_a_flow_without_flow_stage_leaves_no_index(self) -> None:
        w = ecmp_world()
        w.vif(1, mac_="de:ad:be:ef:00:02")  # policy off: no flow lookup
        index = forward_flow(w)
        w.pipeline.receive(1, FORWARD)
        self.assertEqual(len(w.out.on(2)) + len(w.out.on(3)), 1)
        self.assertEqual(w.flows.entry(index).ecmp_nh_index, -1)

    def test_member_follows_where_the_reverse_flow_came_from(self) -> None:
        for reverse_vif, member in ((2, 0), (3, 1)):
            w = ecmp_world()
            # the reverse packet misses: its HOLD entry records the vif it came in on
            w.pipeline.receive(reverse_vif, REVERSE)
            ((_vif, _vrf, _code, rindex, *_rest),) = w.trap.traps
            self.assertEqual(w.flows.src_info(rindex), reverse_vif)
            index = forward_flow(w, fr_rindex=rindex, fr_flags=L.FLAG_ACTIVE | L.RFLOW_VALID)
            w.pipeline.receive(1, FORWARD)
            self.assertEqual(w.flows.entry(index).ecmp_nh_index, member, reverse_vif)
            self.assertEqual(len(w.out.on(reverse_vif)), 1)

    def test_rpf_over_ecmp_moves_the_reverse_flows_member(self) -> None:
        w = ecmp_world()
        index = forward_flow(w, fr_ecmp_nh_index=0)
        self.assertEqual(w.flows.entry(index).ecmp_nh_index, 0)
        rindex = reverse_flow(
            w, fr_rindex=index, fr_flags=L.FLAG_ACTIVE | L.RFLOW_VALID, fr_src_nh_index=ECMP_NH
        )
        w.pipeline.receive(3, REVERSE)  # came in over member 1, not member 0
        self.assertEqual(len(w.out.on(1)), 1)
        self.assertEqual(w.flows.entry(index).ecmp_nh_index, 1)
        self.assertIn("E:1, ", format_flow(w.flows.entry(index)))
        w.pipeline.receive(1, FORWARD)  # the forward direction now leaves by member 1
        self.assertEqual(len(w.out.on(3)), 1)
        self.assertEqual(w.out.on(2), [])
        # a vif that is no member of the source ECMP fails RPF; nothing is changed
        w.pipeline.receive(1, REVERSE)
        self.assertEqual(w.drops(), {"vds_invalid_source": 1})
        self.assertEqual(w.flows.entry(index).ecmp_nh_index, 1)
        self.assertEqual(w.flows.entry(rindex).ecmp_nh_index, -1)

    def test_flow_list_of_the_mapped_file_shows_the_member(self) -> None:
        """``flow -l`` reads the index from the table file the datapath wrote it into."""
        run_dir = tempfile.mkdtemp(prefix="pf-ecmp-")
        self.addCleanup(shutil.rmtree, run_dir, True)
        w = World()
        shared = install(w.dp, run_dir, 1024, 1024)
        self.addCleanup(shared.close)
        w.pipeline = type(w.pipeline)(w.dp, w.out, w.trap, flows=shared.flows)
        w.flows = shared.flows
        ecmp_world(w)
        index = forward_flow(w)
        w.pipeline.receive(1, FORWARD)
        chosen = shared.flows.entry(index).ecmp_nh_index
        self.assertIn(chosen, (0, 1))
        view = FlowTableView(shared.flows.path)
        self.addCleanup(view.close)
        out = io.StringIO()
        self.assertEqual(write_flow_table(out, view, shared.flows.table_data()), 1)
        self.assertIn("E:%d, " % chosen, out.getvalue())


class SourceInfoTests(SynchronousTestCase):
    """Every packet of a flow records where it came from (``fe_src_info``), as
    ``vr_flow_lookup`` does, not only the one that made the HOLD entry."""

    def test_a_hit_records_the_vm_vif_and_the_ecmp_choice_follows_it(self) -> None:
        w = ecmp_world()
        rindex = reverse_flow(w)  # made by the agent: no packet seen yet
        self.assertEqual(w.flows.src_info(rindex), 0)
        w.pipeline.receive(3, REVERSE)
        self.assertEqual(w.flows.src_info(rindex), 3)
        self.assertIn(" Sinfo 3.0.0.0)", format_flow(w.flows.entry(rindex)))
        w.pipeline.receive(2, REVERSE)  # the reverse direction now comes in on vif 2
        self.assertEqual(w.flows.src_info(rindex), 2)
        self.assertIn(" Sinfo 2.0.0.0)", format_flow(w.flows.entry(rindex)))
        index = forward_flow(w, fr_rindex=rindex, fr_flags=L.FLAG_ACTIVE | L.RFLOW_VALID)
        w.pipeline.receive(1, FORWARD)
        self.assertEqual(w.flows.entry(index).ecmp_nh_index, 0)  # the member over vif 2
        self.assertEqual(len(w.out.on(2)), 1)
        self.assertEqual(w.flows.src_info(index), 1)
        self.assertEqual(w.flows.stats(rindex)[1], 2)
        self.assertEqual(w.drops(), {})

    def test_a_hit_from_the_fabric_records_the_outer_source(self) -> None:
        a, b = tunnel_pair(C.NH_FLAG_TUNNEL_UDP_MPLS)
        b.encap_nh(30, 4, family=C.AF_INET, flags=C.NH_FLAG_VALID | C.NH_FLAG_POLICY_ENABLED)
        a.pipeline.receive(3, udp_frame(dst=ROUTER_MAC))
        (wire,) = a.out.on(0)
        b.pipeline.receive(0, wire)  # the miss: the HOLD entry records 10.0.0.1
        index = b.trap.traps[0][3]
        self.assertEqual(b.flows.src_info(index), ip_int("10.0.0.1") & 0xFFFFFFFF)
        inner = udp_frame()
        b.flow(fr_index=index, fr_gen_id=b.flows.entry(index).gen_id, fr_flow_vrf=1,
               fr_flow_nh_id=30, fr_flow_sip_l=ip_int_of(inner, 26),
               fr_flow_dip_l=ip_int_of(inner, 30), fr_flow_sport=port_of(inner, 34),
               fr_flow_dport=port_of(inner, 36))  # fmt: skip
        moved = bytearray(wire)  # the same flow, now tunnelled from 10.0.0.3
        moved[29] = 3
        moved[24:26] = b"\x00\x00"
        moved[24:26] = checksum(bytes(moved[14:34])).to_bytes(2, "big")
        b.pipeline.receive(0, bytes(moved))
        self.assertEqual(len(b.out.on(4)), 2)  # the held packet, then the hit
        self.assertEqual(b.flows.src_info(index), ip_int("10.0.0.3") & 0xFFFFFFFF)
        self.assertIn(" Sinfo 10.0.0.3)", format_flow(b.flows.entry(index)))
        self.assertEqual(b.drops(), {})

    def test_other_vifs_leave_it(self) -> None:
        """A vhost packet hitting the flow counts in it but leaves its source as it was."""
        w = ecmp_world()
        rindex = reverse_flow(w)
        w.vif(5, C.VIF_TYPE_HOST, mac_="de:ad:be:ef:00:07", flags=POLICY)
        w.pipeline.receive(3, REVERSE)
        w.pipeline.receive(5, REVERSE)
        self.assertEqual(w.flows.stats(rindex)[1], 2)
        self.assertEqual(len(w.out.on(1)), 2)
        self.assertEqual(w.flows.src_info(rindex), 3)
        self.assertEqual(w.drops(), {})

    def test_a_miss_from_another_vif_records_nothing(self) -> None:
        """The HOLD entry a vhost packet makes keeps ``fe_src_info`` 0, as the
        vRouter's does; a VM's records its vif."""
        w = ecmp_world()
        w.vif(5, C.VIF_TYPE_HOST, mac_="de:ad:be:ef:00:07", flags=POLICY)
        w.pipeline.receive(5, REVERSE)
        w.pipeline.receive(3, FORWARD)
        (_, _, _, vhost_index, *_), (_, _, _, vm_index, *_) = w.trap.traps
        self.assertEqual(w.flows.src_info(vhost_index), 0)
        self.assertEqual(w.flows.src_info(vm_index), 3)

"""MAC learning in the bridge stage (``vr_bridge_learn``), frame by frame.

An unknown source MAC on a MAC_LEARN vif gets a bridge entry pointing at the broadcast
entry's next hop, flagged MAC_NEW, and one MAC_LEARN trap whose parameter is the entry's
index; a known MAC whose source check fails is flagged MAC_MOVED and trapped once. The
frame itself is forwarded either way. A storm of source MACs is bounded by the table's
size and, for the traps, by the per-vif trap budget.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vrtwist.datapath import constants as C
from vrtwist.datapath import pipeline_defs as D
from vrtwist.datapath.interfaces import IPacketTrap
from vrtwist.datapath.testing import RecordingTrap, World, mac, udp_frame
from vrtwist.pkt0.endpoints import TrapLimiter
from vrtwist.shmem import layout as L

VM_MAC = "de:ad:be:ef:00:02"  # source of udp_frame()
PEER_MAC = "de:ad:be:ef:00:01"  # its destination
FLOOD_NH = 16


def learning_world(world: World, *, vif_flags: int = C.VIF_FLAG_MAC_LEARN) -> World:
    """vif 1 and vif 2 (MAC_LEARN), the peer's MAC on vif 2, broadcast to both vifs."""
    world.vif(1, mac_=VM_MAC, flags=vif_flags)
    world.vif(2, mac_=PEER_MAC, flags=vif_flags)
    world.encap_nh(12, 2)
    world.encap_nh(15, 1)
    world.bridge_route(PEER_MAC, 12)
    world.nh(FLOOD_NH, C.NH_COMPOSITE, flags=C.NH_FLAG_VALID | C.NH_FLAG_MCAST,
             nhr_family=C.AF_BRIDGE, nhr_nh_list=[12, 15], nhr_label_list=[0, 0])  # fmt: skip
    world.bridge_route("ff:ff:ff:ff:ff:ff", FLOOD_NH)
    return world


@implementer(IPacketTrap)
class BudgetedTrap(RecordingTrap):
    """The recording agent behind the pkt0 endpoint's per-vif trap budget."""

    def __init__(self, limiter: TrapLimiter) -> None:
        super().__init__()
        self.limiter = limiter

    def trap(
        self,
        vif_index: int,
        vrf: int,
        code: int,
        param: int,
        param_1: int,
        stats: tuple[int, int, int, int],
        frame: bytes,
    ) -> bool:
        if not self.limiter.allow(vif_index, code):
            return False
        return super().trap(vif_index, vrf, code, param, param_1, stats, frame)


class MacLearnTests(SynchronousTestCase):
    def test_unknown_source_is_learnt_and_trapped_once(self) -> None:
        w = learning_world(World())
        frame = udp_frame()
        w.pipeline.receive(1, frame)
        self.assertEqual(w.out.on(2), [frame])  # the frame itself goes on
        ((vif, vrf, code, index, _p1, _stats, trapped),) = w.trap.traps
        self.assertEqual((vif, vrf, code), (1, 0, D.TRAP_MAC_LEARN))
        self.assertEqual(trapped, frame)
        assert w.bridge is not None
        entry = w.bridge.entry(index)
        self.assertEqual((entry.mac, entry.vrf, entry.nh_id), (mac(VM_MAC), 0, FLOOD_NH))
        self.assertEqual(entry.flags, L.BE_VALID | L.BE_MAC_NEW)
        w.pipeline.receive(1, frame)
        self.assertEqual(len(w.trap.traps), 1)  # MAC_NEW: the agent has been told
        self.assertEqual(len(w.out.on(2)), 2)
        # the agent installs the real route: MAC_NEW goes, the index stays
        w.bridge_route(VM_MAC, 15)
        self.assertEqual(w.bridge.entry(index).flags, L.BE_VALID)
        w.pipeline.receive(1, frame)
        self.assertEqual(len(w.trap.traps), 1)  # source check passes: nothing to say
        self.assertEqual(w.drops(), {})

    def test_source_check_failure_is_a_move(self) -> None:
        w = learning_world(World())
        w.bridge_route(VM_MAC, 15)  # the VM's MAC lives on vif 1
        moved = udp_frame(dst="ff:ff:ff:ff:ff:ff")
        w.pipeline.receive(2, moved)  # ... and now speaks from vif 2
        ((vif, _vrf, code, index, *_rest),) = w.trap.traps
        self.assertEqual((vif, code), (2, D.TRAP_MAC_MOVE))
        assert w.bridge is not None
        self.assertEqual(w.bridge.lookup(0, mac(VM_MAC)), index)
        self.assertTrue(w.bridge.entry(index).flags & L.BE_MAC_MOVED)
        self.assertEqual(w.out.on(1), [moved])  # still flooded to the other vif
        w.pipeline.receive(2, moved)
        self.assertEqual(len(w.trap.traps), 1)  # flagged: trapped once

    def test_next_hop_flag_learns_without_the_vif_flag(self) -> None:
        """MAC_LEARN on the next hop that brought the packet (a VRF translate here)."""
        w = learning_world(World(), vif_flags=0)
        w.vif(3, mac_="de:ad:be:ef:00:03", vrf=5)
        w.nh(30, C.NH_VRF_TRANSLATE, flags=C.NH_FLAG_VALID | C.NH_FLAG_MAC_LEARN,
             nhr_family=C.AF_BRIDGE, nhr_vrf=0)  # fmt: skip
        w.bridge_route(PEER_MAC, 30, vrf=5)
        w.pipeline.receive(3, udp_frame())
        ((_vif, vrf, code, index, *_rest),) = w.trap.traps
        self.assertEqual((vrf, code), (0, D.TRAP_MAC_LEARN))
        assert w.bridge is not None
        self.assertEqual(w.bridge.lookup(0, mac(VM_MAC)), index)
        self.assertEqual(len(w.out.on(2)), 1)
        plain = learning_world(World(), vif_flags=0)
        plain.pipeline.receive(1, udp_frame())
        self.assertEqual(plain.trap.traps, [])  # no flag anywhere: nothing learnt

    def test_no_broadcast_entry_means_nothing_to_learn_with(self) -> None:
        w = World()
        w.vif(1, mac_=VM_MAC, flags=C.VIF_FLAG_MAC_LEARN)
        w.vif(2, mac_=PEER_MAC)
        w.encap_nh(12, 2)
        w.bridge_route(PEER_MAC, 12)
        w.pipeline.receive(1, udp_frame())
        self.assertEqual(w.trap.traps, [])
        self.assertEqual(len(w.out.on(2)), 1)
        # a multicast source MAC is never learnt
        w2 = learning_world(World())
        w2.pipeline.receive(1, udp_frame(src="01:00:5e:00:00:01"))
        self.assertEqual(w2.trap.traps, [])

    def test_storm_is_bounded_by_the_table_and_the_trap_budget(self) -> None:
        w = World()
        budget = BudgetedTrap(TrapLimiter(lambda: 0.0, other=(500.0, 100)))
        w.pipeline.trapper = budget
        learning_world(w)
        assert w.bridge is not None
        capacity = w.bridge.entries + w.bridge.oentries
        before = len(w.bridge)
        rng = random.Random(7)
        storm = 3 * capacity
        for _ in range(storm):
            src = bytes((rng.randrange(256) & 0xFE,)) + rng.randbytes(5)
            w.pipeline.receive(1, udp_frame(src=src.hex(":")))
        used = len(w.bridge)
        self.assertLessEqual(used, capacity)
        self.assertGreater(used - before, capacity // 2)
        self.assertEqual(len(w.out.on(2)), storm)  # every frame still forwarded
        self.assertEqual(len(budget.traps), 100)  # the burst, then the budget refuses
        self.assertTrue(all(t[2] == D.TRAP_MAC_LEARN for t in budget.traps))
        # the agent's own routes still have their entries
        self.assertGreaterEqual(w.bridge.lookup(0, mac(PEER_MAC)), 0)

    def test_in_memory_table_is_bounded_by_its_configured_size(self) -> None:
        w = World(shmem_bridge=False)
        w.dp.config.bridge_entries = 8
        w.dp.config.oflow_bridge_entries = 0
        learning_world(w)
        for n in range(20):
            w.pipeline.receive(1, udp_frame(src="de:ad:be:ef:01:%02x" % n))
        learnt = [t for t in w.trap.traps if t[2] == D.TRAP_MAC_LEARN]
        self.assertEqual(len(learnt), 8 - 2)  # the peer's and the broadcast entry first
        self.assertEqual(len(w.out.on(2)), 20)
        hit = w.pipeline.bridge_lookup(0, mac("de:ad:be:ef:01:00"))
        assert hit is not None
        self.assertEqual(hit[1], FLOOD_NH)
        self.assertEqual(hit[3], C.VR_BE_VALID_FLAG | C.VR_BE_MAC_NEW_FLAG)

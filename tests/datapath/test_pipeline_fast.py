"""The bridged fast path: the same frames, counters and drops as the stages, always.

Every test runs twin worlds programmed alike, one with the fast path and one without
(``fast_path=False``), sends them the same frames around the same table changes and
compares everything observable: transmitted frames, traps, drop stats (global and per
vif), every vif's counters, the bridge entries' packet counts and the VRF counters.
Each kind of table change (vif, next hop, bridge route, ops, mirror, flow, MAC
learning) lands between frames the fast path already knows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.datapath.pipeline_world import World, mac, udp_frame
from vrtwist.datapath import constants as C
from vrtwist.datapath import offload
from vrtwist.datapath import pipeline_defs as D
from vrtwist.datapath.dispatcher import make
from vrtwist.datapath.pipeline import VmInput
from vrtwist.packet.headers import ETH_P_ARP, ETH_P_IP, Ethernet

VM_MAC = "de:ad:be:ef:00:02"  # source of udp_frame()
PEER_MAC = "de:ad:be:ef:00:01"  # its destination
F = udp_frame()
TCP = udp_frame(proto=6, payload=bytes(40))
IP6 = mac(PEER_MAC) + mac(VM_MAC) + b"\x86\xdd" + bytes(60)
ARP = Ethernet(mac(PEER_MAC), mac(VM_MAC), ETH_P_ARP).pack() + bytes(28)
BCAST = Ethernet(b"\xff" * 6, mac(VM_MAC), ETH_P_IP).pack() + F[14:]
TAGGED = F[:12] + b"\x81\x00\x00\x05" + F[12:]
MIX = [F, TCP, IP6, ARP, BCAST, TAGGED, F[:14], F[:10], udp_frame(ident=7)]


class Twins:
    """Two worlds programmed alike, with and without the fast path."""

    def __init__(self, **options: Any) -> None:
        self.fast = World(**options)
        self.slow = World(fast_path=False, **options)
        self.slow_calls = 0
        receive = self.fast.pipeline._receive

        def counting(*args: Any) -> None:
            self.slow_calls += 1
            receive(*args)

        setattr(self.fast.pipeline, "_receive", counting)  # a spy on the instance

    def both(self, change: Callable[[World], Any]) -> None:
        change(self.fast)
        change(self.slow)

    def send(self, vif: int, *frames: bytes, gso: offload.Gso | None = None) -> None:
        for frame in frames:
            self.fast.pipeline.receive(vif, frame, gso)
            self.slow.pipeline.receive(vif, frame, gso)

    def state(self, w: World) -> dict[str, Any]:
        tables = w.dp.tables
        assert w.bridge is not None
        return {
            "frames": w.out.frames,
            "traps": w.trap.traps,
            "drops": w.drops(),
            "vifs": {i: (dict(v.counters), dict(v.drops)) for i, v in tables.interfaces.items()},
            "bridge": [(e.mac, e.nh_id, e.flags, e.packets) for e in w.bridge.dump(0)],
            "vrf": {k: v for k, v in w.pipeline.vrf_stats.items() if v},
        }

    def check(self, test: SynchronousTestCase) -> None:
        test.assertEqual(self.state(self.fast), self.state(self.slow))


def do(*changes: Callable[[World], Any]) -> Callable[[World], None]:
    """Several changes as one."""

    def all_of(w: World) -> None:
        for change in changes:
            change(w)

    return all_of


def bridged(w: World) -> None:
    """vif 1 -> bridge entry PEER_MAC -> ENCAP AF_BRIDGE NH 12 -> vif 2; vif 3 spare."""
    w.vif(1, mac_=VM_MAC)
    w.vif(2, mac_=PEER_MAC)
    w.vif(3, mac_="de:ad:be:ef:00:03")
    w.encap_nh(12, 2)
    w.encap_nh(13, 3)
    w.bridge_route(PEER_MAC, 12)


class FastPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = Twins()
        self.t.both(bridged)

    def warm(self) -> None:
        """Every kind of frame once (the fast path learns), then all again."""
        self.t.send(1, *MIX)
        self.t.send(1, *MIX)
        self.t.check(self)

    def test_known_frames_skip_the_stages_and_count_the_same(self) -> None:
        t = self.t
        t.send(1, F)
        self.assertEqual(t.slow_calls, 1)
        t.send(1, F, F, udp_frame(ident=9, payload=b"x" * 300))
        self.assertEqual(t.slow_calls, 1)  # same Ethernet header: no stage ran
        t.check(self)
        self.assertEqual(t.fast.counters(2)["opackets"], 4)
        self.assertEqual(t.fast.pipeline.vrf_stats[(0, "l2_encaps")], 4)
        assert t.fast.bridge is not None
        (peer,) = [e for e in t.fast.bridge.dump(0) if e.mac == mac(PEER_MAC)]
        self.assertEqual(peer.packets, 4)

    def test_frames_that_take_more_keep_the_stages(self) -> None:
        t = self.t
        self.warm()
        before = t.slow_calls
        t.send(1, TCP, ARP, BCAST, TAGGED, F[:10])
        self.assertEqual(t.slow_calls - before, 5)  # TCP: the MSS clamp looks at it
        t.send(1, bytearray(F), memoryview(F))  # type: ignore[arg-type]
        self.assertEqual(t.slow_calls - before, 7)  # only bytes are cached
        t.check(self)

    def test_refused_transmit_counts_oerrors_and_the_drop(self) -> None:
        t = self.t
        self.warm()
        t.fast.out.refuse.add(2)
        t.slow.out.refuse.add(2)
        t.send(1, F, IP6)
        t.check(self)
        self.assertEqual(t.fast.counters(2)["oerrors"], 2 + 0)
        self.assertEqual(t.fast.drops()["vds_interface_tx_discard"], 2)

    def test_offload_state_goes_with_the_frame(self) -> None:
        t = self.t
        self.warm()
        gso = offload.carried(offload.VNET_HDR.pack(offload.F_NEEDS_CSUM, 0, 0, 0, 34, 6), len(F))
        assert gso is not None
        before = t.slow_calls
        t.send(1, F, F, gso=gso)
        self.assertEqual(t.slow_calls, before)
        t.check(self)

    def test_every_kind_of_table_change_is_seen(self) -> None:
        t = self.t
        changes: list[tuple[str, Callable[[World], Any]]] = [
            ("policy on the vif", lambda w: w.vif(1, mac_=VM_MAC, flags=C.VIF_FLAG_POLICY_ENABLED)),
            ("policy off", lambda w: w.vif(1, mac_=VM_MAC)),
            ("service vif", lambda w: w.vif(1, mac_=VM_MAC, flags=C.VIF_FLAG_SERVICE_IF)),
            ("learning vif", lambda w: w.vif(1, mac_=VM_MAC, flags=C.VIF_FLAG_MAC_LEARN)),
            ("plain again", lambda w: w.vif(1, mac_=VM_MAC)),
            ("another VRF", lambda w: w.vif(1, mac_=VM_MAC, vrf=1)),
            ("VRF 0 again", lambda w: w.vif(1, mac_=VM_MAC)),
            ("next hop to vif 3", lambda w: w.encap_nh(12, 3)),
            ("next hop invalid", lambda w: w.encap_nh(12, 3, flags=0)),
            ("next hop with policy", lambda w: w.encap_nh(12, 2, flags=C.NH_FLAG_VALID
                                                          | C.NH_FLAG_POLICY_ENABLED)),
            ("next hop back", lambda w: w.encap_nh(12, 2)),
            ("route to a discard", do(lambda w: w.nh(14, C.NH_DISCARD, nhr_family=C.AF_BRIDGE),
                                      lambda w: w.bridge_route(PEER_MAC, 14))),
            ("route to next hop 13", lambda w: w.bridge_route(PEER_MAC, 13)),
            ("route deleted", lambda w: w.dp.handle(make("vr_route_req", {
                "h_op": C.OP_DEL, "rtr_family": C.AF_BRIDGE, "rtr_mac": mac(PEER_MAC)}))),
            ("route back", lambda w: w.bridge_route(PEER_MAC, 12)),
            ("mirror on the tx vif", do(
                lambda w: w.request("vr_mirror_req", mirr_index=2, mirr_nhid=13),
                lambda w: w.vif(2, mac_=PEER_MAC, flags=C.VIF_FLAG_MIRROR_TX, vifr_mir_id=2))),
            ("mirror on the rx vif", do(
                lambda w: w.vif(2, mac_=PEER_MAC),
                lambda w: w.vif(1, mac_=VM_MAC, flags=C.VIF_FLAG_MIRROR_RX, vifr_mir_id=2))),
            ("tx vif a vhost", do(lambda w: w.vif(1, mac_=VM_MAC),
                                  lambda w: w.vif(2, C.VIF_TYPE_HOST, mac_=PEER_MAC))),
            ("tx vif deleted", do(
                lambda w: w.dp.handle(make("vr_route_req", {
                    "h_op": C.OP_DEL, "rtr_family": C.AF_BRIDGE, "rtr_mac": mac(PEER_MAC)})),
                lambda w: w.dp.handle(make("vr_nexthop_req", {"h_op": C.OP_DEL, "nhr_id": 12})),
                lambda w: w.dp.handle(make("vr_interface_req", {"h_op": C.OP_DEL,
                                                                "vifr_idx": 2})))),
            ("all back", do(lambda w: w.vif(2, mac_=PEER_MAC), lambda w: w.encap_nh(12, 2),
                            lambda w: w.bridge_route(PEER_MAC, 12))),
            ("MSS clamp off", lambda w: w.request("vrouter_ops", vo_from_vm_mss_adj=0,
                                                  vo_to_vm_mss_adj=0)),
            ("a flow", lambda w: w.flow()),
        ]  # fmt: skip
        for what, change in changes:
            self.warm()
            t.both(change)
            t.send(1, *MIX)
            with self.subTest(change=what):
                t.check(self)
        self.assertGreater(len(t.fast.out.frames), 100)

    def test_mac_learning_elsewhere_is_seen(self) -> None:
        """The packet path's own write to the bridge table (a learnt MAC) counts too."""
        t = self.t
        t.both(lambda w: w.vif(3, mac_="de:ad:be:ef:00:03", flags=C.VIF_FLAG_MAC_LEARN))
        t.both(lambda w: w.bridge_route("ff:ff:ff:ff:ff:ff", 12))
        self.warm()
        gen = t.fast.dp.generation
        t.send(3, udp_frame(dst=PEER_MAC, src="de:ad:be:ef:00:77"))
        self.assertGreater(t.fast.dp.generation, gen)
        t.send(1, *MIX)
        t.send(1, udp_frame(dst="de:ad:be:ef:00:77"))
        t.check(self)
        self.assertEqual([c for *_, c, _p, _q, _s, _f in t.fast.trap.traps],
                         [D.TRAP_MAC_LEARN])  # fmt: skip

    def test_the_cache_is_bounded(self) -> None:
        t = self.t
        for i in range(300):
            t.send(1, udp_frame(dst="de:ad:be:ef:%02x:%02x" % (i >> 8, i & 0xFF)))
        self.assertLessEqual(len(t.fast.pipeline._fast), 300)
        t.check(self)


class GenerationTests(SynchronousTestCase):
    def test_every_ksync_request_but_a_flows_bumps_the_generation(self) -> None:
        w = World()
        bridged(w)
        for name, fields in (
            ("vr_interface_req", {"h_op": C.OP_GET, "vifr_idx": 1}),
            ("vr_nexthop_req", {"h_op": C.OP_GET, "nhr_id": 12}),
            ("vr_route_req", {"h_op": C.OP_DUMP, "rtr_family": C.AF_BRIDGE}),
            ("vr_mpls_req", {"h_op": C.OP_ADD, "mr_label": 5, "mr_nhid": 12}),
            ("vr_vxlan_req", {"h_op": C.OP_ADD, "vxlanr_vnid": 5, "vxlanr_nhid": 12}),
            ("vr_mirror_req", {"h_op": C.OP_ADD, "mirr_index": 1, "mirr_nhid": 12}),
            ("vr_vrf_assign_req", {"h_op": C.OP_ADD, "var_vif_index": 1, "var_vlan_id": 3}),
            ("vrouter_ops", {"h_op": C.OP_GET}),
            ("vr_drop_stats_req", {"h_op": C.OP_GET}),
        ):
            before = w.dp.generation
            w.dp.handle(make(name, fields))
            w.dp.dispatch(make(name, fields))
            with self.subTest(request=name):
                self.assertEqual(w.dp.generation, before + 2)

    def test_flow_requests_leave_it(self) -> None:
        """One FLOW_SET per new flow over ksync: they keep the fast path's entries."""
        w = World()
        bridged(w)
        before = w.dp.generation
        for op in (w.dp.handle, w.dp.dispatch):
            op(make("vr_flow_req", {"fr_op": 0, "fr_index": -1, "fr_family": C.AF_INET,
                                    "fr_flags": 1, "fr_flow_proto": 17,
                                    "fr_flow_sport": 1, "fr_flow_dport": 2}))
        self.assertEqual(w.dp.generation, before)
        self.assertEqual(w.dp.request_counts.get("vr_flow_req", 0)
                         + sum(w.dp.direct_counts.values()), 2)

    def test_a_new_bridge_table_or_handler_bumps_it_too(self) -> None:
        w = World()
        before = w.dp.generation
        w.dp.register_bridge(w.dp.bridge)
        w.dp.register("vr_flow_req", w.dp.handlers["vr_flow_req"])
        self.assertEqual(w.dp.generation, before + 2)


def first_trap_index(w: World, frame: bytes) -> tuple[int, int]:
    """(flow index, gen id) of the flow trap of ``frame``."""
    for _vif, _vrf, code, index, _nh, stats, trapped in w.trap.traps:
        if code == D.TRAP_FLOW_MISS and bytes(trapped) == frame:
            return index, stats[3]
    raise AssertionError("no flow trap of that frame")


class VmInputTests(SynchronousTestCase):
    """The fast path's entry for a VM vif whose IP frames take the flow stage (policy):
    rx counted and the flow stage entered without ``_receive``, the same as the stages."""

    def setUp(self) -> None:
        self.t = Twins()
        # the source port FLOW_SET writes hashes with the table's random seed: one seed
        self.t.slow.flows._hashrnd = self.t.fast.flows._hashrnd
        self.t.both(bridged)
        self.t.both(self.policy)

    @staticmethod
    def policy(w: World) -> None:
        w.vif(1, mac_=VM_MAC, flags=C.VIF_FLAG_POLICY_ENABLED)

    def check(self) -> None:
        t = self.t
        t.check(self)
        # the same HOLD entries, counters and TCP state in shared memory, byte for byte
        self.assertEqual(bytes(t.fast.flows.buf), bytes(t.slow.flows.buf))
        self.assertEqual(sorted(t.fast.pipeline.held), sorted(t.slow.pipeline.held))

    def entry(self, frame: bytes) -> object:
        return self.t.fast.pipeline._fast.get((1, frame[:14]))

    def test_flow_stage_frames_skip_receive_and_count_the_same(self) -> None:
        t = self.t
        t.send(1, *MIX)
        self.assertIsInstance(self.entry(F), VmInput)
        self.assertIsInstance(self.entry(IP6), VmInput)
        self.assertIsNone(self.entry(ARP))
        self.assertIsNone(self.entry(BCAST))
        before = t.slow_calls
        t.send(1, F, TCP, IP6, udp_frame(ident=5))
        self.assertEqual(t.slow_calls, before)  # no stage before the flow stage ran
        self.check()
        self.assertNotIn(F, [bytes(f) for f in t.fast.out.on(2)])  # held
        self.assertEqual(t.fast.counters(1)["ipackets"], len(MIX) + 4)
        sent = len(t.fast.out.on(2))
        # the agent forwards F's flow: what was held leaves, later frames hit it
        t.both(lambda w: w.flow(fr_index=(f := first_trap_index(w, F))[0], fr_gen_id=f[1]))
        t.send(1, F, udp_frame(ident=6, payload=b"y" * 200))
        self.check()
        self.assertEqual(len(t.fast.out.on(2)) - sent, 3 + 2)  # three held, then two hits
        # a FLOW_SET leaves the cache (no cached decision reads the flow table): the
        # frames after it still skip the stages, with the same results as the twin
        self.assertEqual(t.slow_calls, before)

    def test_a_vif_change_drops_the_entry(self) -> None:
        t = self.t
        t.send(1, *MIX)
        self.assertIsInstance(self.entry(F), VmInput)
        changes: list[tuple[str, Callable[[World], Any], type | None]] = [
            ("mirror rx", do(lambda w: w.request("vr_mirror_req", mirr_index=2, mirr_nhid=13),
                             lambda w: w.vif(1, mac_=VM_MAC, vifr_mir_id=2, flags=C.VIF_FLAG_MIRROR_RX
                                             | C.VIF_FLAG_POLICY_ENABLED)), type(None)),
            ("policy again", self.policy, VmInput),
            ("service vif", lambda w: w.vif(1, mac_=VM_MAC, flags=C.VIF_FLAG_SERVICE_IF
                                            | C.VIF_FLAG_POLICY_ENABLED), type(None)),
            ("policy off: bridged", lambda w: w.vif(1, mac_=VM_MAC), tuple),
            ("policy in another VRF", lambda w: w.vif(1, mac_=VM_MAC, vrf=1,
                                                      flags=C.VIF_FLAG_POLICY_ENABLED), VmInput),
            ("drop new flows", lambda w: w.vif(1, mac_=VM_MAC, flags=C.VIF_FLAG_POLICY_ENABLED
                                               | C.VIF_FLAG_DROP_NEW_FLOWS), VmInput),
            ("vif deleted", lambda w: w.dp.handle(make("vr_interface_req", {
                "h_op": C.OP_DEL, "vifr_idx": 1})), type(None)),
            ("vif back", self.policy, VmInput),
        ]  # fmt: skip
        for what, change, kind in changes:
            t.both(change)
            t.send(1, *MIX, udp_frame(sport=len(t.fast.trap.traps) + 100))
            t.send(1, *MIX)
            with self.subTest(change=what):
                self.check()
                self.assertIs(type(self.entry(F)), kind)
        self.assertGreater(len(t.fast.trap.traps), 5)

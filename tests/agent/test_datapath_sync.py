"""Desired state -> the real datapath tables (in process): what a port installs and removes."""

from __future__ import annotations

import ipaddress
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.agent.helpers import VN, port_body, tempdir
from vrtwist.agent.dpstate import DatapathModel, IdAllocator, vni_for
from vrtwist.agent.interfaces import (
    IGatewayProgrammer,
    IKsyncChannel,
    IPortObserver,
    IRouteProgrammer,
)
from vrtwist.agent.ksync_sync import DatapathSync, LocalChannel
from vrtwist.agent.model import ResourceExhausted
from vrtwist.agent.testing import InMemoryAgent
from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import Datapath

OTHER_VN = "77777777-5553-4e6a-b87f-8423afc21e9d"


def route(dp: Datapath, vrf: int | None, addr: str, plen: int) -> Any:
    """The route entry (None: not there; nor for a VRF that is None)."""
    ip = ipaddress.ip_address(addr)
    fam = C.AF_INET if ip.version == 4 else C.AF_INET6
    table = dp.routes.vrfs.get((fam, vrf)) if vrf is not None else None
    if table is None:
        return None
    for bucket in table.by_len.values():
        for entry in bucket.values():
            if entry.plen == plen and entry.prefix == int(ip):
                return entry
    return None


def port_ids(model: DatapathModel, uuid: str) -> dict[str, int]:
    """The ids of a port that the test has just added."""
    ids = model.port_ids(uuid)
    assert ids is not None, uuid
    return ids


class ProgrammingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.agent = InMemoryAgent(tempdir(self))
        self.dp = self.agent.datapath

    def test_interfaces(self) -> None:
        verifyObject(IPortObserver, self.agent.model)
        verifyObject(IRouteProgrammer, self.agent.model)
        verifyObject(IKsyncChannel, LocalChannel(self.dp))
        verifyObject(IGatewayProgrammer, self.agent.model)

    def test_port_installs_everything(self) -> None:
        b = port_body(1, plen=24, gateway="10.0.0.254", **{"dns-server": "10.0.0.253",
                                                           "ip6-address": "fd00::1"})
        self.assertEqual(self.agent.call("POST", "/port", b), (200, {}))
        self.assertEqual(self.agent.sync.errors, {})
        ids = port_ids(self.agent.model, b["id"])
        assert ids is not None
        vif = self.dp.tables.interfaces[ids["vif"]]
        # a VM vif carries the VRRP MAC, which the datapath answers the VM's ARP with
        self.assertEqual((vif.name, vif.type, vif.vrf, vif.mac),
                         ("tapv1", C.VIF_TYPE_VIRTUAL, ids["vrf"], bytes.fromhex("00005e000100")))
        l3 = self.dp.tables.nexthops[ids["l3_nh"]]
        self.assertEqual((l3.type, l3.family), (C.NH_ENCAP, C.AF_INET))
        self.assertEqual(bytes(l3.encap[:6]), bytes.fromhex("020000000001"))
        l2 = self.dp.tables.nexthops[ids["l2_nh"]]
        self.assertEqual((l2.type, l2.family), (C.NH_ENCAP, C.AF_BRIDGE))
        self.assertEqual(self.dp.tables.mpls_get({"mr_label": ids["label"]})["mr_nhid"],
                         ids["l3_nh"])
        r = route(self.dp, ids["vrf"], "10.0.0.1", 32)
        self.assertIsNotNone(r)
        self.assertEqual((r.nh.id, r.label), (ids["l3_nh"], ids["label"]))
        self.assertIsNotNone(route(self.dp, ids["vrf"], "fd00::1", 128))
        self.assertIsNotNone(route(self.dp, ids["vrf"], "10.0.0.254", 32))
        self.assertIsNotNone(route(self.dp, ids["vrf"], "10.0.0.253", 32))
        self.assertIsNotNone(route(self.dp, ids["vrf"], "10.0.0.0", 24))
        self.assertIsNotNone(self.dp.bridge.index_of(ids["vrf"], bytes.fromhex("020000000001")))
        types = sorted(nh.type for nh in self.dp.tables.nexthops.values()
                       if nh.vrf == ids["vrf"])
        self.assertIn(C.NH_RCV, types)
        self.assertIn(C.NH_RESOLVE, types)

    def test_delete_removes_everything_without_leaks(self) -> None:
        before_nh = set(self.dp.tables.nexthops)
        bodies = [port_body(i, plen=24, gateway="10.0.0.254") for i in range(1, 21)]
        self.agent.call("POST", "/port", bodies)
        self.assertEqual(self.agent.sync.errors, {})
        self.assertEqual(len(self.dp.tables.interfaces), 2 + 20)  # fabric, pkt0 + 20
        for b in bodies:
            self.assertEqual(self.agent.call("DELETE", f"/port/{b['id']}"), (200, {}))
        self.assertEqual(self.agent.sync.errors, {})
        self.assertEqual(sorted(self.dp.tables.interfaces), [0, 2])
        self.assertEqual(set(self.dp.tables.nexthops), before_nh)
        m = self.agent.model
        self.assertEqual((len(m.vifs), len(m.nhs), len(m.labels), len(m.vrf_ids)), (0, 0, 0, 0))
        self.assertEqual([k for k in self.dp.routes.vrfs if len(self.dp.routes.vrfs[k])], [])

    def test_one_vrf_per_virtual_network(self) -> None:
        a, b, c = port_body(1), port_body(2), port_body(3, vn=OTHER_VN)
        self.agent.call("POST", "/port", [a, b, c])
        ids = [port_ids(self.agent.model, x["id"]) for x in (a, b, c)]
        self.assertEqual(ids[0]["vrf"], ids[1]["vrf"])
        self.assertNotEqual(ids[0]["vrf"], ids[2]["vrf"])
        self.assertEqual(self.agent.model.vrf_id_of(VN), ids[0]["vrf"])
        # deleting one port of the network keeps the VRF for the other
        self.agent.call("DELETE", f"/port/{a['id']}")
        self.assertEqual(self.agent.model.vrf_id_of(VN), ids[1]["vrf"])
        self.assertIsNotNone(route(self.dp, ids[1]["vrf"], b["ip-address"], 32))

    def test_datapath_refusal_is_recorded_not_fatal(self) -> None:
        # a vif index the datapath rejects: the model gets an id beyond its table
        self.agent.model.vifs = IdAllocator("interface index", 10_000, 10_002)
        self.agent.call("POST", "/port", port_body(1))
        self.assertTrue(self.agent.sync.errors)
        self.assertEqual(self.agent.call("POST", "/port", port_body(2))[0], 200)

    def test_exhausted_ids_answer_503_and_roll_back(self) -> None:
        self.agent.model.labels = IdAllocator("MPLS label", 16, 18)  # one port: L3 and L2 label
        self.assertEqual(self.agent.call("POST", "/port", port_body(1))[0], 200)
        code, body = self.agent.call("POST", "/port", port_body(2))
        self.assertEqual(code, 503)
        self.assertIn("MPLS label", body["error"])
        self.assertIsNone(self.agent.table.get(port_body(2)["id"]))
        self.assertEqual(len(self.agent.model.vifs), 1)
        self.assertFalse(self.agent.store.exists(port_body(2)["id"]))

    def test_remote_routes_through_tunnels(self) -> None:
        m = self.agent.model
        m.fabric_ip = "192.0.2.1"
        a = port_body(1)
        self.agent.call("POST", "/port", a)
        vrf_name = m.vrfNames()[0]
        vrf = m.vrf_id_of(VN)
        assert vrf is not None
        m.addRemoteRoute(vrf_name, "10.9.0.1", 32, "192.0.2.2", 40, mac="02:00:00:00:09:01")
        m.addRemoteRoute(vrf_name, "10.9.0.2", 32, "192.0.2.2", 41, encap="udp")
        m.addRemoteRoute(vrf_name, "10.9.1.0", 24, "192.0.2.3", 42, encap="gre")
        self.assertEqual(self.agent.sync.errors, {})
        tunnels = [nh for nh in self.dp.tables.nexthops.values() if nh.type == C.NH_TUNNEL]
        self.assertEqual(len(tunnels), 2)  # one per (remote node, encapsulation)
        r = route(self.dp, vrf, "10.9.0.1", 32)
        self.assertEqual((r.nh.type, r.label), (C.NH_TUNNEL, 40))
        self.assertIsNotNone(self.dp.bridge.index_of(vrf, bytes.fromhex("020000000901")))
        self.assertIsNotNone(route(self.dp, vrf, "10.9.1.0", 24))
        # the EVPN item's L2 label goes into the bridge entry, the inet label into the route
        m.addRemoteRoute(vrf_name, "10.9.0.3", 32, "192.0.2.2", 43, mac="02:00:00:00:09:03",
                         l2_label=44)
        found = cast(Any, self.dp.bridge).entries.get((vrf, bytes.fromhex("020000000903")))
        assert found is not None
        self.assertEqual((route(self.dp, vrf, "10.9.0.3", 32).label, found[1]["rtr_label"]),
                         (43, 44))
        m.deleteRemoteRoute(vrf_name, "10.9.0.3", 32)
        self.assertRaises(KeyError, m.addRemoteRoute, "no-such-vrf", "10.0.0.0", 8, "1.1.1.1", 5)
        self.assertRaises(ValueError, m.addRemoteRoute, vrf_name, "10.0.0.0", 8, "1.1.1.1", 5,
                          encap="ipip")
        for p, plen in (("10.9.0.1", 32), ("10.9.0.2", 32), ("10.9.1.0", 24)):
            m.deleteRemoteRoute(vrf_name, p, plen)
        m.deleteRemoteRoute(vrf_name, "10.9.9.9", 32)  # unknown: ignored
        self.assertEqual(self.agent.sync.errors, {})
        self.assertEqual([nh for nh in self.dp.tables.nexthops.values()
                          if nh.type == C.NH_TUNNEL], [])
        self.assertIsNone(route(self.dp, vrf, "10.9.0.1", 32))
        self.assertIsNotNone(route(self.dp, vrf, a["ip-address"], 32))

    def test_vxlan_vni_per_network_and_l2_labels(self) -> None:
        """Each port has an L3 label (to its policy-enabled L3 next hop) and an L2 label
        (to its bridge next hop, also its bridge entry's label); with VXLAN on, the
        network has one VNI, derived from its name, leading to its VRF's translate next
        hop; the VRF's last port takes it away; a VXLAN tunnel carries routed packets to
        the VRRP MAC (L3 VXLAN)."""
        m = self.agent.model
        m.vxlan = True
        m.fabric_ip = "192.0.2.1"
        a, b = port_body(1), port_body(2)
        self.agent.call("POST", "/port", [a, b])
        ids = m.port_ids(a["id"])
        assert ids is not None
        self.assertEqual(ids["vni"], vni_for(m.vrfNames()[0]))
        self.assertEqual((m.port_ids(b["id"]) or {})["vni"], ids["vni"])  # one per network
        self.assertNotEqual(ids["label"], ids["l2_label"])
        l3 = self.dp.tables.mpls[ids["label"]]
        l2 = self.dp.tables.mpls[ids["l2_label"]]
        self.assertEqual((l3.family, l3.flags & C.NH_FLAG_POLICY_ENABLED),
                         (C.AF_INET, C.NH_FLAG_POLICY_ENABLED))
        self.assertEqual(l2.family, C.AF_BRIDGE)
        nh = self.dp.tables.vxlan[ids["vni"]]
        self.assertEqual((nh.type, nh.family, nh.vrf), (C.NH_VRF_TRANSLATE, C.AF_BRIDGE,
                                                         ids["vrf"]))
        self.assertEqual(list(self.dp.tables.vxlan), [ids["vni"]])
        m.addRemoteRoute(m.vrfNames()[0], "10.9.0.1", 32, "192.0.2.2", 40, encap="vxlan")
        tunnel = route(self.dp, ids["vrf"], "10.9.0.1", 32).nh
        self.assertTrue(tunnel.flags & C.NH_FLAG_TUNNEL_VXLAN and tunnel.flags & C.NH_FLAG_L3_VXLAN)
        self.assertEqual(bytes(tunnel.rw_dst_mac), bytes.fromhex("00005e000100"))
        m.deleteRemoteRoute(m.vrfNames()[0], "10.9.0.1", 32)
        self.agent.call("DELETE", f"/port/{a['id']}")
        self.assertIn(ids["vni"], self.dp.tables.vxlan)  # b is still in the network
        self.assertNotIn(ids["l2_label"], self.dp.tables.mpls)
        self.agent.call("DELETE", f"/port/{b['id']}")
        self.assertEqual(dict(self.dp.tables.vxlan), {})
        self.assertEqual(self.agent.sync.errors, {})
        self.assertEqual(len(m.nhs), 0)  # every next-hop id given back

    def test_allocator_round_robin(self) -> None:
        a = IdAllocator("x", 1, 4)
        self.assertEqual([a.alloc(), a.alloc()], [1, 2])
        a.free(1)
        self.assertEqual(a.alloc(), 3)
        self.assertEqual(a.alloc(), 1)
        self.assertRaises(ResourceExhausted, a.alloc)
        self.assertFalse(a.reserve(2))
        self.assertFalse(a.reserve(9))


class RestartTests(SynchronousTestCase):
    """A new agent on the same datapath keeps ids, re-adds nothing, deletes only stale."""

    def test_adopt_keeps_ids_and_sends_nothing_new(self) -> None:
        d = tempdir(self)
        first = InMemoryAgent(d)
        bodies = [port_body(i, plen=24, gateway="10.0.0.254") for i in range(1, 6)]
        bodies.append(port_body(9, vn=OTHER_VN))
        first.call("POST", "/port", bodies)
        ids = {b["id"]: port_ids(first.model, b["id"]) for b in bodies}
        dp = first.datapath
        objects_before = (dict(dp.tables.interfaces), dict(dp.tables.nexthops))

        second = _restarted(d, dp)
        self.assertEqual({b["id"]: second.model.port_ids(b["id"]) for b in bodies}, ids)
        # only the dumps were sent, no ADD or DEL
        self.assertEqual(second.sync.errors, {})
        self.assertEqual(second.writes, 0)
        self.assertEqual((dict(dp.tables.interfaces), dict(dp.tables.nexthops)),
                         objects_before)

    def test_tunnels_keep_their_id_and_resolved_mac(self) -> None:
        """A tunnel next hop in the datapath is adopted: the route learnt again goes
        through the same id (flows name it as their RPF next hop), with the MAC that was
        resolved, and nothing is rewritten; learnt routes stay until the controller has
        sent them again (End-of-RIB), then those not sent again go."""
        d = tempdir(self)
        first = InMemoryAgent(d)
        first.model.fabric_ip = "192.0.2.1"
        first.call("POST", "/port", port_body(1))
        vrf_name = first.model.vrfNames()[0]
        first.model.addRemoteRoute(vrf_name, "10.9.0.1", 32, "192.0.2.2", 40)
        first.model.addRemoteRoute(vrf_name, "10.9.0.3", 32, "192.0.2.3", 42)  # not relearnt
        mac = bytes.fromhex("0200c0000202")
        first.model.set_fabric_mac("192.0.2.2", mac)
        dp = first.datapath
        vrf = first.model.vrf_id_of(VN)
        tunnel = route(dp, vrf, "10.9.0.1", 32).nh
        self.assertEqual(bytes(tunnel.encap[:6]), mac)
        second = _restarted(d, dp)
        second.model.fabric_ip = "192.0.2.1"
        self.assertEqual(second.model.fabric_macs, {"192.0.2.2": mac})
        # until the controller has sent its routes again, what was learnt stays
        self.assertIsNotNone(route(dp, vrf, "10.9.0.3", 32))
        self.assertIsNotNone(route(dp, vrf, "10.9.0.1", 32))
        second.model.addRemoteRoute(second.model.vrfNames()[0], "10.9.0.1", 32, "192.0.2.2",
                                    40)
        self.assertEqual(second.sync.errors, {})
        again = route(dp, vrf, "10.9.0.1", 32).nh
        self.assertEqual((again.id, bytes(again.encap)), (tunnel.id, bytes(tunnel.encap)))
        self.assertEqual(second.writes, 0)
        # a tunnel of another encapsulation gets a new id
        second.model.addRemoteRoute(second.model.vrfNames()[0], "10.9.0.2", 32, "192.0.2.2",
                                    41, encap="gre")
        self.assertNotEqual(route(dp, vrf, "10.9.0.2", 32).nh.id, tunnel.id)
        # End-of-RIB: the route no one learnt again goes, with its tunnel; the rest stays
        other = route(dp, vrf, "10.9.0.3", 32).nh.id
        second.sync.release_learnt()
        self.assertEqual(second.sync.errors, {})
        self.assertIsNone(route(dp, vrf, "10.9.0.3", 32))
        self.assertNotIn(other, dp.tables.nexthops)
        self.assertEqual(route(dp, vrf, "10.9.0.1", 32).nh.id, tunnel.id)
        second.sync.release_learnt()  # nothing left: no-op
        self.assertEqual(second.sync.retained, set())

    def test_stale_objects_are_deleted_missing_ones_added(self) -> None:
        d = tempdir(self)
        first = InMemoryAgent(d)
        a, b = port_body(1), port_body(2)
        first.call("POST", "/port", [a, b])
        dp = first.datapath
        gone_vif = port_ids(first.model, b["id"])["vif"]
        # b's file disappears while the agent is down; a's route is lost from the datapath
        first.store.remove(b["id"])
        ida = port_ids(first.model, a["id"])
        dp.routes.delete({"rtr_family": C.AF_INET, "rtr_vrf_id": ida["vrf"],
                          "rtr_prefix": list(ipaddress.ip_address(a["ip-address"]).packed),
                          "rtr_prefix_len": 32, "rtr_nh_id": 0})
        self.assertIsNone(route(dp, ida["vrf"], a["ip-address"], 32))
        second = _restarted(d, dp)
        self.assertEqual(second.sync.errors, {})
        self.assertNotIn(gone_vif, dp.tables.interfaces)
        self.assertIsNotNone(route(dp, ida["vrf"], a["ip-address"], 32))
        self.assertEqual(second.model.port_ids(a["id"]), ida)

    def test_gateways_are_not_persisted_and_their_routes_go_at_restart(self) -> None:
        d = tempdir(self)
        first = InMemoryAgent(d)
        body = [{"interface": "vgw1", "routing-instance": "ri",
                 "subnets": [{"ip-address": "10.1.1.0", "prefix-len": 24}],
                 "routes": [{"ip-address": "0.0.0.0", "prefix-len": 0}]}]
        self.assertEqual(first.call("POST", "/gateway", body)[0], 200)
        first.call("POST", "/port", port_body(1))
        dp = first.datapath
        self.assertEqual(len(dp.routes.vrfs[(C.AF_INET, 0)]), 1)
        second = _restarted(d, dp)
        self.assertEqual(second.sync.errors, {})
        self.assertEqual(len(dp.routes.vrfs[(C.AF_INET, 0)]), 0)
        self.assertNotIn("vgw1", {v.name for v in dp.tables.interfaces.values()})
        self.assertIn("tapv1", {v.name for v in dp.tables.interfaces.values()})

    def test_objects_outside_the_agent_ranges_are_left_alone(self) -> None:
        dp = Datapath()
        dp.tables.interface_add({"vifr_idx": 0, "vifr_type": C.VIF_TYPE_PHYSICAL,
                                 "vifr_name": "eth0", "vifr_transport": C.VIF_TRANSPORT_ETH,
                                 "vifr_mac": list(bytes(6))})
        second = _restarted(tempdir(self), dp)
        self.assertEqual(dp.tables.interfaces[0].name, "eth0")  # not taken over
        self.assertEqual(second.sync.errors, {})


class _Restarted(InMemoryAgent):
    writes = 0


def _restarted(state_dir: str, dp: Datapath) -> _Restarted:
    """What AgentService does at start with --datapath=external, in memory."""
    agent = _Restarted.__new__(_Restarted)
    InMemoryAgent.__init__(agent, state_dir, datapath=Datapath())
    from twisted.internet.testing import MemoryReactorClock

    from vrtwist.agent.ports import PortTable
    from vrtwist.agent.rest import PortApi
    from vrtwist.agent.store import PortStore

    agent.clock = MemoryReactorClock()
    agent.store = PortStore(state_dir)
    agent.table = PortTable(agent.store, agent.clock, tap_check=False)
    agent.model = DatapathModel(os_index=lambda name: 0)
    agent.datapath = dp
    agent.sync = DatapathSync(agent.model)
    counting = _CountingChannel(dp, agent)
    agent.sync.channel = counting
    done: list[object] = []
    from twisted.internet.defer import Deferred

    Deferred.fromCoroutine(agent.sync.adopt()).addBoth(done.append)
    assert done and not hasattr(done[0], "raiseException"), done
    agent.sync.channel = None
    agent.table.observe(agent.model)
    agent.table.replay()
    agent.sync.attach(counting)
    agent.api = PortApi(agent.table, gateways=agent.model)
    from treq.testing import StubTreq

    agent.http = StubTreq(agent.api.app.resource())
    return agent


class _CountingChannel(LocalChannel):
    def __init__(self, dp: Datapath, agent: _Restarted) -> None:
        super().__init__(dp)
        self.agent = agent

    def request(self, msg: object) -> Deferred[list[Any]]:
        if getattr(msg, "h_op", None) in (C.OP_ADD, C.OP_DEL):
            self.agent.writes += 1
        return super().request(msg)


@implementer(IKsyncChannel)
class _QueuedChannel:
    """The real datapath behind a queue: requests run, in order, only when ``run()`` is
    called, as replies arrive later over a socket."""

    def __init__(self, dp: Datapath) -> None:
        self.local = LocalChannel(dp)
        self.queue: list[tuple[object, Deferred[object]]] = []

    def request(self, msg: object) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.queue.append((msg, d))
        return d

    def run(self) -> int:
        n = 0
        while self.queue:
            msg, d = self.queue.pop(0)
            self.local.request(msg).addCallback(d.callback)
            n += 1
        return n


class PipelineTests(SynchronousTestCase):
    def test_changes_while_requests_are_in_flight(self) -> None:
        verifyObject(IKsyncChannel, _QueuedChannel(Datapath()))
        dp = Datapath()
        model = DatapathModel(os_index=lambda name: 0)
        sync = DatapathSync(model, window=8)
        channel = _QueuedChannel(dp)
        sync.attach(channel)
        from vrtwist.agent.model import port_from_json

        a, b = port_from_json(port_body(1)), port_from_json(port_body(2))
        model.portAdded(a)
        model.portAdded(b)
        model.portDeleted(a)  # before any reply came back
        flushed: list[object] = []
        sync.when_flushed().addCallback(flushed.append)
        idle: list[object] = []
        sync.when_idle().addCallback(idle.append)
        for _ in range(50):
            if not channel.run():
                break
        self.assertEqual(flushed, [None])
        self.assertEqual(idle, [None])
        self.assertEqual(sync.errors, {})
        names = {v.name for v in dp.tables.interfaces.values()}
        self.assertNotIn("tapv1", names)
        self.assertIn("tapv2", names)
        self.assertEqual(set(sync.applied), set(model.desired))
        model.portDeleted(b)
        while channel.run():
            pass
        self.assertEqual(sorted(dp.tables.interfaces), [0, 2])
        self.assertEqual(set(sync.applied), set(model.desired))

    def test_refused_request_restores_what_the_datapath_holds(self) -> None:
        dp = Datapath()
        model = DatapathModel(os_index=lambda name: 0)
        model.vifs = IdAllocator("interface index", 10_000, 10_001)  # the datapath refuses
        sync = DatapathSync(model)
        channel = _QueuedChannel(dp)
        sync.attach(channel)
        from vrtwist.agent.model import port_from_json

        model.portAdded(port_from_json(port_body(1)))
        while channel.run():
            pass
        refused = [k for k in sync.errors if k[0] == "vif"]
        self.assertEqual(len(refused), 1)
        self.assertNotIn(refused[0], sync.applied)


class TableSizeTests(SynchronousTestCase):
    def test_allocators_follow_vrouter_ops(self) -> None:
        from vrtwist.datapath.tables import DatapathConfig

        dp = Datapath(DatapathConfig(interfaces=6, mpls_labels=64, nexthops=128, vrfs=8))
        agent = _restarted(tempdir(self), dp)  # reads vrouter_ops at start
        self.assertEqual((agent.model.vifs.hi, agent.model.labels.hi, agent.model.nhs.hi,
                          agent.model.vrf_ids.hi), (6, 64, 128, 8))
        self.assertIn("interfaces", agent.sync.tables)
        bodies = [port_body(i) for i in range(1, 5)]
        codes = [agent.call("POST", "/port", b)[0] for b in bodies]
        self.assertEqual(codes, [200, 200, 200, 503])  # vifs 3, 4, 5: the table is full
        self.assertEqual(agent.sync.errors, {})


class _RecordingChannel(LocalChannel):
    """The in-process channel, keeping every request sent (to read route deletes)."""

    def __init__(self, datapath: Datapath) -> None:
        super().__init__(datapath)
        self.sent: list[Any] = []

    def request(self, msg: object) -> Deferred[list[Any]]:
        self.sent.append(msg)
        return super().request(msg)


class CoveringRouteTests(SynchronousTestCase):
    """A route delete carries the covering route, as the real agent's does (spec 2.3)."""

    def setUp(self) -> None:
        self.agent = InMemoryAgent(tempdir(self))
        self.dp = self.agent.datapath
        self.rec = _RecordingChannel(self.dp)
        self.agent.sync.attach(self.rec)

    def route_dels(self, addr: str, plen: int) -> list[Any]:
        raw = ipaddress.ip_address(addr).packed
        return [m for m in self.rec.sent if type(m).__name__ == "vr_route_req"
                and m.h_op == C.OP_DEL and bytes(x & 0xFF for x in m.rtr_prefix) == raw
                and m.rtr_prefix_len == plen]

    def lookup(self, vrf: int | None, addr: str) -> dict[str, object]:
        return self.dp.routes.get({"rtr_family": C.AF_INET, "rtr_vrf_id": vrf,
                                   "rtr_prefix": ipaddress.ip_address(addr).packed})

    def test_port_route_delete_falls_back_to_the_subnet_route(self) -> None:
        a, b = port_body(1, plen=24), port_body(2, plen=24)
        self.assertEqual(self.agent.call("POST", "/port", [a, b]), (200, {}))
        vrf = self.agent.model.vrf_id_of(VN)
        assert vrf is not None
        subnet = route(self.dp, vrf, "10.0.0.0", 24)
        assert subnet is not None
        self.assertEqual(self.agent.call("DELETE", f"/port/{b['id']}"), (200, {}))
        self.assertEqual(self.agent.sync.errors, {})
        (dele,) = self.route_dels(b["ip-address"], 32)
        self.assertEqual((dele.rtr_nh_id, dele.rtr_replace_plen, dele.rtr_label_flags),
                         (subnet.nh.id, 24, subnet.label_flags))
        got = self.lookup(vrf, b["ip-address"])
        self.assertEqual((got["rtr_prefix_len"], got["rtr_nh_id"]), (24, subnet.nh.id))
        self.assertIsNotNone(route(self.dp, vrf, a["ip-address"], 32))  # untouched

    def test_remote_route_delete_carries_the_covering_label(self) -> None:
        m = self.agent.model
        m.fabric_ip = "192.0.2.1"
        self.agent.call("POST", "/port", port_body(1))
        name, vrf = m.vrfNames()[0], m.vrf_id_of(VN)
        assert vrf is not None
        m.addRemoteRoute(name, "10.9.1.0", 24, "192.0.2.3", 42, encap="gre")
        m.addRemoteRoute(name, "10.9.1.7", 32, "192.0.2.2", 40)
        cover = route(self.dp, vrf, "10.9.1.0", 24)
        assert cover is not None
        m.deleteRemoteRoute(name, "10.9.1.7", 32)
        self.assertEqual(self.agent.sync.errors, {})
        (dele,) = self.route_dels("10.9.1.7", 32)
        self.assertEqual((dele.rtr_nh_id, dele.rtr_label, dele.rtr_replace_plen),
                         (cover.nh.id, 42, 24))
        self.assertTrue(dele.rtr_label_flags & C.VR_RT_LABEL_VALID_FLAG)
        got = self.lookup(vrf, "10.9.1.7")
        self.assertEqual((got["rtr_nh_id"], got["rtr_label"], got["rtr_prefix_len"]),
                         (cover.nh.id, 42, 24))
        # no covering route left: the discard next hop and prefix length 0
        m.deleteRemoteRoute(name, "10.9.1.0", 24)
        (dele,) = self.route_dels("10.9.1.0", 24)
        self.assertEqual((dele.rtr_nh_id, dele.rtr_replace_plen, dele.rtr_label),
                         (C.NH_DISCARD_ID, 0, 0))
        self.assertEqual(self.agent.sync.errors, {})

    def test_covered_and_covering_deleted_together(self) -> None:
        m = self.agent.model
        m.fabric_ip = "192.0.2.1"
        self.agent.call("POST", "/port", port_body(1))
        name, vrf = m.vrfNames()[0], m.vrf_id_of(VN)
        m.addRemoteRoute(name, "10.8.0.0", 16, "192.0.2.3", 50)
        m.addRemoteRoute(name, "10.8.1.0", 24, "192.0.2.3", 51)
        m.addRemoteRoute(name, "10.8.1.1", 32, "192.0.2.4", 52)
        self.rec.sent.clear()
        # one batch: both deletes planned together; the /32 names what covers it when
        # it is executed, never a route or next hop already gone
        self.agent.sync.attach(None)
        m.deleteRemoteRoute(name, "10.8.1.0", 24)
        m.deleteRemoteRoute(name, "10.8.1.1", 32)
        self.agent.sync.attach(self.rec)
        self.assertEqual(self.agent.sync.errors, {})
        (d24,) = self.route_dels("10.8.1.0", 24)
        (d32,) = self.route_dels("10.8.1.1", 32)
        self.assertEqual(d24.rtr_replace_plen, 16)
        self.assertIn(d32.rtr_replace_plen, (16, 24))
        i24, i32 = self.rec.sent.index(d24), self.rec.sent.index(d32)
        self.assertEqual(d32.rtr_replace_plen, 16 if i24 < i32 else 24)
        got = self.lookup(vrf, "10.8.1.1")
        self.assertEqual((got["rtr_prefix_len"], got["rtr_label"]), (16, 50))


class BatchTests(SynchronousTestCase):
    """``DatapathModel.batched()``: one notification, bunched requests, same end state."""

    def setUp(self) -> None:
        self.agent = InMemoryAgent(tempdir(self))
        self.agent.call("POST", "/port", port_body(1))
        self.m = self.agent.model
        self.m.fabric_ip = "192.0.2.1"
        self.seen: list[list[object]] = []
        self.m.listeners.append(lambda keys: self.seen.append(list(keys)))

    def test_changes_reach_listeners_once_at_the_end(self) -> None:
        name, vrf = self.m.vrfNames()[0], self.m.vrf_id_of(VN)
        sent = self.agent.sync.requests_sent
        with self.m.batched():
            with self.m.batched():  # nested: only the outermost notifies
                for i in range(40):
                    self.m.addRemoteRoute(name, f"10.7.0.{i}", 32, "192.0.2.9", 100 + i)
            self.assertEqual(self.seen, [])
            self.m.deleteRemoteRoute(name, "10.7.0.0", 32)
        self.assertEqual(len(self.seen), 1)
        self.assertEqual(self.agent.sync.errors, {})
        # 39 routes + 1 tunnel next hop; the route added and deleted inside costs nothing
        self.assertEqual(self.agent.sync.requests_sent - sent, 40)
        self.assertIsNone(route(self.dp(), vrf, "10.7.0.0", 32))
        for i in range(1, 40):
            r = route(self.dp(), vrf, f"10.7.0.{i}", 32)
            self.assertEqual((r.nh.type, r.label), (C.NH_TUNNEL, 100 + i))

    def dp(self) -> Datapath:
        return self.agent.datapath

    def test_error_inside_a_batch_still_notifies(self) -> None:
        name = self.m.vrfNames()[0]
        with self.assertRaises(ValueError):
            with self.m.batched():
                self.m.addRemoteRoute(name, "10.7.0.1", 32, "192.0.2.9", 100)
                self.m.addRemoteRoute(name, "10.7.0.2", 33, "192.0.2.9", 101)
        self.assertEqual(len(self.seen), 1)
        self.assertIsNotNone(route(self.dp(), self.m.vrf_id_of(VN), "10.7.0.1", 32))

    def test_bad_prefixes_and_next_hops_are_refused(self) -> None:
        name = self.m.vrfNames()[0]
        desired = dict(self.m.desired)
        for prefix, plen, nh in (("10.0.0.1", 33, "192.0.2.1"), ("10.0.0.1", -1, "192.0.2.1"),
                                 ("010.0.0.1", 32, "192.0.2.1"), ("10.0.0", 32, "192.0.2.1"),
                                 ("fd00::1", 129, "192.0.2.1"), ("nonsense", 8, "192.0.2.1"),
                                 ("10.0.0.1", 32, "fd00::1"), ("10.0.0.1", 32, "192.0.2")):
            self.assertRaises(ValueError, self.m.addRemoteRoute, name, prefix, plen, nh, 5)
        self.assertEqual(self.m.desired, desired)  # nothing half-added
        self.assertEqual(self.seen, [])

    def test_bad_mac_leaves_no_tunnel_reference(self) -> None:
        name = self.m.vrfNames()[0]
        desired = dict(self.m.desired)
        for mac in ("zz:00:00:00:00:01", "01:00:00:00:00:01"):  # not a MAC, multicast
            self.assertRaises(ValueError, self.m.addRemoteRoute, name, "10.0.0.9", 32,
                              "192.0.2.9", 5, mac=mac)
        self.assertEqual(self.m.desired, desired)
        self.assertEqual(self.m._tunnels, {})

    def test_vrf_without_ports_goes_with_its_last_remote_route(self) -> None:
        """A VRF whose ports are gone lives on while controller routes use it."""
        name = self.m.vrfNames()[0]
        for i in range(3):
            self.m.addRemoteRoute(name, f"10.7.0.{i}", 32, "192.0.2.9", 100 + i)
        self.agent.call("DELETE", f"/port/{port_body(1)['id']}")
        self.assertEqual(self.m.vrfNames(), [name])
        for i in range(3):
            self.assertEqual(self.m.vrfNames(), [name])
            self.m.deleteRemoteRoute(name, f"10.7.0.{i}", 32)
        self.assertEqual(self.m.vrfNames(), [])
        self.assertEqual(self.agent.sync.errors, {})

    def test_host_bits_are_cleared_and_v6_works(self) -> None:
        from vrtwist.agent.dpstate import parse_prefix

        self.assertEqual(parse_prefix("10.1.2.3", 24), (C.AF_INET, bytes([10, 1, 2, 0]),
                                                        "10.1.2.0"))
        self.assertEqual(parse_prefix("fd00::1:5", 112)[2], "fd00::1:0")
        name, vrf = self.m.vrfNames()[0], self.m.vrf_id_of(VN)
        self.m.addRemoteRoute(name, "fd00::7", 128, "192.0.2.9", 77)
        self.m.addRemoteRoute(name, "10.6.6.6", 24, "192.0.2.9", 78)
        self.assertIsNotNone(route(self.dp(), vrf, "fd00::7", 128))
        self.assertIsNotNone(route(self.dp(), vrf, "10.6.6.0", 24))
        self.m.deleteRemoteRoute(name, "10.6.6.9", 24)  # any address of the prefix names it
        self.assertIsNone(route(self.dp(), vrf, "10.6.6.0", 24))
        self.assertEqual(self.agent.sync.errors, {})


class ScheduledKickTests(SynchronousTestCase):
    def test_changes_of_one_reactor_turn_form_one_batch(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from vrtwist.agent.model import port_from_json

        clock = MemoryReactorClock()
        dp = Datapath()
        model = DatapathModel(os_index=lambda name: 0)
        sync = DatapathSync(model, schedule=lambda f: clock.callLater(0, f))
        sync.attach(LocalChannel(dp))
        clock.advance(0)
        started, sent = sync.flight.started, sync.requests_sent
        flushed: list[object] = []
        model.portAdded(port_from_json(port_body(1)))
        sync.when_flushed().addCallback(flushed.append)
        model.portAdded(port_from_json(port_body(2)))
        self.assertEqual((sync.requests_sent, flushed), (sent, []))  # nothing until the turn ends
        idle: list[object] = []
        sync.when_idle().addCallback(idle.append)
        clock.advance(0)
        self.assertEqual(sync.flight.started - started, 1)
        self.assertEqual((flushed, idle, sync.errors), ([None], [None], {}))
        self.assertEqual({v.name for v in dp.tables.interfaces.values()} >= {"tapv1", "tapv2"},
                         True)
        self.assertEqual(set(sync.applied), set(model.desired))
        # detached while a kick is pending: nothing is sent, the change waits for attach
        model.portDeleted(port_from_json(port_body(1)))
        sync.attach(None)
        clock.advance(0)
        self.assertIn("tapv1", {v.name for v in dp.tables.interfaces.values()})
        sync.attach(LocalChannel(dp))
        clock.advance(0)
        self.assertNotIn("tapv1", {v.name for v in dp.tables.interfaces.values()})
        self.assertEqual(sync.errors, {})


def to_agent(r: Any) -> bool:
    """The route leads to the agent: a policy-enabled ENCAP next hop on the agent's vif,
    so that gateway and DNS traffic is flowed and then trapped to the agent."""
    nh = r.nh
    return bool(nh.type == C.NH_ENCAP and nh.oif is not None
                and nh.oif.type == C.VIF_TYPE_AGENT and nh.flags & C.NH_FLAG_POLICY_ENABLED)


class IpamSubnetTests(SynchronousTestCase):
    """Controller IPAM subnets for ports whose REST data has no ``plen``."""

    def setUp(self) -> None:
        self.agent = InMemoryAgent(tempdir(self))
        self.dp = self.agent.datapath
        self.subnets: dict[str, list[dict[str, object]]] = {}
        self.agent.model.subnet_source = lambda vn: self.subnets.get(vn, [])

    def test_subnet_gateway_and_dns_come_from_config(self) -> None:
        self.subnets[VN] = [{"prefix": "192.168.0.0", "plen": 16, "gateway": "", "dns": ""},
                            {"prefix": "10.0.0.0", "plen": 24, "gateway": "10.0.0.254",
                             "dns": "10.0.0.253"}]
        b = port_body(1)  # no plen, gateway or dns-server in the body
        self.assertEqual(self.agent.call("POST", "/port", b), (200, {}))
        vrf = self.agent.model.vrf_id_of(VN)
        sub = route(self.dp, vrf, "10.0.0.0", 24)
        self.assertEqual(sub.nh.type, C.NH_RESOLVE)
        self.assertTrue(to_agent(route(self.dp, vrf, "10.0.0.254", 32)))
        self.assertTrue(to_agent(route(self.dp, vrf, "10.0.0.253", 32)))
        self.assertIsNone(route(self.dp, vrf, "192.168.0.0", 16))

    def test_config_arriving_later_updates_routes_and_keeps_ids(self) -> None:
        a, b = port_body(1), port_body(2)
        self.agent.call("POST", "/port", [a, b])
        m = self.agent.model
        vrf = m.vrf_id_of(VN)
        ids = port_ids(m, a["id"])
        self.assertIsNone(route(self.dp, vrf, "10.0.0.0", 24))
        self.subnets[VN] = [{"prefix": "10.0.0.0", "plen": 24, "gateway": "10.0.0.1",
                             "dns": ""}]
        m.refresh_subnets()
        self.assertEqual(self.agent.sync.errors, {})
        self.assertEqual(m.port_ids(a["id"]), ids)
        self.assertEqual(route(self.dp, vrf, "10.0.0.0", 24).nh.type, C.NH_RESOLVE)
        self.assertTrue(to_agent(route(self.dp, vrf, "10.0.0.1", 32)))
        # the subnet changes: old routes go, new ones come, shared by both ports
        self.subnets[VN] = [{"prefix": "10.0.0.0", "plen": 16, "gateway": "10.0.255.254",
                             "dns": ""}]
        m.refresh_subnets()
        self.assertIsNone(route(self.dp, vrf, "10.0.0.0", 24))
        self.assertIsNone(route(self.dp, vrf, "10.0.0.1", 32))
        self.assertIsNotNone(route(self.dp, vrf, "10.0.0.0", 16))
        self.assertIsNotNone(route(self.dp, vrf, "10.0.255.254", 32))
        for p in (a, b):
            self.assertEqual(self.agent.call("DELETE", f"/port/{p['id']}"), (200, {}))
        self.assertEqual(self.agent.sync.errors, {})
        self.assertEqual([k for k in self.dp.routes.vrfs if len(self.dp.routes.vrfs[k])], [])

    def test_rest_plen_wins_and_bad_config_is_ignored(self) -> None:
        self.subnets[VN] = [{"prefix": "10.0.0.0", "plen": 16, "gateway": "", "dns": ""}]
        b = port_body(1, plen=24)
        self.agent.call("POST", "/port", b)
        vrf = self.agent.model.vrf_id_of(VN)
        self.assertIsNotNone(route(self.dp, vrf, "10.0.0.0", 24))
        self.assertIsNone(route(self.dp, vrf, "10.0.0.0", 16))
        self.subnets[VN] = [{"prefix": "not-an-address", "plen": 16}]
        c = port_body(2)
        self.assertEqual(self.agent.call("POST", "/port", c), (200, {}))
        self.assertEqual(self.agent.sync.errors, {})

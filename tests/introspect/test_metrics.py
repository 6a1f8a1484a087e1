"""Every metric's value against the state it reports (collectors read at scrape time)."""

from __future__ import annotations

import array
import os
import tempfile
import tracemalloc
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.agent.dpstate import DatapathModel
from vrtwist.agent.introspect import AgentCollector, RequestCounter
from vrtwist.agent.model import port_from_json
from vrtwist.agent.packet.flows import FlowCounters
from vrtwist.agent.packet.services import ServiceCounters
from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import Datapath, make
from vrtwist.datapath.introspect import DatapathCollector
from vrtwist.introspect.flows import FlowTableSource, count_active, page
from vrtwist.pkt0 import constants as K
from vrtwist.pkt0.endpoints import AgentEndpoint
from vrtwist.shmem import layout as L


def scrape(*collectors: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """name+labels -> value, through the real exposition and the real parser."""
    reg = CollectorRegistry(auto_describe=False)
    for c in collectors:
        reg.register(c)
    return scrape_registry(reg)


def scrape_registry(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(reg).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def flow_file(d: str, entries: int, active: list[int]) -> str:
    """A flow.shmem of ``entries`` zeroed entries (sparse) with ``active`` ones ACTIVE."""
    path = os.path.join(d, "flow.shmem")
    with open(path, "wb") as f:
        f.truncate(entries * L.FLOW_ENTRY_SIZE)
    with open(path, "r+b") as f:
        for i in active:
            f.seek(i * L.FLOW_ENTRY_SIZE + L.OFF_FE_FLAGS)
            f.write(L.FLAG_ACTIVE.to_bytes(2, "little"))
            f.seek(i * L.FLOW_ENTRY_SIZE + L.OFF_FE_GEN_ID)
            f.write(b"\x01")
    return path


class DatapathMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dp = Datapath()
        for idx, name in ((0, "eth0"), (3, "tapob1")):
            reply = self.dp.handle(make("vr_interface_req", {
                "h_op": C.OP_ADD, "vifr_idx": idx, "vifr_type": C.VIF_TYPE_VIRTUAL,
                "vifr_name": name, "vifr_mac": [2, 0, 0, 0, 0, idx]}))
            self.assertEqual(reply[0][0].resp_code, 0)

    def test_vif_counters_and_drops(self) -> None:
        vif = self.dp.tables.interfaces[3]
        vif.counters.update(ipackets=7, ibytes=700, opackets=5, obytes=320, ierrors=1,
                            oerrors=2)
        self.dp.tables.count_drop("invalid_packet", vif, 4)
        self.dp.tables.count_drop("no_fmd", None, 2)
        m = scrape(DatapathCollector(self.dp))
        lab = (("direction", "rx"), ("name", "tapob1"), ("vif", "3"))
        self.assertEqual(m[("vrouter_vif_packets_total", lab)], 7)
        self.assertEqual(m[("vrouter_vif_bytes_total", lab)], 700)
        self.assertEqual(m[("vrouter_vif_errors_total", lab)], 1)
        tx = (("direction", "tx"), ("name", "tapob1"), ("vif", "3"))
        self.assertEqual(m[("vrouter_vif_packets_total", tx)], 5)
        self.assertEqual(m[("vrouter_vif_bytes_total", tx)], 320)
        self.assertEqual(m[("vrouter_vif_errors_total", tx)], 2)
        self.assertEqual(m[("vrouter_vif_drops_total", (("name", "tapob1"),
                                                         ("reason", "invalid_packet"),
                                                         ("vif", "3")))], 4)
        self.assertEqual(m[("vrouter_drops_total", (("reason", "invalid_packet"),))], 4)
        self.assertEqual(m[("vrouter_drops_total", (("reason", "no_fmd"),))], 2)
        self.assertEqual(m[("vrouter_dp_objects", (("table", "interface"),))], 2)
        self.assertEqual(m[("vrouter_dp_objects", (("table", "nexthop"),))],
                         len(self.dp.tables.nexthops))

    def test_ksync_requests_and_errors(self) -> None:
        # a get of a vif that is not there: refused (ENOENT)
        self.dp.handle(make("vr_interface_req", {"h_op": C.OP_GET, "vifr_idx": 99}))
        requests, errors = self.dp.ksync_counts()
        m = scrape(DatapathCollector(self.dp))
        self.assertEqual(requests["vr_interface_req"], 3)
        self.assertEqual(m[("vrouter_dp_ksync_requests_total",
                            (("message", "vr_interface_req"),))], 3)
        self.assertEqual(errors, {"vr_interface_req": 1})
        self.assertEqual(m[("vrouter_dp_ksync_errors_total",
                            (("message", "vr_interface_req"),))], 1)

    def test_flows_active_from_the_table(self) -> None:
        d = tempfile.mkdtemp()
        flow_file(d, 10_000, [0, 5, 4096, 9999])
        src = FlowTableSource(d)
        self.addCleanup(src.close)
        m = scrape(DatapathCollector(self.dp, src))
        self.assertEqual(m[("vrouter_flows_active", ())], 4)
        self.assertEqual(m[("vrouter_flow_table_entries", ())], 10_000)

    def test_flows_from_the_in_process_table(self) -> None:
        from vrtwist.shmem.service import install

        d = tempfile.mkdtemp()
        tables = install(self.dp, d, 1024, 1024)
        self.addCleanup(tables.close)
        for sport in (1000, 1001, 1002):
            tables.flows.flow_set({
                "fr_index": -1, "fr_family": 2, "fr_flags": L.FLAG_ACTIVE, "fr_flow_proto": 17,
                "fr_flow_sport": sport, "fr_flow_dport": 53, "fr_flow_sip_l": 0x0101010A,
                "fr_flow_dip_l": 0x0201010A, "fr_action": L.ACTION_FORWARD})
        m = scrape(DatapathCollector(self.dp, FlowTableSource(d)))
        self.assertEqual(m[("vrouter_flows_active", ())], tables.flows.used_entries)
        self.assertEqual(m[("vrouter_flows_active", ())], 3)
        self.assertEqual(m[("vrouter_dp_flow_operations_total", (("op", "added"),))],
                         tables.flows.counters.added)
        self.assertEqual(m[("vrouter_flow_table_entries", ())],
                         tables.flows.entries + tables.flows.oentries)
        # the scan of the mapped file (what an agent with an external datapath reads)
        # agrees with the datapath's own count
        src = FlowTableSource(d)
        self.addCleanup(src.close)
        view = src.view()
        assert view is not None
        self.assertEqual(count_active(view), 3)

    def test_datapath_pkt0_end(self) -> None:
        from vrtwist.pkt0.endpoints import DatapathEndpoint

        end = DatapathEndpoint(lambda: None)
        end.counters.traps, end.counters.rate_limited, end.counters.commands = 12, 3, 4
        m = scrape(DatapathCollector(self.dp, None, end))
        self.assertEqual(m[("vrouter_dp_pkt0_total", (("event", "traps"),))], 12)
        self.assertEqual(m[("vrouter_dp_pkt0_total", (("event", "rate_limited"),))], 3)
        self.assertEqual(m[("vrouter_dp_pkt0_total", (("event", "commands"),))], 4)

    def test_missing_flow_table_is_left_out(self) -> None:
        src = FlowTableSource(tempfile.mkdtemp())
        m = scrape(DatapathCollector(self.dp, src))
        self.assertNotIn(("vrouter_flows_active", ()), m)
        self.assertIn(("vrouter_dp_objects", (("table", "interface"),)), m)


class FlowPagingTests(SynchronousTestCase):
    def test_million_flows_paged_with_bounded_memory(self) -> None:
        d = tempfile.mkdtemp()
        n = 1_000_000
        path = flow_file(d, n, [])
        # every entry active, written as one strided column
        with open(path, "r+b") as f:
            import mmap
            mm = mmap.mmap(f.fileno(), 0)
            words = memoryview(mm).cast("H")
            words[L.OFF_FE_FLAGS // 2 :: L.FLOW_ENTRY_SIZE // 2] = array.array(
                "H", [L.FLAG_ACTIVE]) * n
            words.release()
            mm.close()
        src = FlowTableSource(d)
        self.addCleanup(src.close)
        view = src.view()
        assert view is not None
        tracemalloc.start()
        try:
            entries, nxt = page(view, 500_000, 1000)
            active = count_active(view)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual([e.index for e in entries], list(range(500_000, 501_000)))
        self.assertEqual(nxt, 501_000)
        self.assertEqual(active, n)
        self.assertLess(peak, 8 * 1024 * 1024, "a page or a count must not read the table whole")
        last, end = page(view, n - 3, 1000)
        self.assertEqual(([e.index for e in last], end), ([n - 3, n - 2, n - 1], None))


def agent_state() -> SimpleNamespace:
    """An agent's state objects (real ones), as the collector reads them."""
    model = DatapathModel()
    endpoint = AgentEndpoint()
    packets = SimpleNamespace(endpoint=endpoint,
                              packet_services=SimpleNamespace(counters=ServiceCounters()),
                              flows=SimpleNamespace(counters=FlowCounters(), pairs={}))
    return SimpleNamespace(model=model, table=[], sync=None, link=None, packets=packets,
                           rest_counter=RequestCounter())


PORT = {
    "id": "ea73b285-01a7-4d3e-8322-50976e8913da", "instance-id": "ea73b285-01a7-4d3e-8322-50976e8913db",
    "vn-id": "ea73b285-01a7-4d3e-8322-50976e8913dc",
    "vm-project-id": "ea73b285-01a7-4d3e-8322-50976e8913dd", "display-name": "vm1",
    "ip-address": "10.1.1.3", "ip6-address": "", "type": 0, "system-name": "tapob1",
    "mac-address": "02:00:00:00:00:01", "rx-vlan-id": -1, "tx-vlan-id": -1,
}


class AgentMetricsTests(SynchronousTestCase):
    def test_objects_vrfs_and_ports(self) -> None:
        a = agent_state()
        a.model.portAdded(port_from_json(dict(PORT)))
        m = scrape(AgentCollector(a))
        kinds: dict[str, int] = {}
        for key in a.model.desired:
            kinds[key[0]] = kinds.get(key[0], 0) + 1
        for kind, n in kinds.items():
            self.assertEqual(m[("vrouter_agent_objects", (("kind", kind),))], n)
        self.assertEqual(m[("vrouter_agent_vrfs", ())], 1)
        self.assertEqual(m[("vrouter_agent_ports", ())], 0)

    def test_traps_by_type_and_packet_services(self) -> None:
        a = agent_state()
        a.packets.endpoint.by_code.update({K.AGENT_TRAP_ARP: 3, K.AGENT_TRAP_FLOW_MISS: 9})
        a.packets.endpoint.counters.malformed = 2
        a.packets.packet_services.counters.dhcp = 4
        f = a.packets.flows.counters
        f.pairs, f.aged, f.evicted, f.busy = 9, 5, 1, 2
        m = scrape(AgentCollector(a))
        self.assertEqual(m[("vrouter_pkt0_traps_total", (("type", "arp"),))], 3)
        self.assertEqual(m[("vrouter_pkt0_traps_total", (("type", "flow_miss"),))], 9)
        self.assertEqual(m[("vrouter_pkt0_agent_total", (("event", "malformed"),))], 2)
        self.assertEqual(m[("vrouter_agent_packet_services_total", (("service", "dhcp"),))], 4)
        self.assertEqual(m[("vrouter_flows_created_total", ())], 9)
        self.assertEqual(m[("vrouter_flows_aged_total", ())], 5)
        self.assertEqual(m[("vrouter_flows_evicted_total", ())], 1)
        self.assertEqual(m[("vrouter_flow_setup_events_total", (("outcome", "busy"),))], 2)

    def test_rest_requests_by_endpoint_and_status(self) -> None:
        a = agent_state()
        for path, method, code in ((b"/port", b"POST", 200), (b"/port/x", b"GET", 404),
                                   (b"/port", b"POST", 200), (b"/../../etc", b"BREW", 405)):
            a.rest_counter(SimpleNamespace(path=path, method=method, code=code))
        m = scrape(AgentCollector(a))
        self.assertEqual(m[("vrouter_agent_rest_requests_total",
                            (("code", "200"), ("endpoint", "port"), ("method", "POST")))], 2)
        self.assertEqual(m[("vrouter_agent_rest_requests_total",
                            (("code", "404"), ("endpoint", "port"), ("method", "GET")))], 1)
        # unknown paths and methods are one bucket each: labels stay bounded
        self.assertEqual(m[("vrouter_agent_rest_requests_total",
                            (("code", "405"), ("endpoint", "other"), ("method", "other")))], 1)

    def test_ksync_by_message_from_the_synchroniser(self) -> None:
        a = agent_state()
        a.sync = SimpleNamespace(sync=SimpleNamespace(
            sent_by_kind={"vif": 4, "route": 7}, failed_by_kind={"route": 1},
            errors={("route", 1): "EINVAL"}))
        m = scrape(AgentCollector(a))
        self.assertEqual(m[("vrouter_agent_ksync_requests_total",
                            (("message", "vr_interface_req"),))], 4)
        self.assertEqual(m[("vrouter_agent_ksync_requests_total",
                            (("message", "vr_route_req"),))], 7)
        self.assertEqual(m[("vrouter_agent_ksync_errors_total",
                            (("message", "vr_route_req"),))], 1)
        self.assertEqual(m[("vrouter_agent_ksync_failing", ())], 1)


class DaemonMetricsTests(SynchronousTestCase):
    """The other daemons' collectors against the counter objects they read."""

    def test_vpnkit_totals_include_links_that_are_gone(self) -> None:
        from vrtwist.introspect.daemons import vpnkit_app
        from vrtwist.vpnkit.host import Links
        from vrtwist.vpnkit.mux import MuxStats

        links = Links()
        links.past = MuxStats(channels_opened=5, bytes_in=100, window_stalls=2,
                              datagrams_dropped=1, protocol_errors=1)
        live = MuxStats(channels_opened=1, channels_closed=3, bytes_in=10, bytes_out=20,
                        frames_in=4, frames_out=6, window_stalls=1, datagrams_in=7,
                        unknown_id_frames=2, discarded_bytes=9)
        links.muxes.append(SimpleNamespace(stats=live, channels={1: None, 3: None}))  # type: ignore[arg-type]
        links.links_seen = 2
        app = vpnkit_app(SimpleNamespace(links=links, table=SimpleNamespace(list=lambda: [1])),
                         "host")
        m = scrape_registry(app.registry)
        self.assertEqual(m[("vpnkit_links", ())], 1)
        self.assertEqual(m[("vpnkit_links_seen_total", ())], 2)
        self.assertEqual(m[("vpnkit_channels_open", ())], 2)
        self.assertEqual(m[("vpnkit_channels_total", (("event", "opened"),))], 6)
        self.assertEqual(m[("vpnkit_channels_total", (("event", "closed"),))], 3)
        self.assertEqual(m[("vpnkit_bytes_total", (("direction", "in"),))], 110)
        self.assertEqual(m[("vpnkit_bytes_total", (("direction", "out"),))], 20)
        self.assertEqual(m[("vpnkit_frames_total", (("direction", "out"),))], 6)
        self.assertEqual(m[("vpnkit_window_stalls_total", ())], 3)
        self.assertEqual(m[("vpnkit_datagrams_total", (("event", "in"),))], 7)
        self.assertEqual(m[("vpnkit_datagrams_total", (("event", "dropped"),))], 1)
        self.assertEqual(m[("vpnkit_errors_total", (("kind", "unknown_id_frames"),))], 2)
        self.assertEqual(m[("vpnkit_errors_total", (("kind", "discarded_bytes"),))], 9)
        self.assertEqual(m[("vpnkit_errors_total", (("kind", "protocol_errors"),))], 1)
        self.assertEqual(m[("vpnkit_ports", ())], 1)

    def test_vsock_relay(self) -> None:
        from vrtwist.introspect.daemons import vsock_app
        from vrtwist.vsock.relay import RelayStats

        stats = RelayStats(accepted=9, active=2, backendsOpen=1, spliced=4, refused=3,
                           backendFailures=5, bytesToBackend=700, bytesToCaller=800)
        app = vsock_app(SimpleNamespace(stats=stats))
        m = scrape_registry(app.registry)
        self.assertEqual(m[("vsock_relay_accepted_total", ())], 9)
        self.assertEqual(m[("vsock_relay_active", ())], 2)
        self.assertEqual(m[("vsock_relay_backends_open", ())], 1)
        self.assertEqual(m[("vsock_relay_spliced_total", ())], 4)
        self.assertEqual(m[("vsock_relay_refused_total", ())], 3)
        self.assertEqual(m[("vsock_relay_backend_failures_total", ())], 5)
        self.assertEqual(m[("vsock_relay_bytes_total", (("direction", "to_backend"),))], 700)
        self.assertEqual(m[("vsock_relay_bytes_total", (("direction", "to_caller"),))], 800)

    def test_control_node(self) -> None:
        from twisted.internet.task import Clock

        from vrtwist.introspect.daemons import control_app
        from vrtwist.xmpp.control import ControlNode, RoutingInstance

        node = ControlNode(Clock())
        node.route_counts = {"node1": 3, "node2": 1}
        inst = RoutingInstance("vrf-a")
        inst.routes = {"inet": {"10.0.0.1/32": {"node1": None}, "10.0.0.2/32": {"node2": None}}}  # type: ignore[dict-item]
        node.instances = {"vrf-a": inst}
        node.sessions = {"node1": SimpleNamespace(peerAddress=lambda: "x",  # type: ignore[dict-item]
                                                  subscriptions={"vrf-a"})}
        app = control_app(node)
        m = scrape_registry(app.registry)
        self.assertEqual(m[("vrouter_control_xmpp_sessions", ())], 1)
        self.assertEqual(m[("vrouter_control_xmpp_session_up", (("agent", "node1"),))], 1)
        self.assertEqual(m[("vrouter_control_routes", (("agent", "node1"),))], 3)
        self.assertEqual(m[("vrouter_control_routes", (("agent", "node2"),))], 1)
        self.assertEqual(m[("vrouter_control_routing_instances", ())], 1)
        self.assertEqual(m[("vrouter_control_routes_total_held", ())], 2)


class AgentXmppMetricsTests(SynchronousTestCase):
    def test_controller_link_and_learnt_routes(self) -> None:
        from twisted.internet.task import Clock

        from vrtwist.agent.introspect import xmpp_peers
        from vrtwist.xmpp.agent_link import ControllerLink

        a = agent_state()
        model = a.model
        model.fabric_ip = "10.9.0.1"
        link = ControllerLink(Clock(), [object(), object()], "obnode", "10.9.0.1", model,  # type: ignore[list-item]
                              names=["cn1", "cn2"])
        model.controller = link
        a.link = link
        model.portAdded(port_from_json(dict(PORT)))
        [vrf] = model.vrfNames()
        model.addRemoteRoute(vrf, "10.1.1.9", 32, "10.9.0.2", 20)
        model.addRemoteRoute(vrf, "10.1.1.10", 32, "10.9.0.2", 21)
        link.sessions_established, link.end_of_ribs = 3, 2
        link.session = SimpleNamespace(established=True, closing=False, peer_name="ctl",  # type: ignore[assignment]
                                       tls_started=True)
        m = scrape(AgentCollector(a))
        self.assertEqual(m[("vrouter_xmpp_routes_learned", ())], 2)
        self.assertEqual(m[("vrouter_xmpp_session_up", (("peer", "cn1"),))], 1)
        self.assertEqual(m[("vrouter_xmpp_session_up", (("peer", "cn2"),))], 0)
        self.assertEqual(m[("vrouter_xmpp_sessions_established_total", ())], 3)
        self.assertEqual(m[("vrouter_xmpp_end_of_ribs_total", ())], 2)
        self.assertEqual(m[("vrouter_xmpp_routes_published", ())], len(link._local))
        self.assertEqual(len(link._local), 1)  # the port's route, waiting for a session
        peers = xmpp_peers(a)
        self.assertEqual([(p["controller"], p["state"], p["tls"]) for p in peers],
                         [("cn1", "Established", True), ("cn2", "Idle", False)])
        link.session = None
        m = scrape(AgentCollector(a))
        self.assertEqual(m[("vrouter_xmpp_session_up", (("peer", "cn1"),))], 0)

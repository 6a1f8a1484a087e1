"""The agent's introspect: its metrics, health, JSON views and ``Snh_*`` XML pages.

Everything is read from the agent's own state when asked (port table, desired datapath
state, packet-service and pkt0 counters, the controller link, the synchroniser), plus
the embedded datapath's tables when it runs in the same process.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vrtwist.agent import introspect_xml as sandesh_xml
from vrtwist.agent.dpstate import MPLS, NH, ROUTE, VIF
from vrtwist.datapath import constants as C
from vrtwist.datapath.introspect import DatapathCollector, datapath_views, flow_view, vif_json
from vrtwist.introspect.flows import FlowTableSource
from vrtwist.introspect.web import (
    Health,
    IntrospectApp,
    IntrospectCollector,
    NotFoundError,
    Params,
    int_param,
)
from vrtwist.pkt0.constants import TRAP_NAMES

_KIND_MESSAGE = {VIF: "vr_interface_req", NH: "vr_nexthop_req", MPLS: "vr_mpls_req",
                 ROUTE: "vr_route_req"}
#: REST paths counted under their own name; anything else is "other" (bounded labels)
REST_ENDPOINTS = frozenset({"port", "syncports", "enable-port", "disable-port", "gateway",
                            "vm", "vn"})


class RequestCounter:
    """A ``Site.log`` replacement counting answered requests per endpoint and status."""

    def __init__(self, endpoints: frozenset[str] = REST_ENDPOINTS) -> None:
        self.endpoints = endpoints
        self.counts: dict[tuple[str, str, int], int] = {}

    def __call__(self, request: Any) -> None:
        path: bytes = request.path or b"/"
        first = path.split(b"/", 2)[1].decode("latin-1") if path.startswith(b"/") else ""
        endpoint = first if first in self.endpoints else "other"
        method = request.method.decode("latin-1") if request.method in _METHODS else "other"
        key = (endpoint, method, int(request.code))
        self.counts[key] = self.counts.get(key, 0) + 1


#: the fabric (underlay) VRF 0, named as the real agent names it
FABRIC_VRF = "default-domain:default-project:ip-fabric:__default__"
_METHODS = frozenset({b"GET", b"POST", b"PUT", b"DELETE", b"HEAD"})


def _ip(packed: Any) -> str:
    raw = bytes(packed)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if len(raw) == 16:
        return str(ipaddress.IPv6Address(raw))
    return raw.hex()


class AgentCollector(Collector):
    """Ports, REST requests, ksync requests, XMPP, routes, pkt0 traps, flow setup."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Any]:
        a = self.agent
        table = a.table
        yield GaugeMetricFamily("vrouter_agent_ports", "ports the agent holds",
                                value=len(table) if table is not None else 0)
        model = a.model
        kinds = GaugeMetricFamily("vrouter_agent_objects", "objects the agent wants in the "
                                  "datapath, per kind", labels=["kind"])
        counts: dict[str, int] = {}
        for key in list(model.desired):
            counts[key[0]] = counts.get(key[0], 0) + 1
        for kind in (VIF, NH, MPLS, ROUTE):
            kinds.add_metric([kind], counts.get(kind, 0))
        yield kinds
        yield GaugeMetricFamily("vrouter_agent_vrfs", "VRFs the agent has", value=len(model.vrfNames()))
        rest = CounterMetricFamily("vrouter_agent_rest_requests", "REST port API requests "
                                   "answered, per endpoint, method and status",
                                   labels=["endpoint", "method", "code"])
        counter = getattr(a, "rest_counter", None)
        if counter is not None:
            for (ep, method, code), n in sorted(counter.counts.items()):
                rest.add_metric([ep, method, str(code)], n)
        yield rest
        yield from self._ksync()
        yield from self._xmpp()
        yield from self._packets()

    def _ksync(self) -> Iterator[Any]:
        sync = getattr(self.agent.sync, "sync", None)
        req = CounterMetricFamily("vrouter_agent_ksync_requests", "ksync requests the agent "
                                  "sent to the datapath, per message", labels=["message"])
        err = CounterMetricFamily("vrouter_agent_ksync_errors", "ksync requests the datapath "
                                  "refused, per message", labels=["message"])
        if sync is not None:
            for kind, n in sorted(getattr(sync, "sent_by_kind", {}).items()):
                req.add_metric([_KIND_MESSAGE.get(kind, kind)], n)
            for kind, n in sorted(getattr(sync, "failed_by_kind", {}).items()):
                err.add_metric([_KIND_MESSAGE.get(kind, kind)], n)
            yield GaugeMetricFamily("vrouter_agent_ksync_failing", "objects whose last ksync "
                                    "request was refused", value=len(sync.errors))
        yield req
        yield err

    def _xmpp(self) -> Iterator[Any]:
        model = self.agent.model
        yield GaugeMetricFamily("vrouter_xmpp_routes_learned", "routes learnt from the "
                                "control node", value=len(getattr(model, "_remote", {})))
        link = self.agent.link
        up = GaugeMetricFamily("vrouter_xmpp_session_up", "1 while the XMPP session to a "
                               "control node is established", labels=["peer"])
        for peer in xmpp_peers(self.agent):
            up.add_metric([peer["controller"]], 1 if peer["state"] == "Established" else 0)
        yield up
        if link is not None:
            yield CounterMetricFamily("vrouter_xmpp_sessions_established", "XMPP sessions "
                                      "established", value=link.sessions_established)
            yield GaugeMetricFamily("vrouter_xmpp_routes_published", "local routes published "
                                    "to the control node", value=len(getattr(link, "_local", {})))
            yield CounterMetricFamily("vrouter_xmpp_end_of_ribs", "End-of-RIB markers received",
                                      value=link.end_of_ribs)

    def _packets(self) -> Iterator[Any]:
        packets = self.agent.packets
        if packets is None:
            return
        ep = packets.endpoint
        traps = CounterMetricFamily("vrouter_pkt0_traps", "packets trapped to the agent over "
                                    "pkt0, per trap type", labels=["type"])
        for code, n in sorted(ep.by_code.items()):
            traps.add_metric([TRAP_NAMES.get(code, str(code))], n)
        yield traps
        c = ep.counters
        ends = CounterMetricFamily("vrouter_pkt0_agent", "pkt0 events at the agent's end",
                                   labels=["event"])
        for name in ("traps", "malformed", "unknown_command", "commands", "command_failed",
                     "rate_limited"):
            ends.add_metric([name], getattr(c, name))
        yield ends
        svc = packets.packet_services.counters
        services = CounterMetricFamily("vrouter_agent_packet_services", "trapped packets "
                                       "handled, per service", labels=["service"])
        for name in ("dhcp", "arp", "flow", "icmp", "icmp_error", "mac_learning",
                     "unsupported", "invalid", "sent", "send_failed"):
            services.add_metric([name], getattr(svc, name))
        yield services
        f = packets.flows.counters
        yield CounterMetricFamily("vrouter_flows_created", "flow pairs the agent set up",
                                  value=f.pairs)
        yield CounterMetricFamily("vrouter_flows_aged", "flow pairs aged out", value=f.aged)
        yield CounterMetricFamily("vrouter_flows_evicted", "flow pairs the datapath evicted",
                                  value=f.evicted)
        setup = CounterMetricFamily("vrouter_flow_setup_events", "flow setup outcomes other "
                                    "than a new pair", labels=["outcome"])
        for name in ("short_flows", "duplicates", "busy", "failed", "stale", "malformed"):
            setup.add_metric([name], getattr(f, name))
        yield setup
        yield GaugeMetricFamily("vrouter_agent_flow_pairs", "flow pairs the agent ages",
                                value=len(packets.flows.pairs))
        adoption = getattr(packets, "adoption", None)
        if adoption is not None:
            left = CounterMetricFamily("vrouter_flows_adopted", "flow pairs a previous "
                                       "agent left, by what the start-up audit did with them",
                                       labels=["outcome"])
            for name in ("adopted", "rewritten", "deleted"):
                left.add_metric([name], getattr(adoption.counters, name))
            yield left


# -- JSON views ------------------------------------------------------------------------

def xmpp_peers(agent: Any) -> list[dict[str, Any]]:
    link = agent.link
    if link is None:
        return []
    session = link.session
    live = session is not None and session.established and not session.closing
    ep = link.endpoint
    out = []
    for i, name in enumerate(ep.names):
        current = i == ep.current
        out.append({
            "controller": name, "current": current,
            "state": "Established" if current and live else "Idle" if not current else
            "Connecting",
            "peer_name": session.peer_name if current and session is not None else "",
            "tls": bool(current and session is not None and session.tls_started),
            "sessions_established": link.sessions_established if current else 0,
            "routes_learned": len(link.remote), "stale_routes": link.remote.stale_count,
        })
    return out


def interfaces(agent: Any, datapath: Any) -> list[dict[str, Any]]:
    """The agent's interfaces (desired vifs) with the port behind each and live counters."""
    model = agent.model
    vrf_by_id = {v.vrf_id: name for name, v in model._vrfs.items()}
    vrf_by_id.setdefault(0, FABRIC_VRF)
    ports = {}
    for uuid, ids in model._ports.items():
        ports[ids.vif] = (model._programmed.get(uuid), ids)
    dp_vifs = datapath.tables.interfaces if datapath is not None else {}
    out = []
    for key, (_name, f) in sorted((k, v) for k, v in model.desired.items() if k[0] == VIF):
        idx = key[1]
        port, ids = ports.get(idx, (None, None))
        row: dict[str, Any] = {
            "index": idx, "name": f.get("vifr_name", ""), "vrf": f.get("vifr_vrf", 0),
            "vrf_name": vrf_by_id.get(f.get("vifr_vrf", -1), ""),
            "mac": port.mac_address if port else ":".join(
                f"{b:02x}" for b in f.get("vifr_mac", [])),
            "type": {C.VIF_TYPE_PHYSICAL: "eth", C.VIF_TYPE_AGENT: "pkt"}.get(
                f.get("vifr_type", -1), "vport"),
            "active": idx in dp_vifs if datapath is not None else key not in _errors(agent),
            "uuid": port.id if port else "", "vm_uuid": port.instance_id if port else "",
            "vm_name": port.display_name if port else "", "vn": port.vn_id if port else "",
            "ip": (port.ip_address or "") if port else "",
            "ip6": (port.ip6_address or "") if port else "",
            "label": ids.label if ids else -1, "l2_label": ids.l2_label if ids else -1,
            "l3_nh": ids.l3_nh if ids else 0,
            "l2_nh": ids.l2_nh if ids else 0, "os_index": f.get("vifr_os_idx", 0),
        }
        vif = dp_vifs.get(idx) if datapath is not None else None
        if vif is not None:
            live = vif_json(vif)
            for k in ("rx_packets", "rx_bytes", "rx_errors", "tx_packets", "tx_bytes",
                      "tx_errors", "drops"):
                row[k] = live[k]
        out.append(row)
    return out


def _errors(agent: Any) -> dict[Any, str]:
    sync = getattr(agent.sync, "sync", None)
    return getattr(sync, "errors", {}) if sync is not None else {}


def vrfs(agent: Any) -> list[dict[str, Any]]:
    model = agent.model
    routes: dict[int, int] = {}
    for key in model.desired:
        if key[0] == ROUTE and key[1] != C.AF_BRIDGE:
            routes[key[2]] = routes.get(key[2], 0) + 1
    out = [{"name": FABRIC_VRF, "vrf": 0,
            "routes": routes.get(0, 0), "ports": 0, "rcv_nh": 0, "flood_nh": 0}]
    for name, v in sorted(model._vrfs.items(), key=lambda kv: kv[1].vrf_id):
        out.append({"name": name, "vrf": v.vrf_id, "routes": routes.get(v.vrf_id, 0),
                    "ports": len(v.ports), "rcv_nh": v.rcv_nh, "flood_nh": v.flood_nh})
    return out


def routes(agent: Any, vrf: int | None, start: int, limit: int) -> dict[str, Any]:
    """Inet routes (agent view), optionally of one VRF, paged by position."""
    model = agent.model
    rows = []
    keys = sorted((k for k in model.desired if k[0] == ROUTE and k[1] != C.AF_BRIDGE
                   and (vrf is None or k[2] == vrf)), key=lambda k: (k[2], k[1], k[3], k[4]))
    remote = {(r[0], r[1], r[2]) for r in getattr(model, "_remote", {})}
    vrf_names = {v.vrf_id: name for name, v in model._vrfs.items()}
    for key in keys[start : start + limit]:
        _name, f = model.desired[key]
        prefix = _ip(key[3])
        rows.append({
            "vrf": key[2], "vrf_name": vrf_names.get(key[2], ""),
            "family": "inet" if key[1] == C.AF_INET else "inet6",
            "prefix": prefix, "plen": key[4], "nh_id": f.get("rtr_nh_id", 0),
            "label": f.get("rtr_label", 0), "flags": f.get("rtr_label_flags", 0),
            "mac": ":".join(f"{b:02x}" for b in f.get("rtr_mac", [])),
            "source": "controller" if (vrf_names.get(key[2], ""), prefix, key[4]) in remote
            else "local",
        })
    nxt = start + limit if start + limit < len(keys) else None
    return {"routes": rows, "next": nxt, "total": len(keys)}


def nexthops(agent: Any) -> list[dict[str, Any]]:
    model = agent.model
    out = []
    for key, (_name, f) in sorted((k, v) for k, v in model.desired.items() if k[0] == NH):
        row = {"id": key[1], "type": _NH_TYPES.get(f.get("nhr_type", -1), str(f.get("nhr_type"))),
               "vrf": f.get("nhr_vrf", 0), "flags": f.get("nhr_flags", 0),
               "oif": f.get("nhr_encap_oif_id", [None])[0] if isinstance(
                   f.get("nhr_encap_oif_id"), list) else f.get("nhr_encap_oif_id", 0)}
        if f.get("nhr_tun_dip"):
            row["tun_dip"] = str(ipaddress.IPv4Address(int(f["nhr_tun_dip"]).to_bytes(
                4, "little")))
            row["tun_sip"] = str(ipaddress.IPv4Address(int(f.get("nhr_tun_sip", 0)).to_bytes(
                4, "little")))
        out.append(row)
    return out


_NH_TYPES: dict[int, str] = {k: str(v).lower() for k, v in C.NH_TYPE_NAMES.items()}


def ports(agent: Any) -> list[dict[str, Any]]:
    table = agent.table
    if table is None:
        return []
    packets = agent.packets
    policy = getattr(agent, "policy", None)
    out = []
    for p in table.ports():
        row = p.to_oper_json()
        if policy is not None:
            row["security-groups"] = list(policy.port_groups.get(p.id, ()))
        ids = agent.model.port_ids(p.id)
        if packets is not None and ids is not None:
            # path preference: probes sent, and whether the VM answered (and from which MAC)
            row["path-preference"] = packets.prober.state(ids["vif"])
        out.append(row)
    return out


def traps(agent: Any) -> dict[str, Any]:
    packets = agent.packets
    if packets is None:
        return {"by_type": {}, "agent": {}, "services": {}, "flows": {}}
    c = packets.endpoint.counters
    s = packets.packet_services.counters
    f = packets.flows.counters
    return {
        "by_type": {TRAP_NAMES.get(k, str(k)): v for k, v in sorted(packets.endpoint.by_code.items())},
        "agent": {k: getattr(c, k) for k in ("traps", "malformed", "unknown_command",
                                              "commands", "command_failed", "rate_limited")},
        "services": {k: getattr(s, k) for k in ("dhcp", "arp", "flow", "icmp", "icmp_error",
                                                 "mac_learning", "unsupported", "invalid",
                                                 "sent", "send_failed")},
        "flows": {k: getattr(f, k) for k in ("traps", "pairs", "short_flows", "duplicates",
                                              "busy", "failed", "stale", "aged", "evicted",
                                              "denied", "revaluated")},
    }


def health(agent: Any) -> Health:
    reasons = []
    if not agent.ready.called:
        reasons.append("starting: port files not replayed or REST API not listening yet")
    if agent.rest_port is None:
        reasons.append("REST port API is not listening")
    errs = _errors(agent)
    if errs:
        reasons.append(f"{len(errs)} object(s) refused by the datapath")
    sync = getattr(agent.sync, "sync", None)
    if agent.sync is not None and sync is not None and getattr(sync, "channel", 1) is None:
        reasons.append("datapath (ksync) not connected")
    if agent.controllers:
        if not any(p["state"] == "Established" for p in xmpp_peers(agent)):
            reasons.append("no XMPP session to a control node")
    return Health(live=True, ready=not reasons, reasons=reasons)


def make_agent_app(agent: Any, datapath: Any = None, pkt0: Any = None) -> IntrospectApp:
    """The agent's introspect app (``datapath``: the embedded one, for live counters)."""
    flows = FlowTableSource(agent.run_dir)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    if datapath is not None:
        registry.register(DatapathCollector(datapath, flows, pkt0))
    else:
        registry.register(_FlowsOnly(flows))

    def summary(params: Params) -> Any:
        t = traps(agent)
        return {
            "daemon": "vrouter", "hostname": agent.hostname, "fabric_ip": agent.fabric_ip,
            "time": agent.reactor.seconds(),
            "interfaces": interfaces(agent, datapath), "vrfs": vrfs(agent),
            "xmpp": xmpp_peers(agent), "traps": t,
            "flows": {"active": _active(flows, datapath), "created": t["flows"].get("pairs", 0),
                      "aged": t["flows"].get("aged", 0)},
            "health": health(agent).__dict__,
        }

    def route_view(params: Params) -> Any:
        vrf = params.get("vrf")
        return routes(agent, int_param(params, "vrf", 0) if vrf else None,
                      int_param(params, "start", 0), int_param(params, "limit", 100, 1, 1000))

    def port_view(params: Params) -> Any:
        uuid = params.get("uuid")
        rows = ports(agent)
        if uuid:
            rows = [p for p in rows if p.get("id") == uuid.lower()]
            if not rows:
                raise NotFoundError(f"port {uuid[:64]} not found")
        return {"ports": rows}

    views: dict[str, Any] = {}
    if datapath is not None:
        views.update({f"dp_{k}": v for k, v in datapath_views(datapath, None).items()})
    views.update({
        "summary": summary,
        "interfaces": lambda p: {"interfaces": interfaces(agent, datapath)},
        "vrfs": lambda p: {"vrfs": vrfs(agent)},
        "routes": route_view,
        "nexthops": lambda p: {"nexthops": nexthops(agent)},
        "flows": flow_view(flows),
        "xmpp": lambda p: {"peers": xmpp_peers(agent)},
        "ports": port_view,
        "traps": lambda p: traps(agent),
    })
    app = IntrospectApp("vrouter", registry, lambda: health(agent), views,
                        sandesh_xml.agent_pages(agent, datapath, flows))
    registry.register(IntrospectCollector(app))
    return app


def _active(flows: FlowTableSource, datapath: Any = None) -> int:
    """Flows in use: the embedded datapath's own count, or a scan of the mapped table."""
    from vrtwist.introspect.flows import count_active

    for source in list(getattr(datapath, "usage_sources", ())):
        used = source().get("vo_flow_used_entries")
        if used is not None:
            return int(used)
    view = flows.view()
    return count_active(view) if view is not None else 0


class _FlowsOnly(Collector):
    def __init__(self, flows: FlowTableSource) -> None:
        self.flows = flows

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily("vrouter_flows_active", "active entries of the flow table",
                                value=_active(self.flows))

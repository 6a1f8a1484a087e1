"""Metrics and JSON views of the forwarding extension (``vrouter-dp``, or embedded in the
agent), read from its tables at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vrtwist.datapath import constants as C
from vrtwist.introspect.flows import MAX_PAGE, FlowTableSource, count_active, flow_json, page
from vrtwist.introspect.web import Params, int_param

#: vif counters exported, as (counter key, metric, direction)
_VIF_METRICS = (
    ("ipackets", "packets", "rx"), ("opackets", "packets", "tx"),
    ("ibytes", "bytes", "rx"), ("obytes", "bytes", "tx"),
    ("ierrors", "errors", "rx"), ("oerrors", "errors", "tx"),
)  # fmt: skip

_VIF_TYPES = {
    getattr(C, n): n.removeprefix("VIF_TYPE_").lower()
    for n in dir(C) if n.startswith("VIF_TYPE_") and isinstance(getattr(C, n), int)
}


def vif_type_name(t: int) -> str:
    return _VIF_TYPES.get(t, str(t))


class DatapathCollector(Collector):
    """vif counters, drop reasons, ksync requests, tables' sizes and active flows."""

    def __init__(self, datapath: Any, flows: FlowTableSource | None = None,
                 pkt0: Any = None) -> None:
        self.datapath = datapath
        self.flows = flows
        #: the datapath's pkt0 end (``vrtwist.pkt0.endpoints.DatapathEndpoint``), if any
        self.pkt0 = pkt0

    def collect(self) -> Iterator[Any]:
        tables = self.datapath.tables
        fams = {
            kind: CounterMetricFamily(f"vrouter_vif_{kind}", f"{kind} of a vif, per direction",
                                      labels=["vif", "name", "direction"])
            for kind in ("packets", "bytes", "errors")
        }
        vif_drops = CounterMetricFamily("vrouter_vif_drops", "packets dropped on a vif, per "
                                        "reason", labels=["vif", "name", "reason"])
        for idx, vif in list(tables.interfaces.items()):
            sidx = str(idx)
            counters = vif.counters
            for key, kind, direction in _VIF_METRICS:
                fams[kind].add_metric([sidx, vif.name, direction], counters.get(key, 0))
            for reason, n in list(vif.drops.items()):
                vif_drops.add_metric([sidx, vif.name, reason.removeprefix("vds_")], n)
        yield from fams.values()
        yield vif_drops
        drops = CounterMetricFamily("vrouter_drops", "packets dropped by the datapath, "
                                    "per reason (dropstats)", labels=["reason"])
        for reason, n in sorted(tables.drop_stats.items()):
            drops.add_metric([reason.removeprefix("vds_")], n)
        yield drops
        counts = getattr(self.datapath, "ksync_counts", None)
        if counts is not None:
            requests, errors = counts()
            req = CounterMetricFamily("vrouter_dp_ksync_requests", "ksync requests the "
                                      "datapath handled, per message", labels=["message"])
            err = CounterMetricFamily("vrouter_dp_ksync_errors", "ksync requests the datapath "
                                      "refused, per message", labels=["message"])
            for name, n in sorted(requests.items()):
                req.add_metric([name], n)
            for name, n in sorted(errors.items()):
                err.add_metric([name], n)
            yield req
            yield err
        sizes = GaugeMetricFamily("vrouter_dp_objects", "objects in the datapath's tables",
                                  labels=["table"])
        sizes.add_metric(["interface"], len(tables.interfaces))
        sizes.add_metric(["nexthop"], len(tables.nexthops))
        sizes.add_metric(["mpls"], len(tables.mpls))
        sizes.add_metric(["vrf"], len(self.datapath.routes.vrf_ids()))
        yield sizes
        yield from self._flows()
        if self.pkt0 is not None:
            c = self.pkt0.counters
            ev = CounterMetricFamily("vrouter_dp_pkt0", "pkt0 events at the datapath's end "
                                     "(traps sent, rate limited, agent commands)",
                                     labels=["event"])
            for name in ("traps", "rate_limited", "malformed", "unknown_command", "commands",
                         "command_failed"):
                ev.add_metric([name], getattr(c, name))
            yield ev

    def _flows(self) -> Iterator[Any]:
        usage: dict[str, int] = {}
        for source in list(getattr(self.datapath, "usage_sources", ())):
            usage.update(source())
        owner = getattr(self.datapath.handlers.get("vr_flow_table_data"), "flows", None)
        if "vo_flow_used_entries" in usage:
            # the in-process table keeps its counts: nothing to scan
            yield GaugeMetricFamily("vrouter_flows_active", "entries in use in the flow table",
                                    value=usage["vo_flow_used_entries"])
            yield GaugeMetricFamily("vrouter_flow_table_entries", "size of the flow table "
                                    "(main + overflow)", value=usage.get("vo_flow_entries", 0)
                                    + usage.get("vo_oflow_entries", 0))
            yield GaugeMetricFamily("vrouter_flows_overflow", "entries in use in the overflow "
                                    "table", value=usage.get("vo_flow_used_oentries", 0))
        elif self.flows is not None:
            view = self.flows.view()
            if view is not None:
                yield GaugeMetricFamily("vrouter_flows_active", "entries in use in the flow "
                                        "table", value=count_active(view))
                yield GaugeMetricFamily("vrouter_flow_table_entries", "size of the flow table "
                                        "(main + overflow)", value=view.num_entries)
        counters = getattr(owner, "counters", None)
        if counters is not None:
            ops = CounterMetricFamily("vrouter_dp_flow_operations", "flow table operations "
                                      "(vr_flow_table_data counters)", labels=["op"])
            for op in ("added", "deleted", "changed", "action_count", "hold_oflows"):
                ops.add_metric([op], getattr(counters, op, 0))
            yield ops


def vif_json(vif: Any) -> dict[str, Any]:
    return {
        "index": vif.idx, "name": vif.name, "type": vif_type_name(vif.type), "vrf": vif.vrf,
        "mac": ":".join(f"{b:02x}" for b in vif.mac), "mtu": vif.mtu, "flags": vif.flags,
        "nh_id": vif.nh_id,
        "rx_packets": vif.counters.get("ipackets", 0), "rx_bytes": vif.counters.get("ibytes", 0),
        "rx_errors": vif.counters.get("ierrors", 0),
        "tx_packets": vif.counters.get("opackets", 0), "tx_bytes": vif.counters.get("obytes", 0),
        "tx_errors": vif.counters.get("oerrors", 0),
        "drops": sum(vif.drops.values()),
    }


def datapath_views(datapath: Any, flows: FlowTableSource | None) -> dict[str, Any]:
    """JSON views: vifs, drops, nexthops, vrfs, flows (paged)."""
    tables = datapath.tables

    def vifs(params: Params) -> Any:
        return {"vifs": [vif_json(v) for _, v in sorted(tables.interfaces.items())]}

    def drops(params: Params) -> Any:
        return {"drops": {k.removeprefix("vds_"): v for k, v in sorted(tables.drop_stats.items())}}

    def nexthops(params: Params) -> Any:
        return {"nexthops": [nh.to_fields() for _, nh in sorted(tables.nexthops.items())]}

    def vrfs(params: Params) -> Any:
        out = []
        for vrf in sorted(datapath.routes.vrf_ids()):
            out.append({"vrf": vrf,
                        "inet_routes": datapath.routes.route_count(C.AF_INET, vrf),
                        "inet6_routes": datapath.routes.route_count(C.AF_INET6, vrf)})
        return {"vrfs": out}

    views: dict[str, Any] = {"vifs": vifs, "drops": drops, "nexthops": nexthops, "vrfs": vrfs}
    if flows is not None:
        views["flows"] = flow_view(flows)
    return views


def flow_view(flows: FlowTableSource) -> Any:
    def list_flows(params: Params) -> Any:
        start = int_param(params, "start", 0)
        limit = int_param(params, "limit", 100, 1, MAX_PAGE)
        view = flows.view()
        if view is None:
            return {"flows": [], "next": None, "table": None}
        entries, nxt = page(view, start, limit)
        return {"flows": [flow_json(e) for e in entries], "next": nxt,
                "table": view.num_entries}
    return list_flows


def make_datapath_app(datapath: Any, run_dir: str, pkt0: Any = None) -> Any:
    """``vrouter-dp``'s introspect: the datapath's tables, counters and flows."""
    from prometheus_client import CollectorRegistry

    from vrtwist.introspect.web import Health, IntrospectApp

    flows = FlowTableSource(run_dir)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatapathCollector(datapath, flows, pkt0))

    def health() -> Health:
        if flows.view() is None:
            return Health(ready=False, reasons=[f"flow table {flows.path} not mapped"])
        return Health()

    app = IntrospectApp("vrouter-dp", registry, health, datapath_views(datapath, flows),
                        page=False)
    from vrtwist.introspect.web import IntrospectCollector

    registry.register(IntrospectCollector(app))
    return app

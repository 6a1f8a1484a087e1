"""Introspect apps of the other daemons: the control node, vpnkit, vSPC, the vsock relay.

Each collector reads the counters its daemon already keeps (``MuxStats``, ``RelayStats``,
the vSPC ports' counters, the control node's tables) when scraped.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vrtwist.introspect.web import Health, IntrospectApp, Params


class _Self(Collector):
    def __init__(self, app: IntrospectApp) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        m = CounterMetricFamily("vrtwist_introspect_requests", "introspect requests answered",
                                labels=["kind", "code"])
        for (kind, code), n in sorted(self.app.served.items()):
            m.add_metric([kind, str(code)], n)
        yield m


class _Fn(Collector):
    def __init__(self, fn: Callable[[], Iterator[Any]]) -> None:
        self.fn = fn

    def collect(self) -> Iterator[Any]:
        return self.fn()


def _app(daemon: str, metrics: Callable[[], Iterator[Any]], health: Callable[[], Health],
         views: dict[str, Callable[[Params], Any]]) -> IntrospectApp:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fn(metrics))
    app = IntrospectApp(daemon, registry, health, views, page=False)
    registry.register(_Self(app))
    return app


# -- vrouter-control --------------------------------------------------------------------

def control_app(node: Any) -> IntrospectApp:
    """The control node: XMPP sessions, routing instances, routes per agent."""

    def peers() -> list[dict[str, Any]]:
        out = []
        for name, s in sorted(node.sessions.items()):
            out.append({"agent": name, "address": str(getattr(s, "peerAddress", lambda: "")()),
                        "subscriptions": len(getattr(s, "subscriptions", ())),
                        "routes": node.route_counts.get(name, 0)})
        return out

    def metrics() -> Iterator[Any]:
        yield GaugeMetricFamily("vrouter_control_xmpp_sessions", "agents with an established "
                                "XMPP session", value=len(node.sessions))
        up = GaugeMetricFamily("vrouter_control_xmpp_session_up", "1 per connected agent",
                               labels=["agent"])
        for name in sorted(node.sessions):
            up.add_metric([name], 1)
        yield up
        routes = GaugeMetricFamily("vrouter_control_routes", "routes published by an agent "
                                   "(learned here)", labels=["agent"])
        for name, n in sorted(node.route_counts.items()):
            routes.add_metric([name], n)
        yield routes
        yield GaugeMetricFamily("vrouter_control_routing_instances", "routing instances",
                                value=len(node.instances))
        yield GaugeMetricFamily("vrouter_control_routes_total_held", "routes held in all "
                                "routing instances",
                                value=sum(i.count() for i in node.instances.values()))

    def instances(params: Params) -> Any:
        return {"instances": [{"name": name, "routes": inst.count(),
                               "subscribers": sorted(inst.subscribers)}
                              for name, inst in sorted(node.instances.items())]}

    return _app("vrouter-control", metrics, Health,
                {"peers": lambda p: {"peers": peers()}, "instances": instances})


# -- vpnkit ------------------------------------------------------------------------------

def _mux_totals(links: Any) -> dict[str, int]:
    total = dict(links.past.as_dict())
    for mux in list(links.muxes):
        for k, v in mux.stats.as_dict().items():
            total[k] = total.get(k, 0) + v
    return total


def vpnkit_app(svc: Any, role: str) -> IntrospectApp:
    """vpnkit-host / vpnkit-forwarder: links, channels, bytes, window stalls, ports."""
    links, table = svc.links, svc.table

    def metrics() -> Iterator[Any]:
        t = _mux_totals(links)
        yield GaugeMetricFamily("vpnkit_links", "data links up", value=len(links.muxes))
        yield CounterMetricFamily("vpnkit_links_seen", "data links accepted or made",
                                  value=links.links_seen)
        yield GaugeMetricFamily("vpnkit_channels_open", "channels open on the links",
                                value=sum(len(m.channels) for m in list(links.muxes)))
        ch = CounterMetricFamily("vpnkit_channels", "channel events", labels=["event"])
        for ev in ("opened", "accepted", "refused", "closed"):
            ch.add_metric([ev], t.get(f"channels_{ev}", 0))
        yield ch
        by = CounterMetricFamily("vpnkit_bytes", "payload bytes over the links",
                                 labels=["direction"])
        by.add_metric(["in"], t.get("bytes_in", 0))
        by.add_metric(["out"], t.get("bytes_out", 0))
        yield by
        fr = CounterMetricFamily("vpnkit_frames", "frames over the links", labels=["direction"])
        fr.add_metric(["in"], t.get("frames_in", 0))
        fr.add_metric(["out"], t.get("frames_out", 0))
        yield fr
        yield CounterMetricFamily("vpnkit_window_stalls", "times a channel waited for the "
                                  "peer's window", value=t.get("window_stalls", 0))
        dg = CounterMetricFamily("vpnkit_datagrams", "UDP datagrams", labels=["event"])
        for ev in ("in", "out", "dropped"):
            dg.add_metric([ev], t.get(f"datagrams_{ev}", 0))
        yield dg
        err = CounterMetricFamily("vpnkit_errors", "frames or bytes lost", labels=["kind"])
        for k in ("unknown_id_frames", "discarded_bytes", "protocol_errors"):
            err.add_metric([k], t.get(k, 0))
        yield err
        yield GaugeMetricFamily("vpnkit_ports", "ports exposed", value=len(table.list()))

    def ports(params: Params) -> Any:
        return {"ports": [dataclasses.asdict(p) for p in table.list()]}

    def link_view(params: Params) -> Any:
        return {"links": [{"channels": len(m.channels), **m.stats.as_dict()}
                          for m in list(links.muxes)], "past": links.past.as_dict()}

    def health() -> Health:
        if not links.muxes:
            return Health(ready=False, reasons=["no data link up"])
        return Health()

    return _app(f"vpnkit-{role}", metrics, health, {"ports": ports, "links": link_view})


# -- vspc --------------------------------------------------------------------------------

_VSPC_COUNTERS = ("bytesFromVM", "bytesToVM", "handoffs", "notnow", "aborted", "expired",
                  "backendConnects", "lookaheadReads")


def vspc_app(table: Any) -> IntrospectApp:
    """vSPC: serial-port sessions, ESX connections and each port's counters."""

    def metrics() -> Iterator[Any]:
        ports = list(table.byKey.values())
        yield GaugeMetricFamily("vspc_ports", "VM serial ports known", value=len(ports))
        yield GaugeMetricFamily("vspc_connections", "ESX connections open",
                                value=len(table.connections))
        yield GaugeMetricFamily("vspc_sessions", "serial ports with an ESX connection",
                                value=sum(1 for p in ports if p.esx is not None))
        yield GaugeMetricFamily("vspc_backends", "serial ports with a backend connection",
                                value=sum(1 for p in ports if p.backend is not None))
        yield GaugeMetricFamily("vspc_pending_handoffs", "vMotion hand-offs in progress",
                                value=len(table.pending))
        fams = {c: CounterMetricFamily(f"vspc_port_{_snake(c)}", f"{c} of a serial port",
                                       labels=["uuid", "label"]) for c in _VSPC_COUNTERS}
        for p in ports:
            for c in _VSPC_COUNTERS:
                fams[c].add_metric([p.uuid, p.label], getattr(p.counters, c))
        yield from fams.values()

    def ports(params: Params) -> Any:
        return {"ports": table.snapshot()}

    return _app("vspc", metrics, Health, {"ports": ports})


def _snake(name: str) -> str:
    """``bytesFromVM`` -> ``bytes_from_vm``."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).lower()


# -- vsock-relay -------------------------------------------------------------------------

def vsock_app(factory: Any) -> IntrospectApp:
    """The vsock relay: callers accepted, active, refused, bytes each way."""
    stats = factory.stats

    def metrics() -> Iterator[Any]:
        yield CounterMetricFamily("vsock_relay_accepted", "callers accepted", value=stats.accepted)
        yield GaugeMetricFamily("vsock_relay_active", "callers being relayed", value=stats.active)
        yield GaugeMetricFamily("vsock_relay_backends_open", "backend connections open",
                                value=stats.backendsOpen)
        yield CounterMetricFamily("vsock_relay_spliced", "relays moved to splice(2)",
                                  value=stats.spliced)
        yield CounterMetricFamily("vsock_relay_refused", "callers refused", value=stats.refused)
        yield CounterMetricFamily("vsock_relay_backend_failures", "backend connects that failed",
                                  value=stats.backendFailures)
        by = CounterMetricFamily("vsock_relay_bytes", "bytes relayed", labels=["direction"])
        by.add_metric(["to_backend"], stats.bytesToBackend)
        by.add_metric(["to_caller"], stats.bytesToCaller)
        yield by

    def stats_view(params: Params) -> Any:
        return {"stats": dataclasses.asdict(stats)}

    return _app("vsock-relay", metrics, Health, {"stats": stats_view})

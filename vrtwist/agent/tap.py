"""``twistd -n vrouter``: the agent, with the forwarding extension in-process by default.

``--datapath=embedded`` (the default) adds the forwarding extension's service
(``vrtwist.datapath.service.makeDatapathService``) before the agent, so its ksync socket
``<run-dir>/dpdk_netlink`` exists when the agent connects; ``--datapath=external`` expects a
``twistd vrouter-dp`` on the same run directory and leaves it untouched across restarts.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from vrtwist._process import GC_THRESHOLDS as GC_THRESHOLDS  # re-exported: tests, bench
from vrtwist._process import DaemonService, reactor_and_tunings, tune_gc
from vrtwist.agent.service import DEFAULT_STATE_DIR, AgentService
from vrtwist.introspect.listen import introspect_option
from vrtwist.unixlisten import access_from_options

try:  # the forwarding extension's own options (--flow-entries, --bridge-entries, --fabric)
    from vrtwist.datapath.service import DatapathOptionsMixin as _DatapathOptions
except ImportError:  # pragma: no cover - until the datapath lands
    class _DatapathOptions:  # type: ignore[no-redef]
        optParameters: list[list[Any]] = [
            ["run-dir", None, "/var/run/vrouter", "run directory (dpdk_netlink, shm files)"],
        ]


try:  # the controller link's own options (--xmpp-hold-time, --xmpp-cert, ...)
    from vrtwist.xmpp.agent_link import LINK_OPT_PARAMETERS, linkKwargsFromOptions
except ImportError:  # pragma: no cover
    LINK_OPT_PARAMETERS = []

    def linkKwargsFromOptions(options: Any) -> dict[str, Any]:
        return {}


class Options(_DatapathOptions, usage.Options):  # type: ignore[misc]
    """Options of ``twistd vrouter`` (ARCHITECTURE.md, "twistd plugins")."""

    synopsis = "[options]"
    optParameters = [
        ["datapath", None, "embedded", "embedded (forwarding extension in-process) or external"],
        ["rest", None, "tcp:9091:interface=127.0.0.1", "endpoint of the REST port API"],
        ["state-dir", None, DEFAULT_STATE_DIR, "directory holding ports/<uuid> files"],
        ["hostname", None, socket.gethostname(), "this node's name towards the controller"],
        ["fabric-ip", None, "0.0.0.0", "this node's fabric address (tunnel source)"],
        ["stale-timeout", None, 60.0, "seconds after /syncports before unconfirmed ports go",
         float],
        ["ksync", None, "socket", "embedded datapath reached over the ksync socket (socket) "
         "or by direct calls with the same Sandesh objects (inprocess)"],
        *LINK_OPT_PARAMETERS,
        introspect_option("vrouter"),
    ]
    optFlags = [
        ["no-tap-check", None, "accept ports whose TAP does not exist (tests, DPDK)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["controller"] = []

    def opt_controller(self, endpoint: str) -> None:
        """XMPP endpoint of a control node (repeatable), e.g. tcp:10.0.0.1:5269."""
        self["controller"].append(endpoint)

    def postOptions(self) -> None:
        parent = getattr(super(), "postOptions", None)
        if parent is not None:
            parent()
        if self["datapath"] not in ("embedded", "external"):
            raise usage.UsageError("--datapath must be embedded or external")
        if self["ksync"] not in ("socket", "inprocess"):
            raise usage.UsageError("--ksync must be socket or inprocess")
        if self["ksync"] == "inprocess" and self["datapath"] != "embedded":
            raise usage.UsageError("--ksync inprocess needs --datapath embedded")
        if self["stale-timeout"] < 0:
            raise usage.UsageError("--stale-timeout must not be negative")
        if (self.get("xmpp-stale-time") or 0) < 0:
            raise usage.UsageError("--xmpp-stale-time must not be negative")
        tls = [k for k in ("xmpp-cert", "xmpp-key", "xmpp-ca") if self.get(k)]
        if tls and len(tls) != 3:
            raise usage.UsageError("--xmpp-cert, --xmpp-key and --xmpp-ca go together "
                                   f"(only {', '.join('--' + k for k in tls)} given)")


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """The agent's service tree: [datapath,] agent (tests pass their reactor: no tunings)."""
    reactor, tunings = reactor_and_tunings(reactor, tune_gc)
    top = DaemonService(*tunings)
    local = None
    embedded = embedded_pkt0 = None
    if options["datapath"] == "embedded":
        dp = _embedded_datapath(options, reactor)
        dp.setServiceParent(top)  # type: ignore[attr-defined]
        embedded = getattr(dp, "datapath", None)
        embedded_pkt0 = getattr(getattr(dp, "packets", None), "trap", None)
        if options["ksync"] == "inprocess":
            local = embedded
    agent = AgentService(
        reactor, run_dir=options["run-dir"], state_dir=options["state-dir"],
        rest=options["rest"], datapath=options["datapath"],
        tap_check=not options["no-tap-check"], stale_timeout=options["stale-timeout"],
        fabric_ip=options["fabric-ip"], hostname=options["hostname"],
        controllers=list(options["controller"]), fabric=options.get("fabric"),
        local_datapath=local, link_kwargs=linkKwargsFromOptions(options),
        access=access_from_options(options), introspect=options.get("introspect"),
        introspect_datapath=embedded, introspect_pkt0=embedded_pkt0)
    agent.setName("agent")
    agent.setServiceParent(top)
    return top


def _embedded_datapath(options: Options, reactor: Any) -> IService:
    try:
        from vrtwist.datapath.service import makeDatapathService
    except ImportError as e:  # pragma: no cover - until the datapath lands
        AgentService._log.error("embedded datapath unavailable: {e}", e=e)
        return MultiService()
    svc: IService = makeDatapathService(options, reactor=reactor)
    return svc

"""``twistd -n vrouter``: the agent, with the forwarding extension in-process by default.

``--datapath=embedded`` (the default) adds the forwarding extension's service
(``vrtwist.datapath.service.makeDatapathService``) before the agent, so its ksync socket
``<run-dir>/dpdk_netlink`` exists when the agent connects; ``--datapath=external`` expects a
``twistd vrouter-dp`` on the same run directory and leaves it untouched across restarts.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, ClassVar

from twisted.application.service import IService, MultiService
from twisted.python import usage

from vrtwist._process import GC_THRESHOLDS as GC_THRESHOLDS  # re-exported: tests, bench
from vrtwist._process import (
    DaemonService,
    RunDirLock,
    check_endpoint,
    reactor_and_tunings,
    tune_gc,
)
from vrtwist.agent.packet.dns import DNS_METHODS
from vrtwist.agent.service import DEFAULT_STATE_DIR, AgentService

# the forwarding extension's own options (--flow-entries, --bridge-entries, --fabric)
# and the controller link's (--xmpp-hold-time, --xmpp-cert, ...)
from vrtwist.datapath.service import DatapathOptionsMixin as _DatapathOptions
from vrtwist.datapath.service import lock_datapath, makeDatapathService
from vrtwist.introspect.listen import introspect_option
from vrtwist.unixlisten import access_from_options
from vrtwist.xmpp.agent_link import LINK_OPT_PARAMETERS, linkKwargsFromOptions


class Options(_DatapathOptions, usage.Options):
    """Options of ``twistd vrouter`` (ARCHITECTURE.md, "twistd plugins")."""

    synopsis = "[options]"
    optParameters: ClassVar[list[list[Any]]] = [
        ["datapath", None, "embedded", "embedded (forwarding extension in-process) or external"],
        ["rest", None, "tcp:9091:interface=127.0.0.1", "endpoint of the REST port API"],
        ["state-dir", None, DEFAULT_STATE_DIR, "directory holding ports/<uuid> files"],
        ["hostname", None, socket.gethostname(), "this node's name towards the controller"],
        ["fabric-ip", None, "0.0.0.0", "this node's fabric address (tunnel source)"],
        ["stale-timeout", None, 60.0, "seconds after /syncports before unconfirmed ports go",
         float],
        ["ksync", None, "socket", "embedded datapath reached over the ksync socket (socket) "
         "or by direct calls with the same Sandesh objects (inprocess)"],
        ["dns-method", None, "default-dns-server", "IPAM DNS method of networks that set "
         "none (PUT /network, controller config): default-dns-server (VM names answered, "
         "the rest forwarded), none (SERVFAIL), tenant-dns-server or virtual-dns-server"],
        *LINK_OPT_PARAMETERS,
        introspect_option("vrouter"),
    ]
    optFlags: ClassVar[list[list[Any]]] = [
        ["no-tap-check", None, "replay port files whose interface does not exist (DPDK, "
         "tests); a REST add never requires it"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["controller"] = []
        self["dns-upstream"] = []

    def opt_dns_upstream(self, server: str) -> None:
        """A resolver the VMs' DNS queries are forwarded to, host or host:port
        (repeatable; default: the servers in /etc/resolv.conf)."""
        host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "53")
        try:
            self["dns-upstream"].append((str(ipaddress.ip_address(host.strip("[]"))), int(port)))
        except ValueError:
            raise usage.UsageError(f"--dns-upstream {server!r}: an IP address[:port]") from None

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
        check_endpoint(self["rest"], "rest")
        if self["dns-method"] not in DNS_METHODS:
            raise usage.UsageError(f"--dns-method must be one of {', '.join(DNS_METHODS)}")
        for controller in self["controller"]:
            check_endpoint(_controller_description(controller), "controller", client=True)
        if self["stale-timeout"] < 0:
            raise usage.UsageError("--stale-timeout must not be negative")
        if (self.get("xmpp-stale-time") or 0) < 0:
            raise usage.UsageError("--xmpp-stale-time must not be negative")
        tls = [k for k in ("xmpp-cert", "xmpp-key", "xmpp-ca") if self.get(k)]
        if tls and len(tls) != 3:
            raise usage.UsageError("--xmpp-cert, --xmpp-key and --xmpp-ca go together "
                                   f"(only {', '.join('--' + k for k in tls)} given)")


def _controller_description(text: str) -> str:
    """The endpoint string the controller link dials for ``--controller text``."""
    try:
        from vrtwist.xmpp.agent_link import _endpoint_description
    except ImportError:  # pragma: no cover
        return text
    return _endpoint_description(text)


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """The agent's service tree: [datapath,] agent (tests pass their reactor: no tunings)."""
    reactor, tunings = reactor_and_tunings(reactor, tune_gc)
    # the run directory's locks before anything else in it: the embedded datapath's
    # first (a vrouter-dp or another vrouter there is the likely clash), then one agent
    # per run directory (its pkt0 socket, the datapath it programs)
    dp_lock = _lock_embedded_datapath(options)
    try:
        lock = RunDirLock(options["run-dir"], "agent", "vrouter agent")
    except BaseException:
        if dp_lock is not None:
            dp_lock.release()  # now, not when the traceback is collected
        raise
    top = DaemonService(*tunings)
    top.hold(lock)
    local = None
    embedded = embedded_pkt0 = None
    if options["datapath"] == "embedded":
        try:
            dp = _embedded_datapath(options, reactor, dp_lock)
        except BaseException:
            lock.release()
            if dp_lock is not None:
                dp_lock.release()
            raise
        dp.setServiceParent(top)
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
        introspect_datapath=embedded, introspect_pkt0=embedded_pkt0,
        dns_method=options["dns-method"], dns_upstream=list(options["dns-upstream"]) or None)
    agent.setName("agent")
    agent.setServiceParent(top)
    return top


def _lock_embedded_datapath(options: Options) -> RunDirLock | None:
    if options["datapath"] != "embedded":
        return None
    return lock_datapath(options["run-dir"])


def _embedded_datapath(options: Options, reactor: Any, lock: RunDirLock | None) -> IService:
    svc: IService = makeDatapathService(options, reactor=reactor, lock=lock)
    return svc

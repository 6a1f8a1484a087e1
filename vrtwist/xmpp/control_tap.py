"""``twistd vrouter-control``: the built-in control node.

Standalone: it needs nothing else from vrtwist.  Agents connect to ``--xmpp`` (an
endpoint string, default ``tcp:5269``) and the node reflects their routes.
"""

from __future__ import annotations

import socket
from typing import Any, ClassVar

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.python import usage

from vrtwist._process import DaemonService, check_endpoint, reactor_and_tunings, tune_gc
from vrtwist.access import SOCKET_GROUP_OPTION
from vrtwist.bounds import BoundedFactory, ConnectionLimits
from vrtwist.introspect.daemons import control_app
from vrtwist.introspect.listen import add_introspect, introspect_option
from vrtwist.logfields import Logger
from vrtwist.unixlisten import access_from_options, listen_endpoint

from .control import AGENT_MAX_STANZA, DEFAULT_MAX_ROUTES, ControlNode, ControlNodeFactory
from .session import check_hold_time
from .tls import mutual_tls_options

__all__ = ["Options", "makeService"]


def _gr_time(value: str) -> float:
    gr = float(value)
    if gr < 0:
        raise ValueError("graceful-restart time must be >= 0")
    return gr


class Options(usage.Options):
    """Command line of ``twistd vrouter-control``."""

    optParameters: ClassVar[list[list[Any]]] = [
        introspect_option("vrouter-control"),
        ["xmpp", None, "tcp:5269", "XMPP listening endpoint (string description)"],
        ["hostname", None, None, "host name announced in the stream header"],
        ["hold-time", None, 90.0, "XMPP hold time in seconds (1..90)", check_hold_time],
        [
            "gr-time",
            None,
            30.0,
            "graceful-restart time: routes of a lost agent are kept this many seconds",
            _gr_time,
        ],
        ["xmpp-cert", None, None, "PEM certificate: turns on STARTTLS (mutual)"],
        ["xmpp-key", None, None, "PEM private key of --xmpp-cert"],
        ["xmpp-ca", None, None, "PEM CA that signs the agents' certificates"],
        ["max-stanza", None, AGENT_MAX_STANZA, "largest stanza accepted from an agent", int],
        ["max-routes", None, DEFAULT_MAX_ROUTES, "routes one agent may publish", int],
        SOCKET_GROUP_OPTION,
    ]

    def postOptions(self) -> None:
        check_endpoint(self["xmpp"], "xmpp")
        tls = [self["xmpp-cert"], self["xmpp-key"], self["xmpp-ca"]]
        if any(tls) and not all(tls):
            raise usage.UsageError("--xmpp-cert, --xmpp-key and --xmpp-ca go together")
        if not self["hostname"]:
            self["hostname"] = socket.gethostname()


class _UnauthenticatedWarning(Service):
    """Says once at start that the XMPP service takes any agent that connects.

    Without ``--xmpp-cert`` there is no STARTTLS and no client certificate: whoever
    reaches the port may publish routes, so the operator must hear it.
    """

    _log = Logger()

    def __init__(self, description: str) -> None:
        self.description = description

    def startService(self) -> None:
        super().startService()
        self._log.warn(
            "XMPP service on {endpoint} is unauthenticated and unencrypted (no --xmpp-cert):"
            " any peer that reaches it may publish routes",
            endpoint=self.description[:200],
        )


class _NodeTimers(Service):
    """Stops the node's graceful-restart and flush timers with the service."""

    def __init__(self, node: ControlNode) -> None:
        self.node = node

    def stopService(self) -> None:
        super().stopService()
        self.node.stop()


#: Agents: the stream opened within 10 s; after that XMPP's own hold timer closes a
#: silent session, so no idle deadline here; up to 4096 agents (one per compute node),
#: the oldest silent connection closed for a newcomer.
XMPP_LIMITS = ConnectionLimits(max_connections=4096, first_frame=10.0, partial=None, idle=None)


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """The control node service: one listening endpoint, one shared routing state."""
    # the agent's collector tuning, applied when the daemon starts: the control node
    # holds every route too
    reactor, tunings = reactor_and_tunings(reactor, tune_gc)
    tls = None
    if options["xmpp-cert"]:
        tls = mutual_tls_options(options["xmpp-cert"], options["xmpp-key"], options["xmpp-ca"])
    node = ControlNode(reactor, options["hostname"], options["gr-time"], options["max-routes"])
    factory = ControlNodeFactory(node, options["hold-time"], tls, options["max-stanza"])
    top = DaemonService(*tunings)
    top.setName("vrouter-control")
    endpoint = listen_endpoint(reactor, options["xmpp"], access_from_options(options))
    bounded = BoundedFactory(factory, reactor, XMPP_LIMITS, "xmpp")
    server = StreamServerEndpointService(endpoint, bounded)
    server.setName("xmpp")
    server.setServiceParent(top)
    if tls is None:
        _UnauthenticatedWarning(options["xmpp"]).setServiceParent(top)
    _NodeTimers(node).setServiceParent(top)
    top.node = node  # type: ignore[attr-defined]
    add_introspect(top, reactor, options.get("introspect"), lambda: control_app(node))
    return top

"""The XMPP controller link (agent side) and a reflecting control node.

``ControllerLink`` keeps the agent's sessions to its control nodes (with failover) and
feeds the routes it learns to an ``IRemoteRouteSink``; ``ControlNode`` reflects routes
between agents. ``framing`` and ``stanzas`` are sans-IO. In-memory peers for tests are in
``vrtwist.xmpp.testing``.
"""

from __future__ import annotations

from vrtwist._exports import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads it so)

if TYPE_CHECKING:
    from vrtwist.xmpp.agent_link import (
        AgentSession,
        ControllerLink,
        FailoverEndpoint,
        makeControllerLink,
    )
    from vrtwist.xmpp.control import ControlNode, ControlNodeFactory, ControlSession, IControlNode
    from vrtwist.xmpp.framing import FramingError, StanzaSplitter, StreamHeader
    from vrtwist.xmpp.interfaces import IControllerLink, IRouteProgrammer, LocalRoute
    from vrtwist.xmpp.remote_routes import IRemoteRouteSink, RemoteRouteTable
    from vrtwist.xmpp.session import ProtocolViolation, XmppSession
    from vrtwist.xmpp.stanzas import NextHop, RouteEntry, StanzaError, parse_stanza
    from vrtwist.xmpp.tls import mutual_tls_options

__all__ = [
    "AgentSession",
    "ControlNode",
    "ControlNodeFactory",
    "ControlSession",
    "ControllerLink",
    "FailoverEndpoint",
    "FramingError",
    "IControlNode",
    "IControllerLink",
    "IRemoteRouteSink",
    "IRouteProgrammer",
    "LocalRoute",
    "NextHop",
    "ProtocolViolation",
    "RemoteRouteTable",
    "RouteEntry",
    "StanzaError",
    "StanzaSplitter",
    "StreamHeader",
    "XmppSession",
    "makeControllerLink",
    "mutual_tls_options",
    "parse_stanza",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "agent_link": ("ControllerLink", "AgentSession", "FailoverEndpoint", "makeControllerLink"),
    "control": ("ControlNode", "ControlNodeFactory", "ControlSession", "IControlNode"),
    "interfaces": ("LocalRoute", "IControllerLink", "IRouteProgrammer"),
    "remote_routes": ("IRemoteRouteSink", "RemoteRouteTable"),
    "session": ("XmppSession", "ProtocolViolation"),
    "framing": ("StanzaSplitter", "StreamHeader", "FramingError"),
    "stanzas": ("RouteEntry", "NextHop", "StanzaError", "parse_stanza"),
    "tls": ("mutual_tls_options",),
})

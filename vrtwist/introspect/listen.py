"""The ``--introspect ENDPOINT`` option and the listener every daemon uses for it.

Loopback by default where a port is given; ``none`` (or an empty string) turns it off.
The listener is bounded as the REST API is (``vrtwist.bounds``), and ``unix:`` endpoints
get the owner-only socket of ``vrtwist.unixlisten``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.web.server import Site

from vrtwist.access import SocketAccess
from vrtwist.bounds import bounded_site
from vrtwist.unixlisten import listen_endpoint

#: Defaults per daemon: the agent uses the real introspect's 8085; the others are off
#: unless asked for (several of them often run on one host, where a fixed port clashes).
DEFAULTS = {
    "vrouter": "tcp:8085:interface=127.0.0.1",
    "vrouter-dp": "none",
    "vrouter-control": "tcp:8083:interface=127.0.0.1",
    "vpnkit-host": "none",
    "vpnkit-forwarder": "none",
    "vspc": "none",
    "vsock-relay": "none",
}
OFF = frozenset({"", "none", "off"})


def introspect_option(daemon: str) -> list[Any]:
    """The ``optParameters`` row of ``--introspect`` for ``daemon``."""
    default = DEFAULTS.get(daemon, "none")
    return ["introspect", None, default,
            "endpoint of the introspect server (/metrics, /health, /api, the web page); "
            "'none' turns it off"]


def enabled(description: str | None) -> bool:
    return description is not None and description.strip().lower() not in OFF


def listen_introspect(reactor: Any, description: str, resource: Any,
                      access: SocketAccess | None = None) -> Deferred[IListeningPort]:
    """Listen on ``description`` with ``resource`` behind the HTTP connection guard."""
    site = Site(resource)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]  # no access log
    endpoint = listen_endpoint(reactor, description, access)
    d: Deferred[IListeningPort] = endpoint.listen(bounded_site(site, reactor, "introspect"))
    return d

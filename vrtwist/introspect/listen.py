"""The ``--introspect ENDPOINT`` option and the listener every daemon uses for it.

Loopback by default where a port is given; ``none`` (or an empty string) turns it off.
The listener is bounded as the REST API is (``vrtwist.bounds``), and ``unix:`` endpoints
get the owner-only socket of ``vrtwist.unixlisten``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure
from twisted.web.server import Site

from vrtwist.access import SocketAccess
from vrtwist.bounds import bounded_site
from vrtwist.logfields import Logger
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


class IntrospectService(Service):
    """Serves an :class:`~vrtwist.introspect.web.IntrospectApp` while running.

    ``make_app`` is called at start-up (the daemon's state exists by then).  A listen
    failure is logged and the daemon goes on: observability must not stop the node.
    """

    _log = Logger()

    def __init__(self, reactor: Any, description: str, make_app: Callable[[], Any],
                 access: SocketAccess | None = None) -> None:
        self.reactor = reactor
        self.description = description
        self.make_app = make_app
        self.access = access
        self.app: Any = None
        self.port: IListeningPort | None = None
        #: fires once listening (or after a logged failure to listen)
        self.listening: Deferred[IListeningPort | None] = Deferred()

    def startService(self) -> None:
        super().startService()
        self.app = self.make_app()
        if self.reactor is None:  # a tap given no reactor: the process's own
            from twisted.internet import reactor

            self.reactor = reactor
        d = listen_introspect(self.reactor, self.description, self.app.resource(), self.access)

        def up(port: IListeningPort) -> IListeningPort:
            self.port = port
            self._log.info("introspect listening on {addr}", addr=port.getHost())
            return port

        def failed(f: Failure) -> None:
            self._log.error("introspect: cannot listen on {ep}: {e}", ep=self.description,
                            e=f.value)
            return None
        done: Deferred[IListeningPort | None] = d.addCallbacks(up, failed)
        done.chainDeferred(self.listening)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


def add_introspect(parent: Any, reactor: Any, description: str | None,
                   make_app: Callable[[], Any], access: SocketAccess | None = None
                   ) -> IntrospectService | None:
    """An :class:`IntrospectService` under ``parent`` when ``description`` is not off."""
    if not enabled(description):
        return None
    assert description is not None
    svc = IntrospectService(reactor, description, make_app, access)
    svc.setName("introspect")
    svc.setServiceParent(parent)
    return svc

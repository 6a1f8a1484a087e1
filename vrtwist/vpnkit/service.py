"""Services shared by ``twistd vpnkit-forwarder`` and ``twistd vpnkit-host``.

Both processes are the same machine with different defaults, as in Go (one ``Control``
object plays either role): a data link (listening, or connecting with backoff through
``ClientService``), a :class:`ForwardingAcceptor` for channels the peer opens, and
optionally the HTTP expose API and a list of ports exposed at start.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.application.internet import ClientService, StreamServerEndpointService, backoffPolicy
from twisted.application.service import Service
from twisted.python import usage
from twisted.web.server import Site

from vrtwist._busypoll import BusyPoll
from vrtwist._process import DaemonService, check_endpoint, reactor_and_tunings, tune_gc
from vrtwist.access import SOCKET_GROUP_OPTION
from vrtwist.bounds import ConnectionGuard, ConnectionLimits, bounded_site
from vrtwist.logfields import Logger
from vrtwist.unixlisten import access_from_options, listen_endpoint
from vrtwist.vpnkit.addr import AddressError, parse_connect_addr, parse_listen_addr
from vrtwist.vpnkit.api import ExposeAPI
from vrtwist.vpnkit.host import ForwardTable, Links, Port, PortError
from vrtwist.vpnkit.mux import DEFAULT_WINDOW, DEFAULT_WINDOW_MAX, MultiplexerFactory
from vrtwist.vpnkit.policy import DestinationPolicy
from vrtwist.vpnkit.proxy import ForwardingAcceptor
from vrtwist.vsock.tuning import tuneAllocator

__all__ = ["VpnkitOptions", "VpnkitService", "makeVpnkitService"]

_ADDR_HELP = (
    "ADDR: unix socket path, integer AF_VSOCK port, CID/PORT, vsock:CID:PORT, "
    "or a Twisted endpoint string (tcp:..., unix:...)"
)


#: Microseconds of zero-timeout polling after link traffic (see vrtwist/_busypoll.py):
#: it takes the wake-up off each relay hop (64-byte round trip +111 us -> +13..20 us in
#: bench/bench_vpnkit.py) for at most this much CPU after a burst, none while idle.
DEFAULT_BUSY_POLL_US = 200


class VpnkitOptions(usage.Options):
    """Options common to both roles."""

    optParameters: ClassVar[list[Any]] = [
        ["data-listen", None, None, "accept data connections on ADDR. " + _ADDR_HELP],
        [
            "data-connect",
            None,
            None,
            "connect the data link to ADDR (reconnects with backoff). " + _ADDR_HELP,
        ],
        [
            "window",
            None,
            DEFAULT_WINDOW,
            "bytes each side may have in flight per channel (we advertise this)",
            int,
        ],
        [
            "window-max",
            None,
            None,
            "a channel whose sender keeps its window full gets a bigger one, up to BYTES "
            "(default 1 MiB; give the --window value to keep windows fixed as Go does)",
            int,
        ],
        ["api", None, None, "serve the HTTP/JSON expose API on this endpoint string"],
        [
            "busy-poll",
            None,
            DEFAULT_BUSY_POLL_US,
            "microseconds the reactor keeps polling without sleeping after link traffic "
            "(lower latency for that much CPU per burst; 0 = off)",
            int,
        ],
        ["retry-max", None, 5.0, "longest pause between reconnection attempts, seconds", float],
        [
            "max-channels",
            None,
            16384,
            "refuse channels the peer opens beyond this many per link",
            int,
        ],
        SOCKET_GROUP_OPTION,
    ]
    optFlags: ClassVar[list[Any]] = [
        ["no-handshake", None, "speak to the OCaml multiplexer, which sends no preamble"],
        ["no-reset", None, "close a refused client with FIN (Go's way) instead of RST"],
        ["debug", None, "log every channel event"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["expose"] = []
        self["allow-unix-dir"] = []

    def opt_allow_unix_dir(self, directory: str) -> None:
        """channels the peer opens may reach unix sockets under DIR (repeatable; by
        default only TCP and UDP destinations are dialled)"""
        if not os.path.isabs(directory):
            raise usage.UsageError(f"--allow-unix-dir {directory}: must be an absolute path")
        self["allow-unix-dir"].append(directory)

    def opt_expose(self, spec: str) -> None:
        """proto:outip:outport:inip:inport or unix:outpath:inpath, repeatable"""
        try:
            self["expose"].append(Port.parse(spec))
        except PortError as e:
            raise usage.UsageError(f"--expose {spec}: {e}") from None

    def opt_control_listen(self, endpoint: str) -> None:
        """alias of --api (Go's -control-listen)"""
        self["api"] = endpoint

    def postOptions(self) -> None:
        if bool(self["data-listen"]) == bool(self["data-connect"]):
            raise usage.UsageError("give exactly one of --data-listen ADDR or --data-connect ADDR")
        if not 1024 <= self["window"] <= 0xFFFFFFFF:
            raise usage.UsageError("--window must be between 1024 and 2^32-1")
        if not 0 <= self["busy-poll"] <= 1_000_000:
            raise usage.UsageError("--busy-poll must be between 0 and 1000000 microseconds")
        if self["window-max"] is None:
            self["window-max"] = max(self["window"], DEFAULT_WINDOW_MAX)
        if not self["window"] <= self["window-max"] <= 0xFFFFFFFF:
            raise usage.UsageError("--window-max must be between --window and 2^32-1")
        self["access"] = access_from_options(self)
        from twisted.internet import reactor

        for key, parse in (("data-listen", parse_listen_addr), ("data-connect", parse_connect_addr)):
            if self[key]:
                try:
                    parse(reactor, self[key])
                except (AddressError, ValueError, KeyError, TypeError) as e:
                    raise usage.UsageError(f"--{key} {self[key]}: {e}") from None
        if self["api"]:
            check_endpoint(self["api"], "api")


class _StopBusyPoll(Service):
    """Stops the busy poller with the service, so no zero-delay call outlives it."""

    def __init__(self, poller: BusyPoll) -> None:
        self.poller = poller

    def stopService(self) -> None:
        super().stopService()
        self.poller.stop()


class _ExposeAtStart(Service):
    """Exposes the --expose ports when started, unexposes everything when stopped."""

    _log = Logger()

    def __init__(self, table: ForwardTable, ports: list[Port]) -> None:
        self.table = table
        self.ports = ports

    def startService(self) -> None:
        super().startService()
        from twisted.internet import defer

        for p in self.ports:
            d = defer.ensureDeferred(self.table.expose(p))
            d.addErrback(self._failed, p)

    def _failed(self, f: Any, port: Port) -> None:
        self._log.error("cannot expose {port}: {err}", port=str(port), err=f.getErrorMessage())

    def stopService(self) -> Any:
        super().stopService()
        from twisted.internet import defer

        return defer.ensureDeferred(self.table.unexpose_all())


class _DumpOnSignal(Service):
    """SIGUSR1 logs the multiplexer state dump (the trace users paste into issues)."""

    _log = Logger()

    def __init__(self, reactor: Any, table: ForwardTable) -> None:
        self.reactor = reactor
        self.table = table
        self._old: Any = None

    def startService(self) -> None:
        super().startService()
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGUSR1, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(
            lambda: self._log.info("state dump:\n{dump}", dump=self.table.dump())
        )

    def stopService(self) -> None:
        super().stopService()
        if self._old is not None:
            signal.signal(signal.SIGUSR1, self._old)
            self._old = None


class VpnkitService(DaemonService):
    """One role's services, with the objects tests and tools want to reach.

    Under twistd (no reactor given) it applies the process-wide tunings when it starts:
    the allocator keeps relay-sized read buffers (up to 1 MiB) off fresh ``mmap`` calls
    and page faults (``vrtwist.vsock.tuning.tuneAllocator``), and the collector runs in
    larger steps.  Tests, which pass their own reactor, keep their process as it is.
    """

    def __init__(
        self, links: Links, table: ForwardTable, tunings: tuple[Callable[[], object], ...] = ()
    ) -> None:
        super().__init__(*tunings)
        self.links = links
        self.table = table
        self.apiService: StreamServerEndpointService | None = None
        self.dataService: Any = None

    def stopService(self) -> Any:
        """Stop listening and also drop established data links (their channels close)."""
        from twisted.internet import defer

        d = defer.maybeDeferred(super().stopService)
        lost = [m.whenLost for m in self.links.muxes if not m.whenLost.called]
        for m in list(self.links.muxes):
            m.loseLink("service stopping")
        return defer.gatherResults([d, *lost], consumeErrors=True)


#: Accepted data links: the handshake within 10 s, then no deadline (a link lives as
#: long as the VM or host at the other end, and may be silent); at most 128 links,
#: the stalest one (one that never shook hands first) closed for a newcomer.
LINK_LIMITS = ConnectionLimits(max_connections=128, first_frame=10.0, partial=None, idle=None)


def makeVpnkitService(
    options: VpnkitOptions, reactor: Any = None, role: str = "forwarder"
) -> VpnkitService:
    reactor, tunings = reactor_and_tunings(reactor, tuneAllocator, tune_gc)
    links = Links()
    access = options.get("access") or access_from_options(options)
    table = ForwardTable(reactor, links, resetOnRefused=not options["no-reset"], access=access)
    policy = DestinationPolicy(options.get("allow-unix-dir") or ())
    acceptor = ForwardingAcceptor(reactor, table.udp_stats, policy)
    svc = VpnkitService(links, table, tunings)
    window = options["window"]
    handshake = not options["no-handshake"]
    try:
        if options["data-listen"]:
            ep = parse_listen_addr(reactor, options["data-listen"], access)
            factory = MultiplexerFactory(
                acceptor, backwards=False, window=window, handshake=handshake, onLink=links.add,
                clock=reactor,
            )
            factory.guard = ConnectionGuard(reactor, LINK_LIMITS, "vpnkit-data")
            data: Any = StreamServerEndpointService(ep, factory)
        else:
            ep = parse_connect_addr(reactor, options["data-connect"])
            factory = MultiplexerFactory(
                acceptor, backwards=True, window=window, handshake=handshake, onLink=links.add,
                clock=reactor,
            )
            data = ClientService(
                ep,
                factory,
                retryPolicy=backoffPolicy(
                    initialDelay=0.2, factor=1.5, maxDelay=options["retry-max"]
                ),
                clock=reactor,
            )
    except (AddressError, ValueError) as e:
        raise usage.UsageError(str(e)) from None
    factory.trace = bool(options["debug"])
    factory.max_channels = options["max-channels"]
    factory.window_max = options["window-max"]
    if options["busy-poll"] > 0:
        poller = BusyPoll(reactor, options["busy-poll"] / 1e6)
        factory.on_activity = poller.kick
        _StopBusyPoll(poller).setServiceParent(svc)
    data.setName("data")
    data.setServiceParent(svc)
    svc.dataService = data
    if options["api"]:
        site = Site(ExposeAPI(table).resource())
        site.noisy = False
        api = StreamServerEndpointService(
            listen_endpoint(reactor, options["api"], access),
            bounded_site(site, reactor, "vpnkit-api"),
        )
        api.setName("api")
        api.setServiceParent(svc)
        svc.apiService = api
    _ExposeAtStart(table, options["expose"]).setServiceParent(svc)
    _DumpOnSignal(reactor, table).setServiceParent(svc)
    return svc

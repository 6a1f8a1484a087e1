"""``twistd -n vsock-relay``: relay vsock (or a unix/TCP stand-in) callers to backends.

Examples::

    # guests dial host port 1024; CID 3 goes to one appliance, the rest to another
    twistd -n vsock-relay --listen vsock:1024 \\
        --backend 3=tcp:10.0.0.5:2377 --backend unix:/run/vic/default.sock --proxy-protocol

    # peer-to-peer chaining: this relay forwards to the relay on the appliance's host,
    # which routes by the CID carried in the PROXY v2 header
    twistd -n vsock-relay --listen vsock:1024 --backend tcp:apphost:7000 --proxy-protocol
    twistd -n vsock-relay --listen tcp:7000 --accept-proxy-protocol --backend vsock:5:2377
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application import internet
from twisted.python import usage

from vrtwist._process import DaemonService, check_endpoint, reactor_and_tunings
from vrtwist.access import SOCKET_GROUP_OPTION
from vrtwist.introspect.daemons import vsock_app
from vrtwist.introspect.listen import add_introspect, introspect_option
from vrtwist.unixlisten import access_from_options, listen_endpoint
from vrtwist.vsock.relay import BackendRoutes, RelayConfig, RouteError, VSockRelayFactory
from vrtwist.vsock.tuning import tuneAllocator


class Options(usage.Options):
    """Command line of ``twistd vsock-relay``."""

    optParameters: ClassVar[list[list[Any]]] = [
        introspect_option("vsock-relay"),
        [
            "listen",
            "l",
            "vsock:1024",
            "server endpoint: vsock:PORT, vsock:CID:PORT, unix:PATH, tcp:PORT",
        ],
        SOCKET_GROUP_OPTION,
        ["buffer", None, "262144", "bytes held per caller while its backend connects"],
        ["header-timeout", None, "10", "seconds to wait for an incoming PROXY v2 header"],
        [
            "half-close-timeout",
            None,
            "0",
            "seconds a pair may stay half-closed before both sides are closed (0: no limit)",
        ],
    ]
    optFlags: ClassVar[list[list[Any]]] = [
        ["proxy-protocol", "p", "send a PROXY v2 header naming the caller to each backend"],
        ["no-splice", None, "copy through Python instead of kernel splice(2) for TCP/unix pairs"],
        [
            "accept-proxy-protocol",
            "a",
            "expect a PROXY v2 header from each caller (from an upstream relay) and route by it",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["routes"] = BackendRoutes()

    def opt_backend(self, spec: str) -> None:
        """[CID=]ENDPOINT: backend for callers with that CID, or the default (repeatable)."""
        try:
            self["routes"].add(spec)
        except RouteError as e:
            raise usage.UsageError(str(e)) from None

    opt_b = opt_backend

    def postOptions(self) -> None:
        check_endpoint(self["listen"], "listen")
        routes: BackendRoutes = self["routes"]
        if routes.default is None and not routes.byCID:
            raise usage.UsageError("at least one --backend is required")
        try:
            self["buffer"] = int(self["buffer"])
            self["header-timeout"] = float(self["header-timeout"])
            self["half-close-timeout"] = float(self["half-close-timeout"])
        except ValueError as e:
            raise usage.UsageError(f"bad number: {e}") from None


def makeService(options: Options, reactor: Any = None) -> DaemonService:
    """The listener with its relay factory."""
    # under twistd: size the allocator for relay buffers when it starts
    # (vrtwist.vsock.tuning.tuneAllocator); tests pass their own reactor and get none
    reactor, tunings = reactor_and_tunings(reactor, tuneAllocator)
    config = RelayConfig(
        routes=options["routes"],
        proxyProtocol=bool(options["proxy-protocol"]),
        acceptProxy=bool(options["accept-proxy-protocol"]),
        bufferLimit=int(options["buffer"]),
        headerTimeout=float(options["header-timeout"]),
        halfCloseTimeout=float(options["half-close-timeout"]),
        splice=not options["no-splice"],
    )
    top = DaemonService(*tunings)
    factory = VSockRelayFactory(reactor, config)
    internet.StreamServerEndpointService(
        listen_endpoint(reactor, options["listen"], access_from_options(options)), factory
    ).setServiceParent(top)
    add_introspect(top, reactor, options.get("introspect"), lambda: vsock_app(factory))
    return top

"""AF_VSOCK endpoints for Twisted and the vsock relay.

``VSockServerEndpoint`` / ``VSockClientEndpoint`` (and their ``vsock:`` endpoint-string
parsers) work like Twisted's TCP endpoints; ``VSockRelayFactory`` relays guest connections to
backends chosen by ``BackendRoutes``, optionally with a PROXY v2 header (``proxyv2``).
"""

from __future__ import annotations

from vrtwist._exports import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads it so)

if TYPE_CHECKING:
    from vrtwist.vsock.endpoints import (
        AF_VSOCK,
        VMADDR_CID_ANY,
        VMADDR_CID_HOST,
        VMADDR_PORT_ANY,
        VSockAddress,
        VSockClientEndpoint,
        VSockServerEndpoint,
    )
    from vrtwist.vsock.proxyv2 import ProxyHeader, ProxyProtocolError
    from vrtwist.vsock.relay import (
        BackendRoutes,
        IBackendRoutes,
        RelayConfig,
        RelayStats,
        RouteError,
        VSockRelayFactory,
    )

__all__ = [
    "AF_VSOCK",
    "VMADDR_CID_ANY",
    "VMADDR_CID_HOST",
    "VMADDR_PORT_ANY",
    "BackendRoutes",
    "IBackendRoutes",
    "ProxyHeader",
    "ProxyProtocolError",
    "RelayConfig",
    "RelayStats",
    "RouteError",
    "VSockAddress",
    "VSockClientEndpoint",
    "VSockRelayFactory",
    "VSockServerEndpoint",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "endpoints": ("VSockAddress", "VSockClientEndpoint", "VSockServerEndpoint", "AF_VSOCK", "VMADDR_CID_ANY", "VMADDR_CID_HOST", "VMADDR_PORT_ANY"),
    "relay": ("VSockRelayFactory", "RelayConfig", "RelayStats", "BackendRoutes", "IBackendRoutes", "RouteError"),
    "proxyv2": ("ProxyHeader", "ProxyProtocolError"),
})

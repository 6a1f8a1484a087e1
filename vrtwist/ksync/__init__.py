"""The ksync channel: Sandesh in netlink framing over ``<run-dir>/dpdk_netlink``.

* ``vrtwist.ksync.netlink``: sans-IO framing (docs/protocols/ksync.md).
* ``vrtwist.ksync.interfaces``: ``IKsyncDispatcher`` / ``KsyncReply``, the seam to the tables.
* ``vrtwist.ksync.server``: the server protocol, factory and service.
* ``vrtwist.ksync.client``: the Twisted client protocol (``request``, ``request_many``, ``dump``).
* ``vrtwist.ksync.blocking``: a blocking client for the command-line utilities.
* ``vrtwist.ksync.testing``: ``MemoryDispatcher``, an in-memory dispatcher for tests.

Importing this package does not import Twisted: each name loads its module on first use.
"""

from __future__ import annotations

from vrtwist._exports import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads it so)

if TYPE_CHECKING:
    from vrtwist.ksync.blocking import KsyncConnectError, KsyncConnection, open_ksync
    from vrtwist.ksync.client import KsyncClientProtocol, KsyncConnectionLost, connect_ksync
    from vrtwist.ksync.clientcore import KsyncError, KsyncProtocolError, KsyncResponse
    from vrtwist.ksync.interfaces import (
        IBridgeRoutes,
        IDatapath,
        IKsyncDispatcher,
        IKsyncSession,
        IRequestHandler,
        KsyncReply,
    )
    from vrtwist.ksync.netlink import FrameReader, NetlinkFrameError, NetlinkMessage
    from vrtwist.ksync.server import (
        KsyncServerFactory,
        KsyncServerProtocol,
        KsyncServerService,
        ksync_socket_path,
        listen_ksync,
    )

__all__ = [
    "FrameReader",
    "IBridgeRoutes",
    "IDatapath",
    "IKsyncDispatcher",
    "IKsyncSession",
    "IRequestHandler",
    "KsyncClientProtocol",
    "KsyncConnectError",
    "KsyncConnection",
    "KsyncConnectionLost",
    "KsyncError",
    "KsyncProtocolError",
    "KsyncReply",
    "KsyncResponse",
    "KsyncServerFactory",
    "KsyncServerProtocol",
    "KsyncServerService",
    "NetlinkFrameError",
    "NetlinkMessage",
    "connect_ksync",
    "ksync_socket_path",
    "listen_ksync",
    "open_ksync",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "interfaces": ("IKsyncDispatcher", "KsyncReply", "IKsyncSession", "IRequestHandler", "IBridgeRoutes", "IDatapath"),
    "clientcore": ("KsyncResponse", "KsyncError", "KsyncProtocolError"),
    "client": ("KsyncClientProtocol", "KsyncConnectionLost", "connect_ksync"),
    "blocking": ("KsyncConnection", "KsyncConnectError", "open_ksync"),
    "server": ("KsyncServerProtocol", "KsyncServerFactory", "KsyncServerService", "listen_ksync", "ksync_socket_path"),
    "netlink": ("NetlinkFrameError", "NetlinkMessage", "FrameReader"),
})

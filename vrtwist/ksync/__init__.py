"""The ksync channel: Sandesh in netlink framing over ``<run-dir>/dpdk_netlink``.

* ``vrtwist.ksync.netlink``: sans-IO framing (spec 3).
* ``vrtwist.ksync.interfaces``: ``IKsyncDispatcher`` / ``KsyncReply``, the seam to the tables.
* ``vrtwist.ksync.server``: the server protocol, factory and service.
* ``vrtwist.ksync.client``: the Twisted client protocol (``request``, ``request_many``, ``dump``).
* ``vrtwist.ksync.blocking``: a blocking client for the command-line utilities.

Importing this package does not import Twisted; import the submodules you need.
"""

from vrtwist.ksync.clientcore import KsyncError, KsyncProtocolError, KsyncResponse
from vrtwist.ksync.interfaces import IKsyncDispatcher, KsyncReply

__all__ = [
    "IKsyncDispatcher",
    "KsyncError",
    "KsyncProtocolError",
    "KsyncReply",
    "KsyncResponse",
]

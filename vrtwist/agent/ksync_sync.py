"""The agent's ksync synchroniser: desired datapath state in, ksync requests out.

Three parts, each in its own module, re-exported here so callers need not know:

- :mod:`vrtwist.agent.ksync_plan`: the pure planner - desired state against what the
  datapath holds, in dependency order (deletes of routes, labels, next hops, interfaces
  first, then adds of interfaces, next hops, labels, routes); no I/O.
- :mod:`vrtwist.agent.ksync_window`: the in-flight window - requests are pipelined
  (the datapath answers one session's requests in order), at most a window of them
  unanswered, batches counted as finished in order.
- :mod:`vrtwist.agent.ksync_datapath`: :class:`DatapathSync`, which reads the datapath
  (dumps, adoption of the ids a TAP already has) and sends what the planner orders;
  :mod:`vrtwist.agent.ksync_session`: the channels and the connection life cycle
  (:class:`KsyncSynchroniser` over ``dpdk_netlink``, :class:`LocalSynchroniser`
  in-process).
"""

from __future__ import annotations

from vrtwist.agent.ksync_datapath import DatapathRequestError, DatapathSync
from vrtwist.agent.ksync_plan import (
    COMPARED,
    fields_of,
    key_of,
    make,
    matches,
    owned,
    owned_subset,
    plan,
    rank_of,
)
from vrtwist.agent.ksync_session import (
    KsyncSynchroniser,
    LocalChannel,
    LocalSynchroniser,
    ProtocolChannel,
    _SyncProtocol,
)
from vrtwist.agent.ksync_window import BUNCH, InFlightWindow

__all__ = [
    "BUNCH",
    "COMPARED",
    "DatapathRequestError",
    "DatapathSync",
    "InFlightWindow",
    "KsyncSynchroniser",
    "LocalChannel",
    "LocalSynchroniser",
    "ProtocolChannel",
    "_SyncProtocol",
    "fields_of",
    "key_of",
    "make",
    "matches",
    "owned",
    "owned_subset",
    "plan",
    "rank_of",
]

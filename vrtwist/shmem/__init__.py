"""Flow and bridge tables in memory-mapped files shared by datapath, agent and utilities.

The layouts are in ``vrtwist.shmem.layout`` (no Twisted, no Sandesh); ``FlowTable`` and
``BridgeTable`` own the files, ``FlowManager`` is the agent's view of flows,
``install`` plugs both tables into a datapath's ksync handlers, and the ``*TableView``
classes read a table read-only for the utilities.
"""

from __future__ import annotations

from vrtwist._exports import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads it so)

if TYPE_CHECKING:
    from vrtwist.shmem.bridgetable import BridgeTable
    from vrtwist.shmem.entries import BridgeEntry, FlowEntry
    from vrtwist.shmem.flowtable import FlowSetResult, FlowTable, FlowTableFull, FlowVerdict
    from vrtwist.shmem.htable import HashTable
    from vrtwist.shmem.interfaces import IBridgeTable, IFlowDatapath, IFlowManager, IFlowTable
    from vrtwist.shmem.listing import (
        BridgeTableView,
        FlowMatch,
        FlowTableView,
        MatchError,
        parse_match,
    )
    from vrtwist.shmem.manager import (
        FlowHandle,
        FlowKey,
        FlowManager,
        FlowPair,
        FlowSetError,
        StaleFlowError,
    )
    from vrtwist.shmem.service import BRIDGE_FILE, FLOW_FILE, SharedTables, install

__all__ = [
    "BRIDGE_FILE",
    "FLOW_FILE",
    "BridgeEntry",
    "BridgeTable",
    "BridgeTableView",
    "FlowEntry",
    "FlowHandle",
    "FlowKey",
    "FlowManager",
    "FlowMatch",
    "FlowPair",
    "FlowSetError",
    "FlowSetResult",
    "FlowTable",
    "FlowTableFull",
    "FlowTableView",
    "FlowVerdict",
    "HashTable",
    "IBridgeTable",
    "IFlowDatapath",
    "IFlowManager",
    "IFlowTable",
    "MatchError",
    "SharedTables",
    "StaleFlowError",
    "install",
    "parse_match",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "flowtable": ("FlowTable", "FlowSetResult", "FlowTableFull", "FlowVerdict"),
    "bridgetable": ("BridgeTable",),
    "htable": ("HashTable",),
    "manager": ("FlowManager", "FlowKey", "FlowHandle", "FlowPair", "StaleFlowError", "FlowSetError"),
    "service": ("SharedTables", "install", "FLOW_FILE", "BRIDGE_FILE"),
    "listing": ("FlowTableView", "BridgeTableView", "FlowMatch", "MatchError", "parse_match"),
    "entries": ("FlowEntry", "BridgeEntry"),
    "interfaces": ("IFlowTable", "IFlowDatapath", "IBridgeTable", "IFlowManager"),
})

"""Bring the shared-memory tables up inside a forwarding extension.

``install(datapath, run_dir, flow_entries, bridge_entries)`` is what
``vrtwist.datapath.service`` calls at start: it creates, sizes and zeroes
``<run-dir>/flow.shmem`` and ``<run-dir>/bridge.shmem`` (the DPDK vRouter's
``--no-huge`` layout), formats both hash tables, and registers the ksync
handlers for ``vr_flow_req``, ``vr_flow_table_data``, ``vr_bridge_table_data``
and AF_BRIDGE ``vr_route_req`` on the datapath.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

from vrtwist.access import SocketAccess, private_dir
from vrtwist.ksync.interfaces import IDatapath
from vrtwist.logfields import Logger
from vrtwist.shmem import layout as L
from vrtwist.shmem.bridgetable import BridgeTable
from vrtwist.shmem.flowtable import FlowTable
from vrtwist.shmem.htable import create_file
from vrtwist.shmem.requests import BridgeRoutes, BridgeTableData, FlowRequests, FlowTableData

__all__ = ["BRIDGE_FILE", "FLOW_FILE", "SharedTables", "install"]

FLOW_FILE = "flow.shmem"
BRIDGE_FILE = "bridge.shmem"

_log = Logger()


@dataclass
class SharedTables:
    """What ``install`` set up: both tables and their mappings (close() unmaps)."""

    flows: FlowTable
    bridge: BridgeTable
    flow_map: mmap.mmap
    bridge_map: mmap.mmap

    def usage(self) -> dict[str, int]:
        """Sizes and used counts merged into the ``vrouter_ops`` GET reply."""
        return {
            "vo_flow_entries": self.flows.entries,
            "vo_oflow_entries": self.flows.oentries,
            "vo_bridge_entries": self.bridge.entries,
            "vo_oflow_bridge_entries": self.bridge.oentries,
            "vo_flow_used_entries": self.flows.used_entries,
            "vo_flow_used_oentries": self.flows.used_oflow_entries,
            "vo_bridge_used_entries": self.bridge.used_entries,
            "vo_bridge_used_oentries": self.bridge.used_oflow_entries,
        }

    def reset(self) -> None:
        """``vrouter_ops`` RESET: both files zeroed and reformatted in place."""
        self.flows = _reset_flows(self.flows, self.flow_map)
        self.bridge = _reset_bridge(self.bridge, self.bridge_map)

    def close(self) -> None:
        for m in (self.flow_map, self.bridge_map):
            if not m.closed:
                m.close()


def _zero(m: mmap.mmap) -> None:
    chunk = 1 << 22
    zeros = bytes(chunk)
    for start in range(0, len(m), chunk):
        end = min(len(m), start + chunk)
        m[start:end] = zeros[: end - start]


def _reset_flows(old: FlowTable, m: mmap.mmap) -> FlowTable:
    _zero(m)
    new = FlowTable(
        m,
        old.entries,
        old.oentries,
        path=old.path,
        max_vrfs=old.max_vrfs,
        max_mirrors=old.max_mirrors,
        cpus=old.cpus,
    )
    listeners = old.set_listeners  # the packet pipeline stays attached across a reset
    old.__dict__.update(new.__dict__)
    old.set_listeners = listeners
    return old


def _reset_bridge(old: BridgeTable, m: mmap.mmap) -> BridgeTable:
    _zero(m)
    new = BridgeTable(
        m, old.entries, old.oentries, path=old.path, nexthop_exists=old.nexthop_exists
    )
    old.__dict__.update(new.__dict__)
    return old


def install(
    datapath: IDatapath,
    run_dir: str,
    flow_entries: int = L.DEFAULT_FLOW_ENTRIES,
    bridge_entries: int = L.DEFAULT_BRIDGE_ENTRIES,
    *,
    flow_oentries: int | None = None,
    bridge_oentries: int | None = None,
    access: SocketAccess | None = None,
) -> SharedTables:
    """Create both table files in ``run_dir`` and hook their requests into ``datapath``.

    Overflow sizes default to the vRouter's rule ``((n / 5) + 1023) & ~1023``.  Both
    files are 0600 (0640 with ``access``'s group) whatever the umask.
    """
    if flow_entries <= 0 or bridge_entries <= 0:
        raise ValueError("table sizes must be positive")
    if not os.path.isdir(run_dir):
        private_dir(run_dir, access)
    fe = L.round_entries(flow_entries)
    fo = L.default_overflow(fe) if flow_oentries is None else flow_oentries
    be = L.round_entries(bridge_entries)
    bo = L.default_overflow(be) if bridge_oentries is None else bridge_oentries
    flow_path = os.path.abspath(os.path.join(run_dir, FLOW_FILE))
    bridge_path = os.path.abspath(os.path.join(run_dir, BRIDGE_FILE))
    config = getattr(datapath, "config", None)
    fmap = create_file(flow_path, (fe + fo) * L.FLOW_ENTRY_SIZE, access)
    bmap = create_file(bridge_path, (be + bo) * L.BRIDGE_ENTRY_SIZE, access)
    flows = FlowTable(
        fmap,
        fe,
        fo,
        path=flow_path,
        max_vrfs=getattr(config, "vrfs", L.DEFAULT_MAX_VRFS),
        max_mirrors=getattr(config, "mirrors", L.DEFAULT_MAX_MIRRORS),
        cpus=getattr(config, "cores", 1),
    )
    bridge = BridgeTable(bmap, be, bo, path=bridge_path)
    tables = SharedTables(flows, bridge, fmap, bmap)
    datapath.register("vr_flow_req", FlowRequests(flows))
    datapath.register("vr_flow_table_data", FlowTableData(flows))
    datapath.register("vr_bridge_table_data", BridgeTableData(bridge))
    datapath.register_bridge(BridgeRoutes(bridge, datapath))
    add_usage = getattr(datapath, "add_usage_source", None)
    if add_usage is not None:
        add_usage(tables.usage)
    hooks = getattr(datapath, "reset_hooks", None)
    if hooks is not None:
        hooks.append(tables.reset)
    if config is not None:
        for name, value in (
            ("flow_entries", fe),
            ("oflow_entries", fo),
            ("bridge_entries", be),
            ("oflow_bridge_entries", bo),
        ):
            if hasattr(config, name):
                try:
                    setattr(config, name, value)
                except (AttributeError, TypeError):
                    pass
    _log.info(
        "shared memory: {flow_path} ({fe}+{fo} flows), {bridge_path} ({be}+{bo} bridge entries)",
        flow_path=flow_path,
        fe=fe,
        fo=fo,
        bridge_path=bridge_path,
        be=be,
        bo=bo,
    )
    return tables

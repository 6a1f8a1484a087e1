"""Seams of the shared-memory tables (owner side, datapath side, agent side)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:  # annotations only: the implementations import this module
    from twisted.internet.defer import Deferred

    from vrtwist.shmem.entries import BridgeEntry, FlowEntry
    from vrtwist.shmem.flowtable import FlowSetResult, FlowVerdict
    from vrtwist.shmem.manager import FlowHandle, FlowKey, FlowPair


class IFlowTable(Interface):
    """The owner's flow table: applies FLOW_SET and reports ``vr_flow_table_data``."""

    path = Attribute("file the table lives in (reported in ftable_file_path)")
    size = Attribute("bytes of main + overflow table")

    def flow_set(req: Any) -> FlowSetResult:
        """Apply a vr_flow_req (mapping of field names); return a FlowSetResult."""

    def table_data(op: int) -> dict[str, Any]:
        """Fields of the vr_flow_table_data reply."""

    def entry(index: int) -> FlowEntry:
        """Parsed FlowEntry at ``index``."""


class IFlowDatapath(Interface):
    """What the packet pipeline uses: lookup, HOLD on miss, statistics, eviction."""

    set_listeners = Attribute(
        "list of callables given the flow index after every successful FLOW_SET "
        "(the pipeline replays its held packets there)"
    )

    def lookup(key: bytes) -> int:
        """Index of the live flow with this hashed key, or -1."""

    def verdict(index: int) -> FlowVerdict:
        """FlowVerdict of a live entry: flags, action, VRFs, mirrors, RPF NH, ports, TTL."""

    def hold_on_miss(
        key: bytes, vrf: int, src_info: int, nbytes: int, npackets: int
    ) -> tuple[int, int]:
        """Create a HOLD entry (ACTIVE|NEW_FLOW) counting the packet that missed
        (``nbytes``, ``npackets``); return (index, gen_id)."""

    def take_new_flow(index: int) -> bool:
        """Clear NEW_FLOW when the miss is trapped to the agent."""

    def add_stats(index: int, nbytes: int, npackets: int) -> None:
        """Add bytes/packets (with overflow carry) to a flow."""

    def stats(index: int) -> tuple[int, int]:
        """(bytes, packets) of a flow."""

    def set_tcp_flags(index: int, tcp_flags: int) -> None:
        """OR TCP state bits into fe_tcp_flags."""

    def tcp_state(index: int) -> tuple[int, int]:
        """(fe_tcp_flags, fe_tcp_seq) of a flow."""

    def set_tcp_state(index: int, tcp_flags: int, seq: int) -> None:
        """Write fe_tcp_flags and fe_tcp_seq."""

    def mark_evict(index: int) -> bool:
        """Evict a closed flow (and its dead reverse)."""

    def src_info(index):  # type: ignore[no-untyped-def]
        """fe_src_info of a flow: the vif index or outer source its packets came from."""

    def set_src_info(index: int, src_info: int) -> None:
        """Write fe_src_info (the datapath does on a packet from elsewhere than recorded)."""

    def set_ecmp_index(index, ecmp):  # type: ignore[no-untyped-def]
        """Write the ECMP member index the datapath chose (fe_ecmp_nh_index)."""


class IBridgeTable(Interface):
    """The owner's bridge table (AF_BRIDGE vr_route_req)."""

    path = Attribute("file the table lives in")
    size = Attribute("bytes of main + overflow table")

    def add(vrf: int, mac: bytes, nh_id: int, label: int, label_flags: int) -> tuple[int, int]:
        """Add or update an entry; return (errno, index)."""

    def get(vrf: int, mac: bytes | None, index: int) -> BridgeEntry | None:
        """Entry by key or index, or None."""

    def delete(vrf: int, mac: bytes) -> int:
        """Delete an entry; return 0 or -ENOENT."""

    def dump(vrf: int, marker_mac: bytes) -> Iterator[BridgeEntry]:
        """Valid entries of ``vrf`` after the marker MAC."""


class IFlowManager(Interface):
    """Agent side: programs flows over ksync and reads them from the mapped table."""

    def create_pair(
        forward: FlowKey, reverse: FlowKey, action: int, **options: int
    ) -> Deferred[FlowPair]:
        """Create a forward/reverse flow pair; Deferred firing with a FlowPair."""

    def update(handle: FlowHandle, action: int, **options: int) -> Deferred[FlowHandle]:
        """Change the action/flags of one flow; Deferred firing with its handle."""

    def delete(handle: FlowHandle) -> Deferred[None]:
        """Delete one flow; Deferred."""

    def read_stats(handle: FlowHandle) -> tuple[int, int]:
        """(bytes, packets) of a flow read from the shared mapping."""

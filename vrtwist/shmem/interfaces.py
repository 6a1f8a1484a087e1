"""Seams of the shared-memory tables (owner side, datapath side, agent side)."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IFlowTable(Interface):
    """The owner's flow table: applies FLOW_SET and reports ``vr_flow_table_data``."""

    path = Attribute("file the table lives in (reported in ftable_file_path)")
    size = Attribute("bytes of main + overflow table")

    def flow_set(req):  # type: ignore[no-untyped-def]
        """Apply a vr_flow_req (mapping of field names); return a FlowSetResult."""

    def table_data(op):  # type: ignore[no-untyped-def]
        """Fields of the vr_flow_table_data reply."""

    def entry(index):  # type: ignore[no-untyped-def]
        """Parsed FlowEntry at ``index``."""


class IFlowDatapath(Interface):
    """What the packet pipeline uses: lookup, HOLD on miss, statistics, eviction."""

    set_listeners = Attribute(
        "list of callables given the flow index after every successful FLOW_SET "
        "(the pipeline replays its held packets there)"
    )

    def lookup(key):  # type: ignore[no-untyped-def]
        """Index of the live flow with this hashed key, or -1."""

    def verdict(index):  # type: ignore[no-untyped-def]
        """FlowVerdict of a live entry: flags, action, VRFs, mirrors, RPF NH, ports, TTL."""

    def hold_on_miss(key, vrf, src_info):  # type: ignore[no-untyped-def]
        """Create a HOLD entry (ACTIVE|NEW_FLOW); return (index, gen_id)."""

    def take_new_flow(index):  # type: ignore[no-untyped-def]
        """Clear NEW_FLOW when the miss is trapped to the agent."""

    def add_stats(index, nbytes, npackets):  # type: ignore[no-untyped-def]
        """Add bytes/packets (with overflow carry) to a flow."""

    def stats(index):  # type: ignore[no-untyped-def]
        """(bytes, packets) of a flow."""

    def set_tcp_flags(index, tcp_flags):  # type: ignore[no-untyped-def]
        """OR TCP state bits into fe_tcp_flags."""

    def tcp_state(index):  # type: ignore[no-untyped-def]
        """(fe_tcp_flags, fe_tcp_seq) of a flow."""

    def set_tcp_state(index, tcp_flags, seq):  # type: ignore[no-untyped-def]
        """Write fe_tcp_flags and fe_tcp_seq."""

    def mark_evict(index):  # type: ignore[no-untyped-def]
        """Evict a closed flow (and its dead reverse)."""

    def src_info(index):  # type: ignore[no-untyped-def]
        """fe_src_info of a flow: the vif index or outer source its packets came from."""

    def set_ecmp_index(index, ecmp):  # type: ignore[no-untyped-def]
        """Write the ECMP member index the datapath chose (fe_ecmp_nh_index)."""


class IBridgeTable(Interface):
    """The owner's bridge table (AF_BRIDGE vr_route_req)."""

    path = Attribute("file the table lives in")
    size = Attribute("bytes of main + overflow table")

    def add(vrf, mac, nh_id, label, label_flags):  # type: ignore[no-untyped-def]
        """Add or update an entry; return (errno, index)."""

    def get(vrf, mac, index):  # type: ignore[no-untyped-def]
        """Entry by key or index, or None."""

    def delete(vrf, mac):  # type: ignore[no-untyped-def]
        """Delete an entry; return 0 or -ENOENT."""

    def dump(vrf, marker_mac):  # type: ignore[no-untyped-def]
        """Valid entries of ``vrf`` after the marker MAC."""


class IFlowManager(Interface):
    """Agent side: programs flows over ksync and reads them from the mapped table."""

    def create_pair(forward, reverse, action, **options):  # type: ignore[no-untyped-def]
        """Create a forward/reverse flow pair; Deferred firing with a FlowPair."""

    def update(handle, action, **options):  # type: ignore[no-untyped-def]
        """Change the action/flags of one flow; Deferred firing with its handle."""

    def delete(handle):  # type: ignore[no-untyped-def]
        """Delete one flow; Deferred."""

    def read_stats(handle):  # type: ignore[no-untyped-def]
        """(bytes, packets) of a flow read from the shared mapping."""

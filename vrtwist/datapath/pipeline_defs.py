"""Constants of the packet pipeline: drop reasons, trap codes, packet types and flags.

Values are those of the vRouter's ``include/vr_packet.h`` and ``include/vr_defs.h``.
"""

from __future__ import annotations

from vrtwist.datapath.droplog import DROP_REASONS

# VP_DROP_* reason ids
DROP_DISCARD = 0
DROP_PULL = 1
DROP_INVALID_IF = 2
DROP_INVALID_ARP = 3
DROP_TRAP_NO_IF = 4
DROP_NOWHERE_TO_GO = 5
DROP_FLOW_QUEUE_LIMIT_EXCEEDED = 6
DROP_FLOW_NO_MEMORY = 7
DROP_FLOW_INVALID_PROTOCOL = 8
DROP_FLOW_NAT_NO_RFLOW = 9
DROP_FLOW_ACTION_DROP = 10
DROP_FLOW_ACTION_INVALID = 11
DROP_FLOW_UNUSABLE = 12
DROP_FLOW_TABLE_FULL = 13
DROP_INTERFACE_TX_DISCARD = 14
DROP_INTERFACE_DROP = 15
DROP_DUPLICATED = 16
DROP_PUSH = 17
DROP_TTL_EXCEEDED = 18
DROP_INVALID_NH = 19
DROP_INVALID_LABEL = 20
DROP_INVALID_PROTOCOL = 21
DROP_INTERFACE_RX_DISCARD = 22
DROP_INVALID_MCAST_SOURCE = 23
DROP_MCAST_DF_BIT = 26
DROP_MISC = 30
DROP_INVALID_PACKET = 31
DROP_CLONED_ORIGINAL = 34
DROP_INVALID_VNID = 35
DROP_FRAGMENTS = 36
DROP_INVALID_SOURCE = 37
DROP_L2_NO_ROUTE = 38
DROP_FRAGMENT_QUEUE_FAIL = 39
DROP_NEW_FLOWS = 42
DROP_FLOW_EVICT = 43
DROP_PKT_LOOP = 47
DROP_NO_FRAG_ENTRY = 50
DROP_ICMP_ERROR = 51

_SPECIAL = {"FRAGMENTS": "frag_err", "NEW_FLOWS": "drop_new_flow"}


def _counter(name: str) -> str:
    short = name[len("VP_DROP_") :]
    return _SPECIAL.get(short, short.lower())


def _reason_ids() -> list[str]:
    """Reason names by id: the drop log's name map has no INVALID_HBS_PKT (49), the ids do."""
    names = list(DROP_REASONS[1:-1])
    if "VP_DROP_INVALID_HBS_PKT" not in names:
        names.insert(names.index("VP_DROP_NO_FRAG_ENTRY"), "VP_DROP_INVALID_HBS_PKT")
    return names


#: reason id -> the ``vr_drop_stats_req`` field name without its ``vds_`` prefix
DROP_COUNTER: tuple[str, ...] = tuple(_counter(n) for n in _reason_ids())

# AGENT_TRAP_* codes (agent_hdr.hdr_cmd)
TRAP_ARP = 2
TRAP_L2_PROTOCOLS = 3
TRAP_NEXTHOP = 4
TRAP_RESOLVE = 5
TRAP_FLOW_MISS = 6
TRAP_L3_PROTOCOLS = 7
TRAP_DIAG = 8
TRAP_HANDLE_DF = 11
TRAP_ZERO_TTL = 12
TRAP_ICMP_ERROR = 13
TRAP_FLOW_ACTION_HOLD = 15
TRAP_ROUTER_ALERT = 16
TRAP_MAC_LEARN = 17
TRAP_MAC_MOVE = 18
#: ``VR_AGENT_MIN_PACKET_LEN``: HANDLE_DF and ZERO_TTL copies are cut to this
AGENT_MIN_PACKET_LEN = 190

# vp_type
VP_TYPE_NULL = 0
VP_TYPE_ARP = 1
VP_TYPE_IP = 2
VP_TYPE_IP6 = 3
VP_TYPE_AGENT = 6
VP_TYPE_PBB = 7
VP_TYPE_UNKNOWN = 8

# vp_flags
VP_FLAG_FROM_DP = 0x1
VP_FLAG_TO_ME = 0x2
VP_FLAG_FLOW_GET = 0x4
VP_FLAG_FLOW_SET = 0x8
VP_FLAG_MULTICAST = 0x10
VP_FLAG_DIAG = 0x100
#: vrtwist's own: a fragment the assembler let go (not sent back there)
VP_FLAG_FRAG_RELEASED = 0x10000

VLAN_ID_INVALID = 0xFFFF
#: ``VR_MAX_FLOW_QUEUE_ENTRIES``: packets held per HOLD flow
FLOW_QUEUE_ENTRIES = 3
#: glibc ``random()``'s first value, which seeds ``vr_hashrnd`` in the DPDK vRouter
DEFAULT_HASH_SEED = 1804289383
MPLS_OVER_UDP_PORTS = (6635, 51234)
MPLS_OVER_UDP_DST_PORT = 6635
VXLAN_PORT = 4789
MIRROR_FLAG_DYNAMIC = 0x1
MAX_MIRROR = 255

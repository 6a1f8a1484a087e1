"""Byte layouts and constants of ``flow.shmem`` and ``bridge.shmem`` (docs/protocols/shmem.md).

All structs are packed, host order (x86-64 little-endian) except the flow key's
addresses and ports, which hold network-order bytes.  Offsets were checked
against the published tables; tests re-derive them with an independent reader.
"""

from __future__ import annotations

import struct

# -- vr_hentry_t (21 bytes) -------------------------------------------------
HENTRY = struct.Struct("<QIIIB")  # next ptr, index, bucket_index, next_index, flags
HENTRY_SIZE = 21
OFF_HENTRY_INDEX = 8
OFF_HENTRY_BUCKET = 12
OFF_HENTRY_NEXT_INDEX = 16
OFF_HENTRY_FLAGS = 20
HENTRY_FLAG_VALID = 0x1
HENTRY_FLAG_DELETE_MARKED = 0x2
HENTRY_FLAG_DELETE_PROCESSED = 0x4
HENTRY_FLAG_IN_FREE_LIST = 0x8
INVALID_INDEX = 0xFFFFFFFF
HENTRIES_PER_BUCKET = 4

# -- struct vr_flow_entry (256 bytes) ----------------------------------------
FLOW_ENTRY_SIZE = 256
FLOW_KEY_SIZE = 45
OFF_FE_KEY = 24
OFF_FE_KEYLEN = 68
OFF_FE_GEN_ID = 69
OFF_FE_TCP_FLAGS = 70
OFF_FE_RFLOW = 84
OFF_FE_FLAGS = 88
OFF_FE_ACTION = 92
OFF_FE_STATS = 104
OFF_FE_TYPE = 117
# whole entry, field order of ``struct vr_flow_entry`` (pointers kept as raw u64)
FLOW_ENTRY = struct.Struct("<QIIIBBh45sBHQIiHHHHHBBIIIHBbBBHIQ124x")
# 21..88: ttl, qos, key(45), gen, tcp_flags, hold_list, tcp_seq, rflow
FLOW_PART_A = struct.Struct("<Bh45sBHQIi")
OFF_FE_PART_A = 21
# 90..132: flags1, action, vrf, dvrf, mirror, sec_mirror, src_nh, bytes, packets,
# bytes_oflow, packets_oflow, ecmp, drop_reason, type, udp_src_port, src_info, mme
FLOW_PART_B = struct.Struct("<HHHHBBIIIHBbBBHIQ")
OFF_FE_PART_B = 90
# 21..132 in one go (flags at 88 included): used to fill a new entry with ACTIVE clear
FLOW_BODY = struct.Struct("<Bh45sBHQIiHHHHHBBIIIHBbBBHIQ")
OFF_FE_BODY = 21
FLOW_STATS = struct.Struct("<IIHB")  # bytes, packets, bytes_oflow, packets_oflow
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
I32 = struct.Struct("<i")
FLAGS_GEN = struct.Struct("<B")

# key: family, proto, unused, sport, dport (network bytes as LE host int), nh_id
FLOW_KEY4 = struct.Struct("<BBHHHI4s4s")  # 20 bytes hashed
FLOW_KEY6 = struct.Struct("<BBHHHI16s16s")  # 44 bytes hashed
FLOW_KEY4_LEN = 20
FLOW_KEY6_LEN = 44

# -- struct vr_bridge_entry (64 bytes) ---------------------------------------
BRIDGE_ENTRY_SIZE = 64
BRIDGE_KEY_SIZE = 8
OFF_BE_KEY = 21
OFF_BE_FLAGS = 53
BRIDGE_ENTRY = struct.Struct("<QIIIB6sHQQIiH9x")
# 21..55 after the header: mac, vrf, nh ptr, packets, label, nh_id, flags
BRIDGE_BODY = struct.Struct("<6sHQQIiH")
OFF_BE_BODY = 21
OFF_BE_PACKETS = 37
U64 = struct.Struct("<Q")

# -- constants (include/vr_flow.h, vr_defs.h) ----------------------------------
AF_INET = 2
AF_INET6 = 10
AF_BRIDGE = 7
VP_TYPE_NULL = 0
VP_TYPE_IP = 2
VP_TYPE_IP6 = 3

ACTION_DROP = 0
ACTION_HOLD = 1
ACTION_FORWARD = 2
ACTION_NAT = 3
ACTIONS = (ACTION_DROP, ACTION_HOLD, ACTION_FORWARD, ACTION_NAT)

FLAG_ACTIVE = 0x0001
FLAG_SNAT = 0x0002
FLAG_SPAT = 0x0004
FLAG_DNAT = 0x0008
FLAG_DPAT = 0x0010
FLAG_TRAP_ECMP = 0x0020
FLAG_DELETE_MARKED = 0x0040
FLAG_BGP_SERVICE = 0x0080
FLAG_MODIFIED = 0x0100
FLAG_NEW_FLOW = 0x0200
FLAG_EVICT_CANDIDATE = 0x0400
FLAG_EVICTED = 0x0800
RFLOW_VALID = 0x1000
FLAG_MIRROR = 0x2000
FLAG_VRFT = 0x4000
FLAG_LINK_LOCAL = 0x8000
DP_FLAGS = FLAG_EVICT_CANDIDATE | FLAG_EVICTED | FLAG_NEW_FLOW | FLAG_MODIFIED

FLAG1_HBS_LEFT = 0x1000
FLAG1_HBS_RIGHT = 0x2000

TCP_FIN = 0x0001
TCP_HALF_CLOSE = 0x0002
TCP_FIN_R = 0x0004
TCP_SYN = 0x0008
TCP_SYN_R = 0x0010
TCP_ESTABLISHED = 0x0020
TCP_ESTABLISHED_R = 0x0040
TCP_RST = 0x0080
TCP_DEAD = 0x8000

RESP_FLAG_DELETED = 0x1
EXT_FLAG_FORCE_EVICT = 0x1
EXT_FLAG_MOCK_SRC_UDP = 0x2
MOCK_SRC_UDP_PORT = 0x12B5
MUDP_PORT_RANGE_START = 49152
MUDP_PORT_RANGE_END = 65535

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132

BE_VALID = 0x01
BE_LABEL_VALID = 0x02
BE_FLOOD_DHCP = 0x04
BE_MAC_MOVED = 0x08
BE_L2_CONTROL_DATA = 0x10
BE_MAC_NEW = 0x20
BE_EVPN_CONTROL_PROCESSING = 0x40

DEFAULT_FLOW_ENTRIES = 524288
DEFAULT_BRIDGE_ENTRIES = 262144
FLOW_MAX_CPUS = 128
DEFAULT_MAX_VRFS = 4096
DEFAULT_MAX_MIRRORS = 255

# Drop reasons (VR_FLOW_DR_*) and the short names the flow utility prints.
DROP_REASONS: dict[int, str] = {
    0x00: "Unknown",
    0x01: "IntfErr",
    0x02: "Ipv4Dis",
    0x03: "VrfErr",
    0x04: "NoSrcRt",
    0x05: "NoDstRt",
    0x06: "Audit",
    0x07: "VrfChange",
    0x08: "NoRevFlow",
    0x09: "RevFlowChng",
    0x0A: "NatChng",
    0x0B: "FlowLim",
    0x0C: "LinkSrcNatErr",
    0x0D: "VrouterInstallFail",
    0x0E: "InvalidL2Flow",
    0x0F: "TSNFlow",
    0x10: "NoMirrorentry",
    0x11: "SameFlowRflowKey",
    0x12: "NoFipPortMap",
    0x13: "NoSrcRtRpfNh",
    0x14: "FatFlowNatConflict",
    0x15: "Policy",
    0x16: "OutPolicy",
    0x17: "SG",
    0x18: "OutSG",
    0x19: "RevSG",
    0x1A: "RevOutSG",
    0x1B: "FwPolicy",
    0x1C: "OutFwPolicy",
    0x1D: "RevFwPolicy",
    0x1E: "RevOutFwPolicy",
    0x1F: "FWAASPolicy",
    0x20: "OutFWAASPolicy",
    0x21: "RevFWAASPolicy",
    0x22: "RevOutFWAASPolicy",
}


def default_overflow(entries: int) -> int:
    """The vRouter's overflow sizing rule: ``((entries / 5) + 1023) & ~1023``."""
    return ((entries // 5) + 1023) & ~1023


def round_entries(entries: int) -> int:
    """Main entry count rounded up to whole buckets of four (``__vr_htable_create``)."""
    return ((entries + HENTRIES_PER_BUCKET - 1) // HENTRIES_PER_BUCKET) * HENTRIES_PER_BUCKET

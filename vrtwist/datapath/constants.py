"""Numeric constants of the vRouter datapath messages (spec ksync-sandesh.md section 2.7).

They are the values the real vRouter headers define; the tables, the dispatcher and the
utilities all read them from here so that no magic number is repeated.
"""

from __future__ import annotations

import socket
from typing import Final

# sandesh_op
OP_ADD: Final = 0
OP_GET: Final = 1
OP_DEL: Final = 2
OP_DUMP: Final = 3
OP_RESPONSE: Final = 4
OP_RESET: Final = 5

# flow_op
FLOW_OP_FLOW_SET: Final = 0
FLOW_OP_FLOW_LIST: Final = 1
FLOW_OP_FLOW_TABLE_GET: Final = 2

# address families carried in *_family fields
AF_UNSPEC: Final = 0
AF_INET: Final = 2
AF_BRIDGE: Final = 7
AF_INET6: Final = int(socket.AF_INET6)  # host value, 10 on Linux (spec 2.7)

# bit 30 of vr_response.resp_code on a dump page that is not the last one
DUMP_INCOMPLETE: Final = 0x40000000
# bytes of Sandesh in one dump page (4096 - 128)
DUMP_PAGE_SIZE: Final = 3968

# VIF_TYPE_*
VIF_TYPE_HOST: Final = 0
VIF_TYPE_AGENT: Final = 1
VIF_TYPE_PHYSICAL: Final = 2
VIF_TYPE_VIRTUAL: Final = 3
VIF_TYPE_XEN_LL_HOST: Final = 4
VIF_TYPE_GATEWAY: Final = 5
VIF_TYPE_VIRTUAL_VLAN: Final = 6
VIF_TYPE_STATS: Final = 7
VIF_TYPE_VLAN: Final = 8
VIF_TYPE_MONITORING: Final = 9
VIF_TYPE_MAX: Final = 10

VIF_TYPE_NAMES: Final = {
    VIF_TYPE_HOST: "Host",
    VIF_TYPE_AGENT: "Agent",
    VIF_TYPE_PHYSICAL: "Physical",
    VIF_TYPE_VIRTUAL: "Virtual",
    VIF_TYPE_XEN_LL_HOST: "XenLL",
    VIF_TYPE_GATEWAY: "Gateway",
    VIF_TYPE_VIRTUAL_VLAN: "Virtual(Vlan)",
    VIF_TYPE_STATS: "Stats",
    VIF_TYPE_VLAN: "Vlan",
    VIF_TYPE_MONITORING: "Monitoring",
}

# VIF_TRANSPORT_*
VIF_TRANSPORT_VIRTUAL: Final = 0
VIF_TRANSPORT_ETH: Final = 1
VIF_TRANSPORT_PMD: Final = 2
VIF_TRANSPORT_SOCKET: Final = 3
VIF_TRANSPORT_NAMES: Final = {0: "Virtual", 1: "Ethernet", 2: "PMD", 3: "Socket"}

# VIF_FLAG_*
VIF_FLAG_POLICY_ENABLED: Final = 0x1
VIF_FLAG_XCONNECT: Final = 0x2
VIF_FLAG_SERVICE_IF: Final = 0x4
VIF_FLAG_MIRROR_RX: Final = 0x8
VIF_FLAG_MIRROR_TX: Final = 0x10
VIF_FLAG_TX_CSUM_OFFLOAD: Final = 0x20
VIF_FLAG_L3_ENABLED: Final = 0x40
VIF_FLAG_L2_ENABLED: Final = 0x80
VIF_FLAG_DHCP_ENABLED: Final = 0x100
VIF_FLAG_VHOST_PHYS: Final = 0x200
VIF_FLAG_PROMISCOUS: Final = 0x400
VIF_FLAG_NATIVE_VLAN_TAG: Final = 0x800
VIF_FLAG_NO_ARP_PROXY: Final = 0x1000
VIF_FLAG_PMD: Final = 0x2000
VIF_FLAG_FILTERING_OFFLOAD: Final = 0x4000
VIF_FLAG_MONITORED: Final = 0x8000
VIF_FLAG_UNKNOWN_UC_FLOOD: Final = 0x10000
VIF_FLAG_VLAN_OFFLOAD: Final = 0x20000
VIF_FLAG_DROP_NEW_FLOWS: Final = 0x40000
VIF_FLAG_MAC_LEARN: Final = 0x80000
VIF_FLAG_MAC_PROXY: Final = 0x100000
VIF_FLAG_ETREE_ROOT: Final = 0x200000
VIF_FLAG_GRO_NEEDED: Final = 0x400000
VIF_FLAG_MRG_RXBUF: Final = 0x800000
VIF_FLAG_MIRROR_NOTAG: Final = 0x1000000
VIF_FLAG_IGMP_ENABLED: Final = 0x2000000
VIF_FLAG_MOCK_DEVICE: Final = 0x4000000
VIF_FLAG_HBS_LEFT: Final = 0x8000000
VIF_FLAG_HBS_RIGHT: Final = 0x10000000
VIF_FLAG_FAB_GW_MODE: Final = 0x20000000
# on GET: also return the vif's drop statistics
VIF_FLAG_GET_DROP_STATS: Final = 0x01

# NH_* types
NH_DEAD: Final = 0
NH_RCV: Final = 1
NH_ENCAP: Final = 2
NH_TUNNEL: Final = 3
NH_RESOLVE: Final = 4
NH_DISCARD: Final = 5
NH_COMPOSITE: Final = 6
NH_VRF_TRANSLATE: Final = 7
NH_L2_RCV: Final = 8
NH_MAX: Final = 9

NH_TYPE_NAMES: Final = {
    NH_DEAD: "Dead",
    NH_RCV: "Receive",
    NH_ENCAP: "Encap",
    NH_TUNNEL: "Tunnel",
    NH_RESOLVE: "Resolve",
    NH_DISCARD: "Drop",
    NH_COMPOSITE: "Composite",
    NH_VRF_TRANSLATE: "Vrf_Translate",
    NH_L2_RCV: "L2 Receive",
}

# NH_FLAG_*
NH_FLAG_VALID: Final = 0x1
NH_FLAG_POLICY_ENABLED: Final = 0x2
NH_FLAG_TUNNEL_GRE: Final = 0x8
NH_FLAG_TUNNEL_UDP: Final = 0x10
NH_FLAG_MCAST: Final = 0x20
NH_FLAG_TUNNEL_UDP_MPLS: Final = 0x40
NH_FLAG_TUNNEL_VXLAN: Final = 0x80
NH_FLAG_RELAXED_POLICY: Final = 0x100
NH_FLAG_COMPOSITE_FABRIC: Final = 0x200
NH_FLAG_COMPOSITE_ECMP: Final = 0x400
NH_FLAG_COMPOSITE_LU_ECMP: Final = 0x800
NH_FLAG_COMPOSITE_EVPN: Final = 0x1000
NH_FLAG_COMPOSITE_ENCAP: Final = 0x2000
NH_FLAG_COMPOSITE_TOR: Final = 0x4000
NH_FLAG_ROUTE_LOOKUP: Final = 0x8000
NH_FLAG_UNKNOWN_UC_FLOOD: Final = 0x10000
NH_FLAG_TUNNEL_SIP_COPY: Final = 0x20000
NH_FLAG_FLOW_LOOKUP: Final = 0x40000
NH_FLAG_TUNNEL_PBB: Final = 0x80000
NH_FLAG_MAC_LEARN: Final = 0x100000
NH_FLAG_ETREE_ROOT: Final = 0x200000
NH_FLAG_INDIRECT: Final = 0x400000
NH_FLAG_L2_CONTROL_DATA: Final = 0x800000
NH_FLAG_CRYPT_TRAFFIC: Final = 0x1000000
NH_FLAG_L3_VXLAN: Final = 0x2000000
NH_FLAG_TUNNEL_MPLS_O_MPLS: Final = 0x4000000
NH_FLAG_VALIDATE_MCAST_SRC: Final = 0x8000000

# the discard next hop every vRouter creates at start-up
NH_DISCARD_ID: Final = 0

# route label flags (inet)
VR_RT_LABEL_VALID_FLAG: Final = 0x1
VR_RT_ARP_PROXY_FLAG: Final = 0x2
VR_RT_ARP_TRAP_FLAG: Final = 0x4
VR_RT_ARP_FLOOD_FLAG: Final = 0x8
# bridge entry flags
VR_BE_VALID_FLAG: Final = 0x01
VR_BE_LABEL_VALID_FLAG: Final = 0x02
VR_BE_FLOOD_DHCP_FLAG: Final = 0x04
VR_BE_MAC_MOVED_FLAG: Final = 0x08
VR_BE_L2_CONTROL_DATA_FLAG: Final = 0x10
VR_BE_MAC_NEW_FLAG: Final = 0x20
VR_BE_EVPN_CONTROL_PROCESSING_FLAG: Final = 0x40
VR_BE_INVALID_INDEX: Final = -1

# label value stored when no label is valid (24 bits of ones)
VR_INVALID_LABEL: Final = 0xFFFFFF

# mirror flags
VR_MIRROR_FLAG_DYNAMIC: Final = 0x1

# default table sizes (spec 2.7)
VR_DEF_INTERFACES: Final = 4352
VR_DEF_NEXTHOPS: Final = 524288
VR_DEF_LABELS: Final = 5120
VR_DEF_VRFS: Final = 4096
VR_DEF_MIRROR_ENTRIES: Final = 255
VR_DEF_FLOW_ENTRIES: Final = 524288
VR_DEF_BRIDGE_ENTRIES: Final = 262144
VR_VXLAN_MAX_VNID: Final = 1 << 24
VLAN_ID_MAX: Final = 4096


def default_overflow(entries: int) -> int:
    """Overflow entries the vRouter sizes for a main table: ((n / 5) + 1023) & ~1023."""
    return ((entries // 5) + 1023) & ~1023

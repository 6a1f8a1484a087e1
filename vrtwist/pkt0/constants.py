"""Command and trap codes of ``agent_hdr.hdr_cmd`` and its parameters (``vr_defs.h``).

The one home of the pkt0 wire constants: the datapath's trap sites, the agent's
dispatch and the utilities all import them from here.
"""

from __future__ import annotations

from typing import Final

#: agent -> datapath: transmit the inner frame on ``hdr_ifindex`` as it is
AGENT_CMD_SWITCH: Final = 0
#: agent -> datapath: inject the inner frame as if received on ``hdr_ifindex``, route in ``hdr_vrf``
AGENT_CMD_ROUTE: Final = 1

AGENT_TRAP_ARP: Final = 2
AGENT_TRAP_L2_PROTOCOLS: Final = 3
AGENT_TRAP_NEXTHOP: Final = 4
AGENT_TRAP_RESOLVE: Final = 5
AGENT_TRAP_FLOW_MISS: Final = 6
AGENT_TRAP_L3_PROTOCOLS: Final = 7
AGENT_TRAP_DIAG: Final = 8
AGENT_TRAP_ECMP_RESOLVE: Final = 9
AGENT_TRAP_SOURCE_MISMATCH: Final = 10
AGENT_TRAP_HANDLE_DF: Final = 11
AGENT_TRAP_ZERO_TTL: Final = 12
AGENT_TRAP_ICMP_ERROR: Final = 13
AGENT_TRAP_TOR_CONTROL_PKT: Final = 14
AGENT_TRAP_FLOW_ACTION_HOLD: Final = 15
AGENT_TRAP_ROUTER_ALERT: Final = 16
AGENT_TRAP_MAC_LEARN: Final = 17
AGENT_TRAP_MAC_MOVE: Final = 18
#: Tungsten Fabric's later additions
AGENT_TRAP_MAC_IP_LEARNING: Final = 19
AGENT_TRAP_BFD: Final = 20
#: codes at or above this are invalid (the agent counts and drops them)
MAX_AGENT_HDR_COMMANDS: Final = 21

#: ROUTE command: ``cmd_param`` 1 marks a control packet; ``cmd_param_1`` 1 a diag packet
CMD_PARAM_PACKET_CTRL: Final = 1
CMD_PARAM_1_DIAG: Final = 1

#: the copy of a trapped packet is cut to this many bytes for the traps below, when the
#: packet is a GSO segment or (HANDLE_DF, ZERO_TTL) longer than it
VR_AGENT_MIN_PACKET_LEN: Final = 190
TRUNCATABLE_TRAPS: Final = frozenset(
    {
        AGENT_TRAP_NEXTHOP,
        AGENT_TRAP_RESOLVE,
        AGENT_TRAP_FLOW_MISS,
        AGENT_TRAP_FLOW_ACTION_HOLD,
        AGENT_TRAP_ECMP_RESOLVE,
        AGENT_TRAP_HANDLE_DF,
        AGENT_TRAP_ZERO_TTL,
        AGENT_TRAP_MAC_LEARN,
        AGENT_TRAP_MAC_MOVE,
    }
)

#: names for logs, counters and the utilities
TRAP_NAMES: Final = {
    value: name.removeprefix("AGENT_TRAP_").removeprefix("AGENT_CMD_").lower()
    for name, value in dict(globals()).items()
    if name.startswith(("AGENT_TRAP_", "AGENT_CMD_"))
}

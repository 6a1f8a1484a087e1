"""The pkt0 packet channel between the datapath and the agent.

``vrtwist.pkt0.codec`` is the sans-IO frame codec (outer Ethernet, ``agent_hdr``, inner
frame) and ``vrtwist.pkt0.constants`` the command and trap codes.
"""

from vrtwist.pkt0.codec import (
    AGENT_HDR_LEN,
    HEADER_LEN,
    AgentHeader,
    Pkt0Error,
    decode,
    encode_command,
    encode_trap,
    trap_header,
)

__all__ = [
    "AGENT_HDR_LEN",
    "HEADER_LEN",
    "AgentHeader",
    "Pkt0Error",
    "decode",
    "encode_command",
    "encode_trap",
    "trap_header",
]

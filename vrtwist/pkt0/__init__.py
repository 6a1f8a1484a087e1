"""The pkt0 packet channel between the datapath and the agent.

``vrtwist.pkt0.codec`` is the sans-IO frame codec (outer Ethernet, ``agent_hdr``, inner
frame) and ``vrtwist.pkt0.constants`` the command and trap codes; ``transport`` carries
frames over a unix datagram socket and ``endpoints`` are the two ends. The codec names load
no Twisted.
"""

from __future__ import annotations

from vrtwist._exports import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads it so)

if TYPE_CHECKING:
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
    from vrtwist.pkt0.endpoints import (
        AgentEndpoint,
        DatapathEndpoint,
        EndpointCounters,
        ITrapHandler,
        TrapLimiter,
    )
    from vrtwist.pkt0.interfaces import IPacketTrap
    from vrtwist.pkt0.transport import (
        IPkt0Receiver,
        IPkt0Transport,
        Pkt0Counters,
        UnixDatagramTransport,
        bind_datagram,
    )

__all__ = [
    "AGENT_HDR_LEN",
    "HEADER_LEN",
    "AgentEndpoint",
    "AgentHeader",
    "DatapathEndpoint",
    "EndpointCounters",
    "IPacketTrap",
    "IPkt0Receiver",
    "IPkt0Transport",
    "ITrapHandler",
    "Pkt0Counters",
    "Pkt0Error",
    "TrapLimiter",
    "UnixDatagramTransport",
    "bind_datagram",
    "decode",
    "encode_command",
    "encode_trap",
    "trap_header",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "codec": ("AGENT_HDR_LEN", "HEADER_LEN", "AgentHeader", "Pkt0Error", "decode", "encode_command", "encode_trap", "trap_header"),
    "interfaces": ("IPacketTrap",),
    "transport": ("IPkt0Receiver", "IPkt0Transport", "Pkt0Counters", "UnixDatagramTransport", "bind_datagram"),
    "endpoints": ("AgentEndpoint", "DatapathEndpoint", "EndpointCounters", "ITrapHandler", "TrapLimiter"),
})

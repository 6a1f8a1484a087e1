"""Sans-IO header codecs for the packet pipeline (no Twisted here).

Every parser takes ``bytes``/``bytearray``/``memoryview`` and an offset, checks every
length it reads, and raises :class:`PacketError` (one error class) on anything short or
malformed. Builders return ``bytes``. Offsets, not copies, are passed around so the
forwarding path can parse a frame without slicing it.
"""

from vrtwist.packet.checksum import checksum, checksum_update16, ipv4_ttl_decrement
from vrtwist.packet.headers import (
    ARP,
    GRE,
    ICMP,
    MPLS,
    TCP,
    UDP,
    VXLAN,
    Ethernet,
    IPv4,
    IPv6,
    PacketError,
)

__all__ = [
    "ARP",
    "GRE",
    "ICMP",
    "MPLS",
    "TCP",
    "UDP",
    "VXLAN",
    "Ethernet",
    "IPv4",
    "IPv6",
    "PacketError",
    "checksum",
    "checksum_update16",
    "ipv4_ttl_decrement",
]

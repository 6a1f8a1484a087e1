"""Router advertisements: the agent's answer to a VM's router solicitation.

The datapath traps a VM's router solicitation (ICMPv6 133 to ff02::/16) to the agent.
For a port with an IPv6 subnet the agent answers, as the real agent's ICMPv6 handler
does (``tungstenfabric/tf-controller:src/vnsw/agent/services/icmpv6_handler.cc``), with
a router advertisement to the soliciting address and MAC, from the agent's link-local
address ``fe80::5e00:100`` and the VRRP MAC, hop limit 255: current hop limit 64, the
"managed" and "other configuration" flags (addresses and DNS come from DHCPv6), a
router lifetime of 9000 s when the subnet has a gateway (0 otherwise: not a default
router), the VRRP MAC as source link-layer option and the subnet as an on-link prefix
(not autonomous: no SLAAC) with infinite lifetimes. Sans-IO: frame in, frame out.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

from vrtwist.agent.packet.arp import VRRP_MAC
from vrtwist.packet.headers import ETH_P_IPV6, Ethernet, IPv6, PacketError, l4_checksum

__all__ = ["RA_SOURCE", "ROUTER_LIFETIME", "is_router_solicitation", "router_advertisement"]

IPPROTO_ICMPV6: Final = 58
ND_ROUTER_SOLICIT: Final = 133
ND_ROUTER_ADVERT: Final = 134
#: the agent's own link-local address (the real agent's ``PKT0_LINKLOCAL_ADDRESS``)
RA_SOURCE: Final = ipaddress.IPv6Address("fe80::5e00:100")
#: seconds a VM keeps the agent as its default router (a subnet with a gateway)
ROUTER_LIFETIME: Final = 9000
_FLAG_MANAGED, _FLAG_OTHER = 0x80, 0x40
_PI_ONLINK: Final = 0x80
_INFINITE: Final = 0xFFFFFFFF


def is_router_solicitation(frame: bytes | memoryview, l3: int) -> bool:
    """An ICMPv6 router solicitation right after the IPv6 header at ``l3``."""
    return (len(frame) >= l3 + 41 and frame[l3 + 6] == IPPROTO_ICMPV6
            and frame[l3 + 40] == ND_ROUTER_SOLICIT)


def router_advertisement(frame: bytes | memoryview, ip6: str, plen: int, gateway: bool,
                         vlan: int = -1) -> bytes:
    """The advertisement answering the solicitation ``frame`` from a port whose address
    is ``ip6`` in a /``plen`` subnet (``gateway``: the subnet has one). Raises
    PacketError for a frame that is not a well-formed solicitation."""
    eth = Ethernet.parse(frame)
    if eth.ethertype != ETH_P_IPV6:
        raise PacketError("not IPv6")
    req = IPv6.parse(frame, eth.length)
    if not is_router_solicitation(frame, eth.length) or req.hop_limit != 255:
        raise PacketError("not a router solicitation (hop limit 255)")
    prefix = ipaddress.IPv6Network(f"{ip6}/{plen}", strict=False)
    body = struct.pack("!BBHBBHII", ND_ROUTER_ADVERT, 0, 0, 64, _FLAG_MANAGED | _FLAG_OTHER,
                       ROUTER_LIFETIME if gateway else 0, 0, 0)
    body += b"\x01\x01" + VRRP_MAC  # source link-layer address
    body += struct.pack("!BBBBIII", 3, 4, prefix.prefixlen, _PI_ONLINK, _INFINITE,
                        _INFINITE, 0) + prefix.network_address.packed
    # a solicitation from the unspecified address is answered to all nodes
    dst = req.src if any(req.src) else ipaddress.IPv6Address("ff02::1").packed
    head = IPv6(RA_SOURCE.packed, dst, IPPROTO_ICMPV6, len(body), 255)
    csum = l4_checksum(head, body)
    body = body[:2] + csum.to_bytes(2, "big") + body[4:]
    dst_mac = eth.src if any(req.src) else b"\x33\x33\x00\x00\x00\x01"
    vlans = (vlan & 0xFFF,) if vlan >= 0 else ()
    return Ethernet(dst_mac, VRRP_MAC, ETH_P_IPV6, vlans).pack() + head.pack() + body

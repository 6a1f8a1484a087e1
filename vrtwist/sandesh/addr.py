"""Address and port helpers for the "network-order bytes held in a host integer" rule.

vRouter integer fields that carry IPv4 addresses, L4 ports or IPv6 halves hold the
address as it sits in memory in network order, read as an x86 (little-endian) integer
(docs/protocols/ksync.md): IPv4 1.2.3.4 in ``vifr_ip`` is the integer 0x04030201 and travels as
``04 03 02 01``. These helpers let callers work with address strings and plain port
numbers instead. Byte-list fields (``rtr_prefix``, ``vifr_mac``, ``nhr_tun_sip6`` ...)
are plain network-order bytes.

The convention is fixed to little-endian whatever the host, because the peers it
interoperates with (the Agent, the utilities) are x86 builds.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from vrtwist.sandesh.constants import AF_INET, AF_INET6

__all__ = [
    "int_to_ipv4",
    "int_to_port",
    "ip_to_list",
    "ip_to_u64_pair",
    "ipv4_to_int",
    "ipv6_to_u64_pair",
    "list_to_ip",
    "list_to_mac",
    "mac_to_list",
    "port_to_int",
    "prefix_to_route",
    "route_to_prefix",
    "u64_pair_to_ip",
    "u64_pair_to_ipv6",
]


def ipv4_to_int(addr: str) -> int:
    """'1.2.3.4' -> 0x04030201, the value for u32 fields such as ``vifr_ip``."""
    return int.from_bytes(socket.inet_aton(_strict_v4(addr)), "little")


def int_to_ipv4(value: int) -> str:
    """Inverse of :func:`ipv4_to_int`; accepts the i32 (negative) form too."""
    return socket.inet_ntoa((value & 0xFFFFFFFF).to_bytes(4, "little"))


def _strict_v4(addr: str) -> str:
    # inet_aton accepts '1' or '1.2'; the vRouter tools use inet_pton, which does not.
    return str(ipaddress.IPv4Address(addr))


def ipv6_to_u64_pair(addr: str) -> tuple[int, int]:
    """IPv6 string -> (upper, lower) u64 values as in ``vifr_ip6_u``/``vifr_ip6_l``."""
    b = ipaddress.IPv6Address(addr).packed
    return int.from_bytes(b[:8], "little"), int.from_bytes(b[8:], "little")


def u64_pair_to_ipv6(upper: int, lower: int) -> str:
    """Inverse of :func:`ipv6_to_u64_pair`."""
    b = (upper & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little") + (lower & 0xFFFFFFFFFFFFFFFF).to_bytes(
        8, "little"
    )
    return str(ipaddress.IPv6Address(b))


def ip_to_u64_pair(addr: str) -> tuple[int, int]:
    """Flow-key form (``fr_flow_sip_u``/``_l``): IPv4 is (0, htonl(addr)), IPv6 as above."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return 0, int.from_bytes(ip.packed, "little")
    return ipv6_to_u64_pair(addr)


def u64_pair_to_ip(upper: int, lower: int, family: int) -> str:
    """Inverse of :func:`ip_to_u64_pair` for ``family`` AF_INET or AF_INET6."""
    if family == AF_INET:
        return int_to_ipv4(lower)
    if family == AF_INET6:
        return u64_pair_to_ipv6(upper, lower)
    raise ValueError("unknown address family %d" % family)


def ip_to_list(addr: str) -> list[int]:
    """Address string -> network-order byte list (4 or 16 items), as in ``rtr_prefix``."""
    return list(ipaddress.ip_address(addr).packed)


def list_to_ip(data: Sequence[int] | bytes) -> str:
    """Byte list of 4 or 16 items -> address string."""
    b = bytes(x & 0xFF for x in data)
    if len(b) not in (4, 16):
        raise ValueError("an address has 4 or 16 bytes, not %d" % len(b))
    return str(ipaddress.ip_address(b))


def mac_to_list(mac: str) -> list[int]:
    """'00:00:5e:00:01:00' (or with '-') -> [0, 0, 0x5e, 0, 1, 0]."""
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError("not a MAC address: %r" % mac)
    try:
        return [int(p, 16) for p in parts]
    except ValueError:
        raise ValueError("not a MAC address: %r" % mac) from None


def list_to_mac(data: Sequence[int] | bytes) -> str:
    """Byte list -> 'xx:xx:xx:xx:xx:xx' (lower-case, as the vRouter tools print)."""
    return ":".join("%02x" % (x & 0xFF) for x in data)


def port_to_int(port: int) -> int:
    """Port number -> htons(port) as an unsigned host integer (``fr_flow_sport`` ...)."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError("port out of range: %d" % port)
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def int_to_port(value: int) -> int:
    """Inverse of :func:`port_to_int`; accepts the i16 (negative) form of ``nhr_tun_sport``."""
    return int.from_bytes((value & 0xFFFF).to_bytes(2, "little"), "big")


def prefix_to_route(prefix: str) -> tuple[int, list[int], int]:
    """'10.1.1.0/24' -> (AF_INET, [10, 1, 1, 0], 24) for rtr_family/rtr_prefix/rtr_prefix_len."""
    net = ipaddress.ip_network(prefix, strict=False)
    family = AF_INET if net.version == 4 else AF_INET6
    return family, list(net.network_address.packed), net.prefixlen


def route_to_prefix(prefix: Sequence[int] | bytes, plen: int) -> str:
    """Inverse of :func:`prefix_to_route`: '10.1.1.0/24'."""
    return "%s/%d" % (list_to_ip(prefix), plen)

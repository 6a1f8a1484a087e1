"""ICMP the agent answers or originates: echo replies for the gateway and service
addresses, "fragmentation needed" on HANDLE_DF and "time exceeded" on ZERO_TTL.

The datapath never builds ICMP itself; it traps the packet and the agent answers with a
SWITCH back to the VM, as the real agent's ICMP, ICMP-error and diag handlers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from vrtwist.agent.packet.arp import VRRP_MAC
from vrtwist.packet.checksum import checksum
from vrtwist.packet.headers import ETH_P_IP, IPPROTO_ICMP, Ethernet, IPv4, PacketError

__all__ = ["IcmpCounters", "echo_reply", "frag_needed", "time_exceeded"]

ICMP_ECHO_REPLY: Final = 0
ICMP_UNREACH: Final = 3
ICMP_FRAG_NEEDED: Final = 4
ICMP_ECHO: Final = 8
ICMP_TIME_EXCEEDED: Final = 11
#: the part of the offending packet an error quotes (the real agent's 128 bytes)
QUOTE: Final = 128


@dataclass
class IcmpCounters:
    echo_replies: int = 0
    errors_sent: int = 0
    dropped: int = 0


def _l3(frame: bytes | memoryview, whole: bool = True) -> tuple[Ethernet, IPv4, int]:
    """Ethernet and IPv4 headers; ``whole``: the packet must be all there (an error
    quotes only its start, and the datapath traps HANDLE_DF/ZERO_TTL packets cut)."""
    eth = Ethernet.parse(frame)
    if eth.ethertype != ETH_P_IP:
        raise PacketError("not IPv4")
    ip = IPv4.parse(frame, eth.length)
    if whole and len(frame) < eth.length + ip.total_length:
        raise PacketError("IPv4 packet shorter than its total length")
    return eth, ip, eth.length


def echo_reply(
    frame: bytes | memoryview, vlan: int = -1, vm_mac: bytes | None = None
) -> bytes | None:
    """The reply to an echo request, or None when it is not a valid echo request.

    MACs and addresses swapped, TTL 64, IP id 0, no DF; identifier, sequence and data
    copied; type 0, code kept, checksum recomputed. A request whose ICMP checksum does not
    verify is dropped, as the real agent drops it. A request routed to the agent's next
    hop carries that next hop's rewrite, not the VM's addresses: ``vm_mac`` (the port's
    MAC) is then the destination, and the VRRP MAC the source.
    """
    try:
        eth, ip, off = _l3(frame)
    except PacketError:
        return None
    if ip.proto != IPPROTO_ICMP or ip.is_fragment:
        return None
    start = off + ip.header_length
    end = off + ip.total_length
    icmp = bytes(frame[start:end])
    if len(icmp) < 8 or icmp[0] != ICMP_ECHO or checksum(icmp) != 0:
        return None
    body = bytearray(icmp)
    body[0] = ICMP_ECHO_REPLY
    body[2:4] = b"\x00\x00"
    body[2:4] = checksum(body).to_bytes(2, "big")
    hdr = IPv4(ip.dst, ip.src, IPPROTO_ICMP, 20 + len(body), ident=0, ttl=64).pack()
    vlans = (vlan & 0xFFF,) if vlan >= 0 else ()
    if vm_mac is not None:
        return Ethernet(vm_mac, VRRP_MAC, ETH_P_IP, vlans).pack() + hdr + bytes(body)
    return Ethernet(eth.src, eth.dst, ETH_P_IP, vlans).pack() + hdr + bytes(body)


def _error(
    frame: bytes | memoryview, src_mac: bytes, src_ip: bytes, kind: int, code: int, rest: int,
    vlan: int = -1,
) -> bytes | None:
    try:
        eth, ip, off = _l3(frame, whole=False)
    except PacketError:
        return None
    if ip.proto == IPPROTO_ICMP:
        # never an error about an error (RFC 1122 3.2.2)
        t = frame[off + ip.header_length] if len(frame) > off + ip.header_length else ICMP_ECHO
        if t not in (ICMP_ECHO, ICMP_ECHO_REPLY):
            return None
    quoted = bytes(frame[off : off + min(ip.total_length, QUOTE)])
    body = bytearray(bytes((kind, code, 0, 0)) + rest.to_bytes(4, "big") + quoted)
    body[2:4] = checksum(body).to_bytes(2, "big")
    hdr = IPv4(src_ip, ip.src, IPPROTO_ICMP, 20 + len(body), ident=0, ttl=64).pack()
    vlans = (vlan & 0xFFF,) if vlan >= 0 else ()
    return Ethernet(eth.src, src_mac, ETH_P_IP, vlans).pack() + hdr + bytes(body)


def frag_needed(
    frame: bytes | memoryview, mtu: int, src_mac: bytes, gateway: bytes, vlan: int = -1
) -> bytes | None:
    """ICMP 3/4 to the sender with the next-hop MTU the datapath reported (HANDLE_DF)."""
    return _error(frame, src_mac, gateway, ICMP_UNREACH, ICMP_FRAG_NEEDED, mtu & 0xFFFF, vlan)


def time_exceeded(frame: bytes | memoryview, src_mac: bytes, gateway: bytes) -> bytes | None:
    """ICMP 11/0 to the sender (ZERO_TTL), untagged as the real diag handler sends it."""
    return _error(frame, src_mac, gateway, ICMP_TIME_EXCEEDED, 0, 0)

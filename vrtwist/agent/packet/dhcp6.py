"""DHCPv6 server for VM ports with an IPv6 address, as the vRouter agent's DHCPv6 handler.

A VM's SOLICIT or REQUEST goes to ff02::1:2, which the datapath traps (L3_PROTOCOLS) from a
DHCP-enabled vif. The agent answers from what it knows of the port (REST ``ip6-address``):
SOLICIT gets an ADVERTISE; REQUEST, RENEW, REBIND and CONFIRM a REPLY with the address;
INFORMATION-REQUEST a REPLY with the configuration options only; RELEASE and DECLINE a
REPLY without addresses. The server identifier is a DUID-LL of hardware type 0 with the
VRRP MAC, as the real agent's (``tungstenfabric/tf-controller:src/vnsw/agent/services/
dhcpv6_handler.cc``). The reply comes from the vhost MAC and the subnet's IPv6 service
address (the port's ``v6-dns-server``, else its ``v6-gateway``; the link-local address
of the VRRP MAC, ``fe80::200:5eff:fe00:100``, when the port has no IPv6 IPAM) to the
request's source, UDP 547 -> 546 with its checksum. The DNS option carries the service
address, or the tenant's servers with ``tenant-dns-server``; the domain list the
virtual DNS's domain.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from vrtwist.packet.checksum import checksum
from vrtwist.packet.headers import UDP, Ethernet, IPv6, PacketError

__all__ = [
    "SERVER_DUID",
    "SERVICE_LINK_LOCAL",
    "Dhcp6Counters",
    "Dhcp6Error",
    "Dhcp6Message",
    "Dhcp6Server",
    "Port6",
    "build",
    "parse",
]

ETH_P_IPV6: Final = 0x86DD
IPPROTO_UDP: Final = 17
CLIENT_PORT: Final = 546
SERVER_PORT: Final = 547

SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY, RELEASE, DECLINE = range(1, 10)
INFORMATION_REQUEST: Final = 11

OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IA_TA, OPT_IAADDR = 1, 2, 3, 4, 5
OPT_ORO, OPT_STATUS_CODE, OPT_RAPID_COMMIT = 6, 13, 14
OPT_DNS_SERVERS, OPT_DOMAIN_LIST = 23, 24

#: DUID-LL (type 3), hardware type 0, the VRRP MAC 00:00:5e:00:01:00
SERVER_DUID: Final = bytes.fromhex("0003000000005e000100")
#: the EUI-64 link-local address of the VRRP MAC: the source of every reply
SERVICE_LINK_LOCAL: Final = ipaddress.IPv6Address("fe80::200:5eff:fe00:100").packed
INFINITE: Final = 0xFFFFFFFF
_HDR = struct.Struct("!B3s")
_OPT = struct.Struct("!HH")
#: a DHCPv6 message is small; anything longer is not one the agent answers
MAX_MESSAGE: Final = 1500


class Dhcp6Error(ValueError):
    """A message that is not a well-formed DHCPv6 client message."""


@dataclass(frozen=True)
class Dhcp6Message:
    kind: int
    xid: bytes
    options: list[tuple[int, bytes]]

    def get(self, code: int) -> bytes | None:
        return next((v for c, v in self.options if c == code), None)

    def all(self, code: int) -> Iterator[bytes]:
        return (v for c, v in self.options if c == code)


def _options(data: bytes | memoryview) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 4:
            raise Dhcp6Error("truncated option header")
        code, length = _OPT.unpack_from(data, pos)
        pos += 4
        if end - pos < length:
            raise Dhcp6Error(f"option {code} longer than the message")
        out.append((code, bytes(data[pos : pos + length])))
        pos += length
    return out


def parse(data: bytes | memoryview) -> Dhcp6Message:
    """The message type, transaction id and options (not relay messages)."""
    if len(data) < 4 or len(data) > MAX_MESSAGE:
        raise Dhcp6Error(f"length {len(data)}")
    kind, xid = _HDR.unpack_from(data, 0)
    return Dhcp6Message(kind, bytes(xid), _options(memoryview(data)[4:]))


def option(code: int, value: bytes) -> bytes:
    return _OPT.pack(code, len(value)) + value


def build(kind: int, xid: bytes, options: list[tuple[int, bytes]]) -> bytes:
    return _HDR.pack(kind, xid) + b"".join(option(c, v) for c, v in options)


def _domain_list(domains: tuple[str, ...]) -> bytes:
    """RFC 1035 names, uncompressed, one after another."""
    out = b""
    for d in domains:
        for label in d.strip(".").split("."):
            raw = label.encode("idna")[:63]
            out += bytes((len(raw),)) + raw
        out += b"\0"
    return out


@dataclass(frozen=True)
class Port6:
    """What the agent knows of one VM port that a DHCPv6 answer is made from."""

    mac: bytes
    ip6: str | None
    dhcp_enabled: bool = True
    tx_vlan: int = -1
    #: the DNS server option's address (the service address when none is configured)
    dns6: str | None = None
    domains: tuple[str, ...] = ()
    #: the subnet's IPv6 service address: the source of the replies (the VRRP MAC's
    #: link-local address when the port has no IPv6 IPAM)
    service6: str | None = None
    #: ``tenant-dns-server``: the tenant's servers instead (IPv6 ones; none: no option)
    dns6_list: tuple[str, ...] | None = None


@dataclass
class Dhcp6Counters:
    received: int = 0
    advertises: int = 0
    replies: int = 0
    informs: int = 0
    releases: int = 0
    no_address: int = 0
    unknown_client: int = 0
    disabled: int = 0
    malformed: int = 0
    ignored: int = 0
    by_vif: dict[int, int] = field(default_factory=dict)


_REPLY_WITH_ADDRESS = frozenset({REQUEST, RENEW, REBIND, CONFIRM})


class Dhcp6Server:
    """Answers DHCPv6 client messages of VM ports (sans-IO: frames in, frames out)."""

    def __init__(self, port_of: Callable[[int], Port6 | None],
                 vhost_mac: Callable[[], bytes]) -> None:
        self._port_of = port_of
        self._vhost_mac = vhost_mac
        self.counters = Dhcp6Counters()

    def handle(self, vif_index: int, frame: bytes | memoryview) -> bytes | None:
        """The reply frame for one trapped client message, or None (counted)."""
        c = self.counters
        c.received += 1
        try:
            eth, ip6, l4 = _headers(frame)
            udp = UDP.parse(frame, l4)
            end = min(len(frame), l4 + udp.length, l4 + ip6.payload_length)
            msg = parse(memoryview(frame)[l4 + 8 : end])
        except (PacketError, Dhcp6Error):
            c.malformed += 1
            return None
        port = self._port_of(vif_index)
        if port is None or eth.src != port.mac:
            c.unknown_client += 1
            return None
        if not port.dhcp_enabled:
            c.disabled += 1
            return None
        client = msg.get(OPT_CLIENTID)
        server = msg.get(OPT_SERVERID)
        if client is None or (server is not None and server != SERVER_DUID):
            c.ignored += 1  # for another server, or no client to answer
            return None
        c.by_vif[vif_index] = c.by_vif.get(vif_index, 0) + 1
        kind = msg.kind
        if kind == INFORMATION_REQUEST:
            c.informs += 1
            return self._frame(port, eth, ip6, udp, REPLY, msg, client, addresses=False)
        if port.ip6 is None:
            c.no_address += 1
            return None
        if kind == SOLICIT:
            c.advertises += 1
            return self._frame(port, eth, ip6, udp, ADVERTISE, msg, client, addresses=True)
        if kind in _REPLY_WITH_ADDRESS:
            c.replies += 1
            return self._frame(port, eth, ip6, udp, REPLY, msg, client, addresses=True)
        if kind in (RELEASE, DECLINE):
            c.releases += 1
            return self._frame(port, eth, ip6, udp, REPLY, msg, client, addresses=False)
        c.ignored += 1
        return None

    def _ia(self, port: Port6, msg: Dhcp6Message) -> list[tuple[int, bytes]]:
        """Each IA_NA/IA_TA of the request back with the port's address, infinite."""
        assert port.ip6 is not None
        addr = ipaddress.IPv6Address(port.ip6).packed
        iaaddr = option(OPT_IAADDR, addr + struct.pack("!II", INFINITE, INFINITE))
        out: list[tuple[int, bytes]] = []
        for code, value in msg.options:
            if code == OPT_IA_NA and len(value) >= 12:
                out.append((code, value[:4] + struct.pack("!II", INFINITE, INFINITE) + iaaddr))
            elif code == OPT_IA_TA and len(value) >= 4:
                out.append((code, value[:4] + iaaddr))
        return out

    def _options(self, port: Port6, msg: Dhcp6Message, client: bytes,
                 addresses: bool) -> list[tuple[int, bytes]]:
        opts: list[tuple[int, bytes]] = [(OPT_SERVERID, SERVER_DUID), (OPT_CLIENTID, client)]
        if addresses:
            opts += self._ia(port, msg)
        if port.dns6_list is not None:
            dns = b"".join(ipaddress.ip_address(a).packed for a in port.dns6_list
                           if ipaddress.ip_address(a).version == 6)
        else:
            dns = ipaddress.IPv6Address(port.dns6 or port.service6 or "::").packed \
                if (port.dns6 or port.service6) else SERVICE_LINK_LOCAL
        if dns:
            opts.append((OPT_DNS_SERVERS, dns))
        if port.domains:
            opts.append((OPT_DOMAIN_LIST, _domain_list(port.domains)))
        return opts

    def _frame(self, port: Port6, eth: Ethernet, ip6: IPv6, udp: UDP, kind: int,
               msg: Dhcp6Message, client: bytes, *, addresses: bool) -> bytes:
        payload = build(kind, msg.xid, self._options(port, msg, client, addresses))
        length = 8 + len(payload)
        source = ipaddress.IPv6Address(port.service6).packed if port.service6 \
            else SERVICE_LINK_LOCAL
        head = IPv6(source, ip6.src, IPPROTO_UDP, length, 64)
        body = UDP(SERVER_PORT, udp.sport, length, 0).pack() + payload
        csum = checksum(body, head.pseudo_sum(length)) or 0xFFFF
        body = body[:6] + csum.to_bytes(2, "big") + body[8:]
        vlans = (port.tx_vlan & 0xFFF,) if port.tx_vlan >= 0 else ()
        return Ethernet(eth.src, self._vhost_mac(), ETH_P_IPV6, vlans).pack() + head.pack() + body


def _headers(frame: bytes | memoryview) -> tuple[Ethernet, IPv6, int]:
    eth = Ethernet.parse(frame)
    if eth.ethertype != ETH_P_IPV6:
        raise PacketError("not IPv6")
    ip6 = IPv6.parse(frame, eth.length)
    if ip6.next_header != IPPROTO_UDP:
        raise PacketError("not UDP (extension headers are not followed)")
    return eth, ip6, eth.length + 40

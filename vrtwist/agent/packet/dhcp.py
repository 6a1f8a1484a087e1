"""DHCP server for VM ports, answering as the vRouter agent's DHCP handler does.

The agent, not a separate daemon, hands each VM its address: a VM's broadcast DISCOVER or
REQUEST is trapped by the datapath (L3_PROTOCOLS) and comes here with the vif it arrived
on. The reply is built from what the agent knows of the port (REST ``ip-address``,
``plen``, ``gateway``, ``dns-server``, ``display-name``, or the controller's IPAM) with the
real agent's header fields, option order and server identifier, and goes back to the VM
with a SWITCH command. The DNS server (6) and domain name (15) options follow the
network's DNS method as the real agent's do: the service address, the tenant's servers
(``tenant-dns-server``), and the virtual DNS's domain (``virtual-dns-server``). Requests from a MAC that is not the port's ("unknown clients"),
malformed ones and message types the agent ignores get no answer, only a counter.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from vrtwist.packet import dhcp as D
from vrtwist.packet.headers import (
    ETH_P_IP,
    IPPROTO_UDP,
    UDP,
    Ethernet,
    IPv4,
    PacketError,
    parse_udp4,
)

__all__ = ["DhcpCounters", "DhcpServer", "Lease", "PortLease", "lease_for"]

#: the real agent's lease when the port has no IPAM yet (``DHCP_SHORTLEASE_TIME``)
SHORT_LEASE: Final = 4
#: lease time when the IPAM gives none: infinite
INFINITE: Final = 0xFFFFFFFF
NAK_MESSAGE: Final = b"cannot assign requested address"
_ZERO: Final = bytes(4)
_BROADCAST_MAC: Final = b"\xff" * 6


@dataclass(frozen=True)
class PortLease:
    """What the agent knows of one VM port that a lease is made from."""

    mac: bytes
    ip: str | None
    plen: int | None = None
    gateway: str | None = None
    dns_server: str | None = None
    vm_name: str = ""
    dhcp_enabled: bool = True
    tx_vlan: int = -1
    #: vif index of the port, used for the link-local fallback address
    vif_index: int = 0
    #: option 6 as the network's DNS method makes it: None for the service address
    #: (``default-dns-server``, ``virtual-dns-server``, ``none``), else the tenant's
    #: servers (``tenant-dns-server``; IPv4 ones only, the option dropped when none)
    dns_servers: tuple[str, ...] | None = None
    #: option 15: the virtual DNS's domain (``virtual-dns-server`` only)
    domain: str = ""


@dataclass(frozen=True)
class Lease:
    """The values one reply carries."""

    ip: bytes
    plen: int
    gateway: bytes
    service: bytes
    lease_time: int
    host_name: str
    #: option 6's addresses (empty: no option 6) and option 15 (empty: none)
    dns: bytes = b""
    domain: str = ""

    @property
    def mask(self) -> bytes:
        return ((0xFFFFFFFF << (32 - self.plen)) & 0xFFFFFFFF).to_bytes(4, "big")

    @property
    def broadcast(self) -> bytes:
        ip = int.from_bytes(self.ip, "big")
        mask = int.from_bytes(self.mask, "big")
        return ((ip & mask) | (~mask & 0xFFFFFFFF)).to_bytes(4, "big")


def _a(addr: str | None) -> bytes:
    if not addr:
        return _ZERO
    return ipaddress.IPv4Address(addr).packed


def lease_for(port: PortLease) -> Lease:
    """The lease data as the real agent's ``FindLeaseData`` derives it.

    A port with a subnet (``plen``) gets it with its gateway and service address (the DNS
    server, or the gateway when none) and an infinite lease; a port without one gets its
    address as a /32 for 4 s, with no gateway and no DNS, until its IPAM is known; a port
    with no IPv4 address gets 169.254.0.<vif & 0xff>/16.
    """
    if port.ip is None or port.ip == "0.0.0.0":
        ip = bytes((169, 254, 0, port.vif_index & 0xFF))
        return Lease(ip, 16, _ZERO, _ZERO, SHORT_LEASE, port.vm_name)
    if port.plen is None or (port.plen == 32 and not port.gateway):
        return Lease(_a(port.ip), 32, _ZERO, _ZERO, SHORT_LEASE, port.vm_name)
    gw = _a(port.gateway)
    service = _a(port.dns_server) if port.dns_server else gw
    if port.dns_servers is None:
        dns = service if service != _ZERO else b""
    else:
        dns = b"".join(ipaddress.ip_address(a).packed for a in port.dns_servers
                       if ipaddress.ip_address(a).version == 4)[:252]
    return Lease(_a(port.ip), port.plen, gw, service, INFINITE, port.vm_name, dns,
                 port.domain)


@dataclass
class DhcpCounters:
    """What the DHCP service did (the real agent's ``DhcpStats`` in spirit)."""

    received: int = 0
    offers: int = 0
    acks: int = 0
    naks: int = 0
    informs: int = 0
    declines: int = 0
    releases: int = 0
    unknown_client: int = 0
    disabled: int = 0
    malformed: int = 0
    ignored: int = 0
    by_vif: dict[int, int] = field(default_factory=dict)



class DhcpServer:
    """Answers DHCPv4 requests of VM ports (sans-IO: frames in, frames out)."""

    def __init__(
        self,
        port_of: Callable[[int], PortLease | None],
        vhost_mac: Callable[[], bytes],
    ) -> None:
        self._port_of = port_of
        self._vhost_mac = vhost_mac
        self.counters = DhcpCounters()

    def handle(self, vif_index: int, frame: bytes | memoryview) -> bytes | None:
        """The reply frame (from its Ethernet header) for one trapped request, or None."""
        c = self.counters
        c.received += 1
        try:
            msg = D.parse(parse_udp4(frame)[2])
        except (PacketError, D.DhcpError):
            c.malformed += 1
            return None
        port = self._port_of(vif_index)
        if port is None:
            c.unknown_client += 1
            return None
        if not port.dhcp_enabled:
            c.disabled += 1
            return None
        if msg.op != 1 or msg.htype != 1 or msg.hlen != 6 or msg.mac != port.mac:
            c.unknown_client += 1
            return None
        c.by_vif[vif_index] = c.by_vif.get(vif_index, 0) + 1
        return self._answer(port, msg)

    def _answer(self, port: PortLease, msg: D.DhcpMessage) -> bytes | None:
        """OFFER, ACK or NAK for a known client's message; None for the rest (counted)."""
        c = self.counters
        kind = msg.message_type
        lease = lease_for(port)
        if kind == D.MSG["discover"]:
            c.offers += 1
            return self._reply(port, msg, lease, D.MSG["offer"])
        if kind == D.MSG["request"]:
            wanted = msg.options.get(D.OPT["requested_ip"])
            if wanted is not None and wanted != lease.ip:
                c.naks += 1
                return self._reply(port, msg, lease, D.MSG["nak"])
            c.acks += 1
            return self._reply(port, msg, lease, D.MSG["ack"])
        if kind == D.MSG["inform"]:
            c.informs += 1
            return self._reply(port, msg, lease, D.MSG["ack"], inform=True)
        if kind == D.MSG["decline"]:
            c.declines += 1
        elif kind == D.MSG["release"]:
            c.releases += 1
        else:
            c.ignored += 1
        return None

    def _options(
        self, msg: D.DhcpMessage, lease: Lease, kind: int, inform: bool
    ) -> list[tuple[int, bytes]]:
        opt = D.OPT
        nak = kind == D.MSG["nak"]
        opts: list[tuple[int, bytes]] = [
            (opt["message_type"], bytes((kind,))),
            (opt["server_id"], _ZERO if nak else lease.service),
        ]
        if nak:
            return [*opts, (opt["message"], NAK_MESSAGE)]
        mask = lease.mask
        if mask != _ZERO:
            opts.append((opt["subnet_mask"], mask))
        broadcast = lease.broadcast
        if broadcast != _ZERO:
            opts.append((opt["broadcast"], broadcast))
        if not inform:
            opts.append((opt["lease_time"], D.u32(lease.lease_time)))
        if lease.gateway != _ZERO:
            opts.append((opt["router"], lease.gateway))
        if lease.host_name:
            opts.append((opt["host_name"], lease.host_name.encode("utf-8", "replace")[:255]))
        if lease.dns:
            opts.append((opt["dns"], lease.dns))
        if lease.domain:
            opts.append((opt["domain_name"], lease.domain.encode("ascii", "replace")[:255]))
        return opts

    def _reply(
        self, port: PortLease, msg: D.DhcpMessage, lease: Lease, kind: int, inform: bool = False
    ) -> bytes:
        nak = kind == D.MSG["nak"]
        unicast = inform or (
            msg.giaddr == _ZERO and (msg.ciaddr != _ZERO or not msg.flags & D.BROADCAST_FLAG)
        )
        bootp = D.DhcpMessage(
            op=2,
            xid=msg.xid,
            secs=0,
            flags=msg.flags,
            ciaddr=_ZERO,
            yiaddr=_ZERO if nak or inform else lease.ip,
            siaddr=_ZERO if nak else lease.service,
            giaddr=_ZERO,
            chaddr=msg.mac,
            options={},
        )
        payload = D.build(bootp, self._options(msg, lease, kind, inform))
        ip_dst = lease.ip if unicast else b"\xff" * 4
        eth_dst = msg.mac if unicast else _BROADCAST_MAC
        udp = UDP(67, 68, 8 + len(payload), 0).pack()
        ip = IPv4(
            src=lease.service, dst=ip_dst, proto=IPPROTO_UDP,
            total_length=20 + len(udp) + len(payload), ident=0, ttl=64,
        ).pack()  # fmt: skip
        vlans = (port.tx_vlan & 0xFFF,) if port.tx_vlan >= 0 else ()
        eth = Ethernet(eth_dst, self._vhost_mac(), ETH_P_IP, vlans).pack()
        return eth + ip + udp + payload

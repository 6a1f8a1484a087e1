"""The agent's trap dispatcher: each trapped packet to the service the real agent uses.

The order is the real agent's (``PktHandler::ParsePacket``), trimmed to the services
vrtwist provides: DHCP and DHCPv6 for DHCP-enabled ports, router solicitations (a router
advertisement for a port with an IPv6 subnet), ARP, flow setup, DNS (UDP 53
from a DHCP-enabled port), ICMP errors for ZERO_TTL/HANDLE_DF, ICMP echo for the gateway
and service addresses. What no service
takes is counted as invalid and dropped. Replies go back as SWITCH commands on the vif
and VRF of the trap.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from vrtwist.agent.packet import icmp
from vrtwist.agent.packet.arp import ANNOUNCE_COUNT, ANNOUNCE_INTERVAL, VRRP_MAC, announcement
from vrtwist.agent.packet.dhcp import DhcpServer, PortLease
from vrtwist.agent.packet.dhcp6 import Dhcp6Server, Port6
from vrtwist.agent.packet.dns import DnsProxy
from vrtwist.agent.packet.flows import FlowSetup
from vrtwist.agent.packet.icmp6 import is_router_solicitation, router_advertisement
from vrtwist.packet.headers import (
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMP,
    IPPROTO_UDP,
    Ethernet,
    IPv4,
    IPv6,
    PacketError,
)
from vrtwist.pkt0 import constants as K
from vrtwist.pkt0.codec import AgentHeader
from vrtwist.pkt0.endpoints import ITrapHandler

__all__ = ["Announcer", "PacketServices", "ServiceCounters", "VmPort"]

_FLOW_TRAPS = frozenset({K.AGENT_TRAP_FLOW_MISS, K.AGENT_TRAP_FLOW_ACTION_HOLD})
_MAC_TRAPS = frozenset({K.AGENT_TRAP_MAC_LEARN, K.AGENT_TRAP_MAC_MOVE, K.AGENT_TRAP_MAC_IP_LEARNING})


@dataclass(frozen=True)
class VmPort:
    """What the packet services need of the port behind a vif."""

    vif: int
    vrf: int
    mac: bytes
    ip: str | None
    plen: int | None = None
    gateway: str | None = None
    dns_server: str | None = None
    vm_name: str = ""
    tx_vlan: int = -1
    dhcp_enabled: bool = True
    ip6: str | None = None
    #: the tenant's DNS servers (``tenant-dns-server``), None for the service address
    dns_servers: tuple[str, ...] | None = None
    #: the virtual DNS's domain (``virtual-dns-server``)
    domain: str = ""
    ip6_plen: int | None = None
    ip6_gateway: str | None = None
    ip6_dns_server: str | None = None

    def lease6(self) -> Port6:
        return Port6(self.mac, self.ip6, self.dhcp_enabled, self.tx_vlan,
                     domains=(self.domain,) if self.domain else (),
                     service6=self.ip6_dns_server or self.ip6_gateway,
                     dns6_list=self.dns_servers)

    def lease(self) -> PortLease:
        return PortLease(
            self.mac, self.ip, self.plen, self.gateway, self.dns_server, self.vm_name,
            self.dhcp_enabled, self.tx_vlan, self.vif, self.dns_servers, self.domain,
        )  # fmt: skip

    def service_addresses(self) -> set[bytes]:
        """The gateway and DNS addresses the agent answers echo requests for."""
        return {ipaddress.IPv4Address(a).packed for a in (self.gateway, self.dns_server) if a}


@dataclass
class ServiceCounters:
    dhcp: int = 0
    dhcp6: int = 0
    router_solicits: int = 0
    dns: int = 0
    arp: int = 0
    flow: int = 0
    icmp: int = 0
    icmp_error: int = 0
    mac_learning: int = 0
    unsupported: int = 0
    invalid: int = 0
    sent: int = 0
    send_failed: int = 0
    by_trap: dict[int, int] = field(default_factory=dict)


@implementer(ITrapHandler)
class PacketServices:
    """Dispatches trapped packets to DHCP, ARP, flow setup and ICMP."""

    def __init__(
        self,
        port_of: Callable[[int], VmPort | None],
        send: Callable[[int, int, bytes], bool],
        vhost_mac: Callable[[], bytes],
        flows: FlowSetup | None = None,
        fabric_arp: Callable[[int, memoryview], object] | None = None,
        vm_arp: Callable[[int, memoryview], object] | None = None,
        dns: DnsProxy | None = None,
    ) -> None:
        self._port_of = port_of
        #: ARP trapped from a VM vif: the path-preference prober notes the VM's answers
        self._vm_arp = vm_arp
        #: ARP trapped from a non-VM vif (the fabric): the fabric MAC resolver learns it
        self._fabric_arp = fabric_arp
        self._send = send
        self._vhost_mac = vhost_mac
        self.flows = flows
        self.dhcp = DhcpServer(self._lease_of, vhost_mac)
        self.dhcp6 = Dhcp6Server(self._lease6_of, vhost_mac)
        #: DNS for the ports' queries to the service address (None: not served)
        self.dns = dns
        self.counters = ServiceCounters()

    def _lease_of(self, vif: int) -> PortLease | None:
        port = self._port_of(vif)
        return port.lease() if port is not None else None

    def _lease6_of(self, vif: int) -> Port6 | None:
        port = self._port_of(vif)
        return port.lease6() if port is not None else None

    def _reply(self, hdr: AgentHeader, frame: bytes | None) -> None:
        if frame is None:
            return
        if self._send(hdr.ifindex, hdr.vrf, frame):
            self.counters.sent += 1
        else:
            self.counters.send_failed += 1

    def trap_received(self, header: AgentHeader, frame: memoryview) -> None:
        c = self.counters
        cmd = header.cmd
        by_trap = c.by_trap
        by_trap[cmd] = by_trap.get(cmd, 0) + 1
        if cmd in _FLOW_TRAPS:
            flows = self.flows
            if flows is not None and flows.trap_ipv4(header, frame):
                # the hot path: a plain IPv4 TCP/UDP packet, read once by flow setup
                c.flow += 1
                return
        elif cmd in _MAC_TRAPS:
            c.mac_learning += 1
            return
        self._dispatch(header, frame, cmd)

    def _dispatch(self, header: AgentHeader, frame: memoryview, cmd: int) -> None:
        """Any trap but a MAC one and a plain IPv4 flow trap: parsed, then to its service."""
        c = self.counters
        try:
            eth = Ethernet.parse(frame)
        except PacketError:
            c.invalid += 1
            return
        flow_trap = cmd in _FLOW_TRAPS
        ip: IPv4 | None = None
        l4 = 0
        if eth.ethertype == ETH_P_IP:
            try:
                ip = IPv4.parse(frame, eth.length)
            except PacketError:
                c.invalid += 1
                return
            l4 = eth.length + ip.header_length
            if flow_trap and self.flows is not None:
                # no port lookup, and flow setup reuses the parsed header
                c.flow += 1
                self.flows.trap_received(header, frame, (eth.length, ip))
                return
        port = self._port_of(header.ifindex)
        udp_ports = _udp_ports(frame, ip, l4)
        if not flow_trap and _is_dhcp(port, udp_ports):
            c.dhcp += 1
            self._reply(header, self.dhcp.handle(header.ifindex, frame))
            return
        if not flow_trap and eth.ethertype == ETH_P_IPV6 and _is_dhcp6(port, frame, eth.length):
            c.dhcp6 += 1
            self._reply(header, self.dhcp6.handle(header.ifindex, frame))
            return
        if (not flow_trap and eth.ethertype == ETH_P_IPV6 and port is not None
                and is_router_solicitation(frame, eth.length)):
            self._router_solicitation(header, frame, port)
            return
        if eth.ethertype == ETH_P_ARP:
            self._arp(header, frame, port)
            return
        if flow_trap or ip is None:
            c.invalid += 1
            return
        if self._dns_query(header, frame, port, udp_ports):
            return
        self._ip_service(header, frame, port, ip, udp_ports)

    def _router_solicitation(self, header: AgentHeader, frame: memoryview,
                             port: VmPort) -> None:
        """A router advertisement for a port with an IPv6 subnet (none without one, as
        the real agent: no prefix to announce)."""
        self.counters.router_solicits += 1
        if port.ip6 is None or port.ip6_plen is None:
            return
        try:
            reply = router_advertisement(frame, port.ip6, port.ip6_plen,
                                         port.ip6_gateway is not None, port.tx_vlan)
        except PacketError:
            self.counters.invalid += 1
            return
        self._reply(header, reply)

    def _dns_query(self, header: AgentHeader, frame: memoryview, port: VmPort | None,
                   udp_ports: tuple[int, int] | None) -> bool:
        """A DNS query from a DHCP-enabled port goes to the DNS proxy (True if taken)."""
        if (self.dns is None or port is None or not port.dhcp_enabled
                or udp_ports is None or udp_ports[1] != 53):
            return False
        self.counters.dns += 1
        self.dns.handle(header.vrf, frame, port.mac, port.tx_vlan,
                        lambda reply: self._reply(header, reply))
        return True

    def _arp(self, header: AgentHeader, frame: memoryview, port: VmPort | None) -> None:
        """The datapath answers VMs; the agent only learns from these: the fabric MAC
        resolver from the fabric's, the path-preference prober from a VM's."""
        self.counters.arp += 1
        if port is None and self._fabric_arp is not None:
            self._fabric_arp(header.ifindex, frame)
        elif port is not None and self._vm_arp is not None:
            self._vm_arp(header.ifindex, frame)

    def _ip_service(self, header: AgentHeader, frame: memoryview, port: VmPort | None,
                    ip: IPv4, udp_ports: tuple[int, int] | None) -> None:
        """ICMP errors for ZERO_TTL/HANDLE_DF and echo replies for the service addresses."""
        c = self.counters
        cmd = header.cmd
        if cmd == K.AGENT_TRAP_ZERO_TTL:
            c.icmp_error += 1
            gw = _gateway(port, ip.src)
            self._reply(header, icmp.time_exceeded(frame, self._vhost_mac(), gw))
            return
        if ip.proto == IPPROTO_ICMP and port is not None and ip.dst in port.service_addresses():
            c.icmp += 1
            self._reply(header, icmp.echo_reply(frame, port.tx_vlan, port.mac))
            return
        if cmd == K.AGENT_TRAP_HANDLE_DF:
            c.icmp_error += 1
            gw = _gateway(port, ip.src)
            vlan = port.tx_vlan if port is not None else -1
            self._reply(header, icmp.frag_needed(frame, header.param, self._vhost_mac(), gw, vlan))
            return
        if cmd in (K.AGENT_TRAP_RESOLVE,) or (udp_ports is not None and udp_ports[1] == 53):
            c.unsupported += 1
            return
        c.invalid += 1


def _udp_ports(frame: memoryview, ip: IPv4 | None, l4: int) -> tuple[int, int] | None:
    if ip is not None and ip.proto == IPPROTO_UDP and len(frame) >= l4 + 4:
        return (int.from_bytes(frame[l4 : l4 + 2], "big"),
                int.from_bytes(frame[l4 + 2 : l4 + 4], "big"))
    return None


def _is_dhcp(port: VmPort | None, udp_ports: tuple[int, int] | None) -> bool:
    """A DHCP request from a DHCP-enabled port (client port 68 or server port 67)."""
    return (port is not None and port.dhcp_enabled and udp_ports is not None
            and (udp_ports[1] == 67 or udp_ports[0] == 68))


def _is_dhcp6(port: VmPort | None, frame: memoryview, l3: int) -> bool:
    """A DHCPv6 client message (UDP to port 547 or from 546) from a DHCP-enabled port."""
    if port is None or not port.dhcp_enabled:
        return False
    try:
        ip6 = IPv6.parse(frame, l3)
    except PacketError:
        return False
    if ip6.next_header != IPPROTO_UDP or len(frame) < l3 + 44:
        return False
    sport = int.from_bytes(frame[l3 + 40 : l3 + 42], "big")
    dport = int.from_bytes(frame[l3 + 42 : l3 + 44], "big")
    return dport == 547 or sport == 546


def _gateway(port: VmPort | None, fallback: bytes) -> bytes:
    if port is not None and port.gateway:
        return ipaddress.IPv4Address(port.gateway).packed
    return fallback


class Announcer:
    """Announces the gateway and DNS addresses to a VM: three ARP requests, 2 s apart."""

    def __init__(self, clock: IReactorTime, send: Callable[[int, int, bytes], bool]) -> None:
        self._clock = clock
        self._send = send
        self._timers: dict[int, Any] = {}
        self.sent = 0

    def port_up(self, port: VmPort) -> None:
        """Start (or restart) the announcements for the port on ``port.vif``."""
        self.port_down(port.vif)
        frames = []
        seen: set[str] = set()
        for addr in (port.gateway, port.dns_server):
            if addr and addr not in seen and addr != "0.0.0.0":
                seen.add(addr)
                frames.append(
                    announcement(port.mac, ipaddress.IPv4Address(addr).packed, VRRP_MAC, port.tx_vlan)
                )
        if frames:
            self._round(port.vif, port.vrf, frames, ANNOUNCE_COUNT)

    def _round(self, vif: int, vrf: int, frames: list[bytes], left: int) -> None:
        for frame in frames:
            if self._send(vif, vrf, frame):
                self.sent += 1
        if left > 1:
            self._timers[vif] = self._clock.callLater(
                ANNOUNCE_INTERVAL, self._round, vif, vrf, frames, left - 1
            )
        else:
            self._timers.pop(vif, None)

    def port_down(self, vif: int) -> None:
        timer = self._timers.pop(vif, None)
        if timer is not None and timer.active():
            timer.cancel()

    def stop(self) -> None:
        for vif in list(self._timers):
            self.port_down(vif)

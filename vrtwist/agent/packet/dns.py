"""DNS for VM ports: the agent as the resolver at the network's DNS (service) address.

A VM's query to the service address on UDP 53 is routed to the agent's next hop and
reaches the agent as a NEXTHOP trap (the flow towards a gateway/DNS address on port 53
always passes policy). What happens depends on the DNS method of the network's IPAM
(per network, :class:`DnsSettings`; the agent's ``--dns-method`` when the network sets
none):

* ``default-dns-server``: the agent answers the names it knows itself, the VMs' names in
  the VM's own network (their ``display-name``, forward A/AAAA and reverse PTR), and
  forwards the rest to the host's resolvers (``/etc/resolv.conf``, or ``--dns-upstream``),
  relaying their answer with the VM's query id.
* ``tenant-dns-server``: DHCP hands out the tenant's servers, so VMs normally ask them
  directly; a query that still reaches the service address is forwarded to them (the
  real agent does not proxy it).
* ``virtual-dns-server``: answered from the virtual DNS's records and the network's VM
  names under its domain (``<vm>.<domain>``, and their PTRs); other names are forwarded to
  the virtual DNS's next servers (the host's resolvers when it names none). The real
  agent hands these queries to contrail-dns over XMPP, which serves the same zone.
* ``none``: every query gets SERVFAIL.

Replies go back to the VM as SWITCH commands, from the service address and the VRRP MAC,
as the real agent's (``tungstenfabric/tf-controller:src/vnsw/agent/services/
dns_handler.cc``).

Bounded: at most ``max_outstanding`` forwarded queries wait for an upstream answer (more
are dropped and counted), each waits at most ``timeouts`` (then SERVFAIL), and queries
that do not parse are dropped and counted. The wire format is ``twisted.names.dns``.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.error import TimeoutError as TwistedTimeout
from twisted.names import dns
from twisted.python.failure import Failure

from vrtwist.agent.packet.arp import VRRP_MAC
from vrtwist.logfields import Logger
from vrtwist.packet.headers import (
    ETH_P_IP,
    IPPROTO_UDP,
    UDP,
    Ethernet,
    IPv4,
    PacketError,
    parse_udp4,
)

__all__ = ["DNS_METHODS", "RECORD_TYPES", "DnsCounters", "DnsProxy", "DnsRecord", "DnsSettings",
           "VmName", "reply_frame"]

#: the IPAM's ``ipam_dns_method`` values (``default-dns-server`` when unset)
DNS_METHODS: Final = ("default-dns-server", "none", "tenant-dns-server", "virtual-dns-server")
#: record types a virtual DNS holds here
RECORD_TYPES: Final = ("A", "AAAA", "CNAME", "PTR")
#: the virtual DNS's record TTL when neither the record nor the server sets one
DEFAULT_TTL: Final = 86400
#: resolvers kept for per-network server lists (tenant servers, virtual DNS next servers)
MAX_RESOLVERS: Final = 64
#: TTL of the answers made from the agent's own knowledge (ports come and go)
LOCAL_TTL: Final = 60
#: upstream retry schedule (seconds per attempt), the total being the longest wait
TIMEOUTS: Final = (1, 3)
MAX_OUTSTANDING: Final = 256
_MAX_QUERY: Final = 512 * 4


@dataclass(frozen=True)
class VmName:
    """One VM the agent knows in a network: its name and addresses."""

    name: str
    ip: str | None
    ip6: str | None = None


@dataclass(frozen=True)
class DnsRecord:
    """One virtual DNS record: ``name`` absolute (lowercase, no final dot), ``type`` one
    of :data:`RECORD_TYPES`, ``data`` an address (A, AAAA) or a name (CNAME, PTR)."""

    name: str
    type: str
    data: str
    ttl: int | None = None


@dataclass(frozen=True)
class DnsSettings:
    """How one network's queries are served: its method, the servers forwarded to
    (``(address, port)``; none: the host's resolvers) and, for a virtual DNS, its domain
    and records."""

    method: str = "default-dns-server"
    servers: tuple[tuple[str, int], ...] = ()
    domain: str = ""
    records: tuple[DnsRecord, ...] = ()
    ttl: int = DEFAULT_TTL


@dataclass
class DnsCounters:
    received: int = 0
    local: int = 0
    forwarded: int = 0
    upstream_answers: int = 0
    upstream_failures: int = 0
    servfail: int = 0
    malformed: int = 0
    overload: int = 0
    sent: int = 0


class _Request:
    """Where a reply to one VM query goes: the query's addresses and ports."""

    __slots__ = ("dport", "dst", "sport", "src", "vlan", "vm_mac")

    def __init__(self, ip: IPv4, sport: int, dport: int, vm_mac: bytes, vlan: int) -> None:
        self.src, self.dst, self.sport, self.dport = ip.src, ip.dst, sport, dport
        self.vm_mac, self.vlan = vm_mac, vlan


def reply_frame(req: _Request, payload: bytes) -> bytes:
    """The answer as a frame to the VM: from the service address and the VRRP MAC."""
    udp = UDP(req.dport, req.sport, 8 + len(payload), 0).pack()
    ip = IPv4(src=req.dst, dst=req.src, proto=IPPROTO_UDP,
              total_length=28 + len(payload), ident=0, ttl=64).pack()
    vlans = (req.vlan & 0xFFF,) if req.vlan >= 0 else ()
    return Ethernet(req.vm_mac, VRRP_MAC, ETH_P_IP, vlans).pack() + ip + udp + payload


def _reverse(addr: str) -> str:
    return ipaddress.ip_address(addr).reverse_pointer.lower()


def local_answer(query: dns.Query, names: Iterable[VmName]) -> list[dns.RRHeader] | None:
    """Records for a name the agent knows (possibly none: the name exists, the type not),
    or None when the name is not one of the network's VMs."""
    qname = query.name.name.decode("ascii", "replace").rstrip(".").lower()
    found: list[dns.RRHeader] | None = None
    for vm in names:
        if vm.name and vm.name.lower() == qname:
            found = found if found is not None else []
            if vm.ip and query.type in (dns.A, dns.ALL_RECORDS):
                found.append(dns.RRHeader(query.name.name, dns.A, dns.IN, LOCAL_TTL,
                                          dns.Record_A(vm.ip, LOCAL_TTL), auth=True))
            if vm.ip6 and query.type in (dns.AAAA, dns.ALL_RECORDS):
                found.append(dns.RRHeader(query.name.name, dns.AAAA, dns.IN, LOCAL_TTL,
                                          dns.Record_AAAA(vm.ip6, LOCAL_TTL), auth=True))
            continue
        if vm.name and any(a and _reverse(a) == qname for a in (vm.ip, vm.ip6)):
            found = found if found is not None else []
            if query.type in (dns.PTR, dns.ALL_RECORDS):
                found.append(dns.RRHeader(query.name.name, dns.PTR, dns.IN, LOCAL_TTL,
                                          dns.Record_PTR(vm.name, LOCAL_TTL), auth=True))
    return found


def _rr(owner: bytes, rtype: str, data: str, ttl: int) -> dns.RRHeader:
    if rtype == "A":
        payload: Any = dns.Record_A(data, ttl)
    elif rtype == "AAAA":
        payload = dns.Record_AAAA(data, ttl)
    elif rtype == "CNAME":
        payload = dns.Record_CNAME(data, ttl)
    else:
        payload = dns.Record_PTR(data, ttl)
    return dns.RRHeader(owner, dns.REV_TYPES[rtype], dns.IN, ttl, payload, auth=True)


def virtual_answer(query: dns.Query, settings: DnsSettings,
                   names: Iterable[VmName]) -> list[dns.RRHeader] | None:
    """Records of the virtual DNS's zone for ``query`` (possibly none: the name exists,
    the type not), or None when the name is not in the zone: the configured records,
    then the network's VMs as ``<name>.<domain>`` and their PTRs. A CNAME is followed
    once within the zone."""
    owner = query.name.name
    qname = owner.decode("ascii", "replace").rstrip(".").lower()
    domain = settings.domain
    names = list(names)
    vms = [VmName(f"{vm.name.lower()}.{domain}" if domain else vm.name.lower(), vm.ip, vm.ip6)
           for vm in names if vm.name]
    found: list[dns.RRHeader] | None = None
    want = dns.QUERY_TYPES.get(query.type, "") if query.type != dns.ALL_RECORDS else "*"
    for rec in settings.records:
        if rec.name != qname:
            continue
        found = found if found is not None else []
        if want in ("*", rec.type) or rec.type == "CNAME":
            ttl = settings.ttl if rec.ttl is None else rec.ttl
            found.append(_rr(owner, rec.type, rec.data, ttl))
            if rec.type == "CNAME" and want not in ("*", "CNAME"):
                target = dns.Query(rec.data, query.type, query.cls)
                found += [r for r in virtual_answer(target, replace(settings, records=tuple(
                    x for x in settings.records if x.type != "CNAME")), names) or ()]
    if found is not None:
        return found
    return local_answer(query, vms)


class DnsProxy:
    """Answers or forwards the DNS queries of VM ports.

    ``names_of(vrf)`` lists the VMs of the network behind a VRF; ``upstream`` is a
    ``twisted.names.client.Resolver`` (anything with its ``queryUDP``) for the host's
    resolvers, None to answer only local names (the rest get SERVFAIL).
    ``settings_of(vrf)`` gives the network's :class:`DnsSettings` (None: ``method`` for
    every network); ``resolver_for(servers)`` makes the resolver of a network's own
    server list (tenant servers, a virtual DNS's next servers), at most
    :data:`MAX_RESOLVERS` kept.
    """

    _log = Logger()

    def __init__(self, names_of: Callable[[int], Iterable[VmName]], upstream: Any = None,
                 method: str = "default-dns-server", *,
                 max_outstanding: int = MAX_OUTSTANDING,
                 timeouts: tuple[int, ...] = TIMEOUTS,
                 settings_of: Callable[[int], DnsSettings | None] | None = None,
                 resolver_for: Callable[[tuple[tuple[str, int], ...]], Any] | None = None,
                 ) -> None:
        if method not in DNS_METHODS:
            raise ValueError(f"DNS method {method!r}: one of {', '.join(DNS_METHODS)}")
        self._names_of = names_of
        self.upstream = upstream
        self.method = method
        self.max_outstanding = max_outstanding
        self.timeouts = timeouts
        self.outstanding = 0
        self.counters = DnsCounters()
        self._settings_of = settings_of
        self._resolver_for = resolver_for
        self._resolvers: dict[tuple[tuple[str, int], ...], Any] = {}

    def settings(self, vrf: int) -> DnsSettings:
        """The DNS settings of the network behind ``vrf``."""
        found = self._settings_of(vrf) if self._settings_of is not None else None
        return found if found is not None else DnsSettings(self.method)

    def _resolver(self, servers: tuple[tuple[str, int], ...]) -> Any:
        """The host's resolver for no servers, else one for this list (kept, bounded)."""
        if not servers or self._resolver_for is None:
            return self.upstream if not servers else None
        found = self._resolvers.get(servers)
        if found is None:
            if len(self._resolvers) >= MAX_RESOLVERS:
                self._resolvers.clear()  # lists change rarely; start over rather than grow
            found = self._resolvers[servers] = self._resolver_for(servers)
        return found

    def handle(self, vrf: int, frame: bytes | memoryview, vm_mac: bytes, vlan: int,
               send: Callable[[bytes], object]) -> None:
        """One trapped query: its answer goes to ``send`` now or when upstream answers."""
        c = self.counters
        c.received += 1
        try:
            req, msg = self._parse(frame, vm_mac, vlan)
        except (PacketError, ValueError, EOFError, IndexError, struct.error) as e:
            c.malformed += 1
            self._log.debug("dns: malformed query dropped: {e}", e=e)
            return
        settings = self.settings(vrf)
        method = settings.method
        if method == "none":
            self._answer(req, msg, send, rcode=dns.ESERVER)
            return
        records: list[dns.RRHeader] | None = None
        if method == "default-dns-server":
            records = local_answer(msg.queries[0], self._names_of(vrf))
        elif method == "virtual-dns-server":
            records = virtual_answer(msg.queries[0], settings, self._names_of(vrf))
        if records is not None:
            c.local += 1
            self._answer(req, msg, send, answers=records)
            return
        if method == "tenant-dns-server" and not settings.servers:
            self._answer(req, msg, send, rcode=dns.ESERVER)  # no tenant server to ask
            return
        servers = settings.servers if method != "default-dns-server" else ()
        self._forward(self._resolver(servers), req, msg, send)

    def _forward(self, resolver: Any, req: _Request, msg: dns.Message,
                 send: Callable[[bytes], object]) -> None:
        c = self.counters
        if resolver is None:
            self._answer(req, msg, send, rcode=dns.ESERVER)
            return
        if self.outstanding >= self.max_outstanding:
            c.overload += 1
            return
        c.forwarded += 1
        self.outstanding += 1
        d: Deferred[Any] = resolver.queryUDP(msg.queries, self.timeouts)
        d.addBoth(self._release)
        d.addCallbacks(self._relayed, self._failed,
                       callbackArgs=(req, msg, send), errbackArgs=(req, msg, send))
        d.addErrback(self._broken)

    def _parse(self, frame: bytes | memoryview, vm_mac: bytes,
               vlan: int) -> tuple[_Request, dns.Message]:
        ip, udp, payload = parse_udp4(frame)
        data = bytes(payload)
        if not data or len(data) > _MAX_QUERY:
            raise PacketError(f"DNS message of {len(data)} bytes")
        msg = dns.Message()
        msg.fromStr(data)
        if msg.answer or not msg.queries:
            raise ValueError("a response, or no question")
        return _Request(ip, udp.sport, udp.dport, vm_mac, vlan), msg

    def _answer(self, req: _Request, query: dns.Message, send: Callable[[bytes], object], *,
                rcode: int = dns.OK, answers: list[dns.RRHeader] | None = None) -> None:
        if rcode == dns.ESERVER:
            self.counters.servfail += 1
        reply = dns.Message(id=query.id, answer=1, opCode=query.opCode, recDes=query.recDes,
                            recAv=1, rCode=rcode, auth=answers is not None)
        reply.queries = list(query.queries)
        reply.answers = answers or []
        self._send(req, reply.toStr(), send)

    def _send(self, req: _Request, payload: bytes, send: Callable[[bytes], object]) -> None:
        self.counters.sent += 1
        send(reply_frame(req, payload))

    def _relayed(self, answer: dns.Message, req: _Request, query: dns.Message,
                 send: Callable[[bytes], object]) -> None:
        self.counters.upstream_answers += 1
        answer.id = query.id
        answer.queries = list(query.queries)
        self._send(req, answer.toStr(), send)

    def _failed(self, failure: Failure, req: _Request, query: dns.Message,
                send: Callable[[bytes], object]) -> None:
        self.counters.upstream_failures += 1
        if not failure.check(TwistedTimeout, dns.DNSQueryTimeoutError):
            self._log.info("dns: upstream failed: {f}", f=failure.getErrorMessage())
        self._answer(req, query, send, rcode=dns.ESERVER)

    def _broken(self, failure: Failure) -> None:
        self._log.failure("dns: relaying an answer", failure)

    def _release(self, result: object) -> object:
        self.outstanding -= 1
        return result

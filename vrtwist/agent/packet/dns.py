"""DNS for VM ports: the agent as the resolver at the network's DNS (service) address.

A VM's query to the service address on UDP 53 is routed to the agent's next hop and
reaches the agent as a NEXTHOP trap (the flow towards a gateway/DNS address on port 53
always passes policy). With the IPAM's DNS method ``default-dns-server`` (the default)
the agent answers names it knows itself, the VMs' names in the VM's own network (their
``display-name``, forward A/AAAA and reverse PTR), and forwards the rest to the host's
resolvers (``/etc/resolv.conf``, or the ``--dns-upstream`` servers), relaying their answer
with the VM's query id. With ``none`` every query gets SERVFAIL. Replies go back to the VM
as SWITCH commands, from the service address and the VRRP MAC, as the real agent's
(``tungstenfabric/tf-controller:src/vnsw/agent/services/dns_handler.cc``).

Bounded: at most ``max_outstanding`` forwarded queries wait for an upstream answer (more
are dropped and counted), each waits at most ``timeouts`` (then SERVFAIL), and queries
that do not parse are dropped and counted. The wire format is ``twisted.names.dns``.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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

__all__ = ["DNS_METHODS", "DnsCounters", "DnsProxy", "VmName", "reply_frame"]

DNS_METHODS: Final = ("default-dns-server", "none")
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


class DnsProxy:
    """Answers or forwards the DNS queries of VM ports.

    ``names_of(vrf)`` lists the VMs of the network behind a VRF; ``upstream`` is a
    ``twisted.names.client.Resolver`` (anything with its ``queryUDP``), None to answer
    only local names (the rest get SERVFAIL).
    """

    _log = Logger()

    def __init__(self, names_of: Callable[[int], Iterable[VmName]], upstream: Any = None,
                 method: str = "default-dns-server", *,
                 max_outstanding: int = MAX_OUTSTANDING,
                 timeouts: tuple[int, ...] = TIMEOUTS) -> None:
        if method not in DNS_METHODS:
            raise ValueError(f"DNS method {method!r}: one of {', '.join(DNS_METHODS)}")
        self._names_of = names_of
        self.upstream = upstream
        self.method = method
        self.max_outstanding = max_outstanding
        self.timeouts = timeouts
        self.outstanding = 0
        self.counters = DnsCounters()

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
        if self.method == "none":
            self._answer(req, msg, send, rcode=dns.ESERVER)
            return
        records = local_answer(msg.queries[0], self._names_of(vrf))
        if records is not None:
            c.local += 1
            self._answer(req, msg, send, answers=records)
            return
        if self.upstream is None:
            self._answer(req, msg, send, rcode=dns.ESERVER)
            return
        if self.outstanding >= self.max_outstanding:
            c.overload += 1
            return
        c.forwarded += 1
        self.outstanding += 1
        d: Deferred[Any] = self.upstream.queryUDP(msg.queries, self.timeouts)
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

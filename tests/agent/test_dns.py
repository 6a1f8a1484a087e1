"""The DNS proxy: VM names answered locally, the rest relayed from a real upstream
(a twisted.names server on loopback), SERVFAIL for ``none``, bounds and bad input."""

from __future__ import annotations

import ipaddress
from typing import Any, cast

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.names import client, dns, hosts, server
from twisted.trial.unittest import SynchronousTestCase, TestCase

from vrtwist.agent.packet.arp import VRRP_MAC
from vrtwist.agent.packet.dns import DnsProxy, VmName
from vrtwist.packet.headers import UDP, Ethernet, IPv4

VM_MAC = bytes.fromhex("020000000001")
VM_IP, DNS_IP = "10.1.1.11", "10.1.1.2"
NAMES = [VmName("vm1", "10.1.1.11"), VmName("vm2", "10.1.1.12", "fd00::12")]


def query(name: str, qtype: int = dns.A, ident: int = 77) -> bytes:
    msg = dns.Message(id=ident, recDes=1)
    msg.queries = [dns.Query(name, qtype)]
    payload = msg.toStr()
    udp = UDP(40000, 53, 8 + len(payload), 0).pack()
    ip = IPv4(src=ipaddress.IPv4Address(VM_IP).packed, dst=ipaddress.IPv4Address(DNS_IP).packed,
              proto=17, total_length=28 + len(payload), ident=1, ttl=64).pack()
    # a NEXTHOP trap carries the pkt0 next hop's rewrite, not the VM's MACs
    return Ethernet(bytes(6), bytes(6), 0x0800).pack() + ip + udp + payload


def answer_of(frame: bytes) -> tuple[Ethernet, IPv4, UDP, dns.Message]:
    eth = Ethernet.parse(frame)
    ip = IPv4.parse(frame, eth.length)
    udp = UDP.parse(frame, eth.length + 20)
    msg = dns.Message()
    msg.fromStr(frame[eth.length + 28 :])
    return eth, ip, udp, msg


def names_of(vrf: int) -> list[VmName]:
    return NAMES if vrf == 1 else []


class LocalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sent: list[bytes] = []
        self.proxy = DnsProxy(names_of, None)

    def ask(self, *args: Any, vrf: int = 1, vlan: int = -1) -> dns.Message:
        self.proxy.handle(vrf, query(*args), VM_MAC, vlan, self.sent.append)
        eth, ip, udp, msg = answer_of(self.sent[-1])
        self.assertEqual((eth.dst, eth.src), (VM_MAC, VRRP_MAC))
        self.assertEqual((str(ipaddress.IPv4Address(ip.src)), str(ipaddress.IPv4Address(ip.dst))),
                         (DNS_IP, VM_IP))
        self.assertEqual((udp.sport, udp.dport), (53, 40000))
        return msg

    def test_vm_names_forward_and_reverse(self) -> None:
        msg = self.ask("VM2")
        self.assertEqual((msg.id, msg.rCode, msg.auth), (77, dns.OK, 1))
        self.assertEqual([cast(dns.Record_A, a.payload).dottedQuad() for a in msg.answers], ["10.1.1.12"])
        msg = self.ask("vm2", dns.AAAA)
        self.assertEqual(len(msg.answers), 1)
        msg = self.ask("vm1", dns.AAAA)  # the name exists, no IPv6 address: empty NOERROR
        self.assertEqual((msg.rCode, msg.answers), (dns.OK, []))
        msg = self.ask("11.1.1.10.in-addr.arpa", dns.PTR)
        self.assertEqual(cast(Any, msg.answers[0].payload).name.name, b"vm1")
        self.assertEqual(self.proxy.counters.local, 4)

    def test_other_network_and_no_upstream_servfail(self) -> None:
        msg = self.ask("vm1", vrf=2)
        self.assertEqual((msg.rCode, msg.answers), (dns.ESERVER, []))
        self.assertEqual(self.proxy.counters.servfail, 1)

    def test_method_none_is_servfail(self) -> None:
        self.proxy = DnsProxy(names_of, None, "none")
        self.assertEqual(self.ask("vm1").rCode, dns.ESERVER)
        self.assertRaises(ValueError, DnsProxy, names_of, None, "bogus-dns-server")

    def test_malformed_dropped_and_counted(self) -> None:
        good = query("vm1")
        for bad in (good[:30], good[:-4], good[:42] + b"\xff" * 20, b""):
            self.proxy.handle(1, bad, VM_MAC, -1, self.sent.append)
        self.assertEqual((self.proxy.counters.malformed, self.sent), (4, []))
        self.assertEqual(cast(dns.Record_A, self.ask("vm1").answers[0].payload).dottedQuad(), "10.1.1.11")

    def test_vlan_tag(self) -> None:
        self.ask("vm1", vlan=9)
        self.assertEqual(Ethernet.parse(self.sent[-1]).vlans, (9,))


class UpstreamTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("192.0.2.80 www.example.org\n")
        factory = server.DNSServerFactory(authorities=[hosts.Resolver(path)])
        self.udp = cast(Any, reactor).listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(self.udp.stopListening)
        port = self.udp.getHost().port
        self.resolver = client.Resolver(servers=[("127.0.0.1", port)], reactor=reactor)
        self.sent: list[bytes] = []
        self.arrived: Deferred[None] = Deferred()

    def _send(self, frame: bytes) -> None:
        self.sent.append(frame)
        if not self.arrived.called:
            self.arrived.callback(None)

    @defer.inlineCallbacks
    def test_forwarded_and_relayed_with_the_vm_id(self) -> Any:
        proxy = DnsProxy(names_of, self.resolver)
        proxy.handle(1, query("www.example.org", ident=4242), VM_MAC, -1, self._send)
        self.assertEqual((proxy.outstanding, self.sent), (1, []))
        yield self.arrived
        msg = answer_of(self.sent[0])[3]
        self.assertEqual((msg.id, msg.rCode), (4242, dns.OK))
        self.assertEqual([cast(dns.Record_A, a.payload).dottedQuad() for a in msg.answers], ["192.0.2.80"])
        self.arrived = Deferred()
        proxy.handle(1, query("nope.example.org"), VM_MAC, -1, self._send)
        yield self.arrived
        self.assertEqual(answer_of(self.sent[1])[3].rCode, dns.ENAME)
        self.assertEqual((proxy.counters.forwarded, proxy.outstanding), (2, 0))

    @defer.inlineCallbacks
    def test_bounded_and_timeout_servfail(self) -> Any:
        # an upstream that never answers: a bound socket nobody reads
        silent = cast(Any, reactor).listenUDP(0, dns.DNSDatagramProtocol(None), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        silent.stopReading()
        mute = client.Resolver(servers=[("127.0.0.1", silent.getHost().port)], reactor=reactor)
        proxy = DnsProxy(names_of, mute, max_outstanding=2, timeouts=(1,))
        for i in range(3):
            proxy.handle(1, query(f"x{i}.example.org", ident=i), VM_MAC, -1, self._send)
        self.assertEqual((proxy.outstanding, proxy.counters.overload), (2, 1))
        yield self.arrived
        d: Deferred[None] = Deferred()
        reactor.callLater(0.3, d.callback, None)
        yield d
        self.assertEqual(sorted(answer_of(f)[3].rCode for f in self.sent), [dns.ESERVER] * 2)
        self.assertEqual((proxy.outstanding, proxy.counters.upstream_failures), (0, 2))
        # local names still answered while upstream is dead
        proxy.handle(1, query("vm1"), VM_MAC, -1, self._send)
        self.assertEqual(answer_of(self.sent[-1])[3].rCode, dns.OK)

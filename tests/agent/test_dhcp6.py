"""The DHCPv6 server: message exchange, options, reply framing and refusals."""

from __future__ import annotations

import ipaddress
import struct

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.agent.packet import dhcp6 as D6
from vrtwist.packet.checksum import checksum
from vrtwist.packet.headers import UDP, Ethernet, IPv6

VM_MAC = bytes.fromhex("020000000001")
VHOST = bytes.fromhex("525400123456")
VM_LL = ipaddress.IPv6Address("fe80::1").packed
ALL_SERVERS = ipaddress.IPv6Address("ff02::1:2").packed
CLIENT_DUID = bytes.fromhex("00030001") + VM_MAC
PORT = D6.Port6(VM_MAC, "fd00::11")


def request(kind: int, *options: tuple[int, bytes], mac: bytes = VM_MAC) -> bytes:
    payload = D6.build(kind, b"\x12\x34\x56", [(D6.OPT_CLIENTID, CLIENT_DUID), *options])
    udp = UDP(546, 547, 8 + len(payload), 0).pack() + payload
    ip6 = IPv6(VM_LL, ALL_SERVERS, 17, len(udp), 1).pack()
    return Ethernet(bytes.fromhex("333300010002"), mac, 0x86DD).pack() + ip6 + udp


IA_NA = (D6.OPT_IA_NA, b"\x00\x00\x00\x07" + bytes(8))


def server(port: D6.Port6 | None = PORT) -> D6.Dhcp6Server:
    return D6.Dhcp6Server(lambda vif: port if vif == 3 else None, lambda: VHOST)


def reply_of(frame: bytes) -> tuple[Ethernet, IPv6, UDP, D6.Dhcp6Message]:
    eth = Ethernet.parse(frame)
    ip6 = IPv6.parse(frame, eth.length)
    udp = UDP.parse(frame, eth.length + 40)
    body = frame[eth.length + 40 :]
    assert checksum(body, ip6.pseudo_sum(len(body))) == 0, "UDP checksum"
    return eth, ip6, udp, D6.parse(body[8:])


class Dhcp6Tests(SynchronousTestCase):
    def test_solicit_advertise(self) -> None:
        s = server()
        out = s.handle(3, request(D6.SOLICIT, IA_NA))
        assert out is not None
        eth, ip6, udp, msg = reply_of(out)
        self.assertEqual((eth.dst, eth.src, eth.ethertype), (VM_MAC, VHOST, 0x86DD))
        self.assertEqual((ip6.src, ip6.dst, ip6.hop_limit), (D6.SERVICE_LINK_LOCAL, VM_LL, 64))
        self.assertEqual((udp.sport, udp.dport), (547, 546))
        self.assertEqual((msg.kind, msg.xid), (D6.ADVERTISE, b"\x12\x34\x56"))
        self.assertEqual(msg.get(D6.OPT_SERVERID), bytes.fromhex("0003000000005e000100"))
        self.assertEqual(msg.get(D6.OPT_CLIENTID), CLIENT_DUID)
        ia = msg.get(D6.OPT_IA_NA)
        assert ia is not None
        iaid, t1, t2 = struct.unpack("!4sII", ia[:12])
        self.assertEqual((iaid, t1, t2), (b"\x00\x00\x00\x07", D6.INFINITE, D6.INFINITE))
        ((code, addr),) = D6._options(ia[12:])
        self.assertEqual(code, D6.OPT_IAADDR)
        self.assertEqual(str(ipaddress.IPv6Address(addr[:16])), "fd00::11")
        self.assertEqual(struct.unpack("!II", addr[16:]), (D6.INFINITE, D6.INFINITE))
        self.assertEqual(msg.get(D6.OPT_DNS_SERVERS), D6.SERVICE_LINK_LOCAL)
        self.assertIsNone(msg.get(D6.OPT_DOMAIN_LIST))
        self.assertEqual((s.counters.advertises, s.counters.by_vif), (1, {3: 1}))

    def test_request_renew_and_information_request(self) -> None:
        s = server(D6.Port6(VM_MAC, "fd00::11", dns6="fd00::2", domains=("example.org",)))
        sid = (D6.OPT_SERVERID, D6.SERVER_DUID)
        for kind in (D6.REQUEST, D6.RENEW):
            out = s.handle(3, request(kind, sid, IA_NA))
            assert out is not None
            msg = reply_of(out)[3]
            self.assertEqual(msg.kind, D6.REPLY)
            self.assertIsNotNone(msg.get(D6.OPT_IA_NA))
            self.assertEqual(msg.get(D6.OPT_DNS_SERVERS), ipaddress.IPv6Address("fd00::2").packed)
            self.assertEqual(msg.get(D6.OPT_DOMAIN_LIST), b"\x07example\x03org\x00")
        out = s.handle(3, request(D6.INFORMATION_REQUEST))
        assert out is not None
        msg = reply_of(out)[3]
        self.assertEqual(msg.kind, D6.REPLY)
        self.assertIsNone(msg.get(D6.OPT_IA_NA))
        self.assertEqual((s.counters.replies, s.counters.informs), (2, 1))

    def test_refusals_are_counted_not_answered(self) -> None:
        s = server()
        other = (D6.OPT_SERVERID, b"\x00\x03\x00\x01" + bytes(6))
        self.assertIsNone(s.handle(3, request(D6.REQUEST, other, IA_NA)))  # another server's
        self.assertIsNone(s.handle(3, request(D6.SOLICIT, mac=bytes(6))))  # not the port's MAC
        self.assertIsNone(s.handle(4, request(D6.SOLICIT)))  # no port
        self.assertIsNone(s.handle(3, request(D6.SOLICIT)[:-3]))  # option cut short
        self.assertIsNone(s.handle(3, b"\x00" * 20))
        self.assertIsNone(server(D6.Port6(VM_MAC, None)).handle(3, request(D6.SOLICIT)))
        c = s.counters
        self.assertEqual((c.ignored, c.unknown_client, c.malformed, c.received), (1, 2, 2, 5))
        self.assertEqual(c.by_vif, {})
        # after all that, the next good request is still answered
        self.assertIsNotNone(s.handle(3, request(D6.SOLICIT, IA_NA)))

    def test_vlan_tag(self) -> None:
        out = server(D6.Port6(VM_MAC, "fd00::11", tx_vlan=5)).handle(3, request(D6.SOLICIT))
        assert out is not None
        self.assertEqual(Ethernet.parse(out).vlans, (5,))

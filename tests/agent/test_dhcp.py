"""The agent's DHCP server, frame in, frame out, against the real agent's reply layout."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.agent.packet.dhcp import INFINITE, SHORT_LEASE, DhcpServer, PortLease, lease_for
from vrtwist.packet import dhcp as D
from vrtwist.packet.headers import ETH_P_IP, IPPROTO_UDP, UDP, Ethernet, IPv4
from vrtwist.pkt0.codec import encode_command

VM_MAC = bytes.fromhex("02aabbccdd01")
VHOST_MAC = bytes.fromhex("525400123456")
PORT = PortLease(VM_MAC, "10.1.1.3", 24, "10.1.1.1", "10.1.1.2", "vm1", vif_index=3)

#: the 371 bytes the real agent writes to pkt0 for this OFFER (computed from its code)
OFFER_ON_PKT0 = bytes.fromhex(
    "000000000002 000000000001 0800"
    "0003 0001 0000 00000000 00000000 00000000 00000000 00000000 00 000000"
    "02aabbccdd01 525400123456 0800"
    "4500 0139 0000 0000 4011 63ae 0a010102 0a010103"
    "0043 0044 0125 0000"
    "02010600 11223344 0000 0000 00000000 0a010103 0a010102 00000000"
    "02aabbccdd01" + "00" * 10 + "00" * 64 + "00" * 128 +
    "63825363 350102 36040a010102 0104ffffff00 1c040a0101ff"
    "3304ffffffff 03040a010101 0c03766d31 06040a010102 ff"
)


def request(kind: int, mac: bytes = VM_MAC, flags: int = 0, ciaddr: bytes = bytes(4),
            options: list[tuple[int, bytes]] | None = None, xid: int = 0x11223344) -> bytes:
    msg = D.DhcpMessage(1, xid, 0, flags, ciaddr, bytes(4), bytes(4), bytes(4), mac, {})
    payload = D.build(msg, [(53, bytes((kind,))), *(options or [])])
    udp = UDP(68, 67, 8 + len(payload)).pack()
    ip = IPv4(bytes(4), b"\xff" * 4, IPPROTO_UDP, 20 + 8 + len(payload)).pack()
    return Ethernet(b"\xff" * 6, mac, ETH_P_IP).pack() + ip + udp + payload


def server(port: PortLease | None = PORT) -> DhcpServer:
    return DhcpServer(lambda vif: port if vif == 3 else None, lambda: VHOST_MAC)


def reply_of(frame: bytes) -> tuple[Ethernet, IPv4, D.DhcpMessage, list[int]]:
    eth = Ethernet.parse(frame)
    ip = IPv4.parse(frame, eth.length)
    payload = frame[eth.length + 28 :]
    msg = D.parse(payload)
    order, i = [], D.BOOTP_LEN + 4
    while payload[i] != 255:
        order.append(payload[i])
        i += 2 + payload[i + 1]
    return eth, ip, msg, order


class OfferTests(SynchronousTestCase):
    def test_worked_example_byte_for_byte(self) -> None:
        """DISCOVER from vm1: the OFFER on pkt0 is the real agent's 371 bytes."""
        dhcp = server()
        reply = dhcp.handle(3, request(D.MSG["discover"]))
        assert reply is not None
        self.assertEqual(encode_command(3, 1, 0, reply), OFFER_ON_PKT0)
        self.assertEqual(len(OFFER_ON_PKT0), 371)
        self.assertEqual(dhcp.counters.offers, 1)

    def test_broadcast_flag(self) -> None:
        """With the broadcast flag the reply goes to ff:ff:ff:ff:ff:ff / 255.255.255.255."""
        reply = server().handle(3, request(1, flags=D.BROADCAST_FLAG))
        assert reply is not None
        eth, ip, msg, _ = reply_of(reply)
        self.assertEqual((eth.dst, ip.dst), (b"\xff" * 6, b"\xff" * 4))
        self.assertEqual(msg.flags, D.BROADCAST_FLAG)

    def test_request_ack_and_nak(self) -> None:
        """REQUEST for the port's address is ACKed; for another address NAKed."""
        dhcp = server()
        ack = dhcp.handle(3, request(3, options=[(50, bytes((10, 1, 1, 3)))]))
        assert ack is not None
        _, _, msg, order = reply_of(ack)
        self.assertEqual(msg.message_type, D.MSG["ack"])
        self.assertEqual(order, [53, 54, 1, 28, 51, 3, 12, 6])
        nak = dhcp.handle(3, request(3, options=[(50, bytes((10, 1, 1, 9)))]))
        assert nak is not None
        _, _, msg, order = reply_of(nak)
        self.assertEqual(msg.message_type, D.MSG["nak"])
        self.assertEqual(order, [53, 54, 56])
        self.assertEqual((msg.yiaddr, msg.siaddr, msg.options[54]), (bytes(4),) * 3)
        self.assertEqual(msg.options[56], b"cannot assign requested address")
        self.assertEqual((dhcp.counters.acks, dhcp.counters.naks), (1, 1))

    def test_renewal_without_option_50_is_acked_unicast(self) -> None:
        """A renewal (ciaddr set, no option 50) is ACKed, unicast to the lease address."""
        ack = server().handle(3, request(3, ciaddr=bytes((10, 1, 1, 3))))
        assert ack is not None
        eth, ip, msg, _ = reply_of(ack)
        self.assertEqual((eth.dst, ip.dst), (VM_MAC, bytes((10, 1, 1, 3))))
        self.assertEqual(msg.ciaddr, bytes(4))

    def test_inform(self) -> None:
        """INFORM: ACK with yiaddr 0 and no lease time."""
        reply = server().handle(3, request(8, ciaddr=bytes((10, 1, 1, 3)), flags=D.BROADCAST_FLAG))
        assert reply is not None
        eth, _ip, msg, order = reply_of(reply)
        self.assertEqual(msg.yiaddr, bytes(4))
        self.assertNotIn(51, order)
        self.assertEqual(eth.dst, VM_MAC)

    def test_vlan_tag(self) -> None:
        """A port with a tx VLAN gets the reply tagged."""
        port = PortLease(VM_MAC, "10.1.1.3", 24, "10.1.1.1", None, "vm1", tx_vlan=100)
        reply = server(port).handle(3, request(1))
        assert reply is not None
        eth, _, msg, _ = reply_of(reply)
        self.assertEqual(eth.vlans, (100,))
        self.assertEqual(msg.siaddr, bytes((10, 1, 1, 1)))  # no DNS: the gateway serves


class LeaseTests(SynchronousTestCase):
    def test_lease_data(self) -> None:
        """Subnet known: infinite lease; not known: /32 for 4 s; no address: link-local."""
        self.assertEqual(lease_for(PORT).lease_time, INFINITE)
        short = lease_for(PortLease(VM_MAC, "10.1.1.3"))
        self.assertEqual((short.plen, short.lease_time, short.gateway), (32, SHORT_LEASE, bytes(4)))
        ll = lease_for(PortLease(VM_MAC, None, vif_index=0x107))
        self.assertEqual((ll.ip, ll.plen), (bytes((169, 254, 0, 7)), 16))

    def test_short_lease_reply(self) -> None:
        """A /32 lease carries mask 255.255.255.255, no router and no DNS."""
        reply = server(PortLease(VM_MAC, "10.1.1.3", vm_name="vm1")).handle(3, request(1))
        assert reply is not None
        _, ip, msg, order = reply_of(reply)
        self.assertEqual(order, [53, 54, 1, 28, 51, 12])
        self.assertEqual(msg.options[51], SHORT_LEASE.to_bytes(4, "big"))
        self.assertEqual(ip.src, bytes(4))


class RefusalTests(SynchronousTestCase):
    def test_unknown_client(self) -> None:
        """Another MAC on the port, or a vif with no port: no answer, counted."""
        dhcp = server()
        self.assertIsNone(dhcp.handle(3, request(1, mac=bytes.fromhex("02aabbccdd02"))))
        self.assertIsNone(dhcp.handle(4, request(1)))
        self.assertEqual(dhcp.counters.unknown_client, 2)
        self.assertIsNotNone(dhcp.handle(3, request(1)))

    def test_disabled(self) -> None:
        """A port with DHCP disabled gets no answer."""
        dhcp = server(PortLease(VM_MAC, "10.1.1.3", dhcp_enabled=False))
        self.assertIsNone(dhcp.handle(3, request(1)))
        self.assertEqual(dhcp.counters.disabled, 1)

    def test_ignored_types(self) -> None:
        """DECLINE, RELEASE and unknown types are counted, not answered."""
        dhcp = server()
        for kind in (4, 7, 99):
            self.assertIsNone(dhcp.handle(3, request(kind)))
        c = dhcp.counters
        self.assertEqual((c.declines, c.releases, c.ignored), (1, 1, 1))

    def test_malformed(self) -> None:
        """Truncated, cookie-less, broken options, not UDP: dropped and counted; then a good one works."""
        good = request(1)
        bad_cookie = bytearray(good)
        bad_cookie[42 + D.BOOTP_LEN] ^= 0xFF
        broken_option = good[:-1] + b"\x35\x09\x01"  # option 53 claiming 9 bytes
        not_udp = bytearray(good)
        not_udp[23] = 6
        dhcp = server()
        for junk in (b"", good[:100], bytes(bad_cookie), broken_option, bytes(not_udp)):
            self.assertIsNone(dhcp.handle(3, junk))
        self.assertEqual(dhcp.counters.malformed, 5)
        self.assertIsNotNone(dhcp.handle(3, good))

    @settings(max_examples=300)
    @given(st.binary(max_size=400))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Any bytes: an answer or None, never an exception."""
        frame = request(1)[:42] + data
        reply = server().handle(3, frame)
        self.assertTrue(reply is None or isinstance(reply, bytes))


class CodecTests(SynchronousTestCase):
    def test_options_split_and_joined(self) -> None:
        """Values over 255 bytes are split and joined again (RFC 3396)."""
        long = bytes(range(256)) * 2
        payload = D.build(D.DhcpMessage(1, 1, 0, 0, bytes(4), bytes(4), bytes(4), bytes(4), VM_MAC, {}), [(77, long)])
        self.assertEqual(D.parse(payload).options[77], long)

    def test_bad_builds(self) -> None:
        """Bad field widths and option codes are refused with the field named."""
        msg = D.DhcpMessage(1, 1, 0, 0, bytes(3), bytes(4), bytes(4), bytes(4), VM_MAC, {})
        with self.assertRaisesRegex(D.DhcpError, "ciaddr"):
            D.build(msg, [])
        with self.assertRaisesRegex(D.DhcpError, "option code"):
            D.encode_options([(255, b"")])

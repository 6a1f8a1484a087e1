"""Header codecs: golden byte vectors, round trips, and every truncation refused."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.packet import pcap
from vrtwist.packet.checksum import checksum, checksum_update16, ipv4_ttl_decrement
from vrtwist.packet.headers import (
    ARP,
    GRE,
    GRE_K,
    ICMP,
    MPLS,
    TCP,
    TCP_ACK,
    TCP_SYN,
    UDP,
    VXLAN,
    Ethernet,
    IPv4,
    IPv6,
    PacketError,
    header_checksum_ok,
    l4_checksum,
    parse_udp4,
    vlan_insert,
)

# the vtest input frame (Ethernet + IPv4 + UDP header)
VTEST = bytes.fromhex(
    "deadbeef0001deadbeef000208004500006c000100004011747b01010101020202021f001f00005879a7"
)
MACS = st.binary(min_size=6, max_size=6)
ADDR4 = st.binary(min_size=4, max_size=4)
ADDR6 = st.binary(min_size=16, max_size=16)
U16 = st.integers(0, 0xFFFF)
U8 = st.integers(0, 0xFF)


class GoldenTests(SynchronousTestCase):
    def test_vtest_frame(self) -> None:
        eth = Ethernet.parse(VTEST)
        self.assertEqual(
            eth, Ethernet(bytes.fromhex("deadbeef0001"), bytes.fromhex("deadbeef0002"), 0x0800)
        )
        ip = IPv4.parse(VTEST, 14)
        self.assertEqual((ip.src, ip.dst, ip.proto, ip.total_length, ip.ident, ip.ttl), (
            b"\x01\x01\x01\x01", b"\x02\x02\x02\x02", 17, 0x6C, 1, 64))  # fmt: skip
        self.assertEqual(ip.csum, 0x747B)
        self.assertEqual(ip.pack(), VTEST[14:34])  # the checksum is recomputed equal
        self.assertTrue(header_checksum_ok(VTEST, 14))
        self.assertEqual(UDP.parse(VTEST, 34), UDP(7936, 7936, 0x58, 0x79A7))
        self.assertEqual(eth.pack() + ip.pack() + UDP.parse(VTEST, 34).pack(), VTEST)

    def test_ttl_decrement_rfc1624(self) -> None:
        buf = bytearray(VTEST)
        self.assertEqual(ipv4_ttl_decrement(buf, 14), 63)
        # the mplsogre vtest: TTL 64 -> 63, checksum 0x747b -> 0x757b
        self.assertEqual(buf[14 + 8], 63)
        self.assertEqual(buf[14 + 10 : 14 + 12].hex(), "757b")
        self.assertTrue(header_checksum_ok(buf, 14))
        self.assertEqual(buf[:22] + buf[23:24] + buf[26:], VTEST[:22] + VTEST[23:24] + VTEST[26:])
        zero = bytearray(VTEST)
        zero[22] = 0
        self.assertRaises(ValueError, ipv4_ttl_decrement, zero, 14)
        self.assertEqual(zero[22], 0)

    def test_checksum_vectors(self) -> None:
        # RFC 1071 example words 0001 f203 f4f5 f6f7 sum to 0xddf2 -> checksum 0x220d
        self.assertEqual(checksum(bytes.fromhex("0001f203f4f5f6f7")), 0x220D)
        self.assertEqual(checksum(b""), 0xFFFF)
        self.assertEqual(checksum(b"\x00\x00"), 0xFFFF)
        self.assertEqual(checksum(b"\x01"), 0xFEFF)  # odd length padded with a zero byte
        self.assertEqual(checksum_update16(0x747B, 0x4011, 0x3F11), 0x757B)

    def test_outer_headers_of_mplsoudp_vtest(self) -> None:
        frame = bytes.fromhex(
            "deadbeef0001deadbeef00020800"
            "4500008c000100004011745b0101020202020101"
            "eb0619eb00780000" "0003013f"
        )  # fmt: skip
        ip = IPv4.parse(frame, 14)
        self.assertEqual(IPv4(ip.src, ip.dst, 17, 0x8C, 1, 64).pack(), frame[14:34])
        self.assertEqual(UDP.parse(frame, 34), UDP(60166, 6635, 120, 0))
        self.assertEqual(MPLS.parse(frame, 42), MPLS(48, 63, True, 0))
        self.assertEqual(MPLS(48, 63).pack(), frame[42:46])
        self.assertEqual(GRE(0x8847).pack(), bytes.fromhex("00008847"))
        self.assertEqual(VXLAN(48).pack(), bytes.fromhex("0800000000003000"))

    def test_vlan_and_arp(self) -> None:
        tagged = vlan_insert(VTEST, 5)
        self.assertEqual(tagged[12:16], b"\x81\x00\x00\x05")
        eth = Ethernet.parse(tagged)
        self.assertEqual((eth.vlans, eth.ethertype, eth.length), ((5,), 0x0800, 18))
        self.assertEqual(eth.pack(), tagged[:18])
        arp = ARP(1, b"\x02" * 6, b"\x0a\x00\x00\x01", bytes(6), b"\x0a\x00\x00\x02")
        raw = arp.pack()
        self.assertEqual(raw.hex(), "00010800060400010202020202020a000001" + "00" * 6 + "0a000002")
        self.assertEqual(ARP.parse(raw), arp)

    def test_tcp_icmp_ipv6(self) -> None:
        tcp = TCP(1, 2, 3, 4, TCP_SYN | TCP_ACK, options=b"\x02\x04\x05\xb4")
        self.assertEqual(TCP.parse(tcp.pack()), tcp)
        self.assertEqual(tcp.header_length, 24)
        icmp = ICMP(8, 0, 0, 0x12340001)
        self.assertEqual((ICMP.parse(icmp.pack()).ident, len(icmp.pack())), (0x1234, 8))
        ip6 = IPv6(b"\xfe\x80" + bytes(14), b"\xff\x02" + bytes(13) + b"\x01", 58, 8, 255)
        self.assertEqual(IPv6.parse(ip6.pack()), ip6)
        # ICMPv6 echo checksum over the pseudo header verifies to zero
        seg = bytearray(ICMP(128, 0, 0, 1).pack())
        seg[2:4] = l4_checksum(ip6, seg).to_bytes(2, "big")
        self.assertEqual(l4_checksum(ip6, seg), 0)


class RefusalTests(SynchronousTestCase):
    """Every short or malformed header raises PacketError, and the buffer is untouched."""

    def check(self, parser: object, data: bytes, *args: int) -> None:
        before = bytes(data)
        self.assertRaises(PacketError, parser, data, *args)
        self.assertEqual(data, before)

    def test_truncations(self) -> None:
        for n in range(14):
            self.check(Ethernet.parse, VTEST[:n])
        self.check(Ethernet.parse, vlan_insert(VTEST, 1)[:16])
        for n in range(14, 34):
            self.check(IPv4.parse, VTEST[:n], 14)
        self.check(UDP.parse, VTEST[:41], 34)
        self.check(ARP.parse, bytes(27))
        self.check(IPv6.parse, bytes(39))
        self.check(TCP.parse, bytes(19))
        self.check(ICMP.parse, bytes(7))
        self.check(MPLS.parse, bytes(3))
        self.check(GRE.parse, bytes(3))
        self.check(GRE.parse, bytes.fromhex("20008847"))  # K bit, key missing
        self.check(VXLAN.parse, bytes(7))
        self.check(Ethernet.parse, VTEST, -1)

    def test_malformed(self) -> None:
        bad = bytearray(VTEST)
        bad[14] = 0x44  # IHL 4
        self.check(IPv4.parse, bytes(bad), 14)
        bad[14] = 0x65  # version 6
        self.check(IPv4.parse, bytes(bad), 14)
        bad[14], bad[16], bad[17] = 0x45, 0, 10  # total length < header
        self.check(IPv4.parse, bytes(bad), 14)
        self.check(IPv6.parse, b"\x40" + bytes(39))
        self.check(UDP.parse, bytes.fromhex("0001000200070000"))
        self.check(TCP.parse, bytes(12) + b"\x40" + bytes(7))
        self.check(GRE.parse, bytes.fromhex("00018847"))  # version 1
        arp = bytearray(ARP(1, bytes(6), bytes(4), bytes(6), bytes(4)).pack())
        arp[7] = 3
        self.check(ARP.parse, bytes(arp))
        arp[7], arp[4] = 1, 8
        self.check(ARP.parse, bytes(arp))
        self.assertRaises(PacketError, MPLS(1 << 20).pack)
        self.assertRaises(PacketError, VXLAN(1 << 24).pack)
        self.assertRaises(PacketError, Ethernet(b"x", bytes(6), 0).pack)
        self.assertRaises(PacketError, IPv4(bytes(4), bytes(4), 1, 20, options=b"x").pack)


class RoundTripTests(SynchronousTestCase):
    @given(MACS, MACS, U16, st.lists(U16, max_size=3))
    def test_ethernet(self, dst: bytes, src: bytes, etype: int, vlans: list[int]) -> None:
        if etype == 0x8100:
            etype = 0x0800
        eth = Ethernet(dst, src, etype, tuple(vlans))
        self.assertEqual(Ethernet.parse(eth.pack() + b"payload"), eth)

    @given(ADDR4, ADDR4, U8, st.integers(20, 0xFFFF), U16, U8, U8, U16, st.integers(0, 10))
    def test_ipv4(
        self, s: bytes, d: bytes, p: int, tl: int, i: int, t: int, tos: int, f: int, o: int
    ) -> None:
        tl = max(tl, 20 + 4 * o)
        ip = IPv4(s, d, p, tl, i, t, tos, f, 0, bytes(4 * o))
        raw = ip.pack()
        self.assertEqual(checksum(raw), 0)
        self.assertEqual(IPv4.parse(raw), ip._replace(csum=int.from_bytes(raw[10:12], "big")))

    @given(U8, st.integers(1, 0xFF))
    def test_ttl_update_matches_recompute(self, tos: int, ttl: int) -> None:
        raw = bytearray(IPv4(b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 6, 40, 7, ttl, tos).pack())
        ipv4_ttl_decrement(raw, 0)
        self.assertEqual(checksum(raw), 0)

    @given(ADDR6, ADDR6, U8, U16, U8, U8, st.integers(0, 0xFFFFF))
    def test_ipv6(self, s: bytes, d: bytes, n: int, pl: int, h: int, tc: int, fl: int) -> None:
        ip = IPv6(s, d, n, pl, h, tc, fl)
        self.assertEqual(IPv6.parse(ip.pack()), ip)

    @given(U16, U16, st.integers(8, 0xFFFF), U16)
    def test_udp(self, a: int, b: int, n: int, c: int) -> None:
        self.assertEqual(UDP.parse(UDP(a, b, n, c).pack()), UDP(a, b, n, c))

    @given(
        U16, U16, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 0x1FF), U16
    )
    def test_tcp(self, a: int, b: int, s: int, k: int, f: int, w: int) -> None:
        t = TCP(a, b, s, k, f, w)
        self.assertEqual(TCP.parse(t.pack()), t)

    @given(st.integers(0, (1 << 20) - 1), U8, st.booleans(), st.integers(0, 7))
    def test_mpls(self, label: int, ttl: int, bottom: bool, exp: int) -> None:
        m = MPLS(label, ttl, bottom, exp)
        self.assertEqual(MPLS.parse(m.pack()), m)

    @given(U16, st.integers(0, 2**32 - 1))
    def test_gre_and_vxlan(self, proto: int, key: int) -> None:
        g = GRE(proto, GRE_K, key)
        self.assertEqual(GRE.parse(g.pack()), g)
        self.assertEqual(g.length, 8)
        v = VXLAN(key >> 8)
        self.assertEqual(VXLAN.parse(v.pack()), v)

    @given(st.lists(st.binary(max_size=200), max_size=5))
    def test_pcap(self, frames: list[bytes]) -> None:
        data = pcap.dumps(frames)
        header, records = pcap.parse(data)
        self.assertEqual([r.data for r in records], frames)
        self.assertEqual(header.network, pcap.LINKTYPE_ETHERNET)


class PcapTests(SynchronousTestCase):
    def test_records_and_errors(self) -> None:
        rec = pcap.PcapRecord(1.5, b"abc", 10)
        data = pcap.dumps([rec])
        _, (got,) = pcap.parse(data)
        self.assertEqual(got, rec)
        out = io.BytesIO()
        pcap.write(out, [b"x"])
        self.assertEqual(pcap.parse(out.getvalue())[1][0].data, b"x")
        self.assertRaises(PacketError, pcap.parse, data[:20])
        self.assertRaises(PacketError, pcap.parse, b"\x00" * 24)
        self.assertRaises(PacketError, pcap.parse, data[:-1])  # record cut short
        self.assertRaises(PacketError, pcap.parse, data[:30])  # record header cut short
        # big-endian nanosecond files are read too
        be = bytes.fromhex("a1b23c4d0002000400000000000000000000010000000001")
        be += bytes.fromhex("00000002000000050000000100000001") + b"z"
        header, (r,) = pcap.parse(be)
        self.assertTrue(header.nanoseconds)
        self.assertEqual((r.timestamp, r.data), (2 + 5e-9, b"z"))


class UdpPayloadTests(SynchronousTestCase):
    """``parse_udp4``: the headers and the payload cut to the shortest stated length."""

    def frame(self, payload: bytes, *, proto: int = 17, frag: int = 0, extra: bytes = b"") -> bytes:
        udp = UDP(68, 67, 8 + len(payload)).pack() + payload
        ip = IPv4(src=bytes(4), dst=bytes([255] * 4), proto=proto, total_length=20 + len(udp),
                  frag=frag).pack()
        return Ethernet(bytes([255] * 6), bytes(6), 0x0800).pack() + ip + udp + extra

    def test_payload_ends_at_the_udp_length(self) -> None:
        ip, udp, payload = parse_udp4(self.frame(b"hello", extra=b"padding"))
        self.assertEqual((ip.proto, udp.sport, udp.dport, bytes(payload)), (17, 68, 67, b"hello"))

    def test_refused(self) -> None:
        for bad in (self.frame(b"x", proto=6), self.frame(b"x", frag=0x2000),
                    VTEST[:40], b"\x00" * 12 + b"\x86\xdd" + bytes(60)):
            self.assertRaises(PacketError, parse_udp4, bad)

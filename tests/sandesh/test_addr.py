"""The "network-order bytes held in a host integer" helpers (spec 1.7)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.sandesh import (
    decode,
    encode,
    int_to_ipv4,
    int_to_port,
    ip_to_list,
    ip_to_u64_pair,
    ipv4_to_int,
    ipv6_to_u64_pair,
    list_to_ip,
    list_to_mac,
    mac_to_list,
    port_to_int,
    prefix_to_route,
    route_to_prefix,
    schema,
    u64_pair_to_ip,
    u64_pair_to_ipv6,
)
from vrtwist.sandesh.constants import AF_INET, AF_INET6


class AddressTests(SynchronousTestCase):
    def test_spec_example(self) -> None:
        """IPv4 1.2.3.4 in vifr_ip is 0x04030201 and travels as 04 03 02 01."""
        self.assertEqual(ipv4_to_int("1.2.3.4"), 0x04030201)
        data = encode(schema.vr_interface_req(vifr_ip=ipv4_to_int("1.2.3.4")))
        self.assertIn(bytes.fromhex("140027 04030201"), data)
        self.assertEqual(int_to_ipv4(decode(data)[0].vifr_ip), "1.2.3.4")

    def test_ipv4_signed_form(self) -> None:
        self.assertEqual(int_to_ipv4(-1), "255.255.255.255")
        self.assertEqual(int_to_ipv4(ipv4_to_int("10.0.0.200") - (1 << 32)), "10.0.0.200")

    def test_ipv4_strict(self) -> None:
        for bad in ("1.2.3", "1", "256.1.1.1", "::1", "", "a.b.c.d"):
            self.assertRaises(ValueError, ipv4_to_int, bad)

    def test_ipv6_pair(self) -> None:
        u, l = ipv6_to_u64_pair("2001:db8::1")
        self.assertEqual(u, int.from_bytes(bytes.fromhex("20010db800000000"), "little"))
        self.assertEqual(l, int.from_bytes(bytes.fromhex("0000000000000001"), "little"))
        self.assertEqual(u64_pair_to_ipv6(u, l), "2001:db8::1")
        self.assertEqual(u64_pair_to_ipv6(u - (1 << 64), l), "2001:db8::1")

    def test_flow_key_form(self) -> None:
        self.assertEqual(ip_to_u64_pair("10.1.1.3"), (0, ipv4_to_int("10.1.1.3")))
        self.assertEqual(u64_pair_to_ip(*ip_to_u64_pair("10.1.1.3"), AF_INET), "10.1.1.3")
        self.assertEqual(u64_pair_to_ip(*ip_to_u64_pair("fe80::5"), AF_INET6), "fe80::5")
        self.assertRaises(ValueError, u64_pair_to_ip, 0, 0, 7)

    def test_byte_lists(self) -> None:
        self.assertEqual(ip_to_list("10.1.2.3"), [10, 1, 2, 3])
        self.assertEqual(list_to_ip([10, 1, 2, 3]), "10.1.2.3")
        self.assertEqual(list_to_ip(ip_to_list("::ffff:1.2.3.4")), "::ffff:102:304")
        self.assertRaises(ValueError, list_to_ip, [1, 2, 3])

    def test_mac(self) -> None:
        self.assertEqual(mac_to_list("00:00:5e:00:01:0A"), [0, 0, 0x5E, 0, 1, 10])
        self.assertEqual(mac_to_list("0-1-2-3-4-5"), [0, 1, 2, 3, 4, 5])
        self.assertEqual(list_to_mac([0, 0, 0x5E, 0, 1, 10]), "00:00:5e:00:01:0a")
        self.assertEqual(list_to_mac([-1, 2]), "ff:02")
        for bad in (
            "00:00:5e:00:01",
            "00:00:5e:00:01:00:11",
            "zz:00:00:00:00:00",
            "000:0:0:0:0:0",
            "",
        ):
            with self.assertRaises(ValueError, msg=bad):
                mac_to_list(bad)

    def test_ports(self) -> None:
        self.assertEqual(port_to_int(80), 0x5000)
        self.assertEqual(int_to_port(0x5000), 80)
        self.assertEqual(int_to_port(port_to_int(33000) - (1 << 16)), 33000)
        self.assertRaises(ValueError, port_to_int, 65536)
        self.assertRaises(ValueError, port_to_int, -1)
        # nhr_tun_sport is an i16: htons(53000) does not fit as signed but encodes anyway.
        msg = schema.vr_nexthop_req(nhr_tun_sport=port_to_int(53000))
        self.assertEqual(int_to_port(decode(encode(msg))[0].nhr_tun_sport), 53000)

    def test_prefix(self) -> None:
        self.assertEqual(prefix_to_route("10.1.1.7/24"), (AF_INET, [10, 1, 1, 0], 24))
        fam, pfx, plen = prefix_to_route("2001:db8::/32")
        self.assertEqual((fam, len(pfx), plen), (AF_INET6, 16, 32))
        self.assertEqual(route_to_prefix([10, 1, 1, 0], 24), "10.1.1.0/24")
        self.assertRaises(ValueError, prefix_to_route, "10.1.1.0/33")

    @settings(max_examples=50, deadline=None, derandomize=True)
    @given(
        st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1), st.binary(min_size=16, max_size=16)
    )
    def test_round_trips(self, v4: int, port: int, v6: bytes) -> None:
        self.assertEqual(ipv4_to_int(int_to_ipv4(v4)), v4)
        self.assertEqual(int_to_port(port_to_int(port)), port)
        a = list_to_ip(v6)
        self.assertEqual(u64_pair_to_ipv6(*ipv6_to_u64_pair(a)), a)

"""Inet/inet6 routes: longest-prefix match, masking, dump order and markers, errors."""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.datapath import constants as C
from vrtwist.datapath.routes import RouteTables, VrfRoutes, prefix_text
from vrtwist.datapath.tables import TableError, Tables


def v4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


class RouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = Tables()
        self.t.interface_add({"vifr_idx": 1, "vifr_type": C.VIF_TYPE_VIRTUAL, "vifr_mac": bytes(6)})
        for nh_id in (10, 11, 12):
            self.t.nexthop_add(
                {
                    "nhr_id": nh_id,
                    "nhr_type": C.NH_ENCAP,
                    "nhr_family": C.AF_INET,
                    "nhr_encap_oif_id": 1,
                    "nhr_encap": bytes(14),
                    "nhr_flags": 1,
                }
            )
        self.r = RouteTables(self.t)

    def add(self, prefix: str, nh: int, vrf: int = 0, **kw: Any) -> None:
        net = ipaddress.ip_network(prefix, strict=False)
        family = C.AF_INET if net.version == 4 else C.AF_INET6
        req = {
            "rtr_family": family,
            "rtr_vrf_id": vrf,
            "rtr_prefix": ipaddress.ip_address(prefix.split("/")[0]).packed,
            "rtr_prefix_len": net.prefixlen,
            "rtr_nh_id": nh,
        }
        req.update(kw)
        self.r.add(req)

    def lookup(self, addr: str, vrf: int = 0) -> tuple[int, int]:
        ip = ipaddress.ip_address(addr)
        family = C.AF_INET if ip.version == 4 else C.AF_INET6
        got = self.r.get({"rtr_family": family, "rtr_vrf_id": vrf, "rtr_prefix": ip.packed})
        return got["rtr_nh_id"], got["rtr_prefix_len"]

    def test_longest_prefix_wins(self) -> None:
        self.add("0.0.0.0/0", 10)
        self.add("10.0.0.0/8", 11)
        self.add("10.1.2.0/24", 12)
        self.assertEqual(self.lookup("10.1.2.3"), (12, 24))
        self.assertEqual(self.lookup("10.9.9.9"), (11, 8))
        self.assertEqual(self.lookup("192.0.2.1"), (10, 0))
        self.assertEqual(self.lookup("10.1.2.3", vrf=1), (0, 0))  # miss: discard NH

    def test_host_bits_masked(self) -> None:
        self.add("10.1.2.77/24", 12)
        got = list(self.r.dump({"rtr_family": C.AF_INET, "rtr_vrf_id": 0}))
        self.assertEqual(got[0]["rtr_prefix"], v4("10.1.2.0"))

    def test_ipv6(self) -> None:
        self.add("2001:db8::/32", 10)
        self.add("2001:db8::1/128", 11)
        self.assertEqual(self.lookup("2001:db8::1"), (11, 128))
        self.assertEqual(self.lookup("2001:db8::2"), (10, 32))
        self.assertEqual(self.lookup("2001:db9::2"), (0, 0))

    def test_vrfs_are_separate(self) -> None:
        self.add("10.0.0.0/8", 11, vrf=2)
        self.assertEqual(self.lookup("10.0.0.1", vrf=2), (11, 8))
        self.assertEqual(self.lookup("10.0.0.1", vrf=0), (0, 0))

    def test_references(self) -> None:
        self.add("10.0.0.0/8", 11)
        self.assertEqual(self.t.nexthops[11].users, 2)
        self.add("10.0.0.0/8", 12)
        self.assertEqual(self.t.nexthops[11].users, 1)
        self.assertEqual(self.t.nexthops[12].users, 2)
        self.r.delete(
            {
                "rtr_family": C.AF_INET,
                "rtr_prefix": v4("10.0.0.0"),
                "rtr_prefix_len": 8,
                "rtr_nh_id": 0,
            }
        )
        self.assertEqual(self.t.nexthops[12].users, 1)
        self.assertEqual(self.lookup("10.0.0.1"), (0, 0))

    def test_errors(self) -> None:
        def code(f: Any, req: dict[str, Any]) -> int:
            return self.assertRaises(TableError, f, req).errno

        base = {"rtr_family": C.AF_INET, "rtr_prefix": v4("10.0.0.0"), "rtr_prefix_len": 8}
        self.assertEqual(code(self.r.add, dict(base, rtr_nh_id=99)), errno.ENOENT)
        self.assertEqual(
            code(self.r.add, dict(base, rtr_nh_id=10, rtr_prefix_len=33)), errno.EINVAL
        )
        self.assertEqual(code(self.r.add, dict(base, rtr_nh_id=10, rtr_vrf_id=4096)), errno.EINVAL)
        self.assertEqual(code(self.r.add, dict(base, rtr_nh_id=10, rtr_prefix=b"")), errno.EINVAL)
        self.assertEqual(
            code(self.r.add, dict(base, rtr_nh_id=10, rtr_prefix=b"\1\2")), errno.EINVAL
        )
        self.add("10.0.0.0/8", 10)
        self.assertEqual(code(self.r.delete, dict(base, rtr_nh_id=99)), errno.ENOENT)
        self.assertEqual(code(self.r.delete, dict(base, rtr_vrf_id=5, rtr_nh_id=0)), errno.ENOENT)
        # nothing was lost
        self.assertEqual(self.lookup("10.0.0.1"), (10, 8))

    def test_tunnel_needs_label(self) -> None:
        self.t.nexthop_add(
            {
                "nhr_id": 20,
                "nhr_type": C.NH_TUNNEL,
                "nhr_family": C.AF_INET,
                "nhr_encap_oif_id": 1,
                "nhr_tun_sip": 1,
                "nhr_tun_dip": 2,
                "nhr_flags": C.NH_FLAG_VALID | C.NH_FLAG_TUNNEL_UDP_MPLS,
            }
        )
        e = self.assertRaises(TableError, self.add, "10.0.0.0/8", 20)
        self.assertEqual(e.errno, errno.EINVAL)
        self.add("10.0.0.0/8", 20, rtr_label=48, rtr_label_flags=C.VR_RT_LABEL_VALID_FLAG)
        got = next(self.r.dump({"rtr_family": C.AF_INET}))
        self.assertEqual(got["rtr_label"], 48)

    def test_dump_order_and_marker(self) -> None:
        for p in ("10.0.0.0/8", "1.0.0.0/8", "10.0.0.0/16", "10.0.0.0/24", "9.9.9.9/32"):
            self.add(p, 10)
        req: dict[str, Any] = {"rtr_family": C.AF_INET, "rtr_vrf_id": 0}
        got = [
            prefix_text(C.AF_INET, f["rtr_prefix"], f["rtr_prefix_len"]) for f in self.r.dump(req)
        ]
        self.assertEqual(
            got, ["1.0.0.0/8", "9.9.9.9/32", "10.0.0.0/8", "10.0.0.0/16", "10.0.0.0/24"]
        )
        req.update(rtr_marker=v4("10.0.0.0"), rtr_marker_plen=8)
        got = [f["rtr_prefix_len"] for f in self.r.dump(req)]
        self.assertEqual(got, [16, 24])

    def test_stitched_mac_needs_bridge_entry(self) -> None:
        self.r.bridge_index = lambda vrf, mac: 7 if mac == b"\x02" * 6 else None
        e = self.assertRaises(TableError, self.add, "10.0.0.1/32", 10, rtr_mac=b"\x03" * 6)
        self.assertEqual(e.errno, errno.ENOENT)
        self.add("10.0.0.1/32", 10, rtr_mac=b"\x02" * 6)
        got = next(self.r.dump({"rtr_family": C.AF_INET}))
        self.assertEqual((got["rtr_index"], got["rtr_mac"]), (7, b"\x02" * 6))


class VrfRoutesTests(SynchronousTestCase):
    def test_many_prefixes(self) -> None:
        table = VrfRoutes(32)
        from vrtwist.datapath.routes import RouteEntry
        from vrtwist.datapath.tables import NextHop

        nh = NextHop(id=1, type=C.NH_DISCARD)
        for i in range(1000):
            table.set(RouteEntry((10 << 24) | (i << 8), 24, nh, 0, 0))
        self.assertEqual(len(table), 1000)
        found = table.lookup((10 << 24) | (999 << 8) | 5)
        assert found is not None
        self.assertEqual(found.prefix, (10 << 24) | (999 << 8))
        self.assertIsNone(table.lookup(11 << 24))
        self.assertIsNotNone(table.remove((10 << 24) | (5 << 8), 24))
        self.assertIsNone(table.lookup((10 << 24) | (5 << 8)))


class LpmPropertyTests(SynchronousTestCase):
    """``VrfRoutes.lookup`` agrees with a brute-force longest match, adds and deletes mixed."""

    def test_against_brute_force(self) -> None:
        from hypothesis import given, settings
        from hypothesis import strategies as st

        from vrtwist.datapath.routes import RouteEntry
        from vrtwist.datapath.tables import NextHop

        nh = NextHop(id=1, type=C.NH_DISCARD)
        ops = st.lists(
            st.tuples(
                st.booleans(),
                st.integers(0, 0xFFFFFFFF),
                st.sampled_from([0, 1, 8, 16, 23, 24, 31, 32]),
            ),
            max_size=60,
        )
        probes = st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=30)

        @settings(max_examples=150, deadline=None)
        @given(ops, probes)
        def check(changes: list[tuple[bool, int, int]], addrs: list[int]) -> None:
            table = VrfRoutes(32)
            model: dict[tuple[int, int], RouteEntry] = {}
            for add, addr, plen in changes:
                prefix = addr & table.mask(plen)
                if add:
                    entry = RouteEntry(prefix, plen, nh, 0, 0)
                    table.set(entry)
                    model[(prefix, plen)] = entry
                else:
                    self.assertIs(table.remove(prefix, plen), model.pop((prefix, plen), None))
            self.assertEqual(len(table), len(model))
            for a in addrs + [p for p, _ in model]:
                best = None
                for (p, n), e in model.items():
                    if a & table.mask(n) == p and (best is None or n > best.plen):
                        best = e
                self.assertIs(table.lookup(a), best)
            ordered = [(e.prefix, e.plen) for e in table.after(0, 0, False)]
            self.assertEqual(ordered, sorted(model))

        check()

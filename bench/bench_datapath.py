"""Forwarding-extension tables: route lookup rate and ksync request rate.

1. Longest-prefix match in one VRF holding N routes (/32 hosts, /24s, /16s, a default),
   ``VrfRoutes.lookup`` (one dict per prefix length) against a textbook binary trie
   (one node per bit) measured in the same run.
2. Requests answered per second by a real ``twistd -n vrouter-dp`` subprocess over
   ``dpdk_netlink``: vif/nh/route ADD one request per netlink message, and bunched 16
   per message as the agent sends them; and objects per second of a route dump.
3. ``rt --dump``'s rows: the vRouter's expanded trie view rebuilt from a VRF of
   ``--expand`` /32 routes spread over distinct /24s (``expand_routes`` + the row format),
   against formatting the compact route list alone (baseline, same run).

Usage: python bench/bench_datapath.py [--routes N] [--requests N] [--runs N] [--expand N]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import Any

from vrtwist.datapath import constants as C
from vrtwist.datapath.routes import RouteEntry, VrfRoutes
from vrtwist.datapath.tables import NextHop


class BitTrie:
    """Baseline: a binary trie, one node per prefix bit, best match kept while walking."""

    def __init__(self) -> None:
        self.root: list[Any] = [None, None, None]  # child0, child1, entry

    def insert(self, prefix: int, plen: int, entry: object) -> None:
        node = self.root
        for i in range(plen):
            bit = (prefix >> (31 - i)) & 1
            if node[bit] is None:
                node[bit] = [None, None, None]
            node = node[bit]
        node[2] = entry

    def lookup(self, address: int) -> object:
        node = self.root
        best = node[2]
        for i in range(32):
            node = node[(address >> (31 - i)) & 1]
            if node is None:
                break
            if node[2] is not None:
                best = node[2]
        return best


def build(n: int, seed: int = 7) -> tuple[VrfRoutes, BitTrie, list[int]]:
    rnd = random.Random(seed)
    nh = NextHop(id=1, type=C.NH_ENCAP)
    table = VrfRoutes(32)
    trie = BitTrie()
    prefixes: list[tuple[int, int]] = [(0, 0)]
    for _ in range(n // 100):
        prefixes.append((rnd.getrandbits(16) << 16, 16))
    for _ in range(n // 4):
        prefixes.append((rnd.getrandbits(24) << 8, 24))
    while len(prefixes) < n:
        prefixes.append((rnd.getrandbits(32), 32))
    for prefix, plen in prefixes:
        entry = RouteEntry(prefix, plen, nh, 0, 0)
        table.set(entry)
        trie.insert(prefix, plen, entry)
    probes = [p | rnd.getrandbits(32 - n_) if n_ < 32 else p for p, n_ in prefixes]
    probes += [rnd.getrandbits(32) for _ in range(len(probes))]
    rnd.shuffle(probes)
    return table, trie, probes[:200000]


def rate(f: Any, items: list[int], min_time: float = 1.0) -> float:
    done = 0
    start = time.perf_counter()
    while True:
        for x in items:
            f(x)
        done += len(items)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return done / elapsed


def bench_lpm(n: int, runs: int) -> None:
    table, trie, probes = build(n)
    for p in probes[:2000]:
        assert table.lookup(p) is trie.lookup(p)
    ours, base = [], []
    for _ in range(runs):
        ours.append(rate(table.lookup, probes))
        base.append(rate(trie.lookup, probes))
    o, b = statistics.median(ours), statistics.median(base)
    print("LPM, %d routes in one VRF (%d lengths in use), %d probes" % (n, 4, len(probes)))
    print("  per-length dicts: %10.0f lookups/s" % o)
    print("  binary trie     : %10.0f lookups/s" % b)
    print("  ratio           : %10.2fx" % (o / b))


def bench_ksync(n: int, runs: int) -> None:
    from vrtwist.ksync.blocking import open_ksync
    from vrtwist.sandesh import ADD, DUMP, schema
    from vrtwist.vtest.runner import spawned_vrouter

    results: dict[str, list[float]] = {}
    for _ in range(runs):
        with spawned_vrouter() as run_dir, open_ksync(run_dir) as ks:
            t0 = time.perf_counter()
            for i in range(n):
                ks.request(
                    schema.vr_interface_req(h_op=ADD, vifr_idx=i % 4000 + 1,
                                            vifr_type=C.VIF_TYPE_VIRTUAL,
                                            vifr_mac=[0, 0, 0x5E, 0, 1, i & 0xFF])
                )  # fmt: skip
            results.setdefault("vif ADD, 1 per message", []).append(n / (time.perf_counter() - t0))
            ks.request(
                schema.vr_nexthop_req(h_op=ADD, nhr_id=9, nhr_type=C.NH_ENCAP,
                                      nhr_family=C.AF_INET, nhr_encap_oif_id=[1],
                                      nhr_encap=[0] * 14, nhr_flags=C.NH_FLAG_VALID)
            )  # fmt: skip

            def route(i: int) -> Any:
                return schema.vr_route_req(h_op=ADD, rtr_family=C.AF_INET, rtr_vrf_id=0,
                                           rtr_prefix=list(i.to_bytes(4, "big")),
                                           rtr_prefix_len=32, rtr_nh_id=9)  # fmt: skip

            t0 = time.perf_counter()
            for i in range(n):
                ks.request(route(0x0A000000 + i))
            results.setdefault("route ADD, 1 per message", []).append(
                n / (time.perf_counter() - t0)
            )
            t0 = time.perf_counter()
            for start in range(0, n, 16):
                ks.exchange([route(0x0B000000 + i) for i in range(start, min(n, start + 16))])
            results.setdefault("route ADD, 16 per message", []).append(
                n / (time.perf_counter() - t0)
            )
            t0 = time.perf_counter()
            got = ks.dump(schema.vr_route_req(h_op=DUMP, rtr_family=C.AF_INET, rtr_vrf_id=0))
            assert len(got) == 2 * n
            results.setdefault("route DUMP (objects)", []).append(
                len(got) / (time.perf_counter() - t0)
            )
    print("ksync against twistd vrouter-dp (%d requests each)" % n)
    single = statistics.median(results["route ADD, 1 per message"])
    for name, values in results.items():
        print("  %-26s %9.0f /s" % (name, statistics.median(values)))
    bunched = statistics.median(results["route ADD, 16 per message"])
    print("  bunching ratio (16 vs 1)   %9.2fx" % (bunched / single))


def bench_expand(n: int, runs: int) -> None:
    """Rows per second ``rt --dump`` prints: expanded trie view vs the compact list."""
    from vrtwist.cli.rt import expand_routes, format_inet_route
    from vrtwist.sandesh import schema

    rnd = random.Random(11)
    routes = [
        schema.vr_route_req(rtr_family=C.AF_INET, rtr_vrf_id=1,
                            rtr_prefix=[10, i >> 8 & 0xFF, i & 0xFF, rnd.randrange(1, 255)],
                            rtr_prefix_len=32, rtr_replace_plen=32, rtr_nh_id=5,
                            rtr_label=0, rtr_label_flags=0, rtr_index=-1)
        for i in range(n)
    ]  # fmt: skip
    expanded: list[float] = []
    compact: list[float] = []
    rows = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        rows = sum(1 for r in expand_routes(C.AF_INET, 1, routes) if format_inet_route(r))
        expanded.append(rows / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for r in routes:
            format_inet_route(r)
        compact.append(n / (time.perf_counter() - t0))
    e, c = statistics.median(expanded), statistics.median(compact)
    print("rt --dump of %d /32 routes in distinct /24s: %d rows" % (n, rows))
    print("  expanded trie rows         %9.0f /s  (%.2f s for the table)" % (e, rows / e))
    print("  compact rows (baseline)    %9.0f /s" % c)
    print("  ratio expanded/compact     %9.2fx" % (e / c))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--routes", type=int, default=100000)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--expand", type=int, default=1000)
    args = p.parse_args(argv)
    print("load: %s" % " ".join("%.2f" % x for x in os.getloadavg()))
    bench_lpm(args.routes, args.runs)
    bench_ksync(args.requests, args.runs)
    bench_expand(args.expand, args.runs)
    print("load: %s" % " ".join("%.2f" % x for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

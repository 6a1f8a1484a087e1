"""The cost of ``--introspect`` on the hot paths, with and without it in the same run.

1. Packet forwarding (in process, ``Pipeline.receive``, 64-byte frames, bridged and
   flow-table hits), packets per CPU-second.
2. Flow setup: FLOW_SET bunched 16 per netlink message through the whole ksync server
   path in process (framing, Sandesh, dispatcher, shared-memory flow table), per CPU-s.
3. vpnkit connection rate: sequential short connections through ``vpnkit-host`` and
   ``vpnkit-forwarder`` processes to an echo server; one pair of processes with
   ``--introspect`` (scraped), one without, batches interleaved.

"With" means the daemon's collectors registered and ``/metrics`` scraped every
``--scrape`` seconds (default 1 s, 15 times Prometheus' default rate) during the
measurement, the scrape's CPU time included.  Arms alternate (A B A B ...) and medians
are reported, so load from other processes falls on both.  Goal: "with" no more than
3% lower.

Usage: python bench/bench_introspect.py [--rounds 5] [--packets 200000] [--flows 100000]
       [--conns 500] [--scrape 1.0] [--only forward,flows,vpnkit]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_flow
import bench_pipeline as bp
import bench_vpnkit

from vrtwist.datapath.introspect import DatapathCollector
from vrtwist.introspect.flows import FlowTableSource

CHUNK = 2000


def registry_for(dp: Any, ft: Any) -> CollectorRegistry:
    """The datapath's collectors, its flow table's counts reported as ``install`` does
    for a daemon's shared-memory table (the table is in this process: no scan)."""
    dp.add_usage_source(lambda: {
        "vo_flow_entries": ft.entries, "vo_oflow_entries": ft.oentries,
        "vo_flow_used_entries": ft.used_entries, "vo_flow_used_oentries": ft.used_oflow_entries,
    })
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DatapathCollector(dp))
    return reg


SCRAPES: list[float] = []  # CPU seconds of each scrape made in a "with" arm


def run(work: Callable[[int], None], n: int, scrape: Callable[[], Any] | None,
        every: float) -> float:
    """Operations per CPU-second of ``work`` done in chunks, scraping when due (the first
    scrape half a period in, so even a short run has one)."""
    done = 0
    next_scrape = time.monotonic() + every / 2
    c0 = time.process_time()
    while done < n:
        k = min(CHUNK, n - done)
        work(k)
        done += k
        if scrape is not None and time.monotonic() >= next_scrape:
            s0 = time.process_time()
            scrape()
            SCRAPES.append(time.process_time() - s0)
            next_scrape += every
    return n / (time.process_time() - c0)


def ab(name: str, rounds: int, without: Callable[[], float], with_: Callable[[], float],
       unit: str) -> tuple[str, float, float, float]:
    a, b = [], []
    for r in range(rounds):  # the order alternates: warm-up and drift fall on both arms
        if r % 2:
            b.append(with_())
            a.append(without())
        else:
            a.append(without())
            b.append(with_())
    ma, mb = statistics.median(a), statistics.median(b)
    delta = (mb - ma) / ma * 100
    best = (max(b) - max(a)) / max(a) * 100
    scrapes = ""
    if SCRAPES:
        scrapes = (f"{len(SCRAPES)} scrapes, median {statistics.median(SCRAPES) * 1e3:.2f} ms "
                   "CPU each")
        SCRAPES.clear()
    print(f"| {name} | {ma:,.0f} {unit} | {mb:,.0f} {unit} | {delta:+.1f}% | {best:+.1f}% "
          f"| {scrapes} |", flush=True)
    return name, ma, mb, delta


def forwarding(args: argparse.Namespace) -> None:
    for label, flows in (("bridged", 0), ("flow hits", args.flows)):
        w, _sink = bp.world(flows, policy=bool(flows))
        dp, ft = w.dp, w.flows
        frames = [bp.frame64(bp.VM2, dip=b"\x02\x02\x02\x02")]
        if flows:
            frames = bp.install_flows(ft, flows)
        pipe = w.pipeline
        receive = pipe.receive
        count = len(frames)
        pos = [0]

        def work(k: int) -> None:
            i = pos[0]
            for j in range(i, i + k):
                receive(1, frames[j % count])
            pos[0] = i + k
        reg = registry_for(dp, ft)
        ab(f"forwarding, {label}", args.rounds,
           lambda: run(work, args.packets, None, args.scrape),
           lambda: run(work, args.packets, lambda: generate_latest(reg), args.scrape),
           "pkt/s")


def flow_setup(args: argparse.Namespace) -> None:
    from twisted.internet.testing import StringTransport

    from vrtwist.datapath.dispatcher import Datapath
    from vrtwist.ksync.netlink import build_request
    from vrtwist.ksync.server import KsyncServerProtocol
    from vrtwist.shmem.service import install

    d = tempfile.mkdtemp(prefix="bench-introspect-")
    n = args.flow_requests
    frames = [build_request(b"".join(bench_flow.flow_req(i, 0) for i in range(b, b + 16)),
                            b // 16 + 1, nl_type=0) for b in range(0, n, 16)]

    def measure(scrape: bool) -> float:
        """A fresh datapath and table each time: every round inserts the same flows."""
        dp = Datapath()
        tables = install(dp, d, 524288, 1024)
        flows = FlowTableSource(d)
        try:
            proto = KsyncServerProtocol(dp)
            tr = StringTransport()
            proto.makeConnection(tr)
            reg = CollectorRegistry(auto_describe=False)
            reg.register(DatapathCollector(dp, flows))
            pos = [0]

            def work(k: int) -> None:  # k requests: k / 16 messages
                i = pos[0]
                for f in frames[i : i + k // 16]:
                    proto.dataReceived(f)
                    tr.clear()
                pos[0] = i + k // 16
            return run(work, n, (lambda: generate_latest(reg)) if scrape else None,
                       args.scrape)
        finally:
            flows.close()
            tables.close()
    try:
        ab("flow setup (FLOW_SET, ksync server)", args.rounds, lambda: measure(False),
           lambda: measure(True), "req/s")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _echo_server() -> int:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(512)

    def serve() -> None:
        while True:
            c, _ = ls.accept()
            while True:
                data = c.recv(65536)
                if not data:
                    break
                c.sendall(data)
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    return int(ls.getsockname()[1])


def vpnkit(args: argparse.Namespace) -> None:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    echo = _echo_server()
    tmp = tempfile.mkdtemp(prefix="bench-introspect-vpnkit-")
    procs: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    try:
        def pair(tag: str, introspect: bool) -> tuple[int, list[int]]:
            data = os.path.join(tmp, f"{tag}.sock")
            out = bench_vpnkit._free_port()
            ports = [bench_vpnkit._free_port(), bench_vpnkit._free_port()] if introspect else []
            fwd_i = ["--introspect", f"tcp:{ports[0]}:interface=127.0.0.1"] if introspect else []
            host_i = ["--introspect", f"tcp:{ports[1]}:interface=127.0.0.1"] if introspect else []
            procs.append(subprocess.Popen([twistd, "-n", "--pidfile=", "--logfile",
                                           os.path.join(tmp, f"{tag}-fwd.log"),
                                           "vpnkit-forwarder", "--data-listen", data, *fwd_i]))
            time.sleep(0.5)
            procs.append(subprocess.Popen([twistd, "-n", "--pidfile=", "--logfile",
                                           os.path.join(tmp, f"{tag}-host.log"), "vpnkit-host",
                                           "--data-connect", data, *host_i, "--expose",
                                           f"tcp:127.0.0.1:{out}:127.0.0.1:{echo}"]))
            bench_vpnkit._wait_echo(out)
            return out, ports

        plain, _ = pair("plain", False)
        observed, mports = pair("observed", True)

        def scraper() -> None:
            while not stop.wait(args.scrape):
                for p in mports:
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=5).read()
                    except OSError:
                        pass
        threading.Thread(target=scraper, daemon=True).start()
        ab("vpnkit connections (sequential, wall time)", args.rounds,
           lambda: args.conns / bench_vpnkit.short_connections(plain, args.conns),
           lambda: args.conns / bench_vpnkit.short_connections(observed, args.conns),
           "conn/s")
    finally:
        stop.set()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--flow-requests", type=int, default=256_000)
    ap.add_argument("--conns", type=int, default=500)
    ap.add_argument("--scrape", type=float, default=1.0)
    ap.add_argument("--only", default="forward,flows,vpnkit")
    args = ap.parse_args()
    only = set(args.only.split(","))
    print("load:", open("/proc/loadavg").read().strip())
    print("| path | without --introspect (median) | with, scraped every %gs (median) "
          "| change of medians | change of bests | scrapes |" % args.scrape)
    print("|---|---|---|---|---|---|")
    if "forward" in only:
        forwarding(args)
    if "flows" in only:
        flow_setup(args)
    if "vpnkit" in only:
        vpnkit(args)
    print("load:", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()

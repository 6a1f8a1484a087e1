"""Flow table benchmarks: datapath inserts and lookups, and bunched FLOW_SET over ksync.

1. In-process: datapath HOLD-on-miss insert + lookup on a default-sized table
   (524288 + 105472 entries in an mmap), FLOW_SET applied in process, and a plain
   dict insert+lookup of the same keys as the baseline measured in the same run.
2. FLOW_SET round trips over ksync to a real ``twistd vrouter-dp`` subprocess:
   one request per netlink message (send, wait for the reply), and bunched 16 per
   netlink message as the Agent and ``flow -b`` do, first one bunch in flight at a
   time, then pipelined with WINDOW bunches in flight (a new one sent as each reply
   completes).  Requests are encoded before the clock starts; replies are read and
   parsed into netlink frames.
3. ``flow -l`` (the console script, as a subprocess, output to /dev/null) on a
   table holding 500,000 active flows created over ksync.

Usage: python bench/bench_flow.py [--runs 3] [--flows 500000]
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from vrtwist.ksync.netlink import FrameReader, build_request, parse_message
from vrtwist.sandesh import encode, schema
from vrtwist.shmem import layout as L
from vrtwist.shmem.flowtable import FlowTable

TWISTD = "from twisted.scripts.twistd import run; run()"
#: bunched messages in flight in the pipelined FLOW_SET figure (the agent keeps several)
WINDOW = 8


def keys(n: int) -> list[bytes]:
    return [
        struct.pack(
            "<BBHHHI4s4s",
            2,
            17,
            0,
            i & 0xFFFF,
            i >> 16,
            1,
            b"\x0a\x00\x00\x01",
            (0x0A000002 + (i >> 24)).to_bytes(4, "big"),
        )
        for i in range(n)
    ]


def cpu_of(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_in_process(n: int) -> dict[str, float]:
    e = L.DEFAULT_FLOW_ENTRIES
    o = L.default_overflow(e)
    m = mmap.mmap(-1, (e + o) * L.FLOW_ENTRY_SIZE)
    t = FlowTable(m, e, o)
    ks = keys(n)
    c0 = time.process_time()
    t0 = time.perf_counter()
    for k in ks:
        t.hold_on_miss(k)
        t.lookup(k)
    t1 = time.perf_counter()
    c1 = time.process_time()
    for k in ks:
        t.lookup(k)
    t2 = time.perf_counter()
    d: dict[bytes, int] = {}
    for i, k in enumerate(ks):
        d[k] = i
        d.get(k)
    t3 = time.perf_counter()
    m2 = mmap.mmap(-1, (e + o) * L.FLOW_ENTRY_SIZE)
    t2b = FlowTable(m2, e, o)
    reqs = [
        {
            "fr_op": 0,
            "fr_index": -1,
            "fr_action": 2,
            "fr_flags": 1,
            "fr_family": 2,
            "fr_flow_sip_l": 0x0100000A,
            "fr_flow_dip_l": 0x0200000A + (i >> 24),
            "fr_flow_proto": 17,
            "fr_flow_sport": i & 0xFFFF,
            "fr_flow_dport": i >> 16,
            "fr_flow_nh_id": 1,
        }
        for i in range(n // 4)
    ]
    t4 = time.perf_counter()
    for r in reqs:
        t2b.flow_set(r)
    t5 = time.perf_counter()
    m.close()
    m2.close()
    return {
        "insert+lookup pairs/s": n / (t1 - t0),
        "insert+lookup pairs per CPU-second": n / (c1 - c0),
        "lookup/s (hit)": n / (t2 - t1),
        "dict insert+lookup pairs/s (baseline)": n / (t3 - t2),
        "FLOW_SET applied in process/s": (n // 4) / (t5 - t4),
    }


def bench_server_in_process(n: int) -> dict[str, float]:
    """The whole server path (ksync framing, Sandesh, dispatcher, flow table), no sockets."""
    from twisted.internet.testing import StringTransport

    from vrtwist.datapath.dispatcher import Datapath
    from vrtwist.ksync.server import KsyncServerProtocol
    from vrtwist.shmem.service import install

    d = tempfile.mkdtemp(prefix="bench-flow-inproc-")
    try:
        dp = Datapath()
        tables = install(dp, d)
        proto = KsyncServerProtocol(dp)
        tr = StringTransport()
        proto.makeConnection(tr)
        frames = [
            build_request(b"".join(flow_req(i, b) for i in range(16)), b // 16 + 1, nl_type=0)
            for b in range(0, n, 16)
        ]
        c0 = time.process_time()
        for f in frames:
            proto.dataReceived(f)
            tr.clear()
        c1 = time.process_time()
        tables.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {"FLOW_SET bunched 16, ksync server in process, per CPU-s": n / (c1 - c0)}


class Server:
    def __init__(self, flows: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-flow-")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                TWISTD,
                "-n",
                "--pidfile=",
                "-l",
                os.path.join(self.dir, "log"),
                "vrouter-dp",
                "--run-dir",
                self.dir,
                "--flow-entries",
                str(flows),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        path = os.path.join(self.dir, "dpdk_netlink")
        for _ in range(600):
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                self.sock = s
                break
            except OSError:
                s.close()
                time.sleep(0.05)
        else:
            raise RuntimeError("vrouter-dp did not start")
        self.reader = FrameReader(max_frame=1 << 20)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def frame(self, payload: bytes) -> bytes:
        self.seq += 1
        return build_request(payload, self.seq, nl_type=0)

    def wait_reply(self) -> int:
        """Read frames until the end of one reply; return the number of frames."""
        n = 0
        while True:
            frames = self.reader.frames(1)
            if not frames:
                data = self.sock.recv(1 << 16)
                if not data:
                    raise RuntimeError("server closed")
                self.reader.feed(data, 0)
                continue
            msg = parse_message(frames[0])
            n += 1
            if msg.is_done or not msg.flags:
                return n


def flow_req(i: int, base: int) -> bytes:
    j = base + i
    return encode(
        schema.vr_flow_req(
            fr_op=0,
            fr_index=-1,
            fr_action=L.ACTION_FORWARD,
            fr_flags=L.FLAG_ACTIVE,
            fr_family=2,
            fr_flow_sip_l=0x0100000A + ((j >> 24) << 8),
            fr_flow_dip_l=0x0200000A,
            fr_flow_proto=6,
            fr_flow_sport=j & 0xFFFF,
            fr_flow_dport=(j >> 16) & 0xFF,
            fr_flow_nh_id=1,
            fr_ecmp_nh_index=0xFFFFFFFF,
        )
    )


def bench_ksync(server: Server, n_single: int, n_bunch: int, base: int) -> dict[str, float]:
    frames = [server.frame(flow_req(i, base)) for i in range(n_single)]
    s0 = cpu_of(server.proc.pid)
    t0 = time.perf_counter()
    for f in frames:
        server.sock.sendall(f)
        server.wait_reply()
    t1 = time.perf_counter()
    s1 = cpu_of(server.proc.pid)
    base += n_single
    bunches = []
    for b in range(0, n_bunch, 16):
        bunches.append(
            server.frame(b"".join(flow_req(i, base) for i in range(b, min(b + 16, n_bunch))))
        )
    s2 = cpu_of(server.proc.pid)
    t2 = time.perf_counter()
    for f in bunches:
        server.sock.sendall(f)
        server.wait_reply()
    t3 = time.perf_counter()
    s3 = cpu_of(server.proc.pid)
    # pipelined: WINDOW bunched messages in flight, a new one sent as each reply completes
    base += n_bunch
    piped = [
        server.frame(b"".join(flow_req(i, base) for i in range(b, min(b + 16, n_bunch))))
        for b in range(0, n_bunch, 16)
    ]
    s4 = cpu_of(server.proc.pid)
    t4 = time.perf_counter()
    sent = min(WINDOW, len(piped))
    server.sock.sendall(b"".join(piped[:sent]))
    for _ in range(len(piped)):
        server.wait_reply()
        if sent < len(piped):
            server.sock.sendall(piped[sent])
            sent += 1
    t5 = time.perf_counter()
    s5 = cpu_of(server.proc.pid)
    return {
        "FLOW_SET 1 per message/s": n_single / (t1 - t0),
        "FLOW_SET 1 per message, per server CPU-s": n_single / max(1e-9, s1 - s0),
        "FLOW_SET bunched 16/s": n_bunch / (t3 - t2),
        "FLOW_SET bunched 16, per server CPU-s": n_bunch / max(1e-9, s3 - s2),
        "FLOW_SET bunched 16, %d in flight/s" % WINDOW: n_bunch / (t5 - t4),
        "FLOW_SET bunched 16, %d in flight, per server CPU-s" % WINDOW: n_bunch
        / max(1e-9, s5 - s4),
    }


def fill(server: Server, total: int, base: int) -> None:
    for b in range(0, total, 16):
        server.sock.sendall(
            server.frame(b"".join(flow_req(i, base) for i in range(b, min(b + 16, total))))
        )
        server.wait_reply()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--flows", type=int, default=500_000)
    ap.add_argument("--inproc", type=int, default=200_000)
    args = ap.parse_args()
    print("load:", open("/proc/loadavg").read().strip())
    results: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for k, v in bench_in_process(args.inproc).items():
            results.setdefault(k, []).append(v)
        for k, v in bench_server_in_process(40_000).items():
            results.setdefault(k, []).append(v)
    server = Server(L.DEFAULT_FLOW_ENTRIES)
    try:
        base = 0
        for _ in range(args.runs):
            for k, v in bench_ksync(server, 5000, 40000, base).items():
                results.setdefault(k, []).append(v)
            base += 85000
        for k, vals in results.items():
            print(
                "%-44s median %10.0f   runs %s"
                % (k, statistics.median(vals), " ".join("%.0f" % v for v in vals))
            )
        have = base
        if args.flows > have:
            t0 = time.perf_counter()
            fill(server, args.flows - have, base)
            print(
                "filled to %d flows over ksync in %.1f s" % (args.flows, time.perf_counter() - t0)
            )
        times = []
        cpus = []
        for _ in range(args.runs):
            r0 = os.times()
            t0 = time.perf_counter()
            with open(os.devnull, "w") as null:
                subprocess.run(
                    [sys.executable, "-m", "vrtwist.cli.flow", "--sock-dir", server.dir, "-l"],
                    stdout=null,
                    check=True,
                )
            times.append(time.perf_counter() - t0)
            r1 = os.times()
            cpus.append(
                (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
            )
        out = subprocess.run(
            [sys.executable, "-m", "vrtwist.cli.flow", "--sock-dir", server.dir, "-l"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        print("flow -l listed %d flows" % out.count("(Gen: "))
        print(
            "%-40s median %10.2f s  runs %s"
            % (
                "flow -l, %d flows" % args.flows,
                statistics.median(times),
                " ".join("%.2f" % t for t in times),
            )
        )
        print(
            "%-40s median %10.2f s  runs %s"
            % ("flow -l CPU time", statistics.median(cpus), " ".join("%.2f" % t for t in cpus))
        )
    finally:
        server.close()
    print("load:", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()

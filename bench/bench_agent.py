"""Agent REST port API benchmark: 1,000 ports added over REST until visible over ksync,
then deleted until gone.

Starts ``twistd -n vrouter`` (embedded datapath) on a temporary run directory, POSTs one
port object per request with ``--concurrency`` requests in flight, and meanwhile polls the
datapath over its own ksync session (bunched vr_interface_req GETs of the vif indices the
ports will get: a fresh agent hands them out in order from 3).  Latency is from just
before a port's POST is written to the first poll that sees its interface; deletes are
measured the same way until the GET answers ENOENT.

    python bench/bench_agent.py [--ports 1000] [--concurrency 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

BIN = os.path.dirname(sys.executable)
VN = "56297dc0-5553-4e6a-b87f-8423afc21e9d"
FIRST_VIF = 3


def body(n: int) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(int=(0xBE7C << 96) | n)),
        "instance-id": str(uuid.UUID(int=(0x7E57 << 96) | n)),
        "vn-id": VN, "vm-project-id": "", "display-name": f"vm{n}",
        "ip-address": f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}",
        "ip6-address": "None", "type": 0, "system-name": f"tapb{n}",
        "mac-address": "02:00:%02x:%02x:%02x:%02x" % ((n >> 24) & 255, (n >> 16) & 255,
                                                       (n >> 8) & 255, n & 255),
        "rx-vlan-id": -1, "tx-vlan-id": -1,
    }


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class _HttpConn(Protocol):
    """A minimal keep-alive HTTP/1.1 client: one request at a time, Content-Length bodies.

    treq costs more CPU per request than the agent under test, so the benchmark speaks
    HTTP itself to measure the agent rather than the client.
    """

    def __init__(self) -> None:
        self.buf = b""
        self.waiting: defer.Deferred[int] | None = None

    def call(self, method: str, path: str, body: bytes = b"") -> defer.Deferred[int]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: agent\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.waiting = defer.Deferred()
        assert self.transport is not None
        self.transport.write(head.encode() + body)
        return self.waiting

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].decode("latin-1")
        m = re.search(r"(?im)^content-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        if len(self.buf) < end + 4 + length:
            return
        self.buf = self.buf[end + 4 + length:]
        code = int(head.split(" ", 2)[1])
        d, self.waiting = self.waiting, None
        assert d is not None
        d.callback(code)


class Poller:
    """Watches vif indices over ksync; records when each becomes present (or absent)."""

    def __init__(self, proto: Any, want_present: bool) -> None:
        self.proto = proto
        self.want_present = want_present
        self.pending: dict[int, float] = {}  # idx -> time the request was sent
        self.seen: dict[int, float] = {}
        self.done: defer.Deferred[None] = defer.Deferred()
        self.expected = 0
        self.polls = 0

    def expect(self, idx: int, t0: float) -> None:
        self.pending[idx] = t0

    async def run(self, reactor: Any) -> None:
        from vrtwist.ksync.client import KsyncError
        from vrtwist.sandesh import schema

        while len(self.seen) < self.expected:
            # every port in flight (a few dozen at most: the API answers once programmed)
            idxs = sorted(self.pending)[:32]
            if not idxs:
                await task.deferLater(reactor, 0.0005, lambda: None)
                continue
            self.polls += 1
            ds = self.proto.request_many([schema.vr_interface_req(h_op=1, vifr_idx=i)
                                          for i in idxs])
            results = await defer.DeferredList(ds, consumeErrors=True)
            now = time.perf_counter()
            await task.deferLater(reactor, 0.002, lambda: None)  # light load on the agent
            for i, (ok, r) in zip(idxs, results, strict=True):
                present = ok and bool(r.objects)
                if not ok and not r.check(KsyncError):
                    r.raiseException()
                if present == self.want_present:
                    self.seen[i] = now - self.pending.pop(i)


async def phase(reactor: Any, conns: list[_HttpConn], proto: Any, n: int,
                add: bool) -> tuple[float, list[float]]:
    poller = Poller(proto, want_present=add)
    poller.expected = n
    polling = defer.Deferred.fromCoroutine(poller.run(reactor))
    todo = iter(range(1, n + 1))

    async def worker(conn: _HttpConn) -> None:
        for i in todo:
            b = body(i)
            t0 = time.perf_counter()
            poller.expect(FIRST_VIF + i - 1, t0)
            if add:
                code = await conn.call("POST", "/port", json.dumps(b).encode())
            else:
                code = await conn.call("DELETE", f"/port/{b['id']}")
            if code != 200:
                raise RuntimeError(f"port {i}: HTTP {code}")

    start = time.perf_counter()
    await defer.gatherResults([defer.Deferred.fromCoroutine(worker(c)) for c in conns],
                              consumeErrors=True)
    await polling
    elapsed = time.perf_counter() - start
    return elapsed, list(poller.seen.values())


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def file_baseline(directory: str, n: int = 200) -> float:
    """Baseline, same run and directory: atomic JSON file writes per second (temp file,
    fsync, rename, directory fsync), one after another: the disk's price of one port."""
    from pathlib import Path

    from vrtwist.agent.store import write_json_atomic

    os.makedirs(directory, exist_ok=True)
    b = body(0)
    t = time.perf_counter()
    for i in range(n):
        write_json_atomic(Path(directory, f"bench-{i}"), b)
    rate = n / (time.perf_counter() - t)
    for i in range(n):
        os.unlink(os.path.join(directory, f"bench-{i}"))
    return rate


async def run_once(reactor: Any, ports: int, conc: int,
                   twistd_args: tuple[str, ...] = (),
                   agent_args: tuple[str, ...] = ()) -> dict[str, float]:
    from vrtwist.ksync.client import connect_ksync

    d = tempfile.mkdtemp(prefix="vrb-")
    log = os.path.join(d, "agent.log")
    proc = subprocess.Popen(
        [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "--logfile", log, *twistd_args,
         "vrouter",
         "--run-dir", d, "--state-dir", os.path.join(d, "state"), "--no-tap-check",
         "--rest", "tcp:0:interface=127.0.0.1", "--flow-entries", "4096",
         "--bridge-entries", "16384", *agent_args], stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT)
    try:
        port = None
        for _ in range(600):
            if os.path.exists(log):
                m = re.search(r"REST port API listening on .*port=(\d+)", open(log).read())
                if m:
                    port = int(m.group(1))
                    break
            await task.deferLater(reactor, 0.05, lambda: None)
        if port is None:
            raise RuntimeError("agent did not start:\n" + open(log).read())
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        conns = [await connectProtocol(ep, _HttpConn()) for _ in range(conc)]
        proto = await connect_ksync(reactor, d)
        base = file_baseline(os.path.join(d, "state", "ports"))
        cpu0 = cpu_seconds(proc.pid)
        add_s, add_lat = await phase(reactor, conns, proto, ports, add=True)
        cpu1 = cpu_seconds(proc.pid)
        del_s, del_lat = await phase(reactor, conns, proto, ports, add=False)
        cpu2 = cpu_seconds(proc.pid)
        proto.transport.loseConnection()  # type: ignore[union-attr]
        for c in conns:
            c.transport.loseConnection()
        return {
            "add_rate": ports / add_s, "add_p50": pct(add_lat, 50) * 1e3,
            "add_p99": pct(add_lat, 99) * 1e3, "del_rate": ports / del_s,
            "del_p50": pct(del_lat, 50) * 1e3, "del_p99": pct(del_lat, 99) * 1e3,
            "add_cpu": ports / max(cpu1 - cpu0, 1e-9), "del_cpu": ports / max(cpu2 - cpu1, 1e-9),
            "files": base,
        }
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(d, ignore_errors=True)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    runs = []
    for i in range(args.runs):
        r = await run_once(reactor, args.ports, args.concurrency,
                           tuple(args.twistd_args.split()), tuple(args.agent_args.split()))
        runs.append(r)
        print(f"run {i + 1}: add {r['add_rate']:7.0f} ports/s p50 {r['add_p50']:6.1f} ms "
              f"p99 {r['add_p99']:6.1f} ms | delete {r['del_rate']:7.0f} ports/s "
              f"p50 {r['del_p50']:6.1f} ms p99 {r['del_p99']:6.1f} ms | agent "
              f"{r['add_cpu']:5.0f} adds/CPU-s {r['del_cpu']:5.0f} deletes/CPU-s | "
              f"baseline {r['files']:5.0f} atomic file writes/s "
              f"(add/baseline {r['add_rate'] / r['files']:.2f})", flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"median of {args.runs}: {args.ports} ports, {args.concurrency} requests in flight")
    print(f"  add:    {med['add_rate']:7.0f} ports/s  p50 {med['add_p50']:6.1f} ms  "
          f"p99 {med['add_p99']:6.1f} ms  (goal >= 500 ports/s, p99 < 50 ms)")
    print(f"  delete: {med['del_rate']:7.0f} ports/s  p50 {med['del_p50']:6.1f} ms  "
          f"p99 {med['del_p99']:6.1f} ms")
    print(f"  agent CPU: {med['add_cpu']:5.0f} adds and {med['del_cpu']:5.0f} deletes per "
          "CPU-second")
    print(f"  baseline, same runs: {med['files']:5.0f} sequential atomic port-file writes/s;"
          f" add rate / baseline = {med['add_rate'] / med['files']:.2f}")
    print("load:", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--ports", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--twistd-args", default="", help="extra twistd options (e.g. profiling)")
    p.add_argument("--agent-args", default="", help="extra vrouter options (--ksync inprocess)")
    a = p.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, a)))

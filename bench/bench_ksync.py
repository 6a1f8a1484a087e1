"""ksync channel benchmark: requests per second over a real unix socket.

A child process serves ``<tmp>/dpdk_netlink`` with vrtwist's ksync server and the in-memory
dispatcher (so the figure is the channel: framing, Sandesh, sessions, Twisted), and the
parent measures:

* blocking client (the utilities' path), one GET at a time: round trips per second;
* Twisted client, 200 requests in flight (the Agent's KSYNC_ACK_WAIT_THRESHOLD);
* Twisted client, 16 requests bunched per netlink message, 200 in flight;
* DUMP of 4096 interfaces (paged at 3968 bytes): objects per second;

and, as a baseline in the same run, a raw unix-socket echo of a request of the same size
to a child process using blocking sockets (no parsing at all): the ratio shows what the
protocol stack costs on top of the kernel round trip.

    python bench/bench_ksync.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from vrtwist.ksync.blocking import open_ksync
from vrtwist.ksync.netlink import build_request
from vrtwist.sandesh import ADD, GET, encode, schema

SERVER = r"""
import sys
from twisted.internet import reactor
from vrtwist.ksync.server import listen_ksync
from vrtwist.ksync.testing import MemoryDispatcher
d = listen_ksync(reactor, sys.argv[1], MemoryDispatcher())
d.addCallback(lambda _: print("ready", flush=True))
reactor.run()
"""

ECHO = r"""
import os, socket, sys
path = os.path.join(sys.argv[1], "echo")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
n = int(sys.argv[2]); reply = b"x" * int(sys.argv[3])
while True:
    got = 0
    while got < n:
        b = c.recv(65536)
        if not b:
            sys.exit(0)
        got += len(b)
    c.sendall(reply)
"""


def child(code: str, *args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    return p


def blocking_gets(run_dir: str, seconds: float) -> float:
    with open_ksync(run_dir) as ks:
        ks.request(schema.vr_mpls_req(h_op=ADD, mr_label=4, mr_nhid=1))
        req = schema.vr_mpls_req(h_op=GET, mr_label=4)
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(100):
                ks.request(req)
            n += 100
        return n / (time.perf_counter() - t0)


def raw_echo(run_dir: str, seconds: float, req_len: int, reply_len: int) -> float:
    p = child(ECHO, run_dir, str(req_len), str(reply_len))
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(os.path.join(run_dir, "echo"))
        msg = b"r" * req_len
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(100):
                s.sendall(msg)
                got = 0
                while got < reply_len:
                    got += len(s.recv(65536))
            n += 100
        s.close()
        return n / (time.perf_counter() - t0)
    finally:
        p.wait(5)


def twisted_rates(run_dir: str, seconds: float) -> dict[str, float]:
    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import Deferred, DeferredList, ensureDeferred

    from vrtwist.ksync.client import KsyncClientProtocol, connect_ksync

    reactor: Any = _reactor
    results: dict[str, float] = {}

    async def pipelined(c: KsyncClientProtocol, bunch: int) -> float:
        window = 200
        req = schema.vr_mpls_req(h_op=GET, mr_label=4)
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            ds: list[Deferred[Any]] = []
            for _ in range(window // bunch if bunch > 1 else window):
                if bunch > 1:
                    ds.extend(c.request_many([req] * bunch))
                else:
                    ds.append(c.request(req))
            await DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
            n += len(ds)
        return n / (time.perf_counter() - t0)

    async def run() -> None:
        c = await connect_ksync(reactor, run_dir)
        await c.request(schema.vr_mpls_req(h_op=ADD, mr_label=4, mr_nhid=1))
        results["twisted, 200 in flight (req/s)"] = await pipelined(c, 1)
        results["twisted, bunched 16, 200 in flight (req/s)"] = await pipelined(c, 16)
        adds = [
            c.request(schema.vr_interface_req(h_op=ADD, vifr_idx=i, vifr_name="tap%08x-ab" % i))
            for i in range(4096)
        ]
        await DeferredList(adds, fireOnOneErrback=True)
        t0 = time.perf_counter()
        rounds = 0
        while True:
            vifs = await c.dump(schema.vr_interface_req(vifr_marker=-1))
            rounds += 1
            if time.perf_counter() - t0 > seconds:
                break
        assert len(vifs) == 4096
        results["dump 4096 vifs (objects/s)"] = rounds * 4096 / (time.perf_counter() - t0)
        c.transport.loseConnection()  # type: ignore[union-attr]

    def done(r: object) -> object:
        reactor.stop()
        return r

    ensureDeferred(run()).addBoth(done)
    reactor.run()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    run_dir = tempfile.mkdtemp(prefix="bench-ksync-")
    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    server = child(SERVER, run_dir)
    try:
        get_req = build_request(encode(schema.vr_mpls_req(h_op=GET, mr_label=4)), seq=1)
        reply_len = 24 + 30 + 49
        rate_blocking = blocking_gets(run_dir, args.seconds)
        rate_raw = raw_echo(run_dir, args.seconds, len(get_req), reply_len)
        print("%-46s %12.0f" % ("raw unix echo, same sizes (round trips/s)", rate_raw))
        print(
            "%-46s %12.0f   (%.2fx of raw)"
            % ("blocking client, 1 GET at a time (req/s)", rate_blocking, rate_blocking / rate_raw)
        )
        for name, value in twisted_rates(run_dir, args.seconds).items():
            print("%-46s %12.0f" % (name, value))
    finally:
        server.terminate()
        server.wait(5)
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()

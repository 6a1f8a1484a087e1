"""Throughput of the vSPC and the vsock relay beside a direct loopback TCP transfer.

Every figure comes from one run of this script: the relay under test runs as a
real ``twistd -n vspc`` / ``twistd -n vsock-relay`` process (as deployed); the
sender and receiver share the benchmark's reactor, in the direct case too, so
the ratio compares like with like.

    python bench/bench_vic.py [--mib 512] [--runs 3] [--vms 50] [--esx tcp|unix]

Cases:
  direct      TCP loopback sender -> receiver
  vsock-relay unix (or TCP) stand-in listener -> relay -> TCP backend, with kernel
              splice(2) (default) and with --no-splice (copy through Python)
  vspc up     fake ESX (telnet, IAC doubled) -> vSPC -> unix backend   (unescape path)
  vspc down   unix backend -> vSPC -> fake ESX                         (escape path)
              ESX reaches the vSPC over TCP loopback as real ESX does (--esx unix: a
              unix socket). Sinks only count bytes, exactly as the direct sink does (the
              down sink counts the escaped wire bytes, whose total is known in advance).
  vspc 50 VMs every VM sends at once; min/median/max per-VM MB/s and the aggregate
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    UNIXServerEndpoint,
    connectProtocol,
    serverFromString,
)
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from zope.interface import implementer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vrtwist.vic import telnet as T
from vrtwist.vic import vmware_ext as X
from vrtwist.vic.testing import FakeESX, uuid_text

CHUNK = 65536
MB = 1e6


@implementer(IPushProducer)
class Sender:
    """Writes ``total`` bytes of ``block`` (pre-encoded) as fast as flow control allows."""

    def __init__(self, transport: Any, block: bytes, payloadPerBlock: int, total: int) -> None:
        self.t = transport
        self.block = block
        self.per = payloadPerBlock
        self.left = total
        self.paused = False
        transport.registerProducer(self, True)
        reactor.callLater(0, self.resumeProducing)

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left > 0:
            self.t.write(self.block)
            self.left -= self.per
        if self.left <= 0 and not self.paused:
            self.t.unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True
        self.left = 0


class Counter(Protocol):
    """Counts bytes; fires ``done`` with (first byte time, last byte time) at ``total``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.got = 0
        self.first = 0.0
        self.done: defer.Deferred[tuple[float, float]] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.got:
            self.first = time.perf_counter()
        self.got += len(data)
        if self.got >= self.total and not self.done.called:
            self.done.callback((self.first, time.perf_counter()))


class OneShot(Factory):
    def __init__(self, make: Any) -> None:
        self.make = make
        self.protocols: list[Any] = []
        self.arrived: defer.Deferred[Any] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> Any:
        p = self.make()
        self.protocols.append(p)
        if len(self.protocols) == 1:
            # fire after makeConnection, so the waiter sees a connected protocol
            reactor.callLater(0, self.arrived.callback, p)
        return p


def block() -> bytes:
    return random.Random(42).randbytes(CHUNK)


_started: list[int] = []


def twistd(*args: str) -> subprocess.Popen[bytes]:
    exe = os.path.join(os.path.dirname(sys.executable), "twistd")
    # e.g. BENCH_VIC_TWISTD_ARGS="--profile=/tmp/p{n} --profiler=cprofile --savestats"
    _started.append(1)
    extra = os.environ.get("BENCH_VIC_TWISTD_ARGS", "").replace("{n}", str(len(_started))).split()
    return subprocess.Popen([exe, "-n", "--pidfile=", "-l", "/dev/null", *extra, *args])


async def connectRetry(ep: Any, make: Any) -> Any:
    """A unix socket file exists from bind() on, a moment before listen(): retry refusals."""
    from twisted.internet.error import ConnectionRefusedError

    for _ in range(100):
        try:
            return await connectProtocol(ep, make())
        except ConnectionRefusedError:
            await deferLater(reactor, 0.02, lambda: None)
    return await connectProtocol(ep, make())


def cpuSeconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CPU: dict[str, list[float]] = {}  # case -> relay-process CPU seconds per run
GUEST_SNDBUF = 0  # --guest-sndbuf: SO_SNDBUF of the unix stand-in's caller (0: default)
SELF: dict[str, list[float]] = {}  # case -> this process's CPU seconds (sender + sink)


def selfCPU() -> float:
    t = os.times()
    return t.user + t.system


def _unlink(path: str) -> None:
    """Remove a previous run's socket file, so waiting for it means waiting for the new one."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def waitPath(path: str) -> None:
    for _ in range(400):
        if os.path.exists(path):
            return
        await deferLater(reactor, 0.025, lambda: None)
    raise RuntimeError(f"{path} never appeared")


async def direct(total: int) -> float:
    f = OneShot(lambda: Counter(total))
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(f)
    client = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol()
    )
    t0 = time.perf_counter()
    Sender(client.transport, block(), CHUNK, total)
    recv = await f.arrived
    _, end = await recv.done
    client.transport.loseConnection()
    await port.stopListening()
    rate: float = total / (end - t0) / MB
    return rate


async def vsockRelay(total: int, workdir: str, listen: str = "unix", splice: bool = True) -> float:
    f = OneShot(lambda: Counter(total))
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(f)
    sock = os.path.join(workdir, "relay.sock")
    _unlink(sock)
    if listen == "unix":
        where = f"unix:{sock}"
    else:
        where = f"tcp:{_freePort()}:interface=127.0.0.1"
    extra = [] if splice else ["--no-splice"]
    proc = twistd(
        "vsock-relay",
        "--listen",
        where,
        "--backend",
        f"tcp:127.0.0.1:{port.getHost().port}",
        *extra,
    )
    try:
        if listen == "unix":
            await waitPath(sock)
            ep: Any = UNIXClientEndpoint(reactor, sock)
        else:
            ep = TCP4ClientEndpoint(reactor, "127.0.0.1", int(where.split(":")[1]))
            await waitPort(int(where.split(":")[1]))
            # the probe connection was relayed to the backend too: forget it
            while not f.protocols:
                await deferLater(reactor, 0.01, lambda: None)
            f.protocols.clear()
            f.arrived = defer.Deferred()
        client = await connectRetry(ep, Protocol)
        if listen == "unix" and GUEST_SNDBUF:
            # what a VMM mapping vsock to a unix socket could choose (not the default)
            import socket as _s

            client.transport.socket.setsockopt(_s.SOL_SOCKET, _s.SO_SNDBUF, GUEST_SNDBUF)
        c0 = cpuSeconds(proc.pid)
        t0 = time.perf_counter()
        Sender(client.transport, block(), CHUNK, total)
        recv = await f.arrived
        _, end = await recv.done.addTimeout(300, reactor)
        CPU.setdefault(f"vsock-relay {listen} ({'splice' if splice else 'copy'})", []).append(
            cpuSeconds(proc.pid) - c0
        )
        client.transport.loseConnection()
    finally:
        proc.terminate()
        proc.wait()
        await port.stopListening()
    rate: float = total / (end - t0) / MB
    return rate


def _freePort() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


async def waitPort(port: int) -> None:
    import socket

    for _ in range(400):
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
            return
        except OSError:
            await deferLater(reactor, 0.025, lambda: None)
        finally:
            s.close()
    raise RuntimeError(f"port {port} never opened")


async def startVSPC(workdir: str, esx: str) -> tuple[subprocess.Popen[bytes], Any]:
    """Start ``twistd -n vspc``; ESX reaches it over TCP (as real ESX does) or unix."""
    sock = os.path.join(workdir, "vspc.sock")
    _unlink(sock)
    if esx == "tcp":
        tcpPort = _freePort()
        listen = f"tcp:{tcpPort}:interface=127.0.0.1"
    else:
        listen = f"unix:{sock}"
    proc = twistd(
        "vspc",
        "--listen",
        listen,
        "--backend",
        f"unix:{workdir}/{{uuid}}.sock",
        "--service-uri",
        "*",
        "--buffer",
        str(1024 * 1024),
    )
    if esx == "tcp":
        await waitPort(tcpPort)
        return proc, TCP4ClientEndpoint(reactor, "127.0.0.1", tcpPort)
    await waitPath(sock)
    return proc, UNIXClientEndpoint(reactor, sock)


async def vspcOnce(
    total: int, workdir: str, vms: int, up: bool, esx: str = "tcp"
) -> list[tuple[float, float, float]]:
    """Returns per-VM (start, first byte, last byte)."""
    proc, esxEndpoint = await startVSPC(workdir, esx)
    ports = []
    factories = []
    try:
        for n in range(vms):
            uuid = X.normaliseUUID(uuid_text(n + 1))
            f = OneShot((lambda: Counter(total)) if up else Protocol)
            ports.append(await UNIXServerEndpoint(reactor, f"{workdir}/{uuid}.sock").listen(f))
            factories.append(f)
        esxs = []
        for n in range(vms):
            e = FakeESX(uuid=uuid_text(n + 1))
            if not up:
                # The sink counts wire bytes, as the direct sink does: the payload
                # escapes to a known wire length, so no decoding in this process.
                wire = (total // CHUNK) * len(T.encodeData(block()))
                e.counter = Counter(wire)  # type: ignore[attr-defined]
            esxs.append(await connectRetry(esxEndpoint, lambda e=e: e))
        await defer.gatherResults([e.proxied() for e in esxs])
        backends = [await f.arrived for f in factories]
        data = block()
        c0 = cpuSeconds(proc.pid)
        t0 = time.perf_counter()
        if up:
            enc = T.encodeData(data)
            for e in esxs:
                Sender(e.transport, enc, CHUNK, total)
            results = await defer.gatherResults([b.done for b in backends])
        else:
            for e in esxs:
                c = e.counter
                e.dataReceived = c.dataReceived  # count wire bytes from here on
            for b in backends:
                Sender(b.transport, data, CHUNK, total)
            results = await defer.gatherResults([e.counter.done for e in esxs])
        out = [(t0, first, last) for first, last in results]
        if vms == 1:
            CPU.setdefault("vspc up" if up else "vspc down", []).append(cpuSeconds(proc.pid) - c0)
        for e in esxs:
            e.transport.loseConnection()
    finally:
        proc.terminate()
        proc.wait()
        for p in ports:
            await p.stopListening()
    return out


async def main(args: argparse.Namespace) -> None:
    total = args.mib * 1024 * 1024
    work = tempfile.mkdtemp(prefix="bvic")
    names = ["direct"]
    names += [f"vsock-relay {k} ({m})" for k in ("unix", "tcp") for m in ("splice", "copy")]
    names += ["vspc up", "vspc down"]
    rows: dict[str, list[float]] = {k: [] for k in names}
    many: list[tuple[float, float, float, float]] = []
    try:
        for run in range(args.runs):
            c = selfCPU()
            rows["direct"].append(await direct(total))
            SELF.setdefault("direct", []).append(selfCPU() - c)
            if "relay" in args.only:
                for kind in ("unix", "tcp"):
                    for splice in (True, False):
                        name = f"vsock-relay {kind} ({'splice' if splice else 'copy'})"
                        c = selfCPU()
                        rows[name].append(await vsockRelay(total, work, kind, splice))
                        SELF.setdefault(name, []).append(selfCPU() - c)
            if "vspc" in args.only:
                c = selfCPU()
                (r,) = await vspcOnce(total, work, 1, up=True, esx=args.esx)
                rows["vspc up"].append(total / (r[2] - r[0]) / MB)
                SELF.setdefault("vspc up", []).append(selfCPU() - c)
                c = selfCPU()
                (r,) = await vspcOnce(total, work, 1, up=False, esx=args.esx)
                rows["vspc down"].append(total / (r[2] - r[0]) / MB)
                SELF.setdefault("vspc down", []).append(selfCPU() - c)
            if "vms" in args.only:
                per = max(1, total // args.vms // 4)
                res = await vspcOnce(per, work, args.vms, up=True)
                t0 = res[0][0]
                end = max(x[2] for x in res)
                rates = sorted(per / (x[2] - x[0]) / MB for x in res)
                many.append(
                    (
                        per * args.vms / (end - t0) / MB,
                        rates[0],
                        statistics.median(rates),
                        rates[-1],
                    )
                )
            print(
                f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rows.items() if v),
                flush=True,
            )
    finally:
        shutil.rmtree(work, True)
    load = open("/proc/loadavg").read().split()[:3]
    print()
    print(
        f"payload {args.mib} MiB per single-stream case, {args.runs} runs; loadavg {' '.join(load)}"
    )
    print("'vs direct' is the median of per-run ratios (each case against the direct transfer")
    print("of the same run); 'CPU' is the relay/vSPC process's own CPU time for the transfer and")
    print("'per core' the payload divided by it: what one core of relay could carry;")
    print("'bench CPU s' is this process's CPU (sender + sink, plus setup) for the case.")
    print(
        "| path | MB/s (median) | runs | vs direct | goal | CPU s | per core MB/s | bench CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    goals = {k: ">= 0.50" for k in rows if k.startswith("vsock")}
    goals.update({"direct": "", "vspc up": ">= 0.25", "vspc down": ">= 0.25"})
    for k, v in rows.items():
        if not v:
            continue
        m = statistics.median(v)
        ratio = statistics.median(x / d for x, d in zip(v, rows["direct"]))
        cpu = statistics.median(CPU[k]) if CPU.get(k) else None
        cpuText = f"{cpu:.2f}" if cpu else ""
        perCore = f"{total / cpu / MB:,.0f}" if cpu else ""
        runs = " / ".join(f"{x:,.0f}" for x in v)
        own = f"{statistics.median(SELF[k]):.2f}" if SELF.get(k) else ""
        print(
            f"| {k} | {m:,.0f} | {runs} | {ratio:.2f} | {goals[k]} | {cpuText} | {perCore} | {own} |"
        )
    if not many:
        return
    agg = statistics.median(x[0] for x in many)
    print()
    print(
        f"{args.vms} VMs at once through the vSPC, {max(1, total // args.vms // 4) / 2**20:.1f} MiB each (up):"
    )
    print(
        "| aggregate MB/s | slowest VM MB/s | median VM MB/s | fastest VM MB/s | slowest/fastest |"
    )
    print("|---|---|---|---|---|")
    lo = statistics.median(x[1] for x in many)
    med = statistics.median(x[2] for x in many)
    hi = statistics.median(x[3] for x in many)
    print(f"| {agg:,.0f} | {lo:,.1f} | {med:,.1f} | {hi:,.1f} | {lo / hi:.2f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vms", type=int, default=50)
    ap.add_argument("--only", default="relay,vspc,vms", help="subset: relay, vspc, vms")
    ap.add_argument("--esx", default="tcp", choices=("tcp", "unix"), help="ESX -> vSPC link")
    ap.add_argument(
        "--guest-sndbuf",
        type=int,
        default=0,
        help="SO_SNDBUF for the caller of the unix stand-in (default: the kernel's, 208 KiB)",
    )
    a = ap.parse_args()
    GUEST_SNDBUF = a.guest_sndbuf

    def run() -> defer.Deferred[None]:
        d = defer.ensureDeferred(main(a))
        d.addErrback(lambda f: f.printTraceback(sys.stderr))
        d.addBoth(lambda _: reactor.stop())
        return d

    reactor.callWhenRunning(run)
    reactor.run()

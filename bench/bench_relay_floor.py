"""What relays of each kind cost: the floor under ``bench_vpnkit.py``'s connection rate.

The client is ``bench_vpnkit.py``'s (connect, half-close, read EOF, close, one connection
at a time) and every figure is the ratio to the direct rate measured alternately in the
same run (median of three pairs), so the rungs of the ladder compare on one machine state:

- ``tcp-relays``: two bare Python relays in a chain, loopback TCP between them (plain
  ``select.epoll``, no framing, no flow control): one accept and one connect each.
- ``py-pair``: a vpnkit-shaped pair in bare Python: a unix-socket link between the two
  processes carrying real vpnkit frames (``vrtwist.vpnkit.frames``), one channel per
  connection, plain ``select.epoll`` loops.
- ``py-pair-twisted``: the same relay code driven by Twisted's epoll reactor through
  minimal file descriptors (no transports, protocols or logging context).
- ``c-pair``: the same pair in C (``bench/relay_floor.c``, built with the system C
  compiler into a temporary directory; skipped when there is none).
- ``vrtwist``: ``twistd vpnkit-host`` and ``twistd vpnkit-forwarder`` themselves.

Each rung runs with the relays' busy polling off (0) and on (``--spin-us``, default 200
us, vrtwist's ``--busy-poll`` default), and the CPU time (user + system) both relay
processes spend per connection is printed beside it.  None of the bare pairs does flow
control, error handling or anything beyond this client's traffic: they are floors, not
alternatives.  Usage::

    python bench/bench_relay_floor.py [--conns N] [--spin-us US ...] [--only RUNG,...]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # vrtwist from this checkout when not installed

from bench_vpnkit import _cpu, _echo_inline, _free_port, _wait_echo, short_connections  # noqa: E402

from vrtwist.vpnkit import frames as F  # noqa: E402

ND = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
RUNGS = ("tcp-relays", "py-pair", "py-pair-twisted", "c-pair", "vrtwist")


def echo(q: Any) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    q.put(s.getsockname()[1])
    _echo_inline(s)


class Spinner:
    """Zero-timeout polls for ``spin`` seconds after the last event, yielding when idle."""

    def __init__(self, spin: float) -> None:
        self.spin = spin
        self.last = 0.0

    def timeout(self) -> float:
        return 0 if self.spin and time.monotonic() - self.last < self.spin else -1

    def polled(self, events: int, timeout: float) -> None:
        if events and self.spin:
            self.last = time.monotonic()
        elif not events and timeout == 0:
            os.sched_yield()


def _ready(ep: select.epoll, spin: float) -> Iterator[int]:
    """The descriptors ``ep`` reports ready, forever, busy polling as ``Spinner`` says."""
    sp = Spinner(spin)
    while True:
        t = sp.timeout()
        ev = ep.poll(t)
        sp.polled(len(ev), t)
        for fd, _ in ev:
            yield fd


# --- two bare TCP relays ----------------------------------------------------------------


def tcp_relay(dst: int, spin: float, q: Any) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    lsock.setblocking(False)
    q.put(lsock.getsockname()[1])
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    peer: dict[int, list[Any]] = {}
    socks: dict[int, socket.socket] = {}
    for fd in _ready(ep, spin):
        if fd == lsock.fileno():
            a, _ = lsock.accept()
            a.setblocking(False)
            a.setsockopt(*ND)
            b = socket.socket()
            b.setblocking(False)
            b.connect_ex(("127.0.0.1", dst))
            b.setsockopt(*ND)
            for x, y in ((a, b), (b, a)):
                socks[x.fileno()] = x
                peer[x.fileno()] = [y, False]
                ep.register(x.fileno(), select.EPOLLIN)
            continue
        s = socks.get(fd)
        if s is None:
            continue
        try:
            d = s.recv(65536)
        except BlockingIOError:
            continue
        other = peer[fd][0]
        if d:
            other.send(d)
            continue
        peer[fd][1] = True
        try:
            other.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        ep.unregister(fd)
        if peer[other.fileno()][1]:
            for x in (s, other):
                socks.pop(x.fileno(), None)
                peer.pop(x.fileno(), None)
                x.close()


# --- a vpnkit-shaped pair in bare Python -------------------------------------------------


class PairSide:
    """One side of the bare pair: channels keyed by id, local sockets keyed by fd.

    ``watch``/``unwatch`` are the driver's (epoll or Twisted); the host side accepts on
    ``listener`` and opens channels downward from 0xFFFFFFFF, the forwarder side connects
    each Open to its destination.  The forwarder ends a channel with Shutdown + Close
    once its destination is done; the host answers that Close and frees the id.
    """

    def __init__(self, link: socket.socket, dest_port: int = 0) -> None:
        self.link = link
        self.dec = F.FrameDecoder()
        self.chans: dict[int, socket.socket] = {}
        self.ids: dict[int, int] = {}
        self.dest = F.Destination.tcp("127.0.0.1", dest_port) if dest_port else None
        self.next_id = 0xFFFFFFFF
        self.watch: Callable[[socket.socket], None] = lambda s: None
        self.unwatch: Callable[[socket.socket], None] = lambda s: None

    def accept(self, listener: socket.socket) -> None:
        assert self.dest is not None
        while True:
            try:
                a, _ = listener.accept()
            except BlockingIOError:
                return
            a.setblocking(False)
            cid, self.next_id = self.next_id, self.next_id - 1
            self.chans[cid] = a
            self.ids[a.fileno()] = cid
            out = F.encode_open(cid, self.dest)
            try:
                d: bytes | None = a.recv(65536)  # the FIN is often there already
            except BlockingIOError:
                d = None
            if d == b"":
                out += F.encode_shutdown(cid)
            else:
                if d:
                    out += F.encode_data_header(cid, len(d)) + d
                self.watch(a)
            self.link.sendall(out)

    def link_readable(self) -> None:
        data = self.link.recv(262144)
        if not data:
            raise SystemExit(0)
        out = b""
        for ev in self.dec.feed(data):
            t = type(ev)
            if t is F.Open:
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex((str(ev.destination.ip), ev.destination.port))  # type: ignore[union-attr]
                self.chans[ev.id] = s
                self.ids[s.fileno()] = ev.id
                self.watch(s)
            elif t is F.Payload:
                c = self.chans.get(ev.id)
                if c is not None:
                    c.send(ev.data)  # type: ignore[union-attr]
            elif t is F.Shutdown:
                c = self.chans.get(ev.id)
                if c is not None:
                    c.shutdown(socket.SHUT_WR)
            elif t is F.Close:
                c = self.chans.pop(ev.id, None)
                if c is not None:
                    self.ids.pop(c.fileno(), None)
                    self.unwatch(c)
                    c.close()
                    if self.dest is not None:
                        out += F.encode_close(ev.id)
        if out:
            self.link.sendall(out)

    def local_readable(self, s: socket.socket) -> None:
        cid = self.ids.get(s.fileno())
        if cid is None:
            return
        try:
            d = s.recv(65536)
        except BlockingIOError:
            return
        if d:
            self.link.sendall(F.encode_data_header(cid, len(d)) + d)
            return
        self.unwatch(s)
        out = F.encode_shutdown(cid)
        if self.dest is None:
            out += F.encode_close(cid)  # forwarder: the destination is done
        self.link.sendall(out)


def _pair_process(role: str, path: str, dport: int, spin: float, twisted: bool, q: Any) -> None:
    listener = None
    if role == "fwd":
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen(1)
        q.put(0)
        link, _ = srv.accept()
    else:
        link = socket.socket(socket.AF_UNIX)
        link.connect(path)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.setblocking(False)
        q.put(listener.getsockname()[1])
    link.setblocking(True)  # tiny frames: a blocking sendall never waits here
    side = PairSide(link, dport if role == "host" else 0)
    (_run_twisted if twisted else _run_epoll)(side, link, listener, spin)


def _run_epoll(
    side: PairSide, link: socket.socket, listener: socket.socket | None, spin: float
) -> None:
    handlers: dict[int, Callable[[], None]] = {link.fileno(): side.link_readable}
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}

    def watch(s: socket.socket) -> None:
        socks[s.fileno()] = s
        ep.register(s.fileno(), select.EPOLLIN)

    def unwatch(s: socket.socket) -> None:
        if socks.pop(s.fileno(), None) is not None:
            ep.unregister(s.fileno())

    side.watch, side.unwatch = watch, unwatch
    if listener is not None:
        lst = listener
        handlers[lst.fileno()] = lambda: side.accept(lst)
    for fd in handlers:
        ep.register(fd, select.EPOLLIN)
    for fd in _ready(ep, spin):
        h = handlers.get(fd)
        if h is not None:
            h()
        elif fd in socks:
            side.local_readable(socks[fd])


class _FD:
    """The least an object needs to be an IReadDescriptor of Twisted's reactor."""

    def __init__(self, s: socket.socket, on_read: Callable[[], None], kick: Any) -> None:
        self.fileno = s.fileno
        self._on_read = on_read
        self._kick = kick

    def doRead(self) -> None:
        # A true return value would tell the reactor why to disconnect us.
        self._kick()
        self._on_read()

    def logPrefix(self) -> str:
        return "floor"

    def connectionLost(self, reason: object) -> None:
        pass


def _run_twisted(
    side: PairSide, link: socket.socket, listener: socket.socket | None, spin: float
) -> None:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from vrtwist._busypoll import BusyPoll

    r: Any = reactor
    bp = BusyPoll(r, spin)
    fds: dict[int, _FD] = {}

    def watch(s: socket.socket) -> None:
        fds[s.fileno()] = d = _FD(s, lambda: side.local_readable(s), bp.kick)
        r.addReader(d)

    def unwatch(s: socket.socket) -> None:
        d = fds.pop(s.fileno(), None)
        if d is not None:
            r.removeReader(d)

    side.watch, side.unwatch = watch, unwatch
    r.addReader(_FD(link, side.link_readable, bp.kick))
    if listener is not None:
        lst = listener
        r.addReader(_FD(lst, lambda: side.accept(lst), bp.kick))
    r.run(installSignalHandlers=False)


# --- rungs ---------------------------------------------------------------------------------


class Rung:
    """Starts the relays of one rung; ``port`` is where the client connects."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.port = 0
        self._stop: list[Callable[[], None]] = []

    def stop(self) -> None:
        for f in self._stop:
            f()


def _start_mp(rung: Rung, target: Any, *args: Any) -> Any:
    q: Any = mp.Queue()
    p = mp.Process(target=target, args=(*args, q), daemon=True)
    p.start()
    rung.pids.append(p.pid)  # type: ignore[arg-type]
    rung._stop.append(p.terminate)
    return q.get(timeout=30)


def start_tcp_relays(dport: int, spin: float, tmp: str) -> Rung:
    rung = Rung()
    r2 = _start_mp(rung, tcp_relay, dport, spin)
    rung.port = _start_mp(rung, tcp_relay, r2, spin)
    return rung


def start_pair(dport: int, spin: float, tmp: str, twisted: bool = False) -> Rung:
    rung = Rung()
    path = os.path.join(tmp, f"link-{time.monotonic_ns()}.sock")
    _start_mp(rung, _pair_process, "fwd", path, 0, spin, twisted)
    rung.port = _start_mp(rung, _pair_process, "host", path, dport, spin, twisted)
    return rung


def _spawn(rung: Rung, argv: list[str]) -> None:
    p = subprocess.Popen(argv)
    rung.pids.append(p.pid)
    def stop() -> None:
        p.kill()
        p.wait()

    rung._stop.append(stop)


def start_c_pair(dport: int, spin: float, tmp: str) -> Rung | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = os.path.join(tmp, "relay_floor")
    if not os.path.exists(exe):
        subprocess.run([cc, "-O2", "-o", exe, os.path.join(HERE, "relay_floor.c")], check=True)
    rung = Rung()
    path = os.path.join(tmp, f"clink-{time.monotonic_ns()}.sock")
    us = str(int(spin * 1e6))
    _spawn(rung, [exe, "fwd", path, us])
    while not os.path.exists(path):
        time.sleep(0.01)
    rung.port = _free_port()
    _spawn(rung, [exe, "host", path, str(rung.port), str(dport), us])
    _wait_echo(rung.port)
    return rung


def start_vrtwist(dport: int, spin: float, tmp: str) -> Rung:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    rung = Rung()
    path = os.path.join(tmp, f"vlink-{time.monotonic_ns()}.sock")
    us = str(int(spin * 1e6))
    common = [twistd, "-n", "--pidfile=", "--logfile"]
    log = os.path.join(tmp, "fwd.log")
    _spawn(rung, [*common, log, "vpnkit-forwarder", "--data-listen", path, "--busy-poll", us])
    while not os.path.exists(path):
        time.sleep(0.01)
    rung.port = _free_port()
    expose = f"tcp:127.0.0.1:{rung.port}:127.0.0.1:{dport}"
    log = os.path.join(tmp, "host.log")
    _spawn(rung, [*common, log, "vpnkit-host", "--data-connect", path, "--busy-poll", us, "--expose", expose])  # fmt: skip
    _wait_echo(rung.port)
    return rung


STARTERS: dict[str, Callable[[int, float, str], Rung | None]] = {
    "tcp-relays": start_tcp_relays,
    "py-pair": start_pair,
    "py-pair-twisted": lambda d, s, t: start_pair(d, s, t, twisted=True),
    "c-pair": start_c_pair,
    "vrtwist": start_vrtwist,
}


def measure(rung: Rung, dport: int, n: int) -> tuple[float, float, float, float]:
    """Median direct rate, median relayed rate, median ratio, relay CPU us per connection."""
    short_connections(rung.port, 200)  # warm up
    runs = []
    for _ in range(3):
        d = n / short_connections(dport, n)
        c0 = sum(_cpu(p) for p in rung.pids)
        v = n / short_connections(rung.port, n)
        c1 = sum(_cpu(p) for p in rung.pids)
        runs.append((d, v, (c1 - c0) / n * 1e6))
    return (
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
        statistics.median(r[1] / r[0] for r in runs),
        statistics.median(r[2] for r in runs),
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--spin-us", type=int, nargs="*", default=[0, 200])
    ap.add_argument("--only", default=",".join(RUNGS), help="comma list of: " + ",".join(RUNGS))
    args = ap.parse_args()
    only = [r for r in args.only.split(",") if r]
    for r in only:
        if r not in STARTERS:
            ap.error(f"unknown rung {r!r}")
    q: Any = mp.Queue()
    srv = mp.Process(target=echo, args=(q,), daemon=True)
    srv.start()
    dport = q.get()
    tmp = tempfile.mkdtemp(prefix="bench-floor-")
    print(f"# load before: {open('/proc/loadavg').read().strip()}  cores={os.cpu_count()}")
    print(
        "| relays | busy poll | direct conn/s | relayed conn/s | ratio | relay CPU per conn |\n"
        "|---|---|---|---|---|---|"
    )
    try:
        for name in only:
            for us in args.spin_us:
                rung = STARTERS[name](dport, us / 1e6, tmp)
                if rung is None:
                    print(f"| {name} | {us} us | - | - | skipped: no C compiler | - |")
                    continue
                try:
                    d, v, ratio, cpu = measure(rung, dport, args.conns)
                finally:
                    rung.stop()
                print(
                    f"| {name} | {us} us | {d:,.0f} | {v:,.0f} | {ratio:.2f} | {cpu:.0f} us |",
                    flush=True,
                )
    finally:
        srv.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"# load after: {open('/proc/loadavg').read().strip()}")


if __name__ == "__main__":
    main()

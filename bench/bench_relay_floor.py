"""What bare Python relays cost: the floor under ``bench_vpnkit.py``'s connection rate.

Two relays in a chain (client -> relay -> relay -> server, all loopback TCP), each a
plain ``select.epoll`` loop with no Twisted, no framing and no flow control: one accept
and one connect per proxied connection, ``recv``/``send`` and half-close relayed.  The
client is the same as ``bench_vpnkit.py``'s (connect, half-close, read EOF, close) and
the figure is the ratio to the direct rate measured in the same run, with and without
busy polling in the relays.  It tells how far the vpnkit pair is from what any Python
process pair could do on this machine.  Usage::

    python bench/bench_relay_floor.py [--conns N] [--spin-us US ...]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import select
import socket
import time
from typing import Any

ND = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def sink(q: Any) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    q.put(s.getsockname()[1])
    while True:
        c, _ = s.accept()
        while c.recv(65536):
            pass
        c.close()


def relay(dst: int, q: Any, spin: float) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    lsock.setblocking(False)
    q.put(lsock.getsockname()[1])
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    peer: dict[int, list[Any]] = {}
    socks: dict[int, socket.socket] = {}
    last = 0.0
    while True:
        ev = ep.poll(0) if spin and time.monotonic() - last < spin else ep.poll()
        if ev and spin:
            last = time.monotonic()
        for fd, _e in ev:
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


def conns(port: int, n: int) -> float:
    """Connections per second with ``bench_vpnkit.py``'s very client."""
    from bench_vpnkit import short_connections  # this script's folder is on sys.path

    return n / short_connections(port, n)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--spin-us", type=int, nargs="*", default=[0, 200])
    args = ap.parse_args()
    print(f"# load: {open('/proc/loadavg').read().strip()}")
    print(
        "| relays busy-poll | direct conn/s | through two bare relays | ratio |\n|---|---|---|---|"
    )
    for us in args.spin_us:
        q: Any = mp.Queue()
        procs = [mp.Process(target=sink, args=(q,), daemon=True)]
        procs[0].start()
        sp = q.get()
        procs.append(mp.Process(target=relay, args=(sp, q, us / 1e6), daemon=True))
        procs[-1].start()
        r2 = q.get()
        procs.append(mp.Process(target=relay, args=(r2, q, us / 1e6), daemon=True))
        procs[-1].start()
        r1 = q.get()
        ratios = []
        for _ in range(3):
            d = conns(sp, args.conns)
            v = conns(r1, args.conns)
            ratios.append((d, v))
        d, v = sorted(ratios, key=lambda x: x[1] / x[0])[1]
        print(f"| {us} us | {d:,.0f} | {v:,.0f} | {v / d:.2f} |")
        for p in procs:
            p.terminate()


if __name__ == "__main__":
    main()

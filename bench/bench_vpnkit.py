"""vpnkit data plane: host -> forwarder -> loopback TCP, beside direct loopback TCP.

Runs ``twistd vpnkit-forwarder --data-listen <dir>/data.sock`` and ``twistd vpnkit-host
--data-connect ... --expose ...`` as two processes, a third process with the loopback
servers (sink, source, echo), and measures from this process with blocking sockets:

- 1 GiB upload and 1 GiB download, one stream (MB/s, ratio to direct)
- 4 parallel uploads of SIZE/4 each (aggregate MB/s)
- N sequential short connections: connect, half-close, read EOF, close (per second)
- 64-byte ping-pong round trips on one connection (mean microseconds, added)

Each figure is measured through vpnkit and directly in the same run, by the same client
code in this one process: with ``--repeat R`` the direct and vpnkit runs alternate R
times, the table gives the median of each and the median of the per-run ratios (or of
the per-run added microseconds).  The CPU time (user + system, from /proc) that the two
vpnkit processes spend per proxied connection and per round trip is printed below the
table: on a shared machine it moves far less than the rates do.  Usage::

    python bench/bench_vpnkit.py [--size MiB] [--conns N] [--rtts N] [--window BYTES] [--repeat R]
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

MiB = 1 << 20
CHUNK = 1 << 20


# --- servers (run in their own process with --serve) ---------------------------------


def _sink(conn: socket.socket) -> None:
    buf = bytearray(CHUNK)
    total = 0
    while True:
        n = conn.recv_into(buf)
        if not n:
            break
        total += n
    conn.sendall(total.to_bytes(8, "little"))
    conn.close()


def _source(conn: socket.socket) -> None:
    want = b""
    while len(want) < 8:
        part = conn.recv(8 - len(want))
        if not part:
            conn.close()
            return
        want += part
    n = int.from_bytes(want, "little")
    block = b"\xa5" * CHUNK
    while n > 0:
        k = min(n, CHUNK)
        conn.sendall(block if k == CHUNK else block[:k])
        n -= k
    conn.close()


def _threaded(lsock: socket.socket, fn: object) -> None:
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=fn, args=(conn,), daemon=True).start()  # type: ignore[arg-type]


def _echo_inline(lsock: socket.socket) -> None:
    """Sequential echo: one connection at a time, no thread per connection."""
    buf = bytearray(65536)
    while True:
        conn, _ = lsock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            conn.sendall(buf[:n])
        conn.close()


def serve() -> None:
    socks = []
    for _ in range(3):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(1024)
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
    threading.Thread(target=_threaded, args=(socks[0], _sink), daemon=True).start()
    threading.Thread(target=_threaded, args=(socks[1], _source), daemon=True).start()
    _echo_inline(socks[2])


# --- clients -------------------------------------------------------------------------


def upload(port: int, size: int) -> float:
    s = socket.create_connection(("127.0.0.1", port))
    block = b"\x5a" * CHUNK
    t0 = time.perf_counter()
    left = size
    while left > 0:
        k = min(left, CHUNK)
        s.sendall(block if k == CHUNK else block[:k])
        left -= k
    s.shutdown(socket.SHUT_WR)
    got = b""
    while len(got) < 8:
        part = s.recv(8)
        if not part:
            break
        got += part
    dt = time.perf_counter() - t0
    s.close()
    if int.from_bytes(got, "little") != size:
        raise RuntimeError(f"sink saw {int.from_bytes(got, 'little')} bytes, not {size}")
    return dt


def download(port: int, size: int) -> float:
    s = socket.create_connection(("127.0.0.1", port))
    buf = bytearray(CHUNK)
    t0 = time.perf_counter()
    s.sendall(size.to_bytes(8, "little"))
    s.shutdown(socket.SHUT_WR)
    total = 0
    while True:
        n = s.recv_into(buf)
        if not n:
            break
        total += n
    dt = time.perf_counter() - t0
    s.close()
    if total != size:
        raise RuntimeError(f"downloaded {total} bytes, not {size}")
    return dt


def parallel_upload(port: int, size: int, streams: int) -> float:
    errors: list[BaseException] = []

    def one() -> None:
        try:
            upload(port, size // streams)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def short_connections(port: int, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.shutdown(socket.SHUT_WR)
        while s.recv(64):
            pass
        s.close()
    return time.perf_counter() - t0


def round_trips(port: int, n: int) -> list[float]:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"p" * 64
    out = []
    for _ in range(200):  # warm up
        s.sendall(msg)
        _recv_exact(s, 64)
    for _ in range(n):
        t0 = time.perf_counter()
        s.sendall(msg)
        _recv_exact(s, 64)
        out.append(time.perf_counter() - t0)
    s.close()
    return out


def _recv_exact(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        part = s.recv(n - len(got))
        if not part:
            raise RuntimeError("EOF")
        got += part
    return got


def codec_bench(seconds: float = 1.0) -> list[tuple[str, str]]:
    """Frames per second of the sans-IO codec alone (best of three runs)."""
    from vrtwist.vpnkit.frames import (
        Close,
        Destination,
        FrameDecoder,
        Open,
        Window,
        encode_data_header,
        encode_frame,
        encode_window,
    )

    control = (
        b"".join(
            encode_frame(f)
            for f in (
                Open(7, Destination.tcp("10.0.0.2", 80, mapped=True)),
                Window(7, 65536),
                Close(7),
            )
        )
        * 1000
    )
    data = (encode_data_header(9, 1024) + b"d" * 1024) * 1000
    big = (encode_data_header(9, 65536) + b"d" * 65536) * 16
    rows = []
    for name, wire, frames in (
        ("decode Open+Window+Close", control, 3000),
        ("decode Data 1 KiB", data, 1000),
        ("decode Data 64 KiB, 64 KiB reads", big, 16),
    ):
        best = 0.0
        for _ in range(3):
            n = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                dec = FrameDecoder()
                for i in range(0, len(wire), 65536):
                    dec.feed(wire[i : i + 65536])
                n += frames
            best = max(best, n / (time.perf_counter() - t0))
        rows.append((name, f"{best:,.0f} frames/s"))
    best = 0.0
    for _ in range(3):
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for i in range(1000):
                encode_data_header(i, 1024)
                encode_window(i, 65536)
            n += 2000
        best = max(best, n / (time.perf_counter() - t0))
    rows.append(("encode Data header + Window", f"{best:,.0f} frames/s"))
    return rows


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return int(p)


def _wait_echo(port: int, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"x")
            if s.recv(1) == b"x":
                s.close()
                return
            s.close()
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("vpnkit path never came up")


def _cpu_per_gb(what: str, cpu: list[list[float]], size: int) -> str:
    fwd = statistics.median(c[0] for c in cpu) / size * 1e9
    host = statistics.median(c[1] for c in cpu) / size * 1e9
    return f"CPU per GB ({what}): forwarder {fwd:.2f} s, host {host:.2f} s"


def _start_vpnkit(
    args: argparse.Namespace,
    tmp: str,
    direct: tuple[int, int, int],
    via: tuple[int, int, int],
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """Start twistd vpnkit-forwarder and vpnkit-host (the host exposing ``via`` ->
    ``direct``), each added to ``procs`` as soon as it runs."""
    sink, source, echo = direct
    v_sink, v_source, v_echo = via
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    data = os.path.join(tmp, "data.sock")
    common = ["-n", "--pidfile="]
    if args.reactor:
        common += ["--reactor", args.reactor]

    extra = [] if args.busy_poll is None else ["--busy-poll", str(args.busy_poll)]
    if args.window_max is not None:
        extra += ["--window-max", str(args.window_max)]

    def prof(name: str) -> list[str]:
        if not args.profile:
            return []
        return [
            "--profiler",
            "cprofile",
            "--savestats",
            "--profile",
            os.path.join(args.profile, name),
        ]

    procs.append(
        subprocess.Popen(
            [
                twistd,
                *common,
                *prof("fwd.prof"),
                "--logfile",
                os.path.join(tmp, "fwd.log"),
                "vpnkit-forwarder",
                "--data-listen",
                data,
                "--window",
                str(args.window),
                *extra,
            ]
        )
    )
    time.sleep(0.5)
    procs.append(
        subprocess.Popen(
            [
                twistd,
                *common,
                *prof("host.prof"),
                "--logfile",
                os.path.join(tmp, "host.log"),
                "vpnkit-host",
                "--data-connect",
                data,
                "--window",
                str(args.window),
                *extra,
                "--expose",
                f"tcp:127.0.0.1:{v_sink}:127.0.0.1:{sink}",
                "--expose",
                f"tcp:127.0.0.1:{v_source}:127.0.0.1:{source}",
                "--expose",
                f"tcp:127.0.0.1:{v_echo}:127.0.0.1:{echo}",
            ]
        )
    )


def _rtt(
    args: argparse.Namespace,
    echo: int,
    v_echo: int,
    procs: list[subprocess.Popen[bytes]],
    cpu: list[list[float]],
    rows: list[tuple[str, str, str, str]],
    notes: list[str],
) -> None:
    """64-byte round trips, direct and through vpnkit alternated: rows and CPU notes."""
    dms, vms, dps, vps = [], [], [], []
    cpu.clear()
    for _ in range(args.repeat):
        dl = round_trips(echo, args.rtts)
        c0 = [_cpu(p.pid) for p in procs[1:]]
        vl = round_trips(v_echo, args.rtts)
        cpu.append([_cpu(p.pid) - c for p, c in zip(procs[1:], c0)])
        dms.append(statistics.mean(dl) * 1e6)
        vms.append(statistics.mean(vl) * 1e6)
        dps.append(statistics.median(dl) * 1e6)
        vps.append(statistics.median(vl) * 1e6)
    dm, vm = statistics.median(dms), statistics.median(vms)
    dp, vp = statistics.median(dps), statistics.median(vps)
    added_m = statistics.median(v - d for d, v in zip(dms, vms))
    added_p = statistics.median(v - d for d, v in zip(dps, vps))
    fwd_us = statistics.median(c[0] for c in cpu) / (args.rtts + 200) * 1e6
    host_us = statistics.median(c[1] for c in cpu) / (args.rtts + 200) * 1e6
    notes.append(
        f"CPU per proxied round trip: forwarder {fwd_us:.0f} us, host {host_us:.0f} us"
    )
    rows.append(
        (
            f"64-byte round trip, mean ({args.rtts})",
            f"{dm:.0f} us",
            f"{vm:.0f} us",
            f"+{added_m:.0f} us",
        )
    )
    rows.append(
        (
            f"64-byte round trip, median ({args.rtts})",
            f"{dp:.0f} us",
            f"{vp:.0f} us",
            f"+{added_p:.0f} us",
        )
    )

def _print_codec() -> None:
    print(f"# load: {open('/proc/loadavg').read().strip()}")
    print("| codec operation | rate |\n|---|---|")
    for name, rate in codec_bench():
        print(f"| {name} | {rate} |")


def _stop(procs: list[subprocess.Popen[bytes]], sig: int) -> None:
    """Signal the children, newest first; kill those not gone within 10 s."""
    for p in reversed(procs):
        p.send_signal(sig)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--codec", action="store_true", help="benchmark the frame codec alone")
    ap.add_argument(
        "--size", type=int, default=1024, help="MiB per single-stream transfer (default 1024)"
    )
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--rtts", type=int, default=10000)
    ap.add_argument("--window", type=int, default=65536)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each figure; medians reported")
    ap.add_argument("--reactor", default=None, help="twistd --reactor for both vpnkit processes")
    ap.add_argument(
        "--profile", default=None, help="directory for cProfile stats of both processes"
    )
    ap.add_argument(
        "--window-max",
        type=int,
        default=None,
        help="pass --window-max BYTES to both vpnkit processes (= --window: Go's fixed windows)",
    )
    ap.add_argument(
        "--busy-poll",
        type=int,
        default=None,
        help="pass --busy-poll USEC to both vpnkit processes (default: their default)",
    )
    ap.add_argument(
        "--only", default=None, help="comma list of: upload,download,parallel,conns,rtt"
    )
    args = ap.parse_args()
    if args.serve:
        serve()
        return
    if args.codec:
        _print_codec()
        return

    tmp = tempfile.mkdtemp(prefix="bench-vpnkit-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        srv = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE)
        procs.append(srv)
        assert srv.stdout is not None
        sink, source, echo = (int(x) for x in srv.stdout.readline().split())
        v_sink, v_source, v_echo = _free_port(), _free_port(), _free_port()
        _start_vpnkit(args, tmp, (sink, source, echo), (v_sink, v_source, v_echo), procs)
        _wait_echo(v_echo)
        if os.environ.get("BENCH_HOLD"):
            print(f"echo {echo} v_echo {v_echo}", flush=True)
            time.sleep(float(os.environ["BENCH_HOLD"]))
        size = args.size * MiB
        print(
            f"# load before: {open('/proc/loadavg').read().strip()}  window={args.window}"
            f"  window-max={args.window_max or 'default'}  busy-poll={args.busy_poll if args.busy_poll is not None else 'default'}"
            f"  cores={os.cpu_count()}"
        )
        rows: list[tuple[str, str, str, str]] = []
        cpu: list[list[float]] = []
        notes: list[str] = []

        def pair(
            fn: object, d_arg: object, v_arg: object, *a: object
        ) -> tuple[float, float, float]:
            """Direct and vpnkit runs alternated; medians of each and of per-run ratios."""
            ds, vs, rs = [], [], []
            for _ in range(args.repeat):
                d = fn(d_arg, *a)  # type: ignore[operator]
                c0 = [_cpu(p.pid) for p in procs[1:]]
                v = fn(v_arg, *a)  # type: ignore[operator]
                cpu.append([_cpu(p.pid) - c for p, c in zip(procs[1:], c0)])
                ds.append(d)
                vs.append(v)
                rs.append(d / v)
            return statistics.median(ds), statistics.median(vs), statistics.median(rs)

        only = (
            set(args.only.split(","))
            if args.only
            else {"upload", "download", "parallel", "conns", "rtt"}
        )
        for name, fn, d_port, v_port in (
            ("upload", upload, sink, v_sink),
            ("download", download, source, v_source),
        ):
            if name not in only:
                continue
            cpu.clear()
            d, v, r = pair(fn, d_port, v_port, size)
            notes.append(_cpu_per_gb(f"{name}, 1 stream", cpu, size))
            rows.append(
                (
                    f"{args.size} MiB {name}, 1 stream",
                    f"{size / d / 1e6:,.0f} MB/s",
                    f"{size / v / 1e6:,.0f} MB/s",
                    f"{r:.2f}",
                )
            )
        if "parallel" in only:
            cpu.clear()
            d, v, r = pair(parallel_upload, sink, v_sink, size, 4)
            notes.append(_cpu_per_gb("upload, 4 streams", cpu, size))
            rows.append(
                (
                    f"{args.size} MiB upload, 4 streams",
                    f"{size / d / 1e6:,.0f} MB/s",
                    f"{size / v / 1e6:,.0f} MB/s",
                    f"{r:.2f}",
                )
            )
        if "conns" in only:
            cpu.clear()
            d, v, r = pair(short_connections, echo, v_echo, args.conns)
            fwd_us = statistics.median(c[0] for c in cpu) / args.conns * 1e6
            host_us = statistics.median(c[1] for c in cpu) / args.conns * 1e6
            notes.append(
                f"CPU per proxied connection: forwarder {fwd_us:.0f} us, host {host_us:.0f} us"
            )
            rows.append(
                (
                    f"{args.conns} sequential connections",
                    f"{args.conns / d:,.0f}/s",
                    f"{args.conns / v:,.0f}/s",
                    f"{r:.2f}",
                )
            )
        if "rtt" in only:
            _rtt(args, echo, v_echo, procs, cpu, rows, notes)
        print(f"# load after: {open('/proc/loadavg').read().strip()}")
        print(
            "| measurement | direct loopback | through vpnkit-host -> vpnkit-forwarder | ratio / added |"
        )
        print("|---|---|---|---|")
        for line in ["| " + " | ".join(r) + " |" for r in rows] + notes:
            print(line)
    finally:
        _stop(procs, 2 if args.profile else 15)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

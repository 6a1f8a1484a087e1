"""Two namespaces through vrtwist's datapath against the same two through a Linux bridge.

Both set-ups join network namespaces A (10.78.0.1) and B (10.78.0.2) with veths into a
third "node" namespace. Baseline: a Linux bridge there. vrtwist: one ``twistd -n
vrouter-dp`` process started in the node namespace, programmed with the real ``vif``,
``nh`` and ``rt`` utilities (a VIRTUAL vif per veth, an L2 ENCAP next hop per vif, a
bridge route per MAC; static neighbours in A and B). Measured in the same run:

* TCP: one Python stream A -> B for ``--seconds`` (64 KiB writes; the veths in A and B
  keep TSO and checksum offload, so the datapath reads GSO super-frames and, bridging
  veth to veth, writes them whole with their vnet header), throughput in Mbit/s;
* UDP: 64-byte frames (18-byte payload) A -> B as fast as one sender can (64 datagrams
  per ``sendmmsg``), packets per second received by B's socket (64 per ``recvmmsg``;
  the receiver's count over its first to last datagram); B's eth0 ``rx_packets`` and
  the vrtwist tx vif's counter are printed as cross-checks.

``--two-nodes`` adds two "compute nodes" X and Y (namespaces joined by a fabric veth,
A behind X, B behind Y): one ``vrouter-dp`` per node bridging over MPLSoUDP (fabric vif,
vhost vif, RCV next hop for the node's address, label 128 -> L2 ENCAP to the VM vif, a
tunnel next hop and a labelled bridge route to the other VM), against the kernel's own
VXLAN device + bridge on the same veths; TCP only, fabric MTU 1500 and VM MTU 1400 in
both. The datapaths write the tunnel's datagrams as UDP GSO super-frames and merge them
back on the receiving node (see docs/datapath.md).

Goals: TCP >= 1/4 of the bridge; >= 100,000 small packets/s through one datapath
process; across two nodes TCP >= 1/8 of the kernel's VXLAN. Needs root and ``ip``;
every name starts with ``--prefix``; all is removed after.

``--dp-nice N`` starts ``vrouter-dp`` at nice value N (say -10: the datapath then gets the
core it asks for ahead of the sender and receiver, what a deployment with a forwarding
core of its own gives it; not the default figure). ``--floor`` adds UDP64 through a bare Python forwarder between the two veths'
``PACKET_MMAP`` rings (no pipeline, no reactor), the floor of Python plus the kernel.

Usage: python bench/bench_ports.py [--seconds S] [--runs N] [--prefix P] [--two-nodes] [--floor]
                                  [--dp-nice N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager

from vrtwist.datapath.testing import (
    Vm,
    build_two_nodes,
    node_config,
    program_node,
    start_vrouter_dp,
    stop_processes,
)

MAC_A, MAC_B = "02:78:00:00:00:01", "02:78:00:00:00:02"
IP_A, IP_B = "10.78.0.1", "10.78.0.2"

TCP_SERVER = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket(); s.bind(("{ip}", 5301)); s.listen(1); s.settimeout(30)
    print("ready", flush=True)
    c, _ = s.accept(); c.settimeout(10)
    n, first, last = 0, None, None
    buf = bytearray(1 << 20)
    try:
        while True:
            k = c.recv_into(buf)
            if not k: break
            now = time.monotonic()
            first = first or now
            last = now; n += k
    except socket.timeout:
        pass
    print(n, (last or 0) - (first or 0))
""")
TCP_CLIENT = textwrap.dedent("""
    import socket, time
    data = b"x" * 65536
    c = socket.create_connection(("{ip}", 5301), timeout=10)
    end = time.monotonic() + {seconds}
    while time.monotonic() < end:
        c.sendall(data)
    c.close()
""")
MMSG = textwrap.dedent("""
    import ctypes, socket, struct, time
    libc = ctypes.CDLL(None, use_errno=True)
    class Iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    class Msghdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                    ("iov", ctypes.POINTER(Iovec)), ("iovlen", ctypes.c_size_t),
                    ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]
    class Mmsghdr(ctypes.Structure):
        _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]
    VLEN = 64
    def vectors(bufs):
        iovs = (Iovec * VLEN)()
        msgs = (Mmsghdr * VLEN)()
        for i, buf in enumerate(bufs):
            iovs[i].base = ctypes.addressof(buf)
            iovs[i].len = ctypes.sizeof(buf)
            msgs[i].hdr.iov = ctypes.pointer(iovs[i])
            msgs[i].hdr.iovlen = 1
        return iovs, msgs
""")
# the receiver counts datagrams its socket delivered, 64 per recvmmsg at most
UDP_SERVER = MMSG + textwrap.dedent("""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    s.bind(("{ip}", 5302))
    bufs = [ctypes.create_string_buffer(2048) for _ in range(VLEN)]
    iovs, msgs = vectors(bufs)
    wait = lambda sec: s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                    struct.pack("ll", sec, 0))
    wait(int({seconds}) + 5)
    print("ready", flush=True)
    n, first, last = 0, None, None
    while True:
        # MSG_WAITFORONE: wait for the first datagram (SO_RCVTIMEO), then take what is there
        k = libc.recvmmsg(s.fileno(), msgs, VLEN, 0x10000, None)
        if k <= 0:
            break
        now = time.monotonic()
        if first is None:
            first = now; wait(1)
        last = now; n += k
    print(n, (last or 0) - (first or 0))
""")
# the sender: 64 datagrams per sendmmsg, as fast as it can
UDP_CLIENT = MMSG + textwrap.dedent("""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("{ip}", 5302))
    payload = ctypes.create_string_buffer(18)  # 14 + 20 + 8 + 18 = 60 bytes + FCS = 64
    iovs, msgs = vectors([payload] * VLEN)
    sent, end, fd = 0, time.monotonic() + {seconds}, s.fileno()
    while time.monotonic() < end:
        for _ in range(16):
            k = libc.sendmmsg(fd, msgs, VLEN, 0)
            if k > 0:
                sent += k
    print(sent)
""")


# the floor: a bare Python forwarder between the two veths' PACKET_MMAP rings (the same
# Rings as the ports), no pipeline, no reactor: what Python and the kernel cost per frame
FORWARDER = textwrap.dedent("""
    import select, socket, sys
    from vrtwist.datapath import rings
    def port(name):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        s.setsockopt(263, 15, 1)  # PACKET_VNET_HDR
        s.setsockopt(263, 23, 1)  # PACKET_IGNORE_OUTGOING
        r = rings.Rings(s, 10)
        s.bind((name, 3))
        s.setblocking(False)
        return s, r
    (sa, ra), (sb, rb) = port("va"), port("vb")
    poll = select.poll()
    poll.register(sa, select.POLLIN)
    pairs = {{sa.fileno(): (ra, rb), sb.fileno(): (rb, ra)}}
    poll.register(sb, select.POLLIN)
    unpack = rings.HDR.unpack_from
    print("ready", flush=True)
    while True:
        for fd, _ in poll.poll():
            rx, tx = pairs[fd]
            m = rx.map
            while True:
                off = rx.rx
                status, length, snaplen, mac = unpack(m, off)[:4]
                if not status & 1:
                    break
                at = off + mac
                if not tx.put(m[at - 10 : at], m[at : at + snaplen]):
                    tx.flush()
                    tx.put(m[at - 10 : at], m[at : at + snaplen])
                rx.release_rx(off)
            tx.flush()
""")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=120)


class World:
    """Namespaces ``<p>a``, ``<p>b`` and ``<p>n`` (node) joined by veths."""

    def __init__(self, prefix: str) -> None:
        self.p = prefix
        self.a, self.b, self.node = prefix + "a", prefix + "b", prefix + "n"
        self.made: list[str] = []
        #: the running vrouter-dp's socket directory
        self.run_dir: str | None = None

    def __enter__(self) -> World:
        for ns in (self.a, self.b, self.node):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for ns, side, mac, ip, other_ip, other_mac in (
            (self.a, "va", MAC_A, IP_A, IP_B, MAC_B),
            (self.b, "vb", MAC_B, IP_B, IP_A, MAC_A),
        ):
            sh("ip", "-n", self.node, "link", "add", side, "type", "veth", "peer", "name",
               "eth0", "netns", ns)  # fmt: skip
            sh("ip", "-n", self.node, "link", "set", side, "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "address", mac)
            sh("ip", "-n", ns, "addr", "add", ip + "/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "neigh", "replace", other_ip, "lladdr", other_mac, "dev", "eth0")
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)

    def in_ns(self, ns: str, code: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _pair(world: World, server: str, client: str, seconds: float) -> tuple[int, float, str]:
    srv = world.in_ns(world.b, server.format(ip=IP_B, seconds=seconds))
    assert srv.stdout is not None
    ready = srv.stdout.readline().strip()
    if ready != "ready":
        raise RuntimeError("server did not start: " + (srv.stderr.read() if srv.stderr else ""))
    cli = world.in_ns(world.a, client.format(ip=IP_B, seconds=seconds))
    cli_out, cli_err = cli.communicate(timeout=seconds + 60)
    out, err = srv.communicate(timeout=seconds + 60)
    fields = out.split()
    if len(fields) != 2:
        raise RuntimeError("server: " + err + cli_err)
    return int(fields[0]), float(fields[1]), cli_out.strip()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of ``pid`` (0 without one)."""
    if pid is None:
        return 0.0
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Row = tuple[float, float, int, float, float]


def rx_packets(world: World) -> int:
    """``rx_packets`` of B's eth0 (sysfs as ``ip netns exec`` mounts it for B)."""
    out = sh("ip", "netns", "exec", world.b, "cat", "/sys/class/net/eth0/statistics/rx_packets")
    return int(out.stdout)


def vif_tx_packets(run_dir: str | None, vif: int = 2) -> int:
    """The datapath's own count of packets sent on ``vif`` (``vif --get``), 0 without one."""
    if run_dir is None:
        return 0
    tool = os.path.join(os.path.dirname(sys.executable), "vif")
    out = sh(tool, "--sock-dir", run_dir, "--get", str(vif)).stdout
    for line in out.splitlines():
        if "TX packets:" in line:
            return int(line.split("TX packets:")[1].split()[0])
    return 0


def measure(world: World, seconds: float, pid: int | None = None,
            run_dir: str | None = None) -> Row:  # fmt: skip
    """(TCP Mbit/s, UDP pps received, UDP sent, datapath CPU s in TCP, in UDP).

    The UDP figure is what B's socket received (the receiver's count) over the time
    from its first to its last datagram; B's eth0 ``rx_packets`` and, for vrtwist, the
    tx vif's packet counter are printed beside it as cross-checks.
    """
    c0 = cpu_seconds(pid)
    n, span, _ = _pair(world, TCP_SERVER, TCP_CLIENT, seconds)
    c1 = cpu_seconds(pid)
    mbps = n * 8 / span / 1e6 if span > 0 else 0.0
    dev0, vif0 = rx_packets(world), vif_tx_packets(run_dir)
    got, span, sent = _pair(world, UDP_SERVER, UDP_CLIENT, seconds)
    c2 = cpu_seconds(pid)
    dev, vif = rx_packets(world) - dev0, vif_tx_packets(run_dir) - vif0
    print("  UDP64 %s: socket received %d, B eth0 rx_packets %d%s, sent %s; load %.2f"
          % ("vrtwist" if pid else "bridge", got, dev,
             ", tx vif counted %d" % vif if run_dir else "", sent,
             os.getloadavg()[0]))  # fmt: skip
    pps = got / span if span > 0 else 0.0
    return mbps, pps, int(sent or 0), (c1 - c0) / seconds, (c2 - c1) / seconds


@contextmanager
def bridge(world: World) -> Iterator[None]:
    sh("ip", "-n", world.node, "link", "add", "br0", "type", "bridge")
    for side in ("va", "vb"):
        sh("ip", "-n", world.node, "link", "set", side, "master", "br0")
    sh("ip", "-n", world.node, "link", "set", "br0", "up")
    try:
        yield
    finally:
        sh("ip", "-n", world.node, "link", "del", "br0", check=False)


@contextmanager
def vrtwist(world: World, nice: int = 0) -> Iterator[int]:
    run_dir = world.run_dir = tempfile.mkdtemp(prefix=world.p)
    bindir = os.path.dirname(sys.executable)
    proc = None
    try:
        proc = start_vrouter_dp(world.node, run_dir, nice=nice)
        program_node(None, run_dir, (
            ("vif", "--add", "va", "--type", "virtual", "--id", "1", "--mac", "00:00:5e:00:01:00",
             "--vrf", "0"),
            ("vif", "--add", "vb", "--type", "virtual", "--id", "2", "--mac", "00:00:5e:00:01:00",
             "--vrf", "0"),
            ("nh", "--create", "21", "--type", "2", "--oif", "1", "--l2"),
            ("nh", "--create", "22", "--type", "2", "--oif", "2", "--l2"),
            ("rt", "-c", "-v", "0", "-f", "1", "-e", MAC_A, "-n", "21"),
            ("rt", "-c", "-v", "0", "-f", "1", "-e", MAC_B, "-n", "22"),
        ))  # fmt: skip
        sock = ["--sock-dir", run_dir]
        deadline = time.monotonic() + 10
        while "Status: UP" not in sh(os.path.join(bindir, "vif"), *sock, "--get", "2").stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("vifs did not attach; see " + run_dir + "/vrouter-dp.log")
            time.sleep(0.05)
        yield proc.pid  # ip netns exec execs twistd: the same process
    finally:
        if proc is not None:
            stop_processes([proc])
        shutil.rmtree(run_dir, ignore_errors=True)


FX, FY = "02:79:00:00:00:0a", "02:79:00:00:00:0b"
IPX, IPY = "192.168.79.1", "192.168.79.2"


class TwoNodes(World):
    """VM namespaces A and B on two "nodes" X and Y joined by a fabric veth fx <-> fy
    (``vrtwist.datapath.testing.build_two_nodes``, fabric MTU 9000, VM MTU 1400)."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.x, self.y = prefix + "x", prefix + "y"

    def __enter__(self) -> TwoNodes:
        nodes = build_two_nodes(self.p, Vm(MAC_A, IP_A), Vm(MAC_B, IP_B), (FX, FY),
                                fabric_mtu=1500)  # fmt: skip
        self.made.extend(nodes.namespaces)
        return self


@contextmanager
def kernel_vxlan(world: TwoNodes) -> Iterator[None]:
    for node, dev, me, peer, side in ((world.x, "fx", IPX, IPY, "va"),
                                      (world.y, "fy", IPY, IPX, "vb")):  # fmt: skip
        sh("ip", "-n", node, "addr", "add", me + "/24", "dev", dev)
        sh("ip", "-n", node, "link", "add", "vx", "type", "vxlan", "id", "42", "local", me,
           "remote", peer, "dstport", "4789", "dev", dev)  # fmt: skip
        sh("ip", "-n", node, "link", "add", "br0", "type", "bridge")
        for port in ("vx", side):
            sh("ip", "-n", node, "link", "set", port, "master", "br0")
        for port in ("vx", "br0"):
            sh("ip", "-n", node, "link", "set", port, "up")
    try:
        yield
    finally:
        for node, dev in ((world.x, "fx"), (world.y, "fy")):
            sh("ip", "-n", node, "link", "del", "br0", check=False)
            sh("ip", "-n", node, "link", "del", "vx", check=False)
            sh("ip", "-n", node, "addr", "flush", "dev", dev, check=False)


@contextmanager
def vrtwist_nodes(world: TwoNodes) -> Iterator[list[int]]:
    """One ``vrouter-dp`` per node bridging its VM over MPLSoUDP, label 128."""
    procs: list[subprocess.Popen[bytes]] = []
    dirs: list[str] = []
    try:
        for node, config in (
            (world.x, node_config("fx", FX, FY, IPX, IPY, "va", MAC_A, MAC_B)),
            (world.y, node_config("fy", FY, FX, IPY, IPX, "vb", MAC_B, MAC_A)),
        ):
            run_dir = tempfile.mkdtemp(prefix=world.p)
            dirs.append(run_dir)
            procs.append(start_vrouter_dp(node, run_dir))
            program_node(node, run_dir, config)  # in the node: vif resolves names there
        yield [p.pid for p in procs]
    finally:
        stop_processes(procs)
        for run_dir in dirs:
            shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def forwarder(world: World) -> Iterator[int]:
    proc = world.in_ns(world.node, FORWARDER.format())
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("forwarder did not start: " + (proc.stderr.read() if proc.stderr else ""))
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def floor(world: World, seconds: float) -> tuple[float, float, int, float]:
    """UDP64 through the bare ring forwarder: (pps received, its CPU s, sent, load)."""
    with forwarder(world) as pid:
        c0 = cpu_seconds(pid)
        got, span, sent = _pair(world, UDP_SERVER, UDP_CLIENT, seconds)
        cpu = (cpu_seconds(pid) - c0) / seconds
    return (got / span if span > 0 else 0.0), cpu, int(sent or 0), os.getloadavg()[0]


def measure_tcp(world: World, seconds: float) -> float:
    n, span, _ = _pair(world, TCP_SERVER, TCP_CLIENT, seconds)
    return n * 8 / span / 1e6 if span > 0 else 0.0


def two_nodes(prefix: str, seconds: float, runs: int) -> None:
    kernel: list[float] = []
    ours: list[float] = []
    with TwoNodes(prefix) as world:
        for _ in range(runs):
            with kernel_vxlan(world):
                kernel.append(measure_tcp(world, seconds))
            with vrtwist_nodes(world):
                try:
                    ours.append(measure_tcp(world, seconds))
                except RuntimeError as e:
                    print("vrtwist run failed:", e)
                    ours.append(0.0)
    k, v = statistics.median(kernel), statistics.median(ours)
    print("two nodes, TCP Mbit/s: kernel VXLAN %.0f, vrtwist MPLSoUDP %.0f" % (k, v))
    print("TCP ratio vrtwist/kernel: %.3f (goal >= 0.125)" % (v / k if k else 0.0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    p.add_argument("--runs", type=int, default=1, help="medians over this many runs")
    p.add_argument("--prefix", default="ptb%d" % (os.getpid() % 10000), help="name prefix")
    p.add_argument(
        "--two-nodes",
        action="store_true",
        help="also: two nodes over MPLSoUDP vs the kernel's VXLAN device (TCP)",
    )
    p.add_argument(
        "--dp-nice",
        type=int,
        default=0,
        help="run vrouter-dp at this nice value (e.g. -10: ahead of the sender and receiver)",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also: UDP64 through a bare Python ring forwarder (no pipeline, no reactor)",
    )
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_ports: needs root (network namespaces and veths)")
        return 2
    if args.two_nodes:
        two_nodes(args.prefix + "t", args.seconds, args.runs)
    rows: dict[str, list[Row]] = {"bridge": [], "vrtwist": []}
    floors: list[tuple[float, float, int, float]] = []
    with World(args.prefix) as world:
        for _ in range(args.runs):
            if args.floor:
                floors.append(floor(world, args.seconds))
            with bridge(world):
                rows["bridge"].append(measure(world, args.seconds))
            with vrtwist(world, args.dp_nice) as pid:
                try:
                    rows["vrtwist"].append(measure(world, args.seconds, pid, world.run_dir))
                except RuntimeError as e:  # no pipeline: nothing arrives
                    print("vrtwist run failed:", e)
                    rows["vrtwist"].append((0.0, 0.0, 0, 0.0, 0.0))
    load = os.getloadavg()
    print("load average %.2f %.2f %.2f, %d cores" % (*load, os.cpu_count() or 0))
    med = {k: tuple(statistics.median(r[i] for r in v) for i in range(5)) for k, v in rows.items()}
    print("%-8s %12s %14s %14s %18s" % ("path", "TCP Mbit/s", "UDP64 rx pps", "UDP64 tx pps",
                                        "datapath CPU tcp/udp"))  # fmt: skip
    for name, (mbps, pps, sent, ctcp, cudp) in med.items():
        cpu = "%.2f/%.2f" % (ctcp, cudp) if name == "vrtwist" else "(kernel)"
        print("%-8s %12.0f %14.0f %14.0f %18s" % (name, mbps, pps, sent / args.seconds, cpu))
    for f_pps, f_cpu, f_sent, f_load in floors:
        print("floor    %12s %14.0f %14.0f %18s  (bare ring forwarder, %.0f per CPU-s, load %.2f)"
              % ("", f_pps, f_sent / args.seconds, "%.2f" % f_cpu,
                 f_pps / f_cpu if f_cpu else 0.0, f_load))  # fmt: skip
    b, v = med["bridge"], med["vrtwist"]
    if v[4] > 0:
        print("UDP64 through vrtwist per datapath CPU-second: %.0f packets" % (v[1] / v[4]))
    print("TCP ratio vrtwist/bridge: %.3f (goal >= 0.25)" % (v[0] / b[0] if b[0] else 0.0))
    print("UDP64 pps through vrtwist: %.0f (goal >= 100000); bridge %.0f" % (v[1], b[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

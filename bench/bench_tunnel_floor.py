"""A ladder of floors for TCP across two nodes over MPLSoUDP, measured in the same run.

The two-node set-up of ``bench_ports.py --two-nodes`` (VM namespaces A and B behind node
namespaces X and Y, a 1500-byte fabric veth, VM MTU 1400), three ways:

* the kernel's VXLAN device and a bridge per node (the goal's reference);
* a *bare* Python forwarder per node: no pipeline, no tables, no reactor, one blocking
  ``select`` loop over two plain ``AF_PACKET`` sockets. Node X cuts each TCP super-frame
  from A with :func:`vrtwist.datapath.offload.tcp_segment_parts`, puts the MPLS label
  and the outer headers around the segments and writes one UDP GSO frame per 64 KiB;
  node Y merges such a frame with :func:`vrtwist.datapath.offload.merge_tcp_chunks` and
  writes the TCP super-frame to B. ACKs the other way are encapsulated one by one. What
  Python costs for the same offload strategy, without the datapath around it;
* vrtwist: one ``twistd -n vrouter-dp`` per node (the real thing).

Prints Mbit/s and ratios to the kernel, and the load average. Needs root.

Usage: python bench/bench_tunnel_floor.py [--seconds S] [--runs N] [--prefix P]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import bench_ports as B

from vrtwist.datapath.testing import stop_processes

FORWARDER = textwrap.dedent("""
    import select, socket, struct, sys
    from vrtwist.datapath import offload
    vm_dev, fabric, me, peer, me_ip, peer_ip = sys.argv[1:7]
    SOL_PACKET, PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING = 263, 15, 23

    def sock(dev):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        s.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE
        s.bind((dev, 3))
        return s

    vm, fab = sock(vm_dev), sock(fabric)
    outer_eth = bytes.fromhex(peer.replace(":", "")) + bytes.fromhex(me.replace(":", "")) + b"\\x08\\x00"
    sip, dip = socket.inet_aton(me_ip), socket.inet_aton(peer_ip)
    label = struct.pack("!I", (128 << 12) | 0x100 | 64)
    zero = bytes(10)
    ident = 0

    def outer(total, ident):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + total, ident, 0, 64, 17, 0, sip, dip)
        ip = ip[:10] + struct.pack("!H", ~offload.checksum(ip) & 0xFFFF) + ip[12:]
        return outer_eth + ip

    def from_vm(frame, vnet):
        global ident
        flags, gso_type, _h, size, start, _o = offload.VNET_HDR.unpack(vnet)
        if gso_type in (offload.GSO_TCPV4, offload.GSO_TCPV4 | offload.GSO_ECN):
            segs = offload.tcp_segment_parts(frame, 0, 14, start, size)
            for at in range(0, len(segs), 25):
                group = segs[at : at + 25]
                parts = [b""]
                for head, data in group:
                    parts += (label, head, data)
                total = 8 + sum(len(p) for p in parts)
                pseudo = offload.checksum(sip + dip + struct.pack("!HH", 17, total))
                parts[0] = outer(total, ident) + struct.pack("!HHHH", 50000, 6635, total, pseudo)
                ident = (ident + len(group)) & 0xFFFF
                out = b"".join(parts)
                chunk = 4 + len(group[0][0]) + len(group[0][1])
                gso = offload.VNET_HDR.pack(1, offload.GSO_UDP_L4, 42, chunk, 34, 6)
                fab.sendmsg([gso if len(group) > 1 else zero, out])
            return
        if flags:
            frame = offload.finish(frame, vnet)[0]
        total = 8 + 4 + len(frame)
        ident = (ident + 1) & 0xFFFF
        fab.sendmsg([zero, outer(total, ident) + struct.pack("!HHHH", 50000, 6635, total, 0)
                     + label + frame])

    def from_fabric(frame, vnet):
        if len(frame) < 46 + 14 or frame[23] != 17 or frame[36:38] != b"\\x19\\xeb":
            return
        gso_type, size = vnet[1], struct.unpack_from("=H", vnet, 4)[0]
        if gso_type == offload.GSO_UDP_L4:
            merged = offload.merge_tcp_chunks(frame, 42, size, 4 + 14)
            if merged is not None:
                whole, gso = merged
                inner = whole[46:]
                vm.sendmsg([offload.vnet_for(gso, len(inner)), inner])
                return
            for seg in offload.finish(frame, vnet):
                vm.sendmsg([zero, seg[46:]])
            return
        vm.sendmsg([zero, frame[46:]])

    buf, head = bytearray(70000), bytearray(10)
    view = memoryview(buf)
    print("ready", flush=True)
    while True:
        ready, _w, _x = select.select([vm, fab], [], [])
        for s in ready:
            for _ in range(64):
                try:
                    n = s.recvmsg_into([head, buf], 0, socket.MSG_DONTWAIT)[0]
                except BlockingIOError:
                    break
                frame = view[: n - 10].tobytes()
                (from_vm if s is vm else from_fabric)(frame, bytes(head))
""")


@contextmanager
def bare_nodes(world: B.TwoNodes) -> Iterator[list[int]]:
    """One bare forwarder process per node (see the module docstring)."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for node, vm_dev, fabric, me, peer, me_ip, peer_ip in (
            (world.x, "va", "fx", B.FX, B.FY, B.IPX, B.IPY),
            (world.y, "vb", "fy", B.FY, B.FX, B.IPY, B.IPX),
        ):
            proc = subprocess.Popen(
                ["ip", "netns", "exec", node, sys.executable, "-c", FORWARDER, vm_dev, fabric,
                 me, peer, me_ip, peer_ip],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            procs.append(proc)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("forwarder: " + (proc.stderr.read() if proc.stderr else ""))
        yield [p.pid for p in procs]
    finally:
        stop_processes(procs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    p.add_argument("--runs", type=int, default=1, help="medians over this many runs")
    p.add_argument("--prefix", default="tfl%d" % (os.getpid() % 10000), help="name prefix")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_tunnel_floor: needs root (network namespaces and veths)")
        return 2
    rows: dict[str, list[float]] = {"kernel VXLAN": [], "bare Python": [], "vrtwist": []}
    with B.TwoNodes(args.prefix) as world:
        for _ in range(args.runs):
            setups: list[tuple[str, Callable[[B.TwoNodes], AbstractContextManager[object]]]] = [
                ("kernel VXLAN", B.kernel_vxlan), ("bare Python", bare_nodes),
                ("vrtwist", B.vrtwist_nodes),
            ]  # fmt: skip
            for name, setup in setups:
                with setup(world):
                    time.sleep(0.5)
                    try:
                        rows[name].append(B.measure_tcp(world, args.seconds))
                    except RuntimeError as e:
                        print(name, "failed:", e)
                        rows[name].append(0.0)
    load = os.getloadavg()
    print("load average %.2f %.2f %.2f, %d cores" % (*load, os.cpu_count() or 0))
    kernel = statistics.median(rows["kernel VXLAN"])
    for name, values in rows.items():
        v = statistics.median(values)
        print("%-14s %8.0f Mbit/s  ratio to the kernel %.3f" % (name, v, v / kernel if kernel else 0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

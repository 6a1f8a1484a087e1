"""Packet pipeline benchmarks, in process (no ports, no reactor).

Packets per second through ``Pipeline.receive`` for 64-byte UDP frames:
1. bridged VM to VM (bridge entry -> ENCAP AF_BRIDGE next hop): the bridged fast path,
   and again through every stage (``fast_path=False``),
2. routed (L2_RCV -> route -> ENCAP AF_INET next hop, TTL decrement),
3. routed into MPLSoUDP (outer IPv4/UDP/MPLS built per packet, UDP source-port jhash),
4. bridged with policy: every packet a flow-table hit, 100,000 flows installed in the
   shared-memory flow table (frames cycle over all 100,000 keys).
The output double accepts every frame and keeps none. The goal context: the whole
datapath process must forward >= 100,000 small packets/s.

Usage: python bench/bench_pipeline.py [--runs 3] [--packets 200000] [--flows 100000]
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable

from vrtwist.datapath import constants as C
from vrtwist.datapath.pipeline import Pipeline
from vrtwist.datapath.testing import CountingOutput, CountingTrap, World
from vrtwist.packet.headers import ETH_P_IP, UDP, Ethernet, IPv4
from vrtwist.shmem import layout as L
from vrtwist.shmem.flowtable import FlowTable

VM1 = bytes.fromhex("deadbeef0002")
VM2 = bytes.fromhex("deadbeef0001")
ROUTER = bytes.fromhex("00005e000100")


def frame64(
    dst: bytes, sport: int = 1000, dport: int = 2000, dip: bytes = b"\x02\x02\x02\x02"
) -> bytes:
    """A 64-byte Ethernet frame (without FCS 60 + 4): UDP with 18 bytes of payload."""
    payload = bytes(64 - 14 - 20 - 8 - 4)
    udp = UDP(sport, dport, 8 + len(payload)).pack() + payload
    ip = IPv4(b"\x01\x01\x01\x01", dip, 17, 20 + len(udp), 1, 64).pack()
    return Ethernet(dst, VM1, ETH_P_IP).pack() + ip + udp


def world(flows: int = 0, policy: bool = False,
          fast: bool = True) -> tuple[World, CountingOutput]:
    """VMs on vifs 1 and 2, the fabric on vif 0; bridged to VM2, routed to 2.2.2.2/32 and
    into MPLSoUDP for 3.3.3.3/32; the output counts and keeps nothing."""
    entries = max(1024, flows * 2)
    sink = CountingOutput()
    w = World(shmem_bridge=False, flow_entries=entries, flow_oentries=entries // 4,
              output=sink, trap=CountingTrap(), fast_path=fast)  # fmt: skip
    vflags = C.VIF_FLAG_POLICY_ENABLED if policy else 0
    for idx, mac in ((1, "de:ad:be:ef:00:02"), (2, "de:ad:be:ef:00:01")):
        w.vif(idx, mac_=mac, flags=vflags)
    w.vif(0, C.VIF_TYPE_PHYSICAL, mac_="00:11:11:11:11:11")
    w.encap_nh(12, 2)
    w.nh(13, C.NH_L2_RCV)
    w.encap_nh(14, 2, family=C.AF_INET)
    w.tunnel_nh(15, 0, C.NH_FLAG_TUNNEL_UDP_MPLS, sip="10.0.0.1", dip="10.0.0.2")
    w.bridge_route("de:ad:be:ef:00:01", 12)
    w.bridge_route("00:00:5e:00:01:00", 13)
    w.route("2.2.2.2", 32, 14)
    w.route("3.3.3.3", 32, 15, label=48)
    return w, sink


def install_flows(ft: FlowTable, n: int) -> list[bytes]:
    """``n`` forward UDP flows 1.1.1.1 -> 2.2.2.2 installed by FLOW_SET, and a frame of each."""
    frames = []
    for i in range(n):
        sport, dport = 1024 + (i & 0x7FFF), 2000 + (i >> 15)
        ft.flow_set(
            {
                "fr_index": -1,
                "fr_family": 2,
                "fr_flags": L.FLAG_ACTIVE,
                "fr_flow_proto": 17,
                "fr_flow_sport": struct.unpack("<H", sport.to_bytes(2, "big"))[0],
                "fr_flow_dport": struct.unpack("<H", dport.to_bytes(2, "big"))[0],
                "fr_flow_sip_l": 0x01010101,
                "fr_flow_dip_l": 0x02020202,
                "fr_action": L.ACTION_FORWARD,
            }
        )
        frames.append(frame64(VM2, sport, dport))
    return frames


def measure(receive: Callable[[int, bytes], None], frames: list[bytes], n: int) -> float:
    """Packets per second of this process's CPU time (8 engineers share 2 cores: wall
    time would measure the neighbours)."""
    count = len(frames)
    start = time.process_time()
    for i in range(n):
        receive(1, frames[i % count])
    return n / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--packets", type=int, default=200000)
    parser.add_argument("--flows", type=int, default=100000)
    args = parser.parse_args()
    print("load:", open("/proc/loadavg").read().strip())
    cases: list[tuple[str, Pipeline, list[bytes], CountingOutput]] = []
    for name, dst, dip, fast in (
        ("bridged", VM2, b"\x02\x02\x02\x02", True),
        ("bridged, stages", VM2, b"\x02\x02\x02\x02", False),
        ("routed", ROUTER, b"\x02\x02\x02\x02", True),
        ("mplsoudp", ROUTER, b"\x03\x03\x03\x03", True),
    ):
        w, sink = world(fast=fast)
        cases.append((name, w.pipeline, [frame64(dst, dip=dip)], sink))
    w, sink = world(args.flows, policy=True)
    t0 = time.perf_counter()
    frames = install_flows(w.flows, args.flows)
    print("%d flows installed in %.1f s" % (args.flows, time.perf_counter() - t0))
    cases.append(("flow hits", w.pipeline, frames, sink))
    for name, pipeline, frames_, sink in cases:
        rates = [measure(pipeline.receive, frames_, args.packets) for _ in range(args.runs)]
        if sink.sent != args.packets * args.runs:
            raise SystemExit(
                f"{name}: {sink.sent} frames left, expected {args.packets * args.runs}"
            )
        print(
            "%-16s %8.0f packets/s of CPU time (best of %d; runs %s)"
            % (name, max(rates), args.runs, ", ".join("%.0f" % r for r in rates))
        )
    drops = w.drops()
    print("drops in the flow case:", drops or "none")
    print("load:", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()

"""Benchmarks of the trap path: flow setup and DHCP through pkt0 and the agent's services.

Everything a packet meets between two VM vifs, minus the port layer: the datapath's
pipeline, the shared-memory flow table, pkt0 over real unix datagram sockets
(``dpdk_pkt0`` / ``agent_pkt0`` in a temporary run directory), the agent's trap dispatch,
its flow setup (FLOW_SET reverse then forward into the datapath, in process as the
embedded datapath does) and the release of the held packet to the other VM.

1. **Flow setup**: short TCP connections from VM1 to VM2, i.e. a new 5-tuple per SYN.
   Each SYN misses, is held, trapped, answered with a flow pair and released. Reports
   flow pairs per second (wall time, the reactor driving both sockets) and the latency
   from the SYN entering the pipeline to it leaving on VM2's vif (p50/p99).
2. **DHCP**: N VM ports each send DISCOVER then REQUEST; reports leases per second and
   the time for all N.
The baseline printed beside them is the same pipeline forwarding packets of flows that
already exist (no trap): the ratio says what a new flow costs over a known one.

Then the ladder: each stage of a setup alone, in CPU time of this process (the
pipeline's miss, the datapath's FLOW_SET pair, the agent's analysis, the release of the
held SYN, one datagram over a unix socket pair), their sum, all stages chained in one
process without socket or reactor, and the end-to-end CPU time per pair: where the time
goes, even on a loaded machine where the wall-clock rate says little.

``--split``: the datapath (tables, shared memory, pipeline, its pkt0 socket and its
ksync server) runs in a child process, the agent here, joined as ``twistd vrouter
--datapath external`` and ``twistd vrouter-dp`` are: pkt0 over the two unix datagram
sockets, FLOW_SET over a ksync session (the agent's ``KsyncFlowChannel``, a turn's
requests bunched 16 per message). The same figures, the CPU time per pair of each
process, and the ladder of each process's stages (the ksync FLOW_SET pair cut into the
agent's half and the datapath's). ``BENCH_PKT0_CHILD_PROFILE=<file>`` runs the child
under cProfile.

``--policy``: ``empty`` (default, as the agent runs with nothing configured: the policy
step is attached but inactive), ``none`` (no policy step at all), ``sg`` (every port in a
security group allowing TCP both ways: each setup is matched against it).

``--dgram-qlen``: the run re-executes itself in a private network namespace whose
``net.unix.max_dgram_qlen`` is this (default 512, what systemd sets on the hosts it boots;
the kernel's own default is 10), as root; ``0`` runs with the host's value. The value in
force is printed with the load.

Usage: python bench/bench_pkt0.py [--flows 20000] [--vms 1000] [--window 256]
       [--policy empty|none|sg] [--split] [--dgram-qlen 512]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from zope.interface import implementer

from vrtwist.agent.dpstate import AGENT_VIF, DatapathModel
from vrtwist.agent.model import Port
from vrtwist.agent.packet.flowpolicy import FlowPolicy, LocalPort
from vrtwist.agent.packet.flows import FlowSetup, RouteView, analyse
from vrtwist.agent.packet.service import KsyncFlowChannel, LocalFlowChannel
from vrtwist.agent.packet.services import PacketServices, VmPort
from vrtwist.agent.policy import PolicyConfig, gateway_set, security_group_from_json
from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import Datapath, make
from vrtwist.datapath.interfaces import IFrameOutput
from vrtwist.datapath.pipeline import Pipeline
from vrtwist.packet import dhcp as D
from vrtwist.packet.headers import ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, UDP, Ethernet, IPv4
from vrtwist.pkt0.codec import AgentHeader, decode
from vrtwist.pkt0.endpoints import AgentEndpoint, DatapathEndpoint, TrapLimiter
from vrtwist.pkt0.transport import (
    AGENT_SOCKET,
    DATAPATH_SOCKET,
    RECOMMENDED_DGRAM_QLEN,
    IPkt0Transport,
    UnixDatagramTransport,
    dgram_qlen,
)
from vrtwist.shmem.service import install

reactor: Any = _reactor
VN = "31111111-2222-3333-4444-555555555555"
VRRP = bytes.fromhex("00005e000100")


@implementer(IFrameOutput)
class Sink:
    """Counts frames per vif and notes when each SYN (by source port) left."""

    def __init__(self) -> None:
        self.count: dict[int, int] = {}
        self.left: dict[int, float] = {}
        self._waiter: Deferred[None] | None = None
        self._wake: Any = None

    def transmit(self, vif_index: int, frame: bytes | bytearray | memoryview) -> bool:
        self.count[vif_index] = self.count.get(vif_index, 0) + 1
        if len(frame) >= 38 and frame[23] == IPPROTO_TCP:
            self.left[struct.unpack_from("!H", frame, 34)[0]] = time.perf_counter()
            if self._waiter is not None and self._wake is None:
                # the sender resumes after this turn, never inside the pipeline
                self._wake = reactor.callLater(0, self._fire)
        return True

    def wait(self, timeout: float = 0.5) -> Deferred[None]:
        """Fires after the next SYN left (or ``timeout`` passed): the sender waits for
        room in its window instead of spinning the reactor."""
        d = self._waiter = Deferred()
        self._wake = None
        timer = reactor.callLater(timeout, self._fire)
        d.addBoth(lambda r: timer.cancel() if timer.active() else None)
        return d

    def _fire(self) -> None:
        d, self._waiter = self._waiter, None
        if d is not None:
            d.callback(None)


def port(n: int) -> Port:
    return Port(
        id=f"{n:08x}-2222-3333-4444-555555555555", instance_id=f"{n:08x}-aaaa-3333-4444-555555555555",
        vn_id=VN, vm_project_id="41111111-2222-3333-4444-555555555555", display_name=f"vm{n}",
        ip_address=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", ip6_address=None, type=0,
        system_name=f"bench{n}", mac_address="02:%02x:%02x:%02x:%02x:%02x" % (
            0, n >> 24 & 255, n >> 16 & 255, n >> 8 & 255, n & 255),
        plen=8, gateway="10.0.0.1", dns_server="10.0.0.2",
    )  # fmt: skip


class DatapathNode:
    """The datapath's part: tables, shared memory, pipeline and its end of pkt0."""

    def __init__(self, vms: int, run_dir: str) -> None:
        self.dp = Datapath()
        self.shared = install(self.dp, run_dir, 65536, 4096, flow_oentries=8192, bridge_oentries=1024)
        self.model, self.ports, self.by_vif = model_of(vms)
        order = {"vif": 0, "nh": 1, "mpls": 2, "route": 3}
        for key, (name, fields) in sorted(
            self.model.desired.items(),
            key=lambda kv: (order[kv[0][0]], -kv[0][1] if kv[0][0] == "route" else 0,
                            str(kv[0])),
        ):
            reply = self.dp.handle(make(name, {"h_op": C.OP_ADD, **fields}))
            assert int(reply[0][0].resp_code) >= 0, (name, reply[0][0].resp_code)
        self.out = Sink()
        agent_vif = self.dp.tables.interfaces[AGENT_VIF]
        self.dp_end = DatapathEndpoint(lambda: (AGENT_VIF, bytes(agent_vif.mac)),
                                       limiter=TrapLimiter(time.monotonic, (1e9, 10**9)))
        self.pipeline = Pipeline(self.dp, self.out, self.dp_end, flows=self.shared.flows)
        self.dp_end.deliver = self.pipeline.receive
        self.dp_t = UnixDatagramTransport(reactor, os.path.join(run_dir, DATAPATH_SOCKET),
                                          os.path.join(run_dir, AGENT_SOCKET), self.dp_end)
        self.dp_end.transport = self.dp_t
        self.dp_t.start()

    def stop(self) -> None:
        self.dp_t.stop()
        self.shared.close()


class AgentNode:
    """The agent's part: its model, pkt0 end, packet services and flow setup over
    ``channel`` (the embedded datapath's, or ksync)."""

    def __init__(self, vms: int, run_dir: str, channel: Any, policy: str = "empty") -> None:
        self.model, self.ports, self.by_vif = model_of(vms)
        self.agent_end = AgentEndpoint()
        self.agent_t = UnixDatagramTransport(reactor, os.path.join(run_dir, AGENT_SOCKET),
                                             os.path.join(run_dir, DATAPATH_SOCKET), self.agent_end)
        self.agent_end.transport = self.agent_t
        self.flows = FlowSetup(RouteView(self.model.desired), channel, reactor.seconds)
        if policy != "none":
            self.flows.policy = _policy(policy, self.ports, self.model)
        self.services = PacketServices(self.by_vif.get, self.agent_end.send_switch,
                                       lambda: VRRP, self.flows)
        self.agent_end.handler = self.services
        self.agent_t.start()

    def stop(self) -> None:
        self.agent_t.stop()


class Node(DatapathNode):
    """Datapath, agent model and services in one process, joined by pkt0 over real
    sockets; the agent's FLOW_SETs go straight into the embedded datapath."""

    def __init__(self, vms: int, run_dir: str, policy: str = "empty") -> None:
        super().__init__(vms, run_dir)
        self.agent = AgentNode(vms, run_dir, LocalFlowChannel(self.dp), policy)
        self.agent_end, self.agent_t = self.agent.agent_end, self.agent.agent_t
        self.flows, self.services = self.agent.flows, self.agent.services

    def stop(self) -> None:
        self.agent.stop()
        super().stop()


def model_of(vms: int) -> tuple[DatapathModel, list[Port], dict[int, VmPort]]:
    """The agent's model of ``vms`` VM ports (the same in both processes of ``--split``)."""
    model = DatapathModel(fabric_ip="192.0.2.1", fabric_name="nonexistent0",
                          os_index=lambda name: 0)
    ports = [port(n) for n in range(3, 3 + vms)]
    with model.batched():
        for p in ports:
            model.portAdded(p)
    by_vif = {}
    for p in ports:
        ids = model.port_ids(p.id)
        assert ids is not None
        by_vif[ids["vif"]] = VmPort(
            ids["vif"], ids["vrf"], bytes.fromhex(p.mac_address.replace(":", "")),
            p.ip_address, p.plen, p.gateway, p.dns_server, p.display_name)
    return model, ports, by_vif


def _policy(kind: str, ports: list[Port], model: DatapathModel) -> FlowPolicy:
    cfg = PolicyConfig()
    local: dict[int, LocalPort] = {}
    for p in ports:
        ids = model.port_ids(p.id)
        assert ids is not None
        local[ids["vif"]] = (p.id, p.vn_id, gateway_set([p.gateway, p.dns_server]))
    if kind == "sg":
        sg = "5e000000-0000-4000-8000-000000000001"
        cfg.set_group(security_group_from_json(sg, {"rules": [
            {"direction": "ingress", "protocol": "tcp"},
            {"direction": "egress", "protocol": "tcp"}]}))
        for p in ports:
            cfg.set_port_groups(p.id, [sg])
    return FlowPolicy(cfg, local.get, lambda vrf: None)


def syn(src: VmPort, dst: VmPort, sport: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, 80, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    ip = IPv4(IPv4Addr(src.ip), IPv4Addr(dst.ip), IPPROTO_TCP, 40, 1).pack()
    return Ethernet(VRRP, src.mac, ETH_P_IP).pack() + ip + tcp


def IPv4Addr(text: str | None) -> bytes:
    assert text is not None
    return bytes(int(x) for x in text.split("."))


async def bench_flows(node: DatapathNode, flows: int, window: int) -> dict[str, float]:
    vifs = sorted(node.by_vif)
    a, b = node.by_vif[vifs[0]], node.by_vif[vifs[1]]
    frames = [syn(a, b, 1024 + i) for i in range(flows)]
    entered: dict[int, float] = {}
    out = node.out
    start = time.perf_counter()
    cpu0 = time.process_time()
    sys0 = os.times().system
    sent = 0
    while sent < flows or len(out.left) < flows:
        # keep at most ``window`` setups in flight, as a busy VM would open connections
        while sent < flows and sent - len(out.left) < window:
            entered[1024 + sent] = time.perf_counter()
            node.pipeline.receive(a.vif, frames[sent])
            sent += 1
        await out.wait()
        if time.perf_counter() - start > 120:
            break
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    sys_cpu = os.times().system - sys0
    done = len(out.left)
    lat = sorted(out.left[p] - entered[p] for p in out.left)
    # baseline: the same SYNs again, now flow hits, no trap
    t0 = time.perf_counter()
    for f in frames[:done]:
        node.pipeline.receive(a.vif, f)
    hits = done / (time.perf_counter() - t0)
    return {
        "pairs": done,
        "pairs_per_s": done / wall,
        "pairs_per_cpu_s": done / cpu if cpu > 0 else 0.0,
        "p50_us": statistics.median(lat) * 1e6 if lat else 0.0,
        "p99_us": lat[int(len(lat) * 0.99) - 1] * 1e6 if lat else 0.0,
        "hits_per_s": hits,
        "cpu_us": cpu / done * 1e6 if done else 0.0,
        "sys_us": sys_cpu / done * 1e6 if done else 0.0,
    }


def _rate(n: int, cpu0: float) -> float:
    return n / max(time.process_time() - cpu0, 1e-9)


def floors(node: Node, n: int) -> dict[str, float]:
    """Same-run floors: what each stage of a flow setup costs on its own, per pair.

    In CPU time of this process (``time.process_time``), so that other work on the machine
    does not count against a stage, as it does against the end-to-end wall-clock figure."""
    vifs = sorted(node.by_vif)
    a, b = node.by_vif[vifs[0]], node.by_vif[vifs[1]]
    # 1. the pipeline's miss: HOLD entry, queue, trap framed
    misses, traps, frames = _miss_floor(node, a, b, n)
    # 2. the datapath's FLOW_SET pair alone, for those HOLD entries, then 5. the release
    #    of each held SYN (the pipeline's own replay of the packet its flow now passes)
    flow_sets, release = _pair_floor(node, traps)
    # 3. the agent's share without the datapath's write: each trap decoded, analysed and
    #    the pair's values built (what the embedded channel hands the table)
    routes = node.flows.routes
    t0 = time.process_time()
    for t in traps:
        hdr, inner = decode(t)
        d = analyse(hdr, inner, routes)
        if d.reverse is not None:
            FlowSetup.pair_values(hdr.param, hdr.param_5, d)
    agent = _rate(len(traps), t0) if traps else 0.0
    hdr = AgentHeader(a.vif, a.vrf, 6, 1, 5)
    # 4. the policy step alone on those decisions (as FlowSetup runs it: only when active)
    decisions = [analyse(hdr, f, node.flows.routes) for f in frames]
    policy = node.flows.policy
    t0 = time.process_time()
    for d in decisions:
        if policy is not None and d.reverse is not None and policy.active:
            policy.apply(d)
    policy_rate = _rate(n, t0)
    # 6. the socket hop: one trap-sized datagram sent and received, batches of 8
    hop = _socket_hop(len(syn(a, b, 1)) + 44, n)
    # 7. every stage in one process, no socket and no reactor: the traps of a batch of
    #    64 misses handed straight to the agent's end, which writes the pairs and releases
    saved = node.dp_end.transport
    batch = node.dp_end.transport = Batch(node.agent_end)
    frames = [syn(a, b, 50000 + i % 15000) for i in range(n)]
    t0 = time.process_time()
    for i in range(0, n, 64):
        for f in frames[i : i + 64]:
            node.pipeline.receive(a.vif, f)
        batch.flush()
    chain = _rate(n, t0)
    node.dp_end.transport = saved
    return {"flow_set_pairs": flow_sets, "misses": misses, "agent": agent,
            "policy": policy_rate, "release": release, "hop": hop, "chain": chain}


def _miss_floor(node: DatapathNode, a: VmPort, b: VmPort,
                n: int) -> tuple[float, list[bytes], list[bytes]]:
    """Misses/s of ``n`` SYNs from ``a`` to ``b`` (HOLD entry, queue, trap framed, to a
    transport that only keeps the trap), the traps, and the SYNs sent."""
    saved = node.dp_end.transport
    kept = node.dp_end.transport = Keep()
    frames = [syn(a, b, 40000 + i % 20000) for i in range(n)]
    try:
        t0 = time.process_time()
        for f in frames:
            node.pipeline.receive(a.vif, f)
        rate = _rate(n, t0)
    finally:
        node.dp_end.transport = saved
    return rate, kept.frames, frames


def _pair_floor(node: Node, traps: list[bytes]) -> tuple[float, float]:
    """Pairs/s of the flow pairs answering ``traps``, as the agent writes them into the
    embedded datapath (``set_pair_values``, from the decision's values; built before the
    clock starts), and then of the release of the held SYNs, timed apart (the table's
    set listener, ``Pipeline.flow_set``, called after the writes)."""
    pairs = []
    for t in traps:
        hdr, inner = decode(t)
        d = analyse(hdr, inner, node.flows.routes)
        pairs.append(FlowSetup.pair_values(hdr.param, hdr.param_5, d))
    channel = LocalFlowChannel(node.dp)
    listeners = node.shared.flows.set_listeners
    node.shared.flows.set_listeners = []
    try:
        t0 = time.process_time()
        for rev, fwd in pairs:
            if channel.set_pair_values(rev, fwd) is None:
                raise AssertionError("a pair left to two requests")
        rate = _rate(len(pairs), t0) if pairs else 0.0
    finally:
        node.shared.flows.set_listeners = listeners
    before = sum(node.out.count.values())
    replay = node.pipeline.flow_set
    t0 = time.process_time()
    for _, fwd in pairs:
        replay(fwd[1])
    release = _rate(len(pairs), t0) if pairs else 0.0
    released = sum(node.out.count.values()) - before
    if released != len(pairs):
        raise AssertionError(f"{released} of {len(pairs)} held SYNs released")
    return rate, release


def split_floors(node: DatapathNode, n: int) -> dict[str, float]:
    """Same-run floors of the two-process setup, per flow pair, in CPU time: the
    datapath's miss and release as in one process; a pair's two FLOW_SETs over ksync cut
    into the agent's half (requests encoded as its channel does, 16 per netlink message,
    and the answers parsed) and the datapath's (each message decoded, the
    FLOW_SETs applied, the replies encoded and framed, as its ksync server does), without
    the socket between them; the agent's analysis; one trap datagram over a socket."""
    from vrtwist.agent.packet.service import encode_flow_request
    from vrtwist.ksync.clientcore import ClientCore
    from vrtwist.ksync.server import STYLE_DPDK, KsyncServerProtocol

    vifs = sorted(node.by_vif)
    a, b = node.by_vif[vifs[0]], node.by_vif[vifs[1]]
    misses, traps, _ = _miss_floor(node, a, b, n)
    routes = RouteView(node.model.desired)
    decisions = []
    t0 = time.process_time()
    for t in traps:
        hdr, inner = decode(t)
        d = analyse(hdr, inner, routes)
        FlowSetup._reverse_request(hdr.param, d)
        FlowSetup._forward_request(hdr.param, hdr.param_5, d, -1)
        decisions.append((hdr, d))
    agent = _rate(len(decisions), t0)
    client = ClientCore()
    server = KsyncServerProtocol(node.dp, STYLE_DPDK)
    cost = {"encode": 0.0, "server": 0.0, "answers": 0.0}

    def round_trip(requests: list[dict[str, int]]) -> list[tuple[int, int, int]]:
        """One turn of bunched FLOW_SETs, each side timed on its own: the channel's
        requests (``request_flow_sets``), the server's ``answer`` to each frame, and the
        answers read as the channel's client reads them."""
        t0 = time.process_time()
        wire = [client.build([encode_flow_request(f) for f in requests[i : i + 16]],
                             flow=True)[1]
                for i in range(0, len(requests), 16)]
        t1 = time.process_time()
        replies = [server.answer(frame) for frame in wire]
        t2 = time.process_time()
        answers = [a for done in client.feed(b"".join(replies)) for a in done[1]]
        t3 = time.process_time()
        cost["encode"] += t1 - t0
        cost["server"] += t2 - t1
        cost["answers"] += t3 - t2
        return answers

    listeners = node.shared.flows.set_listeners
    node.shared.flows.set_listeners = []  # the release is a stage of its own
    try:
        revs = round_trip([FlowSetup._reverse_request(h.param, d) for h, d in decisions])
        round_trip([FlowSetup._forward_request(h.param, h.param_5, d, r[1])
                    for (h, d), r in zip(decisions, revs, strict=True)])
    finally:
        node.shared.flows.set_listeners = listeners
    pairs = max(len(decisions), 1)
    # the release: each held SYN replayed by the pipeline, as the table's set listener does
    before = sum(node.out.count.values())
    replay = node.pipeline.flow_set
    t0 = time.process_time()
    for h, _ in decisions:
        replay(h.param)
    release = _rate(len(decisions), t0) if decisions else 0.0
    if sum(node.out.count.values()) - before != len(decisions):
        raise AssertionError("a held SYN was not released")
    return {"misses": misses, "release": release, "agent": agent,
            "ksync_dp": pairs / max(cost["server"], 1e-9),
            "ksync_agent": pairs / max(cost["encode"] + cost["answers"], 1e-9),
            "hop": _socket_hop(len(syn(a, b, 1)) + 44, n)}


def _socket_hop(size: int, n: int) -> float:
    import socket

    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        frame, buf = bytes(size), bytearray(9200)
        t0 = time.process_time()
        for _ in range(0, n, 8):
            for _ in range(8):
                tx.send(frame)
            for _ in range(8):
                rx.recv_into(buf)
        return _rate(n - n % 8 or n, t0)
    finally:
        tx.close()
        rx.close()


@implementer(IPkt0Transport)
class Batch:
    """Keeps the traps of a batch and hands them to the agent's end on ``flush``."""

    def __init__(self, agent: AgentEndpoint) -> None:
        self.agent = agent
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def flush(self) -> None:
        frames, self.frames = self.frames, []
        for f in frames:
            self.agent.frame_received(f)


@implementer(IPkt0Transport)
class Keep:
    """Keeps the traps sent to it."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True


def dhcp_frame(vm: VmPort, kind: int, options: list[tuple[int, bytes]]) -> bytes:
    msg = D.DhcpMessage(1, vm.vif, 0, D.BROADCAST_FLAG, bytes(4), bytes(4), bytes(4), bytes(4),
                        vm.mac, {})
    payload = D.build(msg, [(53, bytes((kind,))), *options])
    udp = UDP(68, 67, 8 + len(payload)).pack()
    ip = IPv4(bytes(4), b"\xff" * 4, IPPROTO_UDP, 28 + len(payload)).pack()
    return Ethernet(b"\xff" * 6, vm.mac, ETH_P_IP).pack() + ip + udp + payload


async def bench_dhcp(node: Node) -> dict[str, float]:
    vms = list(node.by_vif.values())
    out = node.out
    before = sum(out.count.get(vm.vif, 0) for vm in vms)
    start = time.perf_counter()
    for vm in vms:
        node.pipeline.receive(vm.vif, dhcp_frame(vm, 1, []))
        if vm.vif % 64 == 0:
            await deferLater(reactor, 0, lambda: None)
    for vm in vms:
        node.pipeline.receive(vm.vif, dhcp_frame(vm, 3, [(50, IPv4Addr(vm.ip))]))
        if vm.vif % 64 == 0:
            await deferLater(reactor, 0, lambda: None)
    want = before + 2 * len(vms)
    while sum(out.count.get(vm.vif, 0) for vm in vms) < want:
        await deferLater(reactor, 0.001, lambda: None)
        if time.perf_counter() - start > 60:
            break
    wall = time.perf_counter() - start
    c = node.services.dhcp.counters
    return {"vms": len(vms), "seconds": wall, "leases_per_s": c.acks / wall, "acks": c.acks,
            "offers": c.offers}


def load() -> str:
    qlen = dgram_qlen()
    return "%.1f %.1f %.1f" % os.getloadavg() + f"; net.unix.max_dgram_qlen {qlen}"


_IN_NETNS = "BENCH_PKT0_NETNS"


def with_dgram_qlen(qlen: int) -> None:
    """Run this benchmark again in a private network namespace whose
    ``net.unix.max_dgram_qlen`` is ``qlen`` (the value is per namespace, and a unix
    socket keeps the one of the namespace it was made in), leaving the host's alone.
    Returns when the value is already right; exits with the child's status otherwise."""
    if os.environ.get(_IN_NETNS):
        with open("/proc/sys/net/unix/max_dgram_qlen", "w") as f:
            f.write(str(qlen))
        return
    if qlen <= 0 or dgram_qlen() == qlen:
        return
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        print(f"(--dgram-qlen {qlen} needs root and unshare(1); running with the host's "
              f"{dgram_qlen()})")
        return
    env = dict(os.environ, **{_IN_NETNS: "1"})
    os.execve(unshare, [unshare, "--net", "--", sys.executable, *sys.argv], env)


def report_flows(f: dict[str, float], failed: int) -> None:
    print(
        f"flow setup through pkt0: {f['pairs']:.0f} pairs, {f['pairs_per_s']:,.0f} pairs/s, "
        f"first packet p50 {f['p50_us']:.0f} us p99 {f['p99_us']:.0f} us; "
        f"baseline (same packets as flow hits) {f['hits_per_s']:,.0f} packets/s "
        f"(ratio {f['pairs_per_s'] / f['hits_per_s']:.2f}); failures {failed}"
    )


async def main(args: argparse.Namespace) -> None:
    run_dir = tempfile.mkdtemp(prefix="bench-pkt0-")
    try:
        if args.split:
            await main_split(args, run_dir)
        else:
            await main_one(args, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


async def main_one(args: argparse.Namespace, run_dir: str) -> None:
    node = Node(max(args.vms, 2), run_dir, args.policy)
    print(f"load before: {load()}; policy: {args.policy}; one process (embedded datapath)")
    f = await bench_flows(node, args.flows, args.window)
    report_flows(f, node.flows.counters.failed)
    fl = floors(node, 3000)
    print(
        "same-run floors, per flow pair, in CPU time: datapath FLOW_SET pair alone "
        f"{fl['flow_set_pairs']:,.0f}/s; pipeline miss (HOLD + trap framed) "
        f"{fl['misses']:,.0f}/s; agent's trap decode, analysis and pair values {fl['agent']:,.0f}/s; "
        f"policy step ({args.policy}) {fl['policy']:,.0f}/s "
        f"(ratio to the analysis {fl['policy'] / fl['agent']:.1f}); release of the held "
        f"SYN (replayed by the pipeline) {fl['release']:,.0f}/s; socket hop (one trap datagram sent "
        f"and received) {fl['hop']:,.0f}/s"
    )
    stages = ("flow_set_pairs", "misses", "agent", "release", "hop")
    total = sum(1e6 / fl[k] for k in stages if fl[k] > 0)
    print(
        "ladder, microseconds per pair: "
        + ", ".join(f"{k} {1e6 / fl[k]:.1f}" for k in stages if fl[k] > 0)
        + f"; sum {total:.1f} (at most {1e6 / total:,.0f} pairs/s); all stages in one "
        f"process without socket or reactor {fl['chain']:,.0f} pairs/s "
        f"({1e6 / fl['chain']:.1f} us); end to end {1e6 / f['pairs_per_cpu_s']:.1f} us "
        "of CPU per pair"
    )
    d = await bench_dhcp(node)
    print(
        f"DHCP: {d['vms']:.0f} VMs got a lease (DISCOVER+REQUEST) in {d['seconds']:.2f} s, "
        f"{d['leases_per_s']:,.0f} leases/s (acks {d['acks']:.0f}, offers {d['offers']:.0f})"
    )
    print(f"load after: {load()}")
    node.stop()


class _Child(ProcessProtocol):
    """The datapath process of ``--split``: its stdout lines, one Deferred per line."""

    def __init__(self) -> None:
        self.lines: list[Deferred[str]] = [Deferred()]
        self._buf = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            d = self.lines[-1]
            self.lines.append(Deferred())
            d.callback(line.decode())

    def errReceived(self, data: bytes) -> None:
        os.write(2, data)

    def processEnded(self, reason: Any) -> None:
        last = self.lines[-1]
        if not last.called:
            last.callback("")  # a child that died early: the line awaited is empty
        self.ended.callback(None)

    async def line(self, n: int) -> str:
        while len(self.lines) <= n:
            await self.lines[-1]
        return await self.lines[n]


async def main_split(args: argparse.Namespace, run_dir: str) -> None:
    """The datapath (with its ksync server) in a child process, the agent here: pkt0
    over the two unix datagram sockets and FLOW_SET over a ksync session, as
    ``twistd vrouter --datapath external`` and ``twistd vrouter-dp`` are joined."""
    child = _Child()
    prof = ["-m", "cProfile", "-o", os.environ["BENCH_PKT0_CHILD_PROFILE"]] if os.environ.get("BENCH_PKT0_CHILD_PROFILE") else []
    argv = [sys.executable, *prof, os.path.abspath(__file__), "--role", "datapath", "--run-dir",
            run_dir, "--vms", str(max(args.vms, 2)), "--flows", str(args.flows),
            "--window", str(args.window)]
    proc = reactor.spawnProcess(child, sys.executable, argv, env=os.environ)
    if await child.line(0) != "ready":
        raise SystemExit("the datapath process did not start (its errors are above)")
    channel = KsyncFlowChannel(reactor, run_dir)
    channel.service.startService()
    agent = AgentNode(max(args.vms, 2), run_dir, channel, args.policy)
    while channel._client is None:
        await deferLater(reactor, 0.01, lambda: None)
    print(f"load before: {load()}; policy: {args.policy}; two processes (datapath with "
          "ksync server, agent with its ksync flow channel)")
    cpu0 = time.process_time()
    sys0 = os.times().system
    proc.write(b"go\n")
    line = await child.line(1)
    if not line:
        raise SystemExit("the datapath process ended without its figures")
    f = json.loads(line)
    agent_cpu = time.process_time() - cpu0
    agent_sys = os.times().system - sys0
    report_flows(f, agent.flows.counters.failed)
    done = max(f["pairs"], 1)
    print(
        f"CPU per pair: datapath process {f['cpu_us']:.1f} us, agent process "
        f"{agent_cpu / done * 1e6:.1f} us (over the whole run, reactor and sockets "
        f"included; in the kernel {f['sys_us']:.1f} and {agent_sys / done * 1e6:.1f} us); "
        f"sum {f['cpu_us'] + agent_cpu / done * 1e6:.1f} us"
    )
    fl = {k[6:]: v for k, v in f.items() if k.startswith("floor_")}
    dp_stages = ("misses", "ksync_dp", "release", "hop")
    agent_stages = ("hop", "agent", "ksync_agent")
    dp_sum = sum(1e6 / fl[k] for k in dp_stages if fl[k] > 0)
    agent_sum = sum(1e6 / fl[k] for k in agent_stages if fl[k] > 0)
    print(
        "same-run ladder, microseconds of CPU per pair (measured in the datapath process, "
        "ksync without its socket): datapath process: "
        + ", ".join(f"{k} {1e6 / fl[k]:.1f}" for k in dp_stages if fl[k] > 0)
        + f", sum {dp_sum:.1f}; agent process: "
        + ", ".join(f"{k} {1e6 / fl[k]:.1f}" for k in agent_stages if fl[k] > 0)
        + f", sum {agent_sum:.1f}; at most {1e6 / max(dp_sum, agent_sum):,.0f} pairs/s "
        "with a core each"
    )
    print(f"load after: {load()}")
    proc.write(b"stop\n")
    await child.ended
    agent.stop()
    channel.stop()
    stopped = channel.service.stopService()
    if stopped is not None:
        await stopped


async def datapath_role(args: argparse.Namespace) -> None:
    """The child of ``--split``: datapath, shared memory, pkt0 and the ksync server; it
    sends the SYNs and reports the setup figures as one JSON line."""
    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    from vrtwist.ksync.server import STYLE_DPDK, KsyncServerService

    node = DatapathNode(args.vms, args.run_dir)
    ksync = KsyncServerService(reactor, args.run_dir, node.dp, style=STYLE_DPDK)
    ksync.privilegedStartService()
    ksync.startService()
    commands: list[Deferred[str]] = [Deferred(), Deferred()]

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if commands:
                commands.pop(0).callback(line.decode())

    stdio.StandardIO(Commands())
    wait = list(commands)
    print("ready", flush=True)
    await wait[0]
    f = await bench_flows(node, args.flows, args.window)
    f.update({"floor_" + k: v for k, v in split_floors(node, 3000).items()})
    print(json.dumps(f), flush=True)
    await wait[1]
    stopped = ksync.stopService()
    if stopped is not None:
        await stopped
    node.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=20000)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--policy", choices=("empty", "none", "sg"), default="empty")
    parser.add_argument("--split", action="store_true",
                        help="datapath and agent in two processes, FLOW_SET over ksync")
    parser.add_argument(
        "--dgram-qlen", type=int, default=RECOMMENDED_DGRAM_QLEN,
        help="net.unix.max_dgram_qlen to run with, in a private network namespace (as root; "
             "default: %(default)s, what systemd sets on its hosts; 0: the host's own)")
    parser.add_argument("--role", choices=("datapath",), help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.role is None:
        with_dgram_qlen(ns.dgram_qlen)
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    if ns.role == "datapath":
        react(lambda _r: ensureDeferred(datapath_role(ns)))
    else:
        react(lambda _r: ensureDeferred(main(ns)))

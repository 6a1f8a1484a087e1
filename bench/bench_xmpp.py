"""XMPP convergence benchmark: routes per second from publish to every subscriber.

Processes: one ``twistd -n vrouter-control`` (the control node), one publishing agent
(this process) and ``--receivers`` receiving agents spread over ``--procs`` child
processes.  Each receiving agent runs the real agent link with the agent's datapath model
(``vrtwist.agent.dpstate.DatapathModel``: tunnel next hops, routes and bridge entries are
computed there; the ksync synchroniser is not attached, see ``docs/xmpp.md``).

Measured: from the publisher writing its first route to the moment the last receiver has
all ``--routes`` routes programmed (routes/s and seconds to converge).  Timestamps come
from ``time.time()`` in each process (same host).  Codec figures (parse/build items per
second in one process) are printed too, as a breakdown.

    python bench/bench_xmpp.py --routes 10000 --receivers 1
    python bench/bench_xmpp.py --routes 10000 --receivers 10 --procs 2
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

VRF = "default-domain:bench:vn1:vn1"


def _profile_args(var: str = "BENCH_CN_PROFILE") -> list[str]:
    """``BENCH_CN_PROFILE=<file>`` (``BENCH_AGENT_PROFILE``) runs that process under cProfile."""
    prof = os.environ.get(var)
    return [f"--profile={prof}", "--profiler=cprofile", "--savestats"] if prof else []


def _phase(name: str) -> None:
    """``BENCH_PHASE_FILE=<file>``: append the phase name (``start`` of the timed part,
    ``end`` when the last route is in), so a sampling profiler attached from outside can
    cover exactly the timed part; at ``start`` the bench gives it 0.5 s to attach."""
    path = os.environ.get("BENCH_PHASE_FILE")
    if not path:
        return
    with open(path, "a") as f:
        f.write(name + "\n")
    if name == "start":
        time.sleep(0.5)


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def proc_run_time(pid: int) -> float:
    """Seconds the process has run on a CPU, in ns resolution (``/proc/<pid>/schedstat``,
    main thread; the daemons are single-threaded)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def make_sink(fabric_ip: str) -> tuple[Any, list[int]]:
    """The agent's datapath model with one local port (so the VRF exists) + a route counter."""
    from vrtwist.agent.dpstate import DatapathModel, vrf_name_for
    from vrtwist.agent.model import Port

    model = DatapathModel(fabric_ip=fabric_ip, os_index=lambda name: 0, max_nhs=1 << 20)
    counter = [0]
    port = Port(
        id="00000000-0000-0000-0000-000000000001",
        instance_id="vm-local",
        vn_id="11111111-1111-1111-1111-111111111111",
        vm_project_id="p",
        display_name="local",
        ip_address="10.255.0.1",
        ip6_address=None,
        type=0,
        system_name="tapbench0",
        mac_address="02:ff:00:00:00:01",
    )
    model.portAdded(port)
    assert vrf_name_for(port.vn_id) in model.vrfNames()

    def listener(keys: Any) -> None:
        counter[0] = len(model._remote)

    model.listeners.append(listener)
    return model, counter


class CountingSink:
    """Stands in for the agent model when only the XMPP fan-out is measured."""

    def __init__(self, fabric_ip: str) -> None:
        self.fabric_ip = fabric_ip
        self.routes: set[tuple[str, str, int]] = set()
        self.counter = [0]

    def vrfNames(self) -> list[str]:
        return []

    def addRemoteRoute(
        self,
        vrf_name: str,
        prefix: str,
        plen: int,
        nexthop: str,
        label: int,
        encap: str = "udp",
        mac: str | None = None,
        *,
        l2_label: int | None = None,
    ) -> None:
        self.routes.add((vrf_name, prefix, plen))
        self.counter[0] = len(self.routes)

    def deleteRemoteRoute(self, vrf_name: str, prefix: str, plen: int) -> None:
        self.routes.discard((vrf_name, prefix, plen))
        self.counter[0] = len(self.routes)


def receiver(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    from vrtwist.agent.dpstate import vrf_name_for
    from vrtwist.xmpp.agent_link import LocalRouteInfo, makeControllerLink

    vn = "11111111-1111-1111-1111-111111111111"
    vrf = vrf_name_for(vn)
    state: dict[str, Any] = {"done": 0, "ready": 0}
    links = []
    counters = []
    for i in range(args.agents):
        fabric = f"127.0.1.{args.index * args.agents + i + 1}"
        if args.sink == "count":
            sink = CountingSink(fabric)
            model, counter = sink, sink.counter
        else:
            model, counter = make_sink(fabric)
        counters.append(counter)
        link = makeControllerLink(
            reactor, [f"tcp:127.0.0.1:{args.port}"], f"rx{args.index}-{i}", fabric, model  # type: ignore[arg-type]
        )
        link.localRouteAdded(
            LocalRouteInfo("p", "vm", vn, vrf, "", f"10.254.{args.index}.{i}", None, 16, fabric)
        )
        links.append(link)
        link.startService()

    def ready(_: Any) -> None:
        state["ready"] += 1
        if state["ready"] == args.agents:
            print("READY", flush=True)

    for link in links:
        link.when_ready().addCallback(ready)

    first: list[float] = []

    def poll() -> None:
        if not first and any(c[0] > args.base for c in counters):
            first.append(time.time())
        if all(c[0] >= args.routes + args.base for c in counters):
            print(f"DONE {time.time():.6f} {first[0] if first else 0:.6f}", flush=True)
            # Stay connected: leaving would retract this agent's routes from the others
            # (the control node runs with --gr-time 0).  The main process terminates us.
            return
        reactor.callLater(0.001, poll)

    def report() -> None:
        print("progress", args.index, [c[0] for c in counters], file=sys.stderr, flush=True)
        reactor.callLater(2, report)

    if os.environ.get("BENCH_DEBUG"):
        reactor.callLater(2, report)
    reactor.callLater(0.01, poll)
    reactor.run()


def codec_figures(n: int) -> dict[str, float]:
    """Codec rates in CPU time; the full (expat) parser on the same bytes is the baseline."""
    from vrtwist.xmpp.stanzas import (
        NextHop,
        RouteEntry,
        build_route_publish,
        build_route_update,
        parse_stanza,
        parse_stanza_full,
    )

    entries = [
        RouteEntry(
            1,
            1,
            f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32",
            (NextHop("127.0.0.2", 16 + i % 1000, ("gre", "udp")),),
        )
        for i in range(n)
    ]
    clock = time.process_time
    t = clock()
    pubs = [build_route_publish("h", VRF, e, True, i) for i, e in enumerate(entries)]
    out = {"build publish pairs/s": n / (clock() - t)}
    halves = []
    for p in pubs:
        cut = p.index(b"</iq>") + 5
        halves += [p[:cut], p[cut:]]
    msgs = [
        build_route_update("cn", "h/bgp-peer", f"1/1/{VRF}", entries[i : i + 128])
        for i in range(0, n, 128)
    ]
    for name, parse in (("fast path", parse_stanza), ("full parser", parse_stanza_full)):
        t = clock()
        for h in halves:
            parse(h)
        out[f"parse publish pairs/s ({name})"] = n / (clock() - t)
        t = clock()
        for m in msgs:
            parse(m)
        out[f"parse CN items/s ({name})"] = n / (clock() - t)
    out["ratio publish fast/full"] = (
        out["parse publish pairs/s (fast path)"] / out["parse publish pairs/s (full parser)"]
    )
    out["ratio items fast/full"] = (
        out["parse CN items/s (fast path)"] / out["parse CN items/s (full parser)"]
    )
    return out


def components(n: int) -> dict[str, float]:
    """Each stage alone, in one process, in CPU seconds (steadier than wall time here)."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from vrtwist.agent.dpstate import vrf_name_for
    from vrtwist.xmpp.agent_link import ControllerLink, LocalRouteInfo
    from vrtwist.xmpp.control import ControlNode, ControlNodeFactory
    from vrtwist.xmpp.framing import build_stream_open, build_stream_response
    from vrtwist.xmpp.stanzas import (
        CONTROL_NODE_JID,
        NextHop,
        RouteEntry,
        build_route_publish,
        build_route_update,
        build_subscribe,
    )

    vn = "11111111-1111-1111-1111-111111111111"
    vrf = vrf_name_for(vn)
    out: dict[str, float] = {}

    class Endpoint:
        def __init__(self) -> None:
            self.protos: list[Any] = []

        def connect(self, factory: Any) -> Any:
            from twisted.internet import defer

            proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5269))
            proto.makeConnection(StringTransport())
            self.protos.append(proto)
            return defer.succeed(proto)

    # 1. agent publish: local routes -> bytes on the wire
    clock = MemoryReactorClock()
    model, _ = make_sink("127.0.0.2")
    ep = Endpoint()
    link = ControllerLink(clock, [ep], "tx", "127.0.0.2", model)  # type: ignore[list-item]
    link.startService()
    ep.protos[-1].dataReceived(build_stream_response("cn", "tx"))
    infos = [
        LocalRouteInfo(
            f"port{i}",
            f"vm{i}",
            vn,
            vrf,
            "",
            f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
            None,
            16,
            "127.0.0.2",
        )
        for i in range(n)
    ]
    t = time.process_time()
    for info in infos:
        link.localRouteAdded(info)
    out["agent publish routes/s"] = n / (time.process_time() - t)

    # 2. control node: n publish pairs in, fan-out to 1 and 10 subscribers
    entries = [
        RouteEntry(
            1,
            1,
            f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32",
            (NextHop("127.0.0.2", 16 + i % 1000, ("gre", "udp")),),
        )
        for i in range(n)
    ]
    wire = b"".join(build_route_publish("tx", vrf, e, True, i) for i, e in enumerate(entries))
    for fanout in (1, 10):
        clock = MemoryReactorClock()
        node = ControlNode(clock, "cn", gr_time=0)
        factory = ControlNodeFactory(node)
        sessions = []
        for j in range(fanout + 1):
            s = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1000 + j))
            s.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1000 + j)))
            s.dataReceived(build_stream_open(f"a{j}") + build_subscribe(f"a{j}", vrf, 1))
            sessions.append(s)
        clock.advance(1)
        for s in sessions:
            s.transport.clear()  # type: ignore[union-attr]
        t = time.process_time()
        for i in range(0, len(wire), 65536):
            sessions[0].dataReceived(wire[i : i + 65536])
            clock.advance(0)
        dt = time.process_time() - t
        out[f"control node in, fan-out {fanout}: routes/s"] = n / dt
        out[f"control node out, fan-out {fanout}: items/s"] = n * fanout / dt

    # 3. agent receive: control-node messages -> RemoteRouteTable -> DatapathModel
    msgs = b"".join(
        build_route_update(CONTROL_NODE_JID, "rx/bgp-peer", f"1/1/{vrf}", entries[i : i + 128])
        for i in range(0, n, 128)
    )
    clock = MemoryReactorClock()
    model, counter = make_sink("127.0.0.3")
    ep = Endpoint()
    link = ControllerLink(clock, [ep], "rx", "127.0.0.3", model)  # type: ignore[list-item]
    link.localRouteAdded(
        LocalRouteInfo("p", "vm", vn, vrf, "", "10.254.0.1", None, 16, "127.0.0.3")
    )
    link.startService()
    ep.protos[-1].dataReceived(build_stream_response("cn", "rx"))
    t = time.process_time()
    for i in range(0, len(msgs), 65536):
        ep.protos[-1].dataReceived(msgs[i : i + 65536])
    dt = time.process_time() - t
    assert counter[0] == n, counter
    out["agent receive+program routes/s"] = n / dt

    # 4. the same, through the agent's ksync synchroniser into the datapath's tables (in
    #    process: the same Sandesh request objects, no socket)
    from vrtwist.agent.ksync_sync import DatapathSync, LocalChannel
    from vrtwist.datapath.dispatcher import Datapath

    dp = Datapath()
    clock = MemoryReactorClock()
    model, counter = make_sink("127.0.0.3")
    sync = DatapathSync(model)
    sync.attach(LocalChannel(dp))
    ep = Endpoint()
    link = ControllerLink(clock, [ep], "rx", "127.0.0.3", model)  # type: ignore[list-item]
    link.localRouteAdded(
        LocalRouteInfo("p", "vm", vn, vrf, "", "10.254.0.1", None, 16, "127.0.0.3")
    )
    link.startService()
    ep.protos[-1].dataReceived(build_stream_response("cn", "rx"))
    vrf_id = model.vrf_id_of(vn)
    t = time.process_time()
    for i in range(0, len(msgs), 65536):
        ep.protos[-1].dataReceived(msgs[i : i + 65536])
    dt = time.process_time() - t
    have = dp.routes.route_count(2, vrf_id)
    assert have >= n and not sync.errors, (have, sync.errors)
    out["agent receive+program+ksync+datapath routes/s"] = n / dt
    out["  ksync requests sent"] = sync.requests_sent
    return out


def run(args: argparse.Namespace) -> dict[str, float]:
    from twisted.internet import defer, reactor, task

    from vrtwist.xmpp.agent_link import LocalRouteInfo, makeControllerLink

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="bench-xmpp-")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    cn = subprocess.Popen(
        [
            twistd,
            "-n",
            "--pidfile=",
            *_profile_args(),
            "vrouter-control",
            "--xmpp",
            f"tcp:{port}:interface=127.0.0.1",
            "--gr-time",
            "0",
        ],
        cwd=tmp,
        stdout=open(os.path.join(tmp, "cn.log"), "wb"),
        stderr=subprocess.STDOUT,
    )
    time.sleep(1.0)
    per = [
        args.receivers // args.procs + (1 if i < args.receivers % args.procs else 0)
        for i in range(args.procs)
    ]
    kids = []
    for i, n in enumerate(per):
        if n == 0:
            continue
        kids.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--mode",
                    "receiver",
                    "--port",
                    str(port),
                    "--routes",
                    str(args.routes),
                    "--agents",
                    str(n),
                    "--index",
                    str(i),
                    "--sink",
                    args.sink,
                    "--base",
                    str(args.receivers),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for k in kids:
        line = k.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("READY"), line
    from vrtwist.agent.dpstate import vrf_name_for

    vn = "11111111-1111-1111-1111-111111111111"
    vrf = vrf_name_for(vn)
    result: dict[str, float] = {}

    async def publish() -> None:
        model, _ = make_sink("127.0.0.2")
        link = makeControllerLink(
            reactor, [f"tcp:127.0.0.1:{port}"], "publisher", "127.0.0.2", model
        )
        link.localRouteAdded(
            LocalRouteInfo("p0", "vm0", vn, vrf, "", "10.253.0.1", None, 16, "127.0.0.2")
        )
        link.startService()
        await link.when_ready()
        await task.deferLater(reactor, 0.5, lambda: None)
        mac = args.evpn
        t0 = time.time()
        for i in range(args.routes):
            if args.batch and i and i % args.batch == 0:
                await task.deferLater(reactor, 0, lambda: None)  # let the reactor send
            ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
            link.localRouteAdded(
                LocalRouteInfo(
                    f"port{i}",
                    f"vm{i}",
                    vn,
                    vrf,
                    f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}" if mac else "",
                    ip,
                    None,
                    16 + i % 5000,
                    "127.0.0.2",
                )
            )
        t_sent = time.time()
        done = []
        firsts = []
        for k in kids:
            line = await _readline(reactor, k)
            done.append(float(line.split()[1]))
            firsts.append(float(line.split()[2]))
        t_end = max(done)
        result["first route programmed (s)"] = min(firsts) - t0
        result["receiver programming routes/s"] = args.routes / (t_end - min(firsts))
        result["publish (s)"] = t_sent - t0
        result["converge (s)"] = t_end - t0
        result["routes/s"] = args.routes * args.receivers / (t_end - t0)
        result["routes/s per receiver"] = args.routes / (t_end - t0)
        await link.stopService()

    def stop(_: Any) -> None:
        reactor.stop()

    def done(r: object) -> None:
        if r:
            print(r)
        stop(r)

    defer.ensureDeferred(publish()).addBoth(done)
    reactor.run()
    for k in kids:
        k.terminate()
        k.wait()
    cn.terminate()
    cn.wait()
    return result


async def _readline(reactor: Any, proc: subprocess.Popen[str]) -> str:
    from twisted.internet import threads

    return await threads.deferToThread(proc.stdout.readline)  # type: ignore[union-attr]


def _wait_agent(run_dir: str, rest: int) -> None:
    """Until the agent's datapath socket exists and its REST port answers (30 s at most)."""
    import urllib.error
    import urllib.request

    for _ in range(300):
        if os.path.exists(os.path.join(run_dir, "dpdk_netlink")):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{rest}/port/x", timeout=2)
            except urllib.error.HTTPError:
                return
            except OSError:
                pass
        time.sleep(0.1)


def datapath_run(args: argparse.Namespace) -> dict[str, float]:
    """The receiver is a real ``twistd -n vrouter`` (embedded datapath); routes are counted
    in the datapath itself over ksync, the way ``rt --dump`` reads them."""
    import json
    import urllib.request

    from twisted.internet import defer, reactor, task

    from vrtwist.agent.dpstate import vrf_name_for
    from vrtwist.ksync.blocking import open_ksync
    from vrtwist.sandesh import DUMP, GET, schema
    from vrtwist.xmpp.agent_link import LocalRouteInfo, makeControllerLink

    tmp = tempfile.mkdtemp(prefix="bench-xmpp-dp-")
    port, rest = free_port(), free_port()
    bindir = os.path.dirname(sys.executable)
    twistd = os.path.join(bindir, "twistd")
    cn = subprocess.Popen(
        [twistd, "-n", "--pidfile=", *_profile_args(), "vrouter-control", "--xmpp",
         f"tcp:{port}:interface=127.0.0.1", "--gr-time", "0"],
        cwd=tmp, stdout=open(os.path.join(tmp, "cn.log"), "wb"), stderr=subprocess.STDOUT)
    run_dir = os.path.join(tmp, "run")
    os.makedirs(run_dir)
    agent = subprocess.Popen(
        [twistd, "-n", "--pidfile=", *_profile_args("BENCH_AGENT_PROFILE"), "vrouter",
         "--run-dir", run_dir, "--state-dir",
         os.path.join(tmp, "state"), "--rest", f"tcp:{rest}:interface=127.0.0.1",
         "--controller", f"tcp:127.0.0.1:{port}", "--fabric-ip", "127.0.0.3", "--hostname",
         "receiver", "--no-tap-check", "--flow-entries", "1024", "--bridge-entries", "32768"],
        cwd=tmp, stdout=open(os.path.join(tmp, "agent.log"), "wb"), stderr=subprocess.STDOUT)
    try:
        _wait_agent(run_dir, rest)
        vn = "11111111-1111-1111-1111-111111111111"
        body = {"id": "00000000-0000-0000-0000-00000000aaaa", "instance-id":
                "00000000-0000-0000-0000-00000000bbbb", "vn-id": vn, "vm-project-id":
                "00000000-0000-0000-0000-00000000cccc", "display-name": "local",
                "ip-address": "10.254.0.1", "ip6-address": "", "type": 0,
                "system-name": "tapbench", "mac-address": "02:fe:00:00:00:01",
                "rx-vlan-id": -1, "tx-vlan-id": -1}
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{rest}/port", json.dumps(body).encode(),
            {"Content-Type": "application/json"}, method="POST"), timeout=10).read()
        ks = open_ksync(run_dir)
        vifs = ks.dump(schema.vr_interface_req(h_op=DUMP, vifr_marker=-1))
        vrf_id = next(v.vifr_vrf for v in vifs if v.vifr_name == "tapbench")
        vrf = vrf_name_for(vn)
        last = args.routes - 1
        last_prefix = [10, last >> 16 & 255, last >> 8 & 255, last & 255]

        def has_last() -> bool:
            got = ks.request(schema.vr_route_req(
                h_op=GET, rtr_family=2, rtr_vrf_id=vrf_id, rtr_prefix=last_prefix,
                rtr_prefix_len=32)).objects
            return any(getattr(r, "rtr_prefix_len", 0) == 32 and r.rtr_label_flags & 1
                       and list(r.rtr_prefix)[:4] == last_prefix for r in got)

        def count() -> int:
            routes = ks.dump(schema.vr_route_req(h_op=DUMP, rtr_family=2, rtr_vrf_id=vrf_id,
                                                 rtr_rid=0))
            return sum(1 for r in routes if r.rtr_prefix_len == 32 and r.rtr_label_flags & 1
                       and list(r.rtr_prefix)[:2] == [10, 0])

        result: dict[str, float] = {}

        async def publish() -> None:
            model, _ = make_sink("127.0.0.2")
            link = makeControllerLink(reactor, [f"tcp:127.0.0.1:{port}"], "publisher",
                                      "127.0.0.2", model)
            link.localRouteAdded(LocalRouteInfo("p0", "vm0", vn, vrf, "", "10.253.0.1", None,
                                                16, "127.0.0.2"))
            link.startService()
            await link.when_ready()
            await task.deferLater(reactor, 1.0, lambda: None)
            _phase("start")
            cpu0 = proc_cpu(agent.pid), proc_cpu(cn.pid), time.process_time()
            t0 = time.time()
            for i in range(args.routes):
                if args.batch and i and i % args.batch == 0:
                    await task.deferLater(reactor, 0, lambda: None)
                link.localRouteAdded(LocalRouteInfo(
                    f"port{i}", f"vm{i}", vn, vrf, "",
                    f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", None, 16 + i % 5000,
                    "127.0.0.2"))
            result["publish (s)"] = time.time() - t0
            while not has_last():
                await task.deferLater(reactor, 0.01, lambda: None)
            t_last = time.time()
            _phase("end")
            result["receiving agent CPU (s)"] = proc_cpu(agent.pid) - cpu0[0]
            result["control node CPU (s)"] = proc_cpu(cn.pid) - cpu0[1]
            result["publisher CPU (s)"] = time.process_time() - cpu0[2]
            # The last route may not be the last one programmed.  The end is the start of
            # the first 20 ms in which neither the agent (with its datapath) nor the control
            # node ran: nothing can change the datapath after it, and the full count taken
            # next (a dump of every route, itself ~0.2 s) proves all routes were in by then.
            t_a, run_a = t_last, (proc_run_time(agent.pid), proc_run_time(cn.pid))
            while True:
                await task.deferLater(reactor, 0.02, lambda: None)
                t_b, run_b = time.time(), (proc_run_time(agent.pid), proc_run_time(cn.pid))
                if run_b[0] - run_a[0] < 0.002 and run_b[1] - run_a[1] < 0.002:
                    break
                t_a, run_a = t_b, run_b
            t_idle = t_a
            n = first = count()
            while n < args.routes:
                await task.deferLater(reactor, 0.05, lambda: None)
                n = count()
            t_end = t_idle if first >= args.routes else time.time()
            result["last route seen (s)"] = t_last - t0
            result["count done (s)"] = time.time() - t0
            result["routes in the datapath"] = n
            result["converge (s)"] = t_end - t0
            result["routes/s"] = args.routes / (t_end - t0)
            await link.stopService()

        def done(r: object) -> None:
            if r:
                print(r)
            reactor.stop()

        defer.ensureDeferred(publish()).addBoth(done)
        reactor.run()
        ks.close()
        return result
    finally:
        agent.terminate()
        agent.wait()
        cn.terminate()
        cn.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", default="main", choices=["main", "receiver", "codec", "components", "datapath"])
    p.add_argument("--routes", type=int, default=10000)
    p.add_argument("--receivers", type=int, default=1)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--evpn", action="store_true", help="publish the EVPN MAC route too")
    p.add_argument(
        "--batch",
        type=int,
        default=500,
        help="publisher yields to the reactor every N routes (0: never)",
    )
    p.add_argument("--port", type=int)
    p.add_argument(
        "--sink",
        default="model",
        choices=["model", "count"],
        help="receivers program the agent's DatapathModel, or only count routes",
    )
    p.add_argument("--default-gc", action="store_true",
                   help="main/datapath: the publisher keeps CPython's gc thresholds instead "
                        "of the agent daemon's")
    p.add_argument("--daemon-gc", action="store_true",
                   help="components: run with the daemons' gc thresholds (vrtwist.agent.tap)")
    p.add_argument("--base", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--agents", type=int, default=1)
    p.add_argument("--index", type=int, default=0)
    args = p.parse_args()
    if args.mode == "receiver":
        if not args.default_gc:
            from vrtwist._process import tune_gc

            tune_gc()  # receivers stand in for agent daemons too
        receiver(args)
        return
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    if args.mode == "codec":
        for k, v in codec_figures(args.routes).items():
            print(f"{k:40s} {v:12,.1f}")
        return
    if args.mode == "components":
        if args.daemon_gc:
            from vrtwist._process import tune_gc

            tune_gc()
        for k, v in components(args.routes).items():
            print(f"{k:45s} {v:12,.0f}")
        return
    if not args.default_gc:
        # the publisher stands in for an agent daemon, which runs with these thresholds
        # (``twistd vrouter`` and ``vrouter-control`` call the same function)
        from vrtwist._process import tune_gc

        tune_gc()
    res = datapath_run(args) if args.mode == "datapath" else run(args)
    print(
        f"routes={args.routes} receivers={args.receivers} procs={args.procs} evpn={args.evpn} "
        f"batch={args.batch} sink={args.sink}"
    )
    for k, v in res.items():
        print(f"{k:28s} {v:12,.3f}")


if __name__ == "__main__":
    main()

"""Fixtures shared by the datapath's tests and benchmarks (as treq ships ``treq.testing``).

In memory: :class:`World`, a datapath with a shared-memory flow table and a pipeline
over recording (or, for a benchmark, counting) port and agent doubles; the doubles
implement the real seams (the tests check them with ``verifyObject``) and the tables
are programmed through ``Datapath.handle`` with Sandesh requests, as the agent and the
vtest driver program them.

On real devices (root, ``ip``): :func:`build_two_nodes` makes two compute-node
namespaces joined by a fabric veth with a VM namespace behind each,
:func:`remove_namespaces` takes them away, and :func:`start_vrouter_dp`,
:func:`program_node` and :func:`node_config` run and program one ``twistd vrouter-dp``
per node with the real utilities.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from zope.interface import implementer

from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import Datapath, make
from vrtwist.datapath.interfaces import IFrameOutput, IPacketTrap
from vrtwist.datapath.pipeline import Pipeline
from vrtwist.packet.headers import ETH_P_IP, UDP, Ethernet, IPv4
from vrtwist.shmem import layout as L
from vrtwist.shmem.bridgetable import BridgeTable
from vrtwist.shmem.flowtable import FlowTable
from vrtwist.shmem.requests import BridgeRoutes, FlowRequests

__all__ = [
    "CountingOutput",
    "CountingTrap",
    "RecordingOutput",
    "RecordingTrap",
    "TwoNodes",
    "Vm",
    "World",
    "build_two_nodes",
    "ip_bytes",
    "ip_int",
    "mac",
    "node_config",
    "program_node",
    "remove_namespaces",
    "run",
    "start_vrouter_dp",
    "stop_processes",
    "udp_frame",
]


@implementer(IFrameOutput)
class RecordingOutput:
    """Keeps every transmitted frame as (vif, bytes); ``refuse`` makes a vif's queue full."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.refuse: set[int] = set()

    def transmit(self, vif_index: int, frame: bytes | bytearray | memoryview) -> bool:
        if vif_index in self.refuse:
            return False
        self.frames.append((vif_index, bytes(frame)))
        return True

    def on(self, vif_index: int) -> list[bytes]:
        return [f for i, f in self.frames if i == vif_index]


@implementer(IPacketTrap)
class RecordingTrap:
    """Keeps every trap's arguments; ``accept`` False plays "no agent attached"."""

    def __init__(self) -> None:
        self.traps: list[tuple[int, int, int, int, int, tuple[int, int, int, int], bytes]] = []
        self.accept = True

    def trap(
        self,
        vif_index: int,
        vrf: int,
        code: int,
        param: int,
        param_1: int,
        stats: tuple[int, int, int, int],
        frame: bytes,
    ) -> bool:
        if not self.accept:
            return False
        self.traps.append((vif_index, vrf, code, param, param_1, stats, bytes(frame)))
        return True


@implementer(IFrameOutput)
class CountingOutput:
    """Accepts every frame and keeps none, only their number (a benchmark's output)."""

    def __init__(self) -> None:
        self.sent = 0

    def transmit(self, vif_index: int, frame: bytes | bytearray | memoryview) -> bool:
        self.sent += 1
        return True


@implementer(IPacketTrap)
class CountingTrap:
    """Accepts every trap and keeps only their number (a benchmark's agent)."""

    def __init__(self) -> None:
        self.traps = 0

    def trap(
        self,
        vif_index: int,
        vrf: int,
        code: int,
        param: int,
        param_1: int,
        stats: tuple[int, int, int, int],
        frame: bytes,
    ) -> bool:
        self.traps += 1
        return True


def ip_int(dotted: str) -> int:
    """An address as the vRouter's host-order i32 of the network bytes (nhr_tun_sip)."""
    value: int = struct.unpack("<i", bytes(int(x) for x in dotted.split(".")))[0]
    return value


def ip_bytes(dotted: str) -> bytes:
    return bytes(int(x) for x in dotted.split("."))


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def udp_frame(
    dst: str = "de:ad:be:ef:00:01",
    src: str = "de:ad:be:ef:00:02",
    sip: str = "1.1.1.1",
    dip: str = "2.2.2.2",
    sport: int = 7936,
    dport: int = 7936,
    payload: bytes = b"kokotinykokotiny" * 5,
    ttl: int = 64,
    ident: int = 1,
    frag: int = 0,
    proto: int = 17,
) -> bytes:
    """Ethernet + IPv4 + UDP built with the packet codecs (the vtest frame by default)."""
    udp = UDP(sport, dport, 8 + len(payload), 0x79A7).pack() + payload
    ip = IPv4(ip_bytes(sip), ip_bytes(dip), proto, 20 + len(udp), ident, ttl, frag=frag)
    return Ethernet(mac(dst), mac(src), ETH_P_IP).pack() + ip.pack() + udp


class World:
    """One forwarding extension in memory."""

    def __init__(
        self,
        *,
        shmem_bridge: bool = True,
        flow_entries: int = 1024,
        flow_oentries: int = 1024,
        output: IFrameOutput | None = None,
        trap: IPacketTrap | None = None,
        **options: Any,
    ) -> None:
        """``output``, ``trap``: other doubles for the pipeline than :attr:`out` and
        :attr:`trap` (a benchmark's counters); ``options`` go to the pipeline."""
        self.dp = Datapath()
        size = (flow_entries + flow_oentries) * L.FLOW_ENTRY_SIZE
        self.flows = FlowTable(bytearray(size), flow_entries, flow_oentries)
        self.dp.register("vr_flow_req", FlowRequests(self.flows))
        if shmem_bridge:
            bridge = BridgeTable(bytearray((1024 + 1024) * L.BRIDGE_ENTRY_SIZE), 1024, 1024)
            self.bridge: BridgeTable | None = bridge
            self.dp.register_bridge(BridgeRoutes(bridge, self.dp))
        else:
            self.bridge = None
        self.out = RecordingOutput()
        self.trap = RecordingTrap()
        self.pipeline = Pipeline(self.dp, output or self.out, trap or self.trap,
                                 flows=self.flows, **options)  # fmt: skip

    def request(self, name: str, **fields: Any) -> Any:
        reply = self.dp.handle(make(name, {"h_op": C.OP_ADD, **fields}))
        code = int(reply[0][0].resp_code)
        if code < 0:
            raise AssertionError(f"{name} {fields} failed with {code}")
        return reply

    def vif(
        self,
        idx: int,
        vtype: int = C.VIF_TYPE_VIRTUAL,
        *,
        mac_: str = "00:00:5e:00:01:00",
        vrf: int = 0,
        flags: int = 0,
        mtu: int = 1514,
        nh_id: int = 0,
        **more: Any,
    ) -> None:
        self.request(
            "vr_interface_req",
            vifr_idx=idx,
            vifr_type=vtype,
            vifr_name=f"pp{idx}",
            vifr_mac=mac(mac_),
            vifr_vrf=vrf,
            vifr_flags=flags,
            vifr_mtu=mtu,
            vifr_nh_id=nh_id,
            vifr_mcast_vrf=65535,
            **more,
        )

    def nh(self, nh_id: int, nh_type: int, *, flags: int = C.NH_FLAG_VALID, **more: Any) -> None:
        more.setdefault("nhr_family", C.AF_INET)
        self.request("vr_nexthop_req", nhr_id=nh_id, nhr_type=nh_type, nhr_flags=flags, **more)

    def encap_nh(self, nh_id: int, oif: int, family: int = C.AF_BRIDGE, **more: Any) -> None:
        encap = mac("de:ad:be:ef:00:51") + mac("de:ad:be:ef:00:52") + b"\x08\x00"
        self.nh(nh_id, C.NH_ENCAP, nhr_family=family, nhr_encap_oif_id=[oif], nhr_encap=encap, **more)

    def tunnel_nh(
        self,
        nh_id: int,
        oif: int,
        kind: int,
        sip: str = "1.1.2.2",
        dip: str = "2.2.1.1",
        **more: Any,
    ) -> None:
        encap = mac("de:ad:be:ef:00:01") + mac("de:ad:be:ef:00:02") + b"\x08\x00"
        self.nh(
            nh_id,
            C.NH_TUNNEL,
            flags=C.NH_FLAG_VALID | kind | more.pop("extra_flags", 0),
            nhr_encap_oif_id=[oif],
            nhr_encap=encap,
            nhr_tun_sip=ip_int(sip),
            nhr_tun_dip=ip_int(dip),
            **more,
        )

    def route(
        self, prefix: str, plen: int, nh_id: int, *, label: int = -1, vrf: int = 0, **more: Any
    ) -> None:
        self.request(
            "vr_route_req",
            rtr_family=C.AF_INET,
            rtr_vrf_id=vrf,
            rtr_prefix=ip_bytes(prefix),
            rtr_prefix_len=plen,
            rtr_nh_id=nh_id,
            rtr_label=max(label, 0),
            rtr_label_flags=more.pop("label_flags", 0)
            | (C.VR_RT_LABEL_VALID_FLAG if label >= 0 else 0),
            **more,
        )

    def bridge_route(self, mac_: str, nh_id: int, *, vrf: int = 0, label: int = -1) -> None:
        self.request(
            "vr_route_req",
            rtr_family=C.AF_BRIDGE,
            rtr_vrf_id=vrf,
            rtr_mac=mac(mac_),
            rtr_nh_id=nh_id,
            rtr_label=max(label, 0),
            rtr_label_flags=C.VR_BE_LABEL_VALID_FLAG if label >= 0 else 0,
        )

    def flow(self, **fields: Any) -> Any:
        base = {
            "fr_op": 0,
            "fr_index": -1,
            "fr_family": C.AF_INET,
            "fr_flags": L.FLAG_ACTIVE,
            "fr_flow_proto": 17,
            "fr_flow_sport": 31,
            "fr_flow_dport": 31,
            "fr_flow_sip_l": ip_int("1.1.1.1") & 0xFFFFFFFF,
            "fr_flow_dip_l": ip_int("2.2.2.2") & 0xFFFFFFFF,
            "fr_action": L.ACTION_FORWARD,
            "fr_ecmp_nh_index": -1,
        }
        base.update(fields)
        reply = self.dp.handle(make("vr_flow_req", base))
        return reply[0][1]

    def drops(self) -> dict[str, int]:
        return {k: v for k, v in self.dp.tables.drop_stats.items() if v}

    def counters(self, idx: int) -> dict[str, int]:
        c = self.dp.tables.interfaces[idx].counters
        return {k: c[k] for k in ("ipackets", "ibytes", "opackets", "obytes", "ierrors", "oerrors")}


# -- two compute nodes on real devices (root) -----------------------------------------


def run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command, its output captured as text; ``check``: raise on a failure."""
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class Vm:
    """A VM's address: its MAC and its IPv4 address (in a /24)."""

    mac: str
    ip: str


@dataclass
class TwoNodes:
    """Namespaces ``<prefix>x``, ``<prefix>y`` (the nodes) joined by the fabric veth
    ``fx`` <-> ``fy``; VM namespaces ``<prefix>a`` behind node X (``va`` there, ``eth0``
    inside) and ``<prefix>b`` behind node Y (``vb``)."""

    prefix: str
    vm_a: Vm
    vm_b: Vm
    #: every namespace made, for :func:`remove_namespaces`
    namespaces: list[str] = field(default_factory=list)

    @property
    def a(self) -> str:
        return self.prefix + "a"

    @property
    def b(self) -> str:
        return self.prefix + "b"

    @property
    def x(self) -> str:
        return self.prefix + "x"

    @property
    def y(self) -> str:
        return self.prefix + "y"


def build_two_nodes(prefix: str, vm_a: Vm, vm_b: Vm, fabric_macs: tuple[str, str], *,
                    fabric_mtu: int | None = None, vm_mtu: int = 1400) -> TwoNodes:  # fmt: skip
    """Make the :class:`TwoNodes` namespaces and devices, IPv6 off, every link up, each
    VM with a static neighbour entry for the other; the VMs' MTU leaves room for the
    overlay headers on the fabric. What was made goes again when a step fails."""
    nodes = TwoNodes(prefix, vm_a, vm_b)
    try:
        for ns in (nodes.a, nodes.b, nodes.x, nodes.y):
            run("ip", "netns", "add", ns)
            nodes.namespaces.append(ns)
            for key in ("all", "default"):
                run("ip", "netns", "exec", ns, "sysctl", "-qw",
                    f"net.ipv6.conf.{key}.disable_ipv6=1")  # fmt: skip
            run("ip", "-n", ns, "link", "set", "lo", "up")
        mtu = ("mtu", str(fabric_mtu)) if fabric_mtu else ()
        run("ip", "-n", nodes.x, "link", "add", "fx", *mtu, "type", "veth", "peer", "name",
            "fy", *mtu, "netns", nodes.y)  # fmt: skip
        for node, dev, fabric_mac in zip((nodes.x, nodes.y), ("fx", "fy"), fabric_macs,
                                         strict=True):  # fmt: skip
            run("ip", "-n", node, "link", "set", dev, "address", fabric_mac)
            run("ip", "-n", node, "link", "set", dev, "up")
        for ns, node, side, me, other in ((nodes.a, nodes.x, "va", vm_a, vm_b),
                                          (nodes.b, nodes.y, "vb", vm_b, vm_a)):  # fmt: skip
            run("ip", "-n", node, "link", "add", side, "type", "veth", "peer", "name", "eth0",
                "netns", ns)  # fmt: skip
            run("ip", "-n", node, "link", "set", side, "up")
            run("ip", "-n", ns, "link", "set", "eth0", "address", me.mac, "mtu", str(vm_mtu))
            run("ip", "-n", ns, "addr", "add", me.ip + "/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "neigh", "replace", other.ip, "lladdr", other.mac, "dev", "eth0")
    except BaseException:
        remove_namespaces(nodes.namespaces)
        raise
    return nodes


def remove_namespaces(names: Iterable[str]) -> None:
    """Delete the namespaces (and with them every device in them); missing ones are fine."""
    for ns in names:
        run("ip", "netns", "del", ns, check=False)


def node_config(dev: str, mac_: str, peer_mac: str, ip: str, peer_ip: str, vm_dev: str,
                vm_mac: str, remote_vm_mac: str, encap: str = "udp",
                label: int = 128) -> list[list[str]]:  # fmt: skip
    """One compute node as utility command lines: fabric vif 0, vhost vif 1
    cross-connected to it, the VM's vif 3 in VRF 1, a receive route for the node's own
    address, ``label`` (or the VNI) to an L2 next hop to the VM, a tunnel next hop
    (``encap``: udp, gre or vxlan) and a labelled bridge entry for the remote VM."""
    tunnel = {"udp": ["--udp"], "gre": [], "vxlan": ["--vxlan"]}[encap]
    incoming = ["vxlan" if encap == "vxlan" else "mpls", "--create", str(label), "--nh", "32"]
    return [
        ["vif", "--add", dev, "--type", "physical", "--id", "0", "--mac", mac_],
        ["vif", "--add", "vhost0", "--type", "vhost", "--id", "1", "--xconnect", dev,
         "--mac", mac_],
        ["vif", "--add", vm_dev, "--type", "virtual", "--id", "3", "--vrf", "1", "--mac",
         "00:00:5e:00:01:00"],
        ["nh", "--create", "1", "--type", "1", "--oif", "1"],
        ["rt", "-c", "-v", "0", "-f", "0", "-p", ip, "-l", "32", "-n", "1"],
        ["nh", "--create", "32", "--type", "2", "--oif", "3", "--l2"],
        incoming,
        ["rt", "-c", "-v", "1", "-f", "1", "-e", vm_mac, "-n", "32"],
        ["nh", "--create", "20", "--type", "3", "--oif", "0", *tunnel, "--smac", mac_,
         "--dmac", peer_mac, "--sip", ip, "--dip", peer_ip],
        # -x 2: VR_BE_LABEL_VALID_FLAG; -t sets only the inet LABEL_VALID bit (0x1), so
        # the bridge entry gets flags 3, as the vtest bridge tunnel files give it
        ["rt", "-c", "-v", "1", "-f", "1", "-e", remote_vm_mac, "-n", "20", "-t", str(label),
         "-x", "2"],
    ]  # fmt: skip


def _tool(name: str) -> str:
    """A console script of this interpreter's environment (twistd, vif, nh, ...)."""
    return os.path.join(os.path.dirname(sys.executable), name)


def start_vrouter_dp(namespace: str, run_dir: str, entries: int = 4096,
                     timeout: float = 30, nice: int = 0) -> subprocess.Popen[bytes]:  # fmt: skip
    """``twistd -n vrouter-dp`` in ``namespace`` on ``run_dir`` (log ``vrouter-dp.log``
    there), once its ksync socket exists; RuntimeError naming the log if it does not
    come up (the process is stopped then). ``nice``: run it at that niceness."""
    log = os.path.join(run_dir, "vrouter-dp.log")
    niced = ["nice", "-n", str(nice)] if nice else []
    proc = subprocess.Popen(
        [*niced, "ip", "netns", "exec", namespace, _tool("twistd"), "-n", "--pidfile=", "--logfile",
         log, "vrouter-dp", "--run-dir", run_dir, "--flow-entries", str(entries),
         "--bridge-entries", str(entries)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(run_dir, "dpdk_netlink")):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_processes([proc])
            raise RuntimeError("vrouter-dp did not start; see " + log)
        time.sleep(0.05)
    return proc


def program_node(namespace: str | None, run_dir: str, config: Iterable[Sequence[str]]) -> None:
    """Run each utility command line of ``config`` against the datapath on ``run_dir``,
    inside ``namespace`` (where ``vif`` resolves device names) unless it is None;
    RuntimeError with the tool's output at the first that fails."""
    for tool, *args in config:
        where = ["ip", "netns", "exec", namespace] if namespace is not None else []
        r = run(*where, _tool(tool), "--sock-dir", run_dir, *args, check=False)
        if r.returncode:
            raise RuntimeError(f"{tool} {' '.join(args)}: {r.returncode}\n{r.stdout}{r.stderr}")


def stop_processes(procs: Iterable[subprocess.Popen[Any]]) -> None:
    """Terminate each process, killed when it has not gone within ten seconds."""
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

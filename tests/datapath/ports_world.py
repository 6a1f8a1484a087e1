"""Helpers of the port-layer integration tests: devices with the ``pt`` prefix, a wire.

Every namespace, TAP and veth made here is named ``pt<pid>...`` so parallel runs do not
collide, and :class:`Devices` removes them all.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import Datapath, make
from vrtwist.datapath.interfaces import IFrameOutput, IPacketPipeline
from vrtwist.datapath.ports import Frame
from vrtwist.sandesh import ADD, DEL

PFX = "pt%d" % (os.getpid() % 100000)
ETH_P_TEST = 0x88B5  # IEEE local experimental: nothing else on the wire uses it
SOL_PACKET, PACKET_IGNORE_OUTGOING = 263, 23


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (TAPs, veths and network namespaces)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    return None


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=60)


class Devices:
    """Creates and (in ``cleanup``) removes this test's devices and namespaces."""

    def __init__(self) -> None:
        self.links: list[str] = []
        self.namespaces: list[str] = []

    def tap(self, name: str) -> str:
        sh("ip", "tuntap", "add", "dev", name, "mode", "tap")
        self.links.append(name)
        sh("sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1", check=False)
        sh("ip", "link", "set", name, "up")
        return name

    def netns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, name: str, peer: str, netns: str | None = None, address: str = "") -> str:
        """A veth pair: ``name`` here, ``peer`` in ``netns`` (with ``address``) if given."""
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
        self.links.append(name)
        sh("sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1", check=False)
        sh("ip", "link", "set", name, "up")
        if netns is not None:
            sh("ip", "link", "set", peer, "netns", netns)
            sh("ip", "netns", "exec", netns, "sysctl", "-qw",
               f"net.ipv6.conf.{peer}.disable_ipv6=1", check=False)  # fmt: skip
            if address:
                sh("ip", "-n", netns, "addr", "add", address, "dev", peer)
            sh("ip", "-n", netns, "link", "set", peer, "up")
        else:
            sh("ip", "link", "set", peer, "up")
        return name

    def delete(self, name: str) -> None:
        sh("ip", "link", "del", name, check=False)

    def cleanup(self) -> None:
        for name in self.links:
            sh("ip", "link", "del", name, check=False)
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)


class Sniffer:
    """A test-side AF_PACKET socket on a device: inject frames, collect test frames."""

    def __init__(self, name: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_TEST))
        self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        self.sock.bind((name, ETH_P_TEST))
        self.sock.setblocking(False)
        self.got: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def collect(self) -> list[bytes]:
        while True:
            try:
                self.got.append(self.sock.recv(65536))
            except BlockingIOError:
                return self.got

    def close(self) -> None:
        self.sock.close()


def mkframe(n: int, dst: bytes = b"\x02\x00\x00\x00\x00\x02",
               src: bytes = b"\x02\x00\x00\x00\x00\x01") -> bytes:  # fmt: skip
    return dst + src + ETH_P_TEST.to_bytes(2, "big") + b"vrtwist %06d " % n + bytes(40)


def add_vif(datapath: Datapath, idx: int, name: str, vtype: int = C.VIF_TYPE_VIRTUAL,
            **extra: Any) -> None:  # fmt: skip
    fields = {"h_op": ADD, "vifr_idx": idx, "vifr_type": vtype, "vifr_name": name,
              "vifr_transport": 0, "vifr_mac": bytes(6), "vifr_os_idx": -1, **extra}  # fmt: skip
    reply = datapath.handle(make("vr_interface_req", fields))
    assert reply[0][0].resp_code == 0, reply[0][0].resp_code


def del_vif(datapath: Datapath, idx: int) -> None:
    reply = datapath.handle(make("vr_interface_req", {"h_op": DEL, "vifr_idx": idx}))
    assert reply[0][0].resp_code == 0, reply[0][0].resp_code


@implementer(IPacketPipeline)
class Wire:
    """A stand-in pipeline that joins vifs in pairs and counts as the real one does."""

    def __init__(self, datapath: Datapath, output: IFrameOutput, *pairs: tuple[int, int]) -> None:
        self.tables = datapath.tables
        self.output = output
        self.peer: dict[int, int] = {}
        for a, b in pairs:
            self.peer[a], self.peer[b] = b, a

    def receive(self, vif_index: int, frame: Frame) -> None:
        vif = self.tables.interfaces.get(vif_index)
        if vif is None:
            self.tables.count_drop("invalid_if")
            return
        vif.counters["ipackets"] += 1
        vif.counters["ibytes"] += len(frame)
        out = self.tables.interfaces.get(self.peer.get(vif_index, -1))
        if out is None:
            self.tables.count_drop("invalid_if", vif)
            return
        if self.output.transmit(out.idx, frame):
            out.counters["opackets"] += 1
            out.counters["obytes"] += len(frame)
        else:
            out.counters["oerrors"] += 1
            self.tables.count_drop("interface_tx_discard", vif)


def run_tool(run_dir: str, main: Callable[[list[str]], int],
             *argv: str) -> Deferred[tuple[int, str]]:
    """Run a utility's ``main`` against ``run_dir`` in a thread (it blocks on ksync while
    the datapath runs on the reactor); its exit status and what it printed."""

    def run() -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(["--sock-dir", run_dir, *argv])
        return code, out.getvalue()

    return deferToThread(run)


def in_netns(
    netns: str, *args: str, timeout: float = 60
) -> Deferred[subprocess.CompletedProcess[str]]:
    """Run a command in ``netns`` without blocking the reactor."""
    from twisted.internet.threads import deferToThread

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(("ip", "netns", "exec", netns, *args), capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    return deferToThread(run)


#: ``ping`` without the ping binary: ICMP echo over a raw socket, "N received" printed
PING = """
import os, socket, struct, sys, time
dst, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(2)
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF
ident, got = os.getpid() & 0xFFFF, 0
for seq in range(count):
    body = struct.pack("!HH", ident, seq) + b"vrtwist-ping-" + bytes(43)
    s.sendto(struct.pack("!BBH", 8, 0, csum(b"\\x08\\x00\\x00\\x00" + body)) + body, (dst, 0))
    end = time.monotonic() + 2
    while time.monotonic() < end:
        try:
            data, _ = s.recvfrom(2048)
        except socket.timeout:
            break
        ihl = (data[0] & 15) * 4
        if data[ihl] == 0 and struct.unpack_from("!HH", data, ihl + 4) == (ident, seq):
            got += 1
            break
print("%d received" % got)
sys.exit(0 if got == count else 1)
"""

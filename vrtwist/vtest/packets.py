"""The ``<packet>`` half of a vtest: veths for the named vifs, pcap in, capture, compare.

The spawned ``twistd vrouter-dp`` runs in a private network namespace made for the file,
so the vifs' device names (``1``, ``2``, ... in the vtest files) cannot clash with
anything on the host. For each vif a ``<packet>`` block names, the runner creates a veth
pair in that namespace: ``<vifr_name>`` (the datapath attaches it, as it attaches any
netdev) and ``vt<index>`` (the runner's end, read and written through an ``AF_PACKET``
socket opened inside the namespace). As the vtest driver did, each input frame is sent
into the tx vif and its output awaited on the rx vif before the next one is sent; the
capture is then compared byte for byte with the expected pcap.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Sequence

from vrtwist.ksync.blocking import KsyncConnection
from vrtwist.sandesh import GET, schema
from vrtwist.vtest.pcap import PcapError, compare_frames, read_pcap
from vrtwist.vtest.xmlspec import VtestPacket

__all__ = ["PacketRig", "PacketUnavailable", "resolve_pcap"]

CLONE_NEWNET = 0x40000000
SOL_PACKET, PACKET_IGNORE_OUTGOING = 263, 23
ETH_P_ALL = 0x0003
DEVICE_MTU = 9216
ATTACH_TIMEOUT = 10.0


class PacketUnavailable(Exception):
    """The packet check cannot run (missing pcap, no root, unusable vif name)."""


def resolve_pcap(xml_path: str, reference: str) -> str:
    """The pcap file a ``<packet>`` block names, upstream layout or flattened copy.

    vtest resolves references against the XML file's directory. In a flattened copy
    (``ipv4__complex__flow__flow_add.xml``: every ``/`` of the upstream path made ``__``)
    the same resolution is done on the upstream path and flattened again.
    """
    base = os.path.dirname(os.path.abspath(xml_path))
    direct = os.path.normpath(os.path.join(base, reference))
    if os.path.exists(direct):
        return direct
    parts = os.path.basename(xml_path).split("__")
    folder = "/".join(parts[:-1])
    upstream = os.path.normpath(os.path.join(folder or ".", reference))
    flat = os.path.join(base, upstream.replace("/", "__"))
    if os.path.exists(flat):
        return flat
    raise PacketUnavailable("missing pcap %s" % reference)


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise PacketUnavailable("%s: %s" % (" ".join(args), done.stderr.strip()))


def _in_netns(netns: str, names: Sequence[str]) -> list[socket.socket]:
    """``AF_PACKET`` sockets bound to ``names`` inside ``netns`` (setns in a thread)."""
    result: list[socket.socket] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open("/var/run/netns/" + netns) as f:
                if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            for name in names:
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                s.bind((name, ETH_P_ALL))
                s.setblocking(False)
                result.append(s)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, re-raised there
            errors.append(e)

    thread = threading.Thread(target=work, name="vtest-netns")
    thread.start()
    thread.join()
    if errors:
        for s in result:
            s.close()
        raise PacketUnavailable("cannot open sockets in %s: %s" % (netns, errors[0]))
    return result


class PacketRig:
    """One file's namespace: creates the vif devices and plays ``<packet>`` blocks."""

    def __init__(self, netns: str, sock_dir: str, frame_timeout: float = 1.0) -> None:
        self.netns = netns
        self.sock_dir = sock_dir
        self.frame_timeout = frame_timeout
        self.devices: dict[int, str] = {}

    def _device(self, ks: KsyncConnection, index: int) -> str:
        """The runner's end of vif ``index``'s veth, creating the pair on first use."""
        if index in self.devices:
            return self.devices[index]
        vif = ks.request(schema.vr_interface_req(h_op=GET, vifr_idx=index)).objects[0]
        name = vif.vifr_name or ""
        if not name or len(name.encode()) > 15 or "/" in name:
            raise PacketUnavailable("vif %d has no usable device name (%r)" % (index, name))
        mine = "vt%d" % index
        ns = ("ip", "-n", self.netns)
        _run(*ns, "link", "add", name, "mtu", str(DEVICE_MTU), "type", "veth", "peer", "name",
             mine, "mtu", str(DEVICE_MTU))  # fmt: skip
        _run(*ns, "link", "set", mine, "up")
        _run(*ns, "link", "set", name, "up")
        deadline = time.monotonic() + ATTACH_TIMEOUT
        while True:
            vif = ks.request(schema.vr_interface_req(h_op=GET, vifr_idx=index)).objects[0]
            if vif.vifr_intf_status == 1:
                break
            if time.monotonic() > deadline:
                raise PacketUnavailable("vif %d did not attach to %s" % (index, name))
            time.sleep(0.02)
        self.devices[index] = mine
        return mine

    def play(self, ks: KsyncConnection, xml_path: str, packet: VtestPacket) -> str | None:
        """Run one block: None if the capture matches, else the first difference."""
        try:
            inputs = read_pcap(resolve_pcap(xml_path, packet.input_pcap))
            expected = read_pcap(resolve_pcap(xml_path, packet.expected_pcap))
        except PcapError as e:
            raise PacketUnavailable("bad pcap: %s" % e) from e
        try:
            tx_idx, rx_idx = int(packet.tx_vif, 0), int(packet.rx_vif, 0)
        except ValueError as e:
            raise PacketUnavailable("tx/rx interface is not a vif index") from e
        tx_dev, rx_dev = self._device(ks, tx_idx), self._device(ks, rx_idx)
        tx, rx = _in_netns(self.netns, [tx_dev, rx_dev])
        try:
            got = self._exchange(tx, rx, inputs, len(expected))
        finally:
            tx.close()
            rx.close()
        return compare_frames(expected, got)

    def _exchange(self, tx: socket.socket, rx: socket.socket, inputs: Sequence[bytes],
                  expected: int) -> list[bytes]:  # fmt: skip
        got: list[bytes] = []
        for n, frame in enumerate(inputs, 1):
            tx.send(frame)
            want = min(n, expected)
            deadline = time.monotonic() + self.frame_timeout
            while len(got) < want:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([rx], [], [], left)[0]:
                    return got  # the driver would wait for ever: stop at the first loss
                _drain(rx, got)
        deadline = time.monotonic() + 0.2  # anything extra?
        while (left := deadline - time.monotonic()) > 0:
            if select.select([rx], [], [], left)[0]:
                _drain(rx, got)
        return got


def _drain(sock: socket.socket, into: list[bytes]) -> None:
    while True:
        try:
            into.append(sock.recv(65536))
        except BlockingIOError:
            return

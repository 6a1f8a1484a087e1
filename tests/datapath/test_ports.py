"""The port layer with real TAPs, veths and namespaces (root): frames in and out of vifs.

A :class:`~tests.datapath.ports_world.Wire` stands in for the pipeline (vif A <-> vif B)
so these tests prove the I/O path alone; ``test_ports_e2e`` runs the real pipeline.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.datapath.ports_world import (
    PFX,
    PING,
    Devices,
    Sniffer,
    Wire,
    add_vif,
    del_vif,
    in_netns,
    mkframe,
    sh,
    skip_reason,
)
from tests.polling import wait_for
from tests.streams import tcp_stream
from vrtwist.datapath import constants as C
from vrtwist.datapath import rings
from vrtwist.datapath.dispatcher import Datapath
from vrtwist.datapath.packets import PacketService
from vrtwist.datapath.ports import ATTACHED, WAITING, PacketPort, TapPort

_SKIP = skip_reason()


class PortTestCase(TestCase):
    timeout = 120
    if _SKIP:
        skip = _SKIP

    def setUp(self) -> None:
        self.dev = Devices()
        self.addCleanup(self.dev.cleanup)
        self.datapath = Datapath()
        self.service = PacketService(self.datapath, reactor)
        self.ports = self.service.ports
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.sniffers: list[Sniffer] = []

    def wire(self, *pairs: tuple[int, int]) -> Wire:
        wire = Wire(self.datapath, self.ports, *pairs)
        self.ports.pipeline = wire
        return wire

    def sniff(self, name: str) -> Sniffer:
        s = Sniffer(name)
        self.sniffers.append(s)
        self.addCleanup(s.close)
        return s

    def vif(self, idx: int) -> Any:
        return self.datapath.tables.interfaces[idx]


class TapTests(PortTestCase):
    @inlineCallbacks
    def test_frames_both_ways_between_two_taps(self) -> Any:
        a, b = self.dev.tap(PFX + "ta"), self.dev.tap(PFX + "tb")
        add_vif(self.datapath, 1, a)
        add_vif(self.datapath, 2, b)
        self.wire((1, 2))
        self.assertIsInstance(self.ports.ports[1], TapPort)
        self.assertEqual(self.vif(1).os_idx, socket.if_nametoindex(a))
        self.assertEqual(self.vif(1).intf_status, ATTACHED)
        sa, sb = self.sniff(a), self.sniff(b)
        frames = [mkframe(n) for n in range(50)]
        for f in frames:
            sa.send(f)  # the kernel sends on TAP a: the vif reads it from the fd
        yield wait_for(lambda: len(sb.collect()) >= 50)
        self.assertEqual(sb.got, frames)
        sb.send(mkframe(99))
        yield wait_for(lambda: sa.collect())
        self.assertEqual(sa.got, [mkframe(99)])
        self.assertEqual(self.vif(1).counters["ipackets"], 50)
        self.assertEqual(self.vif(2).counters["opackets"], 50)
        self.assertEqual(self.vif(2).counters["ipackets"], 1)
        self.assertEqual(self.ports.ports[2].stats["tx"], 50)

    @inlineCallbacks
    def test_attach_late_detach_reattach_and_delete_leaves_the_tap(self) -> Any:
        a, b = PFX + "la", self.dev.tap(PFX + "lb")
        add_vif(self.datapath, 1, a)  # Nova plugs the port before the VM's TAP exists
        add_vif(self.datapath, 2, b)
        self.wire((1, 2))
        self.assertEqual(self.ports.state(1), "waiting")
        self.assertEqual(self.vif(1).intf_status, WAITING)
        self.assertEqual(self.ports.state(2), "attached")
        self.dev.tap(a)
        yield wait_for(lambda: self.ports.state(1) == "attached")
        self.assertEqual(self.vif(1).os_idx, socket.if_nametoindex(a))
        sa, sb = self.sniff(a), self.sniff(b)
        sa.send(mkframe(1))
        yield wait_for(lambda: sb.collect())
        self.assertEqual(sb.got, [mkframe(1)])
        # the device disappears: detached, kept; the other vif is undisturbed
        sa.close()
        sh("ip", "link", "del", a)
        yield wait_for(lambda: self.ports.state(1) == "waiting")
        self.assertEqual(self.vif(1).intf_status, WAITING)
        self.assertEqual(self.ports.state(2), "attached")
        self.assertFalse(self.ports.transmit(1, mkframe(2)))
        # ... and comes back
        self.dev.tap(a)
        yield wait_for(lambda: self.ports.state(1) == "attached")
        sa = self.sniff(a)
        sb.got.clear()
        sa.send(mkframe(3))
        yield wait_for(lambda: sb.collect())
        self.assertEqual(sb.got, [mkframe(3)])
        # deleting the vif releases the persistent TAP untouched
        del_vif(self.datapath, 1)
        self.assertEqual(self.ports.state(1), "none")
        self.assertNotIn(1, self.ports.ports)
        self.assertEqual(socket.if_nametoindex(a), self.dev_index(a))
        flags = sh("ip", "-o", "link", "show", a).stdout
        self.assertIn(",UP", flags)

    def dev_index(self, name: str) -> int:
        with open(f"/sys/class/net/{name}/ifindex") as f:
            return int(f.read())

    @inlineCallbacks
    def test_device_vanishing_mid_traffic_counts_drops_and_disturbs_nothing(self) -> Any:
        a, b = self.dev.tap(PFX + "ma"), self.dev.tap(PFX + "mb")
        c, d = self.dev.tap(PFX + "mc"), self.dev.tap(PFX + "md")
        for idx, name in enumerate((a, b, c, d), 1):
            add_vif(self.datapath, idx, name)
        self.wire((1, 2), (3, 4))
        sa, sc, sd = self.sniff(a), self.sniff(c), self.sniff(d)
        for n in range(20):
            sa.send(mkframe(n))
        yield wait_for(lambda: self.vif(2).counters["opackets"] == 20)
        sh("ip", "link", "del", b)  # b vanishes while a keeps sending
        for n in range(20, 60):
            sa.send(mkframe(n))
        yield wait_for(lambda: self.vif(1).counters["ipackets"] == 60)
        yield wait_for(lambda: self.ports.state(2) == "waiting")
        lost = self.vif(2).counters["oerrors"]
        self.assertEqual(self.vif(2).counters["opackets"] + lost, 60)
        self.assertGreater(lost, 0)
        self.assertEqual(self.datapath.tables.drop_stats["vds_interface_tx_discard"], lost)
        # the other pair still works, both ways
        for n in range(10):
            sc.send(mkframe(n))
        yield wait_for(lambda: len(sd.collect()) == 10)
        self.assertEqual(sd.got, [mkframe(n) for n in range(10)])
        self.assertEqual(self.vif(3).counters["ierrors"], 0)


class _Flaky(Wire):
    def receive(self, vif_index: int, frame: Any) -> None:
        if b"boom" in bytes(frame):
            raise RuntimeError("pipeline bug")
        super().receive(vif_index, frame)


class PipelineErrorTests(PortTestCase):
    @inlineCallbacks
    def test_a_raising_pipeline_costs_the_frame_not_the_port(self) -> Any:
        a, b = self.dev.tap(PFX + "ea"), self.dev.tap(PFX + "eb")
        add_vif(self.datapath, 1, a)
        add_vif(self.datapath, 2, b)
        self.ports.pipeline = _Flaky(self.datapath, self.ports, (1, 2))
        sa, sb = self.sniff(a), self.sniff(b)
        sa.send(mkframe(1))
        sa.send(mkframe(2)[:-4] + b"boom")
        sa.send(mkframe(3))
        yield wait_for(lambda: len(sb.collect()) >= 2)
        self.assertEqual(sb.got, [mkframe(1), mkframe(3)])
        self.assertEqual(self.ports.pipeline_errors, 1)
        self.assertEqual(self.ports.state(1), "attached")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class RefusalTests(PortTestCase):
    @inlineCallbacks
    def test_non_ethernet_devices_are_refused_and_others_still_attach(self) -> Any:
        tun = PFX + "tu"
        sh("ip", "tuntap", "add", "dev", tun, "mode", "tun")
        self.dev.links.append(tun)
        add_vif(self.datapath, 1, "lo")
        add_vif(self.datapath, 2, tun)
        add_vif(self.datapath, 3, "x" * 20)  # longer than IFNAMSIZ: no such device
        b, c = self.dev.tap(PFX + "rb"), self.dev.tap(PFX + "rc")
        add_vif(self.datapath, 4, b)
        add_vif(self.datapath, 5, c)
        self.wire((4, 5))
        for idx in (1, 2, 3):
            self.assertEqual(self.ports.state(idx), "waiting")
            self.assertEqual(self.vif(idx).intf_status, WAITING)
        self.assertEqual(
            self.ports.errors, {1: "not an Ethernet device", 2: "not an Ethernet device"}
        )
        self.assertEqual(self.vif(1).os_idx, 0)
        self.assertFalse(self.ports.transmit(1, mkframe(0)))
        sb, sc = self.sniff(b), self.sniff(c)
        sb.send(mkframe(7))
        yield wait_for(lambda: sc.collect())
        self.assertEqual(sc.got, [mkframe(7)])


class VethTests(PortTestCase):
    def two_namespaces(self) -> tuple[str, str]:
        n1, n2 = self.dev.netns(PFX + "n1"), self.dev.netns(PFX + "n2")
        self.dev.veth(PFX + "v1", PFX + "p1", n1, "10.77.0.1/24")
        self.dev.veth(PFX + "v2", PFX + "p2", n2, "10.77.0.2/24")
        add_vif(self.datapath, 1, PFX + "v1")
        add_vif(self.datapath, 2, PFX + "v2", vtype=C.VIF_TYPE_PHYSICAL)
        self.wire((1, 2))
        return n1, n2

    @inlineCallbacks
    def test_ping_between_namespaces_through_af_packet_ports(self) -> Any:
        n1, _n2 = self.two_namespaces()
        self.assertIsInstance(self.ports.ports[1], PacketPort)
        self.assertIsInstance(self.ports.ports[2], PacketPort)
        result = yield in_netns(n1, "python3", "-c", PING, "10.77.0.2", "3")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("3 received", result.stdout)
        self.assertGreaterEqual(self.vif(1).counters["ipackets"], 3)
        self.assertGreaterEqual(self.vif(2).counters["opackets"], 3)

    @inlineCallbacks
    def test_tcp_with_veth_offloads_gso_and_partial_checksums(self) -> Any:
        """The namespaces' veths keep TSO and checksum offload on: the port finishes them."""
        n1, n2 = self.two_namespaces()
        server, client, expected = tcp_stream("10.77.0.2", 5201, 4 * 1024 * 1024, timeout=50)
        got = in_netns(n2, "python3", "-c", server)
        sent = yield in_netns(n1, "python3", "-c", client)
        self.assertEqual(sent.returncode, 0, sent.stderr)
        result = yield got
        self.assertEqual(result.stdout.strip(), expected, result.stderr)
        self.assertEqual(self.ports.ports[1].kind, "packet-ring")
        stats = self.ports.ports[1].stats
        self.assertGreater(stats["gso"], 0)  # super-frames were segmented ...
        self.assertGreater(stats["csum"], 0)  # ... and lone partial checksums finished
        self.assertEqual(stats["rx_errors"], 0)


class RingTests(PortTestCase):
    """``PACKET_MMAP`` rings on AF_PACKET ports, and the per-frame fallback without."""

    def veth_pair(self, tag: str) -> tuple[str, str, str, str]:
        """Two veths in this namespace with a vif on one end each; (vif a, peer a, ...)."""
        a, pa = self.dev.veth(PFX + tag + "a", PFX + tag + "x"), PFX + tag + "x"
        b, pb = self.dev.veth(PFX + tag + "b", PFX + tag + "y"), PFX + tag + "y"
        for dev in (a, pa, b, pb):  # jumbo: room for frames larger than a ring slot
            sh("sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1", check=False)
            sh("ip", "link", "set", dev, "mtu", "9000", "up")
        add_vif(self.datapath, 1, a)
        add_vif(self.datapath, 2, b)
        self.wire((1, 2))
        return a, pa, b, pb

    @inlineCallbacks
    def test_a_burst_larger_than_the_ring_is_delivered_or_counted(self) -> Any:
        _a, pa, _b, pb = self.veth_pair("r")
        port = self.ports.ports[1]
        assert isinstance(port, PacketPort)
        self.assertEqual(port.kind, "packet-ring")
        sx, sy = self.sniff(pa), self.sniff(pb)
        sy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
        total = rings.RX_FRAMES * 3
        frames = [mkframe(n) for n in range(total)]
        for f in frames:  # faster than one reactor turn may drain: the ring may overflow
            sx.send(f)
        seen: list[int] = []

        def settled() -> bool:  # nothing more arrives
            seen.append(len(sy.collect()))
            return len(seen) > 20 and seen[-1] == seen[-20] > 0

        yield wait_for(settled)
        # a ring's worth or more crossed, in order, each once; what the kernel dropped
        # for a full ring is counted (the veth's own backlog may drop more)
        self.assertGreaterEqual(len(sy.got), rings.RX_FRAMES // 2)
        self.assertLessEqual(len(sy.got) + port.poll_drops(), total)
        self.assertGreater(port.stats["rx_dropped"], 0)
        index = {f: n for n, f in enumerate(frames)}
        order = [index[f] for f in sy.got]
        self.assertEqual(order, sorted(set(order)))
        # frames larger than a slot go round the rings, both ways
        big = mkframe(1) + bytes(rings.FRAME_SIZE * 2)
        sy.got.clear()
        sx.send(big)
        yield wait_for(lambda: sy.collect())
        self.assertEqual(sy.got, [big])

    @inlineCallbacks
    def test_a_raising_pipeline_costs_one_frame_of_the_ring_batch(self) -> Any:
        """The ring's drain loop calls the pipeline itself: the same guard as ``deliver``."""
        _a, pa, _b, pb = self.veth_pair("e")
        self.ports.pipeline = _Flaky(self.datapath, self.ports, (1, 2))
        sx, sy = self.sniff(pa), self.sniff(pb)
        frames = [mkframe(n) for n in range(20)]
        for n, f in enumerate(frames):
            sx.send(f[:-4] + b"boom" if n == 7 else f)
        yield wait_for(lambda: len(sy.collect()) >= 19)
        self.assertEqual(sy.got, frames[:7] + frames[8:])
        self.assertEqual(self.ports.pipeline_errors, 1)
        self.assertEqual(self.ports.ports[1].stats["rx"], 20)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_without_rings_one_system_call_per_frame(self) -> Any:
        self.ports.use_rings = False
        _a, pa, _b, pb = self.veth_pair("f")
        port = self.ports.ports[1]
        self.assertIsInstance(port, PacketPort)
        self.assertEqual(port.kind, "packet")
        self.assertIsNone(port.rings)  # type: ignore[attr-defined]
        sx, sy = self.sniff(pa), self.sniff(pb)
        frames = [mkframe(n) for n in range(100)] + [mkframe(100) + bytes(4000)]
        for f in frames:
            sx.send(f)
        yield wait_for(lambda: len(sy.collect()) >= len(frames))
        self.assertEqual(sy.got, frames)

"""The seven runnable vtest packet tests, in memory, byte for byte.

Each test programs a fresh datapath with the XML's messages (through
``Datapath.handle``, as the vtest driver sends them), feeds the input pcap's 1000
frames into the named vif and compares every frame leaving the capture vif with the
expected pcap. The data is the vRouter's own vtest suite (BSD 2-Clause, see its README).
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface.verify import verifyObject

from vrtwist.datapath import constants as C
from vrtwist.datapath.interfaces import (
    IFrameOutput,
    IPacketPipeline,
    IPacketTrap,
    IPipelineTimers,
)
from vrtwist.datapath.testing import (
    CountingOutput,
    CountingTrap,
    RecordingOutput,
    RecordingTrap,
    World,
    ip_int,
    udp_frame,
)
from vrtwist.packet import pcap
from vrtwist.shmem.flowtable import key_from_request
from vrtwist.vtest.xmlspec import parse_file

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The upstream vtest XML files and pcaps, flattened into one folder (docs/vtest.md):
#: $VRTWIST_VTEST_DIR, else a ``shared/peer/vtest`` folder next to the clone.
PEER = os.environ.get("VRTWIST_VTEST_DIR") or os.path.join(
    os.path.dirname(_ROOT), "shared", "peer", "vtest"
)


def _local(xml: str, ref: str) -> str:
    """The flattened name of a pcap referenced relative to the XML's upstream folder."""
    folder = "/".join(os.path.basename(xml)[: -len(".xml")].split("__")[:-1])
    return os.path.join(PEER, os.path.normpath(os.path.join(folder, ref)).replace("/", "__"))


class VtestPacketTests(SynchronousTestCase):
    shmem_bridge = True

    def flow_index(self, name: str, world: World) -> int:
        """The table index of the vtest's one flow, found by its request's key."""
        test = parse_file(os.path.join(PEER, name))
        (req,) = [m.request for m in test.messages if m.name == "vr_flow_req"]
        found = key_from_request(req)
        assert found is not None
        return world.flows.lookup(found[0])

    def run_vtest(self, name: str) -> World:
        path = os.path.join(PEER, name)
        if not os.path.exists(path):
            raise SkipTest(f"vtest data not present at {PEER}")
        test = parse_file(path)
        world = World(shmem_bridge=self.shmem_bridge)
        for msg in test.messages:
            code = int(world.dp.handle(msg.request)[0][0].resp_code)
            self.assertEqual(code, msg.expect_return, f"message {msg.index} {msg.name}")
        self.assertEqual(len(test.packets), 1)
        packet = test.packets[0]
        frames = pcap.frames(_local(path, packet.input_pcap))
        expected = pcap.frames(_local(path, packet.expected_pcap))
        self.assertEqual(len(frames), 1000)
        for frame in frames:
            world.pipeline.receive(int(packet.tx_vif), frame)
        got = world.out.on(int(packet.rx_vif))
        self.assertEqual(len(got), len(expected))
        for n, (a, b) in enumerate(zip(got, expected, strict=True)):
            self.assertEqual(a.hex(), b.hex(), f"frame {n}")
        self.assertEqual(world.trap.traps, [])
        self.assertEqual(world.drops(), {})
        tx = world.counters(int(packet.tx_vif))
        self.assertEqual(tx["ipackets"], 1000)
        self.assertEqual(tx["ibytes"], sum(len(f) for f in frames))
        rx = world.counters(int(packet.rx_vif))
        self.assertEqual((rx["opackets"], rx["obytes"]), (1000, sum(len(f) for f in expected)))
        return world

    def test_doubles(self) -> None:
        world = World()
        self.assertTrue(verifyObject(IFrameOutput, RecordingOutput()))
        self.assertTrue(verifyObject(IPacketTrap, RecordingTrap()))
        self.assertTrue(verifyObject(IPacketPipeline, world.pipeline))
        self.assertTrue(verifyObject(IPipelineTimers, world.pipeline))

    def test_counting_doubles_keep_nothing(self) -> None:
        """A benchmark's doubles: the pipeline runs through them, only counts are kept."""
        out, trap = CountingOutput(), CountingTrap()
        self.assertTrue(verifyObject(IFrameOutput, out))
        self.assertTrue(verifyObject(IPacketTrap, trap))
        world = World(output=out, trap=trap)
        world.vif(1, mac_="de:ad:be:ef:00:02", flags=C.VIF_FLAG_POLICY_ENABLED)
        world.vif(2, mac_="de:ad:be:ef:00:01")
        world.encap_nh(12, 2)
        world.bridge_route("de:ad:be:ef:00:01", 12)
        world.pipeline.receive(1, udp_frame())  # a flow miss: held and trapped
        world.flow(fr_flow_sport=31, fr_flow_dport=31, fr_flow_sip_l=ip_int("1.1.1.9"))
        world.pipeline.receive(1, udp_frame(sip="1.1.1.9"))  # a hit: forwarded
        self.assertEqual((out.sent, trap.traps), (1, 1))
        self.assertEqual((world.out.frames, world.trap.traps), ([], []))

    def test_vm_comm_jumbo_packets(self) -> None:
        world = self.run_vtest("ipv4__complex__VMs__vm_comm_jumbo_packets.xml")
        self.assertIn(9042, {len(f) for f in world.out.on(2)})

    def test_flow_add(self) -> None:
        name = "ipv4__complex__flow__flow_add.xml"
        world = self.run_vtest(name)
        index = self.flow_index(name, world)
        self.assertGreaterEqual(index, 0)
        self.assertEqual(world.flows.stats(index), (122000, 1000))
        self.assertEqual(world.flows.entry(index).packets, 1000)

    def test_flow_simple_add(self) -> None:
        name = "ipv4__complex__flow__flow_simple_add.xml"
        world = self.run_vtest(name)
        self.assertEqual(world.flows.stats(self.flow_index(name, world)), (122000, 1000))

    def test_mirror_static(self) -> None:
        world = self.run_vtest("ipv4__complex__mirror__mirror_static.xml")
        # the original went on through NH 12 (encap AF_INET on top of the Ethernet header)
        originals = world.out.on(2)
        self.assertEqual(len(originals), 1000)
        self.assertEqual({len(f) for f in originals}, {136})
        self.assertEqual(originals[0][:14].hex(), "deadbeef0051deadbeef00520800")
        # the mirror copy leaves before the original
        self.assertEqual(world.out.frames[0][0], 3)

    def test_mplsogre_routing(self) -> None:
        self.run_vtest("ipv4__complex__mplsogre__routing__mplsogre.xml")

    def test_mplsoudp_routing(self) -> None:
        self.run_vtest("ipv4__complex__mplsoudp__routing__mplsoudp.xml")

    def test_vxlan_routing(self) -> None:
        self.run_vtest("ipv4__complex__vxlan__routing__vxlan.xml")


class VtestPacketInMemoryBridgeTests(VtestPacketTests):
    """The same with the datapath's in-memory bridge table (no shared memory)."""

    shmem_bridge = False

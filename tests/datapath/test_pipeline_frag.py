"""IPv4 fragments through the flow stage: the fragment table and the assembler queue.

The first fragment's ports go into the fragment table, from which the later fragments
take the ports of their flow key; a later fragment that comes before its first waits in
the assembler and goes on right after the first one. Time is a test clock.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.datapath import constants as C
from vrtwist.datapath.packets import SWEEP_INTERVAL, PacketService
from vrtwist.datapath.pipeline_core import Packet
from vrtwist.datapath.pipeline_frag import FragmentAssembler, FragmentTable
from vrtwist.datapath.testing import World, ip_bytes, mac
from vrtwist.packet.headers import ETH_P_IP, UDP, Ethernet, IPv4
from vrtwist.shmem import layout as L

MF = 0x2000
#: one UDP datagram (7936 -> 7936, 40 bytes of data) cut in three at 24 and 40
DATAGRAM = UDP(7936, 7936, 48, 0).pack() + bytes(range(40))
CUTS = ((0, 24), (24, 40), (40, 48))


def fragment(n: int, ident: int = 7, sip: str = "1.1.1.1") -> bytes:
    """Fragment ``n`` (0, 1, 2) of the datagram with IP id ``ident``."""
    start, end = CUTS[n]
    frag = start // 8 | (MF if end < len(DATAGRAM) else 0)
    data = DATAGRAM[start:end]
    ip = IPv4(ip_bytes(sip), ip_bytes("2.2.2.2"), 17, 20 + len(data), ident, frag=frag)
    eth = Ethernet(mac("de:ad:be:ef:00:01"), mac("de:ad:be:ef:00:02"), ETH_P_IP)
    return eth.pack() + ip.pack() + data


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FragmentWorldCase(SynchronousTestCase):
    """VM vif 1 (policy) bridged to vif 2, the datagram's flow installed, a test clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        w = self.w = World(now=self.clock)
        w.vif(1, mac_="de:ad:be:ef:00:02", flags=C.VIF_FLAG_POLICY_ENABLED)
        w.vif(2, mac_="de:ad:be:ef:00:01")
        w.encap_nh(12, 2)
        w.bridge_route("de:ad:be:ef:00:01", 12)
        # the flow of the whole datagram: UDP 7936 -> 7936 (wire order as a request field)
        self.index = int(w.flow(fr_flow_sport=31, fr_flow_dport=31).fresp_index)

    def packets(self) -> int:
        return self.w.flows.entry(self.index).packets


class FragmentFlowTests(FragmentWorldCase):
    def test_in_order(self) -> None:
        w = self.w
        frags = [fragment(n) for n in range(3)]
        w.pipeline.receive(1, frags[0])
        self.assertEqual(len(w.pipeline.frag_table), 1)
        for f in frags[1:]:
            w.pipeline.receive(1, f)
        self.assertEqual(w.out.on(2), frags)
        self.assertEqual(self.packets(), 3)  # all three found the datagram's flow
        self.assertEqual(len(w.pipeline.frag_table), 0)  # every byte seen: entry gone
        self.assertEqual((w.drops(), w.trap.traps), ({}, []))

    def test_out_of_order_waits_for_the_first(self) -> None:
        w = self.w
        frags = [fragment(n) for n in range(3)]
        w.pipeline.receive(1, frags[2])
        w.pipeline.receive(1, frags[1])
        self.assertEqual(w.out.frames, [])
        self.assertEqual(len(w.pipeline.frag_assembler), 2)
        w.pipeline.receive(1, frags[0])
        # the first goes on, then the held ones in the order they came
        self.assertEqual(w.out.on(2), [frags[0], frags[2], frags[1]])
        self.assertEqual(self.packets(), 3)
        self.assertEqual(len(w.pipeline.frag_assembler), 0)
        self.assertEqual(w.drops(), {})

    def test_held_fragments_time_out(self) -> None:
        w = self.w
        w.pipeline.receive(1, fragment(1))
        self.clock.t += 1.5
        w.pipeline.receive(1, fragment(2, ident=8))  # another datagram; nothing expired yet
        self.assertEqual(len(w.pipeline.frag_assembler), 2)
        self.clock.t += 0.6  # the first waited 2.1 s
        w.pipeline.receive(1, fragment(0, ident=9))
        self.assertEqual(w.drops(), {"vds_frag_err": 1})
        self.assertEqual(len(w.pipeline.frag_assembler), 1)
        self.assertEqual(w.out.on(2), [fragment(0, ident=9)])
        w.pipeline.receive(1, fragment(0))  # too late for the expired one: nothing released
        self.assertEqual(len(w.out.on(2)), 2)

    def test_table_entry_times_out(self) -> None:
        w = self.w
        w.pipeline.receive(1, fragment(0))
        self.clock.t += 2.5
        w.pipeline.receive(1, fragment(1))  # its entry is gone: it waits for a first
        self.assertEqual(len(w.pipeline.frag_table), 0)
        self.assertEqual(len(w.pipeline.frag_assembler), 1)
        self.assertEqual(w.out.on(2), [fragment(0)])

    def test_table_full(self) -> None:
        w = self.w
        w.pipeline.frag_table = FragmentTable(capacity=1)
        w.pipeline.receive(1, fragment(0))  # fills the only entry
        w.pipeline.receive(1, fragment(1, ident=8))  # waits for its first
        w.pipeline.receive(1, fragment(0, ident=8))  # no room: forwarded, not recorded
        self.assertEqual(w.drops(), {"vds_no_frag_entry": 1})  # the waiting one lost
        self.assertEqual(w.out.on(2), [fragment(0), fragment(0, ident=8)])
        for n in (1, 2):  # the first datagram is unaffected
            w.pipeline.receive(1, fragment(n))
        self.assertEqual(w.out.on(2)[2:], [fragment(1), fragment(2)])
        self.assertEqual(self.packets(), 4)

    def test_assembler_limits(self) -> None:
        w = self.w
        w.pipeline.frag_assembler = FragmentAssembler(max_keys=2, max_fragments=3)
        w.pipeline.receive(1, fragment(1, ident=1))
        w.pipeline.receive(1, fragment(1, ident=2))
        w.pipeline.receive(1, fragment(1, ident=3))  # a third datagram awaited: refused
        self.assertEqual(w.drops(), {"vds_fragment_queue_fail": 1})
        w.pipeline.receive(1, fragment(2, ident=1))
        w.pipeline.receive(1, fragment(2, ident=2))  # every slot taken
        self.assertEqual(w.drops(), {"vds_fragment_queue_fail": 1, "vds_frag_err": 1})
        self.assertEqual(len(w.pipeline.frag_assembler), 3)
        w.pipeline.receive(1, fragment(0, ident=1))
        self.assertEqual(w.out.on(2), [fragment(n, ident=1) for n in range(3)])
        self.assertEqual(len(w.pipeline.frag_assembler), 1)  # datagram 2's one still waits

    def test_no_flow_stage_no_fragment_state(self) -> None:
        w = self.w
        w.vif(1, mac_="de:ad:be:ef:00:02")  # policy off
        for n in (2, 0, 1):
            w.pipeline.receive(1, fragment(n))
        self.assertEqual(len(w.out.on(2)), 3)
        self.assertEqual((len(w.pipeline.frag_table), len(w.pipeline.frag_assembler)), (0, 0))
        self.assertEqual(self.packets(), 0)

    def test_tunnel_source_port_of_a_later_fragment_uses_the_table(self) -> None:
        """The MPLSoUDP/VXLAN source-port hash of a later fragment: the first one's ports."""
        w = self.w
        pipeline = w.pipeline

        def port(frame: bytes) -> int:
            pkt = Packet(frame, w.dp.tables.interfaces[1])
            pipeline._classify(pkt)
            return pipeline.udp_src_port(pkt)

        unknown = port(fragment(1))  # nothing known yet: ports 0 in the hash
        w.pipeline.receive(1, fragment(0))  # records 7936 -> 7936
        self.assertEqual(port(fragment(1)), port(fragment(0)))
        self.assertNotEqual(port(fragment(1)), unknown)

    def test_later_fragment_waits_with_its_first_in_the_hold_queue(self) -> None:
        w = self.w
        other = [fragment(n, sip="1.1.1.9") for n in range(2)]
        w.pipeline.receive(1, other[0])  # a miss: HOLD and trapped
        w.pipeline.receive(1, other[1])  # same key: held with it
        (trap,) = w.trap.traps
        held = w.pipeline.held[trap[3]]
        self.assertEqual(len(held), 2)
        self.assertEqual(w.flows.entry(trap[3]).action, L.ACTION_HOLD)


class FragmentSweepTests(FragmentWorldCase):
    """Fragment state times out by the service's timer, with no fragment passing."""

    def test_sweep_forgets_entries_and_drops_what_waited(self) -> None:
        w = self.w
        p = w.pipeline
        p.receive(1, fragment(0))  # a table entry
        p.receive(1, fragment(1, ident=8))  # two fragments awaiting their first
        p.receive(1, fragment(2, ident=8))
        self.clock.t += 1.0
        p.receive(1, fragment(1, ident=9))  # one more, a second later
        p.sweep(self.clock.t + 0.9)  # nothing is two seconds old yet
        self.assertEqual((len(p.frag_table), len(p.frag_assembler)), (1, 3))
        self.assertEqual(w.drops(), {})
        p.sweep(self.clock.t + 1.0)  # the first three are
        self.assertEqual((len(p.frag_table), len(p.frag_assembler)), (0, 1))
        self.assertEqual(w.drops(), {"vds_frag_err": 2})
        self.assertEqual(w.dp.tables.interfaces[1].drops, {"vds_frag_err": 2})
        p.sweep(self.clock.t + 2.0)
        self.assertEqual(len(p.frag_assembler), 0)
        self.assertEqual(w.drops(), {"vds_frag_err": 3})
        self.assertEqual(w.out.on(2), [fragment(0)])  # only the first ever went on
        self.assertEqual(self.packets(), 1)
        p.receive(1, fragment(0, ident=8))  # its later fragments are gone: nothing released
        self.assertEqual(w.out.on(2), [fragment(0), fragment(0, ident=8)])
        self.assertEqual(w.drops(), {"vds_frag_err": 3})

    def test_the_packet_service_sweeps_on_its_clock(self) -> None:
        """``PacketService`` runs the sweep every SWEEP_INTERVAL of the reactor's clock,
        with the pipeline on the same clock; stopping the service stops it."""
        w = self.w
        reactor = MemoryReactorClock()
        service = PacketService(w.dp, reactor, SimpleNamespace(flows=w.flows),
                                now=reactor.seconds)  # fmt: skip
        p = service.pipeline
        p.receive(1, fragment(1))
        p.receive(1, fragment(2))
        service.startService()
        self.addCleanup(service.stopService)
        reactor.advance(1.0)
        self.assertEqual(w.drops(), {})
        self.assertEqual(len(w.pipeline.frag_assembler), 0)  # the service's own pipeline
        for _ in range(int(1.0 / SWEEP_INTERVAL)):
            reactor.advance(SWEEP_INTERVAL)  # no traffic at all
        self.assertEqual(w.drops(), {"vds_frag_err": 2})
        service.stopService()
        self.assertFalse([c for c in reactor.getDelayedCalls() if c.active()])


class FragmentStateTests(SynchronousTestCase):
    def test_bad_limits(self) -> None:
        self.assertRaises(ValueError, FragmentTable, 0)
        self.assertRaises(ValueError, FragmentTable, 4, 0)
        self.assertRaises(ValueError, FragmentAssembler, 0)
        self.assertRaises(ValueError, FragmentAssembler, 1, 1, -1)

    def test_table_accounting(self) -> None:
        t = FragmentTable(capacity=2)
        key = (0, bytes(8), 1)
        self.assertTrue(t.add(key, b"\x1f\x00\x1f\x00", 24, 0.0))
        entry = t.get(key, 1.0)
        assert entry is not None
        t.account(key, entry, 48, True, 8)  # the last: 32 of 48 bytes seen
        self.assertEqual(t.peek(key), b"\x1f\x00\x1f\x00")
        t.account(key, entry, 40, False, 16)
        self.assertIsNone(t.peek(key))
        self.assertTrue(t.add((0, bytes(8), 2), ZERO, 8, 5.0))
        self.assertTrue(t.add((0, bytes(8), 3), ZERO, 8, 5.0))
        self.assertFalse(t.add((0, bytes(8), 4), ZERO, 8, 5.0))
        self.assertTrue(t.add((0, bytes(8), 4), ZERO, 8, 7.5))  # the others expired
        self.assertEqual(len(t), 1)


ZERO = bytes(4)

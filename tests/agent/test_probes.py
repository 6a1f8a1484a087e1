"""Path-preference probes on a Clock: schedule, frame bytes, the VM's answers."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.agent.packet.arp import (
    PROBE_FAST_SENDS,
    PROBE_INTERVAL,
    PROBE_MOVED_INTERVAL,
    PROBE_SLOW_INTERVAL,
    VRRP_MAC,
    PathProber,
    probe,
)
from vrtwist.packet.headers import ARP, ETH_P_ARP, Ethernet

VM_MAC = bytes.fromhex("020000000001")
VM_IP = bytes((10, 1, 1, 3))
DNS = bytes((10, 1, 1, 2))


class ProbeFrameTests(SynchronousTestCase):
    def test_bytes(self) -> None:
        frame = probe(VM_MAC, DNS, VM_IP)
        self.assertEqual(frame, bytes.fromhex(
            "020000000001" "00005e000100" "0806"          # Ethernet: to the VM, from the vif
            "0001" "0800" "06" "04" "0001"                # ARP request
            "00005e000100" "0a010102"                     # sha vif MAC, spa service IP
            "000000000000" "0a010103"))                   # tha 0, tpa the VM's address
        self.assertEqual(len(frame), 42)

    def test_vlan_and_no_service_ip(self) -> None:
        frame = probe(VM_MAC, bytes(4), VM_IP, VRRP_MAC, 100)
        eth = Ethernet.parse(frame)
        self.assertEqual((eth.ethertype, len(frame)), (ETH_P_ARP, 46))
        self.assertEqual(frame[12:16], bytes.fromhex("81000064"))
        arp = ARP.parse(frame, eth.length)
        self.assertEqual((arp.spa, arp.tha, arp.tpa), (bytes(4), bytes(6), VM_IP))


class ProberTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sent: list[tuple[float, int, int, bytes]] = []
        self.prober = PathProber(self.clock, self.record)

    def record(self, vif: int, vrf: int, frame: bytes) -> bool:
        self.sent.append((self.clock.seconds(), vif, vrf, frame))
        return True

    def times(self) -> list[float]:
        return [t for t, *_ in self.sent]

    def test_schedule_fast_then_slow(self) -> None:
        self.prober.port_up(3, 1, VM_MAC, "10.1.1.3", "10.1.1.2")
        self.assertEqual(self.sent[0][1:], (3, 1, probe(VM_MAC, DNS, VM_IP)))
        self.clock.pump([PROBE_INTERVAL] * (PROBE_FAST_SENDS - 1))
        self.assertEqual(len(self.sent), PROBE_FAST_SENDS)
        fast_end = self.clock.seconds()
        self.assertEqual(fast_end, PROBE_INTERVAL * (PROBE_FAST_SENDS - 1))
        self.clock.advance(PROBE_INTERVAL)  # the 150th send scheduled the next in 10 s
        self.assertEqual(len(self.sent), PROBE_FAST_SENDS)
        self.clock.advance(PROBE_SLOW_INTERVAL - PROBE_INTERVAL)
        self.assertEqual(self.times()[-1], fast_end + PROBE_SLOW_INTERVAL)
        self.clock.advance(PROBE_SLOW_INTERVAL)
        self.assertEqual(len(self.sent), PROBE_FAST_SENDS + 2)  # for as long as the port is

    def test_reply_is_traffic_and_a_moved_mac_probes_every_5s(self) -> None:
        self.prober.port_up(3, 1, VM_MAC, "10.1.1.3")
        self.assertEqual(self.prober.state(3), {"probes_sent": 1, "replies": 0,
                                                "traffic_seen": False, "learnt_mac": None})
        other = bytes.fromhex("020000000099")
        reply = Ethernet(VRRP_MAC, other, ETH_P_ARP).pack() + ARP(2, other, VM_IP, VRRP_MAC,
                                                                  bytes(4)).pack()
        self.assertTrue(self.prober.received(3, reply))
        state = self.prober.state(3)
        assert state is not None
        self.assertEqual((state["traffic_seen"], state["learnt_mac"]),
                         (True, "02:00:00:00:00:99"))
        # another address, or a port not probed: not the VM speaking for itself
        garp = Ethernet(b"\xff" * 6, VM_MAC, ETH_P_ARP).pack() + ARP(
            1, VM_MAC, bytes((10, 1, 1, 9)), bytes(6), bytes((10, 1, 1, 9))).pack()
        self.assertFalse(self.prober.received(3, garp))
        self.assertFalse(self.prober.received(4, reply))
        self.assertFalse(self.prober.received(3, b"short"))
        self.clock.pump([PROBE_INTERVAL] * (PROBE_FAST_SENDS - 1))
        start = self.clock.seconds()
        self.clock.advance(PROBE_MOVED_INTERVAL)
        self.assertEqual(self.times()[-1], start + PROBE_MOVED_INTERVAL)

    def test_port_down_stops_and_same_port_up_continues(self) -> None:
        self.prober.port_up(3, 1, VM_MAC, "10.1.1.3")
        self.clock.advance(PROBE_INTERVAL)
        self.prober.port_up(3, 1, VM_MAC, "10.1.1.3")  # re-announced unchanged
        self.assertEqual(len(self.sent), 2)
        self.prober.port_up(3, 1, VM_MAC, "10.1.1.4")  # changed: starts again
        self.assertEqual(len(self.sent), 3)
        self.prober.port_down(3)
        self.clock.advance(60)
        self.assertEqual(len(self.sent), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.prober.port_up(5, 1, VM_MAC, None)  # no address: nothing to probe
        self.assertEqual(self.prober.ports, {})

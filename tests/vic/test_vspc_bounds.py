"""The vSPC listener's cap: idle sockets cannot lock ESX hosts out, set-up ports stay."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.vic.test_vspc_unit import Harness
from vrtwist.bounds import ConnectionGuard, ConnectionLimits
from vrtwist.vic.testing import PCAP_UUID
from vrtwist.vic.vspc import VSPC_LIMITS


class VspcCapTests(SynchronousTestCase):
    def test_flood_evicts_connections_never_set_up(self) -> None:
        h = Harness()
        guard = ConnectionGuard(h.clock, ConnectionLimits(max_connections=8, first_frame=None))
        h.factory.guard = guard
        conn, tr = h.proxied()  # a real ESX connection, set up
        self.assertIsNotNone(conn.port)
        flood = [h.connect()[1] for _ in range(100)]
        self.assertFalse(tr.disconnecting)
        self.assertEqual(sum(not t.disconnecting for t in flood), 7)
        self.assertEqual(guard.evicted, 93)
        # a new ESX host still gets in and is set up
        other, otr = h.proxied(uuid=PCAP_UUID.replace(b"01", b"02", 1), host="10.0.0.3")
        self.assertIsNotNone(other.port)
        self.assertFalse(otr.disconnecting or tr.disconnecting)
        conn.connectionLost(None)
        self.assertEqual(len(guard), 7)

    def test_limits(self) -> None:
        self.assertIsNone(VSPC_LIMITS.idle)  # serial lines may be silent for days
        self.assertGreaterEqual(VSPC_LIMITS.max_connections, 1024)

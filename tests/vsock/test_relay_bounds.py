"""The vsock relay's cap: callers that were never relayed go first, relayed ones stay."""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.vsock import test_relay
from vrtwist.bounds import ConnectionGuard, ConnectionLimits
from vrtwist.vsock.relay import RELAY_LIMITS


class RelayCapTests(SynchronousTestCase):
    def test_flood_of_unrelayed_callers_cannot_push_out_a_relayed_one(self) -> None:
        helper = test_relay.VSockCallerTests()
        relay, clock = helper._relay()
        self.assertIsNotNone(relay.guard)  # on by default, with the daemon's limits
        relay.guard = ConnectionGuard(clock, ConnectionLimits(max_connections=4, first_frame=None))
        inbound, itr = helper._accept(relay, 7)
        out = clock.tcpClients[0][2].buildProtocol(None)
        otr = StringTransport()
        out.makeConnection(otr)  # relayed to its backend
        flood = [helper._accept(relay, 9)[1] for _ in range(50)]
        self.assertFalse(itr.disconnecting)
        self.assertEqual(sum(not t.disconnecting for t in flood), 3)
        self.assertEqual(relay.guard.evicted, 47)
        inbound.dataReceived(b"still relayed")
        self.assertEqual(otr.value(), b"still relayed")
        self.assertIsNone(RELAY_LIMITS.idle)

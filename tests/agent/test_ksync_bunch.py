"""The synchroniser's ksync session: one Deferred per bunch of requests, not per request."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.agent.helpers import port_body
from vrtwist.agent.dpstate import DatapathModel, IdAllocator
from vrtwist.agent.interfaces import IKsyncBunchChannel
from vrtwist.agent.ksync_sync import BUNCH, DatapathSync, ProtocolChannel, _SyncProtocol
from vrtwist.agent.model import port_from_json
from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import Datapath
from vrtwist.ksync.client import KsyncClientProtocol, KsyncConnectionLost
from vrtwist.ksync.clientcore import KsyncError, KsyncProtocolError, KsyncResponse
from vrtwist.ksync.server import KsyncServerProtocol
from vrtwist.ksync.testing import MemoryDispatcher
from vrtwist.sandesh import ADD, GET, schema


class Loop:
    """A client and the ksync server of a dispatcher, back to back on StringTransports;
    replies arrive only when ``pump()`` is called, as over a socket."""

    def __init__(self, client: KsyncClientProtocol, dispatcher: Any = None) -> None:
        self.server = KsyncServerProtocol(dispatcher or MemoryDispatcher())
        self.client = client
        self.st, self.ct = StringTransport(), StringTransport()
        self.server.makeConnection(self.st)
        self.client.makeConnection(self.ct)

    def pump(self) -> int:
        rounds = 0
        while self.ct.value() or self.st.value():
            c, s = self.ct.value(), self.st.value()
            self.ct.clear()
            self.st.clear()
            if c:
                self.server.dataReceived(c)
            if s:
                self.client.dataReceived(s)
            rounds += 1
        return rounds


def mpls(op: int, label: int, nh: int = 1) -> Any:
    return schema.vr_mpls_req(h_op=op, mr_label=label, mr_nhid=nh)


class RequestBunchTests(SynchronousTestCase):
    def test_one_deferred_with_every_result_in_order(self) -> None:
        lp = Loop(_SyncProtocol())
        d = lp.client.request_bunch([mpls(ADD, 4), mpls(GET, 4), mpls(GET, 5)])
        single = lp.client.request(mpls(GET, 4))  # per-request requests still work beside
        self.assertNoResult(d)
        lp.pump()
        added, got, missing = self.successResultOf(d)
        self.assertIsInstance(added, KsyncResponse)
        self.assertEqual(got.objects[0].mr_nhid, 1)
        self.assertIsInstance(missing, KsyncError)
        self.assertEqual(self.successResultOf(single).objects[0].mr_label, 4)

    def test_lost_session_fails_the_bunch(self) -> None:
        lp = Loop(_SyncProtocol())
        d = lp.client.request_bunch([mpls(ADD, 4)])
        lp.client.connectionLost(Failure(ConnectionError("gone")))
        self.failureResultOf(d, KsyncConnectionLost)
        self.failureResultOf(lp.client.request_bunch([mpls(ADD, 5)]), KsyncConnectionLost)
        self.assertTrue(lp.client.lost_d.called)

    def test_broken_reply_stream_fails_the_bunch(self) -> None:
        lp = Loop(_SyncProtocol())
        d = lp.client.request_bunch([mpls(ADD, 4)])
        lp.client.dataReceived(b"\x00" * 16)  # not a netlink frame
        self.failureResultOf(d, KsyncProtocolError)
        self.assertTrue(lp.ct.disconnecting)
        self.flushLoggedErrors()

    def test_undecodable_answer_fails_only_its_bunch(self) -> None:
        from vrtwist.ksync.netlink import build_response, parse_message

        lp = Loop(_SyncProtocol())
        d = lp.client.request_bunch([mpls(ADD, 4), mpls(ADD, 5)])
        req = parse_message(lp.ct.value())
        lp.client.dataReceived(build_response(b"\x00\x00\x00\x03abc", req, 0))
        results = self.successResultOf(d)
        self.assertEqual([type(r) for r in results], [KsyncProtocolError] * 2)
        self.assertFalse(lp.ct.disconnecting)

    def test_channel_over_a_plain_client_gives_the_same_results(self) -> None:
        for client in (_SyncProtocol(), KsyncClientProtocol()):
            lp = Loop(client)
            channel = ProtocolChannel(client)
            verifyObject(IKsyncBunchChannel, channel)
            d = channel.request_bunch([mpls(ADD, 4), mpls(GET, 9)])
            lp.pump()
            ok, refused = self.successResultOf(d)
            self.assertEqual(ok.code, 0)
            self.assertIsInstance(refused, KsyncError)

    def test_plain_client_lost_session_fails_the_bunch(self) -> None:
        lp = Loop(KsyncClientProtocol())
        d = ProtocolChannel(lp.client).request_bunch([mpls(ADD, 4), mpls(ADD, 5)])
        lp.client.connectionLost(Failure(ConnectionError("gone")))
        self.failureResultOf(d, KsyncConnectionLost)


class _Counting(ProtocolChannel):
    """Counts the bunches sent."""

    def __init__(self, proto: Any) -> None:
        super().__init__(proto)
        self.bunches = 0

    def request_bunch(self, msgs: list[Any]) -> Deferred[list[Any]]:
        self.bunches += 1
        return super().request_bunch(msgs)


class SyncOverBunchesTests(SynchronousTestCase):
    """DatapathSync over a real datapath behind a ksync server, bunch by bunch."""

    def setUp(self) -> None:
        self.dp = Datapath()
        self.model = DatapathModel(fabric_ip="192.0.2.1", os_index=lambda name: 0)
        self.proto = _SyncProtocol()
        self.loop = Loop(self.proto, self.dp)
        self.channel = _Counting(self.proto)

    def test_routes_programmed_with_a_window(self) -> None:
        sync = DatapathSync(self.model, window=2 * BUNCH)
        sync.attach(self.channel)
        port = port_from_json(port_body(1))
        self.model.portAdded(port)
        self.loop.pump()
        (vrf,) = self.model.vrfNames()
        with self.model.batched():
            for i in range(200):
                self.model.addRemoteRoute(vrf, f"10.9.{i >> 8}.{i & 255}", 32, "192.0.2.7",
                                          100 + i)
        # only the window's worth is sent before any answer came back
        self.assertLessEqual(sync.flight.in_flight, 2 * BUNCH + BUNCH)
        sent_before = self.channel.bunches
        idle: list[object] = []
        sync.whenIdle().addCallback(idle.append)
        self.loop.pump()
        self.assertEqual(idle, [None])
        self.assertGreater(self.channel.bunches, sent_before)
        self.assertEqual(sync.flight.in_flight, 0)
        self.assertEqual(sync.errors, {})
        self.assertEqual(set(sync.applied), set(self.model.desired))
        vrf_id = self.model.vrf_id_of(port.vn_id)
        assert vrf_id is not None
        self.assertGreaterEqual(self.dp.routes.route_count(C.AF_INET, vrf_id), 200)

    def test_refused_request_is_recorded_and_rolled_back(self) -> None:
        self.model.vifs = IdAllocator("interface index", 10_000, 10_001)  # refused
        sync = DatapathSync(self.model)
        sync.attach(self.channel)
        self.model.portAdded(port_from_json(port_body(1)))
        self.loop.pump()
        refused = [k for k in sync.errors if k[0] == "vif"]
        self.assertEqual(len(refused), 1)
        self.assertNotIn(refused[0], sync.applied)
        self.assertIn("vRouter answered", sync.errors[refused[0]])

    def test_lost_session_puts_the_keys_back_to_dirty(self) -> None:
        sync = DatapathSync(self.model)
        sync.attach(self.channel)
        self.model.portAdded(port_from_json(port_body(1)))
        self.assertGreater(sync.flight.in_flight, 0)
        self.proto.connectionLost(Failure(ConnectionError("gone")))
        sync.attach(None)
        self.assertEqual(sync.flight.in_flight, 0)
        self.assertTrue(sync.dirty)

    def test_session_lost_while_waiting_for_window_room(self) -> None:
        """Bunches fail as the session goes; the sender, waiting for room, resumes, sends
        nothing more that can succeed, and stops (the datapath is read again at the next
        session)."""
        sync = DatapathSync(self.model, window=2 * BUNCH)
        sync.attach(self.channel)
        self.model.portAdded(port_from_json(port_body(1)))
        self.loop.pump()
        (vrf,) = self.model.vrfNames()
        with self.model.batched():
            for i in range(200):
                self.model.addRemoteRoute(vrf, f"10.9.{i >> 8}.{i & 255}", 32, "192.0.2.7",
                                          100 + i)
        self.assertTrue(sync._running)  # waiting for room in the window
        self.proto.connectionLost(Failure(ConnectionError("gone")))
        self.assertFalse(sync._running)
        self.assertEqual(sync.flight.in_flight, 0)

"""ksync client protocol: seq correlation, pipelining, errors, dump iteration."""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.ksync.client import KsyncClientProtocol, KsyncConnectionLost
from vrtwist.ksync.clientcore import (
    ClientCore,
    KsyncError,
    KsyncProtocolError,
    KsyncResponse,
    next_dump_request,
)
from vrtwist.ksync.netlink import (
    NLM_F_MULTI,
    FrameReader,
    build_done,
    build_response,
    parse_message,
)
from vrtwist.ksync.server import STYLE_DPDK, STYLE_LINUX, KsyncServerProtocol
from vrtwist.ksync.testing import MemoryDispatcher
from vrtwist.sandesh import (
    ADD,
    DUMP,
    GET,
    RESPONSE,
    encode,
    encode_many,
    schema,
)
from vrtwist.sandesh.constants import AF_BRIDGE, AF_INET


def response(code: int) -> Any:
    return schema.vr_response(h_op=RESPONSE, resp_code=code)


class Loop:
    """A client and a server protocol wired back to back through StringTransports."""

    def __init__(self, style: str = STYLE_LINUX, dispatcher: Any = None) -> None:
        self.dispatcher = dispatcher or MemoryDispatcher()
        self.server = KsyncServerProtocol(self.dispatcher, style)
        self.client = KsyncClientProtocol()
        self.st, self.ct = StringTransport(), StringTransport()
        self.server.makeConnection(self.st)
        self.client.makeConnection(self.ct)

    def pump(self) -> None:
        while self.ct.value() or self.st.value():
            c, s = self.ct.value(), self.st.value()
            self.ct.clear()
            self.st.clear()
            if c:
                self.server.dataReceived(c)
            if s:
                self.client.dataReceived(s)


class ClientTests(SynchronousTestCase):
    def test_request_response(self) -> None:
        for style in (STYLE_LINUX, STYLE_DPDK):
            lp = Loop(style)
            d = lp.client.request(schema.vr_mpls_req(h_op=ADD, mr_label=4, mr_nhid=1))
            lp.pump()
            r = self.successResultOf(d)
            self.assertEqual((r.code, r.objects), (0, []))
            d = lp.client.request(schema.vr_mpls_req(h_op=GET, mr_label=4))
            lp.pump()
            (obj,) = self.successResultOf(d).objects
            self.assertEqual(obj.mr_nhid, 1)

    def test_negative_errno(self) -> None:
        lp = Loop()
        d = lp.client.request(schema.vr_mpls_req(h_op=GET, mr_label=4))
        lp.pump()
        err = self.failureResultOf(d, KsyncError).value
        self.assertEqual((err.errno, err.strerror), (errno.ENOENT, "No such file or directory"))
        self.assertEqual(str(err), "vRouter(Response): No such file or directory (2)")

    def test_pipelined_out_of_order(self) -> None:
        """Replies are matched by seq, whatever order they arrive in."""
        c = KsyncClientProtocol()
        t = StringTransport()
        c.makeConnection(t)
        d1 = c.request(schema.vr_mpls_req(h_op=GET, mr_label=1))
        d2 = c.request(schema.vr_mpls_req(h_op=GET, mr_label=2))
        self.assertEqual(c.outstanding, 2)
        r1, r2 = (parse_message(f) for f in FrameReader().feed(t.value()))
        c.dataReceived(
            build_response(encode_many([response(0), schema.vr_mpls_req(mr_label=2)]), r2, 0)
        )
        self.assertNoResult(d1)
        self.assertEqual(self.successResultOf(d2).objects[0].mr_label, 2)
        c.dataReceived(build_response(encode(response(-errno.EINVAL)), r1, 0, pad=True))
        self.assertEqual(self.failureResultOf(d1, KsyncError).value.errno, errno.EINVAL)
        self.assertEqual(c.outstanding, 0)

    def test_bunched_results(self) -> None:
        lp = Loop()
        ds = lp.client.request_many(
            [
                schema.vr_mpls_req(h_op=ADD, mr_label=1),
                schema.vr_mpls_req(h_op=GET, mr_label=9),
                schema.vr_mpls_req(h_op=GET, mr_label=1),
            ]
        )
        lp.pump()
        self.assertEqual(self.successResultOf(ds[0]).code, 0)
        self.failureResultOf(ds[1], KsyncError)
        self.assertEqual(self.successResultOf(ds[2]).objects[0].mr_label, 1)

    def test_dump_follows_marker(self) -> None:
        for style in (STYLE_LINUX, STYLE_DPDK):
            lp = Loop(style)
            for i in range(300):
                lp.client.request(
                    schema.vr_nexthop_req(h_op=ADD, nhr_id=i, nhr_encap=list(range(14)))
                )
            lp.pump()
            d = lp.client.dump(schema.vr_nexthop_req(nhr_marker=-1))
            lp.pump()
            got = self.successResultOf(d)
            self.assertEqual([n.nhr_id for n in got], list(range(300)))
            dumps = [r for r in lp.dispatcher.requests if r.h_op == DUMP]
            self.assertGreater(len(dumps), 2)
            markers = [r.nhr_marker for r in dumps]
            self.assertEqual(markers[0], -1)
            self.assertEqual(markers, sorted(set(markers)))

    def test_dump_error(self) -> None:
        lp = Loop()
        d = lp.client.dump(schema.vr_flow_table_data())
        lp.pump()
        self.failureResultOf(d, KsyncError)

    def test_connection_lost_fails_pending(self) -> None:
        c = KsyncClientProtocol()
        c.makeConnection(StringTransport())
        d = c.request(schema.vr_mpls_req(h_op=GET))
        c.connectionLost(Failure(ConnectionError("gone")))
        self.failureResultOf(d, KsyncConnectionLost)
        self.failureResultOf(c.request(schema.vr_mpls_req(h_op=GET)), KsyncConnectionLost)

    def test_garbage_from_server(self) -> None:
        c = KsyncClientProtocol()
        t = StringTransport()
        c.makeConnection(t)
        d = c.request(schema.vr_mpls_req(h_op=GET))
        c.dataReceived(b"\x00" * 16)
        self.failureResultOf(d, KsyncProtocolError)
        self.assertTrue(t.disconnecting)
        self.flushLoggedErrors()

    def test_undecodable_reply(self) -> None:
        c = KsyncClientProtocol()
        t = StringTransport()
        c.makeConnection(t)
        d = c.request(schema.vr_mpls_req(h_op=GET))
        req = parse_message(t.value())
        c.dataReceived(build_response(b"\x00\x00\x00\x03abc", req, 0))
        self.failureResultOf(d, KsyncProtocolError)


class CoreTests(SynchronousTestCase):
    def test_done_and_unknown_seq(self) -> None:
        core = ClientCore()
        seq, data = core.build([schema.vr_mpls_req(h_op=DUMP)])
        req = parse_message(data)
        other = parse_message(core.build([schema.vr_mpls_req()])[1])
        stream = (
            build_response(encode(response(1)), req, NLM_F_MULTI)
            + build_response(encode(response(0)), other, NLM_F_MULTI)  # interleaved other seq
            + build_response(encode(schema.vr_mpls_req(mr_label=3)), req, NLM_F_MULTI)
            + build_done(req)
        )
        ((got_seq, (r,)),) = core.feed(stream)
        self.assertEqual(got_seq, seq)
        assert isinstance(r, KsyncResponse)
        self.assertEqual((r.count, r.more, r.objects[0].mr_label), (1, False, 3))
        self.assertEqual(list(core.pending), [other.seq])

    def test_missing_vr_response(self) -> None:
        core = ClientCore()
        _, data = core.build([schema.vr_mpls_req(), schema.vr_mpls_req()])
        req = parse_message(data)
        ((_, results),) = core.feed(build_response(encode(response(0)), req, 0))
        self.assertIsInstance(results[0], KsyncResponse)
        self.assertIsInstance(results[1], KsyncProtocolError)

    def test_object_before_response(self) -> None:
        core = ClientCore()
        _, data = core.build([schema.vr_mpls_req()])
        ((_, (r,)),) = core.feed(
            build_response(encode(schema.vr_mpls_req()), parse_message(data), 0)
        )
        self.assertIsInstance(r, KsyncProtocolError)

    def test_netlink_error_ack(self) -> None:
        core = ClientCore()
        seq, data = core.build([schema.vr_mpls_req()])
        ack = (
            (36).to_bytes(4, "little")
            + (2).to_bytes(2, "little")
            + b"\0\0"
            + seq.to_bytes(4, "little")
            + b"\0" * 4
        )
        ack += (-errno.EPERM).to_bytes(4, "little", signed=True) + data[:16]
        ((_, (r,)),) = core.feed(ack)
        assert isinstance(r, KsyncError)
        self.assertEqual(r.errno, errno.EPERM)

    def test_seq_skips_zero_and_pending(self) -> None:
        core = ClientCore()
        core._seq = 0xFFFFFFFF
        seq, _ = core.build([schema.vr_mpls_req()])
        self.assertEqual(seq, 1)

    def test_build_empty(self) -> None:
        self.assertRaises(ValueError, ClientCore().build, [])

    def test_next_dump_request(self) -> None:
        r = next_dump_request(
            schema.vr_route_req(h_op=DUMP, rtr_family=AF_INET, rtr_vrf_id=2),
            schema.vr_route_req(rtr_prefix=[10, 1, 0, 0], rtr_prefix_len=16),
        )
        self.assertEqual((r.rtr_marker, r.rtr_marker_plen, r.rtr_vrf_id), ([10, 1, 0, 0], 16, 2))
        r = next_dump_request(
            schema.vr_route_req(h_op=DUMP, rtr_family=AF_BRIDGE),
            schema.vr_route_req(rtr_mac=[1, 2, 3, 4, 5, 6], rtr_index=7),
        )
        self.assertEqual((r.rtr_mac, r.rtr_index), ([1, 2, 3, 4, 5, 6], 7))
        r = next_dump_request(schema.vr_vxlan_req(h_op=DUMP), schema.vr_vxlan_req(vxlanr_vnid=40))
        self.assertEqual(r.vxlanr_vnid, 40)
        r = next_dump_request(schema.vr_fc_map_req(h_op=DUMP), schema.vr_fc_map_req(fmr_id=[1, 5]))
        self.assertEqual(r.fmr_marker, 5)
        self.assertRaises(ValueError, next_dump_request, schema.vr_response(), schema.vr_response())

"""ksync server sessions over StringTransport: layout of replies, framing, bad clients."""

from __future__ import annotations

import errno
import struct
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from vrtwist.ksync.interfaces import IKsyncDispatcher, IKsyncSession, KsyncReply
from vrtwist.ksync.netlink import (
    NLM_F_MULTI,
    NLMSG_DONE,
    FrameReader,
    build_request,
    parse_message,
)
from vrtwist.ksync.server import (
    STYLE_DPDK,
    STYLE_LINUX,
    KsyncServerFactory,
    KsyncServerProtocol,
)
from vrtwist.ksync.testing import MemoryDispatcher
from vrtwist.sandesh import (
    ADD,
    DEL,
    DUMP,
    FLOW_SET,
    GET,
    RESPONSE,
    VR_MESSAGE_DUMP_INCOMPLETE,
    VR_MESSAGE_PAGE_SIZE,
    decode,
    encode,
    encode_many,
    schema,
)


def vif(idx: int, name: str = "") -> Any:
    return schema.vr_interface_req(
        h_op=ADD,
        vifr_idx=idx,
        vifr_name=name or "tap%d" % idx,
        vifr_mac=[0, 1, 2, 3, 4, idx & 0xFF],
    )


def connect(dispatcher: Any = None, **kw: Any) -> tuple[KsyncServerProtocol, StringTransport]:
    factory = KsyncServerFactory(dispatcher or MemoryDispatcher(), **kw)
    proto = factory.buildProtocol(None)  # type: ignore[arg-type]
    assert proto is not None
    t = StringTransport()
    proto.makeConnection(t)
    return proto, t


def replies(t: StringTransport) -> list[Any]:
    data = t.value()
    t.clear()
    return [parse_message(f) for f in FrameReader().feed(data)]


def send(proto: KsyncServerProtocol, msgs: list[Any], seq: int = 1, nl_type: int = 0x20) -> None:
    proto.dataReceived(build_request(encode_many(msgs), seq=seq, nl_type=nl_type))


class ReplyLayoutTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        proto, t = connect()
        verifyObject(IKsyncSession, proto)
        verifyObject(IPushProducer, proto)
        verifyObject(IKsyncDispatcher, MemoryDispatcher())
        self.assertIs(t.producer, proto)
        self.assertTrue(t.streaming)

    def test_add_single_reply(self) -> None:
        """ADD -> exactly one message, flags 0, no DONE, vr_response 0, seq and type echoed."""
        proto, t = connect()
        send(proto, [vif(1)], seq=77, nl_type=0)
        (m,) = replies(t)
        self.assertEqual((m.flags, m.seq, m.nl_type, m.genl_cmd), (0, 77, 0, 1))
        self.assertEqual(m.nla_len, len(m.payload))
        self.assertEqual(m.length, 24 + len(m.payload))
        self.assertEqual(decode(m.payload), [schema.vr_response(h_op=RESPONSE, resp_code=0)])

    def test_get_object_in_same_message(self) -> None:
        proto, t = connect()
        send(proto, [vif(3)])
        replies(t)
        send(proto, [schema.vr_interface_req(h_op=GET, vifr_idx=3)], seq=2)
        (m,) = replies(t)
        resp, obj = decode(m.payload)
        self.assertEqual((resp.resp_code, obj.vifr_idx, obj.vifr_name), (0, 3, "tap3"))

    def test_get_missing(self) -> None:
        proto, t = connect()
        send(proto, [schema.vr_interface_req(h_op=GET, vifr_idx=9)])
        (m,) = replies(t)
        self.assertEqual(decode(m.payload)[0].resp_code, -errno.ENOENT)

    def test_flow_response(self) -> None:
        proto, t = connect()
        send(proto, [schema.vr_flow_req(fr_op=FLOW_SET, fr_index=-1, fr_gen_id=3)])
        (m,) = replies(t)
        resp, fresp = decode(m.payload)
        self.assertEqual(resp.resp_code, 0)
        self.assertEqual(
            (type(fresp).__name__, fresp.fresp_index, fresp.fresp_gen_id),
            ("vr_flow_response", 0, 3),
        )

    def test_bunched_in_order_linux_style(self) -> None:
        """16 requests in one netlink message: 16 replies, each one vr_response first, MULTI+DONE."""
        proto, t = connect()
        reqs = [vif(i) for i in range(8)] + [
            schema.vr_interface_req(h_op=GET, vifr_idx=i) for i in range(8)
        ]
        send(proto, reqs, seq=9)
        ms = replies(t)
        self.assertEqual(len(ms), 17)
        for m in ms[:-1]:
            self.assertEqual((m.flags, m.seq), (NLM_F_MULTI, 9))
        self.assertEqual(
            (ms[-1].nl_type, ms[-1].flags, ms[-1].length, ms[-1].seq), (NLMSG_DONE, 0, 16, 9)
        )
        for i, m in enumerate(ms[8:16]):
            resp, obj = decode(m.payload)
            self.assertEqual((resp.resp_code, obj.vifr_idx), (0, i))
        self.assertEqual(proto.requests, 16)

    def test_bunched_dpdk_style(self) -> None:
        proto, t = connect(style=STYLE_DPDK)
        send(proto, [vif(1), vif(2), vif(3)])
        ms = replies(t)
        self.assertEqual([m.flags for m in ms], [NLM_F_MULTI, NLM_F_MULTI, 0])

    def test_dump_pages(self) -> None:
        """DUMP: vr_response(count|more) as one message, the page (<= 3968 bytes) as the next."""
        d = MemoryDispatcher()
        proto, t = connect(d)
        send(proto, [vif(i, "x" * 40) for i in range(40)])
        replies(t)
        seen: list[int] = []
        marker = -1
        seq = 10
        while True:
            send(proto, [schema.vr_interface_req(h_op=DUMP, vifr_marker=marker)], seq=seq)
            ms = replies(t)
            self.assertEqual(len(ms), 3)
            self.assertTrue(ms[2].is_done)
            (resp,) = decode(ms[0].payload)
            page = decode(ms[1].payload)
            self.assertLessEqual(len(ms[1].payload), VR_MESSAGE_PAGE_SIZE)
            self.assertLessEqual(ms[1].length, 4096)
            self.assertEqual(resp.resp_code & ~VR_MESSAGE_DUMP_INCOMPLETE, len(page))
            seen += [o.vifr_idx for o in page]
            if not resp.resp_code & VR_MESSAGE_DUMP_INCOMPLETE:
                break
            marker = page[-1].vifr_idx
            seq += 1
        self.assertEqual(seen, list(range(40)))
        self.assertGreater(seq, 11)

    def test_empty_dump(self) -> None:
        proto, t = connect()
        send(proto, [schema.vr_mpls_req(h_op=DUMP, mr_marker=-1)])
        (m,) = replies(t)
        self.assertEqual(decode(m.payload)[0].resp_code, 0)

    def test_undecodable_request(self) -> None:
        """Messages before the bad one are processed; the bad one gets vr_response -1."""
        d = MemoryDispatcher()
        proto, t = connect(d)
        payload = encode(vif(1)) + b"\x00\x00\x00\x05junk!"
        proto.dataReceived(build_request(payload, seq=3))
        ms = replies(t)
        self.assertEqual([decode(m.payload)[0].resp_code for m in ms[:-1]], [0, -1])
        self.assertIn(1, d.tables["vr_interface_req"])
        send(proto, [schema.vr_interface_req(h_op=DEL, vifr_idx=1)], seq=4)
        self.assertEqual(decode(replies(t)[0].payload)[0].resp_code, 0)

    def test_request_padding_and_trailing_garbage(self) -> None:
        """Up to 3 zero pad bytes are accepted; non-zero trailing bytes answer -1 after the rest."""
        d = MemoryDispatcher()
        proto, t = connect(d)
        proto.dataReceived(build_request(encode(vif(1)) + b"\x00\x00\x00", seq=3))
        (m,) = replies(t)
        self.assertEqual(decode(m.payload)[0].resp_code, 0)
        proto.dataReceived(build_request(encode(vif(2)) + b"\x00\x01", seq=4))
        ms = replies(t)
        self.assertEqual([decode(m.payload)[0].resp_code for m in ms[:-1]], [0, -1])
        self.assertIn(2, d.tables["vr_interface_req"])

    def test_mixed_reply_sizes_framed_exactly(self) -> None:
        """Bunched replies of different sizes: each header carries its own lengths."""
        for style in (STYLE_LINUX, STYLE_DPDK):
            proto, t = connect(style=style)
            send(proto, [vif(1), schema.vr_interface_req(h_op=GET, vifr_idx=1), vif(2)], seq=7)
            raw = t.value()
            ms = replies(t)
            self.assertEqual(len(ms), 4 if style == STYLE_LINUX else 3)
            self.assertEqual(sum(m.length for m in ms), len(raw))
            for m in ms:
                if m.payload:
                    self.assertEqual((m.length, m.nla_len), (24 + len(m.payload), len(m.payload)))
                    self.assertEqual(m.seq, 7)
            self.assertEqual(len(decode(ms[1].payload)), 2)

    def test_empty_request(self) -> None:
        proto, t = connect()
        proto.dataReceived(build_request(b"", seq=3))
        (m,) = replies(t)
        self.assertEqual(decode(m.payload)[0].resp_code, -1)

    def test_dispatcher_exception_and_bad_reply(self) -> None:
        @implementer(IKsyncDispatcher)
        class Broken:
            def __init__(self) -> None:
                self.n = 0

            def dispatch(self, request: Any) -> KsyncReply:
                self.n += 1
                if self.n == 1:
                    raise RuntimeError("boom")
                if self.n == 2:
                    return "nonsense"  # type: ignore[return-value]
                if self.n == 3:
                    return KsyncReply(0, [object()])
                if self.n == 4:
                    return KsyncReply(0, [vif(i, "y" * 200) for i in range(20)])
                if self.n == 5:
                    return KsyncReply(0, [vif(i, "y" * 4000) for i in range(2)], dump=True)

                def failing() -> Any:
                    yield vif(1)
                    raise RuntimeError("table changed under the iterator")

                return KsyncReply(0, failing(), dump=True)

        proto, t = connect(Broken())
        send(proto, [vif(1)] * 5)
        codes = [decode(m.payload)[0].resp_code for m in replies(t)[:-1]]
        self.assertEqual(
            codes, [-errno.EINVAL, -errno.EINVAL, -errno.EINVAL, -errno.ENOSPC, -errno.ENOSPC]
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError, TypeError, Exception)), 3)

    def test_split_delivery(self) -> None:
        proto, t = connect()
        data = build_request(encode_many([vif(1), vif(2)]), seq=1) + build_request(
            encode(vif(3)), seq=2
        )
        for i in range(len(data)):
            proto.dataReceived(data[i : i + 1])
        ms = replies(t)
        self.assertEqual([m.seq for m in ms], [1, 1, 1, 2])


class BadClientTests(SynchronousTestCase):
    def test_oversize_frame_drops_only_that_session(self) -> None:
        d = MemoryDispatcher()
        factory = KsyncServerFactory(d)
        good = factory.buildProtocol(None)  # type: ignore[arg-type]
        bad = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert good is not None and bad is not None
        tg, tb = StringTransport(), StringTransport()
        good.makeConnection(tg)
        bad.makeConnection(tb)
        bad.dataReceived(struct.pack("<IHHII", 1 << 30, 0, 1, 1, 0))
        self.assertTrue(tb.disconnecting)
        self.assertEqual(tb.value(), b"")
        bad.dataReceived(build_request(encode(vif(5)), seq=1))  # ignored after the drop
        self.assertNotIn(5, d.tables["vr_interface_req"])
        good.dataReceived(build_request(encode(vif(1)), seq=1))
        self.assertEqual(decode(parse_message(tg.value()).payload)[0].resp_code, 0)
        self.assertFalse(tg.disconnecting)

    def test_short_frame(self) -> None:
        proto, t = connect()
        proto.dataReceived(struct.pack("<IHHII", 20, 0, 1, 1, 0) + b"\0" * 4)
        self.assertTrue(t.disconnecting)

    def test_disconnect_mid_message(self) -> None:
        factory = KsyncServerFactory(MemoryDispatcher())
        proto = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert proto is not None
        t = StringTransport()
        proto.makeConnection(t)
        self.assertEqual(len(factory.sessions), 1)
        proto.dataReceived(build_request(encode(vif(1)), seq=1)[:30])
        proto.connectionLost()
        self.assertEqual(len(factory.sessions), 0)
        self.assertEqual(t.value(), b"")

    def test_max_sessions(self) -> None:
        factory = KsyncServerFactory(MemoryDispatcher(), max_sessions=2)
        a = factory.buildProtocol(None)  # type: ignore[arg-type]
        b = factory.buildProtocol(None)  # type: ignore[arg-type]
        self.assertIsNotNone(a)
        self.assertIsNotNone(b)
        self.assertIsNone(factory.buildProtocol(None))  # type: ignore[arg-type]

    def test_bad_style(self) -> None:
        self.assertRaises(ValueError, KsyncServerFactory, MemoryDispatcher(), style="bsd")


class BackpressureTests(SynchronousTestCase):
    def test_paused_session_stops_processing(self) -> None:
        """While the transport's buffer is full, queued requests wait; nothing is lost."""
        proto, t = connect()
        proto.pauseProducing()
        self.assertEqual(t.producerState, "paused")
        data = b"".join(build_request(encode(vif(i)), seq=i + 1) for i in range(5))
        proto.dataReceived(data)
        self.assertEqual(t.value(), b"")
        proto.resumeProducing()
        self.assertEqual(t.producerState, "producing")
        self.assertEqual([m.seq for m in replies(t)], [1, 2, 3, 4, 5])


def one_turn(clock: Any) -> None:
    """Run the calls due now, but not the ones they schedule (as a real reactor turn does)."""
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for c in due:
        clock.calls.remove(c)
    for c in due:
        c.func(*c.args, **c.kw)


class FairnessTests(SynchronousTestCase):
    def test_batches_per_reactor_turn(self) -> None:
        """With a clock, a burst of requests is served 64 per turn; reading pauses between."""
        from twisted.internet.task import Clock

        clock = Clock()
        factory = KsyncServerFactory(MemoryDispatcher(), clock=clock)
        proto = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert proto is not None
        t = StringTransport()
        proto.makeConnection(t)
        proto.dataReceived(b"".join(build_request(encode(vif(i)), seq=i + 1) for i in range(150)))
        self.assertEqual(len(replies(t)), 64)
        self.assertEqual(t.producerState, "paused")
        one_turn(clock)
        self.assertEqual(len(replies(t)), 64)
        one_turn(clock)
        self.assertEqual([m.seq for m in replies(t)], list(range(129, 151)))
        self.assertEqual(t.producerState, "producing")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_turn_cancelled_on_disconnect(self) -> None:
        from twisted.internet.task import Clock

        clock = Clock()
        proto = KsyncServerProtocol(MemoryDispatcher(), clock=clock, batch=2)
        t = StringTransport()
        proto.makeConnection(t)
        proto.dataReceived(b"".join(build_request(encode(vif(i)), seq=i + 1) for i in range(5)))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        proto.connectionLost()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_backpressure_during_turn(self) -> None:
        from twisted.internet.task import Clock

        clock = Clock()
        proto = KsyncServerProtocol(MemoryDispatcher(), clock=clock, batch=2)
        t = StringTransport()
        proto.makeConnection(t)
        proto.dataReceived(b"".join(build_request(encode(vif(i)), seq=i + 1) for i in range(6)))
        self.assertEqual(len(replies(t)), 2)
        proto.pauseProducing()  # the client stopped reading
        one_turn(clock)
        self.assertEqual(replies(t), [])
        self.assertEqual(t.producerState, "paused")
        proto.resumeProducing()
        self.assertEqual([m.seq for m in replies(t)], [3, 4])
        one_turn(clock)
        self.assertEqual([m.seq for m in replies(t)], [5, 6])

    def test_data_during_scheduled_turn_waits(self) -> None:
        from twisted.internet.task import Clock

        clock = Clock()
        proto = KsyncServerProtocol(MemoryDispatcher(), clock=clock, batch=2)
        t = StringTransport()
        proto.makeConnection(t)
        proto.dataReceived(b"".join(build_request(encode(vif(i)), seq=i + 1) for i in range(3)))
        self.assertEqual(len(replies(t)), 2)
        proto.dataReceived(build_request(encode(vif(9)), seq=9))  # arrives anyway
        self.assertEqual(replies(t), [])
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        one_turn(clock)
        self.assertEqual([m.seq for m in replies(t)], [3, 9])

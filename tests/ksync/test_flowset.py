"""The FLOW_SET path at its known layouts answers exactly as the general decoder does.

Both ends are compared with the general path byte for byte: the datapath's replies to
bunched FLOW_SETs (two identical datapaths, one served through ``process``'s fast path,
the other through ``decode`` and ``execute``), and the agent's reading of the answers
(``flow_answers`` against the decoded objects read by ``flow_result``).
"""

from __future__ import annotations

import errno
import shutil
import tempfile
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.agent.packet.service import encode_flow_request
from vrtwist.datapath.dispatcher import Datapath
from vrtwist.ksync.client import KsyncClientProtocol
from vrtwist.ksync.clientcore import FLOW_RESET, ClientCore, flow_result
from vrtwist.ksync.flowset import (
    ANSWER_LAYOUT,
    REQUEST_LAYOUT,
    decode_flow_sets,
    flow_answers,
)
from vrtwist.ksync.netlink import parse_message
from vrtwist.ksync.server import (
    STYLE_DPDK,
    STYLE_LINUX,
    KsyncServerProtocol,
    execute,
    frame_replies,
)
from vrtwist.sandesh import RESPONSE, decode, encode, schema
from vrtwist.shmem import layout as L
from vrtwist.shmem.service import install

_U32 = st.integers(0, 0xFFFFFFFF)
_NAMES = ("fr_op", "fr_index", "fr_gen_id", "fr_action", "fr_flags", "fr_ecmp_nh_index",
          "fr_family", "fr_flow_proto", "fr_flow_sport", "fr_flow_dport", "fr_flow_nh_id",
          "fr_flow_sip_l", "fr_flow_dip_l", "fr_flow_vrf", "fr_src_nh_index", "fr_rindex",
          "fr_drop_reason")  # fmt: skip
_FIELDS = st.fixed_dictionaries({
    "fr_op": st.sampled_from([0, 0, 0, 0, 1]),
    "fr_index": st.sampled_from([-1, -1, 0, 1, 2, 3, 7, 100, 5000, 0x7FFFFFFF]),
    "fr_gen_id": st.integers(0, 255),
    "fr_action": st.sampled_from([0, 1, 2, 3, 0xFFFF]),
    "fr_flags": st.sampled_from([L.FLAG_ACTIVE, L.FLAG_ACTIVE | L.RFLOW_VALID, 0, 0xFFFF]),
    "fr_ecmp_nh_index": st.sampled_from([0xFFFFFFFF, 0, 1]),
    "fr_family": st.sampled_from([2, 2, 2, 10, 0]),
    "fr_flow_proto": st.sampled_from([6, 17, 1, 255]),
    "fr_flow_sport": st.integers(0, 3),
    "fr_flow_dport": st.integers(0, 0xFFFF),
    "fr_flow_nh_id": st.integers(0, 3),
    "fr_flow_sip_l": st.sampled_from([0, 1, 0x0100000A, 0xFFFFFFFF]),
    "fr_flow_dip_l": st.sampled_from([0, 2, 0x0200000A]),
    "fr_flow_vrf": st.integers(0, 0xFFFF),
    "fr_src_nh_index": _U32,
    "fr_rindex": st.sampled_from([-1, -1, 0, 1, 2, 3, 4095]),
    "fr_drop_reason": st.integers(0, 0xFFFF),
})  # fmt: skip


class _Datapaths:
    """Two identical datapaths with shared-memory flow tables, in their own directories."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.fast = self._one(case)
        self.general = self._one(case)

    @staticmethod
    def _one(case: SynchronousTestCase) -> Datapath:
        d = tempfile.mkdtemp(prefix="vrtwist-flowset-")
        case.addCleanup(shutil.rmtree, d, True)
        dp = Datapath()
        tables = install(dp, d, 1024, 1024, flow_oentries=1024, bridge_oentries=1024)
        case.addCleanup(tables.close)
        return dp


def _general(dp: Datapath, payload: bytes) -> list[bytes]:
    out: list[bytes] = []
    for req in decode(payload):
        out.extend(execute(dp, req))
    return out


def _answer_payload(code: int, **fresp: int) -> bytes:
    return encode(schema.vr_response(h_op=RESPONSE, resp_code=code)) + encode(
        schema.vr_flow_response(**fresp))


class RequestLayoutTests(SynchronousTestCase):
    def test_layouts_found(self) -> None:
        """The codec's output fits one struct each way (else the fast paths are off)."""
        self.assertIsNotNone(REQUEST_LAYOUT)
        self.assertIsNotNone(ANSWER_LAYOUT)
        assert REQUEST_LAYOUT is not None
        self.assertEqual(len(encode(schema.vr_flow_req())), REQUEST_LAYOUT.size)

    @settings(max_examples=150, deadline=None)
    @given(st.lists(_FIELDS, min_size=1, max_size=20))
    def test_same_objects_as_decode(self, bunch: list[dict[str, int]]) -> None:
        payload = b"".join(encode_flow_request(f) for f in bunch)
        ours = decode_flow_sets(payload)
        assert ours is not None
        self.assertEqual([list(vars(o).items()) for o in ours],
                         [list(vars(o).items()) for o in decode(payload)])
        self.assertTrue(all(type(o) is schema.vr_flow_req for o in ours))

    def test_unusual_bytes_not_taken(self) -> None:
        """Anything but whole FLOW_SETs of the agent's layout is left to the decoder."""
        one = encode_flow_request({"fr_op": 0, "fr_index": -1, "fr_gen_id": 0, "fr_action": 2,
                                   "fr_flags": 1, "fr_ecmp_nh_index": 0, "fr_family": 2,
                                   "fr_flow_proto": 6, "fr_flow_sport": 1, "fr_flow_dport": 2,
                                   "fr_flow_nh_id": 1, "fr_flow_sip_l": 1, "fr_flow_dip_l": 2,
                                   "fr_flow_vrf": 0, "fr_src_nh_index": 0, "fr_rindex": -1,
                                   "fr_drop_reason": 0})  # fmt: skip
        assert isinstance(one, bytes)
        renamed = bytearray(one)
        renamed[10] ^= 1  # the message name
        header = bytearray(one)
        header[15] ^= 0x40  # the first field's header (its type)
        for payload in (b"", one[:-1], one + b"\0\0\0", one * 2 + one[:5], bytes(renamed),
                        bytes(header), one + encode(schema.vr_response()),
                        encode(schema.vr_flow_req(fr_pcap_meta_data=[1, 2])),
                        encode(schema.vr_response()) * 8):
            self.assertIsNone(decode_flow_sets(payload), payload[:40])


class ServerReplyTests(SynchronousTestCase):
    """``process`` answers byte for byte what ``decode`` + ``execute`` answer."""

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.lists(_FIELDS, min_size=1, max_size=16), min_size=1, max_size=6))
    def test_same_replies(self, bunches: list[list[dict[str, int]]]) -> None:
        dps = _Datapaths(self)
        server = KsyncServerProtocol(dps.fast, STYLE_DPDK)
        for bunch in bunches:
            payload = b"".join(encode_flow_request(f) for f in bunch)
            self.assertEqual(server.process(payload), _general(dps.general, payload))
        self.assertEqual(server.requests, sum(len(b) for b in bunches))
        self.assertEqual(dps.fast.ksync_counts(), dps.general.ksync_counts())
        self.assertEqual(dps.fast.generation, dps.general.generation)

    def test_pairs_as_the_agent_writes_them(self) -> None:
        """HOLD entries, reverse flows linked to them, then the forward flows at them:
        the same replies either way, many requests long."""
        dps = _Datapaths(self)
        server = KsyncServerProtocol(dps.fast, STYLE_DPDK)
        base = {"fr_op": 0, "fr_gen_id": 0, "fr_action": 2,
                "fr_flags": L.FLAG_ACTIVE | L.RFLOW_VALID, "fr_ecmp_nh_index": 0xFFFFFFFF,
                "fr_family": 2, "fr_flow_proto": 6, "fr_flow_dport": 80, "fr_flow_nh_id": 0,
                "fr_flow_sip_l": 1, "fr_flow_dip_l": 2, "fr_flow_vrf": 0,
                "fr_src_nh_index": 0, "fr_drop_reason": 0}  # fmt: skip
        holds = [dict(base, fr_index=-1, fr_rindex=-1, fr_action=1, fr_flags=L.FLAG_ACTIVE,
                      fr_flow_sport=i) for i in range(48)]  # fmt: skip
        indices: list[int] = []
        for start in range(0, 48, 16):
            payload = b"".join(encode_flow_request(f) for f in holds[start : start + 16])
            fast = server.process(payload)
            self.assertEqual(fast, _general(dps.general, payload))
            answers = flow_answers(b"".join(fast), len(fast))
            assert answers is not None
            self.assertEqual([a[0] for a in answers], [0] * 16)
            indices.extend(a[1] for a in answers)
        revs = [dict(base, fr_index=-1, fr_rindex=i, fr_flow_sport=1000 + n)
                for n, i in enumerate(indices)]
        fwds = [dict(base, fr_index=i, fr_rindex=-1, fr_flow_sport=n)
                for n, i in enumerate(indices)]
        for bunch in (revs, fwds):
            for start in range(0, 48, 16):
                payload = b"".join(encode_flow_request(f) for f in bunch[start : start + 16])
                self.assertEqual(server.process(payload), _general(dps.general, payload))
        self.assertEqual(server.requests, 144)
        self.assertEqual(dps.fast.ksync_counts(), dps.general.ksync_counts())

    def test_unusual_requests_take_the_general_path(self) -> None:
        """Padding, another message after the FLOW_SETs, an undecodable tail: the same
        replies as before, nothing else lost."""
        dps = _Datapaths(self)
        server = KsyncServerProtocol(dps.fast, STYLE_LINUX)
        req = encode_flow_request(dict.fromkeys(_NAMES, 0) | {"fr_index": -1, "fr_flags": 1})
        assert isinstance(req, bytes)
        for payload in (req + b"\0\0\0", req + encode(schema.vr_response(resp_code=3)),
                        req + req[:30]):
            fast = server.process(payload)
            general = KsyncServerProtocol(dps.general, STYLE_LINUX).process(payload)
            self.assertEqual(fast, general)
        self.assertEqual(dps.fast.ksync_counts(), dps.general.ksync_counts())

    def test_framed_reply(self) -> None:
        """``answer`` frames the replies as ``_handle`` writes them."""
        dps = _Datapaths(self)
        server = KsyncServerProtocol(dps.fast, STYLE_DPDK)
        t = StringTransport()
        server.makeConnection(t)
        core = ClientCore()
        fields = dict.fromkeys(_NAMES, 0) | {"fr_index": -1, "fr_flags": 1, "fr_family": 2,
                                             "fr_flow_proto": 6, "fr_action": 2}
        _, frame = core.build([encode_flow_request(fields)] * 3, flow=True)
        server.dataReceived(frame)
        written = t.value()
        expected = frame_replies(_general(dps.general, frame[24:]), parse_message(frame),
                                 STYLE_DPDK)
        self.assertEqual(written, expected)
        [(_seq, answers)] = core.feed(written)
        self.assertEqual(len(answers), 3)
        self.assertEqual(answers[0][0], 0)


class AnswerTests(SynchronousTestCase):
    """The agent reads its answers at the datapath's layout as it reads decoded ones."""

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.integers(-0x7FFFFFFF, 0x7FFFFFFF), _U32, st.integers(0, 255),
                              st.integers(0, 0xFFFF), _U32), min_size=1, max_size=16))
    def test_same_as_decoded(self, answers: list[tuple[int, int, int, int, int]]) -> None:
        payload = b"".join(_answer_payload(code, fresp_index=index, fresp_gen_id=gen,
                                           fresp_flags=flags, fresp_bytes=nbytes)
                           for code, index, gen, flags, nbytes in answers)  # fmt: skip
        core = ClientCore()
        seq, _ = core.build([schema.vr_flow_req()] * len(answers))
        general = [flow_result(r) for r in
                   core.feed(_frame(payload, seq))[0][1]]  # fmt: skip
        self.assertEqual(flow_answers(payload, len(answers)), general)

    def test_unusual_answers_read_as_before(self) -> None:
        """An error without vr_flow_response, a netlink error, a missing answer, one
        padded: the general reading, the same tuples as the channel gave before."""
        core = ClientCore()
        cases: list[tuple[bytes, list[tuple[int, int, int]]]] = [
            (encode(schema.vr_response(h_op=RESPONSE, resp_code=-errno.EINVAL)),
             [(-errno.EINVAL, -1, 0)]),
            (_answer_payload(5, fresp_index=9, fresp_gen_id=3) + b"\0\0",
             [(0, 9, 3)]),
            (_answer_payload(0, fresp_index=9, fresp_gen_id=3), [(0, 9, 3), FLOW_RESET]),
            (b"\x01\x02", [FLOW_RESET]),
        ]
        for payload, expected in cases:
            seq, _ = core.build([schema.vr_flow_req()] * len(expected), flow=True)
            [(got_seq, got)] = core.feed(_frame(payload, seq))
            self.assertEqual((got_seq, got), (seq, expected))
        seq, _ = core.build([schema.vr_flow_req()], flow=True)
        error = b"\x24\0\0\0\x02\0\0\0" + seq.to_bytes(4, "little") + bytes(4) + \
            (-errno.ENOMEM).to_bytes(4, "little", signed=True) + bytes(16)
        self.assertEqual(core.feed(error), [(seq, [(-errno.ENOMEM, -1, 0)])])


def _frame(payload: bytes, seq: int) -> bytes:
    from vrtwist.ksync.netlink import NetlinkMessage, build_response

    return build_response(payload, NetlinkMessage(0x20, 0, seq, 0, 1), 0)


class FlowSetClientTests(SynchronousTestCase):
    """``request_flow_sets`` answers with tuples, never a failure."""

    def _client(self) -> tuple[KsyncClientProtocol, StringTransport]:
        c = KsyncClientProtocol()
        t = StringTransport()
        c.makeConnection(t)
        return c, t

    def test_answers(self) -> None:
        c, t = self._client()
        ds: list[Deferred[Any]] = [Deferred(), Deferred()]
        c.request_flow_sets([schema.vr_flow_req(), schema.vr_flow_req()], ds)
        seq = parse_message(t.value()).seq
        reply = _answer_payload(0, fresp_index=4, fresp_gen_id=1) + _answer_payload(
            -errno.ENOSPC, fresp_index=0xFFFFFFFF)
        c.dataReceived(_frame(reply, seq))
        got = [self.successResultOf(d) for d in ds]
        self.assertEqual(got, [(0, 4, 1), (-errno.ENOSPC, 0xFFFFFFFF, 0)])
        self.assertEqual(c.outstanding, 0)

    def test_lost_and_closed(self) -> None:
        c, _ = self._client()
        waiting: list[Deferred[Any]] = [Deferred()]
        c.request_flow_sets([schema.vr_flow_req()], waiting)
        plain = c.request(schema.vr_flow_table_data())
        c.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.successResultOf(waiting[0]), FLOW_RESET)
        self.failureResultOf(plain)
        after: list[Deferred[Any]] = [Deferred()]
        c.request_flow_sets([schema.vr_flow_req()], after)
        self.assertEqual(self.successResultOf(after[0]), FLOW_RESET)
        self.assertRaises(ValueError, c.request_flow_sets, [schema.vr_flow_req()], [])

    def test_broken_stream(self) -> None:
        c, t = self._client()
        ds: list[Deferred[Any]] = [Deferred()]
        c.request_flow_sets([schema.vr_flow_req()], ds)
        c.dataReceived(b"\x01\0\0\0" + bytes(12))  # nlmsg_len 1: out of sync
        self.assertEqual(self.successResultOf(ds[0]), FLOW_RESET)
        self.assertTrue(t.disconnecting)
        self.flushLoggedErrors()

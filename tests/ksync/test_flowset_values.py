"""The agent's linked FLOW_SETs taken from their values (``IFlowSetValues``) leave what
their objects leave through ``dispatch``.

Two identical datapaths with shared-memory flow tables and HOLD entries: one served by
a ksync server that applies the requests from their values, the other by one that
builds every request's object (the general path). Byte for byte the same framed
replies, table, counters, key index, listener calls (with the datapath's generation
each saw), request counts and generation.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vrtwist.agent.packet.service import encode_flow_request
from vrtwist.datapath.dispatcher import Datapath
from vrtwist.ksync.clientcore import ClientCore
from vrtwist.ksync.flowset import FlowSetValues, flow_answer, flow_answers
from vrtwist.ksync.interfaces import IFlowSetValues, IKsyncDispatcher, KsyncReply
from vrtwist.ksync.netlink import NLM_F_MULTI, NetlinkMessage, build_done, build_response
from vrtwist.ksync.server import STYLE_DPDK, STYLE_LINUX, KsyncServerProtocol, frame_replies
from vrtwist.sandesh import RESPONSE, encode, schema
from vrtwist.shmem import layout as L
from vrtwist.shmem.flowtable import LINKED_FIELDS, FlowTable
from vrtwist.shmem.requests import FlowRequests

_LINKED = L.FLAG_ACTIVE | L.RFLOW_VALID
_KEY4 = struct.Struct("<BBHHHIII")
_HOLDS = 12


class _Twin:
    """One datapath with its flow table, HOLD entries and a recording listener."""

    def __init__(self, case: SynchronousTestCase, style: str, values: bool,
                 tcp: list[int], taken: list[bool]) -> None:  # fmt: skip
        from vrtwist.shmem.service import install

        d = tempfile.mkdtemp(prefix="vrtwist-flowvalues-")
        case.addCleanup(shutil.rmtree, d, True)
        self.dp = Datapath()
        shared = install(self.dp, d, 1024, 1024, flow_oentries=1024, bridge_oentries=1024)
        case.addCleanup(shared.close)
        self.flows: FlowTable = shared.flows
        self.flows._hashrnd = 4242  # the tunnel source port: the same in both twins
        self.holds = []
        for i in range(_HOLDS):
            index, gen = self.flows.hold_on_miss(_KEY4.pack(2, 6, 0, i, 80, 1, 1, 2), 0, 7)
            if taken[i]:
                self.flows.take_new_flow(index)
            if tcp[i]:
                self.flows.set_tcp_flags(index, tcp[i])
            self.holds.append((index, gen))
        self.seen: list[tuple[int, int]] = []
        self.flows.set_listeners.append(lambda i: self.seen.append((i, self.dp.generation)))
        self.server = KsyncServerProtocol(self.dp, style)
        if not values:
            self.server._values = False
        self.before = bytes(self.flows.buf)

    def state(self) -> tuple[Any, ...]:
        f = self.flows
        return (bytes(f.buf), f.counters, dict(f._index), self.seen, self.dp.generation,
                self.dp.ksync_counts(), self.server.requests)  # fmt: skip


_REQ = st.fixed_dictionaries({
    "hold": st.integers(0, _HOLDS - 1),
    "reverse": st.booleans(),
    "sport": st.integers(0, 3),  # the reverse's: two alike collide (-EEXIST)
    "action": st.sampled_from([2, 2, 2, 0, 3, 1, 7]),
    "gen_off": st.sampled_from([0, 0, 0, 0, 1]),
    "flags": st.sampled_from([_LINKED] * 6 + [L.FLAG_ACTIVE, (_LINKED | 0x8000) - 0x10000,
                                              _LINKED | L.FLAG_MIRROR]),
    "op": st.sampled_from([0] * 12 + [1]),
    "family": st.sampled_from([2] * 12 + [10]),
    "rindex": st.sampled_from([None] * 8 + [-1, 0xFFFFFFFF, 3000, 1]),
    "index": st.sampled_from([None] * 10 + [5000, 0x7FFFFFFF, -2]),
    "extra": st.sampled_from([{}] * 10 + [{"fr_ttl": 1}, {"fr_qos_id": 2}, {"fr_flags1": 4},
                                          {"fr_extflags": 2}, {"fr_mir_id": 3},
                                          {"fr_flow_sip_u": 1}]),
    "vrf": st.integers(0, 0xFFFF),
    "src_nh": st.integers(0, 0xFFFFFFFF),
    "ecmp": st.sampled_from([0xFFFFFFFF, 0, 3, 200]),
    "drop": st.integers(0, 0xFFFF),
})  # fmt: skip


def _request(r: dict[str, Any], holds: list[tuple[int, int]]) -> bytes:
    """An agent's FLOW_SET around HOLD entry ``r["hold"]``: the reverse (a new entry
    linked to it) or the forward (the entry itself), then ``r``'s changes."""
    index, gen = holds[r["hold"]]
    if r["reverse"]:
        key = (6, 80, r["sport"], 1, 2, 1)  # the reply's direction
        fields = {"fr_index": -1, "fr_gen_id": 0, "fr_rindex": index}
    else:
        key = (6, r["hold"], 80, 1, 1, 2)
        fields = {"fr_index": index, "fr_gen_id": (gen + r["gen_off"]) & 0xFF,
                  "fr_rindex": holds[(r["hold"] + 1) % _HOLDS][0]}  # fmt: skip
    proto, sport, dport, nh, sip, dip = key
    fields.update({
        "fr_op": r["op"], "fr_action": r["action"], "fr_flags": r["flags"],
        "fr_ecmp_nh_index": r["ecmp"], "fr_family": r["family"], "fr_flow_proto": proto,
        "fr_flow_sport": sport, "fr_flow_dport": dport, "fr_flow_nh_id": nh,
        "fr_flow_sip_l": sip, "fr_flow_dip_l": dip, "fr_flow_vrf": r["vrf"],
        "fr_src_nh_index": r["src_nh"], "fr_drop_reason": r["drop"],
    })  # fmt: skip
    if r["rindex"] is not None:
        fields["fr_rindex"] = r["rindex"]
    if r["index"] is not None:
        fields["fr_index"] = r["index"]
    if r["extra"]:
        return encode(schema.vr_flow_req(**fields, **r["extra"]))
    out = encode_flow_request(fields)
    assert isinstance(out, bytes)
    return out


_SETUP = st.tuples(st.lists(st.sampled_from([0, 0, L.TCP_SYN, L.TCP_SYN | L.TCP_ESTABLISHED]),
                            min_size=_HOLDS, max_size=_HOLDS),
                   st.lists(st.sampled_from([True, True, True, False]), min_size=_HOLDS,
                            max_size=_HOLDS))  # fmt: skip


class ValuesPathTests(SynchronousTestCase):
    @settings(max_examples=120, deadline=None)
    @given(_SETUP, st.sampled_from([STYLE_DPDK, STYLE_LINUX]),
           st.lists(st.lists(_REQ, min_size=1, max_size=16), min_size=1, max_size=5))
    def test_same_as_objects(self, setup: tuple[list[int], list[bool]], style: str,
                             bunches: list[list[dict[str, Any]]]) -> None:  # fmt: skip
        values = _Twin(self, style, True, *setup)
        objects = _Twin(self, style, False, *setup)
        self.assertEqual(values.before, objects.before)
        core = ClientCore()
        for bunch in bunches:
            _, frame = core.build([_request(r, values.holds) for r in bunch], flow=True)
            self.assertEqual(values.server.answer(frame), objects.server.answer(frame))
        self.assertEqual(values.state(), objects.state())

    def test_pairs_taken_from_values(self) -> None:
        """The agent's pairs: every request applied from its values (no object made),
        each answered as the general path answers it, the held packets released."""
        values = _Twin(self, STYLE_DPDK, True, [L.TCP_SYN] * _HOLDS, [True] * _HOLDS)
        objects = _Twin(self, STYLE_DPDK, False, [L.TCP_SYN] * _HOLDS, [True] * _HOLDS)
        made: list[int] = []
        reader = values.dp.flow_set_reader()
        self.assertIsInstance(reader, FlowSetValues)
        self.patch(FlowSetValues, "request", lambda _, p, i: made.append(i))
        base: dict[str, Any] = {"reverse": True, "sport": 1, "action": 2, "gen_off": 0, "flags": _LINKED,
                "op": 0, "family": 2, "rindex": None, "index": None, "extra": {},
                "vrf": 1, "src_nh": 4, "ecmp": 0xFFFFFFFF, "drop": 0}  # fmt: skip
        core = ClientCore()
        answers = []
        revs: list[int | None] = [None] * _HOLDS
        for reverse in (True, False):
            bunch = [_request(dict(base, hold=h, sport=h, reverse=reverse, rindex=revs[h]),
                              values.holds) for h in range(_HOLDS)]  # fmt: skip
            _, frame = core.build(bunch, flow=True)
            fast = values.server.answer(frame)
            self.assertEqual(fast, objects.server.answer(frame))
            [(_, got)] = core.feed(fast)
            answers.append(got)
            revs = [a[1] for a in got]
        self.assertEqual(made, [])
        self.assertEqual([a[0] for a in answers[0] + answers[1]], [0] * 2 * _HOLDS)
        self.assertEqual([a[1:] for a in answers[1]], values.holds)
        self.assertEqual([i for i, _ in values.seen],
                         [a[1] for a in answers[0]] + [i for i, _ in values.holds])
        self.assertEqual(values.state(), objects.state())
        for (index, _), rev in zip(values.holds, answers[0], strict=True):
            self.assertEqual(values.flows.entry(index).rflow, rev[1])
            self.assertEqual(values.flows.entry(index).action, L.ACTION_FORWARD)

    def test_refused_request_goes_whole(self) -> None:
        """A stale generation between two good requests: that one is decoded and
        dispatched (answered -EBADF), the ones around it from their values, in order."""
        values = _Twin(self, STYLE_LINUX, True, [0] * _HOLDS, [True] * _HOLDS)
        objects = _Twin(self, STYLE_LINUX, False, [0] * _HOLDS, [True] * _HOLDS)
        base: dict[str, Any] = {"reverse": False, "sport": 1, "action": 2, "gen_off": 0, "flags": _LINKED,
                "op": 0, "family": 2, "rindex": None, "index": None, "extra": {},
                "vrf": 1, "src_nh": 4, "ecmp": 0xFFFFFFFF, "drop": 0}  # fmt: skip
        bunch = [_request(dict(base, hold=0), values.holds),
                 _request(dict(base, hold=1, gen_off=1), values.holds),
                 _request(dict(base, hold=2), values.holds)]  # fmt: skip
        payload = b"".join(bunch)
        got = values.server.process(payload)
        self.assertEqual(got, objects.server.process(payload))
        answers = flow_answers(b"".join(got), 3)
        assert answers is not None
        self.assertEqual([a[0] for a in answers], [0, -9, 0])
        self.assertEqual(values.state(), objects.state())


class AnswerTests(SynchronousTestCase):
    def test_answer_is_the_codec_s(self) -> None:
        assert flow_answer is not None
        for index, gen in ((0, 0), (7, 3), (0xFFFFFFFF, 255)):
            self.assertEqual(
                flow_answer(index, gen),
                encode(schema.vr_response(h_op=RESPONSE, resp_code=0))
                + encode(schema.vr_flow_response(fresp_index=index, fresp_gen_id=gen)))

    def test_reader_refuses_other_fields(self) -> None:
        self.assertRaises(ValueError, FlowSetValues, ["fr_pcap_meta_data"])
        self.assertRaises(ValueError, FlowSetValues, ["no_such_field"])
        reader = FlowSetValues(LINKED_FIELDS)
        self.assertEqual(sorted(reader.names), sorted(LINKED_FIELDS))
        self.assertIsNone(reader.read(b"\0" * 7))


@implementer(IKsyncDispatcher, IFlowSetValues)
class _Failing:
    """A dispatcher whose values path fails on its second request."""

    def __init__(self) -> None:
        self.reader = FlowSetValues(["fr_op"])
        self.dispatched = 0

    def flow_set_reader(self) -> FlowSetValues:
        return self.reader

    def flow_sets_at(self, values: tuple[int, ...], start: int, out: list[tuple[int, int]],
                     taken: Callable[[], None] | None = None) -> int:  # fmt: skip
        if start == 0:
            out.append((5, 1))
        raise RuntimeError("broken table")

    def dispatch(self, request: Any) -> KsyncReply:
        self.dispatched += 1
        return KsyncReply(0)


class FailureTests(SynchronousTestCase):
    def test_failure_answered_einval_rest_kept(self) -> None:
        """A table that raises: that request is answered -EINVAL (logged), the one
        before it keeps its answer, the one after is still tried (and fails too)."""
        dispatcher = _Failing()
        server = KsyncServerProtocol(dispatcher, STYLE_DPDK)
        req = encode_flow_request(dict.fromkeys(LINKED_FIELDS[:17], 0) | {"fr_index": -1})
        assert isinstance(req, bytes)
        out = server.process(req * 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        answers = flow_answers(b"".join(out[:1]), 1)
        self.assertEqual(answers, [(0, 5, 1)])
        einval = encode(schema.vr_response(h_op=RESPONSE, resp_code=-22))
        self.assertEqual(out[1:], [einval, einval])
        self.assertEqual(server.requests, 3)
        self.assertEqual(dispatcher.dispatched, 0)

    def test_table_without_values_goes_whole(self) -> None:
        """A FLOW_SET handler over something that is not a FlowTable: no reader, every
        request dispatched as an object."""

        class _Table:
            def __init__(self) -> None:
                self.set_listeners: list[Any] = []

        handler = FlowRequests(_Table())  # type: ignore[arg-type]
        self.assertIsNone(handler.flow_set_reader())
        dp = Datapath()
        dp.register("vr_flow_req", handler)
        self.assertIsNone(dp.flow_set_reader())
        self.assertEqual(dp.flow_sets_at((0,), 0, []), 0)

    def test_refused_leaves_no_count(self) -> None:
        """A request the values path refuses is not counted (its dispatch will); a taken
        one is, as dispatch would; neither moves the generation (flow requests never do)."""
        twin = _Twin(self, STYLE_DPDK, True, [0] * _HOLDS, [True] * _HOLDS)
        reader = twin.dp.flow_set_reader()
        index, gen = twin.holds[0]
        good = {"fr_op": 0, "fr_index": index, "fr_gen_id": gen, "fr_action": 2,
                "fr_flags": _LINKED, "fr_ecmp_nh_index": 0xFFFFFFFF, "fr_family": 2,
                "fr_flow_proto": 6, "fr_flow_sport": 0, "fr_flow_dport": 80,
                "fr_flow_nh_id": 1, "fr_flow_sip_l": 1, "fr_flow_dip_l": 2, "fr_flow_vrf": 0,
                "fr_src_nh_index": 0, "fr_rindex": twin.holds[1][0], "fr_drop_reason": 0}
        stale = dict(good, fr_gen_id=gen + 1)
        before = (twin.dp.generation, twin.dp.ksync_counts())
        for fields, expect in ((stale, None), (good, (index, gen))):
            payload = encode_flow_request(fields)
            assert isinstance(payload, bytes)
            values = reader.read(payload)
            assert values is not None
            out: list[tuple[int, int]] = []
            ticks: list[int] = []
            stop = twin.dp.flow_sets_at(values, 0, out, lambda: ticks.append(twin.dp.generation))
            self.assertEqual((stop, out, len(ticks)),
                             (0, [], 0) if expect is None else (len(values), [expect], 1))
            if expect is None:
                self.assertEqual((twin.dp.generation, twin.dp.ksync_counts()), before)
        self.assertEqual(twin.dp.generation, before[0])
        self.assertEqual(twin.dp.ksync_counts()[0], {"vr_flow_req": 1})
        self.assertEqual(twin.seen, [(index, before[0])])
        self.assertEqual(ticks, [before[0]])


class FramingTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.sampled_from([b"", b"a" * 100, b"b" * 100, b"c" * 37]), min_size=2,
                    max_size=17), st.sampled_from([STYLE_DPDK, STYLE_LINUX]))  # fmt: skip
    def test_as_one_message_each(self, replies: list[bytes], style: str) -> None:
        """Replies framed under one shared header (equal sizes) or one each: every
        message as ``build_response`` frames it, the last as the style says."""
        request = NetlinkMessage(0x21, 0, 77, 0, 1, 2, 3)
        last = len(replies) - 1
        expected = b"".join(
            build_response(p, request, 0 if style == STYLE_DPDK and i == last else NLM_F_MULTI)
            for i, p in enumerate(replies)
        ) + (build_done(request) if style == STYLE_LINUX else b"")
        self.assertEqual(frame_replies(replies, request, style), expected)

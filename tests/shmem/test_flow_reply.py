"""FLOW_SET answered straight to the ksync server: pre-encoded vr_flow_response."""

from __future__ import annotations

import errno
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from vrtwist.datapath.dispatcher import Datapath
from vrtwist.datapath.tables import TableError
from vrtwist.ksync.interfaces import IKsyncDispatcher, KsyncReply
from vrtwist.ksync.server import execute
from vrtwist.sandesh import SandeshEncodeError, decode, encode, schema
from vrtwist.shmem import layout as L
from vrtwist.shmem import requests as R
from vrtwist.shmem.flowtable import FlowSetResult, FlowTable


def _flows() -> FlowTable:
    return FlowTable(bytearray((16 + 4) * L.FLOW_ENTRY_SIZE), 16, 4)


def _req(**kw: Any) -> Any:
    base: dict[str, Any] = {
        "fr_op": 0,
        "fr_index": -1,
        "fr_flags": L.FLAG_ACTIVE,
        "fr_action": L.ACTION_FORWARD,
        "fr_family": 2,
        "fr_flow_proto": 6,
        "fr_flow_sport": 1,
        "fr_flow_dport": 2,
        "fr_flow_sip_l": 0x0100000A,
        "fr_flow_dip_l": 0x0200000A,
        "fr_flow_nh_id": 1,
    }
    base.update(kw)
    # through the wire codec, as the server hands requests over
    return decode(encode(schema.vr_flow_req(**base)))[0]


class _Fixed:
    """A flow table stand-in that returns one given result (to reach the rare paths)."""

    def __init__(self, r: FlowSetResult) -> None:
        self.r = r

    def flow_set(self, req: Any) -> FlowSetResult:
        return self.r


class Encoder(SynchronousTestCase):
    def test_available(self) -> None:
        self.assertIsNotNone(R._ENCODE_FRESP)

    @settings(max_examples=200, deadline=None)
    @given(
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFFFFFF),
        st.integers(0, 0xFFFFFFFF),
        st.integers(0, 0xFFFFFFFF),
        st.integers(0, 0xFFFFFFFF),
        st.integers(0, 0xFF),
    )
    def test_same_bytes_as_codec(self, fl: int, ix: int, b: int, p: int, o: int, g: int) -> None:
        ref = encode(
            schema.vr_flow_response(
                fresp_op=0,
                fresp_rid=0,
                fresp_flags=fl,
                fresp_index=ix,
                fresp_bytes=b,
                fresp_packets=p,
                fresp_stats_oflow=o,
                fresp_gen_id=g,
            )
        )
        assert R._ENCODE_FRESP is not None
        self.assertEqual(R._ENCODE_FRESP(fl, ix, b, p, o, g), ref)


class Dispatch(SynchronousTestCase):
    def test_interfaces(self) -> None:
        h = R.FlowRequests(_flows())
        verifyObject(IKsyncDispatcher, h)

    def test_wire_equal_to_handle(self) -> None:
        """Create, EEXIST, delete, ENOENT, bad op: the same reply bytes both ways."""
        a, b = R.FlowRequests(_flows()), R.FlowRequests(_flows())
        b.flows._hashrnd = a.flows._hashrnd
        seq = [
            _req(),
            _req(),
            _req(fr_index=0, fr_flags=0),  # index filled below
            _req(fr_index=3, fr_flags=0),
            _req(fr_op=1),
            _req(fr_family=7),
        ]
        first = a.flows.flow_set(_req(fr_flow_sport=9))
        b.flows.flow_set(_req(fr_flow_sport=9))
        seq[2] = _req(fr_index=first.index, fr_flags=0, fr_gen_id=first.gen_id, fr_flow_sport=9)
        for req in seq:
            direct = execute(a, req)
            msgs = b.handle(req)[0]
            old = execute(_Objects(msgs), req)  # type: ignore[arg-type]
            self.assertEqual(direct, old)
            self.assertEqual(decode(direct[0])[1].__class__, schema.vr_flow_response)

    def test_out_of_range_falls_back_to_codec(self) -> None:
        """A result field outside its wire range takes the codec path, whose error is -EINVAL."""
        h = R.FlowRequests(_Fixed(FlowSetResult(0, 1, gen_id=0x1FF)))  # type: ignore[arg-type]
        reply = h.dispatch(_req())
        self.assertEqual(reply.encoded, b"")
        self.assertEqual(len(list(reply.objects)), 1)
        out = execute(h, _req())
        self.assertEqual(decode(out[0])[0].resp_code, -errno.EINVAL)
        self.assertEqual(len(self.flushLoggedErrors(SandeshEncodeError)), 1)

    def test_datapath_routes_direct_and_back(self) -> None:
        dp = Datapath()
        h = R.FlowRequests(_flows())
        dp.register("vr_flow_req", h)
        reply = dp.dispatch(_req())
        self.assertIsInstance(reply, KsyncReply)
        self.assertNotEqual(reply.encoded, b"")
        self.assertEqual(reply.code, 0)

        class Plain:
            def handle(self, request: Any) -> Any:
                raise TableError(errno.EPERM, "no")

        dp.register("vr_flow_req", Plain())  # type: ignore[arg-type]
        self.assertEqual(dp.dispatch(_req()).code, -errno.EPERM)

        class Raising(R.FlowRequests):
            def dispatch(self, request: Any) -> KsyncReply:
                raise TableError(errno.EBUSY, "busy")

        dp.register("vr_flow_req", Raising(_flows()))
        self.assertEqual(dp.dispatch(_req()).code, -errno.EBUSY)


class _Objects:
    """An IKsyncDispatcher answering with objects (the pre-existing path)."""

    def __init__(self, msgs: list[Any]) -> None:
        self.msgs = msgs

    def dispatch(self, request: Any) -> KsyncReply:
        return KsyncReply(int(self.msgs[0].resp_code), list(self.msgs[1:]))

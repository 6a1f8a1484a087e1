"""The agent's ksync flow channel against a real ksync listener on a unix socket."""

from __future__ import annotations

import errno
import tempfile
import time
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from vrtwist.agent.ksync_window import BUNCH
from vrtwist.agent.packet import service
from vrtwist.agent.packet.flows import FlowKey, flow_request
from vrtwist.agent.packet.service import KsyncFlowChannel, encode_flow_request
from vrtwist.bounds import ConnectionLimits
from vrtwist.ksync.client import KsyncClientProtocol
from vrtwist.ksync.server import listen_ksync
from vrtwist.ksync.testing import MemoryDispatcher
from vrtwist.sandesh import encode, schema

reactor: Any = _reactor


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.02, lambda: None)


class KsyncFlowChannelTests(TestCase):
    async def test_survives_the_first_frame_guard_and_a_closed_session(self) -> None:
        """The channel's first frame (a flow table query) is sent on connecting, so a
        datapath that closes silent sessions keeps it; after the datapath closes the
        session, the next FLOW_SET goes over the service's new connection."""
        run_dir = tempfile.mkdtemp(prefix="fs-ksync-")
        dispatcher = MemoryDispatcher()
        port = await listen_ksync(reactor, run_dir, dispatcher,
                                  limits=ConnectionLimits(first_frame=0.3, partial=1.0))
        self.addCleanup(port.stopListening)
        channel = KsyncFlowChannel(reactor, run_dir)
        channel.service.startService()
        self.addCleanup(channel.service.stopService)

        def queries() -> int:
            return sum(type(r).__name__ == "vr_flow_table_data" for r in dispatcher.requests)

        await until(lambda: queries() == 1)
        await deferLater(reactor, 0.6, lambda: None)  # past the first-frame deadline
        key = FlowKey(bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)), 6, 1000, 80, 5)
        code, index, _ = await channel(flow_request(key, -1, 0, 2, 1))
        self.assertEqual((code, index), (0, 0))
        self.assertEqual(queries(), 1)  # still the first session

        old = channel._client
        assert old is not None and old.transport is not None
        old.transport.loseConnection()  # as the datapath closing the session
        await until(lambda: old.closed)
        await until(lambda: queries() == 2)  # the service reconnected and queried
        code, index, _ = await channel(flow_request(key, -1, 0, 2, 1))
        self.assertEqual((code, index), (0, 1))
        self.assertIsNot(channel._client, old)

    async def test_requests_of_one_turn_are_bunched(self) -> None:
        """FLOW_SETs asked for in one reactor turn leave together, BUNCH per netlink
        message, and each caller gets its own answer, in order."""
        run_dir = tempfile.mkdtemp(prefix="fs-ksync-")
        dispatcher = MemoryDispatcher()
        port = await listen_ksync(reactor, run_dir, dispatcher)
        self.addCleanup(port.stopListening)
        channel = KsyncFlowChannel(reactor, run_dir)
        channel.service.startService()
        self.addCleanup(channel.service.stopService)
        await until(lambda: channel._client is not None and dispatcher.requests != [])
        client = channel._client
        assert client is not None
        seq = client._core._seq
        keys = [FlowKey(bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)), 6, 1000 + i, 80, 5)
                for i in range(BUNCH + 4)]
        answers = [channel(flow_request(k, -1, 0, 2, 1)) for k in keys]
        self.assertEqual(client._core._seq, seq)  # nothing sent before the turn ends
        got = [await d for d in answers]
        self.assertEqual([index for _, index, _ in got], list(range(len(keys))))
        self.assertEqual({code for code, _, _ in got}, {0})
        self.assertEqual(client._core._seq, seq + 2)  # two netlink messages

    def test_stop_answers_what_is_queued(self) -> None:
        """A channel stopped with requests not yet sent answers them (not connected)."""
        channel = KsyncFlowChannel(reactor, tempfile.mkdtemp(prefix="fs-ksync-"))
        channel._client = KsyncClientProtocol()  # connected as far as the channel knows
        channel._client.transport = object()  # type: ignore[assignment]
        d = channel(flow_request(FlowKey(bytes(4), bytes(4), 6, 1, 2, 3), -1, 0, 2, 1))
        channel.stop()
        self.assertEqual(self.successResultOf(d), (-errno.ENOTCONN, -1, 0))
        self.assertIsNone(channel._flush_call)


_FIELD_VALUES = st.fixed_dictionaries({
    "fr_index": st.sampled_from([-1, 0, 7, 0x7FFFFFFF]),
    "fr_gen_id": st.integers(0, 255),
    "fr_action": st.integers(0, 3),
    "fr_flags": st.integers(0, 0xFFFF),
    "fr_ecmp_nh_index": st.sampled_from([0xFFFFFFFF, 0, 3]),
    "fr_flow_proto": st.integers(0, 255),
    "fr_flow_sport": st.integers(0, 0xFFFF),
    "fr_flow_dport": st.integers(0, 0xFFFF),
    "fr_flow_nh_id": st.integers(0, 0xFFFFFFFF),
    "fr_flow_sip_l": st.integers(0, 0xFFFFFFFF),
    "fr_flow_dip_l": st.integers(0, 0xFFFFFFFF),
    "fr_flow_vrf": st.integers(0, 0xFFFF),
    "fr_src_nh_index": st.integers(0, 0xFFFFFFFF),
    "fr_rindex": st.sampled_from([-1, 0, 9]),
    "fr_drop_reason": st.integers(0, 255),
})  # fmt: skip


class FlowRequestEncodingTests(SynchronousTestCase):
    def test_encoder_fits_the_codec(self) -> None:
        """The codec's layout was recognised (else every FLOW_SET goes through it)."""
        self.assertIsNotNone(service._ENCODE_FLOW_REQ)

    @settings(max_examples=200, deadline=None)
    @given(_FIELD_VALUES)
    def test_same_bytes_as_the_codec(self, values: dict[str, int]) -> None:
        """The one-pack encoding of the agent's FLOW_SET is the codec's, byte for byte."""
        key = FlowKey(bytes(4), bytes(4), 6, 1, 2, 3)
        fields = {**flow_request(key, -1, 0, 2, 1), **values}
        self.assertEqual(encode_flow_request(fields), encode(schema.vr_flow_req(**fields)))

    def test_other_fields_go_through_the_codec(self) -> None:
        """A request with a field flow_request does not set is a Sandesh object."""
        key = FlowKey(bytes(4), bytes(4), 6, 1, 2, 3)
        fields = {**flow_request(key, -1, 0, 2, 1), "fr_ttl": 9}
        req: Any = encode_flow_request(fields)
        self.assertIsInstance(req, schema.vr_flow_req)
        self.assertEqual(req.fr_ttl, 9)

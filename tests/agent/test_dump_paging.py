"""The agent's datapath reads page through ksync's DumpPager (same marker rules as the
utilities), and a server that never ends a dump is an error, not a silent stop."""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vrtwist.agent.dpstate import DatapathModel
from vrtwist.agent.interfaces import IKsyncChannel
from vrtwist.agent.ksync_sync import DatapathRequestError, DatapathSync
from vrtwist.sandesh import schema
from vrtwist.sandesh.constants import AF_BRIDGE, VR_MESSAGE_DUMP_INCOMPLETE


@implementer(IKsyncChannel)
class ScriptedChannel:
    """Answers each request with the next scripted reply and keeps what was asked."""

    def __init__(self, replies: list[list[Any]]) -> None:
        self.replies = replies
        self.sent: list[Any] = []

    def request(self, msg: Any) -> Deferred[list[Any]]:
        self.sent.append(msg)
        return succeed(self.replies.pop(0))


def page(objects: list[Any], more: bool) -> list[Any]:
    code = len(objects) | (VR_MESSAGE_DUMP_INCOMPLETE if more else 0)
    return [schema.vr_response(resp_code=code), *objects]


class AgentDumpTests(SynchronousTestCase):
    def sync(self, channel: ScriptedChannel) -> DatapathSync:
        sync = DatapathSync(DatapathModel(fabric_ip="127.0.0.2"))
        sync.reader = channel
        return sync

    def test_bridge_dump_sends_mac_and_index(self) -> None:
        first = schema.vr_route_req(rtr_family=AF_BRIDGE, rtr_mac=[2, 0, 0, 0, 0, 1],
                                    rtr_index=17)
        second = schema.vr_route_req(rtr_family=AF_BRIDGE, rtr_mac=[2, 0, 0, 0, 0, 2],
                                     rtr_index=18)
        channel = ScriptedChannel([page([first], True), page([second], False)])
        got = self.successResultOf(ensureDeferred(self.sync(channel).dump(
            "vr_route_req", {"rtr_vrf_id": 1, "rtr_family": AF_BRIDGE})))
        self.assertEqual([o.rtr_index for o in got], [17, 18])
        self.assertEqual((channel.sent[1].rtr_mac, channel.sent[1].rtr_index),
                         ([2, 0, 0, 0, 0, 1], 17))
        self.assertEqual(channel.replies, [])

    def test_more_without_objects_fails_the_dump(self) -> None:
        vif = schema.vr_interface_req(vifr_idx=4)
        channel = ScriptedChannel([page([vif], True), page([], True)])
        f = self.failureResultOf(ensureDeferred(self.sync(channel).dump(
            "vr_interface_req", {})), DatapathRequestError)
        self.assertEqual(f.value.code, -errno.EPROTO)
        self.assertEqual(channel.sent[1].vifr_marker, 4)
        self.assertEqual(len(channel.sent), 2)  # and no third request

"""The agent's ksync flow channel keeps its session alive on a real socket.

The datapath closes a ksync session that sends no complete request within 10 s of
connecting (:func:`vrtwist.ksync.server.ksync_limits`); the flow channel of an agent with
an external datapath may see no flow miss for longer, so it must open its session itself.
"""

from __future__ import annotations

import tempfile
from typing import cast

from twisted.internet import reactor, unix
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from vrtwist.agent.packet.service import KsyncFlowChannel
from vrtwist.bounds import BoundedFactory
from vrtwist.ksync.server import listen_ksync
from vrtwist.ksync.testing import MemoryDispatcher


class FlowChannelSessionTests(TestCase):
    async def test_session_is_established_before_any_flow(self) -> None:
        """Connected and idle (no FLOW_SET yet), the session already counts as established."""
        run_dir = tempfile.mkdtemp(prefix="vrtwist-flowchan-")
        port = await listen_ksync(IReactorUNIX(reactor), run_dir, MemoryDispatcher())
        self.addCleanup(port.stopListening)
        factory = cast(unix.Port, port).factory  # the listening port listen_ksync made
        assert isinstance(factory, BoundedFactory), factory  # and narrowed for its guard
        guard = factory.guard
        channel = KsyncFlowChannel(reactor, run_dir)
        channel.service.startService()
        self.addCleanup(channel.service.stopService)
        self.addCleanup(channel.stop)
        for _ in range(200):
            if guard._live and not guard._new:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual((len(guard._new), len(guard._live)), (0, 1))
        self.assertTrue(channel._keepalive.running)

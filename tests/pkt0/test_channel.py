"""pkt0 over real unix datagram sockets: both ends, limits, bad frames, socket modes."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.polling import wait_for
from vrtwist.access import SocketAccess
from vrtwist.datapath.interfaces import IPacketTrap
from vrtwist.logfields import Logger
from vrtwist.pkt0 import constants as K
from vrtwist.pkt0 import transport
from vrtwist.pkt0.codec import HEADER_LEN, AgentHeader, decode, encode_command, trap_header
from vrtwist.pkt0.endpoints import (
    AgentEndpoint,
    DatapathEndpoint,
    ITrapHandler,
    TrapLimiter,
)
from vrtwist.pkt0.transport import (
    AGENT_SOCKET,
    DATAPATH_SOCKET,
    QUEUE_MAX,
    RECOMMENDED_DGRAM_QLEN,
    IPkt0Transport,
    UnixDatagramTransport,
    bind_datagram,
    dgram_qlen,
)

reactor: Any = _reactor
AGENT_MAC = bytes.fromhex("00005e000100")
FRAME = bytes.fromhex("ffffffffffff020000000003080600010800060400010200000000030a010103") + bytes(10)


class RecordingDeliver:
    """Where the datapath endpoint hands the agent's frames (the pipeline's receive)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes]] = []

    def __call__(self, vif_index: int, frame: bytes) -> None:
        self.calls.append((vif_index, frame))


AGENT = (2, AGENT_MAC)


@implementer(ITrapHandler)
class RecordingHandler:
    def __init__(self) -> None:
        self.traps: list[tuple[AgentHeader, bytes]] = []

    def trap_received(self, header: AgentHeader, frame: memoryview) -> None:
        self.traps.append((header, bytes(frame)))


@implementer(IPkt0Transport)
class ListTransport:
    """An in-memory transport for endpoint logic; ``full`` makes it refuse."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.full = False

    def send(self, frame: bytes) -> bool:
        if self.full:
            return False
        self.frames.append(frame)
        return True


class EndpointTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        """The datapath endpoint is the datapath's IPacketTrap."""
        self.assertTrue(verifyObject(IPacketTrap, DatapathEndpoint(lambda: AGENT)))
        self.assertTrue(verifyObject(ITrapHandler, RecordingHandler()))

    def test_trap_framed_with_agent_mac(self) -> None:
        """A trap leaves framed with the agent vif's MAC and the spec's parameters."""
        dp = DatapathEndpoint(lambda: AGENT)
        dp.transport = link = ListTransport()
        self.assertTrue(dp.trap(3, 1, K.AGENT_TRAP_FLOW_MISS, 1000, 12, (0, 0, 0, 0), FRAME))
        hdr, inner = decode(link.frames[0])
        self.assertEqual(link.frames[0][:12], AGENT_MAC * 2)
        self.assertEqual(hdr, trap_header(3, 1, K.AGENT_TRAP_FLOW_MISS, 1000, 12))
        self.assertEqual(bytes(inner), FRAME)
        self.assertEqual(dp.counters.traps, 1)

    def test_no_agent_vif_no_trap(self) -> None:
        """Without an agent vif (no MAC) a trap is refused, so the caller counts TRAP_NO_IF."""
        dp = DatapathEndpoint(lambda: None)
        dp.transport = link = ListTransport()
        self.assertFalse(dp.trap(3, 1, K.AGENT_TRAP_ARP, 0, 0, (0, 0, 0, 0), FRAME))
        self.assertEqual(link.frames, [])

    def test_rate_limit_per_vif(self) -> None:
        """A flooding vif spends its own budget only; another vif's traps still go."""
        clock = Clock()
        dp = DatapathEndpoint(lambda: AGENT, limiter=TrapLimiter(clock.seconds, (1000, 100), (10, 5)))
        dp.transport = link = ListTransport()
        sent = [dp.trap(3, 1, K.AGENT_TRAP_L3_PROTOCOLS, 0, 0, (0, 0, 0, 0), FRAME) for _ in range(50)]
        self.assertEqual(sent.count(True), 5)
        self.assertEqual(dp.counters.rate_limited, 45)
        self.assertTrue(dp.trap(4, 1, K.AGENT_TRAP_ARP, 0, 0, (0, 0, 0, 0), FRAME))
        clock.advance(0.5)  # 5 more tokens for vif 3
        sent = [dp.trap(3, 1, K.AGENT_TRAP_ARP, 0, 0, (0, 0, 0, 0), FRAME) for _ in range(10)]
        self.assertEqual(sent.count(True), 5)
        self.assertEqual(len(link.frames), 11)

    def test_limiter_refuses_nonsense(self) -> None:
        """A limiter with no rate or no burst is a configuration error."""
        with self.assertRaises(ValueError):
            TrapLimiter(lambda: 0.0, other=(0, 1))
        with self.assertRaises(ValueError):
            TrapLimiter(lambda: 0.0, flow=(1, 0))

    def test_agent_frames_go_to_the_agent_vif(self) -> None:
        """The agent's frames are handed whole to the pipeline on the agent vif."""
        deliver = RecordingDeliver()
        dp = DatapathEndpoint(lambda: AGENT, deliver)
        switch = encode_command(5, 2, K.AGENT_CMD_SWITCH, FRAME)
        route = encode_command(6, 3, K.AGENT_CMD_ROUTE, FRAME, 1, 1)
        dp.frame_received(switch)
        dp.frame_received(route)
        self.assertEqual(deliver.calls, [(2, switch), (2, route)])
        self.assertEqual(dp.counters.commands, 2)

    def test_bad_frames_from_the_agent_side(self) -> None:
        """Short frames, or frames with no agent vif, are counted; good ones still go."""
        deliver = RecordingDeliver()
        agent: list[tuple[int, bytes] | None] = [None]
        dp = DatapathEndpoint(lambda: agent[0], deliver)
        for junk in (b"", b"\x00" * 44, encode_command(5, 2, K.AGENT_CMD_SWITCH, FRAME)[:44]):
            dp.frame_received(junk)
        good = encode_command(5, 2, K.AGENT_CMD_SWITCH, FRAME)
        dp.frame_received(good)  # no agent vif yet
        agent[0] = AGENT
        dp.frame_received(good)
        self.assertEqual((dp.counters.malformed, dp.counters.command_failed), (3, 1))
        self.assertEqual(deliver.calls, [(2, good)])

    def test_agent_side(self) -> None:
        """The agent decodes traps for its services, drops bad codes, frames its commands."""
        handler = RecordingHandler()
        agent = AgentEndpoint(handler)
        agent.transport = link = ListTransport()
        dp = DatapathEndpoint(lambda: AGENT)
        dp.transport = to_agent = ListTransport()
        dp.trap(3, 1, K.AGENT_TRAP_ARP, 0, 0, (0, 0, 0, 0), FRAME)
        agent.frame_received(to_agent.frames[0])
        agent.frame_received(b"short")
        agent.frame_received(encode_command(1, 0, 40, FRAME))  # code beyond the table
        agent.frame_received(encode_command(1, 0, K.AGENT_CMD_ROUTE, FRAME))  # not a trap
        self.assertEqual([(h.ifindex, h.cmd, f) for h, f in handler.traps], [(3, 2, FRAME)])
        self.assertEqual(agent.by_code, {K.AGENT_TRAP_ARP: 1})
        self.assertEqual((agent.counters.malformed, agent.counters.unknown_command), (1, 2))
        self.assertTrue(agent.send_switch(3, 1, FRAME))
        link.full = True
        self.assertFalse(agent.send_route(3, 1, FRAME, 1, 1))
        self.assertEqual((agent.counters.commands, agent.counters.command_failed), (1, 1))
        self.assertEqual(decode(link.frames[0])[0].cmd, K.AGENT_CMD_SWITCH)


class SocketTests(TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pkt0-")
        self.addCleanup(os.rmdir, self.dir)

    def _pair(self) -> tuple[UnixDatagramTransport, UnixDatagramTransport, RecordingDeliver, RecordingHandler]:
        commands, handler = RecordingDeliver(), RecordingHandler()
        dp = DatapathEndpoint(lambda: AGENT, commands)
        agent = AgentEndpoint(handler)
        dp_path = os.path.join(self.dir, DATAPATH_SOCKET)
        agent_path = os.path.join(self.dir, AGENT_SOCKET)
        dpt = UnixDatagramTransport(reactor, dp_path, agent_path, dp)
        agt = UnixDatagramTransport(reactor, agent_path, dp_path, agent)
        dp.transport, agent.transport = dpt, agt
        dpt.start()
        agt.start()
        self.addCleanup(dpt.stop)
        self.addCleanup(agt.stop)
        self.dp, self.agent = dp, agent
        return dpt, agt, commands, handler

    async def test_round_trip_over_sockets(self) -> None:
        """A trap reaches the agent and the agent's SWITCH reaches the datapath."""
        dpt, agt, commands, handler = self._pair()
        self.assertTrue(self.dp.trap(3, 1, K.AGENT_TRAP_ARP, 0, 0, (0, 0, 0, 0), FRAME))
        self.assertTrue(self.agent.send_switch(3, 1, FRAME))
        await wait_for(lambda: handler.traps and commands.calls, what="the trap and the command")
        self.assertEqual(handler.traps[0][1], FRAME)
        self.assertEqual([decode(f)[0].cmd for _vif, f in commands.calls], [K.AGENT_CMD_SWITCH])
        self.assertEqual((dpt.counters.sent, agt.counters.received), (1, 1))

    def test_modes(self) -> None:
        """Both sockets are 0600 whatever the umask, and nobody else could open them."""
        old = os.umask(0)
        try:
            self._pair()
        finally:
            os.umask(old)
        for name in (DATAPATH_SOCKET, AGENT_SOCKET):
            st = os.stat(os.path.join(self.dir, name))
            self.assertTrue(stat.S_ISSOCK(st.st_mode))
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual([n for n in os.listdir(self.dir) if n.startswith(".")], [])

    def test_socket_group_access(self) -> None:
        """With a ``--socket-group`` access object the group may use the socket too."""
        path = os.path.join(self.dir, DATAPATH_SOCKET)
        gid = os.getgid()
        t = UnixDatagramTransport(reactor, path, os.path.join(self.dir, AGENT_SOCKET),
                                  DatapathEndpoint(lambda: AGENT), SocketAccess(gid))  # fmt: skip
        t.start()
        self.addCleanup(t.stop)
        st = os.stat(path)
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_gid), (0o660, gid))

    def test_no_peer_counted(self) -> None:
        """A datapath whose agent is not running counts the trap as having no peer."""
        dp_path = os.path.join(self.dir, DATAPATH_SOCKET)
        dpt = UnixDatagramTransport(reactor, dp_path, os.path.join(self.dir, AGENT_SOCKET), DatapathEndpoint(lambda: AGENT))
        dpt.start()
        self.addCleanup(dpt.stop)
        self.assertFalse(dpt.send(b"x" * (HEADER_LEN + 1)))
        self.assertEqual(dpt.counters.no_peer, 1)

    def test_flood_is_bounded(self) -> None:
        """A peer that never reads: sends beyond the socket buffer are dropped and counted."""
        dp_path = os.path.join(self.dir, DATAPATH_SOCKET)
        sink_path = os.path.join(self.dir, AGENT_SOCKET)
        sink = bind_datagram(sink_path)  # bound, never read
        self.addCleanup(os.unlink, sink_path)
        self.addCleanup(sink.close)
        dpt = UnixDatagramTransport(reactor, dp_path, sink_path, DatapathEndpoint(lambda: AGENT))
        dpt.start()
        self.addCleanup(dpt.stop)
        frame = b"\x00" * 1500
        results = [dpt.send(frame) for _ in range(20000)]
        self.assertIn(False, results)
        queued = len(dpt._queue)
        self.assertEqual(queued, QUEUE_MAX)  # our own queue stops at its bound
        self.assertEqual(dpt.counters.sent + queued + dpt.counters.send_dropped, 20000)
        self.assertEqual(results.count(False), dpt.counters.send_dropped)
        self.assertGreater(dpt.counters.send_dropped, 0)

    async def test_burst_beyond_the_kernel_queue_arrives(self) -> None:
        """A burst far beyond the kernel's few queued datagrams all arrives, in order."""
        dpt, _agt, _deliver, handler = self._pair()
        for i in range(600):
            self.assertTrue(self.dp.trap(3, 1, K.AGENT_TRAP_FLOW_MISS, i, 12, (0, 0, 0, 0), FRAME))
        await wait_for(lambda: len(handler.traps) == 600, what="600 traps")
        self.assertEqual([h.param for h, _ in handler.traps], list(range(600)))
        self.assertEqual(dpt.counters.send_dropped, 0)

    async def test_peer_restart_is_reached_again(self) -> None:
        """The agent end restarting (a new socket at the same path) is found again."""
        dpt, agt, _deliver, handler = self._pair()
        self.assertTrue(self.dp.trap(3, 1, K.AGENT_TRAP_ARP, 0, 0, (0, 0, 0, 0), FRAME))
        await wait_for(lambda: handler.traps, what="the first trap")
        agt.stop()
        self.assertFalse(self.dp.trap(3, 1, K.AGENT_TRAP_ARP, 0, 0, (0, 0, 0, 0), FRAME))
        agt.start()
        await deferLater(reactor, 0.25, lambda: None)  # past the reconnect pause
        self.assertTrue(self.dp.trap(3, 1, K.AGENT_TRAP_ARP, 0, 0, (0, 0, 0, 0), FRAME))
        await wait_for(lambda: len(handler.traps) >= 2, what="the second trap")
        self.assertEqual(len(handler.traps), 2)
        self.assertGreaterEqual(dpt.counters.no_peer, 1)

    def test_stale_socket_replaced_and_stop_removes(self) -> None:
        """A socket file left by a killed run is replaced; stop removes only its own file."""
        path = os.path.join(self.dir, DATAPATH_SOCKET)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        stale.bind(path)
        stale.close()
        t = UnixDatagramTransport(reactor, path, os.path.join(self.dir, "x"), DatapathEndpoint(lambda: None))
        t.start()
        self.assertTrue(os.path.exists(path))
        t.stop()
        self.assertFalse(os.path.exists(path))
        t.stop()  # idempotent

    async def test_oversize_and_garbage_from_a_local_process(self) -> None:
        """Garbage and oversize datagrams sent by another process are counted, not fatal."""
        dpt, _agt, commands, _handler = self._pair()
        hostile = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(hostile.close)
        target = os.path.join(self.dir, DATAPATH_SOCKET)
        hostile.sendto(b"\xff" * 10, target)
        hostile.sendto(b"\x00" * 20000, target)
        hostile.sendto(encode_command(5, 2, K.AGENT_CMD_SWITCH, FRAME), target)
        await wait_for(lambda: commands.calls, what="the command")
        self.assertEqual(len(commands.calls), 1)
        self.assertEqual(decode(commands.calls[0][1])[0].ifindex, 5)
        self.assertEqual(dpt.counters.oversize, 1)
        self.assertEqual(self.dp.counters.malformed, 1)


class NobodyTests(TestCase):
    """A local user who is not the owner cannot send to either end of pkt0 (root)."""

    def test_nobody_cannot_send_root_can(self) -> None:
        from tests.unprivileged import as_nobody, need_root

        need_root()
        directory = tempfile.mkdtemp(prefix="pkt0-nobody-")
        self.addCleanup(shutil.rmtree, directory, True)
        os.chmod(directory, 0o755)  # only the sockets' own modes stand in the way
        receiver = RecordingHandler()
        agent = AgentEndpoint(receiver)
        path = os.path.join(directory, AGENT_SOCKET)
        t = UnixDatagramTransport(reactor, path, os.path.join(directory, DATAPATH_SOCKET), agent)
        t.start()
        self.addCleanup(t.stop)
        self.assertEqual(as_nobody("sendto", path), "EACCES")
        root = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(root.close)
        root.sendto(b"x" * 10, path)  # the owner gets through (and is counted as malformed)
        t.doRead()
        self.assertEqual(t.counters.received, 1)
        self.assertEqual(agent.counters.malformed, 1)


class QueueLengthTests(SynchronousTestCase):
    """``net.unix.max_dgram_qlen`` read and warned about once per process when low."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.path = os.path.join(self.dir, "max_dgram_qlen")
        self.patch(transport, "_qlen_warned", False)
        self.events: list[dict[str, Any]] = []
        self.log = Logger(observer=cast(ILogObserver, self.events.append))

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    def test_read(self) -> None:
        self.write("512\n")
        self.assertEqual(dgram_qlen(self.path), 512)

    def test_unreadable_is_unknown(self) -> None:
        self.assertIsNone(dgram_qlen(self.path))  # absent
        self.write("many\n")
        self.assertIsNone(dgram_qlen(self.path))
        self.write("")
        self.assertIsNone(dgram_qlen(self.path))
        self.assertFalse(transport._warn_low_qlen(self.log, self.path))
        self.assertEqual(self.events, [])

    def test_low_warned_once(self) -> None:
        self.write("10\n")
        self.assertTrue(transport._warn_low_qlen(self.log, self.path))
        self.assertFalse(transport._warn_low_qlen(self.log, self.path))
        self.assertEqual(len(self.events), 1)
        self.assertEqual(self.events[0]["qlen"], 10)
        self.assertEqual(self.events[0]["recommended"], RECOMMENDED_DGRAM_QLEN)
        text = formatEvent(self.events[0])
        self.assertIn("max_dgram_qlen is 10", text)
        self.assertIn("sysctl -w net.unix.max_dgram_qlen=512", text)

    def test_enough_not_warned(self) -> None:
        self.write(f"{RECOMMENDED_DGRAM_QLEN}\n")
        self.assertFalse(transport._warn_low_qlen(self.log, self.path))
        self.assertEqual(self.events, [])

    def test_this_host_read(self) -> None:
        if not os.path.exists("/proc/sys/net/unix/max_dgram_qlen"):
            raise SkipTest("no /proc/sys/net/unix here")
        qlen = dgram_qlen()
        assert qlen is not None
        self.assertGreater(qlen, 0)

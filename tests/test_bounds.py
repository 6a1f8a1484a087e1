"""The connection guard: deadlines and the evicting cap, on a MemoryReactorClock."""

from __future__ import annotations

import struct

from twisted.internet.address import UNIXAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vrtwist.bounds import BoundedFactory, BoundedProtocol, ConnectionLimits, IFrameProgress
from vrtwist.ksync.netlink import build_request
from vrtwist.ksync.server import bounded_ksync_factory, ksync_limits
from vrtwist.ksync.testing import MemoryDispatcher
from vrtwist.sandesh import GET, encode, schema


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


@implementer(IFrameProgress)
class Lines(Protocol):
    """Newline-framed: frames completed and bytes of the line in progress."""

    def __init__(self) -> None:
        self.buf = b""
        self.lines = 0

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        *done, self.buf = self.buf.split(b"\n")
        self.lines += len(done)

    def frameProgress(self) -> tuple[int, int]:
        return self.lines, len(self.buf)


class AbortingTransport(StringTransport):
    """abortConnection as a real transport does it: connectionLost on the next turn."""

    def __init__(self, clock: MemoryReactorClock) -> None:
        super().__init__()
        self.clock = clock
        self.protocol: Protocol | None = None

    def abortConnection(self) -> None:
        if self.protocol is not None and not self.disconnecting:
            from twisted.internet.error import ConnectionAborted
            from twisted.python.failure import Failure

            self.clock.callLater(0, self.protocol.connectionLost, Failure(ConnectionAborted()))
        super().abortConnection()


class Conn:
    """One accepted connection: the wrapper and its transport."""

    def __init__(self, factory: BoundedFactory) -> None:
        self.proto: BoundedProtocol = factory.buildProtocol(UNIXAddress(None))
        clock = factory.guard.clock
        assert isinstance(clock, MemoryReactorClock)
        self.transport = AbortingTransport(clock)
        self.transport.protocol = self.proto
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        if self.proto.wrappedProtocol is not None:  # a lost connection reads nothing
            self.proto.dataReceived(data)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def lose(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.proto.connectionLost(Failure(ConnectionDone()))


class GuardTests(SynchronousTestCase):
    def make(self, proto: type[Protocol] = Echo, **kw: object) -> BoundedFactory:
        self.clock = MemoryReactorClock()
        return BoundedFactory(Factory.forProtocol(proto), self.clock, ConnectionLimits(**kw))  # type: ignore[arg-type]

    def test_limits_are_checked(self) -> None:
        self.assertRaises(ValueError, ConnectionLimits, max_connections=0)
        self.assertRaises(ValueError, ConnectionLimits, idle=0)
        self.assertRaises(ValueError, ConnectionLimits, first_frame=-1.0)

    def test_silent_peer_closed_after_first_frame_deadline(self) -> None:
        f = self.make(first_frame=5.0, idle=None)
        silent, talker = Conn(f), Conn(f)
        self.clock.advance(4.9)
        talker.send(b"hi")
        self.assertFalse(silent.closed)
        self.clock.advance(0.1)
        self.assertTrue(silent.closed)
        self.assertFalse(talker.closed)
        self.assertEqual(talker.transport.value(), b"hi")
        self.assertEqual((f.guard.timed_out, len(f.guard)), (1, 1))
        # no idle deadline: the talker may stay silent for good
        self.clock.advance(10_000)
        self.assertFalse(talker.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle_deadline_moves_with_activity(self) -> None:
        f = self.make(first_frame=5.0, idle=30.0)
        c = Conn(f)
        c.send(b"x")
        for _ in range(10):  # a byte every 20 s keeps it open
            self.clock.advance(20)
            c.send(b"y")
        self.assertFalse(c.closed)
        self.clock.advance(29.9)
        self.assertFalse(c.closed)
        self.clock.advance(0.1)
        self.assertTrue(c.closed)
        # one timer per connection, not one per read
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_partial_frame_deadline(self) -> None:
        f = self.make(Lines, first_frame=5.0, partial=3.0, idle=None)
        slow, streaming = Conn(f), Conn(f)
        slow.send(b"first\n")
        streaming.send(b"a\n")
        slow.send(b"never fin")  # a frame started...
        for i in range(10):  # ...while the other streams frames, always with a tail
            self.clock.advance(1.0)
            streaming.send(b"tail%d\nnext" % i)
            slow.send(b"i")  # trickling bytes do not complete a frame
            if i < 2:
                self.assertFalse(slow.closed)
        self.assertTrue(slow.closed)
        self.assertFalse(streaming.closed)
        self.assertEqual(len(f.guard), 1)  # the slow one was released

    def test_first_frame_means_complete_frame(self) -> None:
        f = self.make(Lines, first_frame=5.0, partial=60.0)
        c = Conn(f)
        c.send(b"no newline yet")
        self.clock.advance(5.0)
        self.assertTrue(c.closed)  # bytes alone are not a first frame

    def test_full_evicts_never_established_first_then_stalest(self) -> None:
        f = self.make(max_connections=4, first_frame=None, idle=None)
        busy = Conn(f)
        busy.send(b"req")
        idle_est = Conn(f)
        idle_est.send(b"once")
        self.clock.advance(1)
        busy.send(b"req")
        never = [Conn(f), Conn(f)]
        # 1,000 more connections that never send: each evicts the oldest silent one
        flood = [Conn(f) for _ in range(1000)]
        self.assertTrue(all(c.closed for c in never + flood[:-2]))
        self.assertFalse(busy.closed or idle_est.closed)
        self.assertEqual(len(f.guard), 4)
        self.assertEqual(f.guard.evicted, 1000)
        # with only established peers, the one idle the longest goes for a newcomer
        for c in flood[-2:]:
            c.send(b"x")
        self.clock.advance(1)
        busy.send(b"req")
        for c in flood[-2:]:
            c.send(b"x")
        utility = Conn(f)
        self.assertTrue(idle_est.closed)
        self.assertFalse(busy.closed or utility.closed)
        utility.send(b"vif --list")
        self.assertEqual(utility.transport.value(), b"vif --list")

    def test_lost_connection_is_released(self) -> None:
        f = self.make(max_connections=2, first_frame=5.0)
        a, b = Conn(f), Conn(f)
        a.lose()
        self.assertEqual(len(f.guard), 1)
        c = Conn(f)
        self.assertFalse(b.closed or c.closed)  # room was made by the departure
        self.clock.advance(5)
        self.assertTrue(b.closed and c.closed)
        self.assertEqual(f.guard.timed_out, 2)  # a's timer went with it

    def test_refusing_inner_factory(self) -> None:
        class No(Factory):
            def buildProtocol(self, addr: object) -> None:
                return None

        f = BoundedFactory(No(), MemoryReactorClock(), ConnectionLimits())
        self.assertIsNone(f.buildProtocol(UNIXAddress(None)))
        self.assertEqual(len(f.guard), 0)


class KsyncGuardTests(SynchronousTestCase):
    """dpdk_netlink's own limits, with the real session protocol."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.dispatcher = MemoryDispatcher()
        f = bounded_ksync_factory(self.clock, self.dispatcher, max_sessions=8)
        assert isinstance(f, BoundedFactory)
        self.factory = f

    def test_header_promising_65536_bytes_is_closed(self) -> None:
        lim = ksync_limits()
        attacker = Conn(self.factory)
        good = Conn(self.factory)
        request = build_request(encode(schema.vr_mpls_req(h_op=GET, mr_label=5)), seq=1)
        good.send(request)
        attacker.send(request)  # one good request first: it is an established session
        attacker.send(struct.pack("<IHHII", 65536, 0x10, 1, 2, 0))
        assert lim.partial is not None
        self.clock.advance(lim.partial - 0.5)
        good.send(request)
        self.assertFalse(attacker.closed)
        self.clock.advance(0.5)
        self.assertTrue(attacker.closed)
        self.assertFalse(good.closed)
        self.assertEqual(len(self.factory.wrappedFactory.sessions), 1)  # and its session
        self.assertEqual(len(self.factory.guard), 1)

    def test_agent_session_outlives_a_flood_of_idle_ones(self) -> None:
        request = build_request(encode(schema.vr_mpls_req(h_op=GET, mr_label=5)), seq=1)
        agent = Conn(self.factory)
        agent.send(request)
        flood = []
        for _ in range(300):
            self.clock.advance(0.01)
            flood.append(Conn(self.factory))
        self.assertFalse(agent.closed)
        self.assertEqual(sum(not c.closed for c in flood), 7)
        replies = len(agent.transport.value())
        agent.send(request)
        self.assertGreater(len(agent.transport.value()), replies)
        # the agent polls; silent sessions time out, the agent never does
        for _ in range(100):
            self.clock.advance(5)
            agent.send(request)
        self.assertFalse(agent.closed)
        self.assertTrue(all(c.closed for c in flood))

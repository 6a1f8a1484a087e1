"""The speed measures: busy polling, growing windows, skipped and lazy frames, lean sockets."""

from __future__ import annotations

import errno
import itertools
import socket
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import protocol, reactor, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.polling import wait_for
from vrtwist._busypoll import BusyPoll
from vrtwist.vpnkit import forwarder_tap, host_tap
from vrtwist.vpnkit._fastwrite import send_now
from vrtwist.vpnkit._lean import LeanStream, LeanTCPPort
from vrtwist.vpnkit.frames import (
    HANDSHAKE,
    Close,
    Destination,
    Open,
    Shutdown,
    Window,
    encode_frame,
    parse_frames,
)
from vrtwist.vpnkit.mux import LAZY_CLOSE_DELAY, Channel, Multiplexer
from vrtwist.vpnkit.testing import Acceptor, LinkPair, Sink

DEST = Destination.tcp("127.0.0.1", 8080)


def frames(data: bytes) -> list[Any]:
    if data.startswith(HANDSHAKE):
        data = data[len(HANDSHAKE) :]
    return parse_frames(data)


class BusyPollTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.t = 0.0
        self.yields = 0

        def y() -> None:
            # Each offer of the core to others lets 50 us pass.
            self.yields += 1
            self.t += 0.00005

        self.poll = BusyPoll(self.clock, 0.0002, now=lambda: self.t, yield_=y)

    def test_spins_while_activity_is_recent_then_stops(self) -> None:
        self.poll.kick()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)  # runs every zero-delay turn until the budget is spent
        self.assertEqual(self.poll.spins, 4)
        self.assertEqual(self.yields, 4)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.poll.kick()  # new traffic: spinning again
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_kick_rearms_only_once(self) -> None:
        self.poll.kick()
        self.poll.kick()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_stop_cancels_and_disarms(self) -> None:
        self.poll.kick()
        self.poll.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.poll.kick()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zero_budget_never_spins_and_negative_is_refused(self) -> None:
        p = BusyPoll(self.clock, 0)
        p.kick()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertRaises(ValueError, BusyPoll, self.clock, -1)


class OptionTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        o = forwarder_tap.Options()
        o.parseOptions(["--data-listen", "/tmp/x.sock"])
        self.assertEqual(o["window"], 65536)  # Go's, as the issue says
        self.assertEqual(o["window-max"], 1 << 20)
        self.assertEqual(o["busy-poll"], 200)

    def test_bad_values(self) -> None:
        for extra in (
            ["--window-max", "1000"],  # below the window
            ["--window", "131072", "--window-max", "65536"],
            ["--busy-poll", "-1"],
            ["--busy-poll", "2000000"],
        ):
            self.assertRaises(
                usage.UsageError,
                host_tap.Options().parseOptions,
                ["--data-connect", "/a", *extra],
            )

    def test_busy_poll_stops_with_the_service(self) -> None:
        clock = MemoryReactorClock()
        o = forwarder_tap.Options()
        o.parseOptions(["--data-listen", "/tmp/x.sock", "--busy-poll", "500"])
        svc = forwarder_tap.makeService(o, clock)
        kick = svc.dataService.factory.on_activity
        kick()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        svc.privilegedStartService()
        svc.startService()
        svc.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
        kick()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_busy_poll_off(self) -> None:
        o = forwarder_tap.Options()
        o.parseOptions(["--data-listen", "/tmp/x.sock", "--busy-poll", "0"])
        svc = forwarder_tap.makeService(o, MemoryReactorClock())
        self.assertIsNone(svc.dataService.factory.on_activity)


class WindowGrowthTests(SynchronousTestCase):
    def _transfer(self, pair: LinkPair, acc: Acceptor, n: int) -> tuple[Channel, list[int]]:
        pair.record = True
        ch = pair.b.openChannel(DEST, Sink())
        ch.write(b"g" * n)
        pair.pump()
        seqs = [f.seq for f in frames(b"".join(pair.wire_ab)) if isinstance(f, Window)]
        self.assertEqual(len(acc.accepted[0][1].data), n)
        return ch, seqs

    def test_a_sender_that_fills_the_window_gets_a_bigger_one(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc)
        ch, seqs = self._transfer(pair, acc, 8 << 20)
        self.assertEqual(seqs[0], 65536)  # the first advertisement is the configured one
        steps = [b - a for a, b in itertools.pairwise(seqs)]
        self.assertGreater(max(steps), 65536)
        rch = cast(Channel, acc.accepted[0][0])  # its window is looked at
        self.assertEqual(rch._rwin, 1 << 20)  # capped at window-max
        self.assertGreaterEqual(pair.a.stats.windows_grown, 1)
        # the sender never had more than the advertised window in flight
        self.assertLessEqual(ch._wr_sent, seqs[-1])

    def test_fixed_window_when_max_equals_window(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc)
        pair.a.window_max = 65536
        _, seqs = self._transfer(pair, acc, 1 << 20)
        self.assertTrue(all(b - a <= 65536 for a, b in itertools.pairwise(seqs)))
        self.assertEqual(pair.a.stats.windows_grown, 0)

    def test_growth_stays_within_the_link_budget_and_is_given_back(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc)
        pair.a.window_budget = 3 * 65536
        chans = [pair.b.openChannel(DEST, Sink()) for _ in range(3)]
        for c in chans:
            c.write(b"q" * (4 << 20))
        pair.pump()
        self.assertLessEqual(pair.a._grown, 3 * 65536)
        self.assertLessEqual(sum(cast(Channel, r)._rwin - 65536 for r, _ in acc.accepted),
                             3 * 65536)
        for c in chans:
            c.loseConnection()
        pair.pump()
        self.assertEqual(pair.a._grown, 0)

    def test_a_paused_receiver_holds_at_most_its_grown_window(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc)
        ch = pair.b.openChannel(DEST, Sink())
        ch.write(b"p" * (4 << 20))
        pair.pump()
        accepted, sink = acc.accepted[0]
        rch = cast(Channel, accepted)  # its buffer and window are looked at
        rch.pauseProducing()
        ch.write(b"p" * (4 << 20))
        pair.pump()
        self.assertLessEqual(rch._recvlen, rch._rwin)
        rch.resumeProducing()
        pair.pump()
        self.assertEqual(len(sink.data), 8 << 20)


class SkippedWindowTests(SynchronousTestCase):
    def _forwarder(self) -> tuple[Multiplexer, Acceptor, StringTransport]:
        from twisted.internet.testing import StringTransport

        acc = Acceptor()
        mux = Multiplexer(acc, backwards=False)
        t = StringTransport()
        mux.makeConnection(t)
        mux.dataReceived(HANDSHAKE)
        t.clear()
        return mux, acc, t

    def test_open_and_shutdown_in_one_read_get_no_window(self) -> None:
        mux, acc, t = self._forwarder()
        cid = 0xFFFFFFFF
        mux.dataReceived(
            b"".join(encode_frame(f) for f in (Open(cid, DEST), Window(cid, 65536), Shutdown(cid)))
        )
        self.assertEqual(frames(t.value()), [])  # the peer will never send: no Window
        self.assertEqual(mux.stats.windows_skipped, 1)
        self.assertTrue(acc.accepted[0][1].eof)
        acc.accepted[0][0].loseConnection()  # the destination side finishes
        self.assertEqual(frames(t.value()), [Close(cid)])

    def test_shutdown_in_a_later_read_keeps_the_window(self) -> None:
        mux, _acc, t = self._forwarder()
        cid = 0xFFFFFFFE
        mux.dataReceived(encode_frame(Open(cid, DEST)) + encode_frame(Window(cid, 65536)))
        mux.dataReceived(encode_frame(Shutdown(cid)))
        self.assertEqual(frames(t.value()), [Window(cid, 65536)])
        self.assertEqual(mux.stats.windows_skipped, 0)


class LazyCloseTests(SynchronousTestCase):
    def _pair(self) -> tuple[LinkPair, Acceptor, Clock, Channel]:
        acc = Acceptor()
        pair = LinkPair(acc)
        clock = Clock()
        pair.a.clock = pair.b.clock = clock
        ch = pair.b.openChannel(DEST, Sink())
        pair.pump()
        return pair, acc, clock, ch

    def test_an_acknowledging_close_waits_then_goes_alone(self) -> None:
        pair, acc, clock, ch = self._pair()
        acc.accepted[0][0].loseConnection()  # the far side closes first
        pair.pump()
        self.assertTrue(ch.recv_close)
        self.assertTrue(ch.sent_close)  # answered at once, but held back: lazy
        self.assertEqual(pair.tb.value(), b"")
        self.assertIn(ch.id, pair.a.channels)  # the peer still waits for it
        self.assertEqual(pair.b.channels, {})  # ours is free already
        clock.advance(LAZY_CLOSE_DELAY)
        self.assertEqual(frames(pair.tb.value()), [Close(ch.id)])
        pair.pump()
        self.assertEqual(pair.a.channels, {})
        self.assertEqual(pair.b.channels, {})

    def test_an_acknowledging_close_rides_in_front_of_the_next_frame(self) -> None:
        pair, acc, clock, ch = self._pair()
        acc.accepted[0][0].loseConnection()
        pair.pump()
        nxt = pair.b.openChannel(DEST, Sink())
        out = frames(pair.tb.value())
        self.assertEqual(out[0], Close(ch.id))
        self.assertIsInstance(out[1], Open)
        self.assertEqual(out[1].id, nxt.id)
        self.assertEqual(clock.getDelayedCalls(), [])  # the timer went with it
        pair.pump()
        self.assertEqual(len(acc.accepted), 2)

    def test_a_close_made_before_the_peers_close_in_the_same_read_waits_too(self) -> None:
        """Shutdown + Close in one read: the EOF makes our end close, then theirs arrives."""
        acc = Acceptor()
        pair = LinkPair(acc)
        clock = Clock()
        pair.a.clock = pair.b.clock = clock
        ch = pair.b.openChannel(DEST, Sink(echo=True))  # closes when it sees EOF
        pair.pump()
        far = acc.accepted[0][0]
        pair.a.cork()
        far.loseWriteConnection()
        far.loseConnection()
        pair.a.uncork()
        wire = pair.ta.value()
        pair.ta.clear()
        self.assertEqual(frames(wire), [Shutdown(ch.id), Close(ch.id)])
        pair.b.dataReceived(wire)
        self.assertTrue(ch.sent_close)
        self.assertEqual(pair.tb.value(), b"")  # held back
        clock.advance(LAZY_CLOSE_DELAY)
        self.assertEqual(frames(pair.tb.value()), [Close(ch.id)])

    def test_a_first_close_is_never_lazy(self) -> None:
        pair, _acc, _clock, ch = self._pair()
        ch.loseConnection()
        self.assertEqual(frames(pair.tb.value()), [Close(ch.id)])

    def test_link_lost_with_a_lazy_close_pending(self) -> None:
        pair, acc, clock, _ch = self._pair()
        acc.accepted[0][0].loseConnection()
        pair.pump()
        self.assertEqual(len(pair.b.writer.lazy), 1)
        pair.b.connectionLost(Failure_done())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(pair.b.writer.lazy, [])

    def test_lose_link_sends_it_first(self) -> None:
        pair, acc, _clock, ch = self._pair()
        acc.accepted[0][0].loseConnection()
        pair.pump()
        pair.b.loseLink("test")
        self.assertEqual(frames(pair.tb.value()), [Close(ch.id)])


def Failure_done() -> Failure:
    from twisted.internet import error
    from twisted.python.failure import Failure

    return Failure(error.ConnectionDone())


class SendmsgTests(SynchronousTestCase):
    def test_header_and_payload_without_a_join_and_the_rest_buffered(self) -> None:
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        a.setblocking(False)
        b.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        t = LeanStream(a, protocol.Protocol(), MemoryReactorClock())
        t.connected = 1
        payload = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes at once
        send_now(t, [b"HDR", memoryview(payload)])
        self.assertTrue(t.dataBuffer or t._tempDataLen)  # the rest waits in Twisted
        got = b""
        while True:
            try:
                got += b.recv(1 << 20)
            except BlockingIOError:
                break
        queued = b"".join(t._tempDataBuffer) + bytes(t.dataBuffer)
        self.assertEqual(got + queued, b"HDR" + payload)


@implementer(IHalfCloseableProtocol)
class _Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class LeanPortTests(TestCase):
    timeout = 10

    async def test_accepted_clients_are_lean_and_half_close(self) -> None:
        seen: list[object] = []

        class F(protocol.Factory):
            def buildProtocol(self, addr: object) -> protocol.Protocol:
                seen.append(addr)
                return _Echo()

        port = LeanTCPPort(0, F(), 50, "127.0.0.1", reactor=reactor)
        port.startListening()
        self.addCleanup(port.stopListening)
        c = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(c.close)
        c.sendall(b"ping")
        c.shutdown(socket.SHUT_WR)
        c.setblocking(False)
        got = bytearray()
        await wait_for(reads_to_eof(c, got), 2, 0.005, what="the echo and its EOF")
        self.assertEqual(got, b"ping")
        self.assertEqual(seen, [IPv4Address("TCP", "127.0.0.1", c.getsockname()[1])])

    async def test_a_protocol_that_fails_to_start_does_not_close_the_port(self) -> None:
        made: list[bool] = []

        class Broken(protocol.Protocol):
            def connectionMade(self) -> None:
                made.append(False)
                raise RuntimeError("application bug")

        class F(protocol.Factory):
            def buildProtocol(self, addr: object) -> protocol.Protocol:
                return Broken() if not made else _Echo()

        port = LeanTCPPort(0, F(), 50, "127.0.0.1", reactor=reactor)
        port.startListening()
        self.addCleanup(port.stopListening)
        bad = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(bad.close)
        bad.setblocking(False)
        await wait_for(reads_to_eof(bad, bytearray()), 2, 0.005,
                       what="the broken connection to be closed")
        self.flushLoggedErrors(RuntimeError)
        good = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(good.close)
        good.sendall(b"still listening")
        good.settimeout(0)
        got = bytearray()
        reads = reads_to_eof(good, got)
        await wait_for(lambda: reads() or got == b"still listening", 2, 0.005,
                       what="the echo on a new connection")
        self.assertEqual(got, b"still listening")

    def test_descriptor_exhaustion_falls_back_to_twisteds_loop(self) -> None:
        calls: list[object] = []
        port = LeanTCPPort(0, protocol.Factory(), 50, "127.0.0.1", reactor=MemoryReactorClock())

        class Sock:
            def _accept(self) -> None:
                raise OSError(errno.EMFILE, "too many open files")

        port.socket = Sock()
        self.patch(tcp.Port, "doRead", lambda self: calls.append(self))
        port.doRead()
        self.assertEqual(calls, [port])

    def test_unix_stream_has_no_nagle_to_set(self) -> None:
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        t = LeanStream(a, protocol.Protocol(), MemoryReactorClock())
        t.setTcpNoDelay(True)  # no error, no log
        self.assertEqual(t.getPeer().name, None)


def reads_to_eof(sock: socket.socket, into: bytearray) -> Callable[[], bool]:
    """A predicate for ``wait_for``: reads what a non-blocking ``sock`` has into ``into``;
    true once the peer closed (EOF or reset)."""

    def poll() -> bool:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        into.extend(chunk)
        return not chunk

    return poll



class ProcessTuningTests(SynchronousTestCase):
    def test_tunings_only_for_twistd(self) -> None:
        """Tests pass a reactor: their process keeps its allocator and collector."""
        import gc

        from vrtwist._process import tune_gc

        o = forwarder_tap.Options()
        o.parseOptions(["--data-listen", "/tmp/x.sock"])
        svc = forwarder_tap.makeService(o, MemoryReactorClock())
        self.assertEqual(svc._tunings, ())
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        tune_gc()
        self.assertGreaterEqual(gc.get_threshold()[0], 20_000)
        gc.set_threshold(50_000, 5, 5)
        tune_gc()  # never lowers what someone else set
        self.assertEqual(gc.get_threshold(), (50_000, 5, 5))

    def test_unix_link_buffers_grow_tcp_left_alone(self) -> None:
        from vrtwist.vpnkit._fastwrite import link_buffers

        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        before = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        t = LeanStream(a, protocol.Protocol(), MemoryReactorClock())
        link_buffers(t)
        self.assertGreaterEqual(a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), before)
        tcp_sock = socket.socket()
        self.addCleanup(tcp_sock.close)
        tcp_before = tcp_sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        link_buffers(LeanStream(tcp_sock, protocol.Protocol(), MemoryReactorClock()))
        self.assertEqual(tcp_sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), tcp_before)
        link_buffers(object())  # not a socket transport: nothing to do

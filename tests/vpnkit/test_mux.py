"""The multiplexer, in memory: Go's multiplexed_test.go cases, windows, fairness, bad peers."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from typing import Any, cast

from twisted.internet import error
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from vrtwist.vpnkit.channel import Channel
from vrtwist.vpnkit.frames import (
    HANDSHAKE,
    Close,
    Data,
    Destination,
    Open,
    Shutdown,
    Window,
    encode_data_header,
    encode_frame,
    encode_open,
    encode_window,
    parse_frames,
)
from vrtwist.vpnkit.interfaces import IChannel, IChannelAcceptor, IMultiplexer
from vrtwist.vpnkit.mux import Multiplexer
from vrtwist.vpnkit.testing import Acceptor, LinkPair, Sink

DEST = Destination.tcp("127.0.0.1", 8080)


@implementer(IPushProducer)
class FakeProducer:
    def __init__(self) -> None:
        self.state = "producing"
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.state = "paused"
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


def frames_of(chunks: list[bytes]) -> list[Any]:
    wire = b"".join(chunks)
    if wire.startswith(HANDSHAKE):
        wire = wire[len(HANDSHAKE) :]
    return parse_frames(wire)


class InterfaceTests(SynchronousTestCase):
    def test_verify(self) -> None:
        pair = LinkPair(Acceptor())
        verifyObject(IMultiplexer, pair.a)
        verifyObject(IChannelAcceptor, Acceptor())
        ch = pair.b.openChannel(DEST, Sink())
        verifyObject(IChannel, ch)
        verifyObject(IPushProducer, ch)


class LifecycleTests(SynchronousTestCase):
    def test_handshake_then_ready(self) -> None:
        pair = LinkPair()
        self.assertEqual(pair.ta.value(), HANDSHAKE)
        self.assertFalse(pair.a.ready)
        pair.pump()
        self.assertTrue(pair.a.ready and pair.b.ready)
        self.assertTrue(pair.a.when_ready.called)

    def test_new(self) -> None:
        """TestNew: dial, accept, close both channels, close both multiplexers."""
        acc = Acceptor()
        pair = LinkPair(acc)
        client = Sink()
        ch = pair.b.openChannel(DEST, client)
        pair.pump()
        self.assertEqual(ch.id, 0xFFFFFFFF)
        (rch, server) = acc.accepted[0]
        self.assertEqual(rch.id, 0xFFFFFFFF)
        self.assertEqual(rch.destination, DEST)
        ch.loseConnection()
        rch.loseConnection()
        pair.pump()
        self.assertEqual((pair.a.liveChannels(), pair.b.liveChannels()), (0, 0))
        self.assertIsNotNone(client.lost)
        self.assertIsNotNone(server.lost)
        pair.a.connectionLost(Failure(error.ConnectionDone()))
        pair.b.connectionLost(Failure(error.ConnectionDone()))

    def test_close_twice_in_a_row(self) -> None:
        """TestClose: dial/accept/close/close twice; the loop must not deadlock."""
        acc = Acceptor()
        pair = LinkPair(acc)
        for i in range(2):
            ch = pair.b.openChannel(DEST, Sink())
            pair.pump()
            ch.loseConnection()
            acc.accepted[i][0].loseConnection()
            pair.pump()
        self.assertEqual((pair.a.liveChannels(), pair.b.liveChannels()), (0, 0))
        self.assertEqual(pair.b.stats.channels_closed, 2)

    def test_id_freed_only_after_both_closes(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc)
        ch = pair.b.openChannel(DEST, Sink())
        pair.pump()
        ch.loseConnection()
        self.assertIn(ch.id, pair.b.channels)  # our Close sent, peer's not seen
        self.assertEqual(pair.b._allocate(), 0xFFFFFFFE)  # the id is not reused meanwhile
        pair.pump()
        self.assertNotIn(ch.id, pair.b.channels)
        self.assertNotIn(ch.id, pair.a.channels)

    def test_close_close(self) -> None:
        """TestCloseClose: Close twice on one end, then the peer's Close; both survive."""
        acc = Acceptor()
        pair = LinkPair(acc)
        pair.record = True
        ch = pair.b.openChannel(DEST, Sink())
        pair.pump()
        ch.loseConnection()
        ch.loseConnection()
        pair.pump()
        acc.accepted[0][0].loseConnection()
        pair.pump()
        self.assertEqual(
            [f for f in frames_of(pair.wire_ba) if isinstance(f, Close)], [Close(ch.id)]
        )
        self.assertTrue(pair.a._connected and pair.b._connected)
        self.assertEqual(pair.a.stats.protocol_errors + pair.b.stats.protocol_errors, 0)

    def test_closewrite_closewrite(self) -> None:
        """TestCloseWriteCloseWrite: Shutdown twice then Close; one Shutdown on the wire."""
        acc = Acceptor()
        pair = LinkPair(acc)
        pair.record = True
        ch = pair.b.openChannel(DEST, Sink())
        ch.loseWriteConnection()
        ch.loseWriteConnection()
        pair.pump()
        self.assertTrue(acc.accepted[0][1].eof)
        ch.loseConnection()
        pair.pump()
        wire = frames_of(pair.wire_ba)
        self.assertEqual(sum(isinstance(f, Shutdown) for f in wire), 1)
        self.assertEqual(pair.a.liveChannels(), 0)

    def test_close_then_closewrite_sends_no_shutdown(self) -> None:
        """TestCloseCloseWrite (moby/vpnkit#458): no Shutdown after Close."""
        acc = Acceptor()
        pair = LinkPair(acc)
        pair.record = True
        ch = pair.b.openChannel(DEST, Sink())
        pair.pump()
        ch.loseConnection()
        ch.loseWriteConnection()
        pair.pump()
        kinds = [type(f).__name__ for f in frames_of(pair.wire_ba)]
        self.assertEqual(kinds, ["Open", "Window", "Close"])

    def test_data_after_shutdown_from_confused_peer(self) -> None:
        """TestCloseWriteWrite: Data after Shutdown is consumed and discarded, peer survives."""
        acc = Acceptor()
        pair = LinkPair(acc)
        ch = pair.b.openChannel(DEST, Sink())
        ch.write(b"before")
        ch.loseWriteConnection()
        pair.pump()
        # inject what a confused sender would emit after its Shutdown
        pair.a.dataReceived(encode_frame(Data(ch.id, b"after")))
        server = acc.accepted[0][1]
        self.assertEqual(server.data, b"before")
        self.assertEqual(pair.a.stats.discarded_bytes, 5)
        # the link is still in sync: a second channel works
        ch2 = pair.b.openChannel(DEST, Sink())
        ch2.write(b"ok")
        pair.pump()
        self.assertEqual(acc.accepted[1][1].data, b"ok")

    def test_write_after_close_is_dropped(self) -> None:
        """TestCloseThenWrite: a write racing Close fails (here: dropped and counted)."""
        acc = Acceptor()
        pair = LinkPair(acc)
        ch = pair.b.openChannel(DEST, Sink())
        pair.pump()
        acc.accepted[0][0].loseConnection()
        pair.pump()
        ch.write(b"too late")
        pair.pump()
        self.assertEqual(pair.b.stats.discarded_bytes, 8)
        self.assertEqual(acc.accepted[0][1].data, b"")
        self.assertEqual(pair.b.liveChannels(), 0)

    def test_refused_channel_is_answered_with_close(self) -> None:
        pair = LinkPair(Acceptor(refuse=True))
        client = Sink()
        pair.b.openChannel(DEST, client)
        pair.pump()
        self.assertIsNotNone(client.lost)
        self.assertEqual((pair.a.liveChannels(), pair.b.liveChannels()), (0, 0))
        self.assertEqual(pair.a.stats.channels_refused, 1)

    def test_no_acceptor_refuses(self) -> None:
        pair = LinkPair(None)
        client = Sink()
        pair.b.openChannel(DEST, client)
        pair.pump()
        self.assertIsNotNone(client.lost)

    def test_eof_before_handshake(self) -> None:
        """TestEOF: peer goes away before its preamble: not ready, lost, no error."""
        mux = Multiplexer(Acceptor())
        mux.makeConnection(StringTransport())
        mux.dataReceived(HANDSHAKE[:10])
        mux.connectionLost(Failure(error.ConnectionDone()))
        self.assertFalse(mux.when_ready.called)
        self.assertTrue(mux.whenLost.called)
        self.assertEqual(mux.stats.protocol_errors, 0)
        self.assertRaises(error.ConnectionClosed, mux.openChannel, DEST, Sink())

    def test_bad_magic_closes_link_with_reason(self) -> None:
        mux = Multiplexer(Acceptor())
        t = StringTransport()
        mux.makeConnection(t)
        mux.dataReceived(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 40)
        self.assertTrue(t.disconnecting)
        assert mux.lost_reason is not None
        self.assertIn("bad magic", mux.lost_reason)

    def test_no_handshake_mode(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc, handshake=False)
        self.assertEqual(pair.ta.value(), b"")
        ch = pair.b.openChannel(DEST, Sink())
        ch.write(b"ocaml")
        pair.pump()
        self.assertEqual(acc.accepted[0][1].data, b"ocaml")

    def test_cross_channel_opening(self) -> None:
        """TestCrossChannelOpening: both ends open 20 channels at once; ids never clash."""
        accA, accB = Acceptor(echo=True), Acceptor(echo=True)
        pair = LinkPair(accA, accB)
        sinks = []
        for i in range(20):
            for mux in (pair.a, pair.b):
                s = Sink()
                c = mux.openChannel(Destination.unix("/tmp/x"), s)
                c.write(b"%04d" % i)
                c.loseWriteConnection()
                sinks.append((i, s))
        pair.pump()
        for i, s in sinks:
            self.assertEqual(s.data, b"%04d" % i)
            self.assertIsNotNone(s.lost)  # the echo side closed after echoing
        self.assertEqual(
            sorted(c.id for c, _ in accA.accepted), list(range(0xFFFFFFFF - 19, 0xFFFFFFFF + 1))
        )
        self.assertEqual(sorted(c.id for c, _ in accB.accepted), list(range(20)))

    def test_ids_skip_live_and_wrap(self) -> None:
        pair = LinkPair(Acceptor())
        pair.a._next = 0xFFFFFFFF
        first = pair.a.openChannel(DEST, Sink())
        second = pair.a.openChannel(DEST, Sink())
        self.assertEqual((first.id, second.id), (0xFFFFFFFF, 0))
        pair.a._next = 0
        self.assertEqual(pair.a.openChannel(DEST, Sink()).id, 1)  # 0 is live


class BufferedDataSurvivesCloseTests(SynchronousTestCase):
    """loopbackconn_test's TestWriteCloseRead / TestWriteCloseWriteRead, for channels."""

    def test_write_then_close_delivers_everything(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc)
        ch = pair.b.openChannel(DEST, Sink())
        ch.write(b"a" * 200_000)  # more than a window: most of it waits for Windows
        ch.loseConnection()
        pair.pump()
        server = acc.accepted[0][1]
        self.assertEqual(len(server.data), 200_000)
        self.assertIsNotNone(server.lost)
        self.assertEqual(pair.b.liveChannels(), 0)

    def test_write_closewrite_then_read_reply(self) -> None:
        acc = Acceptor(echo=True)
        pair = LinkPair(acc)
        client = Sink()
        ch = pair.b.openChannel(DEST, client)
        ch.write(b"ping")
        ch.loseWriteConnection()
        pair.pump()
        self.assertEqual(client.data, b"ping")

    def test_close_while_reader_paused_still_delivers_buffered(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc)
        ch = pair.b.openChannel(DEST, Sink())
        pair.pump()
        rch, server = acc.accepted[0]
        rch.pauseProducing()
        ch.write(b"kept" * 1000)
        pair.pump()
        self.assertEqual(server.data, b"")
        ch.loseConnection()
        pair.pump()
        self.assertEqual(server.data, b"kept" * 1000)
        self.assertIsNotNone(server.lost)


class HalfCloseTests(SynchronousTestCase):
    def test_shutdown_is_half_close(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc)
        client = Sink()
        ch = pair.b.openChannel(DEST, client)
        ch.write(b"request")
        ch.loseWriteConnection()
        pair.pump()
        rch, server = acc.accepted[0]
        self.assertTrue(server.eof)
        self.assertIsNone(server.lost)
        rch.write(b"reply after EOF")
        rch.loseConnection()
        pair.pump()
        self.assertEqual(client.data, b"reply after EOF")
        self.assertIsNotNone(client.lost)
        self.assertEqual(pair.b.liveChannels(), 0)

    def test_shutdown_without_half_close_protocol_closes(self) -> None:
        from twisted.internet.protocol import Protocol

        class Plain(Protocol):
            lost = False

            def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
                self.lost = True

        @implementer(IChannelAcceptor)
        class Acc:
            def channelOpened(self, channel: IChannel) -> None:
                channel.accept(plain)

        plain = Plain()
        pair = LinkPair(Acc())
        ch = pair.b.openChannel(DEST, Sink())
        ch.loseWriteConnection()
        pair.pump()
        self.assertTrue(plain.lost)
        self.assertEqual(pair.b.liveChannels(), 0)


SIZES = [0, 1, 4, 4095, 4096, 4097, 4098, 4099, 5000, 5001, 5002, 1048575, 1048576, 1048577]


class TransferTests(SynchronousTestCase):
    def _exchange(self, pair: LinkPair, acc: Acceptor, up: bytes, down: bytes) -> None:
        client = Sink()
        ch = pair.b.openChannel(DEST, client)
        ch.write(up)
        ch.loseWriteConnection()
        pair.pump()
        rch, server = acc.accepted[-1]
        rch.write(down)
        rch.loseWriteConnection()
        pair.pump()
        self.assertEqual(hashlib.sha1(server.data).digest(), hashlib.sha1(up).digest())
        self.assertEqual(hashlib.sha1(client.data).digest(), hashlib.sha1(down).digest())
        self.assertTrue(server.eof and client.eof)
        ch.loseConnection()
        rch.loseConnection()
        pair.pump()

    def test_corners_matrix(self) -> None:
        """TestMuxCorners: 14 x 14 sizes, both directions, half-close, SHA compared."""
        acc = Acceptor()
        pair = LinkPair(acc)
        blob = os.urandom(max(SIZES))
        for up in SIZES:
            for down in SIZES:
                self._exchange(pair, acc, blob[:up], blob[-down:] if down else b"")
        self.assertEqual((pair.a.liveChannels(), pair.b.liveChannels()), (0, 0))
        self.assertEqual(pair.a.stats.protocol_errors + pair.b.stats.protocol_errors, 0)

    def test_read_write_1mib_each_way_in_tiny_link_pieces(self) -> None:
        """TestMuxReadWrite, with the link delivering 1000-byte pieces (frames split)."""
        acc = Acceptor()
        pair = LinkPair(acc)
        up, down = os.urandom(1 << 20), os.urandom(1 << 20)
        client = Sink()
        ch = pair.b.openChannel(DEST, client)
        ch.write(up)
        pair.pump(chunk=1000)
        rch, server = acc.accepted[0]
        rch.write(down)
        pair.pump(chunk=997)
        self.assertEqual(server.data, up)
        self.assertEqual(client.data, down)

    def test_concurrent_500_channels_odd_window(self) -> None:
        """TestMuxConcurrent: 500 channels, 2 windows each way, server window 65535."""
        acc = Acceptor(echo=True)
        pair = LinkPair(acc, window=65535, windowB=65536)
        rng = random.Random(6)
        payloads = [rng.randbytes(131072) for _ in range(4)]
        sinks = []
        for i in range(500):
            s = Sink()
            c = pair.b.openChannel(DEST, s)
            c.write(payloads[i % 4])
            c.loseWriteConnection()
            sinks.append((i, s))
        pair.pump()
        for i, s in sinks:
            self.assertEqual(s.sha(), hashlib.sha1(payloads[i % 4]).hexdigest())
            self.assertIsNotNone(s.lost)
        self.assertEqual((pair.a.liveChannels(), pair.b.liveChannels()), (0, 0))


class FlowControlTests(SynchronousTestCase):
    def test_nothing_sent_before_window(self) -> None:
        pair = LinkPair(Acceptor())
        pair.pump()
        pair.ta.clear()
        pair.tb.clear()
        ch = pair.b.openChannel(DEST, Sink())
        ch.write(b"x" * 10)
        kinds = [type(f).__name__ for f in parse_frames(pair.tb.value())]
        self.assertEqual(kinds, ["Open", "Window"])  # Data waits for the peer's Window

    def test_sender_respects_window_and_pauses_producer(self) -> None:
        """TestWriteDeadline's situation: the peer never reads, the window closes."""
        acc = Acceptor()
        pair = LinkPair(acc)
        ch = pair.b.openChannel(DEST, Sink())
        producer = FakeProducer()
        ch.registerProducer(producer, True)
        pair.pump()
        acc.accepted[0][0].pauseProducing()  # the server application stops reading
        ch.write(b"a" * 200_000)
        pair.pump()
        self.assertEqual(producer.state, "paused")
        self.assertEqual(ch._wr_sent, 65536)  # exactly one window, not a byte more
        rch = cast(Channel, acc.accepted[0][0])  # its receive buffer is looked at
        self.assertLessEqual(rch._recvlen, 65536)  # memory bounded by the window
        self.assertGreaterEqual(pair.b.stats.window_stalls, 1)
        rch.resumeProducing()
        pair.pump()
        self.assertEqual(len(acc.accepted[0][1].data), 200_000)
        self.assertEqual(producer.state, "producing")

    def test_window_updates_follow_consumption(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc)
        pair.record = True
        ch = pair.b.openChannel(DEST, Sink())
        ch.write(b"z" * (1 << 20))
        pair.pump()
        seqs = [f.seq for f in frames_of(pair.wire_ab) if isinstance(f, Window) and f.id == ch.id]
        self.assertEqual(seqs[0], 65536)
        self.assertEqual(seqs, sorted(seqs))
        self.assertGreaterEqual(seqs[-1], 1 << 20)
        # each update is sent when less than half a window is left (Go channel.Read)
        self.assertTrue(all(b - a >= 32768 for a, b in itertools.pairwise(seqs)))

    def test_stalled_channel_does_not_block_another(self) -> None:
        """TestWindow: a channel with a full window beside one moving 1 MiB."""
        acc = Acceptor()
        pair = LinkPair(acc)
        stalled = pair.b.openChannel(DEST, Sink())
        pair.pump()
        acc.accepted[0][0].pauseProducing()
        stalled.write(b"s" * 300_000)
        busy = pair.b.openChannel(DEST, Sink())
        busy.write(b"b" * (1 << 20))
        busy.loseWriteConnection()
        pair.pump()
        self.assertEqual(len(acc.accepted[1][1].data), 1 << 20)
        self.assertTrue(acc.accepted[1][1].eof)
        self.assertEqual(len(acc.accepted[0][1].data), 0)
        self.assertEqual(stalled._wr_sent, 65536)

    def test_window_overrun_closes_only_that_channel(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc)
        victim = pair.b.openChannel(DEST, Sink())
        other_sink = Sink()
        other = pair.b.openChannel(DEST, other_sink)
        pair.pump()
        bad = encode_data_header(victim.id, 70000) + b"q" * 70000
        pair.a.dataReceived(bad)
        other.write(b"still fine")
        pair.pump()
        self.assertEqual(acc.accepted[1][1].data, b"still fine")
        self.assertEqual(acc.accepted[0][1].data, b"")
        self.assertIsNotNone(acc.accepted[0][1].lost)
        self.assertEqual(pair.a.stats.protocol_errors, 1)
        self.assertTrue(pair.a._connected)

    def test_late_window_for_freed_id(self) -> None:
        """TestCloseThenWindowUpdate: Window for a freed id is dropped; both stay up."""
        acc = Acceptor()
        pair = LinkPair(acc)
        ch = pair.b.openChannel(DEST, Sink())
        ch.write(b"w" * 65536)
        pair.pump()
        ch.loseConnection()
        acc.accepted[0][0].loseConnection()
        pair.pump()
        pair.b.dataReceived(encode_window(ch.id, 999999))
        pair.a.dataReceived(encode_window(ch.id, 999999))
        self.assertTrue(pair.a._connected and pair.b._connected)
        self.assertEqual(pair.b.stats.unknown_id_frames, 1)

    def test_round_robin_between_channels(self) -> None:
        """Channels sharing a paused link are served one frame each in turn."""
        acc = Acceptor()
        pair = LinkPair(acc, window=1 << 20)
        chans = [pair.b.openChannel(DEST, Sink()) for _ in range(3)]
        pair.pump()
        pair.tb.clear()
        pair.b.pauseProducing()
        for i, c in enumerate(chans):
            c.write(bytes([65 + i]) * 600_000)
        self.assertEqual(pair.tb.value(), b"")
        pair.b.resumeProducing()
        order = [f.id for f in parse_frames(pair.tb.value()) if isinstance(f, Data)]
        ids = [c.id for c in chans]
        self.assertEqual(order[:6], ids + ids)

    def test_link_pause_pauses_channel_producers(self) -> None:
        pair = LinkPair(Acceptor())
        ch = pair.b.openChannel(DEST, Sink())
        pair.pump()
        producer = FakeProducer()
        ch.registerProducer(producer, True)
        pair.b.pauseProducing()
        ch.write(b"p" * 70000)
        self.assertEqual(producer.state, "paused")
        pair.b.resumeProducing()
        self.assertEqual(producer.state, "producing")


class MisbehavingPeerTests(SynchronousTestCase):
    def _pair_with_live_channel(self) -> tuple[LinkPair, Acceptor, Sink]:
        acc = Acceptor()
        pair = LinkPair(acc)
        client = Sink()
        pair.b.openChannel(DEST, client)
        pair.pump()
        return pair, acc, client

    def _still_works(self, pair: LinkPair, acc: Acceptor) -> None:
        s = Sink()
        c = pair.b.openChannel(DEST, s)
        c.write(b"alive")
        pair.pump()
        self.assertEqual(acc.accepted[-1][1].data, b"alive")

    def test_data_for_unknown_id_is_consumed(self) -> None:
        """Go parses such a payload as frames; an Open hidden inside must not open."""
        pair, acc, _ = self._pair_with_live_channel()
        hidden = encode_open(77, DEST)
        pair.a.dataReceived(encode_data_header(12345, len(hidden)) + hidden)
        self.assertNotIn(77, pair.a.channels)
        self.assertEqual(pair.a.stats.unknown_id_frames, 1)
        self.assertEqual(len(acc.accepted), 1)
        self._still_works(pair, acc)

    def test_close_and_shutdown_for_unknown_id_are_ignored(self) -> None:
        pair, acc, _ = self._pair_with_live_channel()
        pair.a.dataReceived(encode_frame(Close(4242)) + encode_frame(Shutdown(4243)))
        self.assertTrue(pair.a._connected)
        self.assertEqual(pair.a.stats.unknown_id_frames, 2)
        self._still_works(pair, acc)

    def test_open_for_live_id_closes_it(self) -> None:
        pair, acc, client = self._pair_with_live_channel()
        live_id = acc.accepted[0][0].id
        pair.a.dataReceived(encode_open(live_id, DEST))
        pair.pump()
        self.assertEqual(pair.a.stats.protocol_errors, 1)
        self.assertIsNotNone(client.lost)
        self._still_works(pair, acc)

    def test_dedicated_open_is_refused_with_close(self) -> None:
        pair, acc, _ = self._pair_with_live_channel()
        t = pair.ta
        t.clear()
        pair.a.dataReceived(
            bytes.fromhex("1100 01 04000000 01 01 0400 7f000001 901f".replace(" ", ""))
        )
        self.assertEqual(parse_frames(t.value()), [Close(4)])
        self.assertIn(4, pair.a.channels)  # until the peer's Close
        pair.a.dataReceived(encode_frame(Close(4)))
        self.assertNotIn(4, pair.a.channels)
        self.assertEqual(len(acc.accepted), 1)

    def test_garbage_closes_link_and_every_channel_once(self) -> None:
        pair, acc, _client = self._pair_with_live_channel()
        server = acc.accepted[0][1]
        pair.a.dataReceived(b"\x07\x00\x63garbage that is no frame")
        self.assertTrue(pair.ta.disconnecting)
        assert pair.a.lost_reason is not None
        self.assertIn("unknown command 99", pair.a.lost_reason)
        self.assertIsNotNone(server.lost)
        self.assertEqual(pair.a.liveChannels(), 0)
        pair.a.dataReceived(b"more garbage")  # no traceback loop
        pair.a.connectionLost(Failure(error.ConnectionDone()))
        self.assertTrue(pair.a.whenLost.called)

    def test_abrupt_drop_closes_all_channels(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc)
        clients = [Sink() for _ in range(5)]
        for c in clients:
            pair.b.openChannel(DEST, c).write(b"pending")
        pair.pump()
        pair.b.connectionLost(Failure(error.ConnectionLost("gone")))
        for c in clients:
            assert c.lost is not None
            self.assertTrue(c.lost.check(error.ConnectionLost))
        self.assertEqual(pair.b.liveChannels(), 0)
        self.assertEqual(pair.b.stats.channels_closed, 5)

    def test_abrupt_drop_mid_payload(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc)
        ch = pair.b.openChannel(DEST, Sink())
        pair.pump()
        ch.write(b"d" * 5000)
        wire = pair.tb.value()
        pair.tb.clear()
        pair.a.dataReceived(wire[: len(wire) // 2])
        pair.a.connectionLost(Failure(error.ConnectionLost()))
        self.assertIsNotNone(acc.accepted[0][1].lost)

    def test_dump_names_channels_and_counters(self) -> None:
        pair, _acc, _ = self._pair_with_live_channel()
        text = pair.b.dump()
        self.assertIn("0xffffffff", text)
        self.assertIn("window_stalls=", text)
        self.assertIn("recent frame events", text)

    def test_zero_length_data_is_accepted(self) -> None:
        pair, acc, _ = self._pair_with_live_channel()
        cid = acc.accepted[0][0].id
        pair.a.dataReceived(encode_data_header(cid, 0))
        self.assertEqual(pair.a.stats.protocol_errors, 0)
        self._still_works(pair, acc)

    def test_open_window_frames_from_raw_peer(self) -> None:
        """A raw peer (no Twisted) using 4-byte IPv4, as observed against Go."""
        acc = Acceptor()
        mux = Multiplexer(acc)
        t = StringTransport()
        mux.makeConnection(t)
        mux.dataReceived(
            HANDSHAKE + encode_frame(Open(0xFFFFFFFF, DEST)) + encode_window(0xFFFFFFFF, 65536)
        )
        mux.dataReceived(encode_frame(Data(0xFFFFFFFF, b"hello")))
        self.assertEqual(acc.accepted[0][1].data, b"hello")
        out = parse_frames(t.value()[len(HANDSHAKE) :])
        self.assertEqual(out, [Window(0xFFFFFFFF, 65536)])


class UDPOverChannelTests(SynchronousTestCase):
    def test_udp_encapsulation_is_transparent(self) -> None:
        """TestUDPEncapsulationIsTransparent: an 11-byte datagram arrives as one 11-byte datagram."""
        from vrtwist.vpnkit.frames import UDPDecoder
        from vrtwist.vpnkit.mux import MuxStats
        from vrtwist.vpnkit.proxy import send_datagram

        acc = Acceptor()
        pair = LinkPair(acc)
        ch = pair.b.openChannel(Destination.udp("127.0.0.1", 53), Sink())
        pair.pump()
        stats = MuxStats()
        self.assertTrue(send_datagram(ch, b"hello world", stats))
        pair.pump(chunk=3)
        (rec,) = UDPDecoder().feed(acc.accepted[0][1].data)
        self.assertEqual(rec.payload, b"hello world")

    def test_full_buffer_drops_and_counts_never_blocks(self) -> None:
        from vrtwist.vpnkit.mux import MuxStats
        from vrtwist.vpnkit.proxy import send_datagram

        acc = Acceptor()
        pair = LinkPair(acc)
        slow = pair.b.openChannel(Destination.udp("127.0.0.1", 53), Sink())
        fast = pair.b.openChannel(Destination.udp("127.0.0.1", 54), Sink())
        pair.pump()
        acc.accepted[0][0].pauseProducing()  # the slow flow's reader stops
        stats = MuxStats()
        for _ in range(200):
            send_datagram(slow, b"x" * 1400, stats)
            pair.pump()
        self.assertGreater(stats.datagrams_dropped, 0)
        self.assertLessEqual(slow._sendlen, 65536)
        self.assertTrue(send_datagram(fast, b"still flows", stats))
        pair.pump()
        self.assertIn(b"still flows", acc.accepted[1][1].data)
        big = b"y" * 70000
        self.assertFalse(send_datagram(fast, big, stats))  # over 65507: dropped, not sent


class TraceTests(SynchronousTestCase):
    def test_debug_trace_logs_channel_events(self) -> None:
        from twisted.logger import Logger

        events: list[dict[str, object]] = []
        acc = Acceptor()
        pair = LinkPair(acc)
        pair.a.trace = True
        pair.a._log = Logger(observer=events.append)  # type: ignore[arg-type]
        ch = pair.b.openChannel(DEST, Sink())
        ch.loseConnection()
        pair.pump()
        kinds = [(e["direction"], e["kind"]) for e in events if "kind" in e]
        self.assertEqual(kinds[:2], [("in", "open"), ("in", "close")])
        self.assertIn("tcp:127.0.0.1:8080", [e.get("dest") for e in events])


class BrokenProtocolTests(SynchronousTestCase):
    def test_exception_in_one_channel_protocol_closes_only_that_channel(self) -> None:
        class Broken(Sink):
            def dataReceived(self, data: bytes) -> None:
                raise ValueError("application bug")

        @implementer(IChannelAcceptor)
        class Acc:
            def __init__(self) -> None:
                self.sinks: list[Sink] = []

            def channelOpened(self, channel: IChannel) -> None:
                s = Broken() if not self.sinks else Sink()
                self.sinks.append(s)
                channel.accept(s)

        acc = Acc()
        pair = LinkPair(acc)
        bad_client = Sink()
        bad = pair.b.openChannel(DEST, bad_client)
        good = pair.b.openChannel(DEST, Sink())
        bad.write(b"boom")
        good.write(b"fine")
        pair.pump()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertIsNotNone(acc.sinks[0].lost)
        self.assertIsNotNone(bad_client.lost)
        self.assertEqual(acc.sinks[1].data, b"fine")
        self.assertTrue(pair.a._connected)
        self.assertEqual(pair.a.liveChannels(), 1)


class ChannelLimitTests(SynchronousTestCase):
    def test_opens_beyond_the_limit_are_refused(self) -> None:
        acc = Acceptor()
        pair = LinkPair(acc)
        pair.a.max_channels = 3
        sinks = [Sink() for _ in range(5)]
        for s in sinks:
            pair.b.openChannel(DEST, s)
        pair.pump()
        self.assertEqual(len(acc.accepted), 3)
        self.assertEqual([s.lost is not None for s in sinks], [False, False, False, True, True])
        self.assertEqual(pair.a.stats.channels_refused, 2)

"""Go's TestReadDeadline and TestWriteDeadline in Twisted's idiom.

Go's channels are blocking ``net.Conn`` objects with deadlines.  Here a channel is a push
transport, so a read deadline is an idle timer on the protocol
(``twisted.protocols.policies.TimeoutMixin``) and a write deadline is a timer started when
the channel pauses its producer (the peer's window is shut).  Either one ends only its own
channel; the link and the other channels go on.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.protocols.policies import TimeoutMixin
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.vpnkit.frames import Destination
from vrtwist.vpnkit.testing import Acceptor, LinkPair, Sink

DEST = Destination.tcp("127.0.0.1", 8080)


class IdleSink(Sink, TimeoutMixin):
    """A reader with a read deadline: no data for ``timeout`` seconds closes the channel."""

    def __init__(self, clock: Clock, timeout: float) -> None:
        super().__init__()
        self.clock = clock
        self.timed_out = False
        self._timeout = timeout

    def callLater(self, period: float, func: object) -> object:  # TimeoutMixin's clock
        return self.clock.callLater(period, func)  # type: ignore[arg-type]

    def connectionMade(self) -> None:
        super().connectionMade()
        self.setTimeout(self._timeout)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def timeoutConnection(self) -> None:
        self.timed_out = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: object = None) -> None:
        self.setTimeout(None)
        super().connectionLost(reason)  # type: ignore[arg-type]


class ReadDeadlineTests(SynchronousTestCase):
    def test_read_with_no_data_times_out_alone(self) -> None:
        clock = Clock()
        acc = Acceptor()
        pair = LinkPair(acc)
        idle = IdleSink(clock, 5.0)
        quiet = pair.b.openChannel(DEST, idle)
        busy_sink = Sink()
        busy = pair.b.openChannel(DEST, busy_sink)
        pair.pump()
        clock.advance(4.0)
        acc.accepted[1][0].write(b"still here")  # the other channel keeps talking
        pair.pump()
        self.assertFalse(idle.timed_out)
        clock.advance(1.5)
        pair.pump()
        self.assertTrue(idle.timed_out)
        self.assertIsNotNone(acc.accepted[0][1].lost)  # the far end saw the Close
        self.assertTrue(quiet.sent_close)
        # nothing else was lost: the link and the busy channel work on
        busy.write(b"ping")
        acc.accepted[1][0].write(b"pong")
        pair.pump()
        self.assertEqual(acc.accepted[1][1].data, b"ping")
        self.assertEqual(busy_sink.data, b"still herepong")
        self.assertTrue(pair.a._connected and pair.b._connected)

    def test_data_resets_the_deadline(self) -> None:
        clock = Clock()
        acc = Acceptor()
        pair = LinkPair(acc)
        idle = IdleSink(clock, 5.0)
        pair.b.openChannel(DEST, idle)
        pair.pump()
        for _ in range(4):
            clock.advance(3.0)
            acc.accepted[0][0].write(b"x")
            pair.pump()
        self.assertFalse(idle.timed_out)
        self.assertEqual(idle.data, b"xxxx")


class _DeadlineProducer:
    """Writes until the channel pauses it; a paused write past the deadline gives up."""

    def __init__(self, clock: Clock, channel: object, deadline: float) -> None:
        self.clock = clock
        self.channel = channel
        self.deadline = deadline
        self.timer: object = None
        self.failed = False

    def pauseProducing(self) -> None:
        self.timer = self.clock.callLater(self.deadline, self._expired)

    def resumeProducing(self) -> None:
        if self.timer is not None and self.timer.active():  # type: ignore[attr-defined]
            self.timer.cancel()  # type: ignore[attr-defined]
        self.timer = None

    def stopProducing(self) -> None:
        self.resumeProducing()

    def _expired(self) -> None:
        self.failed = True
        self.channel.abortConnection()  # type: ignore[attr-defined]


class WriteDeadlineTests(SynchronousTestCase):
    def test_peer_never_reads_write_deadline_fires_for_that_channel_only(self) -> None:
        clock = Clock()
        acc = Acceptor()
        pair = LinkPair(acc)
        stuck = pair.b.openChannel(DEST, Sink())
        other_sink = Sink()
        other = pair.b.openChannel(DEST, other_sink)
        pair.pump()
        acc.accepted[0][0].pauseProducing()  # the far application stops reading
        prod = _DeadlineProducer(clock, stuck, 2.0)
        stuck.registerProducer(prod, True)  # type: ignore[arg-type]
        stuck.write(b"w" * 300_000)  # more than the window: the write blocks
        pair.pump()
        self.assertIsNotNone(prod.timer)
        clock.advance(2.0)
        pair.pump()
        self.assertTrue(prod.failed)
        self.assertTrue(stuck.sent_close)
        other.write(b"fine")
        pair.pump()
        self.assertEqual(acc.accepted[1][1].data, b"fine")
        self.assertTrue(pair.a._connected and pair.b._connected)
        self.assertEqual(other_sink.lost, None)

"""In-memory peers for code that speaks vpnkit's multiplexed protocol (as treq ships
``treq.testing``).

:class:`LinkPair` joins two real :class:`~vrtwist.vpnkit.mux.Multiplexer` instances through
``twisted.internet.testing.StringTransport`` and a :class:`~twisted.internet.task.Clock`,
so a test drives both ends of a link without a reactor or a socket: write on a channel,
call :meth:`LinkPair.pump`, read what the other side's protocol got. :class:`Acceptor`
accepts (or refuses) every channel the peer opens and gives each a :class:`Sink`, which
records what arrives and can echo it back.
"""

from __future__ import annotations

import hashlib

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.vpnkit.interfaces import IChannel, IChannelAcceptor
from vrtwist.vpnkit.mux import LAZY_CLOSE_DELAY, Multiplexer

__all__ = ["Acceptor", "LinkPair", "Sink"]


@implementer(IHalfCloseableProtocol)
class Sink(Protocol):
    """A channel's protocol that records what it is given; with ``echo`` it writes every
    chunk back and closes its side when the peer does."""

    def __init__(self, echo: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.made = False
        self.eof = False
        self.lost: Failure | None = None
        self.echo = echo

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.echo and self.transport is not None:
            self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.eof = True
        if self.echo and self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Nothing to do: the test reads ``eof`` and ``lost``."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason

    @property
    def data(self) -> bytes:
        """Everything received, in order."""
        return b"".join(self.chunks)

    def sha(self) -> str:
        """The SHA-1 of :attr:`data`: compare big transfers without printing them."""
        return hashlib.sha1(self.data).hexdigest()


@implementer(IChannelAcceptor)
class Acceptor:
    """Accepts every channel the peer opens with a fresh :class:`Sink` (or refuses all).

    ``accepted`` lists ``(channel, sink)`` in the order the channels were opened.
    """

    def __init__(self, echo: bool = False, refuse: bool = False) -> None:
        self.accepted: list[tuple[IChannel, Sink]] = []
        self.echo = echo
        self.refuse = refuse

    def channelOpened(self, channel: IChannel) -> None:
        if self.refuse:
            channel.refuse("test refuses")
            return
        sink = Sink(self.echo)
        self.accepted.append((channel, sink))
        channel.accept(sink)


class LinkPair:
    """Two multiplexers joined by ``StringTransport``; :meth:`pump` moves bytes until quiet.

    ``a`` plays the listening side (channel ids upward), ``b`` the connecting side
    (downward); ``accA``/``accB`` are their :class:`IChannelAcceptor` (``None``: the side
    accepts nothing). With ``record`` set, every pumped round's bytes are kept in
    ``wire_ab``/``wire_ba`` for tests of the exact framing.
    """

    def __init__(
        self,
        accA: IChannelAcceptor | None = None,
        accB: IChannelAcceptor | None = None,
        window: int = 65536,
        windowB: int | None = None,
        handshake: bool = True,
    ) -> None:
        self.a = Multiplexer(accA, backwards=False, window=window, handshake=handshake)
        self.b = Multiplexer(accB, backwards=True, window=windowB or window, handshake=handshake)
        self.ta = StringTransport()
        self.tb = StringTransport()
        # Lazy acknowledging Closes wait on this clock; ``pump`` lets the time pass.
        self.clock = Clock()
        self.a.clock = self.b.clock = self.clock
        self.a.makeConnection(self.ta)
        self.b.makeConnection(self.tb)
        self.wire_ab: list[bytes] = []
        self.wire_ba: list[bytes] = []
        self.record = False

    def pump(self, chunk: int | None = None, rounds: int = 1_000_000) -> None:
        """Deliver both directions' bytes (in pieces of ``chunk`` bytes if given) until
        neither side writes and no timer is pending; fail after ``rounds`` rounds."""
        for _ in range(rounds):
            da = self.ta.value()
            db = self.tb.value()
            if not da and not db:
                if not self.clock.getDelayedCalls():
                    return
                self.clock.advance(LAZY_CLOSE_DELAY)  # a quiet link: lazy frames go now
                continue
            self.ta.clear()
            self.tb.clear()
            if self.record:
                self.wire_ab.append(da)
                self.wire_ba.append(db)
            _feed(self.b, da, chunk)
            _feed(self.a, db, chunk)
        raise AssertionError("link never went quiet")


def _feed(mux: Multiplexer, data: bytes, chunk: int | None) -> None:
    if not data or not mux._connected:
        return
    if chunk is None:
        mux.dataReceived(data)
        return
    for i in range(0, len(data), chunk):
        mux.dataReceived(data[i : i + chunk])

"""In-memory link pairs and channel protocols for the multiplexer tests."""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.vpnkit.interfaces import IChannelAcceptor
from vrtwist.vpnkit.mux import LAZY_CLOSE_DELAY, Channel, Multiplexer


@implementer(IHalfCloseableProtocol)
class Sink(Protocol):
    """Records what a channel delivers."""

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
        if self.echo:
            self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.eof = True
        if self.echo:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def sha(self) -> str:
        return hashlib.sha1(self.data).hexdigest()


@implementer(IChannelAcceptor)
class Acceptor:
    """Accepts every channel with a fresh Sink (optionally echoing)."""

    def __init__(self, echo: bool = False, refuse: bool = False) -> None:
        self.accepted: list[tuple[Channel, Sink]] = []
        self.echo = echo
        self.refuse = refuse

    def channelOpened(self, channel: Any) -> None:
        if self.refuse:
            channel.refuse("test refuses")
            return
        sink = Sink(self.echo)
        self.accepted.append((channel, sink))
        channel.accept(sink)


class LinkPair:
    """Two multiplexers joined by StringTransports; ``pump`` moves bytes until quiet.

    ``a`` plays the listening side (ids upward), ``b`` the connecting side (downward).
    """

    def __init__(
        self,
        accA: Any = None,
        accB: Any = None,
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

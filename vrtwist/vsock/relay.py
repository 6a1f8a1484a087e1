"""The vsock relay: each accepted connection is spliced to a backend chosen by caller CID.

One :class:`RelayInbound` per caller, one :class:`RelayOutbound` per backend
connection. Bytes go straight from one transport to the other; each transport
is registered as the other's streaming producer, so a slow reader on either
side stops reading on the other (kernel buffers hold the rest, nothing grows
without bound). EOF is passed on as a half-close (``loseWriteConnection``) in
each direction, and the pair closes when both directions are done.

Identity: the caller's CID from ``getPeer()`` on a vsock listener; on a
stand-in listener (unix/TCP) or behind another relay, the CID carried in an
incoming PROXY v2 header when ``acceptProxy`` is on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from vrtwist.bounds import ConnectionGuard, ConnectionLimits, Ticket
from vrtwist.logfields import Logger
from vrtwist.vsock import proxyv2 as P
from vrtwist.vsock.endpoints import VSockAddress, parseCID
from vrtwist.vsock.splice import SplicePair, trySplice
from vrtwist.vsock.tuning import READ_SIZE, UNIX_SOCKET_BUFFER, tuneTransport


class RouteError(ValueError):
    """A ``--backend`` specification that cannot be used."""


class IBackendRoutes(Interface):
    """Which backend endpoint serves a caller, by the caller's CID."""

    def endpointFor(cid: int | None) -> str | None:
        """The client endpoint string for ``cid`` (None: unknown caller), or None to refuse."""


@implementer(IBackendRoutes)
@dataclass
class BackendRoutes:
    """``CID=ENDPOINT`` routes plus an optional default."""

    byCID: dict[int, str] = field(default_factory=dict)
    default: str | None = None

    def add(self, spec: str) -> None:
        """Add ``CID=ENDPOINT`` or a bare ``ENDPOINT`` (the default).

        An endpoint string may itself contain ``=`` (``tcp:host=h:port=p``); a
        prefix is a CID only when it has no ``:`` before the first ``=``.
        """
        head, sep, rest = spec.partition("=")
        if sep and ":" not in head:
            try:
                cid = parseCID(head)
            except ValueError as e:
                raise RouteError(f"--backend {spec!r}: {e}") from None
            if not rest:
                raise RouteError(f"--backend {spec!r}: no endpoint after '='")
            if cid in self.byCID:
                raise RouteError(f"--backend {spec!r}: CID {cid} already has a backend")
            self.byCID[cid] = rest
        else:
            if self.default is not None:
                raise RouteError(f"--backend {spec!r}: a default backend is already set")
            self.default = spec

    def endpointFor(self, cid: int | None) -> str | None:
        if cid is not None and cid in self.byCID:
            return self.byCID[cid]
        return self.default


@dataclass
class RelayConfig:
    """Knobs of one relay."""

    routes: BackendRoutes
    proxyProtocol: bool = False
    acceptProxy: bool = False
    bufferLimit: int = 256 * 1024
    headerTimeout: float = 10.0
    readSize: int = READ_SIZE
    socketBuffer: int = UNIX_SOCKET_BUFFER  # unix sockets only; TCP autotunes
    halfCloseTimeout: float = 0.0  # 0: wait for the other side forever, as TCP does
    splice: bool = True  # zero-copy kernel splice between plain TCP/unix sockets


@dataclass
class RelayStats:
    accepted: int = 0
    active: int = 0
    backendsOpen: int = 0
    spliced: int = 0
    refused: int = 0
    backendFailures: int = 0
    bytesToBackend: int = 0
    bytesToCaller: int = 0


def headerFor(peer: IAddress, host: IAddress) -> P.ProxyHeader:
    """Describe a caller for the backend as a PROXY v2 header."""
    if isinstance(peer, VSockAddress) and isinstance(host, VSockAddress):
        return P.ProxyHeader(
            source=(peer.cid, peer.port), destination=(host.cid, host.port), vsock=True
        )
    if isinstance(peer, IPv4Address | IPv6Address) and isinstance(host, IPv4Address | IPv6Address):
        fam = P.AF_INET6 if isinstance(peer, IPv6Address) else P.AF_INET
        return P.ProxyHeader(
            family=fam,
            source=(peer.host, peer.port),
            destination=(host.host, host.port),
        )
    if hasattr(peer, "name"):
        src = peer.name or b""
        dst = getattr(host, "name", b"") or b""
        return P.ProxyHeader(
            family=P.AF_UNIX,
            source=src.decode() if isinstance(src, bytes) else str(src),
            destination=dst.decode() if isinstance(dst, bytes) else str(dst),
        )
    return P.ProxyHeader()


def _setReadSize(transport: Any, size: int, socketBuffer: int = UNIX_SOCKET_BUFFER) -> None:
    """Bulk sizing for one transport (see :mod:`vrtwist.vsock.tuning`)."""
    tuneTransport(transport, size, socketBuffer)


@implementer(IHalfCloseableProtocol)
class RelayInbound(Protocol):
    """The caller's side (the guest, or an upstream relay)."""

    _log = Logger()

    def __init__(self, relay: VSockRelayFactory) -> None:
        self.relay = relay
        self.config = relay.config
        self.outbound: RelayOutbound | None = None
        self.header: P.ProxyHeader | None = None
        self._waitingHeader = relay.config.acceptProxy
        self._headerBuf = b""
        self._headerTimer: IDelayedCall | None = None
        self._pending: list[bytes] = []
        self._pendingLen = 0
        self._paused = False
        self._connecting: Deferred[Any] | None = None
        self._halfCloseTimer: IDelayedCall | None = None
        self.readClosed = False
        self.closed = False
        self.cid: int | None = None
        self.splice: SplicePair | None = None
        self.bytesIn = 0
        self.bytesOut = 0
        self._ticket: Ticket | None = None

    def connectionMade(self) -> None:
        guard = self.relay.guard
        if guard is not None:
            t: Any = self.transport
            self._ticket = guard.open(lambda why: t.abortConnection())
        _setReadSize(self.transport, self.config.readSize, self.config.socketBuffer)
        self.relay.stats.accepted += 1
        self.relay.stats.active += 1
        self.peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.host = self.transport.getHost()  # type: ignore[union-attr]
        if isinstance(self.peer, VSockAddress):
            self.cid = self.peer.cid
        if self._waitingHeader:
            self._headerTimer = self.relay.clock.callLater(
                self.config.headerTimeout, self._headerExpired
            )
        else:
            self._route(headerFor(self.peer, self.host))

    def _headerExpired(self) -> None:
        self._headerTimer = None
        self._log.warn("caller {peer} sent no PROXY v2 header; closing", peer=str(self.peer))
        self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self._waitingHeader:
            self._headerBuf += data
            try:
                got = P.decode(self._headerBuf)
            except P.ProxyProtocolError as e:
                self._log.warn("caller {peer}: {error}; closing", peer=str(self.peer), error=str(e))
                self.relay.stats.refused += 1
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
            if got is None:
                return
            header, used = got
            rest = self._headerBuf[used:]
            self._headerBuf = b""
            self._waitingHeader = False
            if self._headerTimer is not None and self._headerTimer.active():
                self._headerTimer.cancel()
            self._headerTimer = None
            if header.command == P.CMD_LOCAL:
                header = headerFor(self.peer, self.host)
            elif header.source_cid is not None:
                self.cid = header.source_cid
            self._route(header)
            if rest:
                self._toBackend(rest)
            return
        if self._ticket is not None:
            self._ticket.received(1 if self.outbound is not None else 0)
        self._toBackend(data)

    def _toBackend(self, data: bytes) -> None:
        self.bytesIn += len(data)
        self.relay.stats.bytesToBackend += len(data)
        out = self.outbound
        if out is not None and not self._pending:
            out.transport.write(data)  # type: ignore[union-attr]
            return
        self._pending.append(data)
        self._pendingLen += len(data)
        if self._pendingLen >= self.config.bufferLimit and not self._paused:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def _route(self, header: P.ProxyHeader) -> None:
        self.header = header
        where = self.relay.routes.endpointFor(self.cid)
        if where is None:
            self._log.warn(
                "no backend for caller {peer} (CID {cid}); closing",
                peer=str(self.peer),
                cid=self.cid,
            )
            self.relay.stats.refused += 1
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        try:
            ep = self.relay.endpoint(where)
        except Exception as e:  # noqa: BLE001 - peer's bad backend: refused, logged
            self._log.error("backend {where!r} is not a usable endpoint: {e}", where=where, e=e)
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.where = where
        d = connectProtocol(ep, RelayOutbound(self))
        self._connecting = d
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, out: RelayOutbound) -> None:
        self._connecting = None
        if self.closed:
            out.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.outbound = out
        if self._ticket is not None:
            self._ticket.received(1)  # relayed: no longer a stale candidate first
        if self.config.splice and self._startSplice(out):
            return
        if self.config.proxyProtocol and self.header is not None:
            out.transport.write(P.encode(self.header))  # type: ignore[union-attr]
        if self._pending:
            out.transport.write(b"".join(self._pending))  # type: ignore[union-attr]
            self._pending = []
            self._pendingLen = 0
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        # Each side throttles the other: a full write buffer stops the other's reads.
        self.transport.registerProducer(out.transport, True)  # type: ignore[union-attr]
        out.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
        if self.readClosed:
            out.transport.loseWriteConnection()  # type: ignore[union-attr]
            self._maybeDone()

    def _startSplice(self, out: RelayOutbound) -> bool:
        """Hand both sockets to the kernel splice path; False keeps the ordinary one."""
        preload = b""
        if self.config.proxyProtocol and self.header is not None:
            preload = P.encode(self.header)
        preload += b"".join(self._pending)
        pair = trySplice(
            self.transport,
            out.transport,
            preload,
            self.readClosed,
            self._spliced,
            self._spliceDone,
            self._spliceHalfDone,
        )
        if pair is None:
            return False
        self.splice = pair
        self.relay.stats.spliced += 1
        self._pending = []
        self._pendingLen = 0
        self._paused = False
        return True

    def _spliced(self, toBackend: bool, n: int) -> None:
        if toBackend:
            self.bytesIn += n
            self.relay.stats.bytesToBackend += n
        else:
            self.bytesOut += n
            self.relay.stats.bytesToCaller += n

    def _spliceHalfDone(self) -> None:
        if self.config.halfCloseTimeout > 0 and self._halfCloseTimer is None:
            self._halfCloseTimer = self.relay.clock.callLater(
                self.config.halfCloseTimeout, self._halfCloseExpired
            )

    def _spliceDone(self, reason: BaseException | None) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]
        if self.outbound is not None:
            self.outbound.transport.loseConnection()  # type: ignore[union-attr]

    def _failed(self, reason: Failure) -> None:
        self._connecting = None
        self.relay.stats.backendFailures += 1
        if not self.closed:
            self._log.warn(
                "backend {where} for caller {peer} failed: {why}",
                where=self.where,
                peer=str(self.peer),
                why=reason.getErrorMessage(),
            )
            self.transport.loseConnection()  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        if self.readClosed:
            return
        self.readClosed = True
        if self.outbound is not None:
            self.outbound.transport.loseWriteConnection()  # type: ignore[union-attr]
            self._maybeDone()

    def writeConnectionLost(self) -> None:
        """Our write side is shut: nothing to do, the backend's EOF caused it."""

    def _maybeDone(self) -> None:
        out = self.outbound
        if out is None:
            return
        if self.readClosed and out.readClosed:
            self.transport.loseConnection()  # type: ignore[union-attr]
            out.transport.loseConnection()  # type: ignore[union-attr]
        elif (
            self.config.halfCloseTimeout > 0
            and (self.readClosed or out.readClosed)
            and self._halfCloseTimer is None
        ):
            self._halfCloseTimer = self.relay.clock.callLater(
                self.config.halfCloseTimeout, self._halfCloseExpired
            )

    def _halfCloseExpired(self) -> None:
        """One direction ended long ago and the other never did: close both (socat's -t)."""
        self._halfCloseTimer = None
        self._log.info(
            "caller {peer}: other direction still open {t}s after EOF; closing",
            peer=str(self.peer),
            t=self.config.halfCloseTimeout,
        )
        self.transport.loseConnection()  # type: ignore[union-attr]
        if self.outbound is not None:
            self.outbound.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.relay.stats.active -= 1
        if self._ticket is not None:
            self._ticket.release()
        for timer in (self._headerTimer, self._halfCloseTimer):
            if timer is not None and timer.active():
                timer.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        if self.splice is not None and not self.splice.finished:
            self.splice.stop()  # closes the pipes
        out = self.outbound
        if out is not None and not out.closed:
            out.transport.loseConnection()  # type: ignore[union-attr]
        self._log.debug(
            "caller {peer} done: {i} bytes to backend, {o} bytes back",
            peer=str(self.peer) if hasattr(self, "peer") else "?",
            i=self.bytesIn,
            o=self.bytesOut,
        )


@implementer(IHalfCloseableProtocol)
class RelayOutbound(Protocol):
    """The backend's side of one relayed connection."""

    def __init__(self, inbound: RelayInbound) -> None:
        self.inbound = inbound
        self.readClosed = False
        self.closed = False

    def connectionMade(self) -> None:
        _setReadSize(self.transport, self.inbound.config.readSize, self.inbound.config.socketBuffer)
        self.inbound.relay.stats.backendsOpen += 1

    def dataReceived(self, data: bytes) -> None:
        self.inbound.bytesOut += len(data)
        self.inbound.relay.stats.bytesToCaller += len(data)
        self.inbound.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        if self.readClosed:
            return
        self.readClosed = True
        self.inbound.transport.loseWriteConnection()  # type: ignore[union-attr]
        self.inbound._maybeDone()

    def writeConnectionLost(self) -> None:
        """Our write side is shut because the caller sent EOF."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        self.inbound.relay.stats.backendsOpen -= 1
        if not self.inbound.closed:
            self.inbound.transport.loseConnection()  # type: ignore[union-attr]


#: Callers: the PROXY header keeps its own deadline (``headerTimeout``), and a relayed
#: stream may be silent for as long as its application likes (data may also bypass us
#: through splice), so only the cap: at most 1024 callers (each holds two sockets and
#: maybe a pipe), the oldest not yet relayed, else the one idle the longest, closed for
#: a newcomer.
RELAY_LIMITS = ConnectionLimits(max_connections=1024, first_frame=None, partial=None, idle=None)


class VSockRelayFactory(Factory):
    """Accepts callers for one listener; shares the routes, endpoints and stats."""

    noisy = False

    def __init__(self, clock: Any, config: RelayConfig) -> None:
        self.clock = clock
        self.config = config
        self.routes: IBackendRoutes = config.routes
        self.stats = RelayStats()
        self._endpoints: dict[str, Any] = {}
        #: the cap on callers (RELAY_LIMITS); None without a clock to time it
        self.guard: ConnectionGuard | None = (
            ConnectionGuard(clock, RELAY_LIMITS, "vsock-relay")
            if IReactorTime.providedBy(clock)
            else None
        )

    def endpoint(self, where: str) -> Any:
        ep = self._endpoints.get(where)
        if ep is None:
            ep = self._endpoints[where] = clientFromString(self.clock, where)
        return ep

    def buildProtocol(self, addr: Any) -> RelayInbound:
        return RelayInbound(self)

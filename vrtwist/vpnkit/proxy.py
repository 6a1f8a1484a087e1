"""What each side does with a channel: splice it to a local stream, or relay UDP records.

A :class:`Splice` joins a channel and a local TCP/unix connection the way Go's
``ProxyStream`` does (each EOF becomes a half-close on the other side, both EOFs close
both), but with push producers both ways instead of copy loops, so a slow end pauses
only its own channel.  :class:`ForwardingAcceptor` is the forwarder role: it accepts
every channel at once (sending our Window before dialling, as Go does) and connects it
to its destination; a destination that refuses is answered with Close.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from typing import Any

from twisted.internet import error
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import IHalfCloseableProtocol, ITransport
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.logfields import Logger
from vrtwist.vpnkit._fastwrite import adapt_read_size, send_now, shutdown_now
from vrtwist.vpnkit._lean import adopt_connected
from vrtwist.vpnkit.frames import (
    MAX_UDP_PAYLOAD,
    Destination,
    Proto,
    UDPDecoder,
    UDPRecordError,
    encode_udp_record,
)
from vrtwist.vpnkit.interfaces import IChannel, IChannelAcceptor
from vrtwist.vpnkit.mux import MuxStats
from vrtwist.vpnkit.policy import DestinationPolicy, DestinationRefused

__all__ = ["Splice", "ForwardingAcceptor", "UDPChannelRelay", "reset_on_close"]

#: Go retries a refused unix destination every 5 s for up to 120 s (a service starting).
UNIX_RETRY_INTERVAL = 5.0
UNIX_RETRY_LIMIT = 120.0


def reset_on_close(transport: Any) -> None:
    """Make the next close of a TCP socket send RST (SO_LINGER 0) instead of FIN."""
    sock = getattr(transport, "socket", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass


@implementer(IHalfCloseableProtocol)
class _End(Protocol):
    """One end of a splice; forwards everything to the other end's transport."""

    #: the channel may hand us memoryview slices: we only pass them to ``send``
    acceptsBuffers = True

    def __init__(self, splice: Splice, name: str) -> None:
        #: dropped (None) once the splice is over: see :meth:`Splice._release`
        self.splice: Splice | None = splice
        self.name = name
        self.eof = False
        self.lost = False

    _adapt = False

    def connectionMade(self) -> None:
        splice = self.splice
        if splice is None:
            return
        if self is splice.local_end:
            self._adapt = isinstance(getattr(self.transport, "bufferSize", None), int)
        splice._connected(self)

    def dataReceived(self, data: bytes) -> None:
        splice = self.splice
        if splice is None:
            return
        other = splice._other(self)
        if other.transport is not None and not other.lost:
            if other is splice.local_end:
                send_now(other.transport, [data])
            else:
                # Reading the local socket: bulk streams get bigger reads (fewer wake-ups
                # and frames per byte), small messages keep Twisted's 64 KiB.
                if self._adapt:
                    adapt_read_size(self.transport, len(data))
                other.transport.write(bytes(data))

    def readConnectionLost(self) -> None:
        self.eof = True
        if self.splice is not None:
            self.splice._eof(self)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = True
        splice = self.splice
        if splice is None:
            return
        splice._lost(self, reason)
        if self is splice.local_end and splice.onLocalLost is not None:
            splice.onLocalLost()
        splice._release()


class Splice:
    """A channel joined to a local stream connection, both ways, with backpressure."""

    _log = Logger()

    def __init__(self, resetOnRefused: bool = False, opener: Any = None) -> None:
        self.channel_end = _End(self, "channel")
        self.local_end = _End(self, "local")
        self.resetOnRefused = resetOnRefused
        #: host side: called with the splice once the local client is connected,
        #: to open the channel (``mux.openChannel(dest, splice.channel_end)``).
        self.opener = opener
        #: called once the local connection is gone (bookkeeping of the owner)
        self.onLocalLost: Any = None
        self._wired = False
        self._got_channel_data = False

    def _other(self, end: _End) -> _End:
        return self.local_end if end is self.channel_end else self.channel_end

    def _connected(self, end: _End) -> None:
        if end is self.local_end and self.opener is not None:
            try:
                self.opener(self)
            except Exception as e:
                self._log.info(
                    "cannot open a channel for {peer}: {err}",
                    peer=str(end.transport.getPeer()),  # type: ignore[union-attr]
                    err=str(e),
                )
                end.transport.loseConnection()  # type: ignore[union-attr]
            return
        other = self._other(end)
        if other.transport is None:
            if end is self.channel_end:
                # Local side not connected yet (forwarder still dialling): hold the
                # peer's bytes in the channel, bounded by our window.
                end.transport.pauseProducing()  # type: ignore[union-attr]
            return
        self._wire()

    def _wire(self) -> None:
        if self._wired:
            return
        self._wired = True
        ch = self.channel_end.transport
        local = self.local_end.transport
        assert ch is not None and local is not None
        if self.local_end.lost or self.channel_end.lost:
            self._lost(self.local_end if self.local_end.lost else self.channel_end, None)
            return
        try:
            local.setTcpNoDelay(True)  # type: ignore[attr-defined]  # as Go does by default
        except (AttributeError, OSError):
            pass
        ch.registerProducer(local, True)  # type: ignore[attr-defined]
        local.registerProducer(ch, True)  # type: ignore[attr-defined]
        ch.resumeProducing()  # type: ignore[attr-defined]
        if self.channel_end.eof and not self.local_end.lost:
            self._eof(self.channel_end)

    def _eof(self, end: _End) -> None:
        if not self._wired:
            return  # applied by _wire once the other end exists
        mux = getattr(self.channel_end.transport, "mux", None)
        if mux is None:
            self._eof_now(end)
            return
        mux.cork()  # Shutdown and Close leave in one write
        try:
            self._eof_now(end)
        finally:
            mux.uncork()

    def _eof_now(self, end: _End) -> None:
        other = self._other(end)
        if other.lost:
            return
        try:
            if other is self.local_end:
                shutdown_now(other.transport)  # the FIN now, not next iteration
            else:
                other.transport.loseWriteConnection()  # type: ignore[union-attr]
        except Exception:
            other.transport.loseConnection()  # type: ignore[union-attr]
        if end.eof and other.eof:
            # Both directions done: Shutdown went out first (Go sends Shutdown, Close).
            self.local_end.transport.loseConnection()  # type: ignore[union-attr]
            self.channel_end.transport.loseConnection()  # type: ignore[union-attr]

    def _lost(self, end: _End, reason: Failure | None) -> None:
        other = self._other(end)
        if other.transport is None or other.lost:
            return
        if (
            end is self.channel_end
            and self.resetOnRefused
            and self.channel_end.transport is not None
            and self.channel_end.transport.bytes_in == 0  # type: ignore[attr-defined]
            and not self.channel_end.eof
        ):
            # The far side closed before a single byte or EOF: the destination refused.
            # Reset the client rather than a clean FIN ("Empty reply from server").
            reset_on_close(other.transport)
            abort = getattr(other.transport, "abortConnection", None)
            if abort is not None:
                abort()
                return
        other.transport.loseConnection()  # type: ignore[union-attr]

    def abandon(self) -> None:
        """The local side could not be connected: close the channel."""
        self.local_end.lost = True
        ch = self.channel_end.transport
        if ch is not None and not self.channel_end.lost:
            ch.loseConnection()
        self._release()

    def _release(self) -> None:
        """Once both ends are over, drop the references that tie the splice in a cycle.

        The ends point at the splice and the splice at them (and the host's
        ``onLocalLost`` closes over the splice): left alone, every forwarded connection
        would stay in memory until the cyclic collector's next full run.  An end whose
        channel never opened (the host could not open one) counts as over.
        """
        ch, local = self.channel_end, self.local_end
        if not local.lost or not (ch.lost or ch.transport is None):
            return
        ch.splice = local.splice = None
        self.opener = None
        self.onLocalLost = None


class _LocalFactory(Factory):
    noisy = False

    def __init__(self, splice: Splice) -> None:
        self.splice = splice

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.splice.local_end


def destination_endpoint(reactor: Any, dest: Destination, timeout: float = 30) -> Any:
    """The client endpoint that reaches a stream destination (v4-mapped already mapped)."""
    if dest.proto == Proto.UNIX:
        assert dest.path is not None
        return UNIXClientEndpoint(reactor, dest.path, timeout=timeout)
    assert dest.ip is not None
    if isinstance(dest.ip, ipaddress.IPv6Address):
        return TCP6ClientEndpoint(reactor, str(dest.ip), dest.port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, str(dest.ip), dest.port, timeout=timeout)


#: How long a connect that did not complete at once may take (as the endpoints' 30 s).
CONNECT_TIMEOUT = 30.0


def _sockaddr(dest: Destination) -> tuple[int, Any]:
    if dest.proto == Proto.UNIX:
        return socket.AF_UNIX, dest.path
    assert dest.ip is not None
    if isinstance(dest.ip, ipaddress.IPv6Address):
        return socket.AF_INET6, (str(dest.ip), dest.port, 0, 0)
    return socket.AF_INET, (str(dest.ip), dest.port)


def dial(reactor: Any, dest: Destination, splice: Splice, failed: Any) -> None:
    """Connect a splice's local end to ``dest``, in this reactor turn when possible.

    A loopback or unix connect completes inside ``connect()``: the socket is then handed
    to the reactor at once (``adoptStreamConnection``) instead of going through a
    connector, a ``callLater(0)``, two write events and a Deferred chain per connection.
    A connect still in progress (a remote destination) waits for writability in a
    :class:`_PendingConnect`.  ``failed`` gets a :class:`Failure` of Twisted's connect
    errors, as the endpoint path gave.
    """
    family, addr = _sockaddr(dest)
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        failed(Failure(error.ConnectError(string=str(e))))
        return
    s.setblocking(False)  # TCP_NODELAY: set once the splice is wired, as for accepted sockets
    try:
        err = s.connect_ex(addr)
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            err = s.connect_ex(addr)  # loopback: usually done by now
    except OSError as e:
        err = e.errno or errno.EINVAL
    if err in (0, errno.EISCONN):
        _adopt(reactor, s, family, splice)
    elif err in (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN):
        _PendingConnect(reactor, s, family, addr, splice, failed).start()
    else:
        s.close()
        failed(Failure(error.getConnectError((err, os.strerror(err)))))


def _adopt(reactor: Any, s: socket.socket, family: int, splice: Splice) -> None:
    adopt_connected(reactor, s, splice.local_end)
    if splice.channel_end.lost and splice.local_end.transport is not None:
        splice.local_end.transport.loseConnection()


class _PendingConnect:
    """Waits for a non-blocking connect that did not complete at once (remote hosts)."""

    def __init__(
        self, reactor: Any, s: socket.socket, family: int, addr: Any, splice: Splice, failed: Any
    ) -> None:
        self.reactor = reactor
        self.socket = s
        self.family = family
        self.addr = addr
        self.splice = splice
        self.failed = failed
        self.timer: Any = None

    def start(self) -> None:
        self.reactor.addWriter(self)
        self.timer = self.reactor.callLater(CONNECT_TIMEOUT, self._timeout)

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "vpnkit-connect"

    def _done(self) -> None:
        self.reactor.removeWriter(self)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()

    def doWrite(self) -> None:
        self._done()
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.socket.close()
            self.failed(Failure(error.getConnectError((err, os.strerror(err)))))
            return
        if self.splice.channel_end.lost:
            self.socket.close()
            return
        _adopt(self.reactor, self.socket, self.family, self.splice)

    def connectionLost(self, reason: Failure) -> None:
        # epoll reports a failed connect as an error event: say what the socket says.
        self._done()
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.socket.close()
        if err:
            reason = Failure(error.getConnectError((err, os.strerror(err))))
        self.failed(reason)

    def _timeout(self) -> None:
        self.timer = None
        self.reactor.removeWriter(self)
        self.socket.close()
        self.failed(Failure(error.TimeoutError(string=f"connect to {self.addr!r}")))


@implementer(IChannelAcceptor)
class ForwardingAcceptor:
    """The forwarder role: connect each channel the peer opens to its destination."""

    _log = Logger()

    unixRetryInterval = UNIX_RETRY_INTERVAL
    unixRetryLimit = UNIX_RETRY_LIMIT

    def __init__(
        self,
        reactor: Any,
        stats: MuxStats | None = None,
        policy: DestinationPolicy | None = None,
    ) -> None:
        self.reactor = reactor
        self.stats = stats if stats is not None else MuxStats()
        self.refused = 0
        #: Destinations the peer may have dialled (TCP/UDP; unix only under listed dirs).
        self.policy = policy if policy is not None else DestinationPolicy()
        #: Channels refused by :attr:`policy` (never dialled).
        self.disallowed = 0

    def channelOpened(self, channel: IChannel) -> None:
        try:
            dest = self.policy.check(channel.destination)
        except DestinationRefused as e:
            # Close is the protocol's refusal; refuse() logs the one line, reason bounded
            self.disallowed += 1
            channel.refuse(f"not allowed: {e}")
            return
        if dest.proto == Proto.UDP:
            self._udp(channel, dest)
            return
        splice = Splice()
        channel.accept(splice.channel_end)
        self._dial(channel, dest, splice, self.reactor.seconds())

    def _dial(self, channel: IChannel, dest: Destination, splice: Splice, started: float) -> None:
        def failed(f: Failure) -> None:
            if splice.channel_end.lost:
                return
            if (
                dest.proto == Proto.UNIX
                and f.check(error.ConnectionRefusedError, error.ConnectError)
                and self.reactor.seconds() - started + self.unixRetryInterval <= self.unixRetryLimit
            ):
                self._log.info(
                    "{dest} refused, retrying in {t}s", dest=str(dest), t=self.unixRetryInterval
                )
                self.reactor.callLater(
                    self.unixRetryInterval, self._dial, channel, dest, splice, started
                )
                return
            self.refused += 1
            self._log.info(
                "connection refused to destination {dest} for channel {id:#x}: {err}",
                dest=str(dest),
                id=channel.id,
                err=f.getErrorMessage(),
            )
            splice.abandon()

        if hasattr(self.reactor, "adoptStreamConnection"):
            dial(self.reactor, dest, splice, failed)
            return
        # Reactors that cannot adopt sockets (test doubles): the endpoint path.
        d = destination_endpoint(self.reactor, dest).connect(_LocalFactory(splice))

        def connected(proto: Any) -> None:
            if splice.channel_end.lost:
                proto.transport.loseConnection()

        d.addCallbacks(connected, failed)

    def _udp(self, channel: IChannel, dest: Destination) -> None:
        assert dest.ip is not None
        relay = UDPChannelRelay(self.stats, connected=(str(dest.ip), dest.port))
        try:
            if isinstance(dest.ip, ipaddress.IPv6Address):
                self.reactor.listenUDP(0, relay, interface="::")
            else:
                self.reactor.listenUDP(0, relay)
        except Exception as e:
            channel.refuse(f"udp to {dest}: {e}")
            return
        channel.accept(relay.channel_protocol)


class _UDPChannelProtocol(Protocol):
    """Decodes the UDP records arriving on a channel and hands them to the relay."""

    def __init__(self, relay: UDPChannelRelay) -> None:
        self.relay = relay
        self.decoder = UDPDecoder()

    def dataReceived(self, data: bytes) -> None:
        try:
            records = self.decoder.feed(data)
        except UDPRecordError as e:
            self.relay._log.warn("malformed UDP record on channel: {err}; closing it", err=str(e))
            assert self.transport is not None
            self.transport.loseConnection()
            return
        for rec in records:
            self.relay.stats.datagrams_in += 1
            self.relay.fromChannel(rec.payload)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.relay.channelLost()


class UDPChannelRelay(DatagramProtocol):
    """Forwarder side of a UDP channel: a UDP socket talking to the destination only.

    The socket is deliberately not ``connect()``ed: Twisted's connected UDP port drops
    itself when an ICMP port-unreachable arrives, and Go's TestUDPWriteError wants the
    flow to survive a backend that is not there yet.  Replies from other addresses are
    ignored, as a connected socket would.

    Outbound datagrams that do not fit the channel's send buffer are dropped and counted
    (UDP semantics), so one slow flow never blocks anything else.
    """

    _log = Logger()

    def __init__(self, stats: MuxStats, connected: tuple[str, int]) -> None:
        self.stats = stats
        self.connected_to = connected
        self.channel_protocol = _UDPChannelProtocol(self)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if (addr[0], addr[1]) != self.connected_to:
            return  # what a connected socket would filter out
        ch = self.channel_protocol.transport
        if ch is None:
            return
        send_datagram(ch, datagram, self.stats)  # type: ignore[arg-type]

    def connectionRefused(self) -> None:
        # ICMP port unreachable: keep the flow; the service may come up (Go TestUDPWriteError).
        pass

    def fromChannel(self, payload: bytes) -> None:
        if self.transport is not None:
            try:
                self.transport.write(payload, self.connected_to)
            except OSError:
                self.stats.datagrams_dropped += 1

    def channelLost(self) -> None:
        if self.transport is not None:
            self.transport.stopListening()  # type: ignore[attr-defined]


def send_datagram(channel: ITransport, datagram: bytes, stats: MuxStats) -> bool:
    """Write one datagram as a UDP record, or drop it (counted) when it does not fit."""
    if len(datagram) > MAX_UDP_PAYLOAD:
        stats.datagrams_dropped += 1
        return False
    rec = encode_udp_record(datagram)
    if channel.sendBufferFree() < len(rec):  # type: ignore[attr-defined]
        stats.datagrams_dropped += 1
        return False
    channel.write(rec)
    stats.datagrams_out += 1
    return True

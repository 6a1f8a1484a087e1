"""The vpnkit multiplexer: many channels over one link, with per-channel windows.

Modelled on ``twisted/web/_http2.py`` (a stream is a transport for its protocol, sends
are held back by the peer's window, our window is re-opened only when the application
*consumed* bytes) and on magic-wormhole dilation's outbound (channels with something to
send queue up once each and are served round robin, one frame per turn, while the link
itself is not paused).  The wire rules are those of moby/vpnkit's Go ``libproxy`` (see
``docs/vpnkit.md``), with its crash-on-bad-peer cases replaced by per-channel handling.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, fields
from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.bounds import ConnectionGuard, Ticket
from vrtwist.logfields import Logger
from vrtwist.vpnkit._fastwrite import adapt_read_size, link_buffers, plain_reads, send_now
from vrtwist.vpnkit.frames import (
    HANDSHAKE,
    BadOpen,
    Close,
    DataHeader,
    Destination,
    FrameDecoder,
    HandshakeDecoder,
    HandshakeError,
    Open,
    Payload,
    Shutdown,
    Window,
    encode_close,
    encode_data_header,
    encode_open,
    encode_shutdown,
    encode_window,
)
from vrtwist.vpnkit.interfaces import IChannel, IChannelAcceptor, IMultiplexer

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_DATA_FRAME",
    "Channel",
    "ChannelAddress",
    "Multiplexer",
    "MultiplexerFactory",
    "MuxStats",
]

#: What Go advertises (``defaultWindowSize``) and what we advertise unless told otherwise.
DEFAULT_WINDOW = 65536
#: A channel whose sender keeps filling its window gets a bigger one, up to this.
DEFAULT_WINDOW_MAX = 1 << 20
#: Extra bytes the grown windows of one link may promise in total (memory bound).
WINDOW_BUDGET = 64 << 20
#: Largest Data payload we put in one frame (the window usually limits it first).
MAX_DATA_FRAME = 256 * 1024
#: Link transports pause their producer above this many buffered bytes.  Reads stay at
#: Twisted's 64 KiB: a bigger recv buffer is mmap()ed and shrunk on every read.
LINK_BUFFER = 512 * 1024
#: While corked, frames are gathered and sent with one sendmsg up to this many bytes.
CORK_LIMIT = 256 * 1024
#: A Close that only acknowledges the peer's (the channel is over on both sides) waits
#: this long for another frame to share a link write with (the next Open, usually).
LAZY_CLOSE_DELAY = 0.001
_RING = 500  # recent frame events kept for dumps, like Go's 500-entry trace
DEFAULT_MAX_CHANNELS = 16384


@dataclass
class MuxStats:
    """Counters of one multiplexer (and of the UDP flows riding on it)."""

    channels_opened: int = 0
    channels_accepted: int = 0
    channels_refused: int = 0
    channels_closed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    window_stalls: int = 0
    unknown_id_frames: int = 0
    discarded_bytes: int = 0
    protocol_errors: int = 0
    datagrams_in: int = 0
    datagrams_out: int = 0
    datagrams_dropped: int = 0
    windows_skipped: int = 0
    windows_grown: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def add(self, other: MuxStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@implementer(IAddress)
@dataclass(frozen=True)
class ChannelAddress:
    """The address a channel's protocol sees: channel id and destination."""

    id: int
    destination: Destination | None

    def __str__(self) -> str:
        return f"channel {self.id:#x} -> {self.destination}"


@implementer(IChannel)
class Channel:
    """One logical connection; a transport for its protocol, with two windows.

    Memory is bounded by the window both ways: the send buffer pauses its producer at
    ``window`` bytes, and the peer cannot send more than we advertised, so the receive
    buffer (used only while our consumer is paused) cannot outgrow the window either.
    """

    _log = Logger()
    disconnecting = False

    def __init__(
        self, mux: Multiplexer, id: int, destination: Destination | None, window: int
    ) -> None:
        self.mux = mux
        self.id = id
        self.destination = destination
        self.protocol: IProtocol | None = None
        self._window = window
        #: what we advertise beyond what was consumed: ``window`` at first, grown for a
        #: sender that keeps using all of it (see _reopen_window)
        self._rwin = window
        # sending: peer's window
        self._wr_allowed = 0
        self._wr_sent = 0
        self._sendbuf: deque[bytes | memoryview] = deque()
        self._sendlen = 0
        self._queued = False
        self._stalled = False
        # receiving: our window
        self._rd_allowed = 0
        self._rd_received = 0
        self._rd_consumed = 0
        self._recvbuf: deque[bytes | memoryview] = deque()
        self._raw = False
        self._recvlen = 0
        self._paused = False
        self._delivering = False
        # producer registered on us (the local socket feeding this channel)
        self._producer: IPushProducer | None = None
        self._producer_paused = False
        # half-close / close
        self._want_shutdown = False
        self._want_close = False
        self.sent_shutdown = False
        self.sent_close = False
        self.recv_shutdown = False
        self.recv_close = False
        self._eof_delivered = False
        self._finished = False
        self.bytes_in = 0
        self.bytes_out = 0

    def __repr__(self) -> str:
        return f"<Channel {self.id:#x} {self.destination} {self.state()}>"

    def state(self) -> str:
        flags = []
        if self.sent_shutdown:
            flags.append("shut-out")
        if self.recv_shutdown:
            flags.append("shut-in")
        if self.sent_close:
            flags.append("closed-out")
        if self.recv_close:
            flags.append("closed-in")
        if self._paused:
            flags.append("paused")
        if self._producer_paused:
            flags.append("stalled")
        return ",".join(flags) or "open"

    # acceptance ------------------------------------------------------------------------

    def accept(self, protocol: IProtocol) -> None:
        if self.protocol is not None or self.sent_close:
            raise RuntimeError(f"channel {self.id:#x} already accepted or closed")
        self.mux.stats.channels_accepted += 1
        self._attach(protocol)
        self._advertise_initial()

    def refuse(self, reason: str) -> None:
        self.mux.stats.channels_refused += 1
        self._log.info(
            "refusing channel {id:#x} to {dest}: {reason}",
            id=self.id,
            dest=str(self.destination),
            reason=reason,
        )
        self._send_close()

    def _attach(self, protocol: IProtocol) -> None:
        self.protocol = protocol
        self._raw = bool(getattr(protocol, "acceptsBuffers", False))
        try:
            protocol.makeConnection(self)  # type: ignore[arg-type]
        except Exception:
            self._log.failure("channel {id:#x} protocol failed to start; closing", id=self.id)
            self.abortConnection()

    def _advertise_initial(self) -> None:
        if not self.sent_close and not self.recv_close:
            self._rd_allowed = self._window
            frame = encode_window(self.id, self._window)
            mux = self.mux
            if mux._cork:
                # A Shutdown later in the same link read makes it pointless (see _on_shutdown)
                mux._initial[self.id] = frame
            mux._write(frame)

    # ITransport ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._want_shutdown or self._want_close or self.sent_close or self.recv_close:
            self.mux.stats.discarded_bytes += len(data)
            return
        if not data:
            return
        self._sendbuf.append(data)
        self._sendlen += len(data)
        self._ready_to_send()

    def writeSequence(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def _ready_to_send(self) -> None:
        if self._wr_allowed > self._wr_sent:
            self.mux._schedule(self)
        elif not self._stalled and self._wr_allowed:
            self._stalled = True
            self.mux.stats.window_stalls += 1
        if (
            self._sendlen >= self._window
            and self._producer is not None
            and not self._producer_paused
        ):
            self._producer_paused = True
            self._producer.pauseProducing()

    def sendBufferFree(self) -> int:
        if self._want_shutdown or self._want_close or self.sent_close or self.recv_close:
            return 0
        return max(0, self._window - self._sendlen)

    def loseWriteConnection(self) -> None:
        if self._want_shutdown or self.sent_close or self.recv_close or self._want_close:
            return
        self._want_shutdown = True
        if not self._sendlen:
            self._send_shutdown()

    def loseConnection(self) -> None:
        if self._want_close or self.sent_close:
            return
        self._want_close = True
        self.disconnecting = True
        if not self._sendlen or self.recv_close:
            self._send_close()

    def abortConnection(self) -> None:
        self.mux.stats.discarded_bytes += self._sendlen
        self._sendbuf.clear()
        self._sendlen = 0
        self._want_close = True
        self.disconnecting = True
        if not self.sent_close:
            self._send_close()

    def getPeer(self) -> ChannelAddress:
        return ChannelAddress(self.id, self.destination)

    def getHost(self) -> ChannelAddress:
        return ChannelAddress(self.id, None)

    # IConsumer -------------------------------------------------------------------------

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:  # type: ignore[override]
        if not streaming:
            raise ValueError("channels only take streaming (push) producers")
        self._producer = producer
        self._producer_paused = False
        if self._finished:
            producer.stopProducing()
        elif self._sendlen >= self._window:
            self._producer_paused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    # IPushProducer (delivery to our protocol) -----------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._drain()

    def stopProducing(self) -> None:
        self.loseConnection()

    # sending (called by the multiplexer's round robin) --------------------------------

    def _take(self, n: int) -> list[bytes | memoryview]:
        """Remove exactly ``n`` bytes from the send buffer, splitting at most one chunk.

        A chunk bigger than the frame (a 1 MiB read, 256 KiB frames) is split into
        memoryview slices: slicing the bytes would copy the rest of it at every frame.
        """
        buf = self._sendbuf
        out: list[bytes | memoryview] = []
        left = n
        while left:
            head = buf[0]
            if len(head) <= left:
                out.append(head)
                buf.popleft()
                left -= len(head)
            else:
                mv = head if type(head) is memoryview else memoryview(head)
                out.append(mv[:left])
                buf[0] = mv[left:]
                left = 0
        self._sendlen -= n
        return out

    def _sent(self) -> None:
        """After a frame went out: requeue, finish a pending close, resume the producer."""
        if self._sendlen:
            if self._wr_allowed > self._wr_sent:
                self.mux._requeue(self)
            elif not self._stalled:
                self._stalled = True
                self.mux.stats.window_stalls += 1
        else:
            if self._want_close:
                self._send_close()
                return
            if self._want_shutdown and not self.sent_shutdown:
                self._send_shutdown()
        if (
            self._producer_paused
            and self._sendlen <= self._window // 2
            and self._producer is not None
        ):
            self._producer_paused = False
            self._producer.resumeProducing()

    def _send_shutdown(self) -> None:
        if self.sent_shutdown or self.sent_close or self.recv_close:
            return
        self.sent_shutdown = True
        self.mux._write(encode_shutdown(self.id))
        self.mux._record("out", "shutdown", self.id, 0)

    def _send_close(self) -> None:
        if self.sent_close:
            return
        self.sent_close = True
        mux = self.mux
        if self.recv_close:
            mux._write_lazy(encode_close(self.id))
        elif mux._cork:
            # The peer's Close may come later in this very read (Shutdown, Close): then
            # ours only acknowledges it and may wait (see Multiplexer._send_corked).
            mux._corked_closes.append(self)
            mux._write(encode_close(self.id))
        else:
            mux._write(encode_close(self.id))
        self._drop_buffers()
        self.mux._closed_one_way(self)
        self._finish(Failure(error.ConnectionDone("channel closed")))

    # receiving (called by the multiplexer) ---------------------------------------------

    def _window_update(self, seq: int) -> None:
        if seq > self._wr_allowed:
            self._wr_allowed = seq
            self._stalled = False
            if self._sendlen:
                self.mux._schedule(self)

    def _data_allowed(self, length: int) -> bool:
        return self._rd_received + length <= self._rd_allowed

    def _receive(self, data: bytes | memoryview) -> None:
        n = len(data)
        self._rd_received += n
        self.bytes_in += n
        if self._paused or self._recvlen or self._delivering or self.protocol is None:
            self._recvbuf.append(data)
            self._recvlen += n
            return
        self._deliver(data)

    def _deliver(self, data: bytes | memoryview) -> None:
        self._delivering = True
        try:
            assert self.protocol is not None
            # Only protocols that say so get memoryview slices of the link's reads.
            self.protocol.dataReceived(data if self._raw else bytes(data))  # type: ignore[arg-type]
        except Exception:
            # A broken channel protocol must not take the link (and every other
            # channel) down with it, which is what an exception escaping into the
            # link's dataReceived would do.
            self._log.failure("channel {id:#x} protocol failed; closing the channel", id=self.id)
            self._delivering = False
            self.abortConnection()
            return
        finally:
            self._delivering = False
        self._rd_consumed += len(data)
        if self._rd_allowed - self._rd_consumed < self._rwin // 2:
            self._reopen_window()

    def _reopen_window(self) -> None:
        if self.recv_shutdown or self.recv_close or self.sent_close:
            return
        if self._rd_received >= self._rd_allowed and self._rwin < self.mux.window_max:
            # The sender used every byte we allowed and we consumed half of it at once:
            # the window, not either end, limits this channel.  Grow it (TCP receive
            # autotuning), within the link's memory budget.
            self._rwin = self.mux._grow_window(self._rwin)
        self._rd_allowed = self._rd_consumed + self._rwin
        self.mux._write(encode_window(self.id, self._rd_allowed))

    def _drain(self) -> None:
        """Deliver buffered bytes while unpaused, then a pending EOF or close."""
        if self._delivering or self.protocol is None:
            return
        buf = self._recvbuf
        while buf and not self._paused and not self._finished:
            data = buf.popleft()
            self._recvlen -= len(data)
            self._deliver(data)
        if not buf and not self._finished:
            if self.recv_close:
                self._peer_closed()
            elif self.recv_shutdown and not self._eof_delivered and not self._paused:
                self._deliver_eof()

    def _deliver_eof(self) -> None:
        self._eof_delivered = True
        proto = self.protocol
        try:
            if IHalfCloseableProtocol.providedBy(proto):
                proto.readConnectionLost()
            else:
                self.loseConnection()
        except Exception:
            self._log.failure("channel {id:#x} protocol failed on EOF; closing", id=self.id)
            self.abortConnection()

    def _shutdown_received(self) -> None:
        if self.recv_shutdown:
            return
        self.recv_shutdown = True
        if not self._recvlen:
            self._drain()

    def _close_received(self) -> None:
        self.recv_close = True
        self._stalled = False
        # Writers fail at once (nothing more will be read by the peer); buffered
        # incoming bytes are still delivered, paused or not: they are bounded.
        self.mux.stats.discarded_bytes += self._sendlen
        self._sendbuf.clear()
        self._sendlen = 0
        self._paused = False
        if self.protocol is None:
            self._peer_closed()
        else:
            self._drain()

    def _peer_closed(self) -> None:
        if not self.sent_close:
            self._send_close()  # frees the id: both Closes seen
        else:
            self._finish(Failure(error.ConnectionDone("channel closed by peer")))

    def _drop_buffers(self) -> None:
        self._recvbuf.clear()
        self._recvlen = 0
        self._sendbuf.clear()
        self._sendlen = 0

    def _finish(self, reason: Failure) -> None:
        """Tell our protocol the channel is over (once), and let go of the producer."""
        if self._finished:
            return
        self._finished = True
        if self._rwin != self._window:
            self.mux._grown -= self._rwin - self._window
            self._rwin = self._window
        self._drop_buffers()
        self._producer = None
        proto = self.protocol
        # As tcp.Connection does: the protocol keeps its transport, the finished
        # transport lets go of the protocol (no channel <-> protocol cycle).
        self.protocol = None
        if proto is not None:
            try:
                proto.connectionLost(reason)
            except Exception:
                self._log.failure("connectionLost of channel {id:#x}", id=self.id)

    def _link_lost(self, reason: Failure) -> None:
        self.recv_close = True
        self.sent_close = True
        self._finish(reason)


@implementer(IMultiplexer, IPushProducer)
class Multiplexer(Protocol):
    """The protocol on the physical link (unix socket, vsock, TCP).

    ``backwards`` selects Go's id direction: the side that connected the link allocates
    from 0xFFFFFFFF downwards, the side that listened from 0 upwards.
    """

    _log = Logger()

    def __init__(
        self,
        acceptor: IChannelAcceptor | None = None,
        backwards: bool = False,
        window: int = 65536,
        handshake: bool = True,
        window_max: int | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if not 1024 <= window <= 0xFFFFFFFF:
            raise ValueError(f"window {window} out of range")
        if window_max is None:
            window_max = max(window, DEFAULT_WINDOW_MAX)
        if not window <= window_max <= 0xFFFFFFFF:
            raise ValueError(f"window-max {window_max} must be between the window and 2^32-1")
        self.acceptor = acceptor
        self.backwards = backwards
        self.window = window
        #: the most a channel's receive window grows to, and the extra bytes all the
        #: grown windows of this link may add up to (so memory stays bounded per link)
        self.window_max = window_max
        self.window_budget = WINDOW_BUDGET
        self._grown = 0
        self.handshake = handshake
        self.stats = MuxStats()
        self.channels: dict[int, Channel] = {}
        self.ready = False
        self.whenReady: defer.Deferred[Multiplexer] = defer.Deferred()
        #: fires (never fails) with the reason text once the link is gone
        self.whenLost: defer.Deferred[str] = defer.Deferred()
        self.lost_reason: str | None = None
        self._next = 0xFFFFFFFF if backwards else 0
        # Whole windows per frame: half-window frames (Go's 32 KiB io.Copy pieces) were
        # measured slower here, each extra frame costs the receiver a wake-up.
        self._frame_max = MAX_DATA_FRAME
        self._hs: HandshakeDecoder | None = HandshakeDecoder() if handshake else None
        self._dec = FrameDecoder()
        self._rx: Channel | None = None
        self._rx_discard = False
        self._ready_q: deque[Channel] = deque()
        self._link_paused = False
        self._flushing = False
        self._connected = False
        self._seq = itertools.count()
        self._cork = 0
        self._adapt = False
        self._corked: list[bytes | memoryview] = []
        #: initial Window frames still in ``_corked``, by channel id
        self._initial: dict[int, bytes] = {}
        #: frames that may wait for the next write (acknowledging Closes)
        self._lazy: list[bytes | memoryview] = []
        self._lazy_call: Any = None
        #: frames in ``_corked`` that somebody waits for (the rest are lazy)
        self._eager = 0
        #: channels whose (eager) Close is in ``_corked``
        self._corked_closes: list[Channel] = []
        #: IReactorTime for the lazy Close (default: the transport's reactor; the
        #: services pass theirs, a link with neither is refused when a Close must wait)
        self.clock: Any = clock
        self._corked_len = 0
        self.recent: deque[tuple[int, str, str, int, int]] = deque(maxlen=_RING)
        #: log every Open/Shutdown/Close (``--debug``)
        self.trace = False
        #: Opens beyond this many live ids are refused (a flood must not exhaust fds);
        #: each channel can hold up to two windows of memory.
        self.max_channels = DEFAULT_MAX_CHANNELS
        #: called on every link read and write (the busy poller's ``kick``)
        self.onActivity: Any = None
        #: the listener's connection guard (handshake deadline, cap), if any
        self.guard: ConnectionGuard | None = None
        self._ticket: Ticket | None = None

    # link lifecycle --------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        t: Any = self.transport
        if self.guard is not None:
            self._ticket = self.guard.open(lambda why: t.abortConnection())
        self._adapt = isinstance(getattr(t, "bufferSize", None), int)
        plain_reads(t)
        link_buffers(t)
        t.registerProducer(self, True)  # type: ignore[union-attr]
        if self.handshake:
            t.write(HANDSHAKE)  # type: ignore[union-attr]
        else:
            self._set_ready()

    def _set_ready(self) -> None:
        self.ready = True
        self._log.info(
            "multiplexer online, peer {peer}",
            peer=str(self.transport.getPeer()) if self.transport else "?",
        )
        self.whenReady.callback(self)

    def cork(self) -> None:
        """Gather frames written from now on; :meth:`uncork` sends them in one syscall.

        Used around the handling of one read from the link (the Window updates and
        Closes it causes leave together) and around a splice's EOF (Shutdown + Close).
        """
        self._cork += 1

    def uncork(self) -> None:
        self._cork -= 1
        if self._cork <= 0:
            self._cork = 0
            self._send_corked()

    def _send_corked(self) -> None:
        if self.onActivity is not None:
            self.onActivity()
        if self._initial:
            self._initial.clear()
        bufs, self._corked = self._corked, []
        eager, self._eager = self._eager, 0
        self._corked_len = 0
        if self._corked_closes:
            # A Close written before the peer's Close arrived later in the same read
            # is now only an acknowledgement.
            eager -= sum(1 for ch in self._corked_closes if ch.recv_close)
            self._corked_closes.clear()
        if bufs and not eager:
            # Only acknowledging Closes: let them wait for company (see _write_lazy).
            if self._connected:
                self._lazy.extend(bufs)
                self._arm_lazy()
            return
        if self._lazy and bufs:
            bufs[0:0] = self._take_lazy()
        if bufs and self._connected and self.transport is not None:
            send_now(self.transport, bufs)

    def dataReceived(self, data: bytes) -> None:
        if self.onActivity is not None:
            self.onActivity()
        if self._adapt:
            adapt_read_size(self.transport, len(data))
        self._cork += 1
        try:
            self._dataReceived(data)
        finally:
            self.uncork()
        if self._ticket is not None:
            # the handshake is this link's first frame; after it, any read is activity
            self._ticket.received(0 if self._hs is not None else 1)

    def _dataReceived(self, data: bytes) -> None:
        if self._hs is not None:
            try:
                rest = self._hs.feed(data)
            except HandshakeError as e:
                self._fail(str(e))
                return
            if rest is None:
                return
            self._hs = None
            self._set_ready()
            if not rest:
                return
            data = rest
        dec = self._dec
        stats = self.stats
        for ev in dec.feed(data):
            t = type(ev)
            if t is Payload:
                if self._rx is not None:
                    self._rx._receive(ev.data)  # type: ignore[union-attr]
                else:
                    stats.discarded_bytes += len(ev.data)  # type: ignore[union-attr]
                continue
            stats.frames_in += 1
            if t is DataHeader:
                self._data_header(ev.id, ev.length)  # type: ignore[union-attr]
            elif t is Window:
                self._on_window(ev)  # type: ignore[arg-type]
            elif t is Open:
                self._on_open(ev)  # type: ignore[arg-type]
            elif t is Close:
                self._on_close(ev.id)  # type: ignore[union-attr]
            elif t is Shutdown:
                self._on_shutdown(ev.id)  # type: ignore[union-attr]
            elif t is BadOpen:
                self._on_bad_open(ev)  # type: ignore[arg-type]
            if not self._connected:
                return
        if dec.error is not None:
            self._fail(f"malformed frame: {dec.error}")

    def _fail(self, reason: str) -> None:
        """A link-level protocol error: log it, then close the link and every channel."""
        if self.lost_reason is None:
            self.lost_reason = reason
        self.stats.protocol_errors += 1
        self._log.error(
            "Multiplexer main loop failed with {reason}; closing the link and its {n} channels\n{dump}",
            reason=reason,
            n=len(self.channels),
            dump=self.dump(),
        )
        if self.transport is not None:
            self.transport.loseConnection()
        self._connected = False
        self._close_all(Failure(error.ConnectionLost(reason)))

    def loseLink(self, reason: str) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason
        self._flush_lazy()
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self._connected = False
        if self._ticket is not None:
            self._ticket.release()
        self._lazy.clear()
        self._corked_closes.clear()
        if self._lazy_call is not None and self._lazy_call.active():
            self._lazy_call.cancel()
        self._lazy_call = None
        if self.lost_reason is None:
            self.lost_reason = (
                reason.getErrorMessage() if isinstance(reason, Failure) else str(reason)
            )
        self._log.info(
            "multiplexer offline ({reason}), closing {n} channels",
            reason=self.lost_reason,
            n=len(self.channels),
        )
        self._close_all(Failure(error.ConnectionLost(f"multiplexer link lost: {self.lost_reason}")))
        if not self.whenLost.called:
            self.whenLost.callback(self.lost_reason or "")

    def _close_all(self, reason: Failure) -> None:
        chans = list(self.channels.values())
        self.channels.clear()
        self._ready_q.clear()
        for ch in chans:
            if not ch._finished:
                self.stats.channels_closed += 1
            ch._link_lost(reason)

    # IPushProducer for the link --------------------------------------------------------

    def pauseProducing(self) -> None:
        self._link_paused = True

    def resumeProducing(self) -> None:
        self._link_paused = False
        self._flush()

    def stopProducing(self) -> None:
        self._link_paused = True

    # opening ---------------------------------------------------------------------------

    def _allocate(self) -> int:
        chans = self.channels
        if len(chans) >= 0xFFFFFFFF:
            raise RuntimeError("no free channel id")
        i = self._next
        step = -1 if self.backwards else 1
        while i in chans:
            i = (i + step) & 0xFFFFFFFF
        self._next = (i + step) & 0xFFFFFFFF
        return i

    def openChannel(self, destination: Destination, protocol: IProtocol) -> Channel:
        if not self._connected:
            raise error.ConnectionClosed("multiplexer is not running")
        cid = self._allocate()
        ch = Channel(self, cid, destination, self.window)
        self.channels[cid] = ch
        self.stats.channels_opened += 1
        self._cork += 1  # Open and Window leave in one write
        try:
            self._write(encode_open(cid, destination))
            self._record("out", "open", cid, 0)
            ch._rd_allowed = self.window
            self._write(encode_window(cid, self.window))
            ch._attach(protocol)
        finally:
            self.uncork()
        return ch

    def liveChannels(self) -> int:
        return len(self.channels)

    # frame handlers --------------------------------------------------------------------

    def _record(self, direction: str, kind: str, cid: int, n: int) -> None:
        self.recent.append((next(self._seq), direction, kind, cid, n))
        if self.trace:
            ch = self.channels.get(cid)
            self._log.info(
                "{direction} {kind} channel {id:#x} {dest}",
                direction=direction,
                kind=kind,
                id=cid,
                dest=str(ch.destination) if ch is not None else "",
            )

    def _data_header(self, cid: int, length: int) -> None:
        ch = self.channels.get(cid)
        self._rx = None
        if ch is None:
            self.stats.unknown_id_frames += 1
            self._log.debug("Data for unknown channel {id:#x}: {n} bytes dropped", id=cid, n=length)
            return
        if ch.recv_shutdown or ch.recv_close or ch.sent_close:
            if not ch.sent_close:
                self._log.info("Data on channel {id:#x} after its Shutdown: dropped", id=cid)
            return
        if not ch._data_allowed(length):
            self.stats.protocol_errors += 1
            self._log.warn(
                "protocol error: channel {id:#x} got {n} bytes beyond our window "
                "(received {rx}, allowed {allowed}); closing the channel",
                id=cid,
                n=length,
                rx=ch._rd_received,
                allowed=ch._rd_allowed,
            )
            ch.abortConnection()
            return
        self.stats.bytes_in += length
        if length:
            self._rx = ch

    def _on_window(self, ev: Window) -> None:
        ch = self.channels.get(ev.id)
        if ch is None:
            self.stats.unknown_id_frames += 1
            return
        ch._window_update(ev.seq)

    def _on_open(self, ev: Open) -> None:
        self._record("in", "open", ev.id, 0)
        old = self.channels.get(ev.id)
        if old is not None:
            self.stats.protocol_errors += 1
            self._log.warn("protocol error: Open for live channel {id:#x}; closing it", id=ev.id)
            old.abortConnection()
            return
        ch = Channel(self, ev.id, ev.destination, self.window)
        self.channels[ev.id] = ch
        if self.acceptor is None:
            ch.refuse("this side does not accept channels")
            return
        if len(self.channels) > self.max_channels:
            ch.refuse(f"more than {self.max_channels} channels on this link")
            return
        try:
            self.acceptor.channelOpened(ch)
        except Exception:
            self._log.failure("acceptor failed on channel {id:#x}", id=ev.id)
            if not ch.sent_close:
                ch.refuse("acceptor error")

    def _on_bad_open(self, ev: BadOpen) -> None:
        self._record("in", "badopen", ev.id, 0)
        if ev.id in self.channels:
            self.stats.protocol_errors += 1
            self._log.warn(
                "protocol error: bad Open for live channel {id:#x}; closing it", id=ev.id
            )
            self.channels[ev.id].abortConnection()
            return
        ch = Channel(self, ev.id, None, self.window)
        self.channels[ev.id] = ch
        ch.refuse(ev.reason)

    def _on_close(self, cid: int) -> None:
        self._record("in", "close", cid, 0)
        ch = self.channels.get(cid)
        if ch is None or ch.recv_close:
            self.stats.unknown_id_frames += 1
            self._log.info("Close for unknown channel {id:#x} ignored", id=cid)
            return
        if self._rx is ch:
            self._rx = None
        ch.recv_close = True
        if ch.sent_close:
            self._free(ch)
        ch._close_received()

    def _on_shutdown(self, cid: int) -> None:
        self._record("in", "shutdown", cid, 0)
        ch = self.channels.get(cid)
        if ch is None or ch.recv_close:
            self.stats.unknown_id_frames += 1
            return
        if self._initial:
            frame = self._initial.pop(cid, None)
            if frame is not None and ch.bytes_in == 0:
                self._unwrite(frame)
        ch._shutdown_received()

    def _closed_one_way(self, ch: Channel) -> None:
        """Our Close went out; the id is free once the peer's Close is in too."""
        self._record("out", "close", ch.id, 0)
        if ch.recv_close:
            self._free(ch)

    def _free(self, ch: Channel) -> None:
        if self.channels.get(ch.id) is ch:
            del self.channels[ch.id]
            self.stats.channels_closed += 1

    # sending ---------------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        if self._connected and self.transport is not None:
            self.stats.frames_out += 1
            if self._cork:
                self._corked.append(frame)
                self._corked_len += len(frame)
                self._eager += 1
            else:
                if self.onActivity is not None:
                    self.onActivity()
                if self._lazy:
                    send_now(self.transport, [*self._take_lazy(), frame])
                else:
                    send_now(self.transport, [frame])

    def _grow_window(self, current: int) -> int:
        new = min(current * 2, self.window_max)
        extra = new - current
        if extra <= 0 or self._grown + extra > self.window_budget:
            return current
        self._grown += extra
        self.stats.windows_grown += 1
        return new

    def _unwrite(self, frame: bytes) -> None:
        """Take back a frame still waiting in the cork (the peer's Shutdown made it moot).

        The peer has half-closed the channel in the same read that opened it: it will
        never send Data, so our initial Window would only cost both sides a wake-up.
        """
        for i, f in enumerate(self._corked):
            if f is frame:
                del self._corked[i]
                self._corked_len -= len(frame)
                self._eager -= 1
                self.stats.frames_out -= 1
                self.stats.windows_skipped += 1
                return

    def _write_lazy(self, frame: bytes) -> None:
        """Queue a frame that nobody waits for until the next write, or a moment later.

        Used for a Close answering the peer's Close: the channel is over on both sides,
        the frame only lets the peer free the id.  Sent in front of the next frame (so
        the order on the link is unchanged) or after ``LAZY_CLOSE_DELAY``; in a stream of
        short connections it rides with the next Open instead of waking the peer alone.
        """
        if not self._connected or self.transport is None:
            return
        self.stats.frames_out += 1
        if self._cork:
            # In order with what this read already wrote; held back at uncork only if
            # nothing else is going out.
            self._corked.append(frame)
            self._corked_len += len(frame)
            return
        self._lazy.append(frame)
        self._arm_lazy()

    def _arm_lazy(self) -> None:
        if self._lazy_call is None:
            self._lazy_call = self._clock().callLater(LAZY_CLOSE_DELAY, self._flush_lazy)

    def _clock(self) -> Any:
        if self.clock is not None:
            return self.clock
        t: Any = self.transport
        if getattr(t, "reactor", None) is not None:
            return t.reactor
        raise RuntimeError("Multiplexer has no clock: pass clock= (an IReactorTime)")

    def _take_lazy(self) -> list[bytes | memoryview]:
        frames, self._lazy = self._lazy, []
        if self._lazy_call is not None:
            if self._lazy_call.active():
                self._lazy_call.cancel()
            self._lazy_call = None
        return frames

    def _flush_lazy(self) -> None:
        self._lazy_call = None
        if self._lazy and self._connected and self.transport is not None:
            if self._cork:
                self._corked[0:0] = self._take_lazy()
                self._eager += 1  # due now: they go out at uncork
            else:
                send_now(self.transport, self._take_lazy())

    def _schedule(self, ch: Channel) -> None:
        if not ch._queued:
            ch._queued = True
            self._ready_q.append(ch)
        if not self._flushing and not self._link_paused:
            self._flush()

    def _requeue(self, ch: Channel) -> None:
        if not ch._queued:
            ch._queued = True
            self._ready_q.append(ch)

    def _flush(self) -> None:
        """Serve channels round robin, one frame per turn, until the link pushes back."""
        if self._flushing or not self._connected:
            return
        self._flushing = True
        q = self._ready_q
        t = self.transport
        stats = self.stats
        if self.onActivity is not None:
            self.onActivity()
        try:
            while q and not self._link_paused:
                ch = q.popleft()
                ch._queued = False
                if ch.sent_close or ch._finished:
                    continue
                n = min(ch._sendlen, ch._wr_allowed - ch._wr_sent, self._frame_max)
                if n <= 0:
                    continue
                chunks = ch._take(n)
                chunks.insert(0, encode_data_header(ch.id, n))
                ch._wr_sent += n
                ch.bytes_out += n
                stats.bytes_out += n
                stats.frames_out += 1
                if self._cork:
                    self._corked.extend(chunks)
                    self._corked_len += n
                    self._eager += 1
                    if self._corked_len >= CORK_LIMIT:
                        self._send_corked()
                else:
                    if self._lazy:
                        chunks[0:0] = self._take_lazy()
                    send_now(t, chunks)
                ch._sent()
        finally:
            self._flushing = False

    # dump ------------------------------------------------------------------------------

    def dump(self) -> str:
        lines = [
            f"multiplexer {'online' if self._connected and self.ready else 'offline'}"
            f" ids={'backwards' if self.backwards else 'forwards'} window={self.window}"
            + (f" lost={self.lost_reason}" if self.lost_reason else ""),
            "counters: " + " ".join(f"{k}={v}" for k, v in self.stats.as_dict().items()),
            f"live channels: {len(self.channels)}",
        ]
        for cid, ch in sorted(self.channels.items())[:200]:
            lines.append(
                f"  {cid:#010x} {ch.destination} {ch.state()} in={ch.bytes_in} out={ch.bytes_out}"
                f" window_out={ch._wr_allowed - ch._wr_sent} sendbuf={ch._sendlen} recvbuf={ch._recvlen}"
            )
        if len(self.channels) > 200:
            lines.append(f"  ... {len(self.channels) - 200} more")
        lines.append(f"recent frame events (last {len(self.recent)}):")
        for seq, d, kind, cid, n in list(self.recent)[-50:]:
            lines.append(f"  #{seq} {d} {kind} {cid:#x} {n}")
        return "\n".join(lines) + "\n"


class MultiplexerFactory(Factory):
    """Builds a Multiplexer per link and tells ``onLink`` about each."""

    noisy = False

    def __init__(
        self,
        acceptor: IChannelAcceptor | None,
        backwards: bool,
        window: int = DEFAULT_WINDOW,
        handshake: bool = True,
        onLink: Any = None,
        window_max: int | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.acceptor = acceptor
        self.clock = clock
        self.backwards = backwards
        self.window = window
        self.window_max = window_max
        self.handshake = handshake
        self.onLink = onLink
        self.trace = False
        self.max_channels = DEFAULT_MAX_CHANNELS
        self.onActivity: Any = None
        #: bounds on accepted links (a listening data link; see LINK_LIMITS)
        self.guard: ConnectionGuard | None = None

    def buildProtocol(self, addr: IAddress | None) -> Multiplexer:
        mux = Multiplexer(
            self.acceptor, self.backwards, self.window, self.handshake, self.window_max,
            clock=self.clock,
        )
        mux.trace = self.trace
        mux.max_channels = self.max_channels
        mux.onActivity = self.onActivity
        mux.guard = self.guard
        if self.onLink is not None:
            self.onLink(mux)
        return mux

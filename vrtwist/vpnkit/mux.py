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
from twisted.internet.interfaces import IAddress, IProtocol, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.bounds import ConnectionGuard, Ticket
from vrtwist.logfields import Logger
from vrtwist.vpnkit._fastwrite import adapt_read_size, link_buffers, plain_reads
from vrtwist.vpnkit.channel import Channel, ChannelAddress
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
    encode_data_header,
    encode_open,
    encode_window,
)
from vrtwist.vpnkit.interfaces import IChannelAcceptor, IMultiplexer
from vrtwist.vpnkit.linkwriter import CORK_LIMIT, LAZY_CLOSE_DELAY, LinkWriter

__all__ = [
    "CORK_LIMIT",
    "DEFAULT_WINDOW",
    "LAZY_CLOSE_DELAY",
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
        self._adapt = False
        #: frames to the link: corked batches, lazy acknowledging Closes
        self.writer = LinkWriter(self.stats, clock)
        self.recent: deque[tuple[int, str, str, int, int]] = deque(maxlen=_RING)
        #: log every Open/Shutdown/Close (``--debug``)
        self.trace = False
        #: Opens beyond this many live ids are refused (a flood must not exhaust fds);
        #: each channel can hold up to two windows of memory.
        self.max_channels = DEFAULT_MAX_CHANNELS
        #: the listener's connection guard (handshake deadline, cap), if any
        self.guard: ConnectionGuard | None = None
        self._ticket: Ticket | None = None

    @property
    def clock(self) -> Any:
        """IReactorTime for the lazy Close (default: the transport's reactor; the
        services pass theirs, a link with neither is refused when a Close must wait)."""
        return self.writer.clock

    @clock.setter
    def clock(self, value: Any) -> None:
        self.writer.clock = value

    @property
    def onActivity(self) -> Any:
        """Called on every link read and write (the busy poller's ``kick``)."""
        return self.writer.on_activity

    @onActivity.setter
    def onActivity(self, value: Any) -> None:
        self.writer.on_activity = value

    # link lifecycle --------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        t: Any = self.transport
        self.writer.transport = t
        self.writer.live = True
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
        self.writer.cork += 1

    def uncork(self) -> None:
        self.writer.uncork()

    def dataReceived(self, data: bytes) -> None:
        writer = self.writer
        if writer.on_activity is not None:
            writer.on_activity()
        if self._adapt:
            adapt_read_size(self.transport, len(data))
        writer.cork += 1
        try:
            self._dataReceived(data)
        finally:
            writer.uncork()
        if self._ticket is not None:
            # the handshake is this link's first frame; after it, any read is activity
            self._ticket.received(0 if self._hs is not None else 1)

    def _dataReceived(self, data: bytes) -> None:
        if self._hs is not None:
            rest = self._handshake(data)
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
            else:
                self._on_control(t, ev)
            if not self._connected:
                return
        if dec.error is not None:
            self._fail(f"malformed frame: {dec.error}")

    def _handshake(self, data: bytes) -> bytes | None:
        """Feed the peer's preamble; what follows it in ``data`` once it is complete."""
        assert self._hs is not None
        try:
            rest = self._hs.feed(data)
        except HandshakeError as e:
            self._fail(str(e))
            return None
        if rest is None:
            return None
        self._hs = None
        self._set_ready()
        return rest

    def _on_control(self, t: type, ev: Any) -> None:
        if t is Window:
            self._on_window(ev)
        elif t is Open:
            self._on_open(ev)
        elif t is Close:
            self._on_close(ev.id)
        elif t is Shutdown:
            self._on_shutdown(ev.id)
        elif t is BadOpen:
            self._on_bad_open(ev)

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
        self.writer.live = False
        self._close_all(Failure(error.ConnectionLost(reason)))

    def loseLink(self, reason: str) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason
        self.writer.flush_lazy()
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self._connected = False
        if self._ticket is not None:
            self._ticket.release()
        self.writer.drop()
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
        writer = self.writer
        writer.cork += 1  # Open and Window leave in one write
        try:
            writer.write(encode_open(cid, destination))
            self._record("out", "open", cid, 0)
            ch._rd_allowed = self.window
            writer.write(encode_window(cid, self.window))
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
        except Exception:  # noqa: BLE001 - an acceptor bug refuses this channel, logged; the link lives on
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
        initial = self.writer.initial
        if initial:
            frame = initial.pop(cid, None)
            if frame is not None and ch.bytes_in == 0:
                self.writer.unwrite(frame)
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

    def _grow_window(self, current: int) -> int:
        new = min(current * 2, self.window_max)
        extra = new - current
        if extra <= 0 or self._grown + extra > self.window_budget:
            return current
        self._grown += extra
        self.stats.windows_grown += 1
        return new

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
        writer = self.writer
        stats = self.stats
        if writer.on_activity is not None:
            writer.on_activity()
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
                writer.write_data(chunks, n)
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

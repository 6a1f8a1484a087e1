"""One multiplexed channel: the transport its protocol sees, with a window each way.

A channel buffers what its protocol writes until the peer's window lets the
multiplexer send it (round robin with the other channels, see :mod:`.mux`), and
re-opens our window only for bytes its protocol consumed.  Frames go through the
link's :class:`~vrtwist.vpnkit.linkwriter.LinkWriter`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IProtocol, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.logfields import Logger
from vrtwist.vpnkit.frames import Destination, encode_close, encode_shutdown, encode_window
from vrtwist.vpnkit.interfaces import IChannel

if TYPE_CHECKING:
    from vrtwist.vpnkit.mux import Multiplexer

__all__ = ["Channel", "ChannelAddress"]


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
        except Exception:  # noqa: BLE001 - any protocol bug closes this channel only, logged
            self._log.failure("channel {id:#x} protocol failed to start; closing", id=self.id)
            self.abortConnection()

    def _advertise_initial(self) -> None:
        if not self.sent_close and not self.recv_close:
            self._rd_allowed = self._window
            frame = encode_window(self.id, self._window)
            writer = self.mux.writer
            if writer.cork:
                # A Shutdown later in the same link read makes it pointless (see _on_shutdown)
                writer.initial[self.id] = frame
            writer.write(frame)

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
        self.mux.writer.write(encode_shutdown(self.id))
        self.mux._record("out", "shutdown", self.id, 0)

    def _send_close(self) -> None:
        if self.sent_close:
            return
        self.sent_close = True
        writer = self.mux.writer
        if self.recv_close:
            writer.write_lazy(encode_close(self.id))
        elif writer.cork:
            # The peer's Close may come later in this very read (Shutdown, Close): then
            # ours only acknowledges it and may wait (see LinkWriter.send_corked).
            writer.corked_closes.append(self)
            writer.write(encode_close(self.id))
        else:
            writer.write(encode_close(self.id))
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
        except Exception:  # noqa: BLE001 - any protocol bug closes this channel only, logged
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
        self.mux.writer.write(encode_window(self.id, self._rd_allowed))

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
        except Exception:  # noqa: BLE001 - any protocol bug closes this channel only, logged
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
            except Exception:  # noqa: BLE001 - logged; the other channels must still be told
                self._log.failure("connectionLost of channel {id:#x}", id=self.id)

    def _link_lost(self, reason: Failure) -> None:
        self.recv_close = True
        self.sent_close = True
        self._finish(reason)

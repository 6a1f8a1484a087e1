"""The Twisted protocol shared by both ends of the XMPP link.

Thin on purpose: it feeds received bytes to :class:`~vrtwist.xmpp.framing.StanzaSplitter`,
parses each stanza with :func:`~vrtwist.xmpp.stanzas.parse_stanza`, runs the hold timer
and the keepalive timer, and closes the session with one clear log line on any framing
or parse error.  What a stanza means is decided by the subclass.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from vrtwist.logfields import Logger

from .framing import (
    DEFAULT_MAX_STANZA,
    KEEPALIVE,
    STREAM_CLOSE,
    FramingError,
    FramingEvent,
    Keepalive,
    StanzaBytes,
    StanzaSplitter,
    StreamEnd,
    StreamHeader,
)
from .stanzas import Stanza, StanzaError, parse_stanza

__all__ = ["DEFAULT_HOLD_TIME", "ProtocolViolation", "XmppSession", "check_hold_time"]

DEFAULT_HOLD_TIME = 90.0
_CONNECTION_LOST = Failure(ConnectionError("connection lost"))


class ProtocolViolation(Exception):
    """A well-formed stanza that the dialect forbids here; the session is closed."""


def check_hold_time(value: float) -> float:
    """Hold times are 1 to 90 s, as the real fast-convergence setting allows."""
    hold = float(value)
    if not 1 <= hold <= 90:
        raise ValueError(f"hold time {value} s is outside 1..90 s")
    return hold


class XmppSession(Protocol):
    """One XMPP stream: framing, parsing, hold timer, keepalives, orderly close."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        hold_time: float = DEFAULT_HOLD_TIME,
        max_stanza: int = DEFAULT_MAX_STANZA,
    ) -> None:
        self.clock = clock
        self.hold_time = check_hold_time(hold_time)
        self.max_stanza = max_stanza
        self.splitter = StanzaSplitter(max_stanza)
        self.established = False
        self.closing = False
        self.close_reason = ""
        self.closed_cleanly = False
        self.peer_name = ""
        self.keepalives_received = 0
        self._last_rx = 0.0
        self._hold_call: IDelayedCall | None = None
        self._keepalive_call: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None

    # -- subclass hooks -------------------------------------------------------------

    def header_received(self, header: StreamHeader) -> None:
        raise NotImplementedError

    def stanza_received(self, stanza: Stanza) -> None:
        raise NotImplementedError

    def chunk_processed(self) -> None:
        """Called after every received chunk; a place to flush batched output."""

    def session_closed(self, reason: str) -> None:
        """Called once when the connection is gone."""

    # -- Protocol -----------------------------------------------------------------------

    def peer_label(self) -> str:
        try:
            peer = self.transport.getPeer()  # type: ignore[union-attr]
            where = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        except (AttributeError, OSError):  # no transport yet, or a closed socket
            where = "?"
        return f"{self.peer_name or '<unnamed>'}@{where}"

    def connectionMade(self) -> None:
        self._last_rx = self.clock.seconds()
        self._arm_hold(self.hold_time)

    def _split(self, data: bytes) -> list[FramingEvent]:
        """The stream's units in ``data``; none, and the session closing, on a framing error."""
        try:
            return self.splitter.feed(data)
        except FramingError as exc:
            self.close_session(f"framing error: {exc}")
            return []

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self._last_rx = self.clock.seconds()
        events = self._split(data)
        for event in events:
            # mypy keeps self.closing narrowed to False from the check above, but handling
            # a stanza may close the session
            if self.closing:
                return  # type: ignore[unreachable]
            try:
                if isinstance(event, StanzaBytes):
                    self.stanza_received(parse_stanza(event.data))
                elif isinstance(event, Keepalive):
                    self.keepalives_received += 1
                elif isinstance(event, StreamHeader):
                    self.header_received(event)
                elif isinstance(event, StreamEnd):
                    # the peer ended its stream first: a clean close, however the
                    # TCP connection then goes (our reply may meet a closed socket)
                    self.close_session("peer closed the stream", send_close=True, clean=True)
                    return
            except StanzaError as exc:
                self.close_session(f"bad stanza: {exc}")
                return
            except ProtocolViolation as exc:
                self.close_session(f"protocol violation: {exc}")
                return
            except Exception:  # noqa: BLE001 - last-resort guard per session, logged below
                # A bug in handling a stanza (the parser itself raises only StanzaError):
                # the traceback is logged once and this session, not the process, ends.
                self._log.failure("XMPP session {peer}: error handling a stanza",
                                  peer=self.peer_label())
                self.close_session("internal error handling a stanza")
                return
        if not self.closing:
            self.chunk_processed()

    def connectionLost(self, reason: Failure = _CONNECTION_LOST) -> None:
        self._stop_timers()
        self._cancel_abort()
        self.established = False
        if not self.close_reason:
            self.close_reason = f"connection lost: {reason.getErrorMessage()}"
        self.session_closed(self.close_reason)

    # -- helpers --------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if not self.closing and self.transport is not None:
            self.transport.write(data)

    def close_session(self, reason: str, send_close: bool = True, clean: bool = False) -> None:
        """Log why, send ``</stream:stream>`` and drop the connection (once).

        ``clean``: an orderly end (the peer closed its stream, we are stopping), logged
        at info; anything else is a warning.
        """
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        self.closed_cleanly = clean
        (self._log.info if clean else self._log.warn)(
            "XMPP session {peer} closed: {reason}", peer=self.peer_label(), reason=reason
        )
        self._stop_timers()
        transport: Any = self.transport
        if transport is None:
            return
        if send_close:
            transport.write(STREAM_CLOSE)
        transport.loseConnection()
        # A peer that never reads must not keep the session half-open forever.
        self._abort_call = self.clock.callLater(5.0, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        transport: Any = self.transport
        if transport is not None and getattr(transport, "connected", False):
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()

    def start_timers(self) -> None:
        """Established: a keepalive now, then every hold/3; the hold timer keeps running."""
        self.send(KEEPALIVE)
        self._keepalive_call = self.clock.callLater(self.hold_time / 3.0, self._send_keepalive)

    def _send_keepalive(self) -> None:
        self._keepalive_call = None
        if self.closing:
            return
        self.send(KEEPALIVE)
        self._keepalive_call = self.clock.callLater(self.hold_time / 3.0, self._send_keepalive)

    def _arm_hold(self, delay: float) -> None:
        self._hold_call = self.clock.callLater(delay, self._hold_check)

    def _hold_check(self) -> None:
        self._hold_call = None
        if self.closing:
            return
        idle = self.clock.seconds() - self._last_rx
        if idle >= self.hold_time:
            self.close_session(f"hold timer expired ({self.hold_time:g} s without a message)")
        else:
            self._arm_hold(self.hold_time - idle)

    def _stop_timers(self) -> None:
        for call in (self._hold_call, self._keepalive_call):
            if call is not None and call.active():
                call.cancel()
        self._hold_call = None
        self._keepalive_call = None

    def _cancel_abort(self) -> None:
        call = self._abort_call
        self._abort_call = None
        if call is not None and call.active():
            call.cancel()

    def restart_framing(self) -> None:
        """After STARTTLS the stream starts over: a fresh splitter for the new stream."""
        self.splitter = StanzaSplitter(self.max_stanza)

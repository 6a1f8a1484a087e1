"""Bounded connections for every listener: first-frame and idle deadlines, and a cap that
evicts rather than refuses.

A peer that connects and sends nothing, starts a frame and never finishes it, or just
stays, costs a descriptor and memory for as long as we let it.  :class:`ConnectionGuard`
gives each listener three bounds (:class:`ConnectionLimits`):

* ``first_frame``: seconds from accept to the first *complete* frame (for a protocol
  without :class:`IFrameProgress`, the first byte);
* ``partial``: seconds a frame may stay incomplete once started (a header promising
  65,536 bytes and no body);
* ``idle``: seconds with no byte received, for protocols with no keepalive of their own
  (``None`` for long-lived links that may legitimately stay silent);
* ``max_connections``: when full, a new connection is *accepted* and the connection
  that matters least is closed instead: the oldest one that never completed a frame,
  else the one idle the longest.  Refusing the newcomer would let whoever holds the
  slots lock out every real user (255 idle sockets on ``dpdk_netlink`` made ``vif``
  fail); evicting the stalest one means an attacker's idle sockets only ever push out
  each other, while a real peer that is busy (the agent's one ksync session) is the
  last to go, and a utility that connects, asks and leaves always gets its turn.

The guard is sans-IO apart from the clock; :class:`BoundedFactory` applies it to any
factory as a wrapping factory (``twisted.protocols.policies`` style), for protocols that
do not depend on their transport's type.  A protocol that does (splice, socket peeking)
can hold a :class:`Ticket` itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocol, IReactorTime
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import Interface

from vrtwist.logfields import Logger

__all__ = [
    "HTTP_LIMITS",
    "BoundedFactory",
    "BoundedProtocol",
    "ConnectionGuard",
    "ConnectionLimits",
    "IFrameProgress",
    "Ticket",
    "bounded_site",
]


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds of one listener; ``None`` switches a deadline off."""

    max_connections: int = 256
    first_frame: float | None = 10.0
    partial: float | None = 10.0
    idle: float | None = None

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        for name in ("first_frame", "partial", "idle"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None")


class IFrameProgress(Interface):
    """A framed protocol says how far its reader is, so the guard can tell a peer that is
    slowly finishing a frame from one that is streaming frames."""

    def frameProgress() -> tuple[int, int]:
        """(frames completed so far, bytes held of the frame in progress)."""


class Ticket:
    """One tracked connection: call :meth:`received` after each read, :meth:`release`
    when the connection is lost."""

    __slots__ = (
        "__weakref__",
        "abort",
        "established",
        "frame_started",
        "frames",
        "guard",
        "last",
        "opened",
        "released",
        "timer",
    )  # fmt: skip

    def __init__(self, guard: ConnectionGuard, abort: Callable[[str], None], now: float) -> None:
        self.guard = guard
        self.abort = abort
        self.opened = now
        self.last = now
        self.frames = 0
        self.frame_started: float | None = None
        self.established = False
        self.timer: IDelayedCall | None = None
        self.released = False

    def received(self, frames: int | None = None, buffered: int = 0) -> None:
        """Bytes arrived; ``frames``/``buffered`` from :class:`IFrameProgress` if known."""
        self.guard._received(self, frames, buffered)

    def release(self) -> None:
        self.guard._release(self)

    def deadline(self) -> tuple[float, str] | None:
        """When this connection is due to be closed, and why (None: never)."""
        lim = self.guard.limits
        if not self.established:
            if lim.first_frame is not None:
                return self.opened + lim.first_frame, "no complete frame in %gs" % lim.first_frame
        elif self.frame_started is not None and lim.partial is not None:
            return self.frame_started + lim.partial, "frame incomplete for %gs" % lim.partial
        if lim.idle is not None:
            return self.last + lim.idle, "idle for %gs" % lim.idle
        return None


class ConnectionGuard:
    """The bounds of one listener over all its connections (see the module doc)."""

    _log = Logger()

    def __init__(self, clock: IReactorTime, limits: ConnectionLimits, name: str = "") -> None:
        self.clock = clock
        self.limits = limits
        self.name = name
        # never-established connections by accept time; established ones by last read
        self._new: OrderedDict[Ticket, None] = OrderedDict()
        self._live: OrderedDict[Ticket, None] = OrderedDict()
        self.evicted = 0
        self.timed_out = 0

    def __len__(self) -> int:
        return len(self._new) + len(self._live)

    def open(self, abort: Callable[[str], None]) -> Ticket:
        """Track a new connection, first making room by evicting the stalest if full."""
        while len(self) >= self.limits.max_connections:
            victim = next(iter(self._new or self._live))
            self.evicted += 1
            self._close(victim, "evicted: %d connections open" % len(self))
        ticket = Ticket(self, abort, self.clock.seconds())
        self._new[ticket] = None
        self._arm(ticket)
        return ticket

    def _received(self, t: Ticket, frames: int | None, buffered: int) -> None:
        if t.released:
            return
        now = self.clock.seconds()
        t.last = now
        if frames is None:  # no framing known: any byte is progress
            completed = True
        else:
            completed = frames != t.frames
            t.frames = frames
        if completed:
            t.frame_started = now if buffered else None
            if not t.established:
                t.established = True
                del self._new[t]
                self._live[t] = None
            else:
                self._live.move_to_end(t)
        elif buffered and t.frame_started is None and t.established:
            t.frame_started = now
            self._live.move_to_end(t)
        elif t.established:
            self._live.move_to_end(t)
        due = t.deadline()
        if due is not None and (t.timer is None or t.timer.getTime() > due[0]):
            self._arm(t)  # an earlier deadline than the one the timer waits for

    def _arm(self, t: Ticket) -> None:
        """(Re)schedule the one timer of ``t`` for its next deadline."""
        if t.timer is not None and t.timer.active():
            t.timer.cancel()
        t.timer = None
        due = t.deadline()
        if due is not None:
            t.timer = self.clock.callLater(max(0.0, due[0] - self.clock.seconds()), self._due, t)

    def _due(self, t: Ticket) -> None:
        t.timer = None
        if t.released:
            return
        due = t.deadline()
        if due is None:
            return
        if due[0] > self.clock.seconds():  # activity moved the deadline: sleep again
            self._arm(t)
            return
        self.timed_out += 1
        self._close(t, due[1])

    def _close(self, t: Ticket, why: str) -> None:
        self._log.info("{name}: closing a connection: {why}", name=self.name, why=why)
        self._release(t)
        t.abort(why)

    def _release(self, t: Ticket) -> None:
        if t.released:
            return
        t.released = True
        self._new.pop(t, None)
        self._live.pop(t, None)
        if t.timer is not None and t.timer.active():
            t.timer.cancel()
        t.timer = None


class BoundedProtocol(ProtocolWrapper):
    """Relays to the wrapped protocol and reports each read to the guard."""

    factory: BoundedFactory
    ticket: Ticket | None = None

    _progress: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.ticket = self.factory.guard.open(self._abort)
        if IFrameProgress.providedBy(self.wrappedProtocol):
            self._progress = self.wrappedProtocol.frameProgress
        super().makeConnection(transport)

    def _abort(self, why: str) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.wrappedProtocol.dataReceived(data)
        ticket = self.ticket
        if ticket is not None:
            if self._progress is None:
                ticket.received()
            else:
                ticket.received(*self._progress())

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.ticket is not None:
            self.ticket.release()
        super().connectionLost(reason)


if TYPE_CHECKING:
    _WrappingBase = WrappingFactory[BoundedProtocol]
else:  # WrappingFactory is subscriptable at run time only from Twisted 26.4
    _WrappingBase = WrappingFactory


class BoundedFactory(_WrappingBase):
    """Any server factory, with a :class:`ConnectionGuard` over its connections."""

    protocol = BoundedProtocol

    def __init__(
        self, wrappedFactory: Any, clock: IReactorTime, limits: ConnectionLimits, name: str = ""
    ) -> None:
        super().__init__(wrappedFactory)
        self.guard = ConnectionGuard(clock, limits, name or type(wrappedFactory).__name__)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        inner: IProtocol | None = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)


#: An HTTP API (REST port API, vpnkit and vSPC control APIs): a first byte within 10 s,
#: and 60 s without a byte closes the connection (HTTP has no keepalive of its own;
#: its clients open, ask and close, or reuse a connection at once).  A request that is
#: half-sent for good is closed by that idle deadline, or sooner by the cap.
HTTP_LIMITS = ConnectionLimits(max_connections=256, first_frame=10.0, partial=None, idle=60.0)


def bounded_site(
    site: Any, clock: IReactorTime, name: str, limits: ConnectionLimits = HTTP_LIMITS
) -> BoundedFactory:
    """A ``twisted.web`` site under ``limits``; the site's own idle timeout matches."""
    if limits.idle is not None:
        site.timeOut = limits.idle
    return BoundedFactory(site, clock, limits, name)

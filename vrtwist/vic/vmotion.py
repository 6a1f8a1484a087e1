"""The vMotion hand-off of one VM serial port, as an explicit state machine.

ESX moves a VM's serial connection in three steps (spec vic-relay 1.5): the source
asks VMOTION-BEGIN and gets GOAHEAD with a secret; the destination host connects and
names that secret in VMOTION-PEER; the destination says VMOTION-COMPLETE (or the
source VMOTION-ABORT, or nobody says anything until the timeout).  A hand-off is
therefore in one of two live states::

    waiting-for-peer --peer--> peer-joined --complete--> completed
          ^    |                  |   ^
          |    +-- abort/expire --+   +-- peer (a second PEER replaces the first)
          +------ peer-gone ------+
    any live state --abort--> aborted, --expire--> expired, --close--> closed

Anything else (COMPLETE before a PEER, events after the end) is refused with
:class:`InvalidHandoff`; the serial port checks who sent a command before asking.
No I/O here: the port keeps the connections, buffers and timers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["Handoff", "HandoffEvent", "HandoffState", "InvalidHandoff"]


class HandoffState(enum.Enum):
    WAITING_FOR_PEER = "waiting-for-peer"
    PEER_JOINED = "peer-joined"
    COMPLETED = "completed"
    ABORTED = "aborted"
    EXPIRED = "expired"
    CLOSED = "closed"

    @property
    def live(self) -> bool:
        return self in (HandoffState.WAITING_FOR_PEER, HandoffState.PEER_JOINED)


class HandoffEvent(enum.Enum):
    PEER = "peer"  # VMOTION-PEER with the right sequence and secret
    PEER_GONE = "peer-gone"  # the destination's connection closed before COMPLETE
    COMPLETE = "complete"  # VMOTION-COMPLETE from the destination
    ABORT = "abort"  # VMOTION-ABORT from the source
    EXPIRE = "expire"  # the hand-off timeout passed
    CLOSE = "close"  # the serial port itself is being forgotten


_S, _E = HandoffState, HandoffEvent
_LIVE = (_S.WAITING_FOR_PEER, _S.PEER_JOINED)
#: (state, event) -> next state; every pair not listed is an invalid transition
TRANSITIONS: dict[tuple[HandoffState, HandoffEvent], HandoffState] = {
    (_S.WAITING_FOR_PEER, _E.PEER): _S.PEER_JOINED,
    (_S.PEER_JOINED, _E.PEER): _S.PEER_JOINED,
    (_S.PEER_JOINED, _E.PEER_GONE): _S.WAITING_FOR_PEER,
    (_S.PEER_JOINED, _E.COMPLETE): _S.COMPLETED,
    **{(s, _E.ABORT): _S.ABORTED for s in _LIVE},
    **{(s, _E.EXPIRE): _S.EXPIRED for s in _LIVE},
    **{(s, _E.CLOSE): _S.CLOSED for s in _LIVE},
}


class InvalidHandoff(Exception):
    """An event the hand-off's current state does not allow."""

    def __init__(self, state: HandoffState, event: HandoffEvent) -> None:
        super().__init__(f"vMotion hand-off: {event.value} not allowed when {state.value}")
        self.state = state
        self.event = event


@dataclass
class Handoff:
    """A vMotion in flight: from GOAHEAD until COMPLETE, ABORT, expiry or close.

    ``source`` and ``target`` are the ESX connections (the port's business: they may
    go while the state stays, e.g. ESX closes the source around COMPLETE).
    """

    sequence: bytes
    secret: bytes
    source: Any
    target: Any = None
    timer: Any = None
    started: float = 0.0
    state: HandoffState = HandoffState.WAITING_FOR_PEER

    @property
    def key(self) -> bytes:
        return self.sequence + self.secret

    def allows(self, event: HandoffEvent) -> bool:
        return (self.state, event) in TRANSITIONS

    def advance(self, event: HandoffEvent) -> HandoffState:
        """Apply ``event``; :class:`InvalidHandoff` (state unchanged) if not allowed."""
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise InvalidHandoff(self.state, event)
        self.state = nxt
        return nxt

"""The vMotion hand-off state machine, alone and as a serial port drives it."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.vic.test_vspc_unit import Harness
from vrtwist.vic import telnet as T
from vrtwist.vic import vmware_ext as X
from vrtwist.vic.vmotion import (
    TRANSITIONS,
    Handoff,
    HandoffEvent,
    HandoffState,
    InvalidHandoff,
)
from vrtwist.vic.vspc import VSPCConnection

S, E = HandoffState, HandoffEvent


def at(state: HandoffState) -> Handoff:
    return Handoff(b"seq!", b"secret!!", source=None, state=state)


class StateMachineTests(SynchronousTestCase):
    def test_a_hand_off_starts_waiting_for_its_peer(self) -> None:
        h = Handoff(b"seq!", b"secret!!", source=None)
        self.assertIs(h.state, S.WAITING_FOR_PEER)
        self.assertTrue(h.state.live)
        self.assertEqual(h.key, b"seq!secret!!")

    def test_the_normal_path(self) -> None:
        h = at(S.WAITING_FOR_PEER)
        self.assertIs(h.advance(E.PEER), S.PEER_JOINED)
        self.assertIs(h.advance(E.PEER), S.PEER_JOINED)  # a second PEER replaces the first
        self.assertIs(h.advance(E.PEER_GONE), S.WAITING_FOR_PEER)
        self.assertIs(h.advance(E.PEER), S.PEER_JOINED)
        self.assertIs(h.advance(E.COMPLETE), S.COMPLETED)
        self.assertFalse(h.state.live)

    def test_every_live_state_can_end(self) -> None:
        for start in (S.WAITING_FOR_PEER, S.PEER_JOINED):
            for event, end in ((E.ABORT, S.ABORTED), (E.EXPIRE, S.EXPIRED), (E.CLOSE, S.CLOSED)):
                self.assertIs(at(start).advance(event), end)

    def test_invalid_transitions_are_refused_and_change_nothing(self) -> None:
        refused = 0
        for state in S:
            for event in E:
                if (state, event) in TRANSITIONS:
                    continue
                h = at(state)
                self.assertFalse(h.allows(event))
                with self.assertRaises(InvalidHandoff) as cm:
                    h.advance(event)
                self.assertIs(h.state, state)
                self.assertEqual((cm.exception.state, cm.exception.event), (state, event))
                self.assertIn(event.value, str(cm.exception))
                refused += 1
        # complete before a peer, peer-gone with none, and anything after the end
        self.assertIn((S.WAITING_FOR_PEER, E.COMPLETE), [(s, e) for s in S for e in E
                                                          if (s, e) not in TRANSITIONS])
        self.assertEqual(refused, len(S) * len(E) - len(TRANSITIONS))

    def test_final_states_accept_nothing(self) -> None:
        for state in (S.COMPLETED, S.ABORTED, S.EXPIRED, S.CLOSED):
            self.assertFalse(any(at(state).allows(e) for e in E))


class PortDrivesTheMachineTests(SynchronousTestCase):
    """The serial port moves its hand-off through the states as ESX speaks."""

    SEQ = b"\x76\x19\xff\xe9"  # contains IAC

    def _begin(self, h: Harness) -> tuple[VSPCConnection, bytes]:
        src, str_ = h.proxied()
        src.dataReceived(X.command(X.VMOTION_BEGIN, self.SEQ))
        ((_, params),) = [X.split(e.payload) for e in _subnegs(str_.value())]
        return src, params

    def _peer(self, h: Harness, peer: bytes) -> VSPCConnection:
        conn, _ = h.connect(host="10.0.0.9")
        conn.dataReceived(X.command(X.VMOTION_PEER, peer))
        return conn

    def test_states_through_a_hand_off(self) -> None:
        h = Harness()
        _src, peer = self._begin(h)
        handoff = h.port().handoff
        assert handoff is not None
        self.assertIs(handoff.state, S.WAITING_FOR_PEER)
        dst = self._peer(h, peer)
        self.assertIs(handoff.state, S.PEER_JOINED)
        dst.connectionLost(None)
        self.assertIs(handoff.state, S.WAITING_FOR_PEER)
        dst2 = self._peer(h, peer)
        self.assertIs(handoff.state, S.PEER_JOINED)
        dst2.dataReceived(X.command(X.VMOTION_COMPLETE, self.SEQ))
        self.assertIs(handoff.state, S.COMPLETED)
        self.assertIsNone(h.port().handoff)
        self.assertEqual(h.port().counters.handoffs, 1)

    def test_complete_from_the_source_is_ignored(self) -> None:
        h = Harness()
        src, _peer = self._begin(h)
        handoff = h.port().handoff
        assert handoff is not None
        src.dataReceived(X.command(X.VMOTION_COMPLETE, self.SEQ))
        self.assertIs(handoff.state, S.WAITING_FOR_PEER)
        self.assertIs(h.port().handoff, handoff)
        self.assertEqual(h.port().counters.handoffs, 0)

    def test_expiry_and_close_end_it(self) -> None:
        h = Harness(handoffTimeout=30)
        self._begin(h)
        handoff = h.port().handoff
        assert handoff is not None
        h.clock.advance(30)
        self.assertIs(handoff.state, S.EXPIRED)
        h2 = Harness()
        self._begin(h2)
        handoff2 = h2.port().handoff
        assert handoff2 is not None
        h2.table.remove(h2.port())
        self.assertIs(handoff2.state, S.CLOSED)
        self.assertEqual(h2.table.pending, {})


def _subnegs(data: bytes) -> list[T.Subnegotiation]:
    return [e for e in T.TelnetParser().feed(data) if isinstance(e, T.Subnegotiation)]

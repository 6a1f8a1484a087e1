"""TELNET option negotiation of an ESX connection, sans-IO."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.vic import telnet as T
from vrtwist.vic.vspc_esx import OptionNegotiation

N = T.encodeNegotiation


class OptionNegotiationTests(SynchronousTestCase):
    def test_offers_are_not_answered_again(self) -> None:
        n = OptionNegotiation()
        self.assertEqual(n.offers(), bytes.fromhex("fffb00fffb03fffb01fffd00fffd03fffde8"))
        # the peer agrees to what we asked: silence, and option 232 newly enabled
        self.assertEqual(n.receive(T.WILL, T.VMWARE_EXT), (b"", True))
        self.assertEqual(n.receive(T.DO, T.BINARY), (b"", False))
        # a repeat is no change: no answer, never a loop
        self.assertEqual(n.receive(T.WILL, T.VMWARE_EXT), (b"", False))
        self.assertTrue(n.remote[T.VMWARE_EXT])
        self.assertTrue(n.local[T.BINARY])

    def test_unasked_acceptable_options_are_confirmed(self) -> None:
        n = OptionNegotiation()
        self.assertEqual(n.receive(T.WILL, T.SGA), (N(T.DO, T.SGA), True))
        self.assertEqual(n.receive(T.DO, T.ECHO), (N(T.WILL, T.ECHO), False))

    def test_other_options_are_refused(self) -> None:
        n = OptionNegotiation()
        self.assertEqual(n.receive(T.WILL, T.COM_PORT), (N(T.DONT, T.COM_PORT), False))
        self.assertEqual(n.receive(T.DO, T.AUTHENTICATION), (N(T.WONT, T.AUTHENTICATION), False))
        self.assertEqual((n.local, n.remote), ({}, {}))

    def test_turning_off_is_confirmed_only_when_it_was_on(self) -> None:
        n = OptionNegotiation()
        n.receive(T.WILL, T.SGA)
        self.assertEqual(n.receive(T.WONT, T.SGA), (N(T.DONT, T.SGA), False))
        self.assertEqual(n.receive(T.WONT, T.SGA), (b"", False))
        self.assertFalse(n.remote[T.SGA])
        # our own offer refused: the refusal answers it, nothing to confirm
        n2 = OptionNegotiation()
        n2.offers()
        self.assertEqual(n2.receive(T.DONT, T.ECHO), (b"", False))
        self.assertEqual(n2.receive(T.WONT, T.VMWARE_EXT), (b"", False))

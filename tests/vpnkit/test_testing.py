"""The shipped in-memory vpnkit peers (``vrtwist.vpnkit.testing``) do what they say."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from vrtwist.vpnkit.frames import Destination
from vrtwist.vpnkit.interfaces import IChannelAcceptor
from vrtwist.vpnkit.testing import Acceptor, LinkPair, Sink

DEST = Destination.tcp("127.0.0.1", 8080)


class LinkPairTests(SynchronousTestCase):
    def test_handshake_then_echo(self) -> None:
        """Bytes written on a channel reach the peer's Sink, which echoes them back."""
        acc = Acceptor(echo=True)
        verifyObject(IChannelAcceptor, acc)
        pair = LinkPair(acc)
        pair.pump()
        self.assertTrue(pair.a.ready and pair.b.ready)
        client = Sink()
        ch = pair.b.openChannel(DEST, client)
        ch.write(b"hello")
        pair.pump()
        (_, server) = acc.accepted[0]
        self.assertTrue(server.made)
        self.assertEqual(server.data, b"hello")
        self.assertEqual(client.data, b"hello")
        self.assertEqual(client.sha(), "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d")

    def test_close_reaches_both_sinks(self) -> None:
        """An echoing Sink closes when its peer does; the pump lets the lazy Close go."""
        acc = Acceptor(echo=True)
        pair = LinkPair(acc)
        client = Sink()
        ch = pair.b.openChannel(DEST, client)
        pair.pump()
        ch.loseWriteConnection()
        pair.pump()
        (_, server) = acc.accepted[0]
        self.assertTrue(server.eof)
        self.assertIsNotNone(server.lost)
        self.assertIsNotNone(client.lost)
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_refusing_acceptor(self) -> None:
        acc = Acceptor(refuse=True)
        pair = LinkPair(acc)
        client = Sink()
        pair.b.openChannel(DEST, client)
        pair.pump()
        self.assertEqual(acc.accepted, [])
        self.assertIsNotNone(client.lost)

    def test_record_and_chunks(self) -> None:
        """With ``record`` set the bytes of each round are kept; ``chunk`` splits them
        without changing what arrives."""
        acc = Acceptor()
        pair = LinkPair(acc)
        pair.record = True
        ch = pair.b.openChannel(DEST, Sink())
        ch.write(b"x" * 1000)
        pair.pump(chunk=7)
        self.assertEqual(acc.accepted[0][1].data, b"x" * 1000)
        self.assertGreater(len(b"".join(pair.wire_ba)), 1000)
        self.assertEqual(len(pair.wire_ab), len(pair.wire_ba))

"""The per-connection fast paths, on real sockets: in-turn dial, eager read, FIN now."""

from __future__ import annotations

import errno
import os
import socket

from twisted.internet import defer, error, reactor, task, tcp
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import directlyProvides

from tests.polling import wait_for
from tests.vpnkit.realnet import Collect, Echo, listen_tcp, open_fds
from vrtwist.vpnkit._fastwrite import plain_reads, read_now, shutdown_now
from vrtwist.vpnkit.frames import Destination
from vrtwist.vpnkit.proxy import Splice, _PendingConnect, dial


class _Recorder(Protocol):
    """Records what the reactor tells a local end; half-closeable."""

    def __init__(self) -> None:
        self.data = b""
        self.eof: defer.Deferred[object] = defer.Deferred()
        self.lost: defer.Deferred[object] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:
        if not self.eof.called:
            self.eof.callback(None)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if not self.eof.called:
            self.eof.callback(None)
        self.reason = reason
        self.lost.callback(None)

    async def close(self) -> None:
        if not self.lost.called:
            self.transport.abortConnection()  # type: ignore[union-attr]
            await self.lost


class DialTests(TestCase):
    timeout = 20

    def _splice(self) -> tuple[Splice, list[Failure]]:
        splice = Splice()
        failures: list[Failure] = []
        return splice, failures

    async def test_loopback_connect_adopted_in_the_same_turn(self) -> None:
        srv = await listen_tcp(Factory.forProtocol(Echo))
        self.addCleanup(srv.stopListening)
        splice, failures = self._splice()
        dial(reactor, Destination.tcp("127.0.0.1", srv.getHost().port), splice, failures.append)
        # no reactor turn has passed: the local end is connected already
        self.assertEqual(failures, [])
        t = splice.local_end.transport
        self.assertIsNotNone(t)
        self.assertEqual(t.getPeer().port, srv.getHost().port)  # type: ignore[union-attr]
        t.loseConnection()  # type: ignore[union-attr]

    async def test_refused_tcp_fails_with_connect_error_and_no_fd_leak(self) -> None:
        # a bound socket that does not listen refuses connections, and holds its port
        probe = socket.socket()
        self.addCleanup(probe.close)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        await task.deferLater(reactor, 0, lambda: None)
        before = open_fds()
        splice, failures = self._splice()
        dial(reactor, Destination.tcp("127.0.0.1", port), splice, failures.append)
        await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(failures), 1)
        self.assertTrue(failures[0].check(error.ConnectionRefusedError))
        self.assertIsNone(splice.local_end.transport)
        self.assertEqual(open_fds(), before)

    async def test_missing_unix_path_is_a_connect_error(self) -> None:
        splice, failures = self._splice()
        path = os.path.join(self.mktemp() + "-nowhere", "x.sock")
        dial(reactor, Destination.unix(path), splice, failures.append)
        self.assertEqual(len(failures), 1)
        self.assertTrue(failures[0].check(error.ConnectError))

    async def test_unix_destination_adopted(self) -> None:
        d = self.mktemp()
        os.makedirs(d)
        path = os.path.join(d, "s.sock")
        srv = await UNIXServerEndpoint(reactor, path).listen(Factory.forProtocol(Echo))
        self.addCleanup(srv.stopListening)
        splice, failures = self._splice()
        dial(reactor, Destination.unix(path), splice, failures.append)
        self.assertEqual(failures, [])
        self.assertIsNotNone(splice.local_end.transport)
        splice.local_end.transport.loseConnection()  # type: ignore[union-attr]

    async def test_pending_connect_adopts_when_writable(self) -> None:
        """A connect that did not finish inside connect() waits for writability."""
        srv = await listen_tcp(Factory.forProtocol(Echo))
        self.addCleanup(srv.stopListening)
        s = socket.socket()
        s.setblocking(False)
        addr = ("127.0.0.1", srv.getHost().port)
        self.assertIn(s.connect_ex(addr), (0, errno.EINPROGRESS))
        splice, failures = self._splice()
        _PendingConnect(reactor, s, socket.AF_INET, addr, splice, failures.append).start()
        await wait_for(lambda: splice.local_end.transport is not None, 1,
                       what="the pending connect to finish")
        self.assertEqual(failures, [])
        self.assertIsNotNone(splice.local_end.transport)
        # The transport owns our very socket (no duplicate descriptor).
        self.assertIs(splice.local_end.transport.getHandle(), s)  # type: ignore[union-attr]
        splice.local_end.transport.loseConnection()  # type: ignore[union-attr]

    async def test_pending_connect_reports_the_socket_error(self) -> None:
        probe = socket.socket()  # bound, not listening: refuses, and holds its port
        self.addCleanup(probe.close)
        probe.bind(("127.0.0.1", 0))
        addr = probe.getsockname()
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(addr)
        splice, failures = self._splice()
        _PendingConnect(reactor, s, socket.AF_INET, addr, splice, failures.append).start()
        await wait_for(lambda: failures, 1, what="the pending connect to fail")
        self.assertEqual(len(failures), 1)
        self.assertTrue(failures[0].check(error.ConnectionRefusedError))
        self.assertEqual(s.fileno(), -1)


class TransportFastPathTests(TestCase):
    timeout = 20

    async def _accepted(self) -> tuple[socket.socket, _Recorder]:
        """A raw client socket and the Twisted transport that accepted it."""
        server = _Recorder()
        directlyProvides(server, IHalfCloseableProtocol)
        made: defer.Deferred[None] = defer.Deferred()

        class F(Factory):
            def buildProtocol(self, addr: object) -> Protocol:
                reactor.callLater(0, made.callback, None)
                return server

        port = await listen_tcp(F())
        self.addCleanup(port.stopListening)
        raw = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(raw.close)
        await made
        self.addCleanup(server.close)
        return raw, server

    async def test_shutdown_now_sends_fin_at_once_and_is_idempotent(self) -> None:
        raw, server = await self._accepted()
        t = server.transport
        shutdown_now(t)
        shutdown_now(t)  # second call: nothing (Twisted's path would try an empty send)
        raw.settimeout(5)
        self.assertEqual(raw.recv(10), b"")  # the FIN is out without a reactor turn
        raw.sendall(b"the other way still works")
        await wait_for(lambda: len(server.data) >= 25, what="the bytes the other way")
        self.assertEqual(server.data, b"the other way still works")
        self.assertFalse(server.lost.called, getattr(server, "reason", None))

    async def test_shutdown_now_with_queued_bytes_keeps_them(self) -> None:
        raw, server = await self._accepted()
        t = server.transport
        t.write(b"queued")  # type: ignore[union-attr]  # Twisted buffers this until the next turn
        shutdown_now(t)
        raw.settimeout(5)
        got = b""
        while True:
            await task.deferLater(reactor, 0.01, lambda: None)
            part = raw.recv(100)
            if not part:
                break
            got += part
        self.assertEqual(got, b"queued")

    async def test_read_now_reads_queued_bytes(self) -> None:
        raw, server = await self._accepted()
        raw.sendall(b"early")
        read_now(reactor, server.transport)
        self.assertEqual(server.data, b"early")
        self.assertFalse(server.eof.called)

    async def test_read_now_reads_a_queued_fin(self) -> None:
        raw, server = await self._accepted()
        raw.shutdown(socket.SHUT_WR)
        read_now(reactor, server.transport)
        self.assertTrue(server.eof.called)
        self.assertFalse(server.lost.called)  # a half-close, not the end

    async def test_read_now_with_nothing_queued_changes_nothing(self) -> None:
        raw, server = await self._accepted()
        read_now(reactor, server.transport)
        self.assertEqual(server.data, b"")
        self.assertFalse(server.eof.called)
        self.assertFalse(server.lost.called, getattr(server, "reason", None))
        raw.sendall(b"later")
        await wait_for(lambda: server.data, what="the bytes sent later")
        self.assertEqual(server.data, b"later")

    async def test_plain_reads_on_a_unix_link(self) -> None:
        d = self.mktemp()
        os.makedirs(d)
        path = os.path.join(d, "l.sock")
        srv = await UNIXServerEndpoint(reactor, path).listen(Factory.forProtocol(Echo))
        self.addCleanup(srv.stopListening)
        c = Collect(b"through recv")
        proto = await UNIXClientEndpoint(reactor, path).connect(Factory.forProtocol(lambda: c))
        plain_reads(proto.transport)
        self.assertEqual(proto.transport.doRead.__func__, tcp.Connection.doRead)
        data, _ = await c.done
        self.assertEqual(data, b"through recv")

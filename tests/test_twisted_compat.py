"""vrtwist._twisted_compat: each private-internals helper, and each forced fallback.

The transports are Twisted's own socket transports over real ``socketpair`` sockets,
registered with a ``MemoryReactor`` so that nothing runs unless the test calls it: the
difference between "sent now" and "sent on the next reactor turn" (``doWrite``) is then
visible on the peer socket.
"""

from __future__ import annotations

import signal
import socket
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet.endpoints import _WrappingFactory
from twisted.internet.error import ConnectionRefusedError, NoProtocol
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from vrtwist import _twisted_compat as compat
from vrtwist.vpnkit._fastwrite import plain_reads, read_now, send_now, shutdown_now
from vrtwist.vsock.splice import spliceable


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class TransportCase(SynchronousTestCase):
    """A connected ``tcp.Connection`` (or unix server transport) and its raw peer."""

    def connection(self, kind: str = "tcp") -> tuple[Any, socket.socket, Recorder]:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        proto = Recorder()
        memory = MemoryReactor()
        if kind == "unix":
            port = unix.Port("unused", Factory(), reactor=memory)  # type: ignore[arg-type]
            t: Any = unix.Server(a, proto, None, port, 0, memory)
        else:
            t = tcp.Connection(a, proto, memory)
        t.connected = 1
        proto.makeConnection(t)
        return t, b, proto

    def pending(self, peer: socket.socket) -> bytes | None:
        """What the peer can read right now (None: nothing yet)."""
        try:
            return peer.recv(65536)
        except BlockingIOError:
            return None


class WriteStateTests(TransportCase):
    def test_send_now_sends_at_once_when_idle(self) -> None:
        t, peer, _ = self.connection()
        self.assertTrue(compat.write_idle(t))
        send_now(t, [b"ab", memoryview(b"cd")])
        self.assertEqual(self.pending(peer), b"abcd")
        self.assertTrue(compat.nothing_queued(t))

    def test_queued_bytes_are_not_overtaken(self) -> None:
        t, peer, _ = self.connection()
        t.write(b"first")
        self.assertFalse(compat.write_idle(t))
        send_now(t, [b"second"])
        self.assertIsNone(self.pending(peer))
        t.doWrite()
        self.assertEqual(self.pending(peer), b"firstsecond")

    def test_fallback_without_write_state(self) -> None:
        """Forced: no private write state. Bytes go through ``writeSequence`` and leave on
        the next write event, in order, none lost."""
        self.patch(compat, "HAS_WRITE_STATE", False)
        t, peer, _ = self.connection()
        self.assertFalse(compat.write_idle(t))
        self.assertFalse(compat.nothing_queued(t))
        send_now(t, [b"ab", b"cd"])
        self.assertIsNone(self.pending(peer))
        t.doWrite()
        self.assertEqual(self.pending(peer), b"abcd")

    def test_fallback_instance_without_temp_buffer(self) -> None:
        """Forced: a transport with no ``_tempDataLen`` is never taken for idle."""
        t, _, _ = self.connection()
        del t._tempDataLen
        self.assertFalse(compat.nothing_queued(t))

    def test_splice_fallback_without_write_state(self) -> None:
        """Forced: without the write state the splice declines and the relay copies."""
        t, _, _ = self.connection()
        self.assertTrue(spliceable(t))
        self.patch(compat, "HAS_WRITE_STATE", False)
        self.assertFalse(compat.nothing_queued(t))
        self.assertFalse(spliceable(t))


class HalfCloseTests(TransportCase):
    def test_fin_now(self) -> None:
        t, peer, _ = self.connection()
        t.write(b"x")
        t.doWrite()
        self.assertEqual(self.pending(peer), b"x")
        shutdown_now(t)
        self.assertTrue(compat.write_closed(t))
        self.assertEqual(self.pending(peer), b"")  # the FIN, at once
        shutdown_now(t)  # a second call is a no-op, not an EPIPE
        self.assertTrue(t.connected)

    def test_fallback_without_close_write(self) -> None:
        """Forced: no ``_closeWriteConnection``. The public ``loseWriteConnection`` sends
        the FIN on the next write event, after everything queued."""
        self.patch(compat, "HAS_CLOSE_WRITE", False)
        t, peer, _ = self.connection()
        self.assertFalse(compat.close_write_now(t))
        self.assertFalse(compat.write_closed(t))
        self.assertIsNone(self.pending(peer))
        t.doWrite()
        self.assertEqual(self.pending(peer), b"")


class ReadTests(TransportCase):
    def test_read_now(self) -> None:
        from twisted.internet import reactor

        self.assertIsNotNone(compat.disconnector(reactor))
        t, peer, proto = self.connection()
        peer.send(b"hello")
        read_now(reactor, t)
        self.assertEqual(proto.data, b"hello")

    def test_fallback_without_disconnect_selectable(self) -> None:
        """Forced: a reactor without ``_disconnectSelectable``. Nothing is read now; the
        bytes wait in the socket for the reactor's own read event."""
        t, peer, proto = self.connection()
        peer.send(b"hello")
        bare = MemoryReactor()
        self.assertIsNone(compat.disconnector(bare))
        read_now(bare, t)
        self.assertEqual(proto.data, b"")
        t.doRead()
        self.assertEqual(proto.data, b"hello")

    def test_plain_unix_reads(self) -> None:
        t, peer, proto = self.connection("unix")
        self.assertTrue(compat.plain_unix_reads(t))
        self.assertIn("doRead", t.__dict__)
        peer.send(b"data")
        t.doRead()
        self.assertEqual(proto.data, b"data")
        tcp_t, _, _ = self.connection()
        self.assertFalse(compat.plain_unix_reads(tcp_t))  # not a unix transport

    def test_fallback_without_sendmsg_mixin(self) -> None:
        """Forced: no ``_SendmsgMixin``. The transport keeps Twisted's own reads."""
        self.patch(compat, "HAS_SENDMSG_MIXIN", False)
        t, peer, proto = self.connection("unix")
        plain_reads(t)
        self.assertNotIn("doRead", t.__dict__)
        peer.send(b"data")
        t.doRead()
        self.assertEqual(proto.data, b"data")


class OverrideTests(SynchronousTestCase):
    def test_override_and_restore(self) -> None:
        class Transport:
            def doRead(self) -> str:
                return "class"

        t = Transport()
        self.assertTrue(compat.override_io(t, doRead=lambda: "instance"))
        self.assertEqual(t.doRead(), "instance")
        compat.restore_io(t, ("doRead", "doWrite"))
        self.assertEqual(t.doRead(), "class")

    def test_fallback_without_instance_dict(self) -> None:
        """Forced: an instance that cannot hold methods is left unchanged."""

        class Slotted:
            __slots__ = ()

            def doRead(self) -> str:
                return "class"

        t = Slotted()
        self.assertFalse(compat.override_io(t, doRead=lambda: "instance"))
        compat.restore_io(t, ("doRead",))
        self.assertEqual(t.doRead(), "class")


class ExitSignalTests(SynchronousTestCase):
    def test_set(self) -> None:
        class Reactor:
            _exitSignal: int | None = None

        r = Reactor()
        self.assertTrue(compat.set_exit_signal(r, signal.SIGTERM))
        self.assertEqual(r._exitSignal, signal.SIGTERM)

    def test_fallback_without_exit_signal(self) -> None:
        """Forced: a reactor with no ``_exitSignal`` gets no new attribute."""

        class Reactor:
            pass

        r = Reactor()
        self.assertFalse(compat.set_exit_signal(r, signal.SIGTERM))
        self.assertFalse(hasattr(r, "_exitSignal"))


class WrappingFactoryTests(SynchronousTestCase):
    def test_private_factory_when_present(self) -> None:
        wf, d = compat.client_wrapping_factory(Factory.forProtocol(Recorder))
        self.assertIsInstance(wf, _WrappingFactory)
        self.assertIs(d, wf._onConnection)

    def test_fallback_fires_on_connection(self) -> None:
        """Forced: no ``_WrappingFactory``. The public stand-in fires with the protocol
        once its transport is connected, with the real transport (no wrapper)."""
        self.patch(compat, "HAS_WRAPPING_FACTORY", False)
        wf, d = compat.client_wrapping_factory(Factory.forProtocol(Recorder))
        self.assertNoResult(d)
        proto = wf.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertIs(self.successResultOf(d), proto)
        self.assertIs(proto.transport, transport)

    def test_fallback_reports_failures(self) -> None:
        self.patch(compat, "HAS_WRAPPING_FACTORY", False)
        wf, d = compat.client_wrapping_factory(Factory.forProtocol(Recorder))
        wf.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.failureResultOf(d, ConnectionRefusedError)

        class Refusing(Factory):
            def buildProtocol(self, addr: Any) -> None:
                return None

        wf, d = compat.client_wrapping_factory(Refusing())
        self.assertIsNone(wf.buildProtocol(None))
        self.failureResultOf(d, NoProtocol)


class PlainSocketTests(TransportCase):
    def test_plain_socket(self) -> None:
        t, _, _ = self.connection()
        self.assertIs(compat.plain_socket(t), t.socket)
        self.assertIsNone(compat.plain_socket(StringTransport()))

    def test_tls_transports_have_none(self) -> None:
        t, _, _ = self.connection()
        t.TLS = True
        self.assertIsNone(compat.plain_socket(t))
        s = StringTransport()
        s.socket = socket.socket()  # type: ignore[attr-defined]
        self.addCleanup(s.socket.close)  # type: ignore[attr-defined]
        directlyProvides(s, ISSLTransport)
        self.assertIsNone(compat.plain_socket(s))


class OneDoorTests(SynchronousTestCase):
    """No vrtwist module but the door names these Twisted internals."""

    def test_private_names_only_in_compat(self) -> None:
        from pathlib import Path

        import vrtwist

        names = ("_SendmsgMixin", "_tempData", "_disconnectSelectable", "_exitSignal",
                 "_WrappingFactory", "_closeWriteConnection", "_writeDisconnect", "_bindPath")
        root = Path(vrtwist.__file__).parent
        found = {
            str(p.relative_to(root)): n
            for p in root.rglob("*.py") if p.name != "_twisted_compat.py"
            for n in names if n in p.read_text()
        }
        self.assertEqual(found, {})


class BoundUnixPathTests(SynchronousTestCase):
    def test_bind_path_when_present(self) -> None:
        class Port:
            _bindPath = "/run/x.sock"

        self.assertEqual(compat.bound_unix_path(Port()), "/run/x.sock")

    def test_fallback_to_get_host(self) -> None:
        """Forced: a port without ``_bindPath`` (Twisted before it) answers through the
        public ``getHost()`` of its listening socket."""
        import os
        import tempfile

        from twisted.internet.testing import MemoryReactor

        d = tempfile.mkdtemp(prefix="hc-")
        path = os.path.join(d, "l.sock")
        port = unix.Port(path, Factory(), reactor=MemoryReactor())  # type: ignore[arg-type]
        port.startListening()
        self.addCleanup(os.rmdir, d)
        self.addCleanup(os.unlink, path)
        self.addCleanup(port.socket.close)
        port.__dict__.pop("_bindPath", None)  # as on a Twisted that never set it
        self.assertFalse(hasattr(port, "_bindPath"))
        self.assertEqual(os.fsdecode(compat.bound_unix_path(port)), path)

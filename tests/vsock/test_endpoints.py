"""AF_VSOCK endpoints: address grammar, socket setup, and the accepted transport's CID."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import error
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from vrtwist.vsock.endpoints import (
    AF_VSOCK,
    VMADDR_CID_ANY,
    VMADDR_PORT_ANY,
    VSockAddress,
    VSockAddressError,
    VSockClientEndpoint,
    VSockClientParser,
    VSockPort,
    VSockServerEndpoint,
    VSockServerParser,
    parseCID,
    parsePort,
)


def _vsockAvailable() -> str | None:
    try:
        s = socket.socket(AF_VSOCK, socket.SOCK_STREAM)
    except (OSError, AttributeError) as e:
        return f"AF_VSOCK sockets unavailable here: {e}"
    s.close()
    return None


class AddressTests(SynchronousTestCase):
    def test_address_interface(self) -> None:
        a = VSockAddress(3, 1024)
        verifyObject(IAddress, a)
        self.assertEqual(str(a), "vsock:3:1024")
        self.assertEqual(a, VSockAddress(3, 1024))

    def test_cid_names_and_numbers(self) -> None:
        self.assertEqual(parseCID("any"), VMADDR_CID_ANY)
        self.assertEqual(parseCID("-1"), VMADDR_CID_ANY)
        self.assertEqual(parseCID("host"), 2)
        self.assertEqual(parseCID("LOCAL"), 1)
        self.assertEqual(parseCID("hypervisor"), 0)
        self.assertEqual(parseCID("0x10"), 16)
        self.assertEqual(parseCID(7), 7)
        self.assertEqual(parsePort("any"), VMADDR_PORT_ANY)

    def test_bad_cid_and_port(self) -> None:
        for bad in ("guest", "", "4294967296", "-2", "3.5"):
            self.assertRaises(VSockAddressError, parseCID, bad)
        self.assertRaises(VSockAddressError, parsePort, "http")
        self.assertRaises(VSockAddressError, parsePort, "99999999999")


class ParserTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactor()

    def test_server_port_only(self) -> None:
        ep = VSockServerParser().parseStreamServer(self.reactor, "1024")
        verifyObject(IStreamServerEndpoint, ep)
        self.assertEqual((ep._cid, ep._port, ep._backlog), (VMADDR_CID_ANY, 1024, 50))

    def test_server_cid_keyword_and_positional(self) -> None:
        ep = VSockServerParser().parseStreamServer(self.reactor, "1024", cid="3", backlog="5")
        self.assertEqual((ep._cid, ep._port, ep._backlog), (3, 1024, 5))
        ep = VSockServerParser().parseStreamServer(self.reactor, "host", "2377")
        self.assertEqual((ep._cid, ep._port), (2, 2377))

    def test_server_errors(self) -> None:
        p = VSockServerParser()
        self.assertRaises(VSockAddressError, p.parseStreamServer, self.reactor)
        self.assertRaises(VSockAddressError, p.parseStreamServer, self.reactor, "1", "2", "3")
        self.assertRaises(VSockAddressError, p.parseStreamServer, self.reactor, "1", port="2")
        self.assertRaises(VSockAddressError, p.parseStreamServer, self.reactor, "1", "2", cid="3")
        self.assertRaises(VSockAddressError, p.parseStreamServer, self.reactor, "1", color="red")

    def test_client(self) -> None:
        ep = VSockClientParser().parseStreamClient(self.reactor, "3", "5000", timeout="2.5")
        verifyObject(IStreamClientEndpoint, ep)
        self.assertEqual((ep._cid, ep._port, ep._timeout), (3, 5000, 2.5))
        ep = VSockClientParser().parseStreamClient(self.reactor, cid="host", port="1")
        self.assertEqual((ep._cid, ep._port), (2, 1))

    def test_client_errors(self) -> None:
        p = VSockClientParser()
        self.assertRaises(VSockAddressError, p.parseStreamClient, self.reactor, "5000")
        self.assertRaises(VSockAddressError, p.parseStreamClient, self.reactor, "3", "4", "5")
        self.assertRaises(VSockAddressError, p.parseStreamClient, self.reactor, "x", "4")
        self.assertRaises(VSockAddressError, p.parseStreamClient, self.reactor, "3", "4", cid="3")
        self.assertRaises(VSockAddressError, p.parseStreamClient, self.reactor, "3", "4", tls="1")

    def test_through_twisted_plugins(self) -> None:
        """``serverFromString``/``clientFromString`` find the ``vsock`` plugin."""
        ep = serverFromString(self.reactor, "vsock:3:1234")
        self.assertIsInstance(ep, VSockServerEndpoint)
        self.assertEqual((ep._cid, ep._port), (3, 1234))
        cep = clientFromString(self.reactor, "vsock:2:1234")
        self.assertIsInstance(cep, VSockClientEndpoint)
        self.assertEqual((cep._cid, cep._port), (2, 1234))


class _FakeListener:
    """A listening socket stand-in whose accept() yields one real socket with a vsock peer."""

    def __init__(self, conn: socket.socket, peer: tuple[int, int]) -> None:
        self._pending = [(conn, peer)]

    def accept(self) -> tuple[socket.socket, tuple[int, int]]:
        if not self._pending:
            raise BlockingIOError(11, "again")
        return self._pending.pop()

    def fileno(self) -> int:
        return -1


class AcceptTests(SynchronousTestCase):
    """The protocol sees the caller's CID both in buildProtocol and in getPeer()."""

    def test_accept_reports_peer_cid(self) -> None:
        reactor = MemoryReactor()
        seen: list[Any] = []

        class F(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                seen.append(addr)
                return Protocol()

        port = VSockPort(4000, F(), reactor=reactor)
        a, b = socket.socketpair()
        self.addCleanup(b.close)
        a.setblocking(False)
        port.socket = _FakeListener(a, (17, 1025))
        port.numberAccepts = 1
        port.connected = True
        port.doRead()
        self.assertEqual(seen, [VSockAddress(17, 1025)])
        (transport,) = [r for r in reactor.readers if r is not port]
        self.assertEqual(transport.getPeer(), VSockAddress(17, 1025))
        self.assertTrue(transport.getTcpNoDelay())
        transport.setTcpNoDelay(False)
        from twisted.python.failure import Failure

        transport.connectionLost(Failure(error.ConnectionDone()))


class RealSocketTests(TestCase):
    """Real AF_VSOCK sockets: listening works here; connecting needs a vsock transport."""

    def setUp(self) -> None:
        reason = _vsockAvailable()
        if reason:
            raise self.skipTest(reason)
        from twisted.internet import reactor

        self.reactor = reactor

    async def test_listen_any_cid_any_port(self) -> None:
        ep = VSockServerEndpoint(self.reactor, VMADDR_PORT_ANY)
        port = await ep.listen(Factory.forProtocol(Protocol))
        verifyObject(IListeningPort, port)
        host = port.getHost()
        self.assertIsInstance(host, VSockAddress)
        self.assertEqual(host.cid, VMADDR_CID_ANY)  # type: ignore[attr-defined]
        self.assertNotEqual(host.port, VMADDR_PORT_ANY)  # type: ignore[attr-defined]
        await port.stopListening()  # type: ignore[misc]

    async def test_listen_twice_same_port_fails_clearly(self) -> None:
        ep = VSockServerEndpoint(self.reactor, VMADDR_PORT_ANY)
        port = await ep.listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        again = VSockServerEndpoint(self.reactor, port.getHost().port)  # type: ignore[attr-defined]
        with self.assertRaises(error.CannotListenError):
            await again.listen(Factory.forProtocol(Protocol))

    async def test_connect_without_transport_fails_cleanly(self) -> None:
        """Without vsock loopback, a connect to our own listener fails with a ConnectError."""
        port = await VSockServerEndpoint(self.reactor, VMADDR_PORT_ANY).listen(
            Factory.forProtocol(Protocol)
        )
        self.addCleanup(port.stopListening)
        try:
            from vrtwist.vsock.endpoints import localCID

            cid = localCID()
        except OSError as e:
            raise self.skipTest(f"no /dev/vsock to read the local CID: {e}") from None
        ep = VSockClientEndpoint(self.reactor, cid, port.getHost().port, timeout=3)  # type: ignore[attr-defined]
        try:
            proto = await ep.connect(Factory.forProtocol(Protocol))
        except error.ConnectError:
            return  # this machine: ENODEV (no loopback transport)
        # A machine with vsock_loopback: the connection works end to end.
        self.assertEqual(proto.transport.getPeer(), VSockAddress(cid, port.getHost().port))  # type: ignore[attr-defined]
        proto.transport.loseConnection()  # type: ignore[attr-defined]

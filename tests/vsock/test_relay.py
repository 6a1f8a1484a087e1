"""The vsock relay over unix and TCP stand-ins: half-close, backpressure, PROXY v2, chaining."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
    serverFromString,
)
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.polling import wait_for
from vrtwist.vsock import proxyv2 as P
from vrtwist.vsock import relay_tap
from vrtwist.vsock.relay import (
    BackendRoutes,
    IBackendRoutes,
    RelayConfig,
    RouteError,
    VSockRelayFactory,
)


@implementer(IPushProducer)
class Pump:
    """Writes ``data`` into a transport as fast as its flow control allows."""

    def __init__(self, transport: Any, data: bytes, chunk: int = 65536, eof: bool = True) -> None:
        self.t, self.data, self.chunk, self.eof = transport, data, chunk, eof
        self.offset = 0
        self.paused = False
        self.everPaused = False
        t = transport
        t.registerProducer(self, True)
        reactor.callLater(0, self._go)

    def _go(self) -> None:
        while not self.paused and self.offset < len(self.data):
            self.t.write(self.data[self.offset : self.offset + self.chunk])
            self.offset += self.chunk
        if self.offset >= len(self.data):
            self.t.unregisterProducer()
            if self.eof:
                self.t.loseWriteConnection()

    def pauseProducing(self) -> None:
        self.paused = self.everPaused = True

    def resumeProducing(self) -> None:
        self.paused = False
        reactor.callLater(0, self._go)

    def stopProducing(self) -> None:
        self.paused = True


@implementer(IHalfCloseableProtocol)
class Peer(Protocol):
    """A test endpoint: records bytes and EOF; optionally answers at EOF with a digest."""

    def __init__(
        self, answerAtEOF: bool = False, stalled: bool = False, closeAtEOF: bool = True
    ) -> None:
        self.closeAtEOF = closeAtEOF
        self.received = bytearray()
        self.eof = False
        self.answerAtEOF = answerAtEOF
        self.stalled = stalled
        self.done: Deferred[None] = Deferred()
        self.waiters: list[tuple[Any, Deferred[None]]] = []

    def connectionMade(self) -> None:
        if self.stalled:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def readConnectionLost(self) -> None:
        self.eof = True
        if self.answerAtEOF:
            digest = hashlib.sha256(self.received).hexdigest().encode()
            self.transport.write(digest)  # type: ignore[union-attr]
        if self.answerAtEOF or self.closeAtEOF:
            self.transport.loseConnection()  # type: ignore[union-attr]
        self._check()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)
        self._check()

    def until(self, pred: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if pred():
            d.callback(None)
        else:
            self.waiters.append((pred, d))
        return d

    def _check(self) -> None:
        keep = []
        for pred, d in self.waiters:
            if pred():
                d.callback(None)
            else:
                keep.append((pred, d))
        self.waiters = keep


class PeerFactory(Factory):
    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.peers: list[Peer] = []
        self.arrived: list[Deferred[Peer]] = []

    def buildProtocol(self, addr: Any) -> Peer:
        p = Peer(**self.kw)
        self.peers.append(p)
        if self.arrived:
            reactor.callLater(0, self.arrived.pop(0).callback, p)
        return p

    def next(self) -> Deferred[Peer]:
        d: Deferred[Peer] = Deferred()
        if len(self.peers) > len(self.arrived) and self.peers:
            d.callback(self.peers[-1])
        else:
            self.arrived.append(d)
        return d


class RoutesTests(SynchronousTestCase):
    def test_parse_routes(self) -> None:
        r = BackendRoutes()
        verifyObject(IBackendRoutes, r)
        r.add("3=tcp:127.0.0.1:80")
        r.add("host=unix:/run/h.sock")
        r.add("tcp:host=10.0.0.1:port=2377")
        self.assertEqual(r.byCID, {3: "tcp:127.0.0.1:80", 2: "unix:/run/h.sock"})
        self.assertEqual(r.default, "tcp:host=10.0.0.1:port=2377")
        self.assertEqual(r.endpointFor(3), "tcp:127.0.0.1:80")
        self.assertEqual(r.endpointFor(4), "tcp:host=10.0.0.1:port=2377")
        self.assertEqual(r.endpointFor(None), "tcp:host=10.0.0.1:port=2377")

    def test_route_errors(self) -> None:
        r = BackendRoutes()
        self.assertRaises(RouteError, r.add, "guest=tcp:1.2.3.4:5")
        self.assertRaises(RouteError, r.add, "3=")
        r.add("3=tcp:1.2.3.4:5")
        self.assertRaises(RouteError, r.add, "3=tcp:1.2.3.4:6")
        r.add("tcp:1.2.3.4:7")
        self.assertRaises(RouteError, r.add, "tcp:1.2.3.4:8")

    def test_options(self) -> None:
        o = relay_tap.Options()
        o.parseOptions(
            ["--listen", "vsock:1024", "--backend", "3=tcp:127.0.0.1:1", "-b", "unix:/x", "-p"]
        )
        self.assertEqual(o["routes"].byCID, {3: "tcp:127.0.0.1:1"})
        self.assertTrue(o["proxy-protocol"])
        svc = relay_tap.makeService(o)
        self.assertEqual(len(list(svc)), 1)
        self.assertRaises(
            usage.UsageError, relay_tap.Options().parseOptions, ["--listen", "vsock:1"]
        )
        self.assertRaises(
            usage.UsageError, relay_tap.Options().parseOptions, ["--backend", "x=tcp:1:2"]
        )


class RelayNetTests(TestCase):
    """Kernel splice(2) between the sockets (the default)."""

    timeout = 60
    splice = True

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vsr")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.factories: list[PeerFactory] = []
        self.relays: list[VSockRelayFactory] = []
        self.addCleanup(self._allClosed)

    async def _allClosed(self) -> None:
        """Runs last: every backend connection the relay opened must be closed."""
        for f in self.factories:
            for p in f.peers:
                await p.done
        for r in self.relays:
            await wait_for(lambda: not (r.stats.backendsOpen or r.stats.active),
                           what="the relay's connections to close")

    async def tcpBackend(self, **kw: Any) -> tuple[PeerFactory, int]:
        f = PeerFactory(**kw)
        self.factories.append(f)
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(f)
        self.addCleanup(port.stopListening)
        return f, port.getHost().port

    async def relay(self, listen: str, *backends: str, **cfg: Any) -> VSockRelayFactory:
        routes = BackendRoutes()
        for b in backends:
            routes.add(b)
        cfg.setdefault("splice", self.splice)
        f = VSockRelayFactory(reactor, RelayConfig(routes=routes, **cfg))
        self.relays.append(f)
        port = await serverFromString(reactor, listen).listen(f)
        self.addCleanup(port.stopListening)
        f.listening = port  # type: ignore[attr-defined]
        return f

    async def unixClient(self, path: str, **kw: Any) -> Peer:
        p = await connectProtocol(UNIXClientEndpoint(reactor, path), Peer(**kw))
        self.addCleanup(self._close, p)
        return p

    async def tcpClient(self, port: int, **kw: Any) -> Peer:
        p = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Peer(**kw))
        self.addCleanup(self._close, p)
        return p

    async def _close(self, p: Peer) -> None:
        if not p.done.called:
            p.transport.loseConnection()  # type: ignore[union-attr]
            await p.done

    async def unixBackend(self, **kw: Any) -> tuple[PeerFactory, str]:
        f = PeerFactory(**kw)
        self.factories.append(f)
        path = os.path.join(self.dir, "backend.sock")
        port = await serverFromString(reactor, f"unix:{path}").listen(f)
        self.addCleanup(port.stopListening)
        return f, path

    async def test_unix_to_unix(self) -> None:
        """A unix stand-in relayed to a unix backend (the appliance's socket): spliced too."""
        backends, bpath = await self.unixBackend(answerAtEOF=True)
        sock = os.path.join(self.dir, "r.sock")
        relay = await self.relay(f"unix:{sock}", f"unix:{bpath}")
        client = await self.unixClient(sock)
        data = random.Random(11).randbytes(5 * 1024 * 1024 + 3)
        Pump(client.transport, data)
        await client.done
        self.assertEqual(bytes(client.received), hashlib.sha256(data).hexdigest().encode())
        self.assertTrue(backends.peers[0].eof)
        self.assertEqual(relay.stats.spliced, 1 if self.splice else 0)
        self.assertEqual(relay.stats.bytesToBackend, len(data))

    async def test_half_close_both_ways_unix_to_tcp(self) -> None:
        backends, bport = await self.tcpBackend(answerAtEOF=True)
        sock = os.path.join(self.dir, "r.sock")
        relay = await self.relay(f"unix:{sock}", f"tcp:127.0.0.1:{bport}")
        client = await self.unixClient(sock)
        data = random.Random(1).randbytes(3 * 1024 * 1024 + 7)
        Pump(client.transport, data)  # ends with loseWriteConnection: EOF to the backend
        await client.done
        # the backend got EOF, then still answered through the relay
        self.assertEqual(bytes(client.received), hashlib.sha256(data).hexdigest().encode())
        self.assertTrue(backends.peers[0].eof)
        self.assertEqual(relay.stats.spliced, 1 if self.splice else 0)
        self.assertEqual(relay.stats.bytesToBackend, len(data))
        self.assertEqual(relay.stats.bytesToCaller, 64)

    async def test_proxy_header_for_tcp_caller(self) -> None:
        backends, bport = await self.tcpBackend()
        relay = await self.relay(
            "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{bport}", proxyProtocol=True
        )
        client = await self.tcpClient(relay.listening.getHost().port)  # type: ignore[attr-defined]
        client.transport.write(b"hello")  # type: ignore[union-attr]
        peer = await backends.next()
        await peer.until(lambda: len(peer.received) >= 16 + 12 + 5)
        got = P.decode(bytes(peer.received))
        assert got is not None
        header, used = got
        self.assertEqual(header.family, P.AF_INET)
        self.assertEqual(header.source, ("127.0.0.1", client.transport.getHost().port))  # type: ignore[union-attr]
        self.assertEqual(bytes(peer.received[used:]), b"hello")

    async def test_route_by_cid_from_header(self) -> None:
        a, aport = await self.tcpBackend()
        b, bport = await self.tcpBackend()
        sock = os.path.join(self.dir, "r.sock")
        await self.relay(
            f"unix:{sock}", f"7=tcp:127.0.0.1:{aport}", f"tcp:127.0.0.1:{bport}", acceptProxy=True
        )
        for cid, target in ((7, a), (8, b)):
            c = await self.unixClient(sock)
            hdr = P.encode(P.ProxyHeader(source=(cid, 1025), destination=(2, 1024), vsock=True))
            c.transport.write(hdr[:10])  # type: ignore[union-attr]
            await deferLater(reactor, 0.01, lambda: None)
            c.transport.write(hdr[10:] + f"from {cid}".encode())  # type: ignore[union-attr]
            peer = await target.next()
            await peer.until(lambda: len(peer.received) >= 6)
            self.assertEqual(bytes(peer.received), f"from {cid}".encode())

    async def test_relay_to_relay_chaining_keeps_the_cid(self) -> None:
        final, fport = await self.tcpBackend()
        other, oport = await self.tcpBackend()
        relay2 = await self.relay(
            "tcp:0:interface=127.0.0.1",
            f"5=tcp:127.0.0.1:{fport}",
            f"tcp:127.0.0.1:{oport}",
            acceptProxy=True,
            proxyProtocol=True,
        )
        sock = os.path.join(self.dir, "r1.sock")
        await self.relay(
            f"unix:{sock}",
            f"tcp:127.0.0.1:{relay2.listening.getHost().port}",  # type: ignore[attr-defined]
            acceptProxy=True,
            proxyProtocol=True,
        )
        c = await self.unixClient(sock)
        hdr = P.encode(P.ProxyHeader(source=(5, 999), destination=(2, 1024), vsock=True))
        c.transport.write(hdr + b"through two relays")  # type: ignore[union-attr]
        peer = await final.next()
        await peer.until(lambda: b"relays" in peer.received)
        got = P.decode(bytes(peer.received))
        assert got is not None
        self.assertEqual(got[0].source_cid, 5)
        self.assertEqual(bytes(peer.received[got[1] :]), b"through two relays")
        self.assertEqual(other.peers, [])

    async def test_backpressure_stalled_backend(self) -> None:
        backends, bport = await self.tcpBackend(stalled=True)
        sock = os.path.join(self.dir, "r.sock")
        relay = await self.relay(f"unix:{sock}", f"tcp:127.0.0.1:{bport}")
        client = await self.unixClient(sock)
        data = random.Random(2).randbytes(32 * 1024 * 1024)
        pump = Pump(client.transport, data, eof=False)
        peer = await backends.next()
        await wait_for(lambda: pump.everPaused, what="the caller to be paused")
        await deferLater(reactor, 0.1, lambda: None)
        self.assertLess(pump.offset, len(data))  # the caller was held back
        self.assertEqual(len(peer.received), 0)
        peer.transport.resumeProducing()  # type: ignore[union-attr]
        await peer.until(lambda: len(peer.received) >= len(data))
        self.assertEqual(hashlib.sha256(peer.received).digest(), hashlib.sha256(data).digest())
        self.assertEqual(relay.stats.active, 1)

    async def test_backpressure_stalled_caller(self) -> None:
        backends, bport = await self.tcpBackend()
        sock = os.path.join(self.dir, "r.sock")
        await self.relay(f"unix:{sock}", f"tcp:127.0.0.1:{bport}")
        client = await self.unixClient(sock, stalled=True)
        client.transport.write(b"go")  # type: ignore[union-attr]
        peer = await backends.next()
        data = random.Random(3).randbytes(32 * 1024 * 1024)
        pump = Pump(peer.transport, data, eof=True)
        await wait_for(lambda: pump.everPaused, what="the backend to be paused")
        self.assertLess(pump.offset, len(data))
        client.transport.resumeProducing()  # type: ignore[union-attr]
        await client.until(lambda: client.eof or len(client.received) >= len(data))
        await client.until(lambda: len(client.received) >= len(data))
        self.assertEqual(hashlib.sha256(client.received).digest(), hashlib.sha256(data).digest())

    async def test_backend_reset_mid_stream_closes_the_caller(self) -> None:
        backends, bport = await self.tcpBackend()
        sock = os.path.join(self.dir, "r.sock")
        relay = await self.relay(f"unix:{sock}", f"tcp:127.0.0.1:{bport}")
        client = await self.unixClient(sock)
        Pump(client.transport, random.Random(5).randbytes(8 * 1024 * 1024), eof=False)
        peer = await backends.next()
        await peer.until(lambda: len(peer.received) > 65536)
        peer.transport.abortConnection()  # type: ignore[union-attr]
        await client.done
        await wait_for(lambda: not (relay.stats.active or relay.stats.backendsOpen),
                       what="the relay's connections to close")

    async def test_backend_refused_closes_caller_only(self) -> None:
        sock = os.path.join(self.dir, "r.sock")
        relay = await self.relay(f"unix:{sock}", "tcp:127.0.0.1:1")
        c = await self.unixClient(sock)
        c.transport.write(b"anyone?")  # type: ignore[union-attr]
        await c.done
        self.assertEqual(relay.stats.backendFailures, 1)
        self.assertEqual(relay.stats.active, 0)

    async def test_no_route_and_bad_header_are_refused(self) -> None:
        sock = os.path.join(self.dir, "r.sock")
        relay = await self.relay(f"unix:{sock}", "9=tcp:127.0.0.1:1", acceptProxy=True)
        c = await self.unixClient(sock)
        c.transport.write(b"GET / HTTP/1.0\r\n\r\n")  # type: ignore[union-attr]
        await c.done
        c = await self.unixClient(sock)
        c.transport.write(P.encode(P.ProxyHeader(source=(4, 1), destination=(2, 2), vsock=True)))  # type: ignore[union-attr]
        await c.done
        self.assertEqual(relay.stats.refused, 2)

    async def test_twistd_plugin_end_to_end(self) -> None:
        """``twistd -n vsock-relay`` as a real process, unix listener stand-in."""
        from twisted.internet.utils import getProcessOutputAndValue  # noqa: F401

        _backends, bport = await self.tcpBackend(answerAtEOF=True)
        sock = os.path.join(self.dir, "t.sock")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        argv = [
            twistd,
            "-n",
            "--pidfile=",
            "-l",
            os.path.join(self.dir, "log"),
            "vsock-relay",
            "--listen",
            f"unix:{sock}",
            "--backend",
            f"tcp:127.0.0.1:{bport}",
        ]
        from twisted.internet.protocol import ProcessProtocol

        ended: Deferred[None] = Deferred()

        class PP(ProcessProtocol):
            def processEnded(self, reason: Any) -> None:
                ended.callback(None)

        proc = reactor.spawnProcess(PP(), twistd, argv, env=dict(os.environ))
        try:
            # up to 30 s: twistd starts slowly on a loaded machine
            await wait_for(lambda: os.path.exists(sock), 30, 0.05, what="the relay's socket")
            c = await self.unixClient(sock)
            Pump(c.transport, b"\x00\xff" * 50000)
            await c.done
            self.assertEqual(
                bytes(c.received), hashlib.sha256(b"\x00\xff" * 50000).hexdigest().encode()
            )
        finally:
            proc.signalProcess("TERM")
            await ended
        with open(os.path.join(self.dir, "log")) as f:
            log = f.read()
        # our stop handler, which logs from the reactor and not inside the signal handler
        self.assertIn("[vrtwist._process#info] Received SIGTERM, shutting down.", log)

    async def test_half_close_timeout(self) -> None:
        """A backend that never closes after the caller's EOF is closed after the limit."""
        backends, bport = await self.tcpBackend(closeAtEOF=False)
        sock = os.path.join(self.dir, "r.sock")
        relay = await self.relay(f"unix:{sock}", f"tcp:127.0.0.1:{bport}", halfCloseTimeout=0.2)
        c = await self.unixClient(sock)
        c.transport.write(b"bye")  # type: ignore[union-attr]
        c.transport.loseWriteConnection()  # type: ignore[union-attr]
        peer = await backends.next()
        await peer.until(lambda: peer.eof)
        await c.done  # the relay gave up on the backend's direction and closed the caller
        self.assertEqual(bytes(peer.received), b"bye")
        self.assertEqual((relay.stats.active, relay.stats.backendsOpen), (0, 0))
        # the backend only notices a close after its own EOF when it writes or closes
        peer.transport.loseConnection()  # type: ignore[union-attr]

    async def test_twistd_service_listens_on_real_vsock(self) -> None:
        """``--listen vsock:any`` binds a real AF_VSOCK socket (connecting needs a vsock transport)."""
        from tests.vsock.test_endpoints import _vsockAvailable

        reason = _vsockAvailable()
        if reason:
            raise self.skipTest(reason)
        o = relay_tap.Options()
        o.parseOptions(["--listen", "vsock:any", "--backend", "tcp:127.0.0.1:1"])
        svc = relay_tap.makeService(o, reactor)
        svc.startService()
        (listener,) = list(svc)
        await listener._waitingForPort
        port = listener._waitingForPort.result
        from vrtwist.vsock.endpoints import VMADDR_CID_ANY, VSockAddress

        host = port.getHost()
        self.assertIsInstance(host, VSockAddress)
        self.assertEqual(host.cid, VMADDR_CID_ANY)
        await svc.stopService()


class RelayNetNoSpliceTests(RelayNetTests):
    """The same cases on the ordinary producer/consumer path (TLS, vsock, --no-splice)."""

    splice = False


class VSockCallerTests(SynchronousTestCase):
    """A caller on a real vsock listener: the CID comes from getPeer() (no header needed)."""

    def _relay(self, **cfg: Any) -> tuple[VSockRelayFactory, Any]:
        from twisted.internet.testing import MemoryReactorClock

        clock = MemoryReactorClock()
        routes = BackendRoutes()
        routes.add("7=tcp:127.0.0.1:7777")
        routes.add("tcp:127.0.0.1:8888")
        return VSockRelayFactory(clock, RelayConfig(routes=routes, **cfg)), clock

    def _accept(self, relay: VSockRelayFactory, cid: int) -> tuple[Any, Any]:
        from twisted.internet.testing import StringTransport

        from vrtwist.vsock.endpoints import VSockAddress

        proto = relay.buildProtocol(VSockAddress(cid, 1025))
        tr = StringTransport(peerAddress=VSockAddress(cid, 1025), hostAddress=VSockAddress(2, 1024))
        proto.makeConnection(tr)
        return proto, tr

    def test_route_by_peer_cid_and_vsock_proxy_header(self) -> None:
        from twisted.internet.testing import StringTransport

        relay, clock = self._relay(proxyProtocol=True)
        inbound, itr = self._accept(relay, 7)
        self._accept(relay, 9)
        self.assertEqual(
            [(h, p) for h, p, *_ in clock.tcpClients], [("127.0.0.1", 7777), ("127.0.0.1", 8888)]
        )
        inbound.dataReceived(b"early")
        # complete the connection to CID 7's backend
        factory = clock.tcpClients[0][2]
        out = factory.buildProtocol(None)
        otr = StringTransport()
        out.makeConnection(otr)
        got = P.decode(otr.value())
        assert got is not None
        header, used = got
        self.assertTrue(header.vsock)
        self.assertEqual((header.source, header.destination), ((7, 1025), (2, 1024)))
        self.assertEqual(otr.value()[used:], b"early")
        inbound.dataReceived(b" more")
        self.assertEqual(otr.value()[used:], b"early more")
        out.dataReceived(b"reply")
        self.assertEqual(itr.value(), b"reply")

    def test_pending_buffer_is_bounded_while_connecting(self) -> None:
        relay, _clock = self._relay(bufferLimit=100)
        inbound, itr = self._accept(relay, 7)
        inbound.dataReceived(b"x" * 60)
        self.assertEqual(itr.producerState, "producing")
        inbound.dataReceived(b"x" * 60)
        self.assertEqual(itr.producerState, "paused")

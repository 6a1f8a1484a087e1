"""Real-socket helpers: the two twistd services over a unix link, peers, servers."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import tempfile
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.polling import wait_for
from vrtwist.vpnkit import forwarder_tap, host_tap
from vrtwist.vpnkit.service import VpnkitService


class Pair:
    """``twistd vpnkit-forwarder --data-listen`` + ``vpnkit-host --data-connect``, in-process."""

    def __init__(self, window: int = 65536, api: bool = False) -> None:
        self.dir = tempfile.mkdtemp(prefix="vpnkit-")
        self.path = os.path.join(self.dir, "data.sock")
        self.window = window
        self.api = api
        self.fwd: VpnkitService | None = None
        self.host: VpnkitService | None = None

    async def start_forwarder(self) -> None:
        fo = forwarder_tap.Options()
        # the unix destinations these tests dial all live in the pair's own directory
        fo.parseOptions(
            ["--data-listen", self.path, "--window", str(self.window), "--allow-unix-dir", self.dir]
        )
        self.fwd = forwarder_tap.makeService(fo, reactor)
        self.fwd.startService()
        await self.fwd.dataService._waitingForPort

    async def start(self) -> None:
        await self.start_forwarder()
        argv = ["--data-connect", self.path, "--window", str(self.window), "--retry-max", "0.3"]
        if self.api:
            argv += ["--api", "unix:" + os.path.join(self.dir, "api.sock")]
        ho = host_tap.Options()
        ho.parseOptions(argv)
        self.host = host_tap.makeService(ho, reactor)
        self.host.startService()
        await self.link_ready()

    async def link_ready(self) -> Any:
        assert self.host is not None
        return await wait_for(self.host.links.current, 5, what="the data link to come up")

    async def stop(self) -> None:
        for svc in (self.host, self.fwd):
            if svc is not None and svc.running:
                await defer.maybeDeferred(svc.stopService)
        await task.deferLater(reactor, 0.05, lambda: None)
        shutil.rmtree(self.dir, ignore_errors=True)


def blob(rng: random.Random, n: int) -> bytes:
    payload = rng.randbytes(n)
    return struct.pack("<I", n) + payload + hashlib.sha1(payload).digest()


def check_blob(data: bytes) -> bool:
    if len(data) < 24:
        return False
    (n,) = struct.unpack_from("<I", data)
    return len(data) == 24 + n and hashlib.sha1(data[4 : 4 + n]).digest() == data[4 + n :]


@implementer(IHalfCloseableProtocol)
class BlobPeer(Protocol):
    """Sends a self-checking blob, half-closes, reads the peer's blob to EOF, checks it."""

    def __init__(
        self, out: bytes, done: defer.Deferred[bool] | None = None, close_on_eof: bool = True
    ) -> None:
        self.out = out
        self.chunks: list[bytes] = []
        self.done = done if done is not None else defer.Deferred()
        self.close_on_eof = close_on_eof
        self.ok: bool | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.out)  # type: ignore[union-attr]
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def readConnectionLost(self) -> None:
        self.ok = check_blob(b"".join(self.chunks))
        if self.close_on_eof:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.ok is None:
            self.ok = check_blob(b"".join(self.chunks))
        if not self.done.called:
            self.done.callback(self.ok)


class BlobServerFactory(Factory):
    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.results: list[bool] = []
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        self.connections += 1
        p = BlobPeer(blob(self.rng, self.rng.randrange(8192)), close_on_eof=True)
        p.done.addCallback(self.results.append)
        return p


@implementer(IHalfCloseableProtocol)
class Collect(Protocol):
    """Writes ``out`` (then half-closes), collects everything until the connection ends."""

    def __init__(self, out: bytes = b"", half_close: bool = True) -> None:
        self.out = out
        self.half_close = half_close
        self.chunks: list[bytes] = []
        self.done: defer.Deferred[tuple[bytes, Failure]] = defer.Deferred()

    def connectionMade(self) -> None:
        if self.out:
            self.transport.write(self.out)  # type: ignore[union-attr]
        if self.half_close:
            self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback((b"".join(self.chunks), reason))


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


class UDPEcho(DatagramProtocol):
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(b"echo:" + datagram, addr)  # type: ignore[union-attr]


class UDPClient(DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.waiting: defer.Deferred[bytes] | None = None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.got.append(datagram)
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.callback(datagram)

    def next(self) -> defer.Deferred[bytes]:
        self.waiting = defer.Deferred()
        return self.waiting


async def listen_tcp(factory: Factory) -> Any:
    return await TCP4ServerEndpoint(reactor, 0, 4096, "127.0.0.1").listen(factory)


async def connect_tcp(port: int, proto: Protocol) -> Any:
    return await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
        Factory.forProtocol(lambda: proto)
    )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))

"""The vSPC over real loopback sockets: a fake ESX host, real backends, real bytes."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    UNIXServerEndpoint,
    connectProtocol,
    serverFromString,
)
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from vrtwist.vic import telnet as T
from vrtwist.vic import vmware_ext as X
from vrtwist.vic.testing import FakeESX, RecordingBackend, uuid_text
from vrtwist.vic.vspc import VMPortTable, VSPCConfig, VSPCFactory


def canonical(n: int) -> str:
    return X.normaliseUUID(uuid_text(n))


@implementer(IPushProducer)
class StreamWriter:
    """Writes ``data`` into a transport as fast as the transport's flow control allows."""

    def __init__(
        self,
        transport: Any,
        data: bytes,
        offset: int = 0,
        chunk: int = 16384,
        telnet: bool = False,
    ) -> None:
        self.transport = transport
        self.encode = T.encodeData if telnet else bytes
        self.data = data
        self.offset = offset
        self.chunk = chunk
        self.paused = False
        self.stopped = False
        self._scheduled = False
        transport.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        self._scheduled = False
        while not self.paused and not self.stopped and self.offset < len(self.data):
            end = self.offset + self.chunk
            self.transport.write(self.encode(self.data[self.offset : end]))
            self.offset = min(end, len(self.data))
            if not self.paused and not self._scheduled:
                # yield to the reactor every chunk so the transfer is interleaved
                self._scheduled = True
                reactor.callLater(0, self._pump)
                return

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if not self._scheduled:
            self._scheduled = True
            reactor.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self.stopped = True

    def stop(self) -> int:
        self.stopped = True
        self.transport.unregisterProducer()
        return self.offset


class VSPCNetTestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        # unix socket paths must stay under 108 bytes: not trial's long mktemp()
        self.dir = tempfile.mkdtemp(prefix="vic")
        self.addCleanup(shutil.rmtree, self.dir, True)

    async def startVSPC(self, **config: Any) -> int:
        config.setdefault("backendTemplate", f"unix:{self.dir}/{{uuid}}.sock")
        self.table = VMPortTable(reactor, VSPCConfig(**config))
        self.table.startService()
        listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            VSPCFactory(self.table)
        )
        self.addCleanup(listening.stopListening)
        self.addCleanup(self.table.stopService)
        return listening.getHost().port

    async def backend(self, n: int, **kw: Any) -> RecordingBackend:
        b = RecordingBackend(**kw)
        port = await UNIXServerEndpoint(reactor, f"{self.dir}/{canonical(n)}.sock").listen(b)
        self.addCleanup(port.stopListening)
        return b

    async def esx(self, port: int, **kw: Any) -> FakeESX:
        esx = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), FakeESX(**kw))
        self.addCleanup(self._close, esx)
        await esx.proxied()
        return esx

    async def _close(self, esx: FakeESX) -> None:
        if not esx.lost:
            esx.transport.loseConnection()  # type: ignore[union-attr]
            await esx.lostDeferred


class RelayTests(VSPCNetTestCase):
    async def test_all_256_byte_values_both_ways(self) -> None:
        port = await self.startVSPC()
        backend = await self.backend(1)
        esx = await self.esx(port, uuid=uuid_text(1))
        every = bytes(range(256)) * 64
        esx.send_serial(every)
        await backend.wait_for(lambda: len(backend.received()) >= len(every))
        self.assertEqual(backend.received(), every)
        backend.connections[0].transport.write(every)  # type: ignore[union-attr]
        await esx.wait_for(lambda: len(esx.serial) >= len(every))
        self.assertEqual(bytes(esx.serial), every)

    async def test_fifty_vms_at_once(self) -> None:
        port = await self.startVSPC()
        backends = [await self.backend(n, echo=True) for n in range(50)]
        rng = random.Random(7)
        payloads = [rng.randbytes(32 * 1024) for _ in range(50)]
        esxs = [await self.esx(port, uuid=uuid_text(n), name=f"vm-{n}".encode()) for n in range(50)]
        for e, p in zip(esxs, payloads):
            e.send_serial(p)
        for e, p in zip(esxs, payloads):
            await e.wait_for(lambda: len(e.serial) >= len(p))
            self.assertEqual(bytes(e.serial), p)
        for b, p in zip(backends, payloads):
            self.assertEqual(b.received(), p)
        snap = {d["uuid"]: d for d in self.table.snapshot()}
        self.assertEqual(len(snap), 50)
        self.assertEqual(snap[canonical(3)]["name"], "vm-3")
        self.assertEqual(snap[canonical(3)]["bytes_from_vm"], 32 * 1024)

    async def test_stalled_backend_pauses_only_its_vm(self) -> None:
        port = await self.startVSPC(bufferLimit=64 * 1024)
        slow = await self.backend(1, stalled=True)
        await self.backend(2, echo=True)
        a = await self.esx(port, uuid=uuid_text(1))
        b = await self.esx(port, uuid=uuid_text(2))
        big = random.Random(1).randbytes(8 * 1024 * 1024)
        writer = StreamWriter(a.transport, big, chunk=65536, telnet=True)
        await slow.wait_for(lambda: len(slow.connections) == 1)
        # B transfers 1 MiB both ways while A is stuck
        data = random.Random(2).randbytes(1024 * 1024)
        b.send_serial(data)
        await b.wait_for(lambda: len(b.serial) >= len(data))
        self.assertEqual(bytes(b.serial), data)
        portA = next(p for p in self.table.ports() if p.uuid == canonical(1))
        portB = next(p for p in self.table.ports() if p.uuid == canonical(2))
        await deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(portA.esx._readPaused)  # type: ignore[union-attr]
        self.assertFalse(portB.esx._readPaused)  # type: ignore[union-attr]
        self.assertLess(len(slow.received()), len(big))
        slow.connections[0].unstall()
        await slow.wait_for(lambda: len(slow.received()) >= len(big))
        writer.stop()
        self.assertEqual(hashlib.sha256(slow.received()).digest(), hashlib.sha256(big).digest())

    async def test_backend_down_then_up_loses_nothing(self) -> None:
        port = await self.startVSPC(backoffInitial=0.05, backoffMax=0.2)
        esx = await self.esx(port, uuid=uuid_text(5))
        esx.send_serial(b"typed before the backend existed\xff")
        await deferLater(reactor, 0.1, lambda: None)
        backend = await self.backend(5)
        await backend.wait_for(lambda: len(backend.received()) >= 33)
        self.assertEqual(backend.received(), b"typed before the backend existed\xff")


class VMotionTests(VSPCNetTestCase):
    async def test_vmotion_during_continuous_transfer(self) -> None:
        """Both directions stream across BEGIN/GOAHEAD/PEER/COMPLETE; checksums match."""
        port = await self.startVSPC(bufferLimit=128 * 1024)
        backend = await self.backend(9)
        src = await self.esx(port, uuid=uuid_text(9))
        await backend.wait_for(lambda: len(backend.connections) == 1)
        bconn = backend.connections[0]
        down = random.Random(3).randbytes(6 * 1024 * 1024)  # backend -> VM
        up = random.Random(4).randbytes(2 * 1024 * 1024)  # VM -> backend
        toVM = StreamWriter(bconn.transport, down)
        fromSrc = StreamWriter(src.transport, up[: len(up) // 2], telnet=True)
        await src.wait_for(lambda: len(src.serial) >= 512 * 1024)
        # ESX freezes the guest and flushes its serial data, then sends BEGIN.
        sentBySource = fromSrc.stop()
        seq = b"\x76\x19\xff\xe9"
        src.send_ext(X.VMOTION_BEGIN, seq)
        await src.wait_for(lambda: bool(src.ext_received(X.VMOTION_GOAHEAD)))
        (goahead,) = src.ext_received(X.VMOTION_GOAHEAD)
        self.assertEqual(goahead[:4], seq)
        dst = await self.esx(port, uuid=uuid_text(9), peer=goahead)
        self.assertEqual(dst.ext_received(X.VMOTION_PEER_OK), [seq])
        dst.send_ext(X.VMOTION_COMPLETE, seq)
        src.transport.loseConnection()  # type: ignore[union-attr]
        fromDst = StreamWriter(dst.transport, up, offset=sentBySource, telnet=True)
        await dst.wait_for(lambda: len(dst.serial) >= 512 * 1024)
        sentByBackend = toVM.stop()
        await dst.wait_for(lambda: len(src.serial) + len(dst.serial) >= sentByBackend)
        await backend.wait_for(lambda: len(backend.received()) >= len(up))
        fromDst.stop()
        got = bytes(src.serial) + bytes(dst.serial)
        self.assertEqual(len(got), sentByBackend)
        self.assertEqual(
            hashlib.sha256(got).digest(), hashlib.sha256(down[:sentByBackend]).digest()
        )
        self.assertEqual(hashlib.sha256(backend.received()).digest(), hashlib.sha256(up).digest())
        (p,) = self.table.ports()
        self.assertEqual(p.counters.handoffs, 1)
        self.assertEqual(len(backend.connections), 1)  # the backend never noticed

    async def test_notnow_and_abort_over_tcp(self) -> None:
        port = await self.startVSPC()
        backend = await self.backend(4)
        src = await self.esx(port, uuid=uuid_text(4))
        await backend.wait_for(lambda: len(backend.connections) == 1)
        src.send_ext(X.VMOTION_BEGIN, b"\x01\x02\x03\x04")
        await src.wait_for(lambda: bool(src.ext_received(X.VMOTION_GOAHEAD)))
        src.send_ext(X.VMOTION_BEGIN, bytes.fromhex("cd526755"))
        await src.wait_for(lambda: bool(src.ext_received(X.VMOTION_NOTNOW)))
        self.assertEqual(src.ext_received(X.VMOTION_NOTNOW), [bytes.fromhex("cd526755")])
        backend.connections[0].transport.write(b"held during the hand-off")  # type: ignore[union-attr]
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(bytes(src.serial), b"")
        src.send_ext(X.VMOTION_ABORT)
        await src.wait_for(lambda: len(src.serial) >= 24)
        self.assertEqual(bytes(src.serial), b"held during the hand-off")


class TLSTests(VSPCNetTestCase):
    async def test_telnets_listener(self) -> None:
        """``telnets://`` proxy URIs: a Twisted ``ssl:`` listen endpoint."""
        from twisted.internet.endpoints import clientFromString

        pem = os.path.join(self.dir, "vspc.pem")
        _selfSignedPEM(pem)
        self.table = VMPortTable(
            reactor, VSPCConfig(backendTemplate=f"unix:{self.dir}/{{uuid}}.sock")
        )
        listening = await serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={pem}"
        ).listen(VSPCFactory(self.table))
        self.addCleanup(listening.stopListening)
        self.addCleanup(self.table.stopService)
        backend = await self.backend(6)
        ep = clientFromString(reactor, f"ssl:host=127.0.0.1:port={listening.getHost().port}")
        esx = await connectProtocol(ep, FakeESX(uuid=uuid_text(6)))
        self.addCleanup(self._close, esx)
        await esx.proxied()
        esx.send_serial(b"over TLS \xff\x00")
        await backend.wait_for(lambda: len(backend.received()) >= 11)
        self.assertEqual(backend.received(), b"over TLS \xff\x00")


def _selfSignedPEM(path: str) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vspc.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with open(path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        f.write(cert.public_bytes(serialization.Encoding.PEM))


class TwistdTests(VSPCNetTestCase):
    async def test_twistd_vspc_process(self) -> None:
        """``twistd -n vspc`` as a real process: relay bytes, then read the JSON API."""
        import json
        import sys

        from twisted.internet.endpoints import UNIXClientEndpoint
        from twisted.internet.protocol import ProcessProtocol, Protocol

        backend = await self.backend(11)
        listen = os.path.join(self.dir, "vspc.sock")
        api = os.path.join(self.dir, "api.sock")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        argv = [
            twistd,
            "-n",
            "--pidfile=",
            "-l",
            os.path.join(self.dir, "log"),
            "vspc",
            "--listen",
            f"unix:{listen}",
            "--backend",
            f"unix:{self.dir}/{{uuid}}.sock",
            "--api",
            f"unix:{api}",
        ]
        ended: Any = Deferred()

        class PP(ProcessProtocol):
            def processEnded(self, reason: Any) -> None:
                ended.callback(None)

        proc = reactor.spawnProcess(PP(), twistd, argv, env=dict(os.environ))
        try:
            for _ in range(600):  # up to 30 s for twistd to start on a loaded machine
                if os.path.exists(listen) and os.path.exists(api):
                    break
                await deferLater(reactor, 0.05, lambda: None)
            esx = await connectProtocol(
                UNIXClientEndpoint(reactor, listen), FakeESX(uuid=uuid_text(11))
            )
            self.addCleanup(self._close, esx)
            await esx.proxied()
            esx.send_serial(bytes(range(256)))
            await backend.wait_for(lambda: len(backend.received()) >= 256)
            self.assertEqual(backend.received(), bytes(range(256)))

            class HTTP(Protocol):
                def __init__(self) -> None:
                    self.data = b""
                    self.done: Any = Deferred()

                def connectionMade(self) -> None:
                    self.transport.write(b"GET /vms HTTP/1.0\r\nHost: vspc\r\n\r\n")  # type: ignore[union-attr]

                def dataReceived(self, data: bytes) -> None:
                    self.data += data

                def connectionLost(self, reason: Any = None) -> None:
                    self.done.callback(self.data)

            h = await connectProtocol(UNIXClientEndpoint(reactor, api), HTTP())
            raw = await h.done
            body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
            self.assertEqual(body["vms"][0]["uuid"], canonical(11))
            self.assertEqual(body["vms"][0]["bytes_from_vm"], 256)
        finally:
            proc.signalProcess("TERM")
            await ended

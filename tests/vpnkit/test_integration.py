"""Both services over a real unix-socket link, real TCP/UDP/unix clients and servers."""

from __future__ import annotations

import gc
import os
import random
import socket
from typing import Any

from twisted.internet import defer, error, reactor, task
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.interfaces import IReactorUDP
from twisted.internet.protocol import Factory
from twisted.trial.unittest import SkipTest, TestCase

from tests.polling import wait_for
from tests.vpnkit.realnet import (
    BlobPeer,
    BlobServerFactory,
    Collect,
    Echo,
    Pair,
    UDPClient,
    UDPEcho,
    blob,
    connect_tcp,
    listen_tcp,
    open_fds,
)
from vrtwist.vpnkit._lean import LeanStream
from vrtwist.vpnkit.host import ExposeError, Port
from vrtwist.vpnkit.mux import Channel
from vrtwist.vpnkit.proxy import Splice, _End


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ForwardingTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.pair = Pair()
        await self.pair.start()
        self.echo = await listen_tcp(Factory.forProtocol(Echo))
        self.table = self.pair.host.table  # type: ignore[union-attr]

    async def tearDown(self) -> None:  # type: ignore[override]
        await self.echo.stopListening()
        await self.pair.stop()

    async def expose_echo(self) -> Port:
        return await self.table.expose(
            Port.parse(f"tcp:127.0.0.1:0:127.0.0.1:{self.echo.getHost().port}")
        )

    async def test_tcp_echo_and_port_zero(self) -> None:
        """TestTCP / TestRandomPortsTCP: port 0 reports the concrete port."""
        granted = await self.expose_echo()
        self.assertNotEqual(granted.out_port, 0)
        self.assertEqual(self.table.list(), [granted])
        c = Collect(b"hello through vpnkit")
        await connect_tcp(granted.out_port, c)
        data, _ = await c.done
        self.assertEqual(data, b"hello through vpnkit")

    async def test_half_close_both_ways_large(self) -> None:
        """Client writes 300 kB and half-closes, then reads a 1 MiB reply (spec 1.8)."""
        reply = os.urandom(1 << 20)

        class Replier(Collect):
            def readConnectionLost(self) -> None:
                self.got = b"".join(self.chunks)
                self.transport.write(reply)  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]

        servers: list[Replier] = []

        def build() -> Replier:
            r = Replier(half_close=False)
            servers.append(r)
            return r

        srv = await listen_tcp(Factory.forProtocol(build))
        self.addCleanup(srv.stopListening)
        granted = await self.table.expose(
            Port.parse(f"tcp:127.0.0.1:0:127.0.0.1:{srv.getHost().port}")
        )
        up = os.urandom(300_000)
        c = Collect(up)
        await connect_tcp(granted.out_port, c)
        data, _ = await c.done
        self.assertEqual(data, reply)
        self.assertEqual(servers[0].got, up)

    async def test_refused_destination_resets_client(self) -> None:
        """Nothing listens: Close comes back and the client sees a reset, not a clean EOF."""
        port = await self.table.expose(Port.parse("tcp:127.0.0.1:0:127.0.0.1:1"))
        c = Collect(half_close=False)
        await connect_tcp(port.out_port, c)
        data, reason = await c.done
        self.assertEqual(data, b"")
        self.assertTrue(reason.check(error.ConnectionLost), reason)
        assert self.pair.host is not None and self.pair.fwd is not None  # started in setUp
        mux = self.pair.host.links.current()
        fwd = self.pair.fwd.table.links.current()
        assert mux is not None and fwd is not None
        await wait_for(lambda: mux.liveChannels() == fwd.liveChannels() == 0,
                       what="the channel to close on both sides")
        self.assertEqual((mux.liveChannels(), fwd.liveChannels()), (0, 0))

    async def test_address_in_use(self) -> None:
        """TestAddressInUse: the bind error surfaces."""
        with self.assertRaises(ExposeError) as cm:
            await self.table.expose(
                Port.parse(f"tcp:127.0.0.1:{self.echo.getHost().port}:127.0.0.1:80")
            )
        self.assertIn("Address already in use", str(cm.exception))
        self.assertEqual(self.table.list(), [])

    async def test_interface_does_not_exist(self) -> None:
        with self.assertRaises(ExposeError) as cm:
            await self.table.expose(Port.parse("tcp:192.0.2.77:0:127.0.0.1:80"))
        self.assertIn("assign requested address", str(cm.exception))

    async def test_expose_idempotent_and_unexpose_closes_listener(self) -> None:
        """TestExposeIdempotent, TestExposeAnyThenListAndUnexpose."""
        granted = await self.expose_echo()
        again = await self.table.expose(granted)
        self.assertEqual(again, granted)
        self.assertEqual(len(self.table.list()), 1)
        live = Collect(half_close=False)
        await connect_tcp(granted.out_port, live)
        await task.deferLater(reactor, 0.05, lambda: None)
        await self.table.unexpose(granted, closeConnections=True)
        await self.table.unexpose(granted)  # idempotent
        self.assertEqual(self.table.list(), [])
        await live.done  # its connection was closed too
        with self.assertRaises(error.ConnectionRefusedError):
            await connect_tcp(granted.out_port, Collect())

    async def test_tcp_leak_2000_expose_cycles(self) -> None:
        """TestTCPLeak: 2000 expose/unexpose cycles leave no listener or fd behind."""
        gc.collect()  # sockets of earlier tests that only the collector closes
        before = open_fds()
        for _ in range(2000):
            p = await self.expose_echo()
            await self.table.unexpose(p)
        self.assertEqual(self.table.list(), [])
        self.assertEqual(open_fds(), before)

    async def test_udp_leak_2000_expose_cycles_and_port_zero(self) -> None:
        """TestUDPLeak and TestRandomPortsUDP."""
        gc.collect()
        before = open_fds()
        for _ in range(2000):
            p = await self.table.expose(Port.parse("udp:127.0.0.1:0:127.0.0.1:53"))
            self.assertNotEqual(p.out_port, 0)
            await self.table.unexpose(p)
        self.assertEqual(self.table.list(), [])
        self.assertEqual(open_fds(), before)

    async def test_unix_forward_dir_does_not_exist(self) -> None:
        """TestUnixForwardDirNotExist: a clear error, nothing exposed."""
        missing = os.path.join(self.pair.dir, "no", "such", "dir", "out.sock")
        with self.assertRaises(ExposeError) as cm:
            await self.table.expose(Port("unix", out_path=missing, in_path="/tmp/x"))
        self.assertIn(missing, str(cm.exception))
        self.assertEqual(self.table.list(), [])

    async def test_unix_forward(self) -> None:
        """TestUnixForward, and a stale socket at the out path is replaced."""
        inner = os.path.join(self.pair.dir, "inner.sock")
        outer = os.path.join(self.pair.dir, "outer.sock")
        srv = await UNIXServerEndpoint(reactor, inner).listen(Factory.forProtocol(Echo))
        self.addCleanup(srv.stopListening)
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(outer)  # a socket file nobody listens on any more
        stale.close()
        open(outer + ".x", "w").close()
        await self.table.expose(Port("unix", out_path=outer, in_path=inner))
        c = Collect(b"over unix")
        await UNIXClientEndpoint(reactor, outer).connect(Factory.forProtocol(lambda: c))
        data, _ = await c.done
        self.assertEqual(data, b"over unix")
        # TestUnixForwardAlreadyExists: a regular file is never removed
        with self.assertRaises(ExposeError):
            await self.table.expose(Port("unix", out_path=outer + ".x", in_path=inner))
        self.assertTrue(os.path.exists(outer + ".x"))

    async def test_unix_destination_retried_until_it_appears(self) -> None:
        """Go's forwarder retries a refused unix destination (a service still starting)."""
        acceptor = self.pair.fwd.dataService.factory.acceptor  # type: ignore[union-attr]
        acceptor.unixRetryInterval = 0.1
        inner = os.path.join(self.pair.dir, "late.sock")
        outer = os.path.join(self.pair.dir, "front.sock")
        await self.table.expose(Port("unix", out_path=outer, in_path=inner))
        c = Collect(b"early bytes")
        await UNIXClientEndpoint(reactor, outer).connect(Factory.forProtocol(lambda: c))
        await task.deferLater(reactor, 0.3, lambda: None)
        srv = await UNIXServerEndpoint(reactor, inner).listen(Factory.forProtocol(Echo))
        self.addCleanup(srv.stopListening)
        data, _ = await c.done
        self.assertEqual(data, b"early bytes")

    async def test_tcp_over_ipv6(self) -> None:
        from twisted.internet.endpoints import TCP6ClientEndpoint, TCP6ServerEndpoint

        try:
            echo6 = await TCP6ServerEndpoint(reactor, 0, interface="::1").listen(
                Factory.forProtocol(Echo)
            )
        except error.CannotListenError:
            raise SkipTest("no IPv6 loopback here") from None
        self.addCleanup(echo6.stopListening)
        granted = await self.table.expose(Port.parse(f"tcp:[::1]:0:[::1]:{echo6.getHost().port}"))
        self.assertEqual(str(granted).split(":")[0], "tcp")
        c = Collect(b"over v6")
        await TCP6ClientEndpoint(reactor, "::1", granted.out_port).connect(
            Factory.forProtocol(lambda: c)
        )
        self.assertEqual((await c.done)[0], b"over v6")

    async def test_udp_round_trip_and_backend_appearing_later(self) -> None:
        """TestUDP + TestUDPWriteError: datagrams before the backend exists are lost, then it works."""
        probe = IReactorUDP(reactor).listenUDP(0, UDPEcho(), interface="127.0.0.1", maxPacketSize=8192)
        backend_port = probe.getHost().port  # type: ignore[attr-defined]
        await probe.stopListening()  # type: ignore[misc]
        granted = await self.table.expose(Port.parse(f"udp:127.0.0.1:0:127.0.0.1:{backend_port}"))
        client = UDPClient()
        cport = IReactorUDP(reactor).listenUDP(0, client, interface="127.0.0.1", maxPacketSize=8192)
        self.addCleanup(cport.stopListening)
        client.transport.write(b"nobody home", ("127.0.0.1", granted.out_port))  # type: ignore[union-attr]
        await task.deferLater(reactor, 0.1, lambda: None)
        backend = IReactorUDP(reactor).listenUDP(backend_port, UDPEcho(), interface="127.0.0.1", maxPacketSize=8192)
        self.addCleanup(backend.stopListening)
        got = None
        for i in range(50):
            d = client.next()
            client.transport.write(b"ping%d" % i, ("127.0.0.1", granted.out_port))  # type: ignore[union-attr]
            d.addTimeout(0.2, reactor)
            try:
                got = await d
                break
            except defer.TimeoutError:
                continue
        self.assertIsNotNone(got)
        assert got is not None
        self.assertTrue(got.startswith(b"echo:ping"))
        self.assertIn("datagrams_in=", self.table.dump())

    async def test_udp_flow_expires_when_idle(self) -> None:
        """Go's UDPConnTrackTimeout (90 s), shortened: the flow and its channel go away."""
        backend = IReactorUDP(reactor).listenUDP(0, UDPEcho(), interface="127.0.0.1", maxPacketSize=8192)
        self.addCleanup(backend.stopListening)
        self.table.udpTimeout = 0.3
        granted = await self.table.expose(
            Port.parse(f"udp:127.0.0.1:0:127.0.0.1:{backend.getHost().port}")  # type: ignore[attr-defined]
        )
        client = UDPClient()
        cport = IReactorUDP(reactor).listenUDP(0, client, interface="127.0.0.1", maxPacketSize=8192)
        self.addCleanup(cport.stopListening)
        d = client.next()
        client.transport.write(b"one", ("127.0.0.1", granted.out_port))  # type: ignore[union-attr]
        self.assertEqual(await d, b"echo:one")
        self.assertEqual(self.table.connections(), 1)
        await task.deferLater(reactor, 0.8, lambda: None)
        self.assertEqual(self.table.connections(), 0)
        mux = self.pair.host.links.current()  # type: ignore[union-attr]
        self.assertEqual(mux.liveChannels(), 0)  # type: ignore[union-attr]
        d = client.next()
        client.transport.write(b"two", ("127.0.0.1", granted.out_port))  # type: ignore[union-attr]
        self.assertEqual(await d, b"echo:two")  # a new flow

    async def test_link_drop_closes_channels_and_host_reconnects(self) -> None:
        granted = await self.expose_echo()
        live = Collect(half_close=False)
        await connect_tcp(granted.out_port, live)
        await task.deferLater(reactor, 0.05, lambda: None)
        old = self.pair.host.links.current()  # type: ignore[union-attr]
        self.assertEqual(old.liveChannels(), 1)  # type: ignore[union-attr]
        await defer.maybeDeferred(self.pair.fwd.stopService)  # type: ignore[union-attr]
        _data, _reason = await live.done  # the client's connection was closed
        self.assertEqual(old.liveChannels(), 0)  # type: ignore[union-attr]
        await self.pair.start_forwarder()
        mux = await self.pair.link_ready()
        self.assertIsNot(mux, old)
        c = Collect(b"again")
        await connect_tcp(granted.out_port, c)
        self.assertEqual((await c.done)[0], b"again")

    async def test_no_link_means_clean_refusal(self) -> None:
        granted = await self.expose_echo()
        await defer.maybeDeferred(self.pair.fwd.stopService)  # type: ignore[union-attr]
        await task.deferLater(reactor, 0.05, lambda: None)
        c = Collect(b"x")
        await connect_tcp(granted.out_port, c)
        data, _ = await c.done
        self.assertEqual(data, b"")
        self.assertIsNone(self.pair.host.links.current())  # type: ignore[union-attr]


class StressTests(TestCase):
    """The OCaml stress test: 2000 concurrent connections, 10 rounds, random sizes each way."""

    timeout = 170

    async def test_2000_concurrent_x10_no_leaks(self) -> None:
        pair = Pair()
        await pair.start()
        servers = BlobServerFactory(seed=6)
        srv = await listen_tcp(servers)
        try:
            table = pair.host.table  # type: ignore[union-attr]
            granted = await table.expose(
                Port.parse(f"tcp:127.0.0.1:0:127.0.0.1:{srv.getHost().port}")
            )
            gc.collect()
            base_fds = open_fds()
            rng = random.Random(7)
            rounds, conns = 10, 2000
            for r in range(rounds):
                peers = [BlobPeer(blob(rng, rng.randrange(8192))) for _ in range(conns)]
                connected = [connect_tcp(granted.out_port, p) for p in peers]
                await defer.gatherResults([defer.ensureDeferred(c) for c in connected])
                results = await defer.gatherResults([p.done for p in peers])
                self.assertTrue(all(results), f"round {r}: {results.count(False)} corrupt replies")
                if r == 2:
                    rss_after_warmup = resident_bytes()
            await task.deferLater(reactor, 0.2, lambda: None)
            self.assertEqual(servers.connections, rounds * conns)
            self.assertEqual(len(servers.results), rounds * conns)
            self.assertTrue(all(servers.results))
            host_mux = pair.host.links.current()  # type: ignore[union-attr]
            fwd_mux = pair.fwd.links.current()  # type: ignore[union-attr]
            self.assertEqual((host_mux.liveChannels(), fwd_mux.liveChannels()), (0, 0))  # type: ignore[union-attr]
            self.assertEqual(table.connections(), 0)
            self.assertEqual(host_mux.stats.channels_closed, rounds * conns)  # type: ignore[union-attr]
            self.assertEqual(host_mux.stats.protocol_errors + fwd_mux.stats.protocol_errors, 0)  # type: ignore[union-attr]
            gc.collect()
            self.assertEqual(open_fds(), base_fds)
            leftovers = [o for o in gc.get_objects() if isinstance(o, (Channel, Splice))]
            self.assertEqual(leftovers, [])
            # memory: after the allocator's warm-up rounds the process stops growing
            # (measured: +2 MB over rounds 4-10; the bound leaves room for noise)
            self.assertLess(resident_bytes() - rss_after_warmup, 16 << 20)
        finally:
            await srv.stopListening()
            await pair.stop()


def _per_connection(objs: list[object]) -> list[object]:
    """The objects every forwarded connection creates (earlier tests' links aside)."""
    return [o for o in objs if isinstance(o, (Channel, Splice, _End, LeanStream))]


class CycleTests(TestCase):
    """A finished forwarded connection is freed by reference counting alone.

    A reference cycle per connection (splice <-> ends, channel <-> protocol) kept
    every connection's objects, some 3 KiB, until the cyclic collector's next full
    run; with the collector off they must still go as soon as the connection ends.
    """

    timeout = 60

    async def test_connections_leave_no_cycles(self) -> None:
        pair = Pair()
        await pair.start()
        echo = await listen_tcp(Factory.forProtocol(Echo))
        try:
            granted = await pair.host.table.expose(  # type: ignore[union-attr]
                Port.parse(f"tcp:127.0.0.1:0:127.0.0.1:{echo.getHost().port}")
            )
            c = Collect(b"warm-up")
            await connect_tcp(granted.out_port, c)
            await c.done
            gc.collect()
            gc.disable()
            self.addCleanup(gc.enable)
            n, replies = 300, []
            for i in range(n):
                c = Collect(b"hello %d" % i)
                await connect_tcp(granted.out_port, c)
                data, _ = await c.done
                replies.append(data)
            # and refused destinations (the forwarder abandons its splice)
            refused = await pair.host.table.expose(  # type: ignore[union-attr]
                Port.parse("tcp:127.0.0.1:0:127.0.0.1:1")
            )
            for _ in range(50):
                c = Collect(half_close=False)
                await connect_tcp(refused.out_port, c)
                data, _ = await c.done
                self.assertEqual(data, b"")
            await task.deferLater(reactor, 0.05, lambda: None)
            self.assertEqual(replies, [b"hello %d" % i for i in range(n)])
            # Nothing collected yet, and no splice or channel is left over.
            lingering = _per_connection(gc.get_objects())
            self.assertEqual(lingering, [])
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                gc.collect()
                garbage = _per_connection(gc.garbage)
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            self.assertEqual(garbage, [])
            host_mux = pair.host.links.current()  # type: ignore[union-attr]
            assert host_mux is not None
            self.assertEqual(host_mux.stats.channels_closed, n + 1 + 50)
        finally:
            gc.enable()
            await echo.stopListening()
            await pair.stop()


class GoPeerSequenceTests(TestCase):
    """A raw peer replaying what Go's vpnkit side sends (spec 1.8, observed sequences)."""

    timeout = 30

    async def setUp(self) -> None:  # type: ignore[override]
        self.pair = Pair()
        await self.pair.start_forwarder()
        self.echo = await listen_tcp(Factory.forProtocol(Echo))

    async def tearDown(self) -> None:  # type: ignore[override]
        await self.echo.stopListening()
        await self.pair.stop()

    async def _exchange(self, send: bytes, until_close: int) -> list[Any]:
        from twisted.internet.endpoints import UNIXClientEndpoint

        from vrtwist.vpnkit.frames import HANDSHAKE, parse_frames

        got: list[bytes] = []
        done: defer.Deferred[None] = defer.Deferred()

        class Raw(Collect):
            def dataReceived(self, data: bytes) -> None:
                got.append(data)
                wire = b"".join(got)
                if wire.startswith(HANDSHAKE) and wire.count(
                    bytes([7, 0, 2]) + until_close.to_bytes(4, "little")
                ):
                    if not done.called:
                        done.callback(None)

        raw = Raw(send, half_close=False)
        await UNIXClientEndpoint(reactor, self.pair.path).connect(Factory.forProtocol(lambda: raw))
        await done.addTimeout(10, reactor)
        raw.transport.loseConnection()  # type: ignore[union-attr]
        wire = b"".join(got)
        self.assertEqual(wire[:54], HANDSHAKE)
        return parse_frames(wire[54:])

    async def test_request_response_sequence(self) -> None:
        from vrtwist.vpnkit.frames import (
            HANDSHAKE,
            Close,
            Data,
            Destination,
            Open,
            Shutdown,
            Window,
            encode_frame,
        )

        cid = 0xFFFFFFFF
        dest = Destination.tcp("127.0.0.1", self.echo.getHost().port, mapped=True)  # as Go sends it
        send = HANDSHAKE + b"".join(
            encode_frame(f)
            for f in (
                Open(cid, dest),
                Window(cid, 65536),
                Data(cid, b"hello world\n"),
                Shutdown(cid),
            )
        )
        frames = await self._exchange(send, cid)
        self.assertEqual(
            frames, [Window(cid, 65536), Data(cid, b"hello world\n"), Shutdown(cid), Close(cid)]
        )

    async def test_refused_destination_sequence(self) -> None:
        from vrtwist.vpnkit.frames import HANDSHAKE, Close, Destination, Open, Window, encode_frame

        cid = 0xFFFFFFFE
        send = (
            HANDSHAKE
            + encode_frame(Open(cid, Destination.tcp("127.0.0.1", 1)))
            + encode_frame(Window(cid, 65536))
        )
        frames = await self._exchange(send, cid)
        self.assertEqual(frames, [Window(cid, 65536), Close(cid)])


class ReversedRolesTests(TestCase):
    """``vpnkit-host --data-listen`` with ``vpnkit-forwarder --data-connect`` (Go allows both)."""

    timeout = 30

    async def test_host_listens_forwarder_connects(self) -> None:
        import shutil
        import tempfile

        from vrtwist.vpnkit import forwarder_tap, host_tap

        d = tempfile.mkdtemp(prefix="vpnkit-rev-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "data.sock")
        ho = host_tap.Options()
        ho.parseOptions(["--data-listen", path])
        host = host_tap.makeService(ho, reactor)
        host.startService()
        await host.dataService._waitingForPort
        fo = forwarder_tap.Options()
        fo.parseOptions(["--data-connect", path, "--retry-max", "0.3"])
        fwd = forwarder_tap.makeService(fo, reactor)
        fwd.startService()
        echo = await listen_tcp(Factory.forProtocol(Echo))
        try:
            await wait_for(lambda: host.links.current() is not None, 3,
                           what="the data link to come up")
            mux = host.links.current()
            self.assertIsNotNone(mux)
            self.assertFalse(mux.backwards)  # type: ignore[union-attr]  # the listening side counts ids upwards
            granted = await host.table.expose(
                Port.parse(f"tcp:127.0.0.1:0:127.0.0.1:{echo.getHost().port}")
            )
            c = Collect(b"reversed")
            await connect_tcp(granted.out_port, c)
            self.assertEqual((await c.done)[0], b"reversed")
            self.assertEqual(mux.stats.channels_opened, 1)  # type: ignore[union-attr]
            self.assertIn(0, [e[3] for e in mux.recent])  # type: ignore[union-attr]  # first id allocated upwards: 0
        finally:
            await echo.stopListening()
            await defer.maybeDeferred(fwd.stopService)
            await defer.maybeDeferred(host.stopService)
            await task.deferLater(reactor, 0.05, lambda: None)

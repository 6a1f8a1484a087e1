"""The forwarder dials only allowed destinations: TCP/UDP, unix paths under listed dirs.

The attack: whoever holds the data link opened a channel to ``unix:<run>/dpdk_netlink``
and the forwarder, dialling with its own rights, read ``vrouter_ops`` from the datapath.
Here that channel gets Close (the protocol's refusal) and one bounded log line; the
datapath sees nothing; allowed channels on the same link keep working.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time

from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.vpnkit.realnet import Echo, Pair
from vrtwist.ksync.server import listen_ksync
from vrtwist.ksync.testing import MemoryDispatcher
from vrtwist.unixlisten import listen_endpoint
from vrtwist.vpnkit import forwarder_tap
from vrtwist.vpnkit.frames import Destination, Proto
from vrtwist.vpnkit.policy import DestinationPolicy, DestinationRefused
from vrtwist.vpnkit.proxy import ForwardingAcceptor
from vrtwist.vpnkit.testing import LinkPair, Sink


class PolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ac-pol-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.allowed = os.path.join(self.dir, "allowed")
        self.run_dir = os.path.join(self.dir, "run")
        os.mkdir(self.allowed)
        os.mkdir(self.run_dir)
        self.policy = DestinationPolicy([self.allowed + "/"])

    def refused(self, path: str) -> str:
        with self.assertRaises(DestinationRefused) as cm:
            self.policy.check(Destination.unix(path))
        return str(cm.exception)

    def test_tcp_and_udp_allowed_by_default(self) -> None:
        for d in (Destination.tcp("127.0.0.1", 80), Destination.udp("::1", 53)):
            self.assertEqual(DestinationPolicy().check(d), d)

    def test_unix_refused_without_allowed_dirs(self) -> None:
        with self.assertRaises(DestinationRefused) as cm:
            DestinationPolicy().check(Destination.unix(self.run_dir + "/dpdk_netlink"))
        self.assertIn("--allow-unix-dir", str(cm.exception))

    def test_under_allowed_dir_is_dialled_resolved(self) -> None:
        got = self.policy.check(Destination.unix(self.allowed + "/./sub/../a.sock"))
        self.assertEqual((got.proto, got.path), (Proto.UNIX, self.allowed + "/a.sock"))

    def test_dotdot_escape_refused(self) -> None:
        self.assertIn("not under", self.refused(self.allowed + "/../run/dpdk_netlink"))

    def test_symlink_escape_refused_and_inner_link_resolved(self) -> None:
        os.symlink(self.run_dir, os.path.join(self.allowed, "out"))
        self.assertIn("not under", self.refused(self.allowed + "/out/dpdk_netlink"))
        os.symlink(self.allowed + "/real.sock", os.path.join(self.allowed, "in.sock"))
        got = self.policy.check(Destination.unix(self.allowed + "/in.sock"))
        self.assertEqual(got.path, self.allowed + "/real.sock")

    def test_allowed_dir_prefix_is_not_a_parent(self) -> None:
        """``/x/allowed-evil`` is not under ``/x/allowed``."""
        os.mkdir(self.allowed + "-evil")
        self.assertIn("not under", self.refused(self.allowed + "-evil/s.sock"))
        self.assertIn("not under", self.refused(self.allowed))

    def test_relative_and_nul_refused(self) -> None:
        self.assertIn("absolute", self.refused("allowed/a.sock"))
        self.assertIn("absolute", self.refused(self.allowed + "/a\0b"))
        self.assertIn("absolute", self.refused("\0abstract"))

    def test_refusal_text_bounded(self) -> None:
        self.assertLess(len(self.refused("/" + "x" * 60000)), 200)

    def test_allowed_dir_must_be_absolute(self) -> None:
        self.assertRaises(ValueError, DestinationPolicy, ["relative/dir"])

    def test_option(self) -> None:
        """``--allow-unix-dir`` is repeatable and needs absolute paths."""
        from twisted.python import usage

        o = forwarder_tap.Options()
        o.parseOptions(
            ["--data-listen", "/tmp/x", "--allow-unix-dir", "/a", "--allow-unix-dir", "/b"]
        )
        self.assertEqual(o["allow-unix-dir"], ["/a", "/b"])
        self.assertRaises(
            usage.UsageError,
            forwarder_tap.Options().parseOptions,
            ["--data-listen", "/tmp/x", "--allow-unix-dir", "rel"],
        )


class AcceptorTests(SynchronousTestCase):
    """In memory: the refused channel gets Close, the link and other channels carry on."""

    def test_refused_with_close_and_one_bounded_line(self) -> None:
        r = MemoryReactorClock()
        acc = ForwardingAcceptor(r, policy=DestinationPolicy(["/srv/allowed"]))
        pair = LinkPair(acc, None)
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, events.append)  # type: ignore[arg-type]
        bad = Sink()
        pair.b.openChannel(Destination.unix("/var/run/vrouter/dpdk_netlink" + "/x" * 5000), bad)
        pair.pump()
        self.assertIsNotNone(bad.lost)  # Close: the opener's channel ends
        self.assertEqual(bad.data, b"")
        self.assertEqual((acc.disallowed, r.unixClients, r.tcpClients), (1, [], []))
        lines = [e for e in events if "refusing channel" in str(e.get("log_format", ""))]
        self.assertEqual(len(lines), 1)
        self.assertLess(len(str(lines[0]["reason"])), 200)
        self.assertEqual(pair.a.stats.channels_refused, 1)
        # the same link still opens and dials an allowed channel
        srv = socket.socket()
        self.addCleanup(srv.close)
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(5)
        good = Sink()
        pair.b.openChannel(Destination.tcp("127.0.0.1", srv.getsockname()[1]), good)
        pair.pump()
        conn, _ = srv.accept()  # the forwarder dialled it
        conn.close()
        self.assertIsNone(good.lost)
        self.assertEqual((acc.disallowed, acc.refused), (1, 0))


class _Ready(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: object = None) -> None:
        super().connectionLost(reason)  # type: ignore[arg-type]
        if not self.closed.called:
            self.closed.callback(None)


class AttackTests(TestCase):
    """Real sockets: the forwarder and host services, a real ksync datapath socket."""

    timeout = 30

    async def setUp(self) -> None:  # type: ignore[override]
        self.pair = Pair()
        await self.pair.start()
        self.run_dir = tempfile.mkdtemp(prefix="ac-run-")
        self.addCleanup(shutil.rmtree, self.run_dir, True)
        self.dispatcher = MemoryDispatcher()
        self.ksync = await listen_ksync(IReactorUNIX(reactor), self.run_dir, self.dispatcher)
        self.addCleanup(self.ksync.stopListening)  # trial: cleanups run before tearDown
        self.sock = os.path.join(self.run_dir, "dpdk_netlink")

    async def tearDown(self) -> None:  # type: ignore[override]
        await self.pair.stop()

    async def _echo_unix(self) -> str:
        path = os.path.join(self.pair.dir, "echo.sock")
        port = await listen_endpoint(reactor, "unix:" + path).listen(Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        return path

    async def _round_trip(self, mux: object, dest: Destination, data: bytes) -> tuple[bytes, float]:
        s = _Ready()
        start = time.perf_counter()
        ch = mux.openChannel(dest, s)  # type: ignore[attr-defined]
        ch.write(data)
        ch.loseWriteConnection()
        await s.closed
        return s.data, time.perf_counter() - start

    async def test_channel_to_dpdk_netlink_refused_datapath_saw_nothing(self) -> None:
        mux = await self.pair.link_ready()
        acceptor = self.pair.fwd.dataService.factory.acceptor  # type: ignore[union-attr]
        echo = await self._echo_unix()
        # the vrouter_ops GET the attacker sent, as netlink bytes
        from vrtwist.ksync.netlink import build_request
        from vrtwist.sandesh import GET, encode, schema

        probe = build_request(encode(schema.vrouter_ops(h_op=GET)), seq=1)
        for path in (self.sock, self.pair.dir + "/../" + os.path.basename(self.run_dir)
                     + "/dpdk_netlink"):
            data, _ = await self._round_trip(mux, Destination.unix(path), probe)
            self.assertEqual(data, b"")
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(self.dispatcher.requests, [])
        self.assertEqual(acceptor.disallowed, 2)
        # allowed destinations on the same link still work, and not slower than before
        data, took = await self._round_trip(mux, Destination.unix(echo), b"allowed")
        self.assertEqual(data, b"allowed")
        self.assertEqual(acceptor.disallowed, 2)
        self.assertEqual(mux, self.pair.host.links.current())  # type: ignore[union-attr]
        self.assertLess(took, 5.0)


class SocketModeTests(TestCase):
    """``--data-listen`` and ``--api`` sockets: nobody is refused, the owner is served."""

    timeout = 30

    async def test_data_and_api_sockets_refuse_nobody(self) -> None:
        from tests.unprivileged import connect_as_nobody, need_root, world_traversable

        need_root()
        pair = Pair(api=True)
        world_traversable(pair.dir)
        old = os.umask(0)  # the worst umask: must not matter
        try:
            await pair.start()  # the host connects as root: the owner is served
        finally:
            os.umask(old)
        self.addCleanup(pair.stop)
        api = os.path.join(pair.dir, "api.sock")
        for path in (pair.path, api):
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600, path)
            self.assertEqual(connect_as_nobody(path), "EACCES", path)
        self.assertIsNotNone(pair.host.links.current())  # type: ignore[union-attr]
        owner = socket.socket(socket.AF_UNIX)  # the owner still reaches the API
        self.addCleanup(owner.close)
        owner.connect(api)
        # a unix port the host exposes is the owner's too
        from vrtwist.vpnkit.host import Port

        out = os.path.join(pair.dir, "exposed.sock")
        await pair.host.table.expose(  # type: ignore[union-attr]
            Port("unix", out_path=out, in_path=os.path.join(pair.dir, "in.sock"))
        )
        self.assertEqual(os.stat(out).st_mode & 0o777, 0o600)
        self.assertEqual(connect_as_nobody(out), "EACCES")

"""ksync over a real unix stream socket: many clients at once, bad clients, the blocking helper."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from vrtwist.ksync.blocking import KsyncConnectError, open_ksync
from vrtwist.ksync.client import KsyncClientProtocol, connect_ksync
from vrtwist.ksync.clientcore import KsyncError
from vrtwist.ksync.netlink import build_request
from vrtwist.ksync.server import KsyncServerService, listen_ksync, remove_stale_socket
from vrtwist.ksync.testing import MemoryDispatcher
from vrtwist.sandesh import ADD, DUMP, GET, encode, schema

reactor: Any = _reactor
assert IReactorUNIX.providedBy(reactor)


class UnixSocketTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vrtwist-ksync-")
        self.dispatcher = MemoryDispatcher()

    async def _listen(self) -> None:
        port = await listen_ksync(reactor, self.dir, self.dispatcher)
        self.addCleanup(port.stopListening)

    async def test_64_clients_and_a_garbage_client(self) -> None:
        await self._listen()
        clients: list[KsyncClientProtocol] = []
        for _ in range(64):
            clients.append(await connect_ksync(reactor, self.dir))
        for c in clients:
            self.addCleanup(c.transport.loseConnection)  # type: ignore[union-attr]
        # A garbage client, and one that disconnects half way through a message.
        junk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        junk.connect(os.path.join(self.dir, "dpdk_netlink"))
        junk.sendall(struct.pack("<IHHII", 0xFFFFFFF0, 0, 1, 1, 0) + b"garbage" * 10)
        half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        half.connect(os.path.join(self.dir, "dpdk_netlink"))
        half.sendall(build_request(encode(schema.vr_mpls_req(h_op=ADD, mr_label=999)), seq=1)[:40])
        half.close()

        async def work(i: int, c: KsyncClientProtocol) -> None:
            pending = [
                c.request(schema.vr_mpls_req(h_op=ADD, mr_label=1000 + i * 10 + k, mr_nhid=i))
                for k in range(10)
            ]
            for d in pending:
                self.assertEqual((await d).code, 0)
            got = await c.request(schema.vr_mpls_req(h_op=GET, mr_label=1000 + i * 10 + 9))
            self.assertEqual(got.objects[0].mr_nhid, i)

        await gatherResults([Deferred.fromCoroutine(work(i, c)) for i, c in enumerate(clients)])
        # The garbage client was dropped by the server.
        junk.settimeout(5)
        self.assertEqual(await deferToThread(junk.recv, 100), b"")
        junk.close()
        labels = await clients[0].dump(schema.vr_mpls_req(h_op=DUMP, mr_marker=-1))
        self.assertEqual([m.mr_label for m in labels], list(range(1000, 1640)))
        self.assertNotIn(999, self.dispatcher.tables["vr_mpls_req"])

    async def test_blocking_helper(self) -> None:
        await self._listen()

        def run() -> tuple[int, list[Any], int]:
            with open_ksync(self.dir, timeout=5) as ks:
                code = ks.request(
                    schema.vr_interface_req(h_op=ADD, vifr_idx=4, vifr_name="tap4")
                ).code
                for i in range(5, 100):
                    ks.request(schema.vr_interface_req(h_op=ADD, vifr_idx=i, vifr_name="v" * 50))
                vifs = ks.dump(schema.vr_interface_req(vifr_marker=-1))
                try:
                    ks.request(schema.vr_interface_req(h_op=GET, vifr_idx=3000))
                except KsyncError as e:
                    return code, vifs, e.errno
            return code, vifs, 0

        code, vifs, err = await deferToThread(run)
        self.assertEqual(code, 0)
        self.assertEqual([v.vifr_idx for v in vifs], list(range(4, 100)))
        self.assertEqual(vifs[0].vifr_name, "tap4")
        self.assertEqual(err, 2)

    def test_blocking_connect_error(self) -> None:
        with self.assertRaises(KsyncConnectError) as cm:
            open_ksync(self.dir)
        self.assertIn("dpdk_netlink", str(cm.exception))

    async def test_service_replaces_stale_socket(self) -> None:
        path = os.path.join(self.dir, "dpdk_netlink")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()
        svc = KsyncServerService(reactor, self.dir, self.dispatcher)
        svc.startService()
        c = await connect_ksync(reactor, self.dir)
        self.assertEqual(
            (await c.request(schema.vrouter_ops(h_op=GET))).objects[0].vo_interfaces, 4352
        )
        c.transport.loseConnection()  # type: ignore[union-attr]
        await svc.stopService()  # type: ignore[misc]
        await deferLater(reactor, 0, lambda: None)
        self.assertFalse(os.path.exists(path))

    async def test_refuses_live_socket_and_non_socket(self) -> None:
        await self._listen()
        path = os.path.join(self.dir, "dpdk_netlink")
        self.assertRaises(OSError, remove_stale_socket, path)
        other = os.path.join(self.dir, "file")
        open(other, "w").close()
        self.assertRaises(OSError, remove_stale_socket, other)

    async def test_socket_mode(self) -> None:
        """Only the owner may connect (ksync rewrites the forwarding tables), any umask."""
        import stat

        old = os.umask(0)
        try:
            await self._listen()
        finally:
            os.umask(old)
        mode = stat.S_IMODE(os.stat(os.path.join(self.dir, "dpdk_netlink")).st_mode)
        self.assertEqual(mode, 0o600)

    async def test_nobody_refused_owner_served(self) -> None:
        """The attack: a local user connecting to dpdk_netlink.  Refused; root served."""
        from tests.unprivileged import connect_as_nobody, need_root, world_traversable

        need_root()
        world_traversable(self.dir)
        await self._listen()
        path = os.path.join(self.dir, "dpdk_netlink")
        self.assertEqual(connect_as_nobody(path), "EACCES")
        self.assertEqual(self.dispatcher.requests, [])
        c = await connect_ksync(reactor, self.dir)
        self.addCleanup(c.transport.loseConnection)  # type: ignore[union-attr]
        await c.request(schema.vr_mpls_req(h_op=ADD, mr_label=77, mr_nhid=1))
        self.assertEqual(len(self.dispatcher.requests), 1)

    async def test_socket_group(self) -> None:
        """With a group the socket is 0660 and that group's members connect."""
        from tests.unprivileged import connect_as_nobody, need_root, world_traversable
        from vrtwist.access import SocketAccess

        need_root()
        world_traversable(self.dir)
        port = await listen_ksync(reactor, self.dir, self.dispatcher, access=SocketAccess(65534))
        self.addCleanup(port.stopListening)
        path = os.path.join(self.dir, "dpdk_netlink")
        self.assertEqual(oct(os.stat(path).st_mode & 0o777), "0o660")
        self.assertEqual(connect_as_nobody(path, group=65534), "ok")

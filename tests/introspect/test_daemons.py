"""``--introspect`` of vrouter-dp, vrouter-control, vpnkit-host/-forwarder, vspc and
vsock-relay: each daemon's service tree started on the real reactor, its /metrics
parsed with prometheus_client's parser and checked against the daemon's own state."""

from __future__ import annotations

import json
import os
from typing import Any, cast

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests.agent.helpers import tempdir
from tests.polling import wait_for
from tests.vic.test_vspc_integration import VSPCNetTestCase, canonical
from vrtwist.vic.testing import uuid_text

LOOP = "tcp:0:interface=127.0.0.1"


def metrics_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class _Collect(Protocol):
    def __init__(self) -> None:
        self.got = b""
        self.waiting: defer.Deferred[bytes] | None = None
        self.want = 0

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if self.waiting is not None and len(self.got) >= self.want:
            d, self.waiting = self.waiting, None
            d.callback(self.got)

    def read(self, n: int) -> defer.Deferred[bytes]:
        self.want = n
        self.waiting = defer.Deferred()
        if len(self.got) >= n:
            d, self.waiting = self.waiting, None
            d.callback(self.got)
        return self.waiting  # type: ignore[return-value]


class DaemonIntrospectTests(TestCase):
    timeout = 60

    async def start(self, tap: Any, argv: list[str]) -> tuple[Any, int]:
        options = tap.Options()
        options.parseOptions([*argv, "--introspect", LOOP])
        top = tap.makeService(options, reactor=reactor)
        top.startService()
        self.addCleanup(top.stopService)
        svc = top.getServiceNamed("introspect")
        port = await svc.listening
        self.assertIsNotNone(port)
        return top, port.getHost().port

    async def get(self, port: int, path: str) -> tuple[int, bytes]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        r = await treq.get(f"http://127.0.0.1:{port}{path}", reactor=cast(Any, reactor), pool=pool)
        return r.code, await r.content()

    async def scrape(self, port: int) -> dict[Any, float]:
        code, body = await self.get(port, "/metrics")
        self.assertEqual(code, 200)
        return metrics_of(body.decode())

    async def test_vrouter_dp(self) -> None:
        from vrtwist.datapath import tap

        d = tempdir(self)
        top, port = await self.start(tap, ["--run-dir", os.path.join(d, "run"),
                                           "--flow-entries", "1024", "--bridge-entries", "1024"])
        dp = top.datapath
        dp.tables.count_drop("invalid_nh", None, 3)
        m = await self.scrape(port)
        self.assertEqual(m[("vrouter_drops_total", (("reason", "invalid_nh"),))], 3)
        self.assertEqual(m[("vrouter_flows_active", ())], 0)
        self.assertEqual(m[("vrouter_dp_objects", (("table", "nexthop"),))],
                         len(dp.tables.nexthops))
        code, body = await self.get(port, "/health")
        self.assertEqual((code, json.loads(body)["ready"]), (200, True))
        code, body = await self.get(port, "/api/flows?limit=10")
        self.assertEqual((code, json.loads(body)["flows"]), (200, []))
        code, body = await self.get(port, "/api/flows?limit=0")
        self.assertEqual(code, 400)

    async def test_off_and_taken_endpoints(self) -> None:
        """``none`` turns the server off; an endpoint already taken is logged and the
        daemon goes on (its ksync socket still serves)."""
        import socket

        from vrtwist.datapath import tap

        d = tempdir(self)
        options = tap.Options()
        options.parseOptions(["--run-dir", os.path.join(d, "a"), "--introspect", "none"])
        top = tap.makeService(options, reactor=reactor)
        self.assertNotIn("introspect", [s.name for s in top])
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        options = tap.Options()
        run_dir = os.path.join(d, "b")
        options.parseOptions(["--run-dir", run_dir, "--flow-entries", "1024",
                              "--bridge-entries", "1024",
                              "--introspect", f"tcp:{busy}:interface=127.0.0.1"])
        top = tap.makeService(options, reactor=reactor)
        errors: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_level") is not None and event["log_level"].name == "error":
                errors.append(str(event.get("log_format")))
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(observe)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, observe)  # type: ignore[arg-type]
        top.startService()
        self.addCleanup(top.stopService)
        self.assertIsNone(await top.getServiceNamed("introspect").listening)
        self.assertTrue(any("introspect: cannot listen" in e for e in errors), errors)
        self.assertTrue(top.running)
        self.assertTrue(os.path.exists(os.path.join(run_dir, "dpdk_netlink")))

    async def test_vrouter_control(self) -> None:
        from vrtwist.xmpp import control_tap

        top, port = await self.start(control_tap, ["--xmpp", LOOP])
        m = await self.scrape(port)
        self.assertEqual(m[("vrouter_control_xmpp_sessions", ())], 0)
        self.assertEqual(m[("vrouter_control_routing_instances", ())],
                         len(top.node.instances))
        code, body = await self.get(port, "/api/peers")
        self.assertEqual((code, json.loads(body)), (200, {"peers": []}))

    async def test_vsock_relay_counts_a_relayed_connection(self) -> None:
        from vrtwist.vsock import relay_tap

        echo = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(_Echo))
        self.addCleanup(echo.stopListening)
        top, port = await self.start(relay_tap, [
            "--listen", LOOP, "--backend", f"tcp:127.0.0.1:{echo.getHost().port}"])
        listen = [s for s in top if s.name != "introspect" and hasattr(s, "_waitingForPort")]
        relay_port = (await listen[0]._waitingForPort).getHost().port
        client = _Collect()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", relay_port), client)
        client.transport.write(b"x" * 1000)  # type: ignore[union-attr]
        self.assertEqual(len(await client.read(1000)), 1000)
        m = await self.scrape(port)
        self.assertEqual(m[("vsock_relay_accepted_total", ())], 1)
        self.assertEqual(m[("vsock_relay_active", ())], 1)
        self.assertEqual(m[("vsock_relay_bytes_total", (("direction", "to_backend"),))], 1000)
        self.assertEqual(m[("vsock_relay_bytes_total", (("direction", "to_caller"),))], 1000)
        client.transport.loseConnection()  # type: ignore[union-attr]
        stats = listen[0].factory.stats
        await until(lambda: stats.active == 0 and stats.backendsOpen == 0, "relay closed")
        m = await self.scrape(port)
        self.assertEqual(m[("vsock_relay_active", ())], 0)
        self.assertEqual(m[("vsock_relay_accepted_total", ())], 1)

    async def test_vspc(self) -> None:
        from vrtwist.vic import vspc_tap

        _top, port = await self.start(vspc_tap, ["--listen", LOOP])
        m = await self.scrape(port)
        self.assertEqual(m[("vspc_ports", ())], 0)
        self.assertEqual(m[("vspc_connections", ())], 0)
        code, body = await self.get(port, "/api/ports")
        self.assertEqual((code, json.loads(body)), (200, {"ports": []}))

    async def test_vpnkit_link_and_channel(self) -> None:
        from vrtwist.vpnkit import forwarder_tap, host_tap

        d = tempdir(self)
        sock = os.path.join(d, "link")
        echo = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(_Echo))
        self.addCleanup(echo.stopListening)
        _fwd, fport = await self.start(forwarder_tap, ["--data-listen", f"unix:{sock}"])
        m = await self.scrape(fport)
        self.assertEqual(m[("vpnkit_links", ())], 0)
        code, body = await self.get(fport, "/health")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["reasons"], ["no data link up"])
        host, hport = await self.start(host_tap, [
            "--data-connect", f"unix:{sock}",
            "--expose", f"tcp:127.0.0.1:0:127.0.0.1:{echo.getHost().port}"])
        links = host.links

        await until(lambda: bool(links.muxes and host.table.list()), "vpnkit link")
        exposed = host.table.list()[0]
        m = await self.scrape(hport)
        self.assertEqual(m[("vpnkit_links", ())], 1)
        self.assertEqual(m[("vpnkit_ports", ())], 1)
        self.assertEqual(m[("vpnkit_links_seen_total", ())], 1)
        # a connection to the exposed port rides a channel of the link to the echo server
        client = _Collect()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", exposed.out_port), client)
        client.transport.write(b"y" * 5000)  # type: ignore[union-attr]
        self.assertEqual(len(await client.read(5000)), 5000)
        hm = await self.scrape(hport)
        fm = await self.scrape(fport)
        self.assertEqual(hm[("vpnkit_channels_total", (("event", "opened"),))], 1)
        self.assertEqual(fm[("vpnkit_channels_total", (("event", "accepted"),))], 1)
        self.assertEqual(hm[("vpnkit_channels_open", ())], 1)
        stats = links.muxes[0].stats
        self.assertEqual(hm[("vpnkit_bytes_total", (("direction", "out"),))], stats.bytes_out)
        self.assertEqual(hm[("vpnkit_bytes_total", (("direction", "in"),))], stats.bytes_in)
        self.assertGreaterEqual(stats.bytes_out, 5000)
        client.transport.loseConnection()  # type: ignore[union-attr]
        await until(lambda: not links.muxes[0].channels, "channel closed")
        hm = await self.scrape(hport)
        self.assertEqual(hm[("vpnkit_channels_open", ())], 0)


def until(pred: Any, what: str, timeout: float = 10.0) -> defer.Deferred[Any]:
    """``tests.polling.wait_for`` with this module's argument order."""
    return wait_for(pred, timeout, 0.02, what)


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


class VSPCSessionMetricsTests(VSPCNetTestCase):
    """A fake ESX host and a backend through a real vSPC: the session and its bytes."""

    async def test_session_counters(self) -> None:
        from vrtwist.introspect.daemons import vspc_app
        from vrtwist.introspect.listen import listen_introspect

        port = await self.startVSPC()
        backend = await self.backend(1, echo=True)
        esx = await self.esx(port, uuid=uuid_text(1))
        app = vspc_app(self.table)
        listening = await listen_introspect(reactor, LOOP, app.resource())
        self.addCleanup(listening.stopListening)
        host = listening.getHost()
        assert isinstance(host, IPv4Address), host
        iport = host.port
        esx.send_serial(b"z" * 3000)
        await esx.wait_for(lambda: len(esx.serial) >= 3000)
        pool = HTTPConnectionPool(reactor, persistent=False)
        r = await treq.get(f"http://127.0.0.1:{iport}/metrics", reactor=cast(Any, reactor), pool=pool)
        m = metrics_of((await r.content()).decode())
        [sp] = self.table.ports()
        key = (("label", sp.label), ("uuid", canonical(1)))
        self.assertEqual(m[("vspc_ports", ())], 1)
        self.assertEqual(m[("vspc_sessions", ())], 1)
        self.assertEqual(m[("vspc_connections", ())], 1)
        self.assertEqual(m[("vspc_backends", ())], 1)
        self.assertEqual(m[("vspc_port_bytes_from_vm_total", key)], 3000)
        self.assertEqual(m[("vspc_port_bytes_to_vm_total", key)], sp.counters.bytesToVM)
        self.assertEqual(backend.received(), b"z" * 3000)


class SlowReaderTests(TestCase):
    """A slow reader of a 1,000,000-flow listing gets one bounded page; the server keeps
    answering others meanwhile."""

    timeout = 120

    async def test_slow_reader_of_a_million_flows(self) -> None:
        import array
        import mmap
        import socket
        import threading

        from prometheus_client import CollectorRegistry
        from twisted.internet.threads import deferToThread

        from vrtwist.datapath.introspect import flow_view
        from vrtwist.introspect.flows import FlowTableSource
        from vrtwist.introspect.listen import listen_introspect
        from vrtwist.introspect.web import Health, IntrospectApp
        from vrtwist.shmem import layout as L

        d = tempdir(self)
        n = 1_000_000
        path = os.path.join(d, "flow.shmem")
        with open(path, "wb") as f:
            f.truncate(n * L.FLOW_ENTRY_SIZE)
        with open(path, "r+b") as f:  # type: ignore[assignment]
            mm = mmap.mmap(f.fileno(), 0)
            words = memoryview(mm).cast("H")
            words[L.OFF_FE_FLAGS // 2 :: L.FLOW_ENTRY_SIZE // 2] = array.array(
                "H", [L.FLAG_ACTIVE]) * n
            words.release()
            mm.close()
        flows = FlowTableSource(d)
        self.addCleanup(flows.close)
        app = IntrospectApp("test", CollectorRegistry(), Health, {"flows": flow_view(flows)})
        listening = await listen_introspect(reactor, LOOP, app.resource())
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port  # type: ignore[attr-defined]
        release = threading.Event()

        def slow_read() -> bytes:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /api/flows?start=999000&limit=1000 HTTP/1.0\r\nHost: x\r\n\r\n")
            release.wait(30)  # stay unread while the others are served
            out = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
            s.close()
            return out

        reader = deferToThread(slow_read)
        await deferLater(0.3)
        code, body = await _get(port, "/api/flows?start=0&limit=5")
        self.assertEqual(code, 200)
        page = json.loads(body)
        self.assertEqual(([f["index"] for f in page["flows"]], page["next"]),
                         ([0, 1, 2, 3, 4], 5))
        code, _ = await _get(port, "/health")
        self.assertEqual(code, 200)
        code, body = await _get(port, "/api/flows?limit=1000001")
        self.assertEqual(code, 400)
        release.set()
        raw = await reader
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertIn(b" 200 ", head.split(b"\r\n")[0])
        page = json.loads(body)
        self.assertEqual(len(page["flows"]), 1000)
        self.assertEqual((page["flows"][0]["index"], page["next"], page["table"]),
                         (999_000, None, n))
        self.assertLess(len(body), 400 * 1000, "one page is bounded whatever the table size")


async def _get(port: int, path: str) -> tuple[int, bytes]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    r = await treq.get(f"http://127.0.0.1:{port}{path}", reactor=cast(Any, reactor), pool=pool)
    return r.code, await r.content()

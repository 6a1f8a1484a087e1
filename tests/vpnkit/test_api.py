"""The HTTP/JSON expose API (StubTreq), the Port model, and the vpnkit-expose CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from vrtwist.cli import vpnkit_expose
from vrtwist.vpnkit.api import ExposeAPI
from vrtwist.vpnkit.host import ExposeError, ForwardTable, Links, Port, PortError
from vrtwist.vpnkit.interfaces import IForwardTable


class FakeTable:
    """A forward table that never listens (for the HTTP layer alone)."""

    def __init__(self) -> None:
        self.ports: dict[tuple[str, str, int, str], Port] = {}
        self.closed: list[tuple[Port, bool]] = []

    async def expose(self, port: Port) -> Port:
        if port.out_port == 1:
            raise ExposeError("listen tcp 127.0.0.1:1: [Errno 98] Address already in use")
        if port.out_port == 0 and port.proto != "unix":
            from dataclasses import replace

            port = replace(port, out_port=40000 + len(self.ports))
        self.ports[port.key()] = port
        return port

    async def unexpose(self, port: Port, closeConnections: bool = False) -> None:
        self.ports.pop(port.key(), None)
        self.closed.append((port, closeConnections))

    def list(self) -> list[Port]:
        return list(self.ports.values())

    def dump(self) -> str:
        return "multiplexer online\nlive channels: 0\n"


class PortModelTests(SynchronousTestCase):
    """go/pkg/vpnkit/port_test.go: TestParseRoundTrip, TestString, TestAnnotation."""

    def test_parse_round_trip(self) -> None:
        for spec in (
            "tcp:127.0.0.1:8080:10.0.0.2:80",
            "udp:0.0.0.0:53:172.17.0.2:53",
            "tcp:[::1]:8080:[fd00::2]:80",
            "unix:/tmp/out.sock:/var/run/in.sock",
        ):
            self.assertEqual(str(Port.parse(spec)), spec)

    def test_json_is_go_omitempty(self) -> None:
        p = Port.parse("tcp:127.0.0.1:0:10.0.0.2:80")
        self.assertEqual(
            p.to_json(), {"proto": "tcp", "out_ip": "127.0.0.1", "in_ip": "10.0.0.2", "in_port": 80}
        )
        self.assertEqual(Port.from_json(p.to_json()), p)

    def test_annotation(self) -> None:
        p = Port.from_json(
            {
                "proto": "tcp",
                "out_ip": "0.0.0.0",
                "out_port": 1,
                "in_ip": "1.2.3.4",
                "in_port": 2,
                "annotation": "web",
            }
        )
        self.assertEqual(p.annotation, "web")

    def test_bad_ports(self) -> None:
        for bad in (
            "sctp:1.2.3.4:1:1.2.3.4:2",
            "tcp:1.2.3.4:1:1.2.3.4",
            "tcp:nothost:1:1.2.3.4:2",
            "tcp:1.2.3.4:x:1.2.3.4:2",
            "tcp:1.2.3.4:1:1.2.3.4:0",
            "tcp:1.2.3.4:70000:1.2.3.4:1",
            "unix:/a",
        ):
            self.assertRaises(PortError, Port.parse, bad)
        self.assertRaises(PortError, Port.from_json, {"proto": "tcp", "bogus": 1})
        self.assertRaises(PortError, Port.from_json, [1, 2])

    def test_destination(self) -> None:
        self.assertEqual(
            str(Port.parse("udp:0.0.0.0:53:10.0.0.2:5353").destination()), "udp:10.0.0.2:5353"
        )
        self.assertEqual(str(Port.parse("unix:/a:/b").destination()), "unix:/b")


class APITests(SynchronousTestCase):
    """go/pkg/vpnkit/http/http_test.go, through StubTreq."""

    def setUp(self) -> None:
        self.table = FakeTable()
        self.treq: Any = StubTreq(ExposeAPI(self.table).resource())  # type: ignore[arg-type]

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        d = self.treq.request(method, "http://x" + path, data=data)
        resp = self.successResultOf(d)
        content = self.successResultOf(self.treq.content(resp))
        return resp.code, content

    def test_empty_list(self) -> None:
        self.assertEqual(self.call("GET", "/forwards/list"), (200, b"[]\n"))

    def test_non_empty_list_and_port_zero(self) -> None:
        code, body = self.call(
            "PUT", "/forwards/expose/port", Port.parse("tcp:127.0.0.1:0:10.0.0.2:80").to_json()
        )
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["out_port"], 40000)
        code, body = self.call("GET", "/forwards/list")
        self.assertEqual([Port.from_json(p) for p in json.loads(body)], self.table.list())

    def test_unexpose(self) -> None:
        spec = Port.parse("tcp:127.0.0.1:5000:10.0.0.2:80").to_json()
        self.call("POST", "/forwards/expose/port", spec)
        self.assertEqual(self.call("DELETE", "/forwards/unexpose/port?close=1", spec)[0], 200)
        self.assertEqual(self.table.closed[0][1], True)
        self.assertEqual(self.call("GET", "/forwards/list")[1], b"[]\n")

    def test_expose_error_is_400_with_message(self) -> None:
        code, body = self.call(
            "PUT", "/forwards/expose/port", Port.parse("tcp:127.0.0.1:1:10.0.0.2:80").to_json()
        )
        self.assertEqual(code, 400)
        self.assertIn("Address already in use", json.loads(body)["message"])

    def test_wrong_kind_and_bad_json(self) -> None:
        code, body = self.call("PUT", "/forwards/expose/port", Port.parse("unix:/a:/b").to_json())
        self.assertEqual(
            (code, json.loads(body)["message"]), (400, "exposed ports can only be TCP or UDP")
        )
        code, _ = self.call(
            "PUT", "/forwards/expose/pipe", Port.parse("tcp:1.2.3.4:1:1.2.3.4:2").to_json()
        )
        self.assertEqual(code, 400)
        d = self.treq.request("PUT", "http://x/forwards/expose/port", data=b"{not json")
        self.assertEqual(self.successResultOf(d).code, 400)
        self.assertEqual(self.table.list(), [])

    def test_deep_or_bad_string_json_is_400(self) -> None:
        good = Port.parse("tcp:127.0.0.1:5000:10.0.0.2:80").to_json()
        self.assertEqual(self.call("PUT", "/forwards/expose/port", good)[0], 200)
        for raw in (
            b"[" * 100_000 + b"]" * 100_000,
            json.dumps(dict(good, in_ip="10.0.0.2\u0000")).encode(),
            json.dumps(dict(good, proto="tcp\ud800")).encode(),
        ):
            d = self.treq.request("PUT", "http://x/forwards/expose/port", data=raw)
            resp = self.successResultOf(d)
            self.assertEqual(resp.code, 400)
            message = json.loads(self.successResultOf(self.treq.content(resp)))["message"]
            self.assertIn("not acceptable JSON", message)
        self.assertEqual(len(self.table.list()), 1)  # only the good one

    def test_pipe(self) -> None:
        code, _ = self.call("PUT", "/forwards/expose/pipe", Port.parse("unix:/a:/b").to_json())
        self.assertEqual(code, 200)
        self.assertEqual(
            self.call("DELETE", "/forwards/unexpose/pipe", Port.parse("unix:/a:/b").to_json())[0],
            200,
        )

    def test_dump_is_text(self) -> None:
        code, body = self.call("GET", "/forwards/dump")
        self.assertEqual(code, 200)
        self.assertIn(b"live channels", body)

    def test_real_table_provides_interface(self) -> None:
        verifyObject(IForwardTable, ForwardTable(reactor, Links()))


class CLITests(TestCase):
    """vpnkit-expose against the real API and forward table over a unix socket."""

    timeout = 30

    async def setUp(self) -> None:  # type: ignore[override]
        self.dir = tempfile.mkdtemp(prefix="vpnkit-api-")
        self.table = ForwardTable(reactor, Links())
        api = f"unix:{os.path.join(self.dir, 'api.sock')}"
        self.port = await serverFromString(reactor, api).listen(
            Site(ExposeAPI(self.table).resource())
        )
        self.api = api

    async def tearDown(self) -> None:  # type: ignore[override]
        await self.table.unexpose_all()
        await self.port.stopListening()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def run_cli(self, *argv: str) -> tuple[int, str]:
        opts = vpnkit_expose.Options()
        opts.parseOptions(["--api", self.api, *argv])
        out = io.StringIO()
        code = await vpnkit_expose.run(reactor, opts, out)
        return code, out.getvalue()

    async def test_expose_list_unexpose(self) -> None:
        code, out = await self.run_cli("expose", "tcp:127.0.0.1:0:127.0.0.1:9")
        self.assertEqual(code, 0)
        self.assertRegex(out, r"exposed tcp:127\.0\.0\.1:\d+:127\.0\.0\.1:9")
        granted = self.table.list()[0]
        self.assertNotEqual(granted.out_port, 0)
        code, out = await self.run_cli("list")
        self.assertEqual(out.strip(), str(granted))
        code, out = await self.run_cli("unexpose", "--close", str(granted))
        self.assertEqual(code, 0)
        self.assertEqual(self.table.list(), [])
        code, out = await self.run_cli("dump")
        self.assertIn("forwards: 0", out)

    async def test_error_is_reported(self) -> None:
        granted = await self.table.expose(Port.parse("tcp:127.0.0.1:0:127.0.0.1:9"))
        code, _ = await self.run_cli("expose", f"tcp:127.0.0.1:{granted.out_port}:127.0.0.1:10")
        self.assertEqual(code, 1)
        self.assertEqual(len(self.table.list()), 1)

    async def test_unreachable_api(self) -> None:
        opts = vpnkit_expose.Options()
        opts.parseOptions(["--api", "unix:" + os.path.join(self.dir, "nope.sock"), "list"])
        code = await vpnkit_expose.run(reactor, opts, io.StringIO())
        self.assertEqual(code, 1)

    def test_usage_errors(self) -> None:
        from twisted.python import usage

        self.assertRaises(usage.UsageError, vpnkit_expose.Options().parseOptions, [])
        self.assertRaises(
            usage.UsageError, vpnkit_expose.Options().parseOptions, ["expose", "bogus"]
        )
        d: defer.Deferred[None] = defer.succeed(None)
        return d  # type: ignore[return-value]

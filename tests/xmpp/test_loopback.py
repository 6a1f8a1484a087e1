"""The control node and agent links over real loopback TCP (and TLS) sockets."""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.polling import wait_for
from vrtwist.xmpp.agent_link import ControllerLink, LocalRouteInfo, makeControllerLink
from vrtwist.xmpp.control import ControlNode, ControlNodeFactory
from vrtwist.xmpp.testing import RecordingSink, sink_of
from vrtwist.xmpp.tls import mutual_tls_options


def until(pred: Callable[[], object], what: str, timeout: float = 10.0) -> Deferred[object]:
    """``tests.polling.wait_for`` with this module's argument order."""
    return wait_for(pred, timeout, 0.02, what)


def port(i: int, vrf: str = "blue", fabric: str = "127.0.0.2") -> LocalRouteInfo:
    return LocalRouteInfo(f"port{i}", f"vm{i}", "vn1", vrf, f"02:00:00:00:00:{i:02x}",
                          f"10.0.0.{i}", None, 20 + i, fabric)


class LoopbackBase(TestCase):
    timeout = 30

    async def start_cn(self, gr_time: float = 0.5, tls: Any = None, portno: int = 0,
                       name: str = "cn1") -> tuple[ControlNode, Any]:
        node = ControlNode(reactor, name, gr_time=gr_time)
        lp = await TCP4ServerEndpoint(reactor, portno, interface="127.0.0.1").listen(
            ControlNodeFactory(node, 90, tls))
        self.addCleanup(self.stop_cn, node, lp)
        return node, lp

    async def stop_cn(self, node: ControlNode, lp: Any) -> None:
        if lp.connected:
            await lp.stopListening()
        for s in list(node.sessions.values()):
            s.transport.abortConnection()  # type: ignore[union-attr]
        await task.deferLater(reactor, 0.05, lambda: None)
        node.stop()

    def agent(self, ports: list[int], name: str, fabric: str, tls: dict[str, Any] | None = None,
              stale: float = 60.0, sink: RecordingSink | None = None) -> ControllerLink:
        sink = sink or RecordingSink(fabric)
        link = makeControllerLink(reactor, [f"tcp:127.0.0.1:{p}" for p in ports], name, fabric,
                                  sink, stale_time=stale, retry_policy=lambda n: 0.1,
                                  **(tls or {}))
        link.startService()
        self.addCleanup(link.stopService)
        return link


class ReflectionTests(LoopbackBase):
    async def test_three_agents_converge_and_withdraw(self) -> None:
        _node, lp = await self.start_cn()
        p = lp.getHost().port
        links = [self.agent([p], f"host{i}", f"127.0.0.{i + 2}") for i in range(3)]
        for i, link in enumerate(links):
            link.localRouteAdded(port(i + 1, fabric=f"127.0.0.{i + 2}"))
        sinks = [sink_of(link) for link in links]

        def converged() -> bool:
            return all(len(s.table) == 2 for s in sinks)

        await until(converged, "every agent to learn the other two routes")
        self.assertEqual(sinks[0].table[("blue", "10.0.0.2", 32)],
                         ("127.0.0.3", 22, "udp", "02:00:00:00:00:02"))
        self.assertNotIn(("blue", "10.0.0.1", 32), sinks[0].table)
        links[1].localRouteDeleted(port(2))
        await until(lambda: ("blue", "10.0.0.2", 32) not in sinks[0].table
                    and ("blue", "10.0.0.2", 32) not in sinks[2].table, "the withdraw")
        self.assertEqual(sinks[1].table, {})  # its VRF is gone locally: learnt routes dropped

    async def test_lost_agent_routes_go_after_gr_time(self) -> None:
        _node, lp = await self.start_cn(gr_time=0.3)
        p = lp.getHost().port
        a = self.agent([p], "a", "127.0.0.2")
        b = self.agent([p], "b", "127.0.0.3")
        a.localRouteAdded(port(1))
        b.localRouteAdded(port(2, fabric="127.0.0.3"))
        await until(lambda: len(sink_of(b).table) == 1, "b to learn a's route")
        await a.stopService()
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(len(sink_of(b).table), 1)  # still within the GR time
        await until(lambda: len(sink_of(b).table) == 0, "a's route to be retracted")


class BadPeerTests(LoopbackBase):
    async def bad_client(self, p: int, data: bytes) -> Any:
        proto: Any = await TCP4ClientEndpoint(reactor, "127.0.0.1", p).connect(
            _Factory())
        proto.transport.write(data)
        return proto

    async def check_survives(self, data: bytes, reason: str) -> None:
        node, lp = await self.start_cn()
        p = lp.getHost().port
        a = self.agent([p], "a", "127.0.0.2")
        b = self.agent([p], "b", "127.0.0.3")
        a.localRouteAdded(port(1))
        b.localRouteAdded(port(2, fabric="127.0.0.3"))
        await until(lambda: len(sink_of(a).table) == 1 and len(sink_of(b).table) == 1,
                    "a and b to converge")
        with capturedLogs() as logs:
            bad = await self.bad_client(p, data)
            await until(lambda: bad.lost, "the bad peer to be disconnected")
        text = "\n".join(formatEvent(e) for e in logs)
        self.assertIn("closed: ", text)
        self.assertIn(reason, text)
        # Nothing else lost: a and b still up, their routes still flow.
        a.localRouteAdded(port(3))
        await until(lambda: len(sink_of(b).table) == 2, "a new route after the bad peer")
        self.assertEqual(set(node.sessions), {"a", "b"})

    async def test_garbage_bytes(self) -> None:
        await self.check_survives(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "framing error")

    async def test_malformed_xml_after_open(self) -> None:
        from vrtwist.xmpp.framing import build_stream_open

        await self.check_survives(build_stream_open("evil") + b"<iq type='set'><pubsub></iq>",
                                  "malformed XML")

    async def test_entity_expansion(self) -> None:
        from vrtwist.xmpp.framing import build_stream_open

        bomb = (b'<iq type="set"><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 '
                b'"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>&lol2;</iq>')
        await self.check_survives(build_stream_open("evil") + bomb, "bad stanza: malformed XML")

    async def test_smuggled_doctype_entity_bomb(self) -> None:
        from tests.xmpp.test_stanza_attacks import laughs, smuggled
        from vrtwist.xmpp.framing import build_stream_open

        await self.check_survives(build_stream_open("evil") + smuggled(laughs()),
                                  "undefined entity")

    async def test_oversized_stanza(self) -> None:
        from vrtwist.xmpp.framing import build_stream_open

        await self.check_survives(build_stream_open("evil") + b"<iq>" + b"A" * 400_000,
                                  "exceeds the limit")

    async def test_unknown_vrf(self) -> None:
        from vrtwist.xmpp.framing import build_stream_open
        from vrtwist.xmpp.stanzas import NextHop, RouteEntry, build_route_publish

        e = RouteEntry(1, 1, "10.9.9.9/32", (NextHop("127.0.0.9", 5),))
        await self.check_survives(build_stream_open("evil") + build_route_publish("evil", "nope", e),
                                  "unsubscribed instance 'nope'")


def _max_send_buffer() -> int:
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


class _Client(Protocol):
    lost = False

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


@implementer(IProtocolFactory)
class _Factory:
    def doStart(self) -> None: ...
    def doStop(self) -> None: ...

    def buildProtocol(self, addr: Any) -> _Client:
        return _Client()


class RestartAndFailoverTests(LoopbackBase):
    async def test_control_node_restart_keeps_forwarding_then_reconverges(self) -> None:
        node, lp = await self.start_cn()
        p = lp.getHost().port
        a = self.agent([p], "a", "127.0.0.2", stale=30)
        b = self.agent([p], "b", "127.0.0.3", stale=30)
        a.localRouteAdded(port(1))
        b.localRouteAdded(port(2, fabric="127.0.0.3"))
        await until(lambda: len(sink_of(b).table) == 1, "b to learn a's route")
        await self.stop_cn(node, lp)
        await until(lambda: b.session is None, "b to notice the outage")
        await task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(sink_of(b).table), 1)  # headless: forwarding state kept
        self.assertEqual(b.remote.stale_count, 2)  # its inet and EVPN items
        eors = b.end_of_ribs
        _node2, _lp2 = await self.start_cn(portno=p)
        # a withdrew nothing, but changed its route during the outage.
        a.localRouteDeleted(port(1))
        a.localRouteAdded(port(5))
        await until(lambda: list(sink_of(b).table) == [("blue", "10.0.0.5", 32)],
                    "b to reconverge (new route in, stale one swept at End-of-RIB)")
        await until(lambda: b.end_of_ribs > eors, "End-of-RIB of the new session")

    async def test_second_control_node_takes_over(self) -> None:
        n1, lp1 = await self.start_cn(name="cn1")
        n2, lp2 = await self.start_cn(name="cn2")
        p1, p2 = lp1.getHost().port, lp2.getHost().port
        a = self.agent([p1, p2], "a", "127.0.0.2")
        b = self.agent([p1, p2], "b", "127.0.0.3")
        a.localRouteAdded(port(1))
        b.localRouteAdded(port(2, fabric="127.0.0.3"))
        await until(lambda: len(sink_of(b).table) == 1 and set(n1.sessions) == {"a", "b"},
                    "both agents on cn1")
        await self.stop_cn(n1, lp1)
        await until(lambda: set(n2.sessions) == {"a", "b"}, "both agents to fail over to cn2")
        a.localRouteAdded(port(3))
        await until(lambda: len(sink_of(b).table) == 2, "routes through cn2")
        self.assertEqual(set(n2.sessions), {"a", "b"})  # served by cn2 now
        # every control node opens its stream as the real one does, whatever its name
        self.assertEqual(b.session.peer_name,  # type: ignore[union-attr]
                         "network-control@contrailsystems.com")


def make_pki(directory: str) -> dict[str, str]:
    """A CA and two certificates (control node, agent) signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("vrtwist test CA")).issuer_name(name("vrtwist test CA"))
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": os.path.join(directory, "ca.pem")}
    with open(paths["ca"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    for who in ("cn", "agent", "rogue"):
        key = ec.generate_private_key(ec.SECP256R1())
        signer_key = ca_key if who != "rogue" else key
        issuer = ca.subject if who != "rogue" else name(who)
        cert = (x509.CertificateBuilder().subject_name(name(who)).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(10 + len(paths))
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(signer_key, hashes.SHA256()))
        paths[f"{who}-cert"] = os.path.join(directory, f"{who}.pem")
        paths[f"{who}-key"] = os.path.join(directory, f"{who}.key")
        with open(paths[f"{who}-cert"], "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(paths[f"{who}-key"], "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return paths


class TlsTests(LoopbackBase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vrtwist-xmpp-tls-")
        self.pki = make_pki(self.dir)

    def agent_tls(self, who: str = "agent") -> dict[str, str]:
        return {"xmpp_cert": self.pki[f"{who}-cert"], "xmpp_key": self.pki[f"{who}-key"],
                "xmpp_ca": self.pki["ca"]}

    async def test_starttls_with_mutual_certificates(self) -> None:
        tls = mutual_tls_options(self.pki["cn-cert"], self.pki["cn-key"], self.pki["ca"])
        node, lp = await self.start_cn(tls=tls)
        p = lp.getHost().port
        a = self.agent([p], "a", "127.0.0.2", tls=self.agent_tls())
        b = self.agent([p], "b", "127.0.0.3", tls=self.agent_tls())
        a.localRouteAdded(port(1))
        b.localRouteAdded(port(2, fabric="127.0.0.3"))
        await until(lambda: len(sink_of(a).table) == 1 and len(sink_of(b).table) == 1,
                    "routes over TLS")
        from twisted.internet.interfaces import ISSLTransport

        self.assertTrue(ISSLTransport.providedBy(node.sessions["a"].transport))

    async def test_agent_without_tls_never_comes_up(self) -> None:
        tls = mutual_tls_options(self.pki["cn-cert"], self.pki["cn-key"], self.pki["ca"])
        node, lp = await self.start_cn(tls=tls)
        with capturedLogs() as logs:
            a = self.agent([lp.getHost().port], "a", "127.0.0.2")
            await until(lambda: "requires TLS" in "\n".join(formatEvent(e) for e in logs),
                        "the TLS mismatch to be reported")
        self.assertEqual(node.sessions, {})
        await a.stopService()

    async def test_certificate_from_another_ca_is_refused(self) -> None:
        tls = mutual_tls_options(self.pki["cn-cert"], self.pki["cn-key"], self.pki["ca"])
        node, lp = await self.start_cn(tls=tls)
        a = self.agent([lp.getHost().port], "a", "127.0.0.2", tls=self.agent_tls("rogue"))
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(node.sessions, {})
        self.assertEqual(a.sessions_established, 0)
        await a.stopService()
        self.flushLoggedErrors()


_ = defer


class SlowPeerTests(LoopbackBase):
    timeout = 60

    async def test_stalled_agent_does_not_hold_up_the_others(self) -> None:
        from vrtwist.xmpp.framing import StanzaBytes, StanzaSplitter, build_stream_open
        from vrtwist.xmpp.stanzas import RouteUpdate, build_subscribe, parse_stanza

        node, lp = await self.start_cn()
        p = lp.getHost().port
        stalled = await TCP4ClientEndpoint(reactor, "127.0.0.1", p).connect(_Factory())
        received = bytearray()
        stalled.dataReceived = received.extend  # type: ignore[assignment, method-assign]
        stalled.transport.write(build_stream_open("stall") + build_subscribe("stall", "blue", 1))  # type: ignore[attr-defined]
        await until(lambda: "stall" in node.sessions and node.sessions["stall"].subscriptions,
                    "the stalled agent to subscribe")
        stalled.transport.pauseProducing()  # type: ignore[attr-defined]  # stop reading: its socket buffers fill up
        a = self.agent([p], "a", "127.0.0.2")
        b = self.agent([p], "b", "127.0.0.3")
        b.localRouteAdded(port(250, fabric="127.0.0.3"))
        # More bytes for the stalled agent than the kernel's socket buffers can absorb.
        n = max(6000, (_max_send_buffer() + (3 << 20)) // 1100)
        for i in range(n):
            a.localRouteAdded(LocalRouteInfo(f"p{i}", f"vm{i}", "vn1", "blue", "",
                                             f"10.{i >> 8}.{i & 255}.1", None, 16, "127.0.0.2"))
        await until(lambda: len(sink_of(b).table) == n, "b to get every route", timeout=30)
        session = node.sessions["stall"]
        await until(lambda: session.paused, "the stalled session to be paused by its transport")
        # What waits for it is one mark per route, not a queue of messages.
        pending = sum(len(v) for v in session._dirty.values())
        self.assertLessEqual(pending, n + 2)
        stalled.transport.resumeProducing()  # type: ignore[attr-defined]

        splitter = StanzaSplitter()
        ids: set[str] = set()
        seen = [0]

        def all_routes() -> bool:
            for e in splitter.feed(bytes(received[seen[0]:])):
                if isinstance(e, StanzaBytes):
                    s = parse_stanza(e.data)
                    if isinstance(s, RouteUpdate):
                        ids.update(x.item_id for x in s.items)
            seen[0] = len(received)
            return len(ids) >= n + 1

        await until(all_routes, "the stalled agent to catch up once it reads", timeout=30)
        stalled.transport.loseConnection()  # type: ignore[attr-defined]

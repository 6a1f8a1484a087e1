"""vSPC protocol logic on StringTransport + MemoryReactorClock: negotiation, relay, vMotion."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from vrtwist.vic import telnet as T
from vrtwist.vic import vmware_ext as X
from vrtwist.vic.interfaces import IVMPortTable
from vrtwist.vic.testing import ESX_KNOWN, PCAP_UUID
from vrtwist.vic.vspc import (
    SerialPort,
    VMPortTable,
    VSPCConfig,
    VSPCConnection,
    VSPCFactory,
)

UUID = "01234567-89ab-cdef-fedc-ba9800000000"
OFFERS = bytes.fromhex("fffb00fffb03fffb01fffd00fffd03fffde8")


def events(tr: StringTransport) -> list[Any]:
    data = tr.value()
    tr.clear()
    return T.TelnetParser().feed(data)


def ext(evs: list[Any]) -> list[tuple[int, bytes]]:
    return [X.split(e.payload) for e in evs if isinstance(e, T.Subnegotiation)]


class Harness:
    def __init__(self, **config: Any) -> None:
        self.clock = MemoryReactorClock()
        self.table = VMPortTable(self.clock, VSPCConfig(**config))
        self.factory = VSPCFactory(self.table)

    def connect(self, host: str = "10.0.0.2") -> tuple[VSPCConnection, StringTransport]:
        conn = self.factory.buildProtocol(None)
        tr = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        conn.makeConnection(tr)
        return conn, tr

    def proxied(
        self,
        uuid: bytes = PCAP_UUID,
        uri: bytes = b"vSPC.py",
        host: str = "10.0.0.2",
        clear: bool = True,
    ) -> tuple[VSPCConnection, StringTransport]:
        conn, tr = self.connect(host)
        conn.dataReceived(
            T.encodeNegotiation(T.WILL, T.VMWARE_EXT)
            + X.command(X.KNOWN_SUBOPTIONS_1, ESX_KNOWN)
            + X.command(X.DO_PROXY, b"S" + uri)
            + X.command(X.VM_VC_UUID, uuid)
            + X.command(X.VM_NAME, b"vm-00000")
        )
        if clear:
            tr.clear()
        return conn, tr

    def backend(self, index: int = -1) -> tuple[Any, StringTransport]:
        host, port, factory, _timeout, _bind = self.clock.tcpClients[index]
        proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        tr = StringTransport()
        proto.makeConnection(tr)  # type: ignore[union-attr]
        return proto, tr

    def port(self) -> SerialPort:
        (p,) = self.table.ports()
        return p


class NegotiationTests(SynchronousTestCase):
    def test_interface(self) -> None:
        verifyObject(IVMPortTable, Harness().table)

    def test_capture_sequence(self) -> None:
        """Spec 1.4 rows 1-16 fed in order; each reply as the real proxies give it."""
        h = Harness()
        conn, tr = h.connect()
        self.assertEqual(tr.value(), OFFERS)
        tr.clear()

        def step(wire: bytes) -> bytes:
            conn.dataReceived(wire)
            out = tr.value()
            tr.clear()
            return out

        N = T.encodeNegotiation
        self.assertEqual(step(N(T.WILL, T.AUTHENTICATION)), N(T.DONT, T.AUTHENTICATION))
        self.assertEqual(step(N(T.DO, T.BINARY)), b"")
        self.assertEqual(step(N(T.DO, T.SGA) + N(T.DO, T.ECHO) + N(T.WILL, T.BINARY)), b"")
        self.assertEqual(step(N(T.WILL, T.SGA)), b"")
        self.assertEqual(
            step(N(T.WILL, T.VMWARE_EXT)), X.command(X.KNOWN_SUBOPTIONS_2, X.IMPLEMENTED)
        )
        out = step(X.command(X.KNOWN_SUBOPTIONS_1, ESX_KNOWN) + X.command(X.DO_PROXY, b"SvSPC.py"))
        self.assertEqual(
            out,
            X.command(X.WILL_PROXY) + X.command(X.GET_VM_VC_UUID) + X.command(X.GET_VM_NAME),
        )
        self.assertEqual(step(X.command(X.VM_VC_UUID, PCAP_UUID)), b"")
        self.assertEqual(step(X.command(X.VM_NAME, b"vm-00000")), b"")
        self.assertEqual(step(N(T.WILL, T.COM_PORT)), N(T.DONT, T.COM_PORT))
        self.assertEqual(step(N(T.DO, T.AUTHENTICATION)), N(T.WONT, T.AUTHENTICATION))
        self.assertEqual(step(N(T.WILL, T.VMWARE_EXT)), b"")  # no loop on repeats
        self.assertEqual(conn.vmKnown, ESX_KNOWN)
        port = h.port()
        self.assertEqual(port.key, (UUID, ""))
        self.assertEqual(port.name, "vm-00000")
        self.assertIs(port.esx, conn)

    def test_known_suboptions_lists_only_what_we_implement(self) -> None:
        self.assertEqual(
            sorted(X.IMPLEMENTED),
            [0, 1, 2, 3, 40, 41, 43, 44, 45, 46, 48, 70, 71, 73, 80, 81, 82, 83],
        )

    def test_unknown_commands_get_unknown_suboption_rcvd_2(self) -> None:
        h = Harness()
        conn, tr = h.proxied()
        conn.dataReceived(X.command(X.VM_BIOS_UUID, b"x") + X.command(99) + X.command(X.WILL_PROXY))
        self.assertEqual(
            ext(events(tr)),
            [(X.UNKNOWN_SUBOPTION_RCVD_2, bytes([c])) for c in (84, 99, 71)],
        )
        self.assertFalse(tr.disconnecting)

    def test_wrong_service_uri_is_refused(self) -> None:
        h = Harness()
        conn, tr = h.connect()
        tr.clear()
        conn.dataReceived(X.command(X.DO_PROXY, b"Stcp://127.0.0.1:2379"))
        self.assertEqual(ext(events(tr)), [(X.WONT_PROXY, b"")])
        self.assertTrue(tr.disconnecting)
        self.assertEqual(h.table.ports(), [])

    def test_bad_direction_is_refused(self) -> None:
        h = Harness()
        conn, tr = h.connect()
        tr.clear()
        conn.dataReceived(X.command(X.DO_PROXY, b"XvSPC.py"))
        self.assertEqual(ext(events(tr)), [(X.WONT_PROXY, b"")])
        self.assertTrue(tr.disconnecting)

    def test_any_uri_and_port_label(self) -> None:
        h = Harness(serviceURI="*")
        _conn, _tr = h.proxied(uri=b"tcp://127.0.0.1:2379?port=console")
        self.assertEqual(h.port().key, (UUID, "console"))
        h.proxied(uri=b"vSPC.py?port=log")
        self.assertEqual(sorted(p.label for p in h.table.ports()), ["console", "log"])

    def test_client_direction_accepted(self) -> None:
        h = Harness()
        conn, _tr = h.connect()
        conn.dataReceived(X.command(X.DO_PROXY, b"CvSPC.py"))
        self.assertEqual(conn.role, "proxy")

    def test_bad_uuid_closes(self) -> None:
        h = Harness()
        conn, tr = h.connect()
        conn.dataReceived(X.command(X.DO_PROXY, b"SvSPC.py") + X.command(X.VM_VC_UUID, b"zz"))
        self.assertTrue(tr.disconnecting)
        self.assertEqual(h.table.ports(), [])

    def test_garbage_telnet_closes_only_that_connection(self) -> None:
        h = Harness()
        good, _gtr = h.proxied()
        other, otr = h.proxied(uuid=b"11" * 16, host="10.0.0.3")
        _, btr = h.backend(0)
        _, obtr = h.backend(1)
        other.dataReceived(b"before\xff\xf0after")
        self.assertTrue(otr.disconnected)
        self.assertEqual(obtr.value(), b"before")  # what preceded the garbage was relayed
        good.dataReceived(b"still fine")
        self.assertEqual(btr.value(), b"still fine")

    def test_setup_timeout(self) -> None:
        h = Harness(setupTimeout=5)
        _conn, tr = h.connect()
        h.clock.advance(5)
        self.assertTrue(tr.disconnecting)

    def test_setup_timeout_cancelled_once_attached(self) -> None:
        h = Harness(setupTimeout=5)
        _conn, tr = h.proxied()
        h.clock.advance(10)
        self.assertFalse(tr.disconnecting)

    def test_data_before_uuid_waits_then_flows(self) -> None:
        h = Harness()
        conn, _tr = h.connect()
        conn.dataReceived(b"early" + X.command(X.DO_PROXY, b"SvSPC.py") + b"\xff\xff")
        conn.dataReceived(X.command(X.VM_VC_UUID, PCAP_UUID) + b"late")
        _, btr = h.backend()
        self.assertEqual(btr.value(), b"early\xfflate")


class FuzzTests(SynchronousTestCase):
    """Whatever an ESX peer sends, nothing escapes dataReceived and other VMs keep going."""

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
    def test_random_bytes(self, chunks: list[bytes], proxied: bool) -> None:
        h = Harness(serviceURI="*")
        good, _gtr = h.proxied(uuid=b"22" * 16)
        _, gbtr = h.backend(0)
        conn, tr = h.proxied(host="10.0.0.7") if proxied else h.connect("10.0.0.7")
        for c in chunks:
            if tr.disconnecting or tr.disconnected:
                break
            conn.dataReceived(c)
        good.dataReceived(b"alive\xff\xff")
        self.assertTrue(gbtr.value().endswith(b"alive\xff"))

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=20)), max_size=8))
    def test_random_option_232_commands(self, cmds: list[tuple[int, bytes]]) -> None:
        h = Harness(serviceURI="*")
        conn, tr = h.proxied()
        for code, params in cmds:
            if tr.disconnecting or tr.disconnected:
                break
            conn.dataReceived(X.command(code, params))
        self.assertLessEqual(len(h.table.ports()), 1)


class RelayTests(SynchronousTestCase):
    def test_bytes_both_ways(self) -> None:
        h = Harness()
        conn, tr = h.proxied()
        bproto, btr = h.backend()
        every = bytes(range(256))
        conn.dataReceived(T.encodeData(every))
        self.assertEqual(btr.value(), every)
        bproto.dataReceived(every)
        self.assertEqual(tr.value(), T.encodeData(every))
        port = h.port()
        self.assertEqual((port.counters.bytesFromVM, port.counters.bytesToVM), (256, 256))

    def test_backend_down_bounded_buffer_then_pause(self) -> None:
        h = Harness(bufferLimit=1000)
        conn, tr = h.proxied()
        conn.dataReceived(b"a" * 600)
        self.assertEqual(tr.producerState, "producing")
        conn.dataReceived(b"b" * 600)
        self.assertEqual(tr.producerState, "paused")
        _, btr = h.backend()
        self.assertEqual(btr.value(), b"a" * 600 + b"b" * 600)
        self.assertEqual(tr.producerState, "producing")

    def test_backend_retried_with_backoff(self) -> None:
        h = Harness(backoffInitial=1.0, backoffMax=4.0)
        h.proxied()
        host, port, factory, _, _ = h.clock.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 2379))
        from twisted.internet.error import ConnectionRefusedError

        connector = h.clock.connectors[0]
        factory.clientConnectionFailed(connector, ConnectionRefusedError())  # type: ignore[arg-type]
        attempts = len(h.clock.tcpClients)
        h.clock.advance(10)
        self.assertGreater(len(h.clock.tcpClients), attempts)

    def test_backend_slow_pauses_esx_side(self) -> None:
        h = Harness()
        _conn, tr = h.proxied()
        _, btr = h.backend()
        btr.producer.pauseProducing()  # type: ignore[union-attr]
        self.assertEqual(tr.producerState, "paused")
        btr.producer.resumeProducing()  # type: ignore[union-attr]
        self.assertEqual(tr.producerState, "producing")

    def test_esx_slow_pauses_backend(self) -> None:
        h = Harness()
        _conn, tr = h.proxied()
        _, btr = h.backend()
        tr.producer.pauseProducing()  # type: ignore[union-attr]
        self.assertEqual(btr.producerState, "paused")
        tr.producer.resumeProducing()  # type: ignore[union-attr]
        self.assertEqual(btr.producerState, "producing")

    def test_vm_state_outlives_a_reconnect_then_expires(self) -> None:
        h = Harness(vmExpire=60)
        conn, _tr = h.proxied()
        bproto, btr = h.backend()
        conn.connectionLost(None)
        bproto.dataReceived(b"while away")
        h.clock.advance(30)
        conn2, tr2 = h.proxied(clear=False)
        data = [e for e in events(tr2) if isinstance(e, bytes)]
        self.assertEqual(data, [b"while away"])
        conn2.connectionLost(None)
        h.clock.advance(61)
        self.assertEqual(h.table.ports(), [])
        self.assertTrue(btr.disconnecting)


class VMotionTests(SynchronousTestCase):
    SEQ = b"\x76\x19\xff\xe9"  # from the capture: contains IAC

    def begin(self, h: Harness, conn: VSPCConnection, tr: StringTransport) -> bytes:
        conn.dataReceived(X.command(X.VMOTION_BEGIN, self.SEQ))
        raw = tr.value()
        self.assertIn(b"\x76\x19\xff\xff\xe9", raw)  # IAC doubled on the wire
        ((cmd, params),) = ext(events(tr))
        self.assertEqual(cmd, X.VMOTION_GOAHEAD)
        self.assertEqual(params[:4], self.SEQ)
        self.assertEqual(len(params), 4 + 8)
        return params

    def target(self, h: Harness, peer: bytes) -> tuple[VSPCConnection, StringTransport]:
        conn, tr = h.connect(host="10.0.0.9")
        conn.dataReceived(
            T.encodeNegotiation(T.WILL, T.VMWARE_EXT)
            + X.command(X.KNOWN_SUBOPTIONS_1, ESX_KNOWN)
            + X.command(X.VMOTION_PEER, peer)
        )
        return conn, tr

    def test_full_handoff(self) -> None:
        h = Harness()
        src, str_ = h.proxied()
        bproto, btr = h.backend()
        bproto.dataReceived(b"before ")
        self.assertEqual(str_.value(), b"before ")
        str_.clear()
        peer = self.begin(h, src, str_)
        bproto.dataReceived(b"held\xff")  # backend -> VM during the hand-off is held
        self.assertEqual(str_.value(), b"")
        # NOTNOW for another BEGIN while this one runs (capture's sequence)
        src.dataReceived(X.command(X.VMOTION_BEGIN, bytes.fromhex("cd526755")))
        self.assertEqual(ext(events(str_)), [(X.VMOTION_NOTNOW, bytes.fromhex("cd526755"))])
        # wrong secret: silence
        _bad, badtr = self.target(h, peer[:-1] + bytes([peer[-1] ^ 1]))
        self.assertEqual([c for c, _ in ext(events(badtr)) if c == X.VMOTION_PEER_OK], [])
        dst, dtr = self.target(h, peer)
        evs = ext(events(dtr))
        self.assertIn((X.VMOTION_PEER_OK, self.SEQ), evs)
        self.assertNotIn(X.WILL_PROXY, [c for c, _ in evs])
        dst.dataReceived(X.command(X.VM_VC_UUID, PCAP_UUID))
        src.dataReceived(b"last from source")
        src.connectionLost(None)  # source FIN before COMPLETE: not "VM gone"
        self.assertEqual(len(h.table.ports()), 1)
        self.assertEqual(dtr.value(), b"")
        dst.dataReceived(X.command(X.VMOTION_COMPLETE, self.SEQ))
        self.assertEqual(T.TelnetParser().feed(dtr.value()), [b"held\xff"])
        dtr.clear()
        bproto.dataReceived(b"after")
        self.assertEqual(dtr.value(), b"after")
        dst.dataReceived(b" from target")
        self.assertEqual(btr.value(), b"last from source from target")
        port = h.port()
        self.assertIs(port.esx, dst)
        self.assertEqual(port.counters.handoffs, 1)
        self.assertEqual(port.counters.notnow, 1)
        self.assertEqual(h.table.pending, {})

    def test_complete_before_source_closes(self) -> None:
        h = Harness(sourceGrace=5)
        src, str_ = h.proxied()
        bproto, btr = h.backend()
        peer = self.begin(h, src, str_)
        dst, _dtr = self.target(h, peer)
        dst.dataReceived(X.command(X.VMOTION_COMPLETE, self.SEQ))
        src.dataReceived(b"straggler")  # still read after COMPLETE: nothing lost
        self.assertEqual(btr.value(), b"straggler")
        bproto.dataReceived(b"x")
        self.assertEqual(str_.value(), b"")  # never written to again
        h.clock.advance(5)
        self.assertTrue(str_.disconnecting)

    def test_abort_keeps_source(self) -> None:
        h = Harness()
        src, str_ = h.proxied()
        bproto, _btr = h.backend()
        peer = self.begin(h, src, str_)
        bproto.dataReceived(b"held")
        _dst, dtr = self.target(h, peer)
        src.dataReceived(X.command(X.VMOTION_ABORT))
        self.assertEqual(str_.value(), b"held")
        self.assertTrue(dtr.disconnecting)
        self.assertEqual(h.table.pending, {})
        self.assertEqual(h.port().counters.aborted, 1)
        str_.clear()
        bproto.dataReceived(b"more")
        self.assertEqual(str_.value(), b"more")

    def test_abandoned_handoff_expires(self) -> None:
        h = Harness(handoffTimeout=30)
        src, str_ = h.proxied()
        bproto, _ = h.backend()
        self.begin(h, src, str_)
        bproto.dataReceived(b"held")
        h.clock.advance(30)
        self.assertEqual(str_.value(), b"held")
        self.assertEqual(h.port().counters.expired, 1)
        self.assertEqual(h.table.pending, {})

    def test_held_buffer_is_bounded(self) -> None:
        h = Harness(bufferLimit=100)
        src, str_ = h.proxied()
        bproto, btr = h.backend()
        self.begin(h, src, str_)
        bproto.dataReceived(b"x" * 150)
        self.assertEqual(btr.producerState, "paused")

    def test_begin_on_unattached_connection_gets_notnow(self) -> None:
        h = Harness()
        conn, tr = h.connect()
        tr.clear()
        conn.dataReceived(X.command(X.VMOTION_BEGIN, b"1234"))
        self.assertEqual(ext(events(tr)), [(X.VMOTION_NOTNOW, b"1234")])


class APITests(SynchronousTestCase):
    def test_vms_json(self) -> None:
        import json

        from treq.testing import StubTreq

        from vrtwist.vic.api import VSPCApi

        h = Harness()
        conn, _tr = h.proxied(uri=b"vSPC.py")
        bproto, _btr = h.backend()
        conn.dataReceived(b"12345")
        bproto.dataReceived(b"abc")
        stub: Any = StubTreq(VSPCApi(h.table).resource())
        resp = self.successResultOf(stub.get("http://vspc/vms"))
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.headers.getRawHeaders(b"content-type"), [b"application/json"])
        body = json.loads(self.successResultOf(resp.content()))
        self.assertEqual(body["count"], 1)
        (vm,) = body["vms"]
        self.assertEqual(vm["uuid"], UUID)
        self.assertEqual(vm["name"], "vm-00000")
        self.assertEqual(vm["esx"], "10.0.0.2:40000")
        self.assertEqual(vm["backend"]["state"], "connected")
        self.assertEqual((vm["bytes_from_vm"], vm["bytes_to_vm"]), (5, 3))
        self.assertEqual(vm["handoffs"], 0)
        resp = self.successResultOf(stub.get(f"http://vspc/vms/{UUID.upper()}"))
        self.assertEqual(resp.code, 200)
        resp = self.successResultOf(stub.get("http://vspc/vms/nope"))
        self.assertEqual(resp.code, 404)
        self.assertIn(b"no VM", self.successResultOf(resp.content()))


class TapTests(SynchronousTestCase):
    def test_options(self) -> None:
        from twisted.python import usage

        from vrtwist.vic import vspc_tap

        o = vspc_tap.Options()
        o.parseOptions(
            [
                "--backend",
                "unix:/run/vic/{uuid}-{label}.sock",
                "--service-uri",
                "*",
                "--api",
                "tcp:0",
            ]
        )
        svc = vspc_tap.makeService(o, MemoryReactorClock())
        self.assertEqual(len(list(svc)), 3)
        self.assertRaises(
            usage.UsageError, vspc_tap.Options().parseOptions, ["--backend", "unix:/{vm}.sock"]
        )
        self.assertRaises(usage.UsageError, vspc_tap.Options().parseOptions, ["--buffer", "-1"])
        self.assertRaises(
            usage.UsageError, vspc_tap.Options().parseOptions, ["--control-lookahead", "-1"]
        )
        o = vspc_tap.Options()
        o.parseOptions(["--control-lookahead", "0"])
        self.assertEqual(o["control-lookahead"], 0)
        self.assertRaises(
            usage.UsageError, vspc_tap.Options().parseOptions, ["--vm-expire", "soon"]
        )

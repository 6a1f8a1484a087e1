"""ADDR forms of --data-listen/--data-connect, and the two twistd option sets."""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.application.internet import ClientService, StreamServerEndpointService
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, UNIXClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.vpnkit import forwarder_tap, host_tap
from vrtwist.vpnkit.addr import AddressError, parse_connect_addr, parse_listen_addr
from vrtwist.vsock.endpoints import VMADDR_CID_ANY, VSockClientEndpoint, VSockServerEndpoint


class AddrTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def test_integer_is_vsock_port(self) -> None:
        ep = parse_listen_addr(self.reactor, "62372")
        self.assertIsInstance(ep, VSockServerEndpoint)
        self.assertEqual((ep._cid, ep._port), (VMADDR_CID_ANY, 62372))
        cl = parse_connect_addr(self.reactor, "62373")
        self.assertIsInstance(cl, VSockClientEndpoint)
        self.assertEqual((cl._cid, cl._port), (2, 62373))  # the host, as Go dials

    def test_cid_slash_port_and_vsock_prefix(self) -> None:
        cl = parse_connect_addr(self.reactor, "3/1234")
        self.assertEqual((cl._cid, cl._port), (3, 1234))
        cl = parse_connect_addr(self.reactor, "vsock:3:62373")
        self.assertIsInstance(cl, VSockClientEndpoint)
        self.assertEqual((cl._cid, cl._port), (3, 62373))
        ep = parse_listen_addr(self.reactor, "vsock:4:99")
        self.assertEqual((ep._cid, ep._port), (4, 99))

    def test_endpoint_strings(self) -> None:
        self.assertIsInstance(
            parse_listen_addr(self.reactor, "tcp:0:interface=127.0.0.1"), TCP4ServerEndpoint
        )
        self.assertIsInstance(
            parse_connect_addr(self.reactor, "tcp:127.0.0.1:5"), TCP4ClientEndpoint
        )
        self.assertIsInstance(
            parse_connect_addr(self.reactor, "unix:/tmp/x.sock"), UNIXClientEndpoint
        )

    def test_plain_paths_are_unix(self) -> None:
        cl = parse_connect_addr(self.reactor, "/run/guest-services/vpnkit.sock")
        self.assertIsInstance(cl, UNIXClientEndpoint)
        self.assertEqual(cl._path, "/run/guest-services/vpnkit.sock")
        self.assertIsInstance(parse_connect_addr(self.reactor, "relative.sock"), UNIXClientEndpoint)

    def test_bad_addresses(self) -> None:
        for bad in ("", "vsock:1", "vsock:a:b", "99999999999"):
            self.assertRaises(AddressError, parse_connect_addr, self.reactor, bad)

    def test_stale_socket_removed_regular_file_kept(self) -> None:
        d = tempfile.mkdtemp()
        stale = os.path.join(d, "stale.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(stale)
        s.close()
        ep = parse_listen_addr(self.reactor, stale)
        ep.listen(object())
        self.assertFalse(os.path.exists(stale))
        self.assertEqual(self.reactor.unixServers[0][0], stale)
        regular = os.path.join(d, "file")
        open(regular, "w").close()
        f = self.failureResultOf(parse_listen_addr(self.reactor, regular).listen(object()))
        self.assertIn("not a socket", f.getErrorMessage())
        self.assertTrue(os.path.exists(regular))


class TapTests(SynchronousTestCase):
    def test_exactly_one_data_option(self) -> None:
        for mod in (forwarder_tap, host_tap):
            self.assertRaises(usage.UsageError, mod.Options().parseOptions, [])
            self.assertRaises(
                usage.UsageError,
                mod.Options().parseOptions,
                ["--data-listen", "/a", "--data-connect", "/b"],
            )

    def test_forwarder_listen(self) -> None:
        o = forwarder_tap.Options()
        o.parseOptions(
            [
                "--data-listen",
                "/tmp/vpnkit-data.sock",
                "--control-listen",
                "tcp:0:interface=127.0.0.1",
            ]
        )
        svc = forwarder_tap.makeService(o, MemoryReactorClock())
        self.assertIsInstance(svc.dataService, StreamServerEndpointService)
        self.assertIsNotNone(svc.apiService)
        self.assertFalse(svc.dataService.factory.backwards)  # listening side counts up

    def test_host_connect_with_exposes(self) -> None:
        o = host_tap.Options()
        o.parseOptions(
            [
                "--data-connect",
                "vsock:3:62373",
                "--expose",
                "tcp:127.0.0.1:8080:10.0.0.2:80",
                "--expose",
                "udp:0.0.0.0:53:10.0.0.2:53",
                "--window",
                "1048576",
                "--no-handshake",
            ]
        )
        svc = host_tap.makeService(o, MemoryReactorClock())
        self.assertIsInstance(svc.dataService, ClientService)
        self.assertEqual(
            [str(p) for p in o["expose"]],
            ["tcp:127.0.0.1:8080:10.0.0.2:80", "udp:0.0.0.0:53:10.0.0.2:53"],
        )
        self.assertEqual(o["window"], 1048576)
        self.assertTrue(o["no-handshake"])

    def test_bad_expose_and_window(self) -> None:
        self.assertRaises(
            usage.UsageError,
            host_tap.Options().parseOptions,
            ["--data-connect", "/a", "--expose", "tcp:x"],
        )
        self.assertRaises(
            usage.UsageError,
            host_tap.Options().parseOptions,
            ["--data-connect", "/a", "--window", "10"],
        )

    def test_bad_addr_is_usage_error(self) -> None:
        # the options refuse it, so twistd prints the usage and one line
        o = host_tap.Options()
        e = self.assertRaises(usage.UsageError, o.parseOptions, ["--data-connect", "vsock:x:y"])
        self.assertIn("--data-connect vsock:x:y", str(e))

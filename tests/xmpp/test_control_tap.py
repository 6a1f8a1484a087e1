"""``twistd vrouter-control``: options, service tree, and the real twistd process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

from twisted.application.service import IService
from twisted.internet import reactor, task
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.agent.procs import CONTROL_PORT_RE, logged_port
from tests.polling import wait_for
from vrtwist.xmpp import control_tap
from vrtwist.xmpp.agent_link import LocalRouteInfo, makeControllerLink
from vrtwist.xmpp.testing import RecordingSink, sink_of

from .test_loopback import until


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        o = control_tap.Options()
        o.parseOptions([])
        self.assertEqual(o["xmpp"], "tcp:5269")
        self.assertEqual(o["hold-time"], 90.0)
        self.assertEqual(o["hostname"], socket.gethostname())

    def test_hold_time_range(self) -> None:
        with self.assertRaises(usage.UsageError):
            control_tap.Options().parseOptions(["--hold-time", "0.5"])
        with self.assertRaises(usage.UsageError):
            control_tap.Options().parseOptions(["--hold-time", "91"])

    def test_tls_options_go_together(self) -> None:
        with self.assertRaises(usage.UsageError) as cm:
            control_tap.Options().parseOptions(["--xmpp-cert", "/x.pem"])
        self.assertIn("go together", str(cm.exception))

    def test_make_service(self) -> None:
        o = control_tap.Options()
        o.parseOptions(["--xmpp", "tcp:0:interface=127.0.0.1", "--gr-time", "5"])
        svc = control_tap.makeService(o, MemoryReactorClock())
        verifyObject(IService, svc)
        self.assertEqual(svc.getServiceNamed("xmpp").name, "xmpp")
        self.assertEqual(svc.node.gr_time, 5.0)  # type: ignore[attr-defined]

    def test_plugin_is_found(self) -> None:
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        names = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("vrouter-control", names)
        self.assertEqual(names["vrouter-control"].module, "vrtwist.xmpp.control_tap")  # type: ignore[attr-defined]


class TwistdProcessTests(TestCase):
    timeout = 30

    async def test_twistd_vrouter_control_reflects_routes(self) -> None:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            self.skipTest("twistd console script not installed next to the interpreter")
        run = tempfile.mkdtemp(prefix="vrtwist-cn-")
        log = open(os.path.join(run, "cn.log"), "wb")
        proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "vrouter-control", "--xmpp",
             "tcp:0:interface=127.0.0.1", "--hostname", "cn-proc", "--gr-time", "0",
             "--introspect", "none"],
            cwd=run, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(log.close)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.terminate)
        p = await wait_for(lambda: logged_port(log.name, CONTROL_PORT_RE), 20,
                           what="the control node to listen")
        links = []
        for i in (1, 2):
            link = makeControllerLink(reactor, [f"tcp:127.0.0.1:{p}"], f"h{i}", f"127.0.0.{i + 1}",
                                      RecordingSink(), retry_policy=lambda n: 0.2)
            link.localRouteAdded(LocalRouteInfo(f"p{i}", f"vm{i}", "vn", "blue",
                                                f"02:00:00:00:00:0{i}", f"10.0.0.{i}", None,
                                                16 + i, f"127.0.0.{i + 1}"))
            link.startService()
            self.addCleanup(link.stopService)
            links.append(link)
        await until(lambda: all(len(sink_of(lk).table) == 1 for lk in links),
                    "both agents to learn each other's route through twistd", timeout=20)
        # the stream's from is the real control node's JID, not the host name ("cn-proc")
        self.assertEqual(links[0].session.peer_name,  # type: ignore[union-attr]
                         "network-control@contrailsystems.com")
        self.assertEqual(sink_of(links[0]).table[("blue", "10.0.0.2", 32)][:2], ("127.0.0.3", 18))
        await task.deferLater(reactor, 0, lambda: None)


class TwistdTlsTests(TestCase):
    timeout = 30

    async def test_twistd_vrouter_control_with_starttls(self) -> None:
        from .test_loopback import make_pki

        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            self.skipTest("twistd console script not installed next to the interpreter")
        run = tempfile.mkdtemp(prefix="vrtwist-cn-tls-")
        pki = make_pki(run)
        log = open(os.path.join(run, "cn.log"), "wb")
        proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "vrouter-control", "--xmpp",
             "tcp:0:interface=127.0.0.1", "--xmpp-cert", pki["cn-cert"], "--xmpp-key",
             pki["cn-key"], "--xmpp-ca", pki["ca"], "--introspect", "none"],
            cwd=run, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(log.close)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.terminate)
        p = await wait_for(lambda: logged_port(log.name, CONTROL_PORT_RE), 20,
                           what="the control node to listen")
        links = []
        for i in (1, 2):
            link = makeControllerLink(
                reactor, [f"tcp:127.0.0.1:{p}"], f"h{i}", f"127.0.0.{i + 1}", RecordingSink(),
                retry_policy=lambda n: 0.2, xmpp_cert=pki["agent-cert"],
                xmpp_key=pki["agent-key"], xmpp_ca=pki["ca"])
            link.localRouteAdded(LocalRouteInfo(f"p{i}", f"vm{i}", "vn", "blue", "",
                                                f"10.0.0.{i}", None, 16 + i, f"127.0.0.{i + 1}"))
            link.startService()
            self.addCleanup(link.stopService)
            links.append(link)
        await until(lambda: all(len(sink_of(lk).table) == 1 for lk in links),
                    "routes over STARTTLS through twistd", timeout=20)
        from twisted.internet.interfaces import ISSLTransport

        self.assertTrue(ISSLTransport.providedBy(links[0].session.transport))  # type: ignore[union-attr]
        with open(os.path.join(run, "cn.log"), "rb") as f:
            self.assertNotIn(b"unauthenticated", f.read())  # TLS on: no such warning


class UnauthenticatedWarningTests(SynchronousTestCase):
    """Without TLS the XMPP service says at start, once, that it is unauthenticated."""

    def _start(self, argv: list[str]) -> list[dict[str, object]]:
        from twisted.logger import globalLogPublisher

        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, events.append)  # type: ignore[arg-type]
        o = control_tap.Options()
        o.parseOptions(argv)
        svc = control_tap.makeService(o, MemoryReactorClock())
        svc.startService()
        self.addCleanup(svc.stopService)
        return [e for e in events if "unauthenticated" in str(e.get("log_format", ""))]

    def test_without_tls_one_warning(self) -> None:
        from twisted.logger import LogLevel, formatEvent

        warned = self._start(["--xmpp", "tcp:0:interface=127.0.0.1"])
        self.assertEqual(len(warned), 1)
        self.assertEqual(warned[0]["log_level"], LogLevel.warn)
        self.assertIn("tcp:0:interface=127.0.0.1", formatEvent(warned[0]))

    def test_with_tls_no_warning(self) -> None:
        from .test_loopback import make_pki

        run = tempfile.mkdtemp(prefix="ac-cn-")
        pki = make_pki(run)
        warned = self._start(["--xmpp", "tcp:0", "--xmpp-cert", pki["cn-cert"],
                              "--xmpp-key", pki["cn-key"], "--xmpp-ca", pki["ca"]])
        self.assertEqual(warned, [])

    def test_unix_xmpp_socket_owner_only(self) -> None:
        """An ``--xmpp unix:`` listener gets the restrictive mode too."""
        r = MemoryReactorClock()
        o = control_tap.Options()
        o.parseOptions(["--xmpp", "unix:/x/cn.sock"])
        svc = control_tap.makeService(o, r)
        svc.startService()
        self.addCleanup(svc.stopService)
        self.assertEqual(r.unixServers[0][3], 0o600)

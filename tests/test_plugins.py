"""The twistd plugins are discoverable and each builds a service from its options."""

from __future__ import annotations

import gc
import importlib
import shutil
import tempfile

from twisted.application.service import IService, IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase

import twisted.plugins

EXPECTED = {
    "vrouter": "vrtwist.agent.tap",
    "vrouter-dp": "vrtwist.datapath.tap",
    "vrouter-control": "vrtwist.xmpp.control_tap",
    "vpnkit-forwarder": "vrtwist.vpnkit.forwarder_tap",
    "vpnkit-host": "vrtwist.vpnkit.host_tap",
    "vspc": "vrtwist.vic.vspc_tap",
    "vsock-relay": "vrtwist.vsock.relay_tap",
}


class PluginDiscoveryTests(SynchronousTestCase):
    """``twistd --help`` lists exactly what ``getPlugins`` finds, so test that."""

    def test_every_plugin_is_found(self) -> None:
        makers = {p.tapname: p for p in getPlugins(IServiceMaker, twisted.plugins)}
        for name, module in EXPECTED.items():
            self.assertIn(name, makers)
            self.assertEqual(makers[name].module, module)  # type: ignore[attr-defined]

    def test_every_tap_module_has_options_and_makeService(self) -> None:
        for module in EXPECTED.values():
            mod = importlib.import_module(module)
            self.assertTrue(callable(mod.makeService), module)
            mod.Options()  # constructing the options must not fail

    def test_vsock_endpoint_parsers_are_plugins(self) -> None:
        prefixes = [getattr(p, "prefix", None) for p in getPlugins(IPlugin, twisted.plugins)]
        self.assertGreaterEqual(prefixes.count("vsock"), 2)


class ServiceConstructionTests(SynchronousTestCase):
    """``makeService`` returns an IService without starting anything."""

    def mktemp(self) -> str:
        """A path in a private temporary directory (trial's mktemp writes below the cwd)."""
        root = tempfile.mkdtemp(prefix="vrtwist-plugins-")
        self.addCleanup(shutil.rmtree, root, True)
        return root + "/x"

    def _make(self, module: str, argv: list[str]) -> IService:
        mod = importlib.import_module(module)
        opts = mod.Options()
        opts.parseOptions(argv)
        thresholds = gc.get_threshold()
        svc = mod.makeService(opts)
        self.assertTrue(IService.providedBy(svc))
        # process-wide tuning waits for the daemon to start the service
        self.assertEqual(gc.get_threshold(), thresholds)
        return svc

    def test_vrouter_dp(self) -> None:
        self._make("vrtwist.datapath.tap", ["--run-dir", self.mktemp()])

    def test_vrouter(self) -> None:
        self._make("vrtwist.agent.tap", ["--run-dir", self.mktemp(), "--state-dir", self.mktemp()])

    def test_vrouter_control(self) -> None:
        self._make("vrtwist.xmpp.control_tap", ["--xmpp", "tcp:0:interface=127.0.0.1"])

    def test_vpnkit_forwarder(self) -> None:
        self._make("vrtwist.vpnkit.forwarder_tap", ["--data-listen", "unix:" + self.mktemp()])

    def test_vpnkit_host(self) -> None:
        self._make("vrtwist.vpnkit.host_tap", ["--data-connect", "unix:" + self.mktemp()])

    def test_vspc(self) -> None:
        self._make(
            "vrtwist.vic.vspc_tap",
            ["--listen", "tcp:0:interface=127.0.0.1", "--backend", "tcp:127.0.0.1:1"],
        )

    def test_vsock_relay(self) -> None:
        self._make(
            "vrtwist.vsock.relay_tap",
            ["--listen", "unix:" + self.mktemp(), "--backend", "tcp:127.0.0.1:1"],
        )


class DaemonServiceTests(SynchronousTestCase):
    """Tuning happens on start and the collector thresholds come back on stop."""

    def test_applied_on_start_restored_on_stop(self) -> None:
        from vrtwist._process import DaemonService

        saved = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *saved)
        calls: list[str] = []
        svc = DaemonService(lambda: calls.append("tuned"), lambda: gc.set_threshold(12345, 6, 7))
        self.assertEqual(calls, [])
        svc.startService()
        self.assertEqual((calls, gc.get_threshold()), (["tuned"], (12345, 6, 7)))
        svc.stopService()
        self.assertEqual(gc.get_threshold(), saved)


class _SignalReactor:
    """Just what the stop-signal handlers touch of a reactor."""

    def __init__(self) -> None:
        self.queued: list[tuple[object, tuple[object, ...]]] = []
        self.stops = 0
        self._exitSignal: int | None = None

    def sigTerm(self, number: int, frame: object = None) -> None:
        raise AssertionError("Twisted's handler must have been replaced")

    sigInt = sigTerm

    def callFromThread(self, f: object, *args: object) -> None:
        self.queued.append((f, args))

    def stop(self) -> None:
        from twisted.internet.error import ReactorNotRunning

        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning()


class QuietStopSignalsTests(SynchronousTestCase):
    """SIGTERM/SIGINT stop a twistd daemon without logging inside the signal handler."""

    def setUp(self) -> None:
        import signal

        for signum in (signal.SIGTERM, signal.SIGINT):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))

    def test_reactor_handlers_replaced_and_stop_queued(self) -> None:
        import os
        import signal

        from vrtwist._process import quiet_stop_signals

        r = _SignalReactor()
        signal.signal(signal.SIGTERM, r.sigTerm)
        signal.signal(signal.SIGINT, r.sigInt)
        self.assertTrue(quiet_stop_signals(r))
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before kill() returns here
        self.assertEqual(r._exitSignal, signal.SIGTERM)
        self.assertEqual(len(r.queued), 1)  # only queued: nothing logged or stopped yet
        self.assertEqual(r.stops, 0)
        os.kill(os.getpid(), signal.SIGINT)
        self.assertEqual(r._exitSignal, signal.SIGINT)
        for f, args in r.queued:  # as the reactor runs them, a second stop included
            f(*args)  # type: ignore[operator]
        self.assertEqual(r.stops, 2)

    def test_other_handlers_left_alone(self) -> None:
        import signal

        from vrtwist._process import quiet_stop_signals

        def mine(n: int, frame: object) -> None:
            pass

        signal.signal(signal.SIGTERM, mine)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.assertFalse(quiet_stop_signals(_SignalReactor()))
        self.assertIs(signal.getsignal(signal.SIGTERM), mine)
        self.assertIs(signal.getsignal(signal.SIGINT), signal.default_int_handler)


class DaemonStopSignalTests(SynchronousTestCase):
    """Every twistd daemon of the vRouter stops on SIGTERM through our handler."""

    def _stops_quietly(self, plugin: str, args: list[str]) -> None:
        from tests.agent.procs import Twistd
        from tests.polling import wait_until

        d = tempfile.mkdtemp(prefix="vrtwist-sig-")
        self.addCleanup(shutil.rmtree, d, True)
        proc = Twistd(d, plugin, args, plugin)
        self.addCleanup(proc.kill)
        wait_until(lambda: "stop signals handled outside" in proc.text(), f"{plugin} to start", 60)
        proc.stop()
        self.assertEqual(proc.proc.returncode, -15)  # twistd re-raises the signal at exit
        self.assertIn("[vrtwist._process#info] Received SIGTERM, shutting down.", proc.text())

    def test_vrouter_dp(self) -> None:
        from tests.agent.procs import SMALL_TABLES

        self._stops_quietly("vrouter-dp", ["--run-dir", self.mktemp(), *SMALL_TABLES])

    def test_vrouter(self) -> None:
        from tests.agent.procs import SMALL_TABLES

        d = self.mktemp()
        self._stops_quietly(
            "vrouter",
            [
                "--run-dir",
                d + "/run",
                "--state-dir",
                d + "/state",
                "--rest",
                "tcp:0:interface=127.0.0.1",
                "--no-tap-check",
                *SMALL_TABLES,
            ],
        )

    def test_vrouter_control(self) -> None:
        self._stops_quietly("vrouter-control", ["--xmpp", "tcp:0:interface=127.0.0.1"])

    def mktemp(self) -> str:
        root = tempfile.mkdtemp(prefix="vrtwist-sig-")
        self.addCleanup(shutil.rmtree, root, True)
        return root

"""``twistd vrouter`` options and service tree."""

from __future__ import annotations

from twisted.application.service import IService
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.agent.helpers import tempdir
from vrtwist.agent import tap
from vrtwist.agent.service import AgentService
from vrtwist.xmpp.agent_link import linkKwargsFromOptions


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> tap.Options:
        o = tap.Options()
        o.parseOptions(list(argv))
        return o

    def test_defaults(self) -> None:
        o = self.parse()
        self.assertEqual((o["datapath"], o["rest"], o["state-dir"], o["controller"],
                          o["ksync"], o["no-tap-check"], o["stale-timeout"]),
                         ("embedded", "tcp:9091:interface=127.0.0.1", "/var/lib/contrail", [],
                          "socket", 0, 60.0))
        self.assertIn("run-dir", o)
        self.assertIn("flow-entries", o)

    def test_controllers_repeat(self) -> None:
        o = self.parse("--controller", "tcp:10.0.0.1:5269", "--controller", "10.0.0.2")
        self.assertEqual(o["controller"], ["tcp:10.0.0.1:5269", "10.0.0.2"])

    def test_controller_link_options(self) -> None:
        o = self.parse("--controller", "10.0.0.1", "--xmpp-hold-time", "9",
                       "--xmpp-stale-time", "5")
        self.assertEqual(linkKwargsFromOptions(o), {"hold_time": 9.0, "stale_time": 5.0})
        d = tempdir(self)
        top = tap.makeService(self.parse("--run-dir", d, "--state-dir", d, "--datapath",
                                         "external", "--controller", "tcp:127.0.0.1:1",
                                         "--xmpp-hold-time", "9"))
        agent = top.getServiceNamed("agent")
        self.assertEqual(agent.link_kwargs["hold_time"], 9.0)

    def test_bad_values(self) -> None:
        for argv in (["--datapath", "kernel"], ["--ksync", "pipe"],
                     ["--datapath", "external", "--ksync", "inprocess"],
                     ["--stale-timeout", "-1"], ["--stale-timeout", "x"]):
            self.assertRaises(usage.UsageError, self.parse, *argv)

    def test_service_tree(self) -> None:
        d = tempdir(self)
        top = tap.makeService(self.parse("--run-dir", d, "--state-dir", d,
                                         "--flow-entries", "64", "--bridge-entries", "64"))
        self.assertTrue(IService.providedBy(top))
        agent = top.getServiceNamed("agent")
        self.assertIsInstance(agent, AgentService)
        self.assertEqual(len(list(top)), 2)  # the embedded datapath, then the agent
        # a second agent may not share the run directory (the first holds its lock)
        external = tap.makeService(self.parse("--run-dir", tempdir(self), "--datapath",
                                              "external"))
        self.assertEqual(len(list(external)), 1)

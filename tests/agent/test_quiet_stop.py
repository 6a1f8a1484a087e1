"""A clean stop is quiet: nothing at warning level when the agent itself shuts down.

Before, the agent's ksync follower warned "ksync session to the datapath lost;
reconnecting" while the agent (and its embedded datapath) stopped, and the control node
warned about the XMPP session of an agent that had closed its stream properly.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.agent.test_service import start_agent
from tests.polling import wait_for


def _loud(events: Any) -> list[str]:
    """Warnings and worse logged by vrtwist."""
    return [f"{e.get('log_namespace')}: {e.get('log_format')}" for e in events
            if e.get("log_level") is not None and e["log_level"] >= LogLevel.warn
            and str(e.get("log_namespace", "")).startswith("vrtwist")]


class QuietStopTests(TestCase):
    timeout = 60

    async def test_embedded_agent_stops_without_warnings(self) -> None:
        top, agent = await start_agent(self, "--ksync", "socket")
        await agent.sync.when_idle()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await top.stopService()
        self.assertEqual(_loud(events), [])
        self.assertNotIn("ksync session to the datapath lost; reconnecting",
                         [e.get("log_format") for e in events])

    async def test_datapath_lost_while_running_is_still_a_warning(self) -> None:
        """The quiet stop must not hide a real loss: the datapath going away alone."""
        top, agent = await start_agent(self, "--ksync", "socket")
        await agent.sync.when_idle()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        dp = top.getServiceNamed("vrouter-dp").getServiceNamed("ksync")
        factory = getattr(dp.factory, "wrappedFactory", dp.factory)  # inside its guard
        self.assertTrue(factory.sessions)
        for proto in list(factory.sessions):
            proto.transport.loseConnection()
        await wait_for(lambda: "ksync session to the datapath lost; reconnecting" in
                       [e.get("log_format") for e in events])
        self.assertIn("ksync session to the datapath lost; reconnecting",
                      [e.get("log_format") for e in events])
        await top.stopService()

    async def test_control_node_logs_a_clean_close_as_clean(self) -> None:
        from vrtwist.xmpp.control import ControlNode, ControlNodeFactory

        node = ControlNode(reactor, "cn", gr_time=0)
        listening = reactor.listenTCP(0, ControlNodeFactory(node), interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(listening.stopListening)
        self.addCleanup(node.stop)
        top, agent = await start_agent(
            self, "--hostname", "compute-q",
            "--controller", f"tcp:127.0.0.1:{listening.getHost().port}")  # type: ignore[attr-defined]
        await agent.link.when_ready()
        await wait_for(lambda: "compute-q" in node.sessions)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await top.stopService()
        await wait_for(lambda: "compute-q" not in node.sessions)
        self.assertNotIn("compute-q", node.sessions)
        self.assertEqual(_loud(events), [])
        clean = [e for e in events if e.get("log_format", "").startswith("agent {agent} "
                                                                          "disconnected")]
        self.assertEqual([(e["agent"], e["how"]) for e in clean], [("compute-q", " cleanly")])
        self.assertNotIn("non-clean", " ".join(str(e.get("reason", "")) for e in events))

"""The agent service started and stopped in process on the real reactor: nothing left
behind (no listening port, no connection, no timer)."""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests.agent.helpers import port_body, tempdir
from tests.polling import wait_for
from vrtwist._process import tune_gc
from vrtwist.agent import tap
from vrtwist.unixlisten import DEFAULT_BACKLOG


class ServiceLifecycleTests(TestCase):
    timeout = 60

    async def test_start_serve_stop(self) -> None:
        d = tempdir(self)
        opts = tap.Options()
        opts.parseOptions(["--run-dir", d, "--state-dir", d, "--rest",
                           "tcp:0:interface=127.0.0.1", "--no-tap-check",
                           "--flow-entries", "64", "--bridge-entries", "64"])
        top = tap.makeService(opts, reactor)
        top.privilegedStartService()
        top.startService()
        agent = top.getServiceNamed("agent")
        await agent.ready
        port = agent.rest_port.getHost().port
        # a burst of clients fits: the listen backlog is not Twisted's 50
        self.assertEqual(agent.rest_port.backlog, DEFAULT_BACKLOG)
        pool = HTTPConnectionPool(reactor, persistent=False)
        b = port_body(1)
        r = await treq.post(f"http://127.0.0.1:{port}/port", data=json.dumps(b).encode(),
                            pool=pool)
        self.assertEqual((r.code, await treq.json_content(r)), (200, {}))
        # the answer came once the datapath had the port
        datapath = top.getServiceNamed("vrouter-dp").datapath
        self.assertIn("tapv1", {v.name for v in datapath.tables.interfaces.values()})
        self.assertTrue(os.path.isfile(os.path.join(d, "ports", b["id"])))
        await top.stopService()



class ControllerOptionsTests(TestCase):
    """``twistd vrouter`` exposes the controller link's options and hands them through."""

    timeout = 60

    def test_bad_link_options_are_usage_errors(self) -> None:
        from twisted.python import usage

        d = tempdir(self)
        base = ["--run-dir", d, "--controller", "tcp:127.0.0.1:1"]
        for extra in (["--xmpp-hold-time", "0"], ["--xmpp-hold-time", "91"],
                      ["--xmpp-stale-time", "-1"], ["--xmpp-cert", "c.pem"],
                      ["--xmpp-cert", "c.pem", "--xmpp-key", "k.pem"]):
            self.assertRaises(usage.UsageError, tap.Options().parseOptions, base + extra)

    async def test_hold_stale_and_tls_reach_the_link(self) -> None:
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.interfaces import ISSLTransport

        from tests.xmpp.test_loopback import make_pki
        from vrtwist.xmpp.control import ControlNode, ControlNodeFactory
        from vrtwist.xmpp.tls import mutual_tls_options

        d = tempdir(self)
        pki = make_pki(d)
        node = ControlNode(reactor, "cn1", gr_time=0.0)
        lp = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            ControlNodeFactory(node, 90, mutual_tls_options(pki["cn-cert"], pki["cn-key"],
                                                            pki["ca"])))
        self.addCleanup(node.stop)
        self.addCleanup(lp.stopListening)
        opts = tap.Options()
        opts.parseOptions(["--run-dir", d, "--state-dir", d, "--rest",
                           "tcp:0:interface=127.0.0.1", "--no-tap-check",
                           "--flow-entries", "64", "--bridge-entries", "64",
                           "--hostname", "node-a", "--fabric-ip", "127.0.0.2",
                           "--controller", f"tcp:127.0.0.1:{lp.getHost().port}",
                           "--xmpp-hold-time", "30", "--xmpp-stale-time", "5",
                           "--xmpp-cert", pki["agent-cert"], "--xmpp-key", pki["agent-key"],
                           "--xmpp-ca", pki["ca"]])
        top = tap.makeService(opts, reactor)
        top.privilegedStartService()
        top.startService()
        agent = top.getServiceNamed("agent")
        await agent.ready
        link = agent.link
        self.assertEqual((link.hold_time, link.stale_time), (30.0, 5.0))
        self.assertIsNotNone(link.tls)
        await wait_for(lambda: "node-a" in node.sessions, what="the agent's XMPP session")
        session = node.sessions["node-a"]
        self.assertTrue(ISSLTransport.providedBy(session.transport))
        await top.stopService()
        for s in list(node.sessions.values()):
            s.transport.abortConnection()  # type: ignore[union-attr]


class GcTuningTests(TestCase):
    def test_thresholds_raised_never_lowered(self) -> None:
        import gc

        saved = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *saved)
        gc.set_threshold(700, 10, 10)
        tune_gc()
        self.assertEqual(gc.get_threshold(), tap.GC_THRESHOLDS)
        gc.set_threshold(50_000, 5, 5)
        tune_gc()
        self.assertEqual(gc.get_threshold(), (50_000, 5, 5))


class FabricIpWarningTests(TestCase):
    timeout = 60

    async def test_controller_without_fabric_ip_is_warned_about(self) -> None:
        from twisted.logger import capturedLogs, formatEvent

        d = tempdir(self)
        opts = tap.Options()
        opts.parseOptions(["--run-dir", d, "--state-dir", d, "--rest",
                           "tcp:0:interface=127.0.0.1", "--no-tap-check",
                           "--flow-entries", "64", "--bridge-entries", "64",
                           "--controller", "tcp:127.0.0.1:1"])
        top = tap.makeService(opts, reactor)
        with capturedLogs() as logs:
            top.privilegedStartService()
            top.startService()
            await top.getServiceNamed("agent").ready
        await top.stopService()
        text = "\n".join(formatEvent(e) for e in logs)
        self.assertIn("--controller without --fabric-ip", text)


async def start_agent(test: TestCase, *extra: str) -> tuple[Any, Any]:
    """A ``twistd vrouter`` service tree in this process (embedded datapath), started."""
    d = tempdir(test)
    opts = tap.Options()
    opts.parseOptions(["--run-dir", d, "--state-dir", d, "--rest",
                       "tcp:0:interface=127.0.0.1", "--no-tap-check",
                       "--flow-entries", "64", "--bridge-entries", "64",
                       "--fabric-ip", "127.0.0.2", *extra])
    top = tap.makeService(opts, reactor)
    top.privilegedStartService()
    top.startService()
    agent = top.getServiceNamed("agent")
    await agent.ready
    return top, agent


async def post_json(agent: Any, path: str, body: dict[str, Any]) -> None:
    port = agent.rest_port.getHost().port
    pool = HTTPConnectionPool(reactor, persistent=False)
    r = await treq.post(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                        pool=pool)
    assert r.code == 200, r.code
    await treq.content(r)


class IpamWiringTests(TestCase):
    """The controller link's IPAM config reaches the agent's datapath programming."""

    timeout = 60

    async def test_config_subnet_programs_the_port_subnet(self) -> None:
        from tests.xmpp.test_agent_link import ConfigStoreTests
        from vrtwist.xmpp.stanzas import parse_stanza

        top, agent = await start_agent(self, "--controller", "tcp:127.0.0.1:1")
        b = port_body(3, **{"ip-address": "10.1.1.3"})
        await post_json(agent, "/port", b)
        datapath = top.getServiceNamed("vrouter-dp").datapath
        vrf = agent.model.vrf_id_of(b["vn-id"])

        def subnet_route() -> object:
            return datapath.routes.get({"rtr_family": 2, "rtr_vrf_id": vrf,
                                        "rtr_prefix": bytes([10, 1, 1, 9])})["rtr_prefix_len"]
        self.assertEqual(subnet_route(), 0)
        config = ConfigStoreTests.CONFIG.replace(b"<uuid>vn-uuid</uuid>",
                                                 f"<uuid>{b['vn-id']}</uuid>".encode())
        agent.link.config.apply(parse_stanza(config))
        await wait_for(lambda: subnet_route() == 24)
        self.assertEqual(subnet_route(), 24)
        await top.stopService()

    async def test_config_vm_interface_gives_a_vm_port_its_address(self) -> None:
        from tests.agent.test_vmi_config import VM, VMI, vmi_config
        from vrtwist.xmpp.stanzas import build_config, parse_stanza

        top, agent = await start_agent(self, "--controller", "tcp:127.0.0.1:1")
        await post_json(agent, "/vm", VM)
        datapath = top.getServiceNamed("vrouter-dp").datapath
        vrf = agent.model.vrf_id_of(VM["vn-uuid"])

        def host_route() -> object:
            return datapath.routes.get({"rtr_family": 2, "rtr_vrf_id": vrf,
                                        "rtr_prefix": bytes([10, 3, 0, 7])})["rtr_prefix_len"]
        self.assertEqual(host_route(), 0)
        # through the wire format, as the control node sends it
        agent.link.config.apply(parse_stanza(build_config("host", vmi_config().updates)))
        await wait_for(lambda: host_route() == 32)
        self.assertEqual(host_route(), 32)
        ids = agent.model.port_ids(VMI)
        self.assertEqual(bytes(datapath.tables.nexthops[ids["l3_nh"]].encap[:6]),
                         bytes.fromhex("02aabbccdd01"))
        await top.stopService()


class ConfigOverTheWireTests(TestCase):
    """A control node pushes a VM interface's config over XMPP; the agent programs the
    ``POST /vm`` port with its address and MAC and publishes its route."""

    timeout = 60

    async def test_vm_interface_config_from_a_control_node(self) -> None:
        from tests.agent.test_vmi_config import VM, VMI, vmi_config
        from vrtwist.xmpp.control import ControlNode, ControlNodeFactory

        node = ControlNode(reactor, "cn", gr_time=0)
        listening = reactor.listenTCP(0, ControlNodeFactory(node), interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(listening.stopListening)
        self.addCleanup(node.stop)
        top, agent = await start_agent(
            self, "--hostname", "compute-7",
            "--controller", f"tcp:127.0.0.1:{listening.getHost().port}")  # type: ignore[attr-defined]
        await agent.link.when_ready()
        await post_json(agent, "/vm", VM)
        self.assertTrue(node.send_config("compute-7", vmi_config().updates))
        datapath = top.getServiceNamed("vrouter-dp").datapath
        vrf_name = agent.model.vrfNames()[0]

        def published() -> bool:
            inst = node.instances.get(vrf_name)
            return inst is not None and "10.3.0.7/32" in inst.routes.get((1, 1), {})
        await wait_for(published)
        self.assertTrue(published())
        vrf = agent.model.vrf_id_of(VM["vn-uuid"])
        got = datapath.routes.get({"rtr_family": 2, "rtr_vrf_id": vrf,
                                   "rtr_prefix": bytes([10, 3, 0, 7])})
        self.assertEqual(got["rtr_prefix_len"], 32)
        ids = agent.model.port_ids(VMI)
        self.assertEqual(bytes(datapath.tables.nexthops[ids["l3_nh"]].encap[:6]),
                         bytes.fromhex("02aabbccdd01"))
        await top.stopService()

"""vrouter-port-control in process against a real agent resource on a loopback port."""

from __future__ import annotations

import argparse
import io
import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

import vrtwist.cli.port_control as pc
from tests.agent.helpers import port_body, tempdir
from vrtwist.agent.testing import InMemoryAgent


def args_for(port: int, json_dir: str, body: dict[str, Any], *extra: str) -> argparse.Namespace:
    argv = ["--oper", "add", "--uuid", body["id"].replace("-", ""), "--instance_uuid",
            body["instance-id"], "--vn_uuid", body["vn-id"], "--ip_address",
            body["ip-address"], "--mac", body["mac-address"], "--tap_name",
            body["system-name"], "--vm_name", body["display-name"], "--agent_host",
            "127.0.0.1", "--agent_port", str(port), "--port_json_path", json_dir, *extra]
    return pc.parser().parse_args(pc._strip_quotes(argv))


class PortControlTests(TestCase):
    timeout = 60

    async def start_agent(self) -> InMemoryAgent:
        self.state = tempdir(self)
        agent = InMemoryAgent(self.state)
        lp = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(agent.api.app.resource()))
        self.addCleanup(lp.stopListening)
        self.port = lp.getHost().port
        return agent

    async def run_pc(self, ns: argparse.Namespace) -> tuple[int, str]:
        out = io.StringIO()
        code = await pc.PortControl(reactor, ns, out).run()
        return code, out.getvalue()

    async def test_add_enable_delete(self) -> None:
        agent = await self.start_agent()
        d = tempdir(self)
        b = port_body(1, type=2)
        code, out = await self.run_pc(args_for(self.port, d, b, "--port_type", "ESXiPort",
                                               "--rx_vlan_id=\"5\"", "--tx_vlan_id", "6"))
        self.assertEqual(code, 0, out)
        with open(os.path.join(d, b["id"])) as f:
            body = json.load(f)
        self.assertEqual((body["type"], body["rx-vlan-id"], body["tx-vlan-id"]), (2, 5, 6))
        self.assertEqual(body["ip6-address"], None)  # not given: null, as the real script
        port = agent.table.get(b["id"])
        self.assertEqual((port.rx_vlan_id, port.ip6_address), (5, None))  # type: ignore[union-attr]
        ns = args_for(self.port, d, b)
        ns.oper = "disable"
        self.assertEqual((await self.run_pc(ns))[0], 0)
        with open(os.path.join(d, b["id"])) as f:
            self.assertEqual(json.load(f)["link-state"], 0)
        self.assertEqual(agent.table.get(b["id"]).link_state, 0)  # type: ignore[union-attr]
        ns.oper = "delete"
        self.assertEqual((await self.run_pc(ns))[0], 0)
        self.assertFalse(os.path.exists(os.path.join(d, b["id"])))
        self.assertIsNone(agent.table.get(b["id"]))

    async def test_refusals(self) -> None:
        await self.start_agent()
        d = tempdir(self)
        code, out = await self.run_pc(args_for(self.port, d, port_body(2, **{
            "ip-address": "300.1.1.1"})))
        self.assertEqual(code, pc.EXIT_AGENT_REFUSED)
        self.assertIn("ip-address", out)
        ns = args_for(self.port, d, port_body(3))
        ns.oper = "enable"  # not an ESXi port, not even known: non-200 -> 1
        self.assertEqual((await self.run_pc(ns))[0], pc.EXIT_BAD_ARGUMENT)

    async def test_subnet_options(self) -> None:
        """--plen/--gateway/--dns_server reach the port (DHCP offers them); a gateway
        outside the subnet is refused by the agent and no port is added."""
        agent = await self.start_agent()
        d = tempdir(self)
        b = port_body(6, **{"ip-address": "10.7.0.5"})
        code, out = await self.run_pc(args_for(self.port, d, b, "--plen", "24", "--gateway",
                                               "10.7.0.1", "--dns_server", "10.7.0.2"))
        self.assertEqual(code, 0, out)
        port = agent.table.get(b["id"])
        self.assertEqual((port.plen, port.gateway, port.dns_server), (24, "10.7.0.1", "10.7.0.2"))  # type: ignore[union-attr]
        with open(os.path.join(d, b["id"])) as f:
            self.assertEqual(json.load(f)["plen"], 24)
        bad = port_body(7, **{"ip-address": "10.7.0.6"})
        code, out = await self.run_pc(args_for(self.port, d, bad, "--plen", "24",
                                               "--gateway", "10.9.0.1"))
        self.assertEqual(code, pc.EXIT_AGENT_REFUSED)
        self.assertIn("gateway", out)
        self.assertIsNone(agent.table.get(bad["id"]))
        self.assertIsNotNone(agent.table.get(b["id"]))

    async def test_ipv6_subnet_options(self) -> None:
        """--ipv6_plen/--ipv6_gateway/--ipv6_dns_server reach the port and its file."""
        agent = await self.start_agent()
        d = tempdir(self)
        b = port_body(8, **{"ip6-address": "fd00:7::5"})
        code, out = await self.run_pc(args_for(
            self.port, d, b, "--ipv6_address", "fd00:7::5", "--ipv6_plen", "64", "--ipv6_gateway", "fd00:7::1",
            "--ipv6_dns_server", "fd00:7::2"))
        self.assertEqual(code, 0, out)
        port = agent.table.get(b["id"])
        assert port is not None
        self.assertEqual((port.ip6_address, port.ip6_plen, port.ip6_gateway,
                          port.ip6_dns_server), ("fd00:7::5", 64, "fd00:7::1", "fd00:7::2"))
        with open(os.path.join(d, b["id"])) as f:
            saved = json.load(f)
        self.assertEqual((saved["v6-plen"], saved["v6-gateway"]), (64, "fd00:7::1"))
        bad = port_body(9, **{"ip6-address": "fd00:7::6"})
        code, out = await self.run_pc(args_for(self.port, d, bad, "--ipv6_address",
                                               "fd00:7::6", "--ipv6_plen", "64",
                                               "--ipv6_gateway", "fd00:8::1"))
        self.assertEqual(code, pc.EXIT_AGENT_REFUSED)
        self.assertIn("v6-gateway", out)
        self.assertIsNone(agent.table.get(bad["id"]))

    async def test_no_persist(self) -> None:
        agent = await self.start_agent()
        d = tempdir(self)
        b = port_body(4)
        code, _ = await self.run_pc(args_for(self.port, d, b, "--no_persist"))
        self.assertEqual(code, 0)
        self.assertFalse(os.path.exists(os.path.join(d, b["id"])))
        self.assertIsNotNone(agent.table.get(b["id"]))

    async def test_vhostuser_waits(self) -> None:
        self.patch(pc, "AGENT_WAIT", 0)
        self.patch(pc, "DPDK_WAIT", 0)
        self.patch(pc, "VHOSTUSER_WAIT", 0)
        d = tempdir(self)
        b = port_body(5)
        vhu = ["--vif_type", "VhostUser", "--vhostuser_socket", os.path.join(d, "vhu.sock")]
        # nothing listens: exit 2
        closed = args_for(1, d, b, *vhu)
        self.assertEqual((await self.run_pc(closed))[0], pc.EXIT_AGENT_PORT_CLOSED)
        await self.start_agent()
        ns = args_for(self.port, d, b, *vhu, "--dpdk_netlink", os.path.join(d, "nl"))
        self.assertEqual((await self.run_pc(ns))[0], pc.EXIT_NO_DPDK_SOCKET)
        open(os.path.join(d, "nl"), "w").close()
        # the port is added but qemu never creates the socket: exit 6
        self.assertEqual((await self.run_pc(ns))[0], pc.EXIT_NO_VHOSTUSER_SOCKET)
        open(os.path.join(d, "vhu.sock"), "w").close()
        self.assertEqual((await self.run_pc(ns))[0], pc.EXIT_OK)


class ArgumentTests(SynchronousTestCase):
    def test_quotes_are_stripped(self) -> None:
        self.assertEqual(pc._strip_quotes(['--ip_address="1.2.3.4"', "'x'", "--a=b"]),
                         ["--ip_address=1.2.3.4", "x", "--a=b"])

    def test_defaults(self) -> None:
        ns = pc.parser().parse_args(["--oper", "add", "--uuid", "u"])
        self.assertEqual((ns.port_type, ns.vif_type, ns.vhostuser_mode, ns.agent_port,
                          ns.port_json_path), ("NovaVMPort", "Vrouter", 0, 9091,
                                               "/var/lib/contrail/ports/"))

    def test_subnet_options_absent_keep_the_real_body(self) -> None:
        ns = pc.parser().parse_args(["--oper", "add", "--uuid", "u"])
        body = pc.port_body(ns, "u")
        self.assertFalse({"plen", "gateway", "dns-server", "v6-plen", "v6-gateway",
                          "v6-dns-server"} & set(body))

    def test_default_directory_is_the_agents(self) -> None:
        """The script's default --port_json_path is where ``twistd vrouter`` replays from."""
        from vrtwist.agent.service import DEFAULT_STATE_DIR
        from vrtwist.agent.tap import Options

        ns = pc.parser().parse_args(["--oper", "add", "--uuid", "u"])
        agent = Options()
        agent.parseOptions([])
        self.assertEqual(agent["state-dir"], DEFAULT_STATE_DIR)
        self.assertEqual(os.path.normpath(ns.port_json_path),
                         os.path.join(agent["state-dir"], "ports"))

    def test_bad_vlan(self) -> None:
        ns = pc.parser().parse_args(["--oper", "add", "--uuid", "u", "--rx_vlan_id", "x"])
        self.assertRaises(pc.UsageFailure, pc.port_body, ns, "u")

    def test_main_exit_codes(self) -> None:
        with self.assertRaises(SystemExit) as cm:
            pc.main(["--oper", "bogus", "--uuid", "x"])
        self.assertEqual(cm.exception.code, pc.EXIT_BAD_ARGUMENT)

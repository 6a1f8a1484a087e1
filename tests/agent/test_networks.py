"""Per-network settings: validation, the DNS methods in the DNS proxy and in DHCP/DHCPv6,
the REST ``/network`` resource with its file, the controller's config, and the VNI."""

from __future__ import annotations

import json
import os
from typing import Any, cast

import treq
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.names import client, dns, hosts, server
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from tests.agent.helpers import port_body, tempdir
from tests.agent.test_dhcp import reply_of as dhcp_reply
from tests.agent.test_dhcp import request as dhcp_request
from tests.agent.test_dhcp6 import IA_NA
from tests.agent.test_dhcp6 import reply_of as dhcp6_reply
from tests.agent.test_dhcp6 import request as dhcp6_request
from tests.agent.test_dns import VM_MAC, answer_of, query
from tests.polling import wait_for
from vrtwist.agent import tap
from vrtwist.agent.dpstate import VXLAN, vni_for, vrf_name_for
from vrtwist.agent.networks import (
    MAX_RECORDS,
    NetworkConfig,
    NetworkSettings,
    NetworkValidationError,
    VirtualDns,
    merge_settings,
    network_from_json,
    settings_from_config,
)
from vrtwist.agent.packet import dhcp6 as D6
from vrtwist.agent.packet.dhcp import DhcpServer, PortLease
from vrtwist.agent.packet.dns import DnsProxy, DnsRecord, DnsSettings, VmName
from vrtwist.packet import dhcp as D
from vrtwist.xmpp.stanzas import ConfigLink, ConfigNode, ConfigUpdate, build_config, parse_stanza

VN = "4e4e4e4e-1111-2222-3333-444444444444"
NAMES = [VmName("vm1", "10.1.1.11"), VmName("Vm2", "10.1.1.12", "fd00::12")]
VDNS = {"domain-name": "Corp.Example.", "next-dns-servers": ["192.0.2.53"], "default-ttl": 300,
        "records": [{"name": "db", "type": "A", "data": "10.1.1.20"},
                    {"name": "www.corp.example", "type": "CNAME", "data": "vm1.corp.example",
                     "ttl": 30},
                    {"name": "v6", "type": "AAAA", "data": "FD00::0020"},
                    {"name": "20.1.1.10.in-addr.arpa", "type": "PTR",
                     "data": "db.corp.example"}]}


class ValidationTests(SynchronousTestCase):
    def test_full_body_round_trips(self) -> None:
        body = {"ipam-dns-method": "virtual-dns-server", "virtual-dns": VDNS,
                "tenant-dns-servers": ["10.9.9.9", "fd00::53"], "vxlan-network-identifier": 4242}
        s = network_from_json(VN, body)
        assert s.virtual_dns is not None
        self.assertEqual((s.dns_method, s.vni, s.tenant_dns), ("virtual-dns-server", 4242,
                                                               ("10.9.9.9", "fd00::53")))
        self.assertEqual(s.virtual_dns.domain, "corp.example")
        self.assertEqual(s.virtual_dns.records, (
            DnsRecord("db.corp.example", "A", "10.1.1.20"),
            DnsRecord("www.corp.example", "CNAME", "vm1.corp.example", 30),
            DnsRecord("v6.corp.example", "AAAA", "fd00::20"),
            DnsRecord("20.1.1.10.in-addr.arpa", "PTR", "db.corp.example")))
        self.assertEqual(network_from_json(VN, s.to_json()), s)

    def test_every_bad_field_named(self) -> None:
        with self.assertRaises(NetworkValidationError) as e:
            network_from_json(VN, {
                "ipam-dns-method": "google", "tenant-dns-servers": ["10.0.0.1", "x"],
                "vxlan-network-identifier": 1 << 24, "colour": "red", "vn-id": "other",
                "virtual-dns": {"domain-name": "ok.example", "records": [
                    {"name": "a", "type": "A", "data": "fd00::1"},
                    {"name": "b..c", "type": "MX", "data": "x"}]}})
        text = str(e.exception)
        for needle in ("ipam-dns-method: 'google'", "tenant-dns-servers[1]: 'x'",
                       "vxlan-network-identifier: 16777216 is out of range",
                       "network: unknown member(s) colour", "vn-id: 'other'",
                       "virtual-dns.records[0].data: 'fd00::1' is not an IPv4",
                       "virtual-dns.records[1].type: 'MX'",
                       "virtual-dns.records[1].name: 'b..c'"):
            self.assertIn(needle, text)

    def test_method_needs_its_data_and_bounds(self) -> None:
        for body, needle in (
                ({"ipam-dns-method": "virtual-dns-server"}, "virtual-dns: required"),
                ({"ipam-dns-method": "tenant-dns-server"}, "tenant-dns-servers: required"),
                ({"tenant-dns-servers": ["10.0.0.1"] * 9}, "at most 8"),
                ({"virtual-dns": {"domain-name": "x.example",
                                  "records": [{"name": "a", "type": "A", "data": "10.0.0.1"}]
                                  * (MAX_RECORDS + 1)}}, f"at most {MAX_RECORDS}"),
                ({"vxlan-network-identifier": True}, "must be an integer"),
                ([], "expected a JSON object")):
            with self.assertRaises(NetworkValidationError) as e:
                network_from_json(VN, body)
            self.assertIn(needle, str(e.exception))

    def test_merge_rest_over_config(self) -> None:
        rest = NetworkSettings(VN, vni=7)
        config = NetworkSettings(VN, "tenant-dns-server", ("10.0.0.53",), None, 9)
        self.assertEqual(merge_settings(rest, config, VN),
                         NetworkSettings(VN, "tenant-dns-server", ("10.0.0.53",), None, 7))
        self.assertEqual(merge_settings(None, None, VN), NetworkSettings(VN))

    def test_config_values_as_text_and_bad_ones_dropped(self) -> None:
        s, problems = settings_from_config(VN, {
            "vni": "5000", "dns_method": "virtual-dns-server",
            "virtual_dns": {"domain": "c.example", "next": "192.0.2.1", "ttl": "60",
                            "records": [{"name": "db", "type": "A", "data": "10.0.0.9",
                                         "ttl": "5"}]}})
        self.assertEqual(problems, [])
        self.assertEqual(s.vni, 5000)
        self.assertEqual(s.virtual_dns, VirtualDns("c.example", ("192.0.2.1",), 60, (
            DnsRecord("db.c.example", "A", "10.0.0.9", 5),)))
        s, problems = settings_from_config(VN, {"vni": "lots", "dns_method": "none"})
        self.assertEqual((s.vni, s.dns_method), (None, "none"))
        self.assertEqual(len(problems), 1)

    def test_table_bounded_and_listeners(self) -> None:
        table = NetworkConfig()
        heard: list[int] = []
        table.listeners.append(lambda: heard.append(1))
        table.set(NetworkSettings(VN, vni=3))
        self.assertTrue(table.delete(VN))
        self.assertFalse(table.delete(VN))
        self.assertEqual(len(heard), 2)
        bads: list[Any] = [{"networks": [{"vn-id": VN, "ipam-dns-method": "bogus"}]},
                           {"networks": [{"vn-id": "../etc"}]}, {"networks": {}}, []]
        for bad in bads:
            with self.assertRaises(NetworkValidationError):
                table.load_json(bad)
        self.assertEqual(table.networks, {})  # nothing of a refused load
        table.load_json({"networks": [{"vn-id": VN.upper(), "vxlan-network-identifier": 9}]})
        self.assertEqual(table.networks, {VN: NetworkSettings(VN, vni=9)})


def vdns_settings(servers: tuple[tuple[str, int], ...] = ()) -> DnsSettings:
    vdns = network_from_json(VN, {"virtual-dns": VDNS}).virtual_dns
    assert vdns is not None
    return DnsSettings("virtual-dns-server", servers, vdns.domain, vdns.records, vdns.ttl)


class VirtualDnsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sent: list[bytes] = []
        self.proxy = DnsProxy(lambda vrf: NAMES, None, settings_of=lambda vrf: vdns_settings())

    def ask(self, name: str, qtype: int = dns.A) -> dns.Message:
        self.proxy.handle(1, query(name, qtype), VM_MAC, -1, self.sent.append)
        return answer_of(self.sent[-1])[3]

    def test_records_and_vm_names_under_the_domain(self) -> None:
        msg = self.ask("DB.corp.example")
        self.assertEqual((msg.rCode, msg.auth), (dns.OK, 1))
        self.assertEqual([(cast(Any, a.payload).dottedQuad(), a.ttl) for a in msg.answers],
                         [("10.1.1.20", 300)])
        msg = self.ask("vm2.corp.example", dns.AAAA)
        self.assertEqual([str(cast(Any, a.payload).address) for a in msg.answers], [
            str(dns.Record_AAAA("fd00::12").address)])
        msg = self.ask("www.corp.example")  # CNAME followed within the zone
        self.assertEqual([a.type for a in msg.answers], [dns.CNAME, dns.A])
        self.assertEqual(cast(Any, msg.answers[1].payload).dottedQuad(), "10.1.1.11")
        msg = self.ask("12.1.1.10.in-addr.arpa", dns.PTR)
        self.assertEqual(cast(Any, msg.answers[0].payload).name.name, b"vm2.corp.example")
        msg = self.ask("v6.corp.example", dns.A)  # the name exists, no A: empty NOERROR
        self.assertEqual((msg.rCode, msg.answers), (dns.OK, []))
        msg = self.ask("20.1.1.10.in-addr.arpa", dns.PTR)  # a reverse name stays absolute
        self.assertEqual(cast(Any, msg.answers[0].payload).name.name, b"db.corp.example")
        self.assertEqual(self.proxy.counters.local, 6)

    def test_tenant_method_without_servers_is_servfail(self) -> None:
        host = object()  # never asked: a query would fail on it
        self.proxy = DnsProxy(lambda vrf: NAMES, host,
                              settings_of=lambda vrf: DnsSettings("tenant-dns-server"))
        self.assertEqual(self.ask("www.example.org").rCode, dns.ESERVER)
        self.assertEqual((self.proxy.counters.forwarded, self.proxy.counters.servfail), (0, 1))

    def test_bare_vm_name_not_in_the_zone_and_no_upstream(self) -> None:
        # outside the zone and no resolver at all: SERVFAIL, nothing forwarded
        self.assertEqual(self.ask("vm1").rCode, dns.ESERVER)
        self.assertEqual(self.proxy.counters.forwarded, 0)


def _dns_server(case: TestCase, lines: str) -> int:
    path = case.mktemp()
    with open(path, "w") as f:
        f.write(lines)
    factory = server.DNSServerFactory(authorities=[hosts.Resolver(path)])
    udp = cast(Any, reactor).listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    case.addCleanup(udp.stopListening)
    return int(udp.getHost().port)


class ForwardingTests(TestCase):
    """Tenant servers and a virtual DNS's next servers are real DNS servers on
    loopback; ``resolver_for`` points the configured address at their port."""

    timeout = 20

    def setUp(self) -> None:
        self.host_port = _dns_server(self, "192.0.2.1 www.example.org\n")
        self.tenant_port = _dns_server(self, "192.0.2.2 www.example.org\n")
        self.asked: list[tuple[tuple[str, int], ...]] = []
        self.sent: list[bytes] = []
        self.arrived: Deferred[None] = Deferred()

    def resolver_for(self, servers: tuple[tuple[str, int], ...]) -> Any:
        self.asked.append(servers)
        return client.Resolver(servers=[("127.0.0.1", self.tenant_port)], reactor=reactor)

    def _send(self, frame: bytes) -> None:
        self.sent.append(frame)
        if not self.arrived.called:
            self.arrived.callback(None)

    async def _ask(self, proxy: DnsProxy, name: str) -> dns.Message:
        self.arrived = Deferred()
        proxy.handle(1, query(name), VM_MAC, -1, self._send)
        await self.arrived
        return answer_of(self.sent[-1])[3]

    def _proxy(self, settings: DnsSettings) -> DnsProxy:
        host = client.Resolver(servers=[("127.0.0.1", self.host_port)], reactor=reactor)
        return DnsProxy(lambda vrf: NAMES, host, settings_of=lambda vrf: settings,
                        resolver_for=self.resolver_for)

    @defer.inlineCallbacks
    def test_tenant_servers_answer_not_the_host(self) -> Any:
        proxy = self._proxy(DnsSettings("tenant-dns-server", (("10.9.9.9", 53),)))
        msg = yield Deferred.fromCoroutine(self._ask(proxy, "www.example.org"))
        self.assertEqual([cast(Any, a.payload).dottedQuad() for a in msg.answers],
                         ["192.0.2.2"])
        # the VM names are not the agent's to answer with a tenant server
        msg = yield Deferred.fromCoroutine(self._ask(proxy, "vm1"))
        self.assertEqual(msg.rCode, dns.ENAME)
        self.assertEqual(self.asked, [(("10.9.9.9", 53),)])  # one resolver, kept
        self.assertEqual(proxy.counters.local, 0)

    @defer.inlineCallbacks
    def test_virtual_dns_forwards_other_names(self) -> Any:
        proxy = self._proxy(vdns_settings((("192.0.2.53", 53),)))
        msg = yield Deferred.fromCoroutine(self._ask(proxy, "www.example.org"))
        self.assertEqual(cast(Any, msg.answers[0].payload).dottedQuad(), "192.0.2.2")
        # with no next server the host's resolvers take the rest
        proxy = self._proxy(vdns_settings())
        msg = yield Deferred.fromCoroutine(self._ask(proxy, "www.example.org"))
        self.assertEqual(cast(Any, msg.answers[0].payload).dottedQuad(), "192.0.2.1")


class DhcpFollowsTheMethodTests(SynchronousTestCase):
    def offer(self, lease: PortLease) -> tuple[list[int], D.DhcpMessage]:
        s = DhcpServer(lambda vif: lease, lambda: bytes(6))
        out = s.handle(3, dhcp_request(D.MSG["discover"], mac=lease.mac))
        assert out is not None
        _eth, _ip, msg, order = dhcp_reply(out)
        return order, msg

    def test_tenant_servers_and_virtual_domain(self) -> None:
        mac = bytes.fromhex("02aabbccdd01")
        base = PortLease(mac, "10.1.1.3", 24, "10.1.1.1", "10.1.1.2", "vm1", vif_index=3)
        order, msg = self.offer(base)
        self.assertEqual(msg.options[6], bytes([10, 1, 1, 2]))
        self.assertNotIn(15, order)
        tenant = PortLease(mac, "10.1.1.3", 24, "10.1.1.1", "10.1.1.2", "vm1", vif_index=3,
                           dns_servers=("10.9.9.9", "fd00::53", "10.9.9.10"))
        order, msg = self.offer(tenant)
        self.assertEqual(msg.options[6], bytes([10, 9, 9, 9, 10, 9, 9, 10]))
        # the service address stays the server identifier
        self.assertEqual(msg.options[54], bytes([10, 1, 1, 2]))
        order, msg = self.offer(PortLease(mac, "10.1.1.3", 24, "10.1.1.1", None, "vm1",
                                          vif_index=3, dns_servers=()))
        self.assertNotIn(6, order)  # an empty tenant list: no option 6
        order, msg = self.offer(PortLease(mac, "10.1.1.3", 24, "10.1.1.1", "10.1.1.2", "vm1",
                                          vif_index=3, domain="corp.example"))
        self.assertEqual(order[-2:], [6, 15])  # the real agent's order: DNS, domain, END
        self.assertEqual(msg.options[15], b"corp.example")

    def test_dhcpv6_service_address_tenant_and_domain(self) -> None:
        mac = bytes.fromhex("020000000001")
        port = D6.Port6(mac, "fd00::11", service6="fd00::2", domains=("corp.example",))
        s = D6.Dhcp6Server(lambda vif: port, lambda: bytes(6))
        out = s.handle(3, dhcp6_request(D6.SOLICIT, IA_NA))
        assert out is not None
        _eth, ip6, _udp, msg = dhcp6_reply(out)
        self.assertEqual(ip6.src, bytes.fromhex("fd000000000000000000000000000002"))
        self.assertEqual(msg.get(D6.OPT_DNS_SERVERS), ip6.src)
        self.assertEqual(msg.get(D6.OPT_DOMAIN_LIST), b"\x04corp\x07example\x00")
        port = D6.Port6(mac, "fd00::11", dns6_list=("10.0.0.1", "fd00::53"))
        s = D6.Dhcp6Server(lambda vif: port, lambda: bytes(6))
        out = s.handle(3, dhcp6_request(D6.SOLICIT, IA_NA))
        assert out is not None
        msg = dhcp6_reply(out)[3]
        self.assertEqual(msg.get(D6.OPT_DNS_SERVERS),
                         bytes.fromhex("fd000000000000000000000000000053"))


# -- the agent service: REST, file, controller config, VNI --------------------------------


async def start(case: TestCase, d: str, *extra: str) -> tuple[Any, Any]:
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


async def call(agent: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    port = agent.rest_port.getHost().port
    pool = HTTPConnectionPool(reactor, persistent=False)
    data = json.dumps(body).encode() if body is not None else None
    r = await treq.request(method, f"http://127.0.0.1:{port}{path}", data=data, pool=pool)
    text = await treq.content(r)
    return r.code, json.loads(text) if text else None


def vxlan_entries(top: Any) -> set[int]:
    """The VNIs in the embedded datapath's VXLAN table."""
    return set(top.getServiceNamed("vrouter-dp").datapath.tables.vxlan)


class AgentNetworkTests(TestCase):
    timeout = 60

    async def test_rest_network_drives_dhcp_dns_and_vni_and_persists(self) -> None:
        d = tempdir(self)
        top, agent = await start(self, d, "--encap", "vxlan,udp")
        body = port_body(5, vn=VN, **{"ip-address": "10.5.0.5", "plen": 24,
                                      "gateway": "10.5.0.1", "dns-server": "10.5.0.2"})
        self.assertEqual((await call(agent, "POST", "/port", body))[0], 200)
        derived = vni_for(vrf_name_for(VN))
        self.assertEqual(agent.model.port_ids(body["id"])["vni"], derived)
        self.assertIn((VXLAN, derived), agent.model.desired)
        # a bad body changes nothing
        code, err = await call(agent, "PUT", f"/network/{VN}", {"ipam-dns-method": "x"})
        self.assertEqual(code, 400)
        self.assertIn("ipam-dns-method", err["error"])
        self.assertFalse(os.path.exists(os.path.join(d, "networks.json")))
        net = {"ipam-dns-method": "tenant-dns-server", "tenant-dns-servers": ["10.9.9.9"],
               "vxlan-network-identifier": 4242}
        self.assertEqual(await call(agent, "PUT", f"/network/{VN.upper()}", net), (200, {}))
        self.assertEqual(await call(agent, "GET", f"/network/{VN}"),
                         (200, {"vn-id": VN, **net}))
        self.assertEqual((await call(agent, "GET", "/networks"))[1], [{"vn-id": VN, **net}])
        # the VNI moved: the VXLAN entry and the port's ids
        self.assertEqual(agent.model.port_ids(body["id"])["vni"], 4242)
        self.assertIn((VXLAN, 4242), agent.model.desired)
        self.assertNotIn((VXLAN, derived), agent.model.desired)
        await wait_for(lambda: vxlan_entries(top) == {4242})
        self.assertEqual(vxlan_entries(top), {4242})
        # DHCP hands out the tenant's server
        vif = agent.model.port_ids(body["id"])["vif"]
        lease = agent.packets.vm_port(vif).lease()
        self.assertEqual(lease.dns_servers, ("10.9.9.9",))
        saved = json.loads(open(os.path.join(d, "networks.json")).read())
        self.assertEqual(saved["networks"], [{"vn-id": VN, **net}])
        await top.stopService()
        # a restart reads the file back: the VNI is there from the first port on
        top, agent = await start(self, d, "--encap", "vxlan,udp")
        self.assertEqual(agent.network_settings(VN).vni, 4242)
        self.assertEqual((await call(agent, "POST", "/port", body))[0], 200)
        self.assertEqual(agent.model.port_ids(body["id"])["vni"], 4242)
        self.assertEqual(await call(agent, "DELETE", f"/network/{VN}"), (200, {}))
        self.assertEqual(agent.model.port_ids(body["id"])["vni"], derived)
        self.assertEqual((await call(agent, "DELETE", f"/network/{VN}"))[0], 404)
        self.assertEqual((await call(agent, "GET", f"/network/{VN}"))[0], 404)
        self.assertEqual((await call(agent, "GET", "/network/nope"))[0], 400)
        await top.stopService()

    async def test_controller_config_gives_vni_and_virtual_dns(self) -> None:
        d = tempdir(self)
        top, agent = await start(self, d, "--controller", "tcp:127.0.0.1:1",
                                 "--encap", "vxlan")
        body = port_body(6, vn=VN, **{"ip-address": "10.6.0.6", "plen": 24,
                                      "gateway": "10.6.0.1", "dns-server": "10.6.0.2"})
        self.assertEqual((await call(agent, "POST", "/port", body))[0], 200)
        vn, ipam, vdns = "default-domain:demo:vn6", "default-domain:demo:ipam", \
            "default-domain:vdns1"
        updates = ConfigUpdate((
            ConfigNode("virtual-network", vn, {
                "id-perms": {"uuid": VN},
                "virtual-network-properties": {"vxlan-network-identifier": "777"}}),
            ConfigNode("network-ipam", ipam, {
                "id-perms": {"uuid": "ipam"},
                "network-ipam-mgmt": {"ipam-dns-method": "virtual-dns-server",
                                      "ipam-dns-server": {"virtual-dns-server-name": vdns}}}),
            ConfigLink(("virtual-network", vn), ("network-ipam", ipam),
                       "virtual-network-network-ipam"),
            ConfigNode("virtual-DNS", vdns, {
                "id-perms": {"uuid": "vdns"},
                "virtual-DNS-data": {"domain-name": "lab.example",
                                     "default-ttl-seconds": "120"}}),
            ConfigNode("virtual-DNS-record", f"{vdns}:r1", {
                "id-perms": {"uuid": "r1"},
                "virtual-DNS-record-data": {"record-name": "db", "record-type": "A",
                                            "record-data": "10.6.0.20"}}),
            ConfigLink(("virtual-DNS", vdns), ("virtual-DNS-record", f"{vdns}:r1"),
                       "virtual-DNS-virtual-DNS-record"),
        ), ())
        # through the wire format, as the control node sends it
        agent.link.config.apply(parse_stanza(build_config("host", updates.updates)))
        await wait_for(lambda: agent.model.port_ids(body["id"])["vni"] == 777)
        self.assertIn((VXLAN, 777), agent.model.desired)
        vif = agent.model.port_ids(body["id"])["vif"]
        port = agent.packets.vm_port(vif)
        self.assertEqual((port.domain, port.dns_servers), ("lab.example", None))
        settings = agent.packets.dns.settings(port.vrf)
        self.assertEqual((settings.method, settings.ttl, settings.records), (
            "virtual-dns-server", 120, (DnsRecord("db.lab.example", "A", "10.6.0.20"),)))
        # REST wins over the controller, field by field
        self.assertEqual((await call(agent, "PUT", f"/network/{VN}",
                                     {"vxlan-network-identifier": 888}))[0], 200)
        self.assertEqual(agent.model.port_ids(body["id"])["vni"], 888)
        self.assertEqual(agent.packets.vm_port(vif).domain, "lab.example")
        await top.stopService()


def body6(n: int, **over: Any) -> dict[str, Any]:
    """A port body with IPv6 members (any of them may be bad on purpose)."""
    return port_body(n, **over)


class Ip6IpamTests(SynchronousTestCase):
    def test_port_fields_validated_persisted_and_shown(self) -> None:
        from vrtwist.agent.model import PortValidationError, port_from_json

        body = body6(1, **{"ip6-address": "FD00:1::11", "v6-plen": 64,
                               "v6-gateway": "fd00:1::1", "v6-dns-server": "fd00:1::2"})
        port = port_from_json(body)
        self.assertEqual((port.ip6_address, port.ip6_plen, port.ip6_gateway,
                          port.ip6_dns_server), ("fd00:1::11", 64, "fd00:1::1", "fd00:1::2"))
        f = port.to_file_json()
        self.assertEqual((f["v6-plen"], f["v6-gateway"], f["v6-dns-server"]),
                         (64, "fd00:1::1", "fd00:1::2"))
        self.assertEqual(port_from_json(f).same_config(port), True)
        oper = port.to_oper_json()
        self.assertEqual((oper["v6-plen"], oper["v6-gateway"], oper["v6-dns-server"]),
                         (64, "fd00:1::1", "fd00:1::2"))
        # the real script's files have none of them: /128 and ::
        plain = port_from_json(body6(2, **{"ip6-address": "fd00:1::12"})).to_oper_json()
        self.assertEqual((plain["v6-plen"], plain["v6-gateway"]), (128, "::"))
        with self.assertRaises(PortValidationError) as e:
            port_from_json(body6(3, **{"ip6-address": "fd00:1::13", "v6-plen": 129,
                                           "v6-gateway": "10.0.0.1", "v6-dns-server": 5}))
        text = str(e.exception)
        for needle in ("v6-plen: 129 is out of range", "v6-gateway: '10.0.0.1' is not an IPv6",
                       "v6-dns-server: must be a string"):
            self.assertIn(needle, text)
        with self.assertRaises(PortValidationError) as e:
            port_from_json(body6(4, **{"ip6-address": "fd00:1::13", "v6-plen": 64,
                                           "v6-gateway": "fd00:2::1"}))
        self.assertIn("outside the port's subnet fd00:1::/64", str(e.exception))
        with self.assertRaises(PortValidationError) as e:
            port_from_json(body6(5, **{"v6-plen": 64}))
        self.assertIn("need an ip6-address", str(e.exception))

    def test_gateway_and_dns_routes_for_neighbour_discovery(self) -> None:
        from vrtwist.agent.dpstate import DatapathModel
        from vrtwist.agent.model import port_from_json
        from vrtwist.datapath import constants as C

        model = DatapathModel(os_index=lambda name: 0)
        port = port_from_json(body6(1, **{"ip6-address": "fd00:1::11", "v6-plen": 64,
                                              "v6-gateway": "fd00:1::1",
                                              "v6-dns-server": "fd00:1::2"}))
        model.portAdded(port)
        routes = {fields["rtr_prefix"] and bytes(fields["rtr_prefix"]): fields
                  for name, fields in model.desired.values()
                  if name == "vr_route_req" and fields["rtr_family"] == C.AF_INET6}
        for addr in ("fd00:1::1", "fd00:1::2", "fe80::5e00:100"):
            import ipaddress

            got = routes[ipaddress.IPv6Address(addr).packed]
            self.assertEqual(got["rtr_prefix_len"], 128)
            self.assertTrue(got["rtr_label_flags"] & C.VR_RT_ARP_PROXY_FLAG)
        model.portDeleted(port)
        self.assertFalse([f for n, f in model.desired.values()
                          if n == "vr_route_req" and f["rtr_family"] == C.AF_INET6])


class RouterAdvertisementTests(SynchronousTestCase):
    RS = bytes((133, 0, 0, 0, 0, 0, 0, 0, 1, 1)) + bytes.fromhex("026800000002")

    def solicitation(self, src: str = "fe80::1", hop_limit: int = 255) -> bytes:
        import ipaddress

        from vrtwist.packet.headers import ETH_P_IPV6, Ethernet, IPv6, l4_checksum

        ip = IPv6(ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address("ff02::2").packed,
                  58, len(self.RS), hop_limit)
        csum = l4_checksum(ip, self.RS)
        body = self.RS[:2] + csum.to_bytes(2, "big") + self.RS[4:]
        return (Ethernet(bytes.fromhex("333300000002"), bytes.fromhex("026800000002"),
                         ETH_P_IPV6).pack() + ip.pack() + body)

    def test_advertisement_fields(self) -> None:
        import ipaddress
        import struct

        from vrtwist.agent.packet.arp import VRRP_MAC
        from vrtwist.agent.packet.icmp6 import RA_SOURCE, router_advertisement
        from vrtwist.packet.checksum import checksum
        from vrtwist.packet.headers import Ethernet, IPv6, PacketError

        out = router_advertisement(self.solicitation(), "fd00:1::11", 64, True)
        eth = Ethernet.parse(out)
        self.assertEqual((eth.dst, eth.src), (bytes.fromhex("026800000002"), VRRP_MAC))
        ip = IPv6.parse(out, eth.length)
        self.assertEqual((ip.src, ip.dst, ip.hop_limit, ip.next_header),
                         (RA_SOURCE.packed, ipaddress.IPv6Address("fe80::1").packed, 255, 58))
        body = out[eth.length + 40:]
        self.assertEqual(checksum(body, ip.pseudo_sum(len(body))), 0)
        kind, code, _c, hops, flags, lifetime, reach, retrans = struct.unpack_from(
            "!BBHBBHII", body)
        self.assertEqual((kind, code, hops, flags, lifetime, reach, retrans),
                         (134, 0, 64, 0xC0, 9000, 0, 0))
        self.assertEqual(body[16:24], b"\x01\x01" + VRRP_MAC)
        self.assertEqual(body[24:28], bytes((3, 4, 64, 0x80)))
        self.assertEqual(body[40:56], ipaddress.IPv6Address("fd00:1::").packed)
        # no gateway: not a default router; a DAD-time solicitation goes to all nodes
        out = router_advertisement(self.solicitation("::"), "fd00:1::11", 64, False)
        eth = Ethernet.parse(out)
        self.assertEqual(eth.dst, bytes.fromhex("333300000001"))
        self.assertEqual(struct.unpack_from("!H", out, eth.length + 40 + 6)[0], 0)
        with self.assertRaises(PacketError):
            router_advertisement(self.solicitation(hop_limit=64), "fd00:1::11", 64, True)

    def test_through_the_packet_services(self) -> None:
        from vrtwist.agent.packet.services import PacketServices, VmPort
        from vrtwist.pkt0 import constants as K
        from vrtwist.pkt0.codec import AgentHeader

        mac = bytes.fromhex("026800000002")
        ports = {3: VmPort(3, 1, mac, "10.0.0.3", ip6="fd00:1::11", ip6_plen=64,
                           ip6_gateway="fd00:1::1"),
                 4: VmPort(4, 1, mac, "10.0.0.4", ip6="fd00:1::12")}
        sent: list[tuple[int, int, bytes]] = []

        def send(ifindex: int, vrf: int, frame: bytes) -> bool:
            sent.append((ifindex, vrf, frame))
            return True
        services = PacketServices(ports.get, send, lambda: bytes(6))
        for vif in (3, 4):
            services.trap_received(AgentHeader(ifindex=vif, vrf=1,
                                               cmd=K.AGENT_TRAP_L3_PROTOCOLS),
                                   memoryview(self.solicitation()))
        self.assertEqual(services.counters.router_solicits, 2)
        self.assertEqual([(i, v) for i, v, _ in sent], [(3, 1)])  # no subnet: no answer


class ModelVniTests(SynchronousTestCase):
    def test_configured_vni_moves_and_republishes(self) -> None:
        from tests.agent.test_vmi_config import RecordingLink
        from vrtwist.agent.dpstate import DatapathModel
        from vrtwist.agent.model import port_from_json

        configured: dict[str, int] = {}
        model = DatapathModel(os_index=lambda name: 0)
        model.vxlan = True
        model.vni_source = configured.get
        link = RecordingLink()
        model.controller = link
        other = "4e4e4e4e-1111-2222-3333-555555555555"
        a = port_from_json(port_body(1, vn=VN))
        b = port_from_json(port_body(2, vn=other))
        model.portAdded(a)
        model.portAdded(b)
        derived_a = vni_for(vrf_name_for(VN))
        self.assertEqual(model.port_ids(a.id)["vni"], derived_a)  # type: ignore[index]
        configured[VN] = 4242
        model.refresh_vnis()
        self.assertEqual(model.port_ids(a.id)["vni"], 4242)  # type: ignore[index]
        self.assertIn((VXLAN, 4242), model.desired)
        self.assertNotIn((VXLAN, derived_a), model.desired)
        # the port's route published again with the new VNI
        self.assertEqual(link.events[-1][0], "add")
        self.assertEqual((link.events[-1][1].port_id, link.events[-1][1].vni), (a.id, 4242))
        # another network configured with a VNI in use: it gets none (no VXLAN for it)
        configured[other] = 4242
        model.refresh_vnis()
        self.assertEqual(model.port_ids(b.id)["vni"], 0)  # type: ignore[index]
        self.assertEqual(model.port_ids(a.id)["vni"], 4242)  # type: ignore[index]
        # config gone: both back to their derived VNIs
        configured.clear()
        model.refresh_vnis()
        self.assertEqual(model.port_ids(a.id)["vni"], derived_a)  # type: ignore[index]
        self.assertEqual(model.port_ids(b.id)["vni"],  # type: ignore[index]
                         vni_for(vrf_name_for(other)))
        self.assertEqual({k[1] for k in model.desired if k[0] == VXLAN},
                         {derived_a, vni_for(vrf_name_for(other))})

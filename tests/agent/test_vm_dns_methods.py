"""The per-network DNS methods through a real ``twistd vrouter``, with real VM clients.

Two networks, one VM (a network namespace behind a veth) in each. One network's IPAM
says ``tenant-dns-server``: ``dhclient`` in its VM must be handed the tenant's server, and
a query that still goes to the service address is answered by that server (a ``twistd
dns`` on a loopback address, port 53), not by the host's resolver. The other says
``virtual-dns-server``: ``dhclient`` gets the service address and the virtual DNS's
domain as search domain, so ``getent hosts vm3`` (a VM of that network) resolves through
the domain, a configured record resolves, and a name outside the zone is answered by the
virtual DNS's next server. ``getent`` is the resolver (no ``dig``). Also IPv6: the VM
of the virtual network gets its DHCPv6 address from the subnet's service address, the
datapath answers its neighbour solicitation for the IPv6 gateway with the VRRP MAC, and
the agent's router advertisement gives it the on-link prefix and its default router.
Needs root, ``ip`` and ``dhclient``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import TestCase

from tests.agent.helpers import port_body
from tests.agent.procs import BIN, Twistd, agent_args
from tests.agent.test_vm_dns_dhcp6 import dhclient6, free_udp_port
from tests.agent.test_vm_traffic import Vm, rest
from tests.agent.twonodes import sh, skip_reason
from tests.polling import wait_until

PFX = "ac%d" % (os.getpid() % 10000)
VN_T = "7a7a7a7a-1111-2222-3333-000000000001"
VN_V = "7a7a7a7a-1111-2222-3333-000000000002"
#: the loopback network of the tenant's DNS server and the virtual DNS's next server
LOOP = 64 + os.getpid() % 128


class VmDnsMethodsTests(TestCase):
    timeout = 240
    skip = skip_reason()

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="acdns-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        # the host's resolver (--dns-upstream); twistd dns also listens on TCP, where a
        # port free for UDP may be taken: another one is tried then
        _, up = self.start_dns("host", "192.0.2.80 www.example.org\n",
                               [("127.0.0.1", free_udp_port()) for _ in range(5)])
        self.tenant_dns, _ = self.start_dns(
            "tenant", "192.0.2.81 www.example.org\n192.0.2.82 intranet.tenant.example\n",
            [(f"127.{LOOP}.68.{i}", 53) for i in range(1, 10, 2)])
        self.next_dns, _ = self.start_dns(
            "next", "192.0.2.83 outside.example.net\n",
            [(f"127.{LOOP}.68.{i}", 53) for i in range(2, 10, 2)])
        run_dir, state = os.path.join(self.dir, "run"), os.path.join(self.dir, "state")
        self.run_dir = run_dir
        self.vm_t = Vm(1, "02:68:00:00:00:01", prefix=PFX)
        self.addCleanup(self.vm_t.cleanup)
        self.vm_v = Vm(2, "02:68:00:00:00:02", prefix=PFX)
        self.addCleanup(self.vm_v.cleanup)
        self.agent = Twistd(self.dir, "vrouter",
                            agent_args(run_dir, state, "--dns-upstream", f"127.0.0.1:{up}"),
                            "agent")
        self.addCleanup(self.agent.stop)
        port = self.agent.rest_port()
        self.assertEqual(rest(port, "PUT", f"/network/{VN_T}", {
            "ipam-dns-method": "tenant-dns-server", "tenant-dns-servers": [self.tenant_dns]}),
            200)
        self.assertEqual(rest(port, "PUT", f"/network/{VN_V}", {
            "ipam-dns-method": "virtual-dns-server", "virtual-dns": {
                "domain-name": "lab.example", "next-dns-servers": [self.next_dns],
                "records": [{"name": "db", "type": "A", "data": "10.68.2.20"}]}}), 200)
        for n, vn, host in ((1, VN_T, self.vm_t.host), (2, VN_V, self.vm_v.host),
                            (3, VN_V, f"{PFX}nope")):
            net = 1 if vn == VN_T else 2
            body = port_body(n, vn=vn, **{
                "ip-address": f"10.68.{net}.{10 + n}", "mac-address": f"02:68:00:00:00:0{n}",
                "system-name": host, "display-name": f"vm{n}", "plen": 24,
                "gateway": f"10.68.{net}.1", "dns-server": f"10.68.{net}.2",
                "ip6-address": f"fd00:68:{net}::{10 + n}", "v6-plen": 64,
                "v6-gateway": f"fd00:68:{net}::1", "v6-dns-server": f"fd00:68:{net}::2",
            })  # fmt: skip
            self.assertEqual(rest(port, "POST", "/port", body), 200)
        wait_until(lambda: sh(os.path.join(BIN, "vif"), "--sock-dir", run_dir, "--list",
                              check=False).stdout.count("Status: UP") >= 2 or None,
                   "both VM vifs attached", 30)

    def start_dns(self, name: str, lines: str,
                  candidates: list[tuple[str, int]]) -> tuple[str, int]:
        """A ``twistd dns`` answering from ``lines`` on the first of ``candidates``
        (address, port) it can bind (another process may hold one of them)."""
        hosts = os.path.join(self.dir, f"{name}.hosts")
        with open(hosts, "w") as f:
            f.write(lines)
        for i, (address, port) in enumerate(candidates):
            server = Twistd(self.dir, "dns", ["--hosts-file", hosts, "-i", address,
                                              "-p", str(port)], f"{name}{i}")
            self.addCleanup(server.stop)

            def state(server: Twistd = server) -> str | None:
                if "Starting protocol" in server.text():
                    return "up"
                return "exited" if server.proc.poll() is not None else None
            if wait_until(state, f"the {name} DNS server on {address}", 60) == "up":
                return address, port
        raise AssertionError(f"no address to run the {name} DNS server on:\n{server.text()}")

    def resolv_conf(self, vm: Vm) -> str:
        with open(f"/etc/netns/{vm.ns}/resolv.conf") as f:
            return f.read()

    def hosts(self, vm: Vm, name: str) -> str:
        return vm.run("getent", "ahostsv4", name, check=False, timeout=30).stdout

    def test_tenant_dns_server(self) -> None:
        vm = self.vm_t
        self.assertIn("10.68.1.11", vm.dhcp(self.dir))
        conf = self.resolv_conf(vm)
        # DHCP option 6 is the tenant's server, not the service address
        self.assertIn(f"nameserver {self.tenant_dns}", conf, self.agent.text()[-3000:])
        self.assertNotIn("10.68.1.2", conf)
        # a query to the service address goes to the tenant's server, not the host's
        with open(f"/etc/netns/{vm.ns}/resolv.conf", "w") as f:
            f.write("nameserver 10.68.1.2\noptions timeout:2 attempts:2\n")
        self.assertIn("192.0.2.81", self.hosts(vm, "www.example.org"),
                      self.agent.text()[-3000:])
        self.assertIn("192.0.2.82", self.hosts(vm, "intranet.tenant.example"))
        # the agent does not answer the network's VM names itself with this method
        self.assertEqual(self.hosts(vm, "vm1"), "")

    def test_virtual_dns_server(self) -> None:
        vm = self.vm_v
        self.assertIn("10.68.2.12", vm.dhcp(self.dir))
        conf = self.resolv_conf(vm)
        self.assertIn("nameserver 10.68.2.2", conf, self.agent.text()[-3000:])
        self.assertIn("lab.example", conf)  # option 15: the search domain
        with open(f"/etc/netns/{vm.ns}/resolv.conf", "a") as f:
            f.write("options timeout:2 attempts:2\n")
        # another VM of the network by its short name, through the search domain
        self.assertIn("10.68.2.13", self.hosts(vm, "vm3"), self.agent.text()[-3000:])
        self.assertIn("10.68.2.13", self.hosts(vm, "vm3.lab.example"))
        self.assertIn("10.68.2.20", self.hosts(vm, "db"))  # a configured record
        out = vm.run("getent", "hosts", "10.68.2.13", check=False, timeout=30).stdout
        self.assertIn("vm3.lab.example", out)
        # outside the zone: the virtual DNS's next server, not the host's resolver
        self.assertIn("192.0.2.83", self.hosts(vm, "outside.example.net"))
        self.assertEqual(self.hosts(vm, "www.example.org"), "")

    def test_ipv6_ipam(self) -> None:
        vm = self.vm_v
        lease = dhclient6(self, vm, self.dir, self.agent.text)
        self.assertIn("fd00:68:2::12", vm.run("ip", "-6", "-o", "addr", "show", "dev",
                                              vm.guest).stdout)
        with open(lease) as f:
            text = f.read()
        self.assertIn("fd00:68:2::2", text)  # the DNS option: the IPv6 service address
        self.assertIn("lab.example", text)  # the domain list: the virtual DNS's domain
        # the gateway is answered by neighbour discovery with the VRRP MAC (dhclient
        # puts the address as a /128: the subnet's route is added by hand)
        vm.run("ip", "-6", "route", "add", "fd00:68:2::/64", "dev", vm.guest)
        vm.run("ping", "-6", "-c", "1", "-W", "2", "fd00:68:2::1", check=False, timeout=30)
        neigh = wait_until(lambda: "00:00:5e:00:01:00" in vm.run(
            "ip", "-6", "neigh", "show", "fd00:68:2::1").stdout or None,
            "the IPv6 gateway resolved", 20)
        self.assertTrue(neigh)

    def test_router_advertisement(self) -> None:
        vm = self.vm_v
        # the link comes up again now that the port is there: the kernel solicits routers
        vm.run("sysctl", "-qw", f"net.ipv6.conf.{vm.guest}.accept_ra=2")
        vm.run("ip", "link", "set", vm.guest, "down")
        vm.run("ip", "link", "set", vm.guest, "up")

        def default() -> str | None:
            out = vm.run("ip", "-6", "route", "show", "default").stdout
            return out if "fe80::5e00:100" in out else None
        route = wait_until(default, "a default route from the router advertisement", 30)
        self.assertIn(f"dev {vm.guest}", route or "")
        # the on-link prefix (not autonomous: no address made from it)
        routes = vm.run("ip", "-6", "route").stdout
        self.assertIn("fd00:68:2::/64", routes)
        self.assertNotIn("fd00:68:2::", vm.run("ip", "-6", "-o", "addr", "show", "dev",
                                               vm.guest).stdout)
        # the default router is answered by neighbour discovery with the VRRP MAC
        vm.run("ping", "-6", "-c", "1", "-W", "2", "fd00:68:1::11", check=False, timeout=30)
        self.assertTrue(wait_until(lambda: "00:00:5e:00:01:00" in vm.run(
            "ip", "-6", "neigh", "show", "fe80::5e00:100", "dev", vm.guest).stdout or None,
            "the default router resolved", 20))

"""DNS and DHCPv6 for a VM through a real ``twistd vrouter``, with real clients.

The VM is a network namespace behind a veth (as in test_vm_traffic). DNS: the VM's
resolver (``getent hosts`` with the namespace's resolv.conf naming the DNS address) asks
the agent, which answers the VMs' names itself and forwards the rest to an upstream
``twistd dns`` on loopback, given with ``--dns-upstream``. DHCPv6: ``dhclient -6`` in the
VM gets the port's ``ip6-address``. Needs root, ``ip`` and ``dhclient``.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable

from twisted.trial.unittest import TestCase

from tests.agent.helpers import port_body
from tests.agent.procs import BIN, Twistd, agent_args
from tests.agent.test_vm_traffic import Vm, rest
from tests.agent.twonodes import sh, skip_reason
from tests.polling import wait_until

PFX = "v6%d" % (os.getpid() % 100000)
VN = "9a9a9a9a-6666-3333-4444-555555555555"
GATEWAY, DNS = "10.67.1.1", "10.67.1.2"
IP6 = "fd00:67::11"


def free_udp_port() -> int:
    """A loopback port free for UDP and TCP both: ``twistd dns`` binds the two."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def dhclient6(test: TestCase, vm: Vm, directory: str, log: Callable[[], str]) -> str:
    """Run ``dhclient -6`` once in ``vm`` (after its link-local address passed DAD, which
    dhclient needs to bind it), assert it got a lease, and return the lease file's path;
    ``log`` gives the agent's log for the failure message."""
    wait_until(lambda: "tentative" not in vm.run("ip", "-6", "addr", "show", "dev",
                                                 vm.guest).stdout or None,
               "the VM's link-local address usable", 20)
    lease = os.path.join(directory, "v6.leases")
    pid = os.path.join(directory, "v6.pid")
    r = vm.run("dhclient", "-6", "-1", "-v", "-lf", lease, "-pf", pid, vm.guest,
               check=False, timeout=90)
    test.assertEqual(r.returncode, 0, r.stdout + r.stderr + log()[-3000:])
    return lease


class VmServicesTests(TestCase):
    timeout = 240
    skip = skip_reason()

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmdns-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        hosts = os.path.join(self.dir, "hosts")
        with open(hosts, "w") as f:
            f.write("192.0.2.80 www.example.org\n")
        up = free_udp_port()
        self.upstream = Twistd(self.dir, "dns", ["--hosts-file", hosts, "-i", "127.0.0.1",
                                                 "-p", str(up)], "upstream")
        self.addCleanup(self.upstream.stop)
        run_dir, state = os.path.join(self.dir, "run"), os.path.join(self.dir, "state")
        self.run_dir = run_dir
        self.vm = Vm(1, "02:67:00:00:00:01", prefix=PFX)
        self.addCleanup(self.vm.cleanup)
        self.agent = Twistd(self.dir, "vrouter",
                            agent_args(run_dir, state, "--dns-upstream", f"127.0.0.1:{up}"),
                            "agent")
        self.addCleanup(self.agent.stop)
        port = self.agent.rest_port()
        for n, host in ((1, self.vm.host), (2, f"{PFX}nope")):
            body = port_body(n, vn=VN, **{
                "ip-address": f"10.67.1.{10 + n}", "mac-address": f"02:67:00:00:00:0{n}",
                "system-name": host, "display-name": f"vm{n}", "plen": 24,
                "gateway": GATEWAY, "dns-server": DNS, "ip6-address": f"fd00:67::{10 + n}",
            })  # fmt: skip
            self.assertEqual(rest(port, "POST", "/port", body), 200)
        wait_until(lambda: "Status: UP" in sh(os.path.join(BIN, "vif"), "--sock-dir", run_dir,
                                              "--list", check=False).stdout or None,
                   "the VM vif attached", 30)

    def test_dns_names_and_forwarding(self) -> None:
        vm = self.vm
        vm.run("ip", "addr", "add", "10.67.1.11/24", "dev", vm.guest)
        vm.run("ip", "route", "add", "default", "via", GATEWAY)
        with open(f"/etc/netns/{vm.ns}/resolv.conf", "w") as f:
            f.write(f"nameserver {DNS}\noptions timeout:2 attempts:2\n")

        def hosts(name: str) -> str:
            return vm.run("getent", "ahostsv4", name, check=False, timeout=30).stdout

        # another VM of the network, by its display-name (answered by the agent)
        self.assertIn("10.67.1.12", hosts("vm2"), self.agent.text()[-3000:])
        # a name the agent does not know: forwarded to the upstream
        self.assertIn("192.0.2.80", hosts("www.example.org"), self.agent.text()[-3000:])
        # reverse, from the agent
        out = vm.run("getent", "hosts", "10.67.1.12", check=False, timeout=30).stdout
        self.assertIn("vm2", out)
        # unknown upstream: no address (NXDOMAIN relayed), and the agent still serves
        self.assertEqual(hosts("nope.example.org"), "")
        self.assertIn("10.67.1.11", hosts("vm1"))

    def test_dhcpv6_with_dhclient(self) -> None:
        vm = self.vm
        lease = dhclient6(self, vm, self.dir, self.agent.text)
        addrs = vm.run("ip", "-6", "-o", "addr", "show", "dev", vm.guest).stdout
        self.assertIn(IP6, addrs)
        with open(lease) as f:
            text = f.read()
        self.assertIn("server-id", text)
        self.assertIn("fe80::200:5eff:fe00:100", text)  # the DNS option: the service address

"""Two nodes over VXLAN with the network's VNI configured rather than derived.

The lab of ``test_two_nodes`` (control node, two ``twistd vrouter`` nodes in their own
namespaces, four VMs with real ``dhclient``), with ``--encap vxlan``. Node 2 starts with
the VNI already in its ``networks.json`` (as a restart finds it); node 1 derives the VNI
from the network's name at first and is configured over REST once its VMs are up, so
its VXLAN entry moves and its routes are published again with the new VNI. Traffic
across the fabric must then flow with the configured VNI on both sides, and the derived
one must be gone from both datapaths (before that, each node sends with the VNI the
other published, so the two VNIs differing for a while is no outage). Needs root, ``ip``, ``dhclient`` and ``ping``.
"""

from __future__ import annotations

import json
import os

from tests.agent import twonodes
from tests.agent.test_two_nodes import LabCase
from tests.agent.twonodes import GATEWAY, PLEN, VN
from tests.polling import wait_until
from vrtwist.agent.dpstate import vni_for, vrf_name_for

CONFIGURED = 4242


class ConfiguredVniTests(LabCase):
    def setUp(self) -> None:
        # this helper's name prefix for every namespace, veth and bridge of the lab
        self.patch(twonodes, "PFX", "ac%d" % (os.getpid() % 10000))
        super().setUp()

    def test_vxlan_with_a_configured_vni(self) -> None:
        derived = vni_for(vrf_name_for(VN))
        self.assertNotEqual(derived, CONFIGURED)
        lab = self.lab
        lab.start_control()
        self.n1, self.n2 = lab.node(1), lab.node(2)
        self.vms = [lab.vm(self.n1, 1), lab.vm(self.n1, 2), lab.vm(self.n2, 3),
                    lab.vm(self.n2, 4)]
        with open(os.path.join(self.n2.state_dir, "networks.json"), "w") as f:
            json.dump({"networks": [{"vn-id": VN, "vxlan-network-identifier": CONFIGURED}]}, f)
        for node in (self.n1, self.n2):
            node.start_agent("--encap", "vxlan")
        for vm in self.vms:
            r = vm.plug()
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr + lab.logs())
        for node in (self.n1, self.n2):
            wait_until(lambda: node.tool("vif", "--list").count("Status: UP") >= 3
                       or None, f"node {node.n}: fabric and VM vifs attached", 30)
        self.assertIn(str(derived), self.n1.tool("vxlan", "--dump"))
        self.assertIn(str(CONFIGURED), self.n2.tool("vxlan", "--dump"))
        for vm in self.vms:
            self.assertIn(f"inet {vm.ip}/{PLEN}", vm.dhcp(self.dir))
            self.assertIn(f"default via {GATEWAY}", vm.run("ip", "-4", "route").stdout)
        for node, other in ((self.n1, self.n2), (self.n2, self.n1)):
            wait_until(lambda: other.fabric_ip in node.tool("nh", "--list"),
                       f"node {node.n}: a tunnel to {other.fabric_ip}", 30)
        # the VNIs differ (node 1 derived, node 2 configured): each node sends with the
        # VNI the other published, so traffic flows already
        self.ping(1, 3)
        # node 1 configured over REST while its network is in use
        put = ("import json,urllib.request as u;r=u.Request('http://127.0.0.1:%d/network/%s',"
               "data=json.dumps({'vxlan-network-identifier':%d}).encode(),method='PUT');"
               "print(u.urlopen(r,timeout=30).status)") % (self.n1.rest_port, VN, CONFIGURED)
        self.assertEqual(self.n1.run("python3", "-c", put).stdout.strip(), "200")
        for node in (self.n1, self.n2):
            wait_until(lambda: (str(CONFIGURED) in node.tool("vxlan", "--dump")
                                and str(derived) not in node.tool("vxlan", "--dump")) or None,
                       f"node {node.n}: the configured VNI only", 30)
        self.ping(1, 3)  # across the fabric, both ways
        self.ping(4, 2)
        self.stream(1, 3)
        nhs = self.n1.tool("nh", "--list")
        self.assertIn("Vxlan", nhs)
        self.assertNotIn("MPLSo", nhs)
        # the remote VMs' routes carry the configured VNI as their label
        for node, vm in ((self.n1, self.vms[2]), (self.n2, self.vms[0])):
            def labelled(node: twonodes.Node = node, vm: twonodes.Vm = vm) -> str | None:
                rt = node.tool("rt", "--dump", "1")
                line = next((x for x in rt.splitlines() if x.startswith(f"{vm.ip}/32")), "")
                return line if str(CONFIGURED) in line else None
            self.assertTrue(wait_until(labelled, f"node {node.n}: {vm.ip} with VNI "
                                       f"{CONFIGURED}", 30))

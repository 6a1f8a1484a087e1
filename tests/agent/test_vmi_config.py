"""VM interface config from the controller fills what a port's REST data lacks."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.agent.helpers import SAMPLE, port_body, tempdir
from vrtwist.agent.interfaces import IControllerLink
from vrtwist.agent.model import mac_for_vmi
from vrtwist.agent.testing import InMemoryAgent
from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import Datapath
from vrtwist.xmpp.agent_link import ConfigStore
from vrtwist.xmpp.stanzas import ConfigLink, ConfigNode, ConfigUpdate

VMI = "aaaaaaaa-2222-3333-4444-555555555555"
VM = {"vm-uuid": "11111111-2222-3333-4444-555555555555", "host-ifname": "veth1",
      "vm-name": "pod-a", "vn-uuid": SAMPLE["vn-id"], "vmi-uuid": VMI, "vm-namespace": "ns1"}
VMI_NAME = f"default-domain:demo:{VMI}"


def vmi_config(uuid: str = VMI, mac: str = "02:aa:bb:cc:dd:01",
               ips: tuple[str, ...] = ("10.3.0.7", "fd00::7")) -> ConfigUpdate:
    """A VMI node with its MAC, instance-ip nodes and their links, as IFMap sends them
    (the uuid in ``id-perms`` as two 64-bit halves)."""
    h = uuid.replace("-", "")
    name = f"default-domain:demo:{uuid}"
    items: list[ConfigNode | ConfigLink] = [ConfigNode("virtual-machine-interface", name, {
        "id-perms": {"uuid": {"uuid-mslong": str(int(h[:16], 16)),
                              "uuid-lslong": str(int(h[16:], 16))}},
        "virtual-machine-interface-mac-addresses": {"mac-address": mac}})]
    for i, ip in enumerate(ips):
        items.append(ConfigNode("instance-ip", f"ip-{uuid}-{i}", {
            "id-perms": {"uuid": f"ip{i}"}, "instance-ip-address": ip}))
        items.append(ConfigLink(("instance-ip", f"ip-{uuid}-{i}"),
                                ("virtual-machine-interface", name),
                                "instance-ip-virtual-machine-interface"))
    return ConfigUpdate(tuple(items), ())


@implementer(IControllerLink)
class RecordingLink:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def localRouteAdded(self, route: Any) -> None:
        self.events.append(("add", route))

    def localRouteDeleted(self, route: Any) -> None:
        self.events.append(("del", route))


def route(dp: Datapath, vrf: int | None, addr: str, plen: int) -> Any:
    ip = ipaddress.ip_address(addr)
    if vrf is None:
        return None
    table = dp.routes.vrfs.get((C.AF_INET if ip.version == 4 else C.AF_INET6, vrf))
    for bucket in (table.by_len.values() if table else ()):
        for entry in bucket.values():
            if entry.plen == plen and entry.prefix == int(ip):
                return entry
    return None


class VmInterfaceConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.agent = InMemoryAgent(tempdir(self))
        self.dp = self.agent.datapath
        self.model = self.agent.model
        self.config = ConfigStore()
        self.model.interface_source = self.config.interface
        self.config.listeners.append(lambda _u: self.model.refresh_config())
        self.link = RecordingLink()
        self.model.controller = self.link

    def vif(self) -> Any:
        ids = self.model.port_ids(VMI)
        assert ids is not None
        return self.dp.tables.interfaces[ids["vif"]]

    def vm_mac(self, uuid: str = VMI) -> bytes:
        """The VM's MAC as the datapath has it: the destination of its L3 next hop's rewrite
        (the vif itself carries the VRRP MAC)."""
        ids = self.model.port_ids(uuid)
        assert ids is not None
        return bytes(self.dp.tables.nexthops[ids["l3_nh"]].encap[:6])

    def test_vm_port_takes_address_and_mac_from_config(self) -> None:
        self.config.apply(vmi_config())
        self.assertEqual(self.agent.call("POST", "/vm", VM), (200, {}))
        self.assertEqual(self.agent.sync.errors, {})
        vrf = self.model.vrf_id_of(VM["vn-uuid"])
        ids = self.model.port_ids(VMI)
        assert vrf is not None and ids is not None
        self.assertEqual(self.vm_mac(), bytes.fromhex("02aabbccdd01"))
        self.assertEqual(route(self.dp, vrf, "10.3.0.7", 32).label, ids["label"])
        self.assertIsNotNone(route(self.dp, vrf, "fd00::7", 128))
        self.assertIsNotNone(self.dp.bridge.index_of(vrf, bytes.fromhex("02aabbccdd01")))
        (op, published), = self.link.events
        self.assertEqual((op, published.ip4, published.ip6, published.mac),
                         ("add", "10.3.0.7", "fd00::7", "02:aa:bb:cc:dd:01"))

    def test_config_arriving_later_reprograms_the_port(self) -> None:
        self.agent.call("POST", "/vm", VM)
        old_ids = self.model.port_ids(VMI)
        vrf = self.model.vrf_id_of(VM["vn-uuid"])
        assert vrf is not None
        derived = bytes.fromhex(mac_for_vmi(VMI).replace(":", ""))
        self.assertEqual(self.vm_mac(), derived)
        self.assertEqual(self.link.events[-1][1].ip4, None)
        self.config.apply(vmi_config())
        self.assertEqual(self.agent.sync.errors, {})
        # a new MAC is a new vif (the datapath keeps an existing vif's MAC)
        ids = self.model.port_ids(VMI)
        assert ids is not None and old_ids is not None
        self.assertNotEqual(ids["vif"], old_ids["vif"])
        self.assertNotIn(old_ids["vif"], self.dp.tables.interfaces)
        self.assertEqual(self.vm_mac(), bytes.fromhex("02aabbccdd01"))
        self.assertIsNotNone(route(self.dp, vrf, "10.3.0.7", 32))
        self.assertIsNone(self.dp.bridge.index_of(vrf, derived))
        self.assertEqual([op for op, _ in self.link.events], ["add", "del", "add"])
        # the address changes, the IPv6 instance IP goes: old routes go, the new one comes
        self.config.apply(ConfigUpdate(vmi_config(ips=("10.3.0.8",)).updates,
                                       vmi_config().updates[3:5]))
        self.assertIsNone(route(self.dp, vrf, "10.3.0.7", 32))
        self.assertIsNone(route(self.dp, vrf, "fd00::7", 128))
        self.assertIsNotNone(route(self.dp, vrf, "10.3.0.8", 32))
        self.assertEqual(self.model.port_ids(VMI), ids)
        # an unrelated config update reprograms nothing
        n = len(self.link.events)
        self.config.apply(ConfigUpdate((ConfigNode("virtual-network", "x", {
            "id-perms": {"uuid": "x"}}),), ()))
        self.assertEqual(len(self.link.events), n)
        # config deleted: back to what REST says (no address, derived MAC)
        self.config.apply(ConfigUpdate((), vmi_config(ips=("10.3.0.8",)).updates))
        self.assertIsNone(route(self.dp, vrf, "10.3.0.8", 32))
        self.assertEqual(self.vm_mac(), derived)
        self.assertEqual(len([v for v in self.dp.tables.interfaces.values()
                              if v.name == VM["host-ifname"]]), 1)
        self.assertEqual(self.agent.sync.errors, {})
        self.assertEqual(self.agent.call("DELETE", f"/vm/{VM['vm-uuid']}"), (200, {}))
        self.assertEqual(self.agent.sync.errors, {})

    def test_rest_data_wins_where_it_has_values(self) -> None:
        body = port_body(1)  # an address and a real MAC, no IPv6 address
        self.config.apply(vmi_config(body["id"], ips=("10.9.9.9", "fd00::9")))
        self.agent.call("POST", "/port", body)
        vrf = self.model.vrf_id_of(body["vn-id"])
        self.assertIsNotNone(route(self.dp, vrf, body["ip-address"], 32))
        self.assertIsNone(route(self.dp, vrf, "10.9.9.9", 32))
        self.assertIsNotNone(route(self.dp, vrf, "fd00::9", 128))  # the family REST lacks
        ids = self.model.port_ids(body["id"])
        assert ids is not None
        self.assertEqual(self.vm_mac(body["id"]),
                         bytes.fromhex(body["mac-address"].replace(":", "")))

    def test_unusable_config_values_are_ignored(self) -> None:
        self.config.apply(vmi_config(mac="01:00:5e:00:00:01", ips=("10.3.0.300", "bogus")))
        self.assertEqual(self.agent.call("POST", "/vm", VM), (200, {}))
        self.assertEqual(self.agent.sync.errors, {})
        self.assertEqual(self.vm_mac(), bytes.fromhex(mac_for_vmi(VMI).replace(":", "")))
        self.assertEqual(self.link.events[-1][1].ip4, None)

    def test_a_failing_source_leaves_the_rest_data(self) -> None:
        def broken(uuid: str) -> dict[str, Any]:
            raise RuntimeError("config store broken")
        self.model.interface_source = broken
        self.assertEqual(self.agent.call("POST", "/port", port_body(1)), (200, {}))
        self.assertEqual(self.agent.sync.errors, {})
        self.flushLoggedErrors()


class ConfigStoreIndexTests(SynchronousTestCase):
    def test_interface_by_uuid_halves_name_and_updates(self) -> None:
        store = ConfigStore()
        store.apply(vmi_config())
        self.assertEqual(store.interface(VMI), {"name": VMI_NAME, "mac": "02:aa:bb:cc:dd:01",
                                                "network": None,
                                                "ips": ["10.3.0.7", "fd00::7"]})
        self.assertEqual(store.interface(VMI.upper())["name"], VMI_NAME)  # type: ignore[index]
        # a link deleted: that instance IP is no longer the interface's
        link = vmi_config().updates[2]
        assert isinstance(link, ConfigLink)
        store.apply(ConfigUpdate((), (link,)))
        self.assertEqual(store.interface(VMI)["ips"], ["fd00::7"])  # type: ignore[index]
        self.assertEqual(store.linked("instance-ip", f"ip-{VMI}-0"), [])
        # the node deleted: gone
        store.apply(ConfigUpdate((), (vmi_config().updates[0],)))
        self.assertIsNone(store.interface(VMI))
        self.assertEqual(store._vmis, {})

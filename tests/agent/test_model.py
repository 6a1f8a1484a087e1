"""Validation of every field of a port body: each bad value is named in the error."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.agent.helpers import SAMPLE
from vrtwist.agent.model import (
    NIL_UUID,
    PortValidationError,
    dashed_uuid,
    gateways_from_json,
    mac_for_vmi,
    port_from_json,
)

_DROP = object()

# (field, bad value, text expected in the error)
BAD: list[tuple[str, Any, str]] = [
    ("id", _DROP, "id: missing"),
    ("id", 5, "id: must be a string"),
    ("id", "93c2c386", "id: '93c2c386' is not a uuid"),
    ("id", NIL_UUID, "nil uuid"),
    ("id", None, "id: must not be null"),
    ("instance-id", "zz", "instance-id"),
    ("instance-id", _DROP, "instance-id: missing"),
    ("vn-id", NIL_UUID, "vn-id: the nil uuid"),
    ("vn-id", [], "vn-id: must be a string"),
    ("vm-project-id", "abc", "vm-project-id"),
    ("display-name", 3, "display-name: must be a string"),
    ("display-name", _DROP, "display-name: missing"),
    ("ip-address", "11.0.0.300", "ip-address: '11.0.0.300' is not an IPv4 address"),
    ("ip-address", "fd00::1", "ip-address"),
    ("ip-address", 11, "ip-address: must be a string"),
    ("ip-address", _DROP, "ip-address: missing"),
    ("ip6-address", "11.0.0.3", "ip6-address"),
    ("ip6-address", "fd00::zz", "ip6-address"),
    ("ip6-address", _DROP, "ip6-address: missing"),
    ("type", 3, "type: 3 is out of range"),
    ("type", "0", "type: must be an integer"),
    ("type", True, "type: must be an integer"),
    ("type", _DROP, "type: missing"),
    ("system-name", "", "system-name"),
    ("system-name", "a" * 16, "system-name"),
    ("system-name", "tap/1", "system-name"),
    ("system-name", _DROP, "system-name: missing"),
    ("mac-address", "02:93:c2:c3:86", "mac-address"),
    ("mac-address", "00:00:00:00:00:00", "mac-address"),
    ("mac-address", "01:00:5e:00:00:01", "multicast"),
    ("mac-address", "02-93-c2-c3-86-6e", "mac-address"),
    ("mac-address", _DROP, "mac-address: missing"),
    ("rx-vlan-id", 4096, "rx-vlan-id: 4096 is out of range"),
    ("rx-vlan-id", "1", "rx-vlan-id: must be an integer"),
    ("rx-vlan-id", _DROP, "rx-vlan-id: missing"),
    ("tx-vlan-id", -2, "tx-vlan-id"),
    ("tx-vlan-id", _DROP, "tx-vlan-id: missing"),
    ("vhostuser-mode", 2, "vhostuser-mode"),
    ("link-state", "up", "link-state"),
    ("plen", 33, "plen: 33 is out of range"),
    ("gateway", "11.0.0", "gateway"),
    ("gateway", "12.0.0.1", "outside"),  # with plen 24 below
    ("dns-server", "x", "dns-server"),
    ("author", 1, "author"),
    ("time", 1, "time"),
]


class PortValidationTests(SynchronousTestCase):
    def test_sample_is_valid(self) -> None:
        p = port_from_json(SAMPLE)
        self.assertEqual(p.ip6_address, None)
        self.assertEqual(p.to_file_json()["ip6-address"], "::")  # as the real agent writes
        self.assertTrue(port_from_json(p.to_file_json()).same_config(p))

    def test_every_bad_field_is_named(self) -> None:
        for field, value, text in BAD:
            body = dict(SAMPLE)
            if field == "gateway" and value == "12.0.0.1":
                body["plen"] = 24
            if value is _DROP:
                del body[field]
            else:
                body[field] = value
            with self.assertRaises(PortValidationError, msg=f"{field}={value!r}") as cm:
                port_from_json(body)
            self.assertIn(text, str(cm.exception), f"{field}={value!r}")

    def test_several_problems_at_once(self) -> None:
        body = dict(SAMPLE, **{"mac-address": "x", "ip-address": "y"})
        with self.assertRaises(PortValidationError) as cm:
            port_from_json(body)
        self.assertEqual(len(cm.exception.problems), 2)

    def test_not_an_object(self) -> None:
        body: object
        for body in ([], "x", 1, None):
            self.assertRaises(PortValidationError, port_from_json, body)

    def test_null_vlans_and_ip6_mean_none(self) -> None:
        p = port_from_json(dict(SAMPLE, **{"rx-vlan-id": None, "tx-vlan-id": None,
                                           "ip6-address": None}))
        self.assertEqual((p.rx_vlan_id, p.tx_vlan_id, p.ip6_address), (-1, -1, None))

    def test_normalisation(self) -> None:
        p = port_from_json(dict(SAMPLE, id=SAMPLE["id"].upper(),
                                **{"mac-address": "02:93:C2:C3:86:6E",
                                   "ip6-address": "FD00:0::1", "vm-project-id": ""}))
        self.assertEqual(p.id, SAMPLE["id"])
        self.assertEqual(p.mac_address, "02:93:c2:c3:86:6e")
        self.assertEqual(p.ip6_address, "fd00::1")
        self.assertEqual(p.vm_project_id, NIL_UUID)  # as the real agent: empty is nil

    def test_unknown_fields_are_kept_aside(self) -> None:
        p = port_from_json(dict(SAMPLE, extra=1))
        self.assertEqual(p.extra, {"extra": 1})

    def test_helpers(self) -> None:
        self.assertEqual(dashed_uuid("93C2C3866E79485EBFA4B9DAA713133B"), SAMPLE["id"])
        self.assertEqual(dashed_uuid("nope"), "")
        self.assertEqual(mac_for_vmi(SAMPLE["id"]), "02:93:c2:c3:86:6e")

    def test_gateway_prefix_len_error_is_located(self) -> None:
        with self.assertRaises(PortValidationError) as cm:
            gateways_from_json([{"interface": "vgw", "routing-instance": "ri",
                                 "subnets": [{"ip-address": "10.0.0.0"}]}])
        self.assertIn("[0].subnets[0].prefix-len: missing", str(cm.exception))

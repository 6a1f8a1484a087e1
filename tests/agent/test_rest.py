"""The REST port API through StubTreq: every endpoint, its success bodies and its errors."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, ClassVar

from twisted.trial.unittest import SynchronousTestCase

from tests.agent.helpers import SAMPLE, port_body, tempdir
from vrtwist.agent.model import port_from_json
from vrtwist.agent.testing import InMemoryAgent

UUID = SAMPLE["id"]


class PortEndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempdir(self)
        self.agent = InMemoryAgent(self.dir)

    def file(self, uuid: str) -> str:
        return os.path.join(self.dir, "ports", uuid)

    def test_post_get_delete(self) -> None:
        self.assertEqual(self.agent.call("POST", "/port", SAMPLE), (200, {}))
        code, body = self.agent.call("GET", f"/port/{UUID}")
        self.assertEqual(code, 200)
        for k in ("id", "instance-id", "vn-id", "vm-project-id", "mac-address", "system-name",
                  "rx-vlan-id", "tx-vlan-id", "ip-address"):
            self.assertEqual(body[k], SAMPLE[k])
        self.assertEqual(body["plen"], 32)
        self.assertIn("author", body)
        self.assertTrue(os.path.isfile(self.file(UUID)))
        with open(self.file(UUID)) as f:
            self.assertTrue(port_from_json(json.load(f)).same_config(port_from_json(SAMPLE)))
        self.assertEqual(self.agent.call("DELETE", f"/port/{UUID}"), (200, {}))
        self.assertFalse(os.path.exists(self.file(UUID)))
        code, body = self.agent.call("GET", f"/port/{UUID}")
        self.assertEqual(code, 404)
        self.assertIn(UUID, body["error"])

    def test_subnet_gateway_dns_from_the_body(self) -> None:
        b = dict(SAMPLE, plen=24, gateway="11.0.0.1", **{"dns-server": "11.0.0.2"})
        self.assertEqual(self.agent.call("POST", "/port", b)[0], 200)
        body = self.agent.call("GET", f"/port/{UUID}")[1]
        self.assertEqual((body["plen"], body["gateway"], body["dns-server"]),
                         (24, "11.0.0.1", "11.0.0.2"))

    def test_ipv6_fields(self) -> None:
        b = dict(SAMPLE, **{"ip6-address": "FD00::3"})
        self.assertEqual(self.agent.call("POST", "/port", b)[0], 200)
        body = self.agent.call("GET", f"/port/{UUID}")[1]
        self.assertEqual(body["v6-ip-address"], "fd00::3")

    def test_uppercase_uuids_are_normalised(self) -> None:
        b = dict(SAMPLE, id=UUID.upper())
        self.assertEqual(self.agent.call("POST", "/port", b)[0], 200)
        self.assertTrue(os.path.isfile(self.file(UUID)))
        self.assertEqual(self.agent.call("GET", f"/port/{UUID.upper()}")[0], 200)
        self.assertEqual(self.agent.call("DELETE", f"/port/{UUID.upper()}")[0], 200)
        self.assertIsNone(self.agent.table.get(UUID))

    def test_delete_unknown_is_200(self) -> None:
        self.assertEqual(self.agent.call("DELETE", f"/port/{port_body(9)['id']}"), (200, {}))

    def test_bad_uuid_in_path(self) -> None:
        code, body = self.agent.call("GET", "/port/not-a-uuid")
        self.assertEqual(code, 400)
        self.assertIn("not-a-uuid", body["error"])

    def test_array_all_or_nothing(self) -> None:
        good = [port_body(i) for i in range(1, 4)]
        bad = [*good, port_body(4, **{"mac-address": "zz"})]
        code, body = self.agent.call("POST", "/port", bad)
        self.assertEqual(code, 400)
        self.assertIn("[3].mac-address", body["error"])
        self.assertEqual(len(self.agent.table), 0)
        self.assertEqual(os.listdir(os.path.join(self.dir, "ports")), ["vm"])
        self.assertEqual(self.agent.call("POST", "/port", good), (200, {}))
        self.assertEqual(len(self.agent.table), 3)

    def test_array_with_duplicate_ids(self) -> None:
        code, body = self.agent.call("POST", "/port", [port_body(1), port_body(1)])
        self.assertEqual(code, 400)
        self.assertIn("twice", body["error"])
        self.assertEqual(len(self.agent.table), 0)

    def test_repost_same_vm_is_idempotent(self) -> None:
        self.agent.call("POST", "/port", SAMPLE)
        ids = self.agent.model.port_ids(UUID)
        self.assertEqual(self.agent.call("POST", "/port", SAMPLE), (200, {}))
        self.assertEqual(self.agent.model.port_ids(UUID), ids)

    def test_repost_other_vm_replaces(self) -> None:
        self.agent.call("POST", "/port", SAMPLE)
        moved = dict(SAMPLE, **{"instance-id": port_body(7)["instance-id"]})
        self.assertEqual(self.agent.call("POST", "/port", moved), (200, {}))
        self.assertEqual(self.agent.table.get(UUID).instance_id, moved["instance-id"])  # type: ignore[union-attr]
        with open(self.file(UUID)) as f:
            self.assertEqual(json.load(f)["instance-id"], moved["instance-id"])

    def test_body_errors(self) -> None:
        cases = [
            (b"", "body: empty"),
            (b"{not json", "invalid JSON"),
            (b"42", "expected a port object or an array"),
            (b"\xff\xfe", "invalid JSON"),
        ]
        for raw, text in cases:
            code, body = self.agent.call("POST", "/port", raw=raw)
            self.assertEqual(code, 400, raw)
            self.assertIn(text, body["error"])
        self.assertEqual(len(self.agent.table), 0)

    def test_oversized_body(self) -> None:
        from vrtwist.agent.rest import MAX_BODY

        code, body = self.agent.call("POST", "/port", raw=b" " * (MAX_BODY + 1))
        self.assertEqual(code, 413)
        self.assertIn("limit", body["error"])
        self.assertEqual(len(self.agent.table), 0)

    def test_unknown_path_and_method(self) -> None:
        self.assertEqual(self.agent.call("GET", "/nothing"), (404, {"error": "Unknown Request"}))
        code, body = self.agent.call("PUT", "/port")
        self.assertEqual(code, 405)
        self.assertIn("PUT", body["error"])

    def test_file_write_failure_is_500_and_nothing_added(self) -> None:
        self.agent.call("POST", "/port", port_body(1))
        ports = os.path.join(self.dir, "ports")
        shutil.rmtree(ports)
        with open(ports, "w") as f:  # the directory is now a file: every write fails
            f.write("x")
        code, body = self.agent.call("POST", "/port", SAMPLE)
        self.assertEqual(code, 500)
        self.assertIn("port file", body["error"])
        self.assertIsNone(self.agent.table.get(UUID))
        self.assertIsNone(self.agent.model.port_ids(UUID))
        names = {v.name for v in self.agent.datapath.tables.interfaces.values()}
        self.assertNotIn(SAMPLE["system-name"], names)  # programmed early, then taken out
        self.assertEqual(self.agent.sync.errors, {})
        # what was there before is untouched
        self.assertIsNotNone(self.agent.table.get(port_body(1)["id"]))

    def test_file_written_before_the_post_is_not_rewritten(self) -> None:
        # what vrouter-port-control does: the file first, then the POST
        b = port_body(7)
        self.agent.store.write(b["id"], port_from_json(b).to_file_json())
        path = self.agent.store.path_for(b["id"])
        before = os.stat(path)
        self.assertEqual(self.agent.call("POST", "/port", b), (200, {}))
        after = os.stat(path)
        self.assertEqual((before.st_ino, before.st_mtime_ns), (after.st_ino, after.st_mtime_ns))
        self.assertIsNotNone(self.agent.model.port_ids(b["id"]))
        # a different file under a new uuid is replaced
        c = port_body(10)
        self.agent.store.write(c["id"], port_from_json(dict(c, **{"ip-address": "10.9.9.9"}))
                               .to_file_json())
        self.assertEqual(self.agent.call("POST", "/port", c), (200, {}))
        with open(self.agent.store.path_for(c["id"])) as f:
            self.assertEqual(json.load(f)["ip-address"], c["ip-address"])

    def test_refused_port_leaves_a_file_it_did_not_write(self) -> None:
        from vrtwist.agent.dpstate import IdAllocator

        self.agent.model.labels = IdAllocator("MPLS label", 16, 16)  # no label left
        b = port_body(8)
        self.agent.store.write(b["id"], port_from_json(b).to_file_json())
        code, _body = self.agent.call("POST", "/port", b)
        self.assertEqual(code, 503)
        self.assertTrue(self.agent.store.exists(b["id"]))  # vrouter-port-control's file
        self.assertIsNone(self.agent.table.get(b["id"]))
        c = port_body(9)
        self.assertEqual(self.agent.call("POST", "/port", c)[0], 503)
        self.assertFalse(self.agent.store.exists(c["id"]))  # its own file is taken back

    def test_file_removal_failure_is_500_and_the_port_kept(self) -> None:
        self.agent.call("POST", "/port", SAMPLE)
        os.chmod(self.file(UUID), 0o644)
        ports = os.path.join(self.dir, "ports")
        os.rename(ports, ports + ".moved")
        os.symlink("/proc/self/status", ports)  # unlink inside it fails with ENOTDIR
        code, body = self.agent.call("DELETE", f"/port/{UUID}")
        self.assertEqual(code, 500)
        self.assertIn("port file", body["error"])
        self.assertIsNotNone(self.agent.table.get(UUID))
        self.assertIsNotNone(self.agent.model.port_ids(UUID))

    def test_missing_tap_accepted_and_checked_at_replay(self) -> None:
        """REST adds never look at the OS (the real agent's REST handler does not); the
        start-up replay does, and names the interface."""
        d = tempdir(self)
        agent = InMemoryAgent(d, tap_check=True, exists=lambda n: n == "tapok")
        self.assertEqual(agent.call("POST", "/port", SAMPLE), (200, {}))
        ok = port_body(3, **{"system-name": "tapok"})
        self.assertEqual(agent.call("POST", "/port", ok), (200, {}))
        self.assertEqual(agent.call("GET", f"/port/{SAMPLE['id']}")[1]["attached"], False)
        self.assertEqual(agent.call("GET", f"/port/{ok['id']}")[1]["attached"], True)
        # ESXi ports (type 2) have no local device: no "attached"
        b = port_body(2, type=2)
        self.assertEqual(agent.call("POST", "/port", b), (200, {}))
        self.assertNotIn("attached", agent.call("GET", f"/port/{b['id']}")[1])
        again = InMemoryAgent(d, tap_check=True, exists=lambda n: n == "tapok")
        added, skipped = again.table.replay()
        self.assertEqual(added, 2)
        self.assertEqual(len(skipped), 1)
        self.assertIn("tap93c2c386-6e", skipped[0])
        self.assertIn("does not exist", skipped[0])
        self.assertTrue(again.store.exists(SAMPLE["id"]))  # its file stays for a later start


class LinkStateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempdir(self)
        self.agent = InMemoryAgent(self.dir)

    def test_enable_disable_esxi_port(self) -> None:
        b = port_body(1, type=2)
        self.agent.call("POST", "/port", b)
        self.assertEqual(self.agent.call("PUT", f"/disable-port/{b['id']}"), (200, {}))
        with open(os.path.join(self.dir, "ports", b["id"])) as f:
            self.assertEqual(json.load(f)["link-state"], 0)
        self.assertEqual(self.agent.call("PUT", f"/enable-port/{b['id']}"), (200, {}))
        with open(os.path.join(self.dir, "ports", b["id"])) as f:
            self.assertEqual(json.load(f)["link-state"], 1)

    def test_unknown_and_wrong_type(self) -> None:
        code, body = self.agent.call("PUT", f"/enable-port/{UUID}")
        self.assertEqual(code, 404)
        self.agent.call("POST", "/port", SAMPLE)
        code, body = self.agent.call("PUT", f"/disable-port/{UUID}")
        self.assertEqual(code, 400)
        self.assertIn("type 2", body["error"])


class SyncPortsTests(SynchronousTestCase):
    def test_unconfirmed_ports_go_with_their_files(self) -> None:
        d = tempdir(self)
        agent = InMemoryAgent(d)
        a, b, ns = port_body(1), port_body(2), port_body(3, type=1)
        agent.call("POST", "/port", [a, b, ns])
        self.assertEqual(agent.call("POST", "/syncports"), (200, {}))
        agent.call("POST", "/port", a)  # only a is re-confirmed
        agent.clock.advance(59)
        self.assertEqual(len(agent.table), 3)
        agent.clock.advance(1)
        self.assertIsNotNone(agent.table.get(a["id"]))
        self.assertIsNone(agent.table.get(b["id"]))
        self.assertIsNotNone(agent.table.get(ns["id"]))  # namespace ports are exempt
        self.assertFalse(os.path.exists(os.path.join(d, "ports", b["id"])))
        self.assertTrue(os.path.exists(os.path.join(d, "ports", a["id"])))
        self.assertIsNone(agent.model.port_ids(b["id"]))

    def test_second_sync_restarts_the_timer(self) -> None:
        agent = InMemoryAgent(tempdir(self))
        agent.call("POST", "/port", port_body(1))
        agent.call("POST", "/syncports")
        agent.clock.advance(50)
        agent.call("POST", "/syncports")
        agent.clock.advance(50)
        self.assertEqual(len(agent.table), 1)
        agent.clock.advance(10)
        self.assertEqual(len(agent.table), 0)


class GatewayTests(SynchronousTestCase):
    BODY: ClassVar[list[dict[str, Any]]] = [{"interface": "vgw1", "routing-instance": "default-domain:admin:public:public",
             "subnets": [{"ip-address": "10.1.1.0", "prefix-len": 24}],
             "routes": [{"ip-address": "0.0.0.0", "prefix-len": 0}]}]

    def test_add_delete(self) -> None:
        agent = InMemoryAgent(tempdir(self))
        dp = agent.datapath
        before = (set(dp.tables.interfaces), set(dp.tables.nexthops))
        self.assertEqual(agent.call("POST", "/gateway", self.BODY), (200, {}))
        self.assertIn("vgw1", agent.api.gateways)
        vgw = [v for v in dp.tables.interfaces.values() if v.name == "vgw1"]
        self.assertEqual(len(vgw), 1)
        self.assertEqual(vgw[0].type, 5)  # VIF_TYPE_GATEWAY
        vrf = vgw[0].vrf
        self.assertGreaterEqual(vrf, 1)
        self.assertEqual(len(dp.routes.vrfs[(2, vrf)]), 1)  # 0.0.0.0/0 in the public VRF
        self.assertEqual(len(dp.routes.vrfs[(2, 0)]), 1)  # 10.1.1.0/24 in the fabric VRF
        self.assertEqual(agent.sync.errors, {})
        # a re-POST replaces it
        self.assertEqual(agent.call("POST", "/gateway", self.BODY), (200, {}))
        self.assertEqual(len([v for v in dp.tables.interfaces.values()
                              if v.name == "vgw1"]), 1)
        self.assertEqual(agent.call("DELETE", "/gateway", [{"interface": "vgw1"}]), (200, {}))
        self.assertEqual(agent.api.gateways, {})
        self.assertEqual((set(dp.tables.interfaces), set(dp.tables.nexthops)), before)
        self.assertEqual(sum(len(t) for t in dp.routes.vrfs.values()), 0)
        self.assertEqual(agent.sync.errors, {})
        m = agent.model
        self.assertEqual((len(m.vifs), len(m.nhs), len(m.vrf_ids)), (0, 0, 0))

    def test_errors(self) -> None:
        agent = InMemoryAgent(tempdir(self))
        code, body = agent.call("POST", "/gateway", self.BODY[0])
        self.assertEqual(code, 400)
        self.assertIn("array", body["error"])
        bad = [dict(self.BODY[0], subnets=[{"ip-address": "10.1.1.x", "prefix-len": 24}])]
        code, body = agent.call("POST", "/gateway", bad)
        self.assertEqual(code, 400)
        self.assertIn("subnets[0]", body["error"])
        bad = [{k: v for k, v in self.BODY[0].items() if k != "routing-instance"}]
        code, body = agent.call("POST", "/gateway", bad)
        self.assertIn("routing-instance: missing", body["error"])
        code, body = agent.call("DELETE", "/gateway", [{"name": "x"}])
        self.assertEqual(code, 400)
        self.assertEqual(agent.api.gateways, {})


class VmApiTests(SynchronousTestCase):
    VM: ClassVar[dict[str, Any]] = {"vm-uuid": "11111111-2222-3333-4444-555555555555", "host-ifname": "veth1",
          "vm-name": "pod-a", "vn-uuid": SAMPLE["vn-id"],
          "vmi-uuid": "aaaaaaaa-2222-3333-4444-555555555555", "vm-namespace": "ns1"}

    def test_lifecycle(self) -> None:
        d = tempdir(self)
        agent = InMemoryAgent(d)
        self.assertEqual(agent.call("POST", "/vm", self.VM), (200, {}))
        path = os.path.join(d, "ports", "vm", "pod-a", self.VM["vmi-uuid"])
        self.assertTrue(os.path.isfile(path))
        code, body = agent.call("GET", f"/vm/{self.VM['vm-uuid']}")
        self.assertEqual(code, 200)
        self.assertEqual(body[0]["id"], self.VM["vmi-uuid"])
        code, body = agent.call("GET", f"/vm/{self.VM['vm-uuid']}/{self.VM['vmi-uuid']}")
        self.assertEqual(len(body), 1)
        code, body = agent.call("GET", "/vm-cfg/pod-a")
        self.assertEqual(code, 200)
        self.assertEqual(body[0]["vm-uuid"], self.VM["vm-uuid"])
        self.assertEqual(body[0]["sub-interface"], False)
        self.assertEqual(agent.call("GET", "/vm-cfg/nobody")[0], 404)
        self.assertEqual(agent.call("DELETE", f"/vm/{self.VM['vm-uuid']}"), (200, {}))
        self.assertFalse(os.path.exists(path))  # the real agent's name/uuid bug is fixed
        self.assertEqual(agent.call("GET", f"/vm/{self.VM['vm-uuid']}")[0], 404)

    def test_errors(self) -> None:
        agent = InMemoryAgent(tempdir(self))
        for field, value, text in [("vm-uuid", "x", "vm-uuid"),
                                   ("vm-name", "../x", "vm-name"),
                                   ("host-ifname", "a b", "host-ifname"),
                                   ("vn-uuid", None, "vn-uuid")]:
            code, body = agent.call("POST", "/vm", dict(self.VM, **{field: value}))
            self.assertEqual(code, 400, field)
            self.assertIn(text, body["error"])
        self.assertEqual(agent.call("POST", "/vm", [self.VM])[0], 400)
        self.assertEqual(len(agent.table), 0)


def _tree(root: str) -> dict[str, bytes]:
    """Every file under the state directory with its bytes: what must not change."""
    out: dict[str, bytes] = {}
    for d, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
    return out


class HostileBodyTests(SynchronousTestCase):
    """Deep nesting and strings no field can hold: a 400 naming the field, nothing changed."""

    BAD: ClassVar[list[str]] = ["a\x00b", "\ud800", "x\udfff", "tab\there", "\x1b[2J", "del\x7f"]

    def setUp(self) -> None:
        self.dir = tempdir(self)
        self.agent = InMemoryAgent(self.dir)
        # state to keep: one port and one VM port, with their files
        self.assertEqual(self.agent.call("POST", "/port", port_body(1))[0], 200)
        self.assertEqual(self.agent.call("POST", "/vm", VmApiTests.VM)[0], 200)
        self.before = _tree(self.dir)
        self.assertEqual(len(self.before), 2)
        self.ports = sorted(p.id for p in self.agent.table.ports())

    def assertUnchanged(self) -> None:
        self.assertEqual(_tree(self.dir), self.before)
        self.assertEqual(sorted(p.id for p in self.agent.table.ports()), self.ports)
        # and the API still serves
        self.assertEqual(self.agent.call("GET", f"/port/{port_body(1)['id']}")[0], 200)

    def refused(self, method: str, path: str, body: object = None,
                raw: bytes | None = None) -> str:
        code, answer = self.agent.call(method, path, body, raw=raw)
        self.assertEqual(code, 400, (method, path, answer))
        self.assertIsInstance(answer, dict)
        error: str = answer["error"]
        return error

    def test_deep_nesting_every_body(self) -> None:
        for opener, closer in ((b"[", b"]"), (b'{"a":', b"}")):
            raw = opener * 100_000 + b"1" + closer * 100_000
            for method, path in (("POST", "/port"), ("POST", "/vm"), ("POST", "/gateway"),
                                 ("DELETE", "/gateway")):
                error = self.refused(method, path, raw=raw)
                self.assertIn("body: JSON nested 100000 deep", error)
        # brackets inside strings are not nesting; a legal body is not refused for them
        error = self.refused("POST", "/port", port_body(2, **{"vm-project-id": "[{" * 50}))
        self.assertTrue(error.startswith("vm-project-id: "), error)  # not for depth
        self.assertUnchanged()

    def test_bad_strings_in_every_port_field(self) -> None:
        fields = [k for k, v in port_body(3).items() if isinstance(v, str)]
        self.assertGreater(len(fields), 5)
        for field in fields:
            for bad in self.BAD:
                error = self.refused("POST", "/port", port_body(3, **{field: bad}))
                self.assertTrue(error.startswith(field + ": U+"), (field, error))
                # inside an array the element is named too
                error = self.refused("POST", "/port", [port_body(4), port_body(3, **{field: bad})])
                self.assertTrue(error.startswith(f"[1].{field}: "), error)
        self.assertUnchanged()

    def test_bad_strings_in_every_vm_field(self) -> None:
        for field in VmApiTests.VM:
            for bad in self.BAD:
                error = self.refused("POST", "/vm", dict(VmApiTests.VM, **{field: bad}))
                self.assertTrue(error.startswith(field + ": "), (field, error))
        # a lone surrogate written as an escape by hand, and a bad key
        raw = b'{"vm-name": "\\ud800", "vm-uuid": "x"}'
        self.assertTrue(self.refused("POST", "/vm", raw=raw).startswith("vm-name: U+D800"))
        self.assertIn("key", self.refused("POST", "/vm", {"vm\x00name": "a"}))
        self.assertIn("interface", self.refused("DELETE", "/gateway", [{"interface": "\x00"}]))
        self.assertUnchanged()

    def test_bad_vm_name_in_the_path(self) -> None:
        for quoted in ("a%00b", "a%1bb"):
            self.assertIn("vm-name", self.refused("GET", f"/vm-cfg/{quoted}"))
        self.assertEqual(self.agent.call("GET", "/vm-cfg/pod-a")[0], 200)
        self.assertUnchanged()

    def test_not_utf8(self) -> None:
        raw = json.dumps(port_body(5)).encode("utf-16")
        self.assertIn("not UTF-8", self.refused("POST", "/port", raw=raw))
        self.assertUnchanged()

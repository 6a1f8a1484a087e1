"""Port files are written byte for byte as the real agent's writer writes them.

The facts restate, in this project's words, what tf-controller's
``src/vnsw/agent/port_ipc/port_ipc_handler.cc`` does when it persists a port
(``MakeVmiUuidJson``/``MakeVmVnPortJson`` with the meta information, rapidjson's
``PrettyWriter``): member order, the text of empty values, ``author`` = the program's
argv[0], ``time`` = microseconds since the epoch printed as a boost duration.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.agent.helpers import SAMPLE, tempdir
from vrtwist.agent.model import NIL_UUID, agent_time, port_from_json, program_name
from vrtwist.agent.store import agent_json
from vrtwist.agent.testing import InMemoryAgent

#: The real writer's members, in its order, for a port of type 0 or 1.
REAL_ORDER = [
    "id", "instance-id", "display-name", "ip-address", "ip6-address", "vn-id",
    "vm-project-id", "mac-address", "system-name", "type", "rx-vlan-id", "tx-vlan-id",
    "vhostuser-mode", "author", "time",
]
#: An ESXi port (type 2) has ``link-state`` between ``vhostuser-mode`` and ``author``.
REAL_ORDER_ESXI = [*REAL_ORDER[:13], "link-state", *REAL_ORDER[13:]]
#: The real writer's members of a ``/vm`` (vm + vn) file, in its order.
REAL_VM_ORDER = ["vm-uuid", "vn-uuid", "vmi-uuid", "vm-id", "vm-name", "host-ifname",
                 "vm-ifname", "vm-namespace", "author", "time"]

#: A port file as a real agent lays it out (own values): four-space indent, ``": "``,
#: no newline at the end; ``::`` for no IPv6 address, the nil uuid for no project.
REAL_FILE = """{
    "id": "5d7a1c52-0000-4000-8000-00000000a001",
    "instance-id": "5d7a1c52-0000-4000-8000-00000000b001",
    "display-name": "web-1",
    "ip-address": "10.20.0.5",
    "ip6-address": "::",
    "vn-id": "5d7a1c52-0000-4000-8000-00000000c001",
    "vm-project-id": "00000000-0000-0000-0000-000000000000",
    "mac-address": "02:5d:7a:1c:52:01",
    "system-name": "tap5d7a1c52-00",
    "type": 0,
    "rx-vlan-id": -1,
    "tx-vlan-id": -1,
    "vhostuser-mode": 0,
    "author": "AUTHOR",
    "time": "TIME"
}"""


def _posted(real: dict[str, object]) -> dict[str, object]:
    """What a client POSTs for the port of REAL_FILE: no project, no IPv6, no vhost mode."""
    body = {k: v for k, v in real.items() if k not in ("author", "time", "vhostuser-mode")}
    body["vm-project-id"] = ""
    body["ip6-address"] = None
    return body


class AgentTimeTests(SynchronousTestCase):
    def test_boost_duration_text(self) -> None:
        self.assertEqual(agent_time(0), "00:00:00")
        self.assertEqual(agent_time(59.25), "00:00:59.250000")
        # 2025-12-07 17:20:00.5 UTC: 490313 hours since the epoch, no wrap at 24
        self.assertEqual(agent_time(1765128000.5), "490313:20:00.500000")
        self.assertEqual(agent_time(1765128000.000001), "490313:20:00.000001")

    def test_author_is_argv0(self) -> None:
        self.assertEqual(program_name(), sys.argv[0])


class PortFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempdir(self)
        self.agent = InMemoryAgent(self.dir)
        self.real = json.loads(REAL_FILE)

    def _file(self, uuid: str) -> bytes:
        with open(os.path.join(self.dir, "ports", uuid), "rb") as f:
            return f.read()

    def test_written_as_the_real_agent_writes(self) -> None:
        self.assertEqual(self.agent.call("POST", "/port", _posted(self.real)), (200, {}))
        data = self._file(self.real["id"])
        got = json.loads(data)
        self.assertEqual(list(got), REAL_ORDER)
        expected = REAL_FILE.replace('"AUTHOR"', json.dumps(program_name())).replace(
            '"TIME"', json.dumps(got["time"]))
        self.assertEqual(data.decode(), expected)
        self.assertRegex(got["time"], r"^\d{6,}:[0-5]\d:[0-5]\d(\.\d{6})?$")

    def test_esxi_port_has_link_state(self) -> None:
        body = dict(_posted(self.real), type=2, **{"system-name": "5d7a1c52-0000-4000-8000-0000000000e1"})
        self.assertEqual(self.agent.call("POST", "/port", body), (200, {}))
        got = json.loads(self._file(self.real["id"]))
        self.assertEqual(list(got), REAL_ORDER_ESXI)
        self.assertEqual(got["link-state"], 0)  # the real default: an ESXi port starts down
        self.assertEqual(self.agent.call("PUT", f"/enable-port/{self.real['id']}"), (200, {}))
        got = json.loads(self._file(self.real["id"]))
        self.assertEqual((list(got), got["link-state"]), (REAL_ORDER_ESXI, 1))

    def test_uuid_system_name_only_for_esxi(self) -> None:
        body = dict(_posted(self.real), **{"system-name": "5d7a1c52-0000-4000-8000-0000000000e1"})
        code, got = self.agent.call("POST", "/port", body)
        self.assertEqual(code, 400)
        self.assertIn("system-name:", got["error"])
        self.assertEqual(len(self.agent.table), 0)  # nothing added, no file
        self.assertFalse(os.path.exists(os.path.join(self.dir, "ports", self.real["id"])))
        code, got = self.agent.call("POST", "/port", dict(body, type=2, **{"system-name": "x" * 36}))
        self.assertEqual(code, 400)
        self.assertIn("or a uuid", got["error"])

    def test_vrtwist_ipam_members_follow_the_real_ones(self) -> None:
        body = dict(_posted(self.real), plen=24, gateway="10.20.0.1")
        self.assertEqual(self.agent.call("POST", "/port", body), (200, {}))
        got = json.loads(self._file(self.real["id"]))
        self.assertEqual(list(got), [*REAL_ORDER, "plen", "gateway"])

    def test_vm_file(self) -> None:
        vm = {"vm-uuid": "5d7a1c52-0000-4000-8000-00000000b002",
              "vmi-uuid": "5d7a1c52-0000-4000-8000-00000000a002",
              "vn-uuid": "5d7a1c52-0000-4000-8000-00000000c001", "vm-name": "pod-a",
              "host-ifname": "vethpod-a"}
        self.assertEqual(self.agent.call("POST", "/vm", vm), (200, {}))
        path = os.path.join(self.dir, "ports", "vm", "pod-a", vm["vmi-uuid"])
        with open(path, "rb") as f:
            data = f.read()
        got = json.loads(data)
        self.assertEqual(list(got), REAL_VM_ORDER)
        self.assertEqual((got["author"], got["vm-ifname"]), (program_name(), ""))
        self.assertFalse(data.endswith(b"\n"))

    def test_replay_of_real_files_with_their_spellings(self) -> None:
        """Files from the real agent ("::", nil project) and the real script (nulls) load."""
        real = json.loads(REAL_FILE.replace('"AUTHOR"', '"/usr/bin/contrail-vrouter-agent"')
                          .replace('"TIME"', '"490313:20:00.500000"'))
        script = dict(SAMPLE, **{"ip6-address": None, "rx-vlan-id": None, "tx-vlan-id": None})
        ports = os.path.join(self.dir, "ports")
        for body in (real, script):
            with open(os.path.join(ports, str(body["id"])), "w") as f:
                json.dump(body, f)
        fresh = InMemoryAgent(self.dir)
        self.assertEqual(fresh.table.replay(), (2, []))
        p = fresh.table.get(str(real["id"]))
        assert p is not None
        self.assertEqual((p.ip6_address, p.vm_project_id, p.author),
                         (None, NIL_UUID, "/usr/bin/contrail-vrouter-agent"))
        q = fresh.table.get(SAMPLE["id"])
        assert q is not None
        self.assertEqual((q.ip6_address, q.rx_vlan_id, q.tx_vlan_id), (None, -1, -1))
        # replay does not rewrite them
        with open(os.path.join(ports, str(real["id"]))) as f:
            self.assertEqual(json.load(f), real)

    def test_rewrite_round_trip_is_same_port(self) -> None:
        port = port_from_json(_posted(self.real))
        again = port_from_json(json.loads(agent_json(port.to_file_json())))
        self.assertTrue(again.same_config(port))


class SerialiserTests(SynchronousTestCase):
    def test_rapidjson_pretty_style(self) -> None:
        out = agent_json({"a": "x\u001fy", "b": "caf\u00e9", "c": "back\\u001f", "d": 1})
        self.assertEqual(
            out.decode(),
            '{\n    "a": "x\\u001Fy",\n    "b": "caf\u00e9",\n    "c": "back\\\\u001f",\n'
            '    "d": 1\n}',
        )
        self.assertEqual(json.loads(out)["c"], "back\\u001f")  # a literal backslash kept

"""Shared fixtures of the agent tests: sample port bodies and an in-memory agent."""

from __future__ import annotations

import json
import uuid as _uuid
from typing import Any

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock

from vrtwist.agent.dpstate import DatapathModel
from vrtwist.agent.ksync_sync import DatapathSync, LocalChannel
from vrtwist.agent.ports import PortTable
from vrtwist.agent.rest import PortApi
from vrtwist.agent.store import PortStore
from vrtwist.datapath.dispatcher import Datapath

#: The real agent's test file src/vnsw/agent/port_ipc/test/93c2c386-...
SAMPLE: dict[str, Any] = {
    "ip-address": "11.0.0.3", "tx-vlan-id": -1, "display-name": "vm1",
    "id": "93c2c386-6e79-485e-bfa4-b9daa713133b",
    "instance-id": "69ce06bd-6d1e-43d0-8e48-a30043a49ed8", "ip6-address": "None",
    "rx-vlan-id": -1, "system-name": "tap93c2c386-6e",
    "vn-id": "56297dc0-5553-4e6a-b87f-8423afc21e9d",
    "vm-project-id": "9970147c-33b1-4bf7-8944-8968e708d430", "type": 0,
    "mac-address": "02:93:c2:c3:86:6e",
}
VN = SAMPLE["vn-id"]


def port_body(n: int, vn: str = VN, **over: Any) -> dict[str, Any]:
    """A distinct valid port body number ``n`` (1-based) in virtual network ``vn``."""
    pid = str(_uuid.UUID(int=(0x1234 << 96) | n))
    body = dict(SAMPLE)
    body.update({
        "id": pid, "instance-id": str(_uuid.UUID(int=(0x5678 << 96) | n)),
        "ip-address": f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}",
        "system-name": f"tapv{n}", "display-name": f"vm{n}",
        "mac-address": "02:00:%02x:%02x:%02x:%02x" % ((n >> 24) & 255, (n >> 16) & 255,
                                                       (n >> 8) & 255, n & 255),
        "vn-id": vn,
    })
    body.update(over)
    return body


class InMemoryAgent:
    """Port table + REST resource + model + sync against the real datapath tables."""

    def __init__(self, state_dir: str, *, tap_check: bool = False,
                 datapath: Datapath | None = None, exists: Any = None) -> None:
        self.clock = MemoryReactorClock()
        self.store = PortStore(state_dir)
        kwargs = {"exists": exists} if exists is not None else {}
        self.table = PortTable(self.store, self.clock, tap_check=tap_check, **kwargs)
        self.model = DatapathModel(os_index=lambda name: 0)
        self.datapath = datapath if datapath is not None else Datapath()
        self.sync = DatapathSync(self.model)
        self.sync.attach(LocalChannel(self.datapath))
        self.table.observe(self.model)
        self.api = PortApi(self.table, gateways=self.model)
        self.http: Any = StubTreq(self.api.app.resource())  # treq.testing is untyped

    def call(self, method: str, path: str, body: Any = None,
             raw: bytes | None = None) -> tuple[int, Any]:
        """One request through StubTreq; returns (status, parsed JSON body)."""
        data = raw if raw is not None else (json.dumps(body).encode()
                                            if body is not None else None)
        results: list[Any] = []
        d = self.http.request(method, "http://agent" + path, data=data)
        d.addCallback(lambda r: self.http.content(r).addCallback(
            lambda b: results.append((r.code, json.loads(b) if b else None))))
        d.addErrback(results.append)
        self.http.flush()
        assert results, "request did not complete"
        if not isinstance(results[0], tuple):
            results[0].raiseException()
        out: tuple[int, Any] = results[0]
        return out


def tempdir(case: Any) -> str:
    """A short private directory under /tmp (AF_UNIX paths are limited to 107 bytes),
    removed when the test ends."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="vra-")
    case.addCleanup(shutil.rmtree, d, True)
    return d

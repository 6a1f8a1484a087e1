"""Shared fixtures of the agent tests: sample port bodies and a private directory.

The in-memory agent itself ships with the package: ``vrtwist.agent.testing``.
"""

from __future__ import annotations

import uuid as _uuid
from typing import Any

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


def tempdir(case: Any) -> str:
    """A short private directory under /tmp (AF_UNIX paths are limited to 107 bytes),
    removed when the test ends."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="vra-")
    case.addCleanup(shutil.rmtree, d, True)
    return d

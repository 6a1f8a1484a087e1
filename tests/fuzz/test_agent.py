"""The agent's port API input: REST request bodies, the JSON port/VM/gateway models and
the port files replayed at start.

Contracts: the REST API answers every body with a JSON document and a 2xx/4xx status,
never a 500, and a refused request adds nothing; the model functions raise only
:class:`PortValidationError`; replaying any port file loads it or skips it with a
reason, never raising.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.agent.helpers import SAMPLE, port_body
from tests.fuzz._harness import fuzz_case, mutated, scratch_dir, target
from vrtwist.agent.model import (
    PortValidationError,
    gateways_from_json,
    port_from_json,
    vm_port_from_json,
)
from vrtwist.agent.ports import PortTable
from vrtwist.agent.store import PortStore
from vrtwist.agent.testing import InMemoryAgent

_VM = {"vm-uuid": SAMPLE["instance-id"], "vmi-uuid": SAMPLE["id"], "vm-name": "vm1",
       "vn-uuid": SAMPLE["vn-id"], "mac": SAMPLE["mac-address"], "host-ifname": "tap1"}  # fmt: skip
_GW = [{"interface": "gw0", "routing-instance": "default-domain:p:vn:vn",
        "subnets": [{"ip-address": "10.1.0.0", "prefix-len": 24}],
        "routes": [{"ip-address": "0.0.0.0", "prefix-len": 0}]}]  # fmt: skip
BODIES = [json.dumps(b).encode() for b in (SAMPLE, port_body(7), [port_body(8), port_body(9)],
                                           _VM, _GW)]  # fmt: skip
# nesting deeper than the interpreter's recursion limit, and long numbers
BODIES += [b"1" + b"0" * 5000, b'"\\ud800"', b"-Infinity", b'{"id": 1e999}']
# nesting deeper than the interpreter's recursion limit: REST bodies and port files
DEEP = [b"[" * 5000, b'{"a":' * 3000]

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=20,
)
_FIELDS = sorted(SAMPLE) + sorted(_VM)


@st.composite
def _models(draw: st.DrawFn) -> Any:
    """Valid bodies with some fields replaced, dropped or added, and arbitrary JSON."""
    if draw(st.booleans()):
        return draw(_JSON)
    body: dict[str, Any] = dict(draw(st.sampled_from([SAMPLE, port_body(3), _VM])))
    for _ in range(draw(st.integers(1, 4))):
        k = draw(st.sampled_from(_FIELDS))
        if draw(st.booleans()):
            body[k] = draw(_JSON)
        else:
            body.pop(k, None)
    return body


@target("agent", _models(), (PortValidationError,))
def port_model(body: Any) -> None:
    port = port_from_json(body)
    port_from_json(port.to_file_json())  # what was accepted is written and read back the same


@target("agent", _models(), (PortValidationError,))
def vm_model(body: Any) -> None:
    vm_port_from_json(body)


@st.composite
def _gateways(draw: st.DrawFn) -> Any:
    """The gateway array with fields of its objects replaced or dropped, or any JSON."""
    if draw(st.booleans()):
        return draw(_JSON)
    out = []
    for _ in range(draw(st.integers(0, 3))):
        gw: dict[str, Any] = dict(_GW[0])
        k = draw(st.sampled_from(sorted(gw)))
        if draw(st.booleans()):
            gw[k] = draw(_JSON)
        else:
            del gw[k]
        out.append(gw)
    return out


@target("agent", _gateways(), (PortValidationError,))
def gateway_model(body: Any) -> None:
    gateways_from_json(body)


_AGENT: list[InMemoryAgent] = []


def _agent() -> InMemoryAgent:
    if not _AGENT:
        d = os.path.join(scratch_dir(), "agent")
        os.makedirs(d)
        _AGENT.append(InMemoryAgent(d))
    return _AGENT[0]


@target("agent", st.tuples(st.sampled_from(["/port", "/vm", "/gateway"]),
                           mutated(BODIES + DEEP, 70000)))  # fmt: skip
def rest_body(req: tuple[str, bytes]) -> None:
    path, raw = req
    agent = _agent()
    before = len(agent.table)
    code, doc = agent.call("POST", path, raw=raw)
    assert code < 500, "POST %s answered %d: %r" % (path, code, doc)
    if code >= 400:
        assert len(agent.table) == before, "a refused request changed the port table"
    for port in agent.table.ports():
        agent.call("DELETE", "/port/" + port.id)


_STATE: list[str] = []


@target("agent", mutated(BODIES + DEEP, 70000))
def port_file_replay(raw: bytes) -> None:
    if not _STATE:
        _STATE.append(os.path.join(scratch_dir(), "replay"))
    state = _STATE[0]
    shutil.rmtree(os.path.join(state, "ports"), ignore_errors=True)
    os.makedirs(os.path.join(state, "ports"))
    with open(os.path.join(state, "ports", SAMPLE["id"]), "wb") as f:
        f.write(raw)
    table = PortTable(PortStore(state), MemoryReactorClock(), tap_check=False)
    added, skipped = table.replay()
    assert added + len(skipped) == 1, (added, skipped)


Fuzz = fuzz_case("agent")


class FoundByFuzzing(SynchronousTestCase):
    def test_deeply_nested_port_file_is_skipped_not_fatal(self) -> None:
        """json nests by recursion: "[[[[..." raised RecursionError out of the replay,
        so one bad file stopped every later port from loading."""
        state = tempfile.mkdtemp(prefix="pv-fuzz-")
        self.addCleanup(shutil.rmtree, state, True)
        ports = os.path.join(state, "ports")
        os.makedirs(ports)
        good = port_body(5)
        with open(os.path.join(ports, good["id"]), "w") as f:
            json.dump(good, f)
        with open(os.path.join(ports, SAMPLE["id"]), "wb") as f:
            f.write(b"[" * 20000)
        table = PortTable(PortStore(state), MemoryReactorClock(), tap_check=False)
        added, skipped = table.replay()
        self.assertEqual(added, 1)
        self.assertEqual([p.id for p in table.ports()], [good["id"]])
        self.assertEqual(len(skipped), 1)
        self.assertIn("nested deeper", skipped[0])
        self.assertTrue(os.path.exists(os.path.join(ports, SAMPLE["id"])))  # left on disk

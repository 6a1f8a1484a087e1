"""An in-memory agent for tests of anything that talks to the agent's REST port API or
watches what it programs (as treq ships ``treq.testing``).

:class:`InMemoryAgent` wires the real pieces (port store in a directory, port table,
datapath model, the ksync sync to a real in-process ``Datapath``, the REST resource)
together without a socket or a reactor: requests go through ``treq.testing.StubTreq``
(which connects client and resource with ``twisted.test.iosim``) and timers run on a
``MemoryReactorClock`` the test advances.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from vrtwist.agent.dpstate import DatapathModel
from vrtwist.agent.ksync_sync import DatapathSync, LocalChannel
from vrtwist.agent.ports import PortTable
from vrtwist.agent.rest import PortApi
from vrtwist.agent.store import PortStore
from vrtwist.datapath.dispatcher import Datapath

__all__ = ["InMemoryAgent"]


class InMemoryAgent:
    """Port table + REST resource + model + sync against the real datapath tables.

    ``state_dir`` holds the port files (as ``--state-dir`` does); ``tap_check`` and
    ``exists`` are the port table's (whether a port waits for its tap device, and how its
    existence is checked); ``datapath`` lets two agents share one datapath.
    """

    def __init__(self, state_dir: str, *, tap_check: bool = False,
                 datapath: Datapath | None = None,
                 exists: Callable[[str], bool] | None = None) -> None:
        self.clock = MemoryReactorClock()
        self.store = PortStore(state_dir)
        if exists is None:
            self.table = PortTable(self.store, self.clock, tap_check=tap_check)
        else:
            self.table = PortTable(self.store, self.clock, tap_check=tap_check, exists=exists)
        self.model = DatapathModel(os_index=lambda name: 0)
        self.datapath = datapath if datapath is not None else Datapath()
        self.sync = DatapathSync(self.model)
        self.sync.attach(LocalChannel(self.datapath))
        self.table.observe(self.model)
        self.api = PortApi(self.table, gateways=self.model)
        # StubTreq sets treq's functions on itself at run time: mypy cannot see them
        self.http: Any = StubTreq(self.api.app.resource())

    def call(self, method: str, path: str, body: Any = None,
             raw: bytes | None = None) -> tuple[int, Any]:
        """One request through ``StubTreq``: ``body`` is sent as JSON (or ``raw`` as is);
        returns the status and the parsed JSON body (``None`` if empty). An error inside
        the request is raised here; a request that does not complete is an
        ``AssertionError``."""
        data = raw if raw is not None else (json.dumps(body).encode()
                                            if body is not None else None)
        results: list[tuple[int, Any] | Failure] = []
        d = self.http.request(method, "http://agent" + path, data=data)
        d.addCallback(lambda r: self.http.content(r).addCallback(
            lambda b: results.append((r.code, json.loads(b) if b else None))))
        d.addErrback(results.append)
        self.http.flush()
        if not results:
            raise AssertionError(f"{method} {path} did not complete")
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        assert not isinstance(result, Failure)
        return result

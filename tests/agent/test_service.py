"""The agent service started and stopped in process on the real reactor: nothing left
behind (no listening port, no connection, no timer)."""

from __future__ import annotations

import json
import os

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests.agent.helpers import port_body, tempdir
from vrtwist.agent import tap


class ServiceLifecycleTests(TestCase):
    timeout = 60

    async def test_start_serve_stop(self) -> None:
        d = tempdir(self)
        opts = tap.Options()
        opts.parseOptions(["--run-dir", d, "--state-dir", d, "--rest",
                           "tcp:0:interface=127.0.0.1", "--no-tap-check",
                           "--flow-entries", "64", "--bridge-entries", "64"])
        top = tap.makeService(opts)
        top.privilegedStartService()
        top.startService()
        agent = top.getServiceNamed("agent")
        await agent.ready
        port = agent.rest_port.getHost().port
        pool = HTTPConnectionPool(reactor, persistent=False)
        b = port_body(1)
        r = await treq.post(f"http://127.0.0.1:{port}/port", data=json.dumps(b).encode(),
                            pool=pool)
        self.assertEqual((r.code, await treq.json_content(r)), (200, {}))
        # the answer came once the datapath had the port
        datapath = top.getServiceNamed("vrouter-dp").datapath
        self.assertIn("tapv1", {v.name for v in datapath.tables.interfaces.values()})
        self.assertTrue(os.path.isfile(os.path.join(d, "ports", b["id"])))
        await top.stopService()


"""The REST port API over real TCP with hundreds of half-sent requests: it keeps serving."""

from __future__ import annotations

import json
import os
import socket

import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests.agent.helpers import port_body
from tests.agent.test_service import start_agent
from vrtwist.bounds import HTTP_LIMITS

FLOOD = 400


class HalfSentRequestTests(TestCase):
    timeout = 120

    async def test_hundreds_of_half_sent_requests(self) -> None:
        top, agent = await start_agent(self)
        self.addCleanup(top.stopService)
        port = agent.rest_port.getHost().port
        pool = HTTPConnectionPool(reactor, persistent=False)
        first = port_body(1)
        r = await treq.post(f"http://127.0.0.1:{port}/port", data=json.dumps(first).encode(),
                            pool=pool)  # fmt: skip
        self.assertEqual(r.code, 200)
        await treq.content(r)

        def flood() -> list[socket.socket]:
            socks = []
            for i in range(FLOOD):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                # headers promise a body that never comes (or the headers never end)
                s.sendall(b"POST /port HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
                          if i % 2 else b"POST /port HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # fmt: skip
                socks.append(s)
            return socks

        socks = await deferToThread(flood)
        def close_all() -> None:
            for s in socks:
                s.close()

        self.addCleanup(close_all)
        # real clients still get served, every time
        for n in range(2, 6):
            b = port_body(n)
            r = await treq.post(f"http://127.0.0.1:{port}/port", data=json.dumps(b).encode(),
                                pool=pool)  # fmt: skip
            self.assertEqual((r.code, await treq.json_content(r)), (200, {}))
            r = await treq.get(f"http://127.0.0.1:{port}/port/{b['id']}", pool=pool)
            self.assertEqual(r.code, 200)
            await treq.content(r)

        def closed_count() -> int:
            n = 0
            for s in socks:
                s.setblocking(False)
                try:
                    n += s.recv(1) == b""
                except BlockingIOError:
                    pass
                except OSError:
                    n += 1
            return n

        # the stalest half-sent requests made room; no more than the cap are held
        self.assertGreaterEqual(await deferToThread(closed_count),
                                FLOOD - HTTP_LIMITS.max_connections)  # fmt: skip
        # nothing was lost: the port from before the flood and its file are there
        r = await treq.get(f"http://127.0.0.1:{port}/port/{first['id']}", pool=pool)
        self.assertEqual(r.code, 200)
        self.assertEqual((await treq.json_content(r))["id"], first["id"])
        state = agent.table.store.ports_dir
        self.assertEqual(len([f for f in os.listdir(state) if f.count("-") == 4]), 5)

"""REST soak: ``twistd vrouter`` (embedded datapath), 200 concurrent port adds and deletes,
the agent SIGKILLed in the middle of them and started again on the same state directory.

Every add the agent acknowledged (200) and did not later acknowledge deleting is there
after the restart; every acknowledged delete stays deleted. Then, on the restarted agent,
rounds of 200 concurrent adds + deletes leave no fd behind and RSS within
:data:`RSS_SLACK` of the first round.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.agent.helpers import port_body, tempdir
from tests.agent.procs import Twistd, agent_args
from tests.agent.test_e2e import http_call
from tests.soak._proc import RSS_SLACK, fds, quiet_fds, raise_fd_limit, rss, settle

CONCURRENT = int(os.environ.get("VRTWIST_SOAK_REST_CONCURRENT", "200"))
#: acknowledged operations before the SIGKILL lands
KILL_AFTER = CONCURRENT
#: requests that got no answer (expected only around the SIGKILL)
ERRORS: list[str] = []


def _try(port: int, method: str, path: str, body: Any = None) -> int | None:
    """The status, or None when the agent never answered (killed under us)."""
    try:
        return http_call(port, method, path, body)[0]
    except (OSError, ValueError) as e:
        ERRORS.append("%s %s: %r" % (method, path, e))
        return None


class RestSoak(SynchronousTestCase):
    def test_sigkill_during_concurrent_adds_and_deletes(self) -> None:
        raise_fd_limit(4 * CONCURRENT + 1024)
        d = tempdir(self)
        args = agent_args(os.path.join(d, "run"), os.path.join(d, "state"), "--no-tap-check")
        # 200 clients connect at once: the listen backlog must hold them (Twisted's default
        # of 50 overflowed into SYN cookies and, now and then, a reset); the agent's
        # default (vrtwist.unixlisten.DEFAULT_BACKLOG) does, with no option
        agent = Twistd(d, "vrouter", args, "agent1")
        self.addCleanup(agent.kill)
        port = agent.rest_port()

        acked_add: set[int] = set()
        acked_del: set[int] = set()
        tried_del: set[int] = set()  # a delete in flight at the kill may or may not land
        lock = threading.Lock()
        acks = threading.Semaphore(0)

        def worker(w: int) -> None:
            for n in (w + 1, w + 1 + CONCURRENT):  # 2 * CONCURRENT ports in all
                body = port_body(n)
                if _try(port, "POST", "/port", body) != 200:
                    return
                with lock:
                    acked_add.add(n)
                acks.release()
                if n % 2 == 0:
                    with lock:
                        tried_del.add(n)
                    if _try(port, "DELETE", "/port/" + body["id"]) != 200:
                        return
                    with lock:
                        acked_del.add(n)
                    acks.release()

        t0 = time.monotonic()
        with ThreadPoolExecutor(CONCURRENT) as pool:
            futures = [pool.submit(worker, w) for w in range(CONCURRENT)]
            for _ in range(KILL_AFTER):
                self.assertTrue(acks.acquire(timeout=60), "the agent stopped acknowledging")
            agent.kill()  # SIGKILL, mid-flight
            for f in futures:
                f.result()
        self.assertGreater(len(acked_add), 0)
        agent2 = Twistd(d, "vrouter", args, "agent2")
        self.addCleanup(agent2.stop)
        port2 = agent2.rest_port()
        lost = [n for n in sorted(acked_add - tried_del)
                if http_call(port2, "GET", "/port/" + port_body(n)["id"])[0] != 200]  # fmt: skip
        back = [n for n in sorted(acked_del)
                if http_call(port2, "GET", "/port/" + port_body(n)["id"])[0] != 404]  # fmt: skip
        self.assertEqual(lost, [], "acknowledged adds lost by the SIGKILL")
        self.assertEqual(back, [], "acknowledged deletes undone by the SIGKILL")
        kill_phase = time.monotonic() - t0

        # leaks: rounds of CONCURRENT adds then deletes on the restarted agent
        pid = agent2.proc.pid

        def round_(base: int) -> list[int]:
            bodies = [port_body(n) for n in range(base, base + CONCURRENT)]
            with ThreadPoolExecutor(CONCURRENT) as pool:
                adds = list(pool.map(lambda b: _try(port2, "POST", "/port", b), bodies))
                dels = list(pool.map(lambda b: _try(port2, "DELETE", "/port/" + b["id"]),
                                     bodies))  # fmt: skip
            return [c or 0 for c in adds + dels if c != 200]

        del ERRORS[:]
        self.assertEqual(round_(10000), [], ERRORS[:5])  # warm-up
        before = quiet_fds(pid)
        warm = rss(pid)
        t1 = time.monotonic()
        for r in range(3):
            self.assertEqual(round_(20000 + r * CONCURRENT), [],
                             "round %d: %r" % (r, ERRORS[:5]))
        rounds = time.monotonic() - t1
        self.assertEqual(settle(pid, before), before, "fds leaked: %d before, %d after"
                         % (before, fds(pid)))  # fmt: skip
        end = rss(pid)
        self.assertLessEqual(end, warm + RSS_SLACK, "RSS grew from %d to %d" % (warm, end))
        print("\nREST soak: %d acked adds, %d acked deletes (%d in flight) before SIGKILL, all as"
              " acknowledged after restart (%.1f s); 3 rounds of %d adds+deletes in %.1f s; fds %d;"
              " RSS MiB %d -> %d"
              % (len(acked_add), len(acked_del), len(tried_del - acked_del), kill_phase, CONCURRENT, rounds, before,
                 warm >> 20, end >> 20))  # fmt: skip

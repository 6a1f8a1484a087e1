"""ksync soak: ``twistd vrouter-dp`` and 64 concurrent clients, each on its own session,
adding, reading, dumping and deleting MPLS labels of their own.

Every acknowledged add is read back as written and seen in a dump; every acknowledged
delete is gone; after the sessions close the daemon is back to its fds, and its RSS is
within :data:`RSS_SLACK` of what it had after a warm-up pass.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from tests.agent.helpers import tempdir
from tests.agent.procs import SMALL_TABLES, Twistd
from tests.polling import wait_until
from tests.soak._proc import RSS_SLACK, fds, quiet_fds, raise_fd_limit, rss, settle
from vrtwist.ksync.blocking import open_ksync
from vrtwist.ksync.clientcore import KsyncError
from vrtwist.sandesh import ADD, DEL, DUMP, GET, schema

CLIENTS = int(os.environ.get("VRTWIST_SOAK_KSYNC_CLIENTS", "64"))
ITERATIONS = int(os.environ.get("VRTWIST_SOAK_KSYNC_ITERATIONS", "100"))


def _client(run_dir: str, n: int, barrier: threading.Barrier) -> tuple[int, list[str]]:
    """One session's work; returns (requests answered, problems seen)."""
    problems: list[str] = []
    done = 0
    with open_ksync(run_dir, timeout=60) as c:
        barrier.wait(60)
        for k in range(ITERATIONS):
            label = 1000 + n * 8 + (k % 8)  # 8 labels per client, reused
            nh = 10 + (n + k) % 2  # nexthops made by the test
            r = c.request(schema.vr_mpls_req(h_op=ADD, mr_label=label, mr_nhid=nh))
            done += 1
            if r.code < 0:
                problems.append("add %d answered %d" % (label, r.code))
                continue
            got = c.request(schema.vr_mpls_req(h_op=GET, mr_label=label)).objects
            done += 1
            if not got or got[0].mr_nhid != nh:
                problems.append("label %d reads back %r, wrote nh %d" % (label, got, nh))
            if k % 5 == 0:
                labels = {o.mr_label for o in c.dump(schema.vr_mpls_req(h_op=DUMP, mr_marker=-1))}
                done += 1
                if label not in labels:
                    problems.append("acknowledged label %d missing from a dump" % label)
            c.request(schema.vr_mpls_req(h_op=DEL, mr_label=label))
            done += 1
            try:
                c.request(schema.vr_mpls_req(h_op=GET, mr_label=label))
                problems.append("deleted label %d still answers" % label)
            except KsyncError:
                pass
            done += 1
    return done, problems


class KsyncSoak(SynchronousTestCase):
    def test_concurrent_clients(self) -> None:
        raise_fd_limit(4096)
        d = tempdir(self)
        run_dir = os.path.join(d, "run")
        dp = Twistd(d, "vrouter-dp", ["--run-dir", run_dir, *SMALL_TABLES], "dp")
        self.addCleanup(dp.stop)
        wait_until(lambda: os.path.exists(os.path.join(run_dir, "dpdk_netlink")),
                   "the datapath socket", 30)  # fmt: skip
        pid = dp.proc.pid

        def run_all() -> tuple[int, list[str], float]:
            barrier = threading.Barrier(CLIENTS)
            t0 = time.monotonic()
            with ThreadPoolExecutor(CLIENTS) as pool:
                results = list(pool.map(lambda n: _client(run_dir, n, barrier), range(CLIENTS)))
            return (sum(r[0] for r in results), [p for r in results for p in r[1]],
                    time.monotonic() - t0)  # fmt: skip

        with open_ksync(run_dir) as c:  # the daemon answers before we measure
            c.request(schema.vrouter_ops(h_op=GET))
            for nh in (10, 11):
                c.request(schema.vr_nexthop_req(h_op=ADD, nhr_id=nh, nhr_encap=list(range(14))))
        run_all()  # warm-up pass: caches, decoder specialisations, thread pools
        base = quiet_fds(pid)
        warm = rss(pid)
        requests, problems, elapsed = run_all()
        self.assertEqual(problems, [])
        self.assertEqual(settle(pid, base), base, "fds leaked: %d before, %d after"
                         % (base, fds(pid)))  # fmt: skip
        with open_ksync(run_dir) as c:
            left = [o.mr_label for o in c.dump(schema.vr_mpls_req(h_op=DUMP, mr_marker=-1))
                    if o.mr_label >= 1000]  # fmt: skip
        self.assertEqual(left, [], "deleted labels left in the table")
        end = rss(pid)
        self.assertLessEqual(end, warm + RSS_SLACK, "RSS grew from %d to %d" % (warm, end))
        print("\nksync soak: %d clients, %d requests in %.1f s (%.0f/s); fds %d; RSS MiB %d -> %d"
              % (CLIENTS, requests, elapsed, requests / elapsed, base, warm >> 20, end >> 20))  # fmt: skip

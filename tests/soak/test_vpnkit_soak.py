"""vpnkit pair soak: ``twistd vpnkit-host`` + ``twistd vpnkit-forwarder`` as processes, an
echo server behind an exposed port, 2,000 concurrent connections x 10 rounds.

Every byte sent comes back (compared whole); after the rounds both daemons are back to
the fds they had before, the host's multiplexer has no live channel, and each daemon's
RSS is within :data:`RSS_SLACK` plus :data:`GARBAGE_PER_CONNECTION` per later connection
of what it had after the first round.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import time

from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from tests.agent.helpers import tempdir
from tests.agent.procs import BIN, Twistd
from tests.polling import wait_until
from tests.soak._proc import RSS_SLACK, quiet_fds, raise_fd_limit, rss, settle
from tests.vpnkit.realnet import Collect, Echo, listen_tcp

CONNECTIONS = int(os.environ.get("VRTWIST_SOAK_CONNECTIONS", "2000"))
ROUNDS = int(os.environ.get("VRTWIST_SOAK_ROUNDS", "10"))
#: connections being opened at once (all stay open together: they are opened first)
OPENING = 256
#: RSS a relayed connection may leave behind until the next full collection: each one
#: leaves a reference cycle (Splice, its two ends, the Channel, its stream: ~22 objects)
#: and the daemons raise the collector's thresholds (``tune_gc``), so full collections
#: come seldom; measured ~3.3 KiB per connection per daemon (~1.3 KiB with CPython's
#: default thresholds). A leak of anything more than that still fails.
GARBAGE_PER_CONNECTION = 4096


def _expose(api: str, spec: str) -> str:
    r = subprocess.run([os.path.join(BIN, "vpnkit-expose"), "--api", api, *spec.split()],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, (spec, r.stdout, r.stderr)
    return r.stdout


class VpnkitSoak(TestCase):
    timeout = 240

    def setUp(self) -> None:
        raise_fd_limit(4 * CONNECTIONS + 1024)
        self.dir = tempdir(self)
        data = os.path.join(self.dir, "data.sock")
        self.api = "unix:" + os.path.join(self.dir, "api.sock")
        self.fwd = Twistd(self.dir, "vpnkit-forwarder", ["--data-listen", data], "fwd")
        self.addCleanup(self.fwd.stop)
        wait_until(lambda: os.path.exists(data), "the data socket", 30)
        self.host = Twistd(self.dir, "vpnkit-host", ["--data-connect", data, "--api", self.api],
                           "host")  # fmt: skip
        self.addCleanup(self.host.stop)
        wait_until(lambda: os.path.exists(self.api[5:]), "the API socket", 30)

    async def _round(self, port: int, rng: random.Random) -> tuple[int, int]:
        """CONNECTIONS connections open together, each echoing its own bytes; (ok, bytes)."""
        sem = defer.DeferredSemaphore(OPENING)
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=60)
        sent: list[bytes] = [rng.randbytes(rng.randrange(1, 2048)) for _ in range(CONNECTIONS)]
        gate: defer.Deferred[None] = defer.Deferred()
        opened = 0

        async def one(payload: bytes) -> bool:
            nonlocal opened
            proto = Collect(b"", half_close=False)
            await sem.run(ep.connect, Factory.forProtocol(lambda: proto))
            opened += 1
            if opened == CONNECTIONS:
                gate.callback(None)
            await gate  # every connection is open before any byte moves
            assert proto.transport is not None
            proto.transport.write(payload)
            proto.transport.loseWriteConnection()  # type: ignore[attr-defined]
            got, _reason = await proto.done
            return got == payload

        results = await defer.gatherResults(
            [defer.ensureDeferred(one(p)) for p in sent], consumeErrors=True
        )
        return sum(results), sum(map(len, sent))

    def _channels(self) -> int:
        m = re.search(r"live channels: (\d+)", _expose(self.api, "dump"))
        assert m, "no channel count in the dump"
        return int(m.group(1))

    async def test_concurrent_connections_rounds(self) -> None:
        server = await listen_tcp(Factory.forProtocol(Echo))
        self.addCleanup(server.stopListening)
        echo = server.getHost().port
        out = await threads.deferToThread(_expose, self.api, f"expose tcp:127.0.0.1:0:127.0.0.1:{echo}")
        port = int(out.strip().split(":")[2])
        pids = {"host": self.host.proc.pid, "fwd": self.fwd.proc.pid}
        base_fds = {k: await threads.deferToThread(quiet_fds, p) for k, p in pids.items()}
        rng = random.Random(7)
        started = time.monotonic()
        total = 0
        warm_rss: dict[str, int] = {}
        trend: list[dict[str, int]] = []
        for r in range(ROUNDS):
            ok, nbytes = await self._round(port, rng)
            total += nbytes
            self.assertEqual(ok, CONNECTIONS, "round %d: %d of %d echoes came back whole"
                             % (r, ok, CONNECTIONS))  # fmt: skip
            if r == 0:
                warm_rss = {k: rss(p) for k, p in pids.items()}
            trend.append({k: rss(p) >> 20 for k, p in pids.items()})
        elapsed = time.monotonic() - started
        after = {k: await threads.deferToThread(settle, p, base_fds[k]) for k, p in pids.items()}
        self.assertEqual(after, base_fds, "fds leaked (before %r, after %r)" % (base_fds, after))
        channels = await threads.deferToThread(self._channels)
        self.assertEqual(channels, 0, "channels left open in the host's multiplexer")
        final_rss = {k: rss(p) for k, p in pids.items()}
        bound = RSS_SLACK + GARBAGE_PER_CONNECTION * CONNECTIONS * (ROUNDS - 1)
        for k in pids:
            self.assertLessEqual(final_rss[k], warm_rss[k] + bound,
                                 "%s RSS grew from %d to %d (MiB per round: %r)"
                                 % (k, warm_rss[k], final_rss[k], trend))  # fmt: skip
        print("\nvpnkit soak: %d connections x %d rounds, %d bytes echoed in %.1f s; fds %r;"
              " RSS MiB after round 1 %r, at the end %r"
              % (CONNECTIONS, ROUNDS, total, elapsed, base_fds,
                 {k: v >> 20 for k, v in warm_rss.items()},
                 {k: v >> 20 for k, v in final_rss.items()}))  # fmt: skip

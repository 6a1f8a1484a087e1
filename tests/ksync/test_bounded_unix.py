"""dpdk_netlink's bounds over real unix sockets: idle floods, half-sent frames, real tools."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from vrtwist.bounds import ConnectionLimits
from vrtwist.ksync.blocking import open_ksync
from vrtwist.ksync.netlink import build_request
from vrtwist.ksync.server import listen_ksync
from vrtwist.ksync.testing import MemoryDispatcher
from vrtwist.sandesh import ADD, GET, encode, schema
from vrtwist.vtest.runner import spawned_vrouter

reactor: Any = _reactor


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


class IdleFloodRealToolTests(SynchronousTestCase):
    """300 idle connections to a real ``twistd vrouter-dp``; then ``vif --list`` works."""

    def test_utility_gets_in_past_300_idle_connections(self) -> None:
        with contextlib.ExitStack() as stack:
            run_dir = stack.enter_context(spawned_vrouter())
            path = os.path.join(run_dir, "dpdk_netlink")
            # state that must survive: an interface added before the flood
            with open_ksync(run_dir) as ks:
                reply = ks.request(
                    schema.vr_interface_req(
                        h_op=ADD, vifr_idx=3, vifr_type=1, vifr_name="bdkeep0", vifr_vrf=0
                    )
                )
                self.assertEqual(reply.code, 0)
            flood = []
            for _ in range(300):
                flood.append(stack.enter_context(contextlib.closing(_connect(path))))
            vif = os.path.join(os.path.dirname(sys.executable), "vif")
            cmd = [vif] if os.path.exists(vif) else [sys.executable, "-m", "vrtwist.cli.vif"]
            started = time.monotonic()
            done = subprocess.run(
                [*cmd, "--sock-dir", run_dir, "--list"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            elapsed = time.monotonic() - started
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertIn("bdkeep0", done.stdout)
            self.assertNotIn("BrokenPipe", done.stderr)
            self.assertLess(elapsed, 30)
            # the server closed the stalest idle sockets to let the tool in
            closed = 0
            for s in flood:
                s.setblocking(False)
                try:
                    closed += s.recv(1) == b""
                except BlockingIOError:
                    pass
                except OSError:
                    closed += 1
            self.assertGreaterEqual(closed, 300 - 255)
            # and a second tool, while the flood still holds the rest, works too
            with open_ksync(run_dir, timeout=5) as ks:
                got = ks.request(schema.vr_interface_req(h_op=GET, vifr_idx=3))
            self.assertEqual(got.code, 0)
            self.assertEqual(got.objects[0].vifr_name, "bdkeep0")


class HalfSentFrameTests(TestCase):
    """A header promising 65,536 bytes and no body is closed at the partial deadline."""

    timeout = 30

    async def test_half_sent_frame_closed_others_served(self) -> None:
        d = tempfile.mkdtemp(prefix="vrtwist-bd-")
        dispatcher = MemoryDispatcher()
        limits = ConnectionLimits(max_connections=16, first_frame=1.0, partial=1.0, idle=None)
        port = await listen_ksync(reactor, d, dispatcher, limits=limits)
        self.addCleanup(port.stopListening)
        path = os.path.join(d, "dpdk_netlink")
        request = build_request(encode(schema.vr_mpls_req(h_op=ADD, mr_label=7, mr_nhid=1)), 1)
        attacker = _connect(path)
        self.addCleanup(attacker.close)
        attacker.sendall(request)
        attacker.sendall(struct.pack("<IHHII", 65536, 0x10, 1, 2, 0))
        started = time.monotonic()

        def ask() -> int:
            with open_ksync(d, timeout=5) as ks:
                return int(ks.request(schema.vr_mpls_req(h_op=GET, mr_label=7)).code)

        # others are served while the attacker holds its half frame
        self.assertEqual(await deferToThread(ask), 0)

        def wait_closed() -> bytes:
            attacker.settimeout(10)
            data = b""
            while True:
                chunk = attacker.recv(65536)
                if not chunk:
                    return data
                data += chunk

        replies = await deferToThread(wait_closed)
        elapsed = time.monotonic() - started
        self.assertGreater(len(replies), 0)  # its good request was answered first
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 8)
        self.assertEqual(await deferToThread(ask), 0)  # and the server still serves
        self.assertIn(7, dispatcher.tables["vr_mpls_req"])
        await deferLater(reactor, 0, lambda: None)

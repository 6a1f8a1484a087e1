"""Option 232 keeps working while a VM's serial data is held (backend stalled).

Real loopback sockets: the look-ahead peeks at the ESX socket, so it needs one.
"""

from __future__ import annotations

import hashlib
import random

from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.vic.test_vspc_integration import StreamWriter, VSPCNetTestCase, canonical
from vrtwist.vic import vmware_ext as X
from vrtwist.vic.testing import uuid_text


class ControlWhilePausedTests(VSPCNetTestCase):
    async def _flooded(self, lookahead: int) -> tuple[object, object, StreamWriter, bytes, object]:
        port = await self.startVSPC(
            bufferLimit=64 * 1024, controlLookahead=lookahead, controlPeekInterval=0.05
        )
        backend = await self.backend(1, stalled=True)
        esx = await self.esx(port, uuid=uuid_text(1))
        await backend.wait_for(lambda: len(backend.connections) == 1)
        big = random.Random(5).randbytes(32 * 1024 * 1024)
        writer = StreamWriter(esx.transport, big, chunk=65536, telnet=True)
        (vm,) = self.table.ports()
        while not (vm.esx is not None and vm.esx._readPaused and writer.paused):
            await deferLater(reactor, 0.02, lambda: None)
        return backend, esx, writer, big, vm

    async def test_begin_behind_held_data_gets_goahead(self) -> None:
        """ESX floods, the backend stalls, then BEGIN: answered; no byte lost or reordered."""
        backend, esx, writer, big, vm = await self._flooded(32 * 1024 * 1024)
        sent = writer.stop()
        seq = b"\x76\x19\xff\xe9"
        esx.send_ext(X.VMOTION_BEGIN, seq)  # type: ignore[attr-defined]
        await esx.wait_for(lambda: bool(esx.ext_received(X.VMOTION_GOAHEAD)))  # type: ignore[attr-defined]
        (goahead,) = esx.ext_received(X.VMOTION_GOAHEAD)  # type: ignore[attr-defined]
        self.assertEqual(goahead[:4], seq)
        self.assertIsNotNone(vm.handoff)  # type: ignore[attr-defined]
        self.assertGreater(vm.esx.lookaheadReads, 0)  # type: ignore[attr-defined]
        (snap,) = self.table.snapshot()
        self.assertGreater(snap["control_lookahead_reads"], 0)  # type: ignore[misc]  # shown by GET /vms
        self.assertLess(len(backend.received()), sent)  # type: ignore[attr-defined]
        # backend data held during the hand-off; ABORT releases it to the source
        bconn = backend.connections[0]  # type: ignore[attr-defined]
        bconn.transport.write(b"to the VM")
        esx.send_ext(X.VMOTION_ABORT)  # type: ignore[attr-defined]
        bconn.unstall()
        await backend.wait_for(lambda: len(backend.received()) >= sent)  # type: ignore[attr-defined]
        self.assertEqual(
            hashlib.sha256(backend.received()).digest(),  # type: ignore[attr-defined]
            hashlib.sha256(big[:sent]).digest(),
        )
        await esx.wait_for(lambda: len(esx.serial) >= 9)  # type: ignore[attr-defined]
        self.assertEqual(bytes(esx.serial), b"to the VM")  # type: ignore[attr-defined]
        self.assertEqual(vm.counters.aborted, 1)  # type: ignore[attr-defined]

    async def test_lookahead_is_bounded(self) -> None:
        """With a small bound the vSPC reads at most that much ahead, then waits."""
        backend, _esx, writer, big, vm = await self._flooded(100 * 1024)
        conn = vm.esx  # type: ignore[attr-defined]
        before = vm.counters.bytesFromVM  # type: ignore[attr-defined]
        await deferLater(reactor, 0.5, lambda: None)  # several peek intervals
        self.assertTrue(conn._readPaused)
        self.assertLessEqual(conn._lookUsed, 100 * 1024)
        # what was read ahead is serial data (no command queued), at most the bound
        self.assertLessEqual(vm.counters.bytesFromVM - before, 100 * 1024)  # type: ignore[attr-defined]
        sent = writer.stop()
        backend.connections[0].unstall()  # type: ignore[attr-defined]
        await backend.wait_for(lambda: len(backend.received()) >= sent)  # type: ignore[attr-defined]
        self.assertEqual(backend.received(), big[:sent])  # type: ignore[attr-defined]
        self.assertEqual(vm.uuid, canonical(1))  # type: ignore[attr-defined]

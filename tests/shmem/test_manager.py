"""The agent-side FlowManager against a real ksync server on a unix socket, in process."""

from __future__ import annotations

import errno
import shutil
import tempfile

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from vrtwist.datapath.dispatcher import Datapath
from vrtwist.ksync.client import connect_ksync
from vrtwist.ksync.server import STYLE_DPDK, listen_ksync
from vrtwist.shmem import layout as L
from vrtwist.shmem.entries import flow_key_bytes
from vrtwist.shmem.interfaces import IFlowManager
from vrtwist.shmem.manager import FlowKey, FlowManager, FlowSetError, StaleFlowError
from vrtwist.shmem.service import install


class Manager(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.dir = tempfile.mkdtemp(prefix="vrtwist-mgr-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.dp = Datapath()
        self.tables = install(self.dp, self.dir, 256, 64)
        self.addCleanup(self.tables.close)
        port = await listen_ksync(reactor, self.dir, self.dp, style=STYLE_DPDK)  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        self.client = await connect_ksync(reactor, self.dir)  # type: ignore[arg-type]
        self.addCleanup(self.client.transport.loseConnection)  # type: ignore[union-attr]
        self.mgr = await FlowManager.open(self.client)
        self.addCleanup(self.mgr.close)

    async def test_pair_update_stats_delete(self) -> None:
        verifyObject(IFlowManager, self.mgr)
        fwd = FlowKey("10.1.1.1", "10.1.1.2", 6, 40000, 22, 5)
        pair = await self.mgr.create_pair(
            fwd, fwd.reversed(nh_id=6), L.ACTION_FORWARD, flow_vrf=2, src_nh_index=5
        )
        ef, er = self.mgr.read(pair.forward), self.mgr.read(pair.reverse)
        self.assertEqual((ef.rflow, er.rflow), (pair.reverse.index, pair.forward.index))
        self.assertEqual(
            (ef.sip, ef.sport, ef.vrf, ef.action), ("10.1.1.1", 40000, 2, L.ACTION_FORWARD)
        )
        self.assertEqual((er.sip, er.dport, er.nh_id), ("10.1.1.2", 40000, 6))
        self.assertTrue(ef.flags & L.RFLOW_VALID and er.flags & L.RFLOW_VALID)
        self.assertEqual(ef.ecmp_nh_index, -1)
        # the datapath accounts packets; the agent reads them from the mapping
        flows = self.tables.flows
        idx = flows.lookup(
            flow_key_bytes(2, 6, bytes([10, 1, 1, 1]), bytes([10, 1, 1, 2]), 40000, 22, 5)
        )
        self.assertEqual(idx, pair.forward.index)
        flows.add_stats(idx, 1500, 1)
        flows.add_stats(idx, 1 << 32, 1)
        self.assertEqual(self.mgr.read_stats(pair.forward), ((1 << 32) + 1500, 2))
        up = await self.mgr.update(pair.forward, L.ACTION_DROP, drop_reason=0x15)
        e = self.mgr.read(up)
        self.assertEqual(
            (e.action, e.drop_reason, e.rflow), (L.ACTION_DROP, 0x15, pair.reverse.index)
        )
        await self.mgr.delete(pair.forward)
        await self.mgr.delete(pair.reverse)
        self.assertRaises(StaleFlowError, self.mgr.read_stats, pair.forward)
        self.assertEqual(len(flows), 0)

    async def test_duplicate_pair_fails_and_rolls_back(self) -> None:
        fwd = FlowKey("10.1.1.1", "10.1.1.2", 17, 53, 53, 5)
        await self.mgr.create_pair(fwd, fwd.reversed())
        with self.assertRaises(FlowSetError) as cm:
            await self.mgr.create_pair(fwd, FlowKey("10.9.9.9", "10.1.1.1", 17, 1, 2, 5))
        self.assertEqual(cm.exception.errno, errno.EEXIST)
        self.assertEqual(len(self.tables.flows), 2)
        # reverse already exists: the forward one created in the same bunch is removed
        with self.assertRaises(FlowSetError) as cm2:
            await self.mgr.create_pair(FlowKey("10.7.7.7", "10.1.1.1", 17, 9, 9, 5), fwd.reversed())
        self.assertEqual(cm2.exception.errno, errno.EEXIST)
        self.assertEqual(len(self.tables.flows), 2)

    async def test_stale_gen_refused(self) -> None:
        fwd = FlowKey("2001:db8::1", "2001:db8::2", 6, 1, 2, 5)
        pair = await self.mgr.create_pair(fwd, fwd.reversed())
        self.assertEqual(self.mgr.read(pair.forward).dip, "2001:db8::2")
        await self.mgr.delete(pair.forward)
        with self.assertRaises(FlowSetError) as cm:
            await self.mgr.update(pair.forward, L.ACTION_DROP)
        self.assertEqual(cm.exception.errno, errno.ENOENT)

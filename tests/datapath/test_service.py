"""The forwarding extension as a service: real ksync socket, shared memory, twistd options."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any, ClassVar

from twisted.application.service import IService, MultiService
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.threads import deferToThread
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from vrtwist.datapath import constants as C
from vrtwist.datapath import tap
from vrtwist.datapath.dispatcher import BridgeRoutesInMemory, Datapath
from vrtwist.datapath.service import DatapathOptionsMixin, makeDatapathService
from vrtwist.ksync.blocking import open_ksync
from vrtwist.sandesh import ADD, DUMP, GET, schema


class ServiceTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.run_dir = tempfile.mkdtemp(prefix="dp-")
        self.top = makeDatapathService(
            self.run_dir, flow_entries=2048, bridge_entries=1024, reactor=IReactorUNIX(reactor)
        )
        self.top.startService()

    def tearDown(self) -> Deferred[Any]:  # type: ignore[override]  # trial waits for it
        return self.top.stopService()

    def in_thread(self, f: Any, *a: Any) -> Deferred[Any]:
        return deferToThread(f, *a)

    @inlineCallbacks
    def test_serves_sizes_and_shared_memory(self) -> Any:
        def work() -> Any:
            with open_ksync(self.run_dir) as ks:
                return ks.request(schema.vrouter_ops(h_op=GET)).objects[0]

        ops = yield self.in_thread(work)
        self.assertEqual(ops.vo_flow_entries, 2048)
        self.assertEqual(ops.vo_bridge_entries, 1024)
        self.assertEqual(ops.vo_oflow_entries, C.default_overflow(2048))
        self.assertTrue(os.path.exists(os.path.join(self.run_dir, "flow.shmem")))
        self.assertTrue(os.path.exists(os.path.join(self.run_dir, "bridge.shmem")))
        datapath = self.top.datapath  # type: ignore[attr-defined]
        verifyObject(IService, self.top)
        self.assertNotIsInstance(datapath.bridge, BridgeRoutesInMemory)

    @inlineCallbacks
    def test_multi_page_dumps_and_bunching(self) -> Any:
        def work() -> Any:
            with open_ksync(self.run_dir) as ks:
                ks.request(
                    schema.vr_interface_req(h_op=ADD, vifr_idx=1, vifr_type=C.VIF_TYPE_VIRTUAL)
                )
                ks.request(
                    schema.vr_nexthop_req(h_op=ADD, nhr_id=5, nhr_type=C.NH_ENCAP,
                                          nhr_family=C.AF_BRIDGE, nhr_encap_oif_id=[1],
                                          nhr_flags=C.NH_FLAG_VALID)
                )  # fmt: skip
                # bunched as the agent sends them: 16 requests in one netlink message
                for start in range(0, 400, 16):
                    results = ks.exchange(
                        [
                            schema.vr_mpls_req(h_op=ADD, mr_label=label, mr_nhid=5)
                            for label in range(start, start + 16)
                        ]
                    )
                    assert all(r.code == 0 for r in results), results  # type: ignore[union-attr]
                routes = [
                    schema.vr_route_req(h_op=ADD, rtr_family=C.AF_INET, rtr_vrf_id=1,
                                        rtr_prefix=[10, i >> 8, i & 0xFF, 0],
                                        rtr_prefix_len=24, rtr_nh_id=5)
                    for i in range(600)
                ]  # fmt: skip
                for start in range(0, 600, 15):
                    ks.exchange(routes[start : start + 15])
                labels = ks.dump(schema.vr_mpls_req(h_op=DUMP, mr_marker=-1))
                prefixes = ks.dump(
                    schema.vr_route_req(h_op=DUMP, rtr_family=C.AF_INET, rtr_vrf_id=1)
                )
                nh = ks.request(schema.vr_nexthop_req(h_op=GET, nhr_id=5)).objects[0]
                return labels, prefixes, nh

        labels, prefixes, nh = yield self.in_thread(work)
        self.assertEqual([m.mr_label for m in labels], list(range(400)))
        self.assertEqual(len(prefixes), 600)
        self.assertEqual(prefixes[-1].rtr_prefix, [10, 2, 87, 0])
        self.assertEqual(nh.nhr_ref_cnt, 1 + 400 + 600)

    def test_stop_removes_socket(self) -> Deferred[Any]:
        path = os.path.join(self.run_dir, "dpdk_netlink")
        self.assertTrue(os.path.exists(path))
        d = self.top.stopService()

        def check(_: object) -> None:
            self.assertFalse(os.path.exists(path))
            self.top.startService()  # tearDown stops it again

        d.addCallback(check)
        return d


class OptionsTests(SynchronousTestCase):
    def test_options(self) -> None:
        o = tap.Options()
        o.parseOptions(["--run-dir", "/tmp/x", "--flow-entries", "64", "--fabric", "eth1"])
        self.assertEqual(
            (o["run-dir"], o["flow-entries"], o["bridge-entries"], o["fabric"]),
            ("/tmp/x", 64, C.VR_DEF_BRIDGE_ENTRIES, "eth1"),
        )
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--flow-entries", "0"])
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--bridge-entries", "x"])

    def test_mixin_in_another_options(self) -> None:
        class AgentOptions(DatapathOptionsMixin, usage.Options):
            optParameters: ClassVar[list[list[Any]]] = [["rest", None, "tcp:9091", "REST endpoint"]]

        o = AgentOptions()
        o.parseOptions(["--run-dir", "/tmp/y", "--rest", "tcp:1"])
        self.assertEqual((o["run-dir"], o["rest"]), ("/tmp/y", "tcp:1"))

    def test_make_service_from_options(self) -> None:
        run_dir = tempfile.mkdtemp(prefix="dp-")
        o = tap.Options()
        o.parseOptions(["--run-dir", run_dir, "--flow-entries", "128", "--bridge-entries", "64"])
        top = tap.makeService(o, reactor)
        self.assertIsInstance(top, MultiService)
        datapath = top.datapath  # type: ignore[attr-defined]
        self.assertIsInstance(datapath, Datapath)
        self.assertNotIsInstance(datapath.bridge, BridgeRoutesInMemory)
        self.assertEqual(datapath.config.flow_entries, 128)
        self.assertEqual([s.name for s in top], ["datapath", "ksync", "packets"])
        top.getServiceNamed("datapath").stopService()  # unmaps the tables

    def test_shared_memory_is_required(self) -> None:
        """The shared-memory tables are part of the datapath: a broken install is loud."""
        saved = sys.modules.get("vrtwist.shmem.service")
        sys.modules["vrtwist.shmem.service"] = None  # type: ignore[assignment]
        try:
            self.assertRaises(ImportError, makeDatapathService, tempfile.mkdtemp(), 64, 64)
        finally:
            if saved is not None:
                sys.modules["vrtwist.shmem.service"] = saved
            else:
                del sys.modules["vrtwist.shmem.service"]

"""install(): files sized and zeroed, handlers registered on the datapath, bridge table."""

from __future__ import annotations

import errno
import io
import os
import shutil
import struct
import tempfile

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from vrtwist.datapath.dispatcher import Datapath
from vrtwist.datapath.interfaces import IBridgeRoutes, IRequestHandler
from vrtwist.sandesh import schema
from vrtwist.shmem import layout as L
from vrtwist.shmem.bridgetable import BridgeTable
from vrtwist.shmem.cli_bridge import print_bridge_table
from vrtwist.shmem.interfaces import IBridgeTable
from vrtwist.shmem.listing import BridgeTableView
from vrtwist.shmem.requests import BridgeRoutes, BridgeTableData, FlowRequests, FlowTableData
from vrtwist.shmem.service import install


def mac(i: int) -> list[int]:
    return [0x02, 0, 0, 0, 0, i]


class Install(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vrtwist-svc-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.dp = Datapath()
        self.t = install(self.dp, self.dir, 1000, 100)
        self.addCleanup(self.t.close)
        self.dp.handle(schema.vr_nexthop_req(h_op=0, nhr_id=9, nhr_type=5, nhr_family=7))

    def test_files_sized_and_reported(self) -> None:
        fpath = os.path.join(self.dir, "flow.shmem")
        bpath = os.path.join(self.dir, "bridge.shmem")
        # 1000 main entries, overflow ((1000/5)+1023)&~1023 = 1024
        self.assertEqual(os.path.getsize(fpath), (1000 + 1024) * 256)
        self.assertEqual(os.path.getsize(bpath), (100 + 1024) * 64)
        reply = self.dp.handle(schema.vr_flow_table_data(ftable_op=2))
        data = reply[0][1]
        self.assertEqual(
            (reply[0][0].resp_code, data.ftable_file_path, data.ftable_size),
            (0, fpath, (1000 + 1024) * 256),
        )
        reply = self.dp.handle(schema.vr_bridge_table_data(btable_op=1))
        self.assertEqual(
            (reply[0][1].btable_file_path, reply[0][1].btable_size), (bpath, 1124 * 64)
        )
        self.assertEqual(
            self.dp.handle(schema.vr_bridge_table_data(btable_op=0))[0][0].resp_code, -errno.EINVAL
        )
        ops = self.dp.handle(schema.vrouter_ops(h_op=1))[0][1]
        self.assertEqual(
            (
                ops.vo_flow_entries,
                ops.vo_oflow_entries,
                ops.vo_bridge_entries,
                ops.vo_oflow_bridge_entries,
            ),
            (1000, 1024, 100, 1024),
        )

    def test_handlers_verify(self) -> None:
        for h in (
            FlowRequests(self.t.flows),
            FlowTableData(self.t.flows),
            BridgeTableData(self.t.bridge),
        ):
            verifyObject(IRequestHandler, h)
        verifyObject(IBridgeRoutes, BridgeRoutes(self.t.bridge, self.dp))
        verifyObject(IBridgeTable, self.t.bridge)

    def test_flow_req_reply_always_has_flow_response(self) -> None:
        reply = self.dp.handle(schema.vr_flow_req(fr_op=0, fr_index=77, fr_flags=1, fr_family=2))
        self.assertEqual(len(reply), 1)
        resp, fresp = reply[0]
        self.assertEqual((resp.resp_code, fresp.fresp_index), (-errno.ENOENT, 77))
        reply = self.dp.handle(schema.vr_flow_req(fr_op=1))
        self.assertEqual(reply[0][0].resp_code, -errno.EINVAL)
        self.assertEqual(type(reply[0][1]).__name__, "vr_flow_response")

    def test_bridge_add_get_dump_delete_and_used_counts(self) -> None:
        for i in range(1, 6):
            r = self.dp.handle(
                schema.vr_route_req(
                    h_op=0,
                    rtr_family=7,
                    rtr_vrf_id=1,
                    rtr_mac=mac(i),
                    rtr_nh_id=9,
                    rtr_label=i,
                    rtr_label_flags=L.BE_LABEL_VALID,
                )
            )
            self.assertEqual(r[0][0].resp_code, 0)
        got = self.dp.handle(
            schema.vr_route_req(h_op=1, rtr_family=7, rtr_vrf_id=1, rtr_mac=mac(3), rtr_index=-1)
        )
        self.assertEqual(
            (got[0][1].rtr_label, got[0][1].rtr_label_flags), (3, L.BE_VALID | L.BE_LABEL_VALID)
        )
        by_index = self.dp.handle(
            schema.vr_route_req(h_op=1, rtr_family=7, rtr_vrf_id=1, rtr_index=got[0][1].rtr_index)
        )
        self.assertEqual(by_index[0][1].rtr_mac, mac(3))
        dump = self.dp.handle(
            schema.vr_route_req(h_op=3, rtr_family=7, rtr_vrf_id=1, rtr_mac=[0] * 6)
        )
        self.assertEqual(dump[0][0].resp_code, 5)
        self.assertEqual(len(dump[1]), 5)
        ops = self.dp.handle(schema.vrouter_ops(h_op=1))[0][1]
        self.assertEqual(ops.vo_bridge_used_entries, 5)
        self.assertEqual(
            self.dp.handle(schema.vr_route_req(h_op=2, rtr_family=7, rtr_vrf_id=1, rtr_mac=mac(3)))[
                0
            ][0].resp_code,
            0,
        )
        self.assertEqual(
            self.dp.handle(schema.vr_route_req(h_op=2, rtr_family=7, rtr_vrf_id=1, rtr_mac=mac(3)))[
                0
            ][0].resp_code,
            -errno.ENOENT,
        )
        self.assertEqual(
            self.dp.handle(
                schema.vr_route_req(
                    h_op=0, rtr_family=7, rtr_vrf_id=1, rtr_mac=[1, 2, 3], rtr_nh_id=9
                )
            )[0][0].resp_code,
            -errno.EINVAL,
        )
        view = BridgeTableView(os.path.join(self.dir, "bridge.shmem"))
        self.addCleanup(view.close)
        out = io.StringIO()
        self.assertEqual(print_bridge_table(view, 1, out), 4)
        self.assertNotIn("2:0:0:0:0:3 ", out.getvalue())
        self.assertIn("2:0:0:0:0:5 ", out.getvalue())

    def test_soft_reset_empties_tables(self) -> None:
        r = self.dp.handle(
            schema.vr_flow_req(
                fr_op=0,
                fr_index=-1,
                fr_flags=1,
                fr_family=2,
                fr_action=2,
                fr_flow_sip_l=1,
                fr_flow_dip_l=2,
            )
        )
        self.assertEqual(r[0][0].resp_code, 0)
        self.assertEqual(self.dp.handle(schema.vrouter_ops(h_op=5))[0][0].resp_code, 0)
        self.assertEqual(len(self.t.flows), 0)
        idx = r[0][1].fresp_index
        raw = self.t.flow_map[idx * 256 : idx * 256 + 256]
        self.assertEqual(struct.unpack_from("<IIIB", raw, 8), (idx, 0, 0xFFFFFFFF, 0))
        self.assertEqual(raw[21:], bytes(235))


class Bridge(SynchronousTestCase):
    def test_full_bridge_table_enomem_keeps_entries(self) -> None:
        buf = bytearray((4 + 2) * 64)
        t = BridgeTable(buf, 4, 2)
        for i in range(6):
            self.assertEqual(t.add(1, bytes(mac(i + 1)), 3)[0], 0)
        before = bytes(buf)
        self.assertEqual(t.add(1, bytes(mac(99)), 3), (-errno.ENOMEM, -1))
        self.assertEqual(bytes(buf), before)
        for i in range(6):
            e = t.get(1, bytes(mac(i + 1)))
            assert e is not None
            self.assertEqual((e.nh_id, e.flags), (3, L.BE_VALID))

    def test_entry_layout_from_spec(self) -> None:
        buf = bytearray((8 + 4) * 64)
        t = BridgeTable(buf, 8, 4)
        _, i = t.add(7, b"\x00\x11\x22\x33\x44\x55", 12, 5000, L.BE_LABEL_VALID | L.BE_MAC_NEW)
        t.add_packets(i, 3)
        b = buf[i * 64 : (i + 1) * 64]
        self.assertEqual(bytes(b[21:27]), b"\x00\x11\x22\x33\x44\x55")
        self.assertEqual(struct.unpack_from("<H", b, 27)[0], 7)
        self.assertEqual(struct.unpack_from("<Q", b, 37)[0], 3)
        self.assertEqual(struct.unpack_from("<I", b, 45)[0], 5000)
        self.assertEqual(struct.unpack_from("<i", b, 49)[0], 12)
        # VALID set by the owner, MAC_NEW masked out (VR_BRIDGE_FLAG_MASK)
        self.assertEqual(struct.unpack_from("<H", b, 53)[0], L.BE_VALID | L.BE_LABEL_VALID)


class FileModes(SynchronousTestCase):
    """flow.shmem and bridge.shmem hold flows and addresses: the owner's, whatever the umask."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ac-shmem-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.chmod(self.dir, 0o755)

    def _install(self, mask: int, run_dir: str, **kw: object) -> None:
        old = os.umask(mask)
        try:
            t = install(Datapath(), run_dir, 1000, 100, **kw)  # type: ignore[arg-type]
        finally:
            os.umask(old)
        self.addCleanup(t.close)

    def test_owner_only_under_umask_0_and_022(self) -> None:
        for mask in (0, 0o022):
            run = os.path.join(self.dir, f"run{mask}")
            self._install(mask, run)
            self.assertEqual(os.stat(run).st_mode & 0o777, 0o700)  # created here
            for name in ("flow.shmem", "bridge.shmem"):
                self.assertEqual(os.stat(os.path.join(run, name)).st_mode & 0o777, 0o600)
            self.assertEqual(sorted(os.listdir(run)), ["bridge.shmem", "flow.shmem"])

    def test_group_reads(self) -> None:
        from vrtwist.access import SocketAccess

        self._install(0, self.dir, access=SocketAccess(65534))
        st = os.stat(os.path.join(self.dir, "flow.shmem"))
        self.assertEqual((st.st_mode & 0o777, st.st_gid), (0o640, 65534))

    def test_old_loose_file_replaced_not_reused(self) -> None:
        """A 0644 file from an older run: replaced by a new 0600 inode, so whoever held
        the old one open sees none of the new table."""
        path = os.path.join(self.dir, "flow.shmem")
        with open(path, "wb") as f:
            f.write(b"old")
        os.chmod(path, 0o644)
        held = open(path, "rb")
        self.addCleanup(held.close)
        self._install(0o022, self.dir)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertNotEqual(os.fstat(held.fileno()).st_ino, os.stat(path).st_ino)
        self.assertEqual(held.read(), b"old")

    def test_nobody_cannot_read_root_can(self) -> None:
        from tests.unprivileged import need_root, open_as_nobody

        need_root()
        self._install(0o022, self.dir)
        for name in ("flow.shmem", "bridge.shmem"):
            path = os.path.join(self.dir, name)
            self.assertEqual(open_as_nobody(path), "EACCES")
            with open(path, "rb") as f:
                self.assertEqual(len(f.read(64)), 64)

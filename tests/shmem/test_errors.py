"""Bad inputs to the shared-memory layer fail with a clear error and change nothing."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.datapath.dispatcher import Datapath
from vrtwist.ksync.blocking import KsyncConnectError, open_ksync
from vrtwist.shmem.cli_bridge import dump_bridge
from vrtwist.shmem.htable import HashTable, map_file
from vrtwist.shmem.listing import FlowTableView
from vrtwist.shmem.service import install


class Errors(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vrtwist-err-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_table_geometry_checked(self) -> None:
        self.assertRaises(ValueError, HashTable, bytearray(1024), 6, 0, 64)
        self.assertRaises(ValueError, HashTable, bytearray(1024), 0, 0, 64)
        self.assertRaises(ValueError, HashTable, bytearray(64 * 7), 4, 4, 64)
        self.assertRaises(ValueError, install, Datapath(), self.dir, 0, 16)
        self.assertEqual(os.listdir(self.dir), [])

    def test_missing_or_empty_file(self) -> None:
        self.assertRaises(OSError, FlowTableView, os.path.join(self.dir, "nope"))
        empty = os.path.join(self.dir, "flow.shmem")
        open(empty, "w").close()
        self.assertRaises(ValueError, map_file, empty)

    def test_no_vrouter(self) -> None:
        self.assertRaises(KsyncConnectError, open_ksync, self.dir)
        err = io.StringIO()
        old, sys.stderr = sys.stderr, err
        try:
            self.assertEqual(dump_bridge(self.dir, 0, io.StringIO()), 1)
        finally:
            sys.stderr = old
        self.assertIn(
            "cannot connect to %s" % os.path.join(self.dir, "dpdk_netlink"), err.getvalue()
        )
        p = subprocess.run(
            [sys.executable, "-m", "vrtwist.cli.flow", "--sock-dir", self.dir, "-l"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(p.returncode, 1)
        self.assertIn("cannot connect", p.stderr)

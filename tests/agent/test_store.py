"""Port files: atomic writes, replay of good files, clear reasons for bad ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.agent.helpers import SAMPLE, port_body, tempdir
from vrtwist.agent.interfaces import IPortStore
from vrtwist.agent.store import MAX_PORT_FILE, PortFileError, PortStore, write_json_atomic
from vrtwist.agent.testing import InMemoryAgent


class StoreTests(SynchronousTestCase):
    def test_interface(self) -> None:
        verifyObject(IPortStore, PortStore(tempdir(self)))

    def test_atomic_write_leaves_no_temporary_file(self) -> None:
        d = tempdir(self)
        store = PortStore(d)
        store.write(SAMPLE["id"], SAMPLE)
        store.write(SAMPLE["id"], dict(SAMPLE, **{"display-name": "vm2"}))
        self.assertEqual(sorted(os.listdir(store.ports_dir)), [SAMPLE["id"], "vm"])
        self.assertEqual(store.read(SAMPLE["id"])["display-name"], "vm2")

    def test_write_failure_raises_and_keeps_the_old_file(self) -> None:
        d = tempdir(self)
        path = os.path.join(d, "x")
        write_json_atomic(__import__("pathlib").Path(path), {"a": 1})
        os.makedirs(os.path.join(d, ".x.%d.tmp" % os.getpid()))  # the temp name is taken
        with self.assertRaises(PortFileError):
            write_json_atomic(__import__("pathlib").Path(path), {"a": 2})
        with open(path) as f:
            self.assertEqual(json.load(f), {"a": 1})

    def test_replay_loads_good_files_and_reports_bad_ones(self) -> None:
        d = tempdir(self)
        first = InMemoryAgent(d)
        first.call("POST", "/port", [port_body(1), port_body(2)])
        ports = os.path.join(d, "ports")
        bad = {
            "11111111-1111-1111-1111-111111111111": b"{not json",
            "22222222-2222-2222-2222-222222222222": json.dumps(
                port_body(3, **{"mac-address": "nope"})).encode(),
            "33333333-3333-3333-3333-333333333333": b" " * (MAX_PORT_FILE + 1),
        }
        for name, data in bad.items():
            with open(os.path.join(ports, name), "wb") as f:
                f.write(data)
        with open(os.path.join(ports, "README"), "w") as f:  # not a uuid: ignored
            f.write("x")
        second = InMemoryAgent(d)
        added, skipped = second.table.replay()
        self.assertEqual(added, 2)
        self.assertEqual(len(skipped), 3)
        text = "\n".join(skipped)
        self.assertIn("not JSON", text)
        self.assertIn("mac-address", text)
        self.assertIn("larger than", text)
        # bad files stay for the operator to look at
        for name in bad:
            self.assertTrue(os.path.exists(os.path.join(ports, name)))
        self.assertEqual(len(second.datapath.tables.interfaces), 4)  # fabric, pkt0 + 2


class GroupWriteTests(SynchronousTestCase):
    def test_group_write_reports_each_item(self) -> None:
        import pathlib

        from vrtwist.agent.store import write_json_group

        d = pathlib.Path(tempdir(self))
        (d / "blocked").mkdir()
        (d / (".blocked2.%d.g.tmp" % os.getpid())).mkdir()  # its temp name is taken
        results = write_json_group([(d / "a", {"a": 1}), (d / "nodir" / "b", {"b": 2}),
                                    (d / "c", {"c": 3}), (d / "blocked2", {})])
        self.assertIsNone(results[0])
        self.assertIsInstance(results[1], PortFileError)
        self.assertIsNone(results[2])
        self.assertIsInstance(results[3], PortFileError)
        self.assertEqual(json.loads((d / "c").read_text()), {"c": 3})
        self.assertEqual(sorted(p.name for p in d.iterdir()),
                         [".blocked2.%d.g.tmp" % os.getpid(), "a", "blocked", "c"])

    def test_failed_fsync_fails_only_its_item(self) -> None:
        import errno
        import pathlib

        from vrtwist.agent import store

        d = pathlib.Path(tempdir(self))
        (d / "b").write_text('{"old": true}')
        real = os.fsync
        bad: list[int] = []

        def fsync(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}").endswith(".b.%d.g.tmp" % os.getpid()):
                bad.append(fd)
                raise OSError(errno.EIO, "Input/output error")
            real(fd)
        self.patch(os, "fsync", fsync)  # the os module store uses
        results = store.write_json_group([(d / n, {n: 1}) for n in ("a", "b", "c", "e")])
        self.assertEqual(len(bad), 1)
        self.assertEqual([r is None for r in results], [True, False, True, True])
        self.assertIn("cannot write", str(results[1]))
        self.assertEqual(json.loads((d / "b").read_text()), {"old": True})  # old file kept
        self.assertEqual(sorted(p.name for p in d.iterdir()), ["a", "b", "c", "e"])
        for n in ("a", "c", "e"):
            self.assertEqual(json.loads((d / n).read_text()), {n: 1})

    def test_concurrent_writes_are_batched(self) -> None:
        import pathlib

        from twisted.internet.defer import Deferred

        from vrtwist.agent.store import GroupWriter

        d = pathlib.Path(tempdir(self))
        gate: list[tuple[Deferred[object], object, tuple[object, ...]]] = []

        def run_io(f: object, *args: object) -> Deferred[object]:
            dd: Deferred[object] = Deferred()
            gate.append((dd, f, args))
            return dd

        w = GroupWriter(run_io)
        done: list[object] = []
        for i in range(5):
            w.write(d / str(i), {"i": i}).addBoth(done.append)
        self.assertEqual(len(gate), 1)  # the first write runs alone, four wait
        for _ in range(2):
            dd, f, args = gate.pop(0)
            dd.callback(f(*args))  # type: ignore[operator]
        self.assertEqual(w.batches, 2)
        self.assertEqual(done, [None] * 5)
        self.assertEqual(len(list(d.iterdir())), 5)


class ModeTests(SynchronousTestCase):
    """Port files name VMs and their addresses: 0600 in 0700 directories, any umask."""

    def _store(self, mask: int) -> tuple[PortStore, str]:
        d = tempdir(self)
        os.chmod(d, 0o755)  # so only the store's own modes stand between nobody and the files
        old = os.umask(mask)
        try:
            store = PortStore(d)
            store.write(SAMPLE["id"], SAMPLE)
            store.write_vm("vm-a", SAMPLE["id"], {"vm": "a"})
        finally:
            os.umask(old)
        return store, d

    def test_modes_under_umask_0_and_022(self) -> None:
        from vrtwist.agent.store import write_json_group

        for mask in (0, 0o022):
            store, _ = self._store(mask)
            mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
            self.assertEqual(mode(store.ports_dir), 0o700)
            self.assertEqual(mode(store.vm_dir), 0o700)
            self.assertEqual(mode(store.vm_dir / "vm-a"), 0o700)
            self.assertEqual(mode(store.path_for(SAMPLE["id"])), 0o600)
            self.assertEqual(mode(store.vm_dir / "vm-a" / SAMPLE["id"]), 0o600)
            old = os.umask(mask)
            try:
                self.assertEqual(write_json_group([(store.ports_dir / "g", {"g": 1})]), [None])
            finally:
                os.umask(old)
            self.assertEqual(mode(store.ports_dir / "g"), 0o600)
            self.assertEqual(store.read("g"), {"g": 1})

    def test_loose_directory_and_leftover_temp_tightened(self) -> None:
        """A 0755 ports/ from an older run and a 0644 temp file left by a crash."""
        d = tempdir(self)
        os.makedirs(os.path.join(d, "ports"), 0o755)
        os.chmod(os.path.join(d, "ports"), 0o755)
        store = PortStore(d)
        self.assertEqual(os.stat(store.ports_dir).st_mode & 0o777, 0o700)
        tmp = store.ports_dir / f".{SAMPLE['id']}.{os.getpid()}.tmp"
        tmp.write_bytes(b"{}")
        os.chmod(tmp, 0o644)
        store.write(SAMPLE["id"], SAMPLE)
        self.assertEqual(os.stat(store.path_for(SAMPLE["id"])).st_mode & 0o777, 0o600)
        self.assertEqual(store.read(SAMPLE["id"])["id"], SAMPLE["id"])

    def test_nobody_cannot_read_or_list_root_can(self) -> None:
        from tests.unprivileged import as_nobody, need_root

        need_root()
        store, _ = self._store(0o022)
        self.assertEqual(as_nobody("list", str(store.ports_dir)), "EACCES")
        self.assertEqual(as_nobody("read", str(store.path_for(SAMPLE["id"]))), "EACCES")
        self.assertEqual(as_nobody("read", str(store.vm_dir / "vm-a" / SAMPLE["id"])), "EACCES")
        self.assertEqual(store.read(SAMPLE["id"])["id"], SAMPLE["id"])


class StaleTempTests(SynchronousTestCase):
    """A writer SIGKILLed between creating its temporary file and the rename."""

    def _killed_writer(self, directory: str, uuid: str, suffix: str) -> str:
        """A real process that creates its temp file the way the store names it, then dies."""
        code = ("import os, sys, time\n"
                "p = os.path.join(sys.argv[1], '.%s.%d%s' % (sys.argv[2], os.getpid(), "
                "sys.argv[3]))\n"
                "open(p, 'w').write('{\"half\": ')\n"
                "print(p, flush=True)\n"
                "time.sleep(60)\n")
        proc = subprocess.Popen([sys.executable, "-c", code, directory, uuid, suffix],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        self.assertTrue(os.path.exists(path))
        return path

    def test_temp_files_of_dead_writers_go_at_start(self) -> None:
        d = tempdir(self)
        store = PortStore(d)
        store.write(SAMPLE["id"], SAMPLE)
        store.write_vm("vm1", SAMPLE["id"], SAMPLE)
        group = self._killed_writer(str(store.ports_dir), SAMPLE["id"], ".g.tmp")
        single = self._killed_writer(str(store.vm_dir / "vm1"), SAMPLE["id"], ".tmp")
        # a live writer (vrouter-port-control half-way through its own write) keeps its file
        live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.addCleanup(live.wait)
        self.addCleanup(live.kill)
        busy = store.ports_dir / f".{SAMPLE['id']}.{live.pid}.g.tmp"
        busy.write_text("{")
        other = store.ports_dir / ".keep-me"
        other.write_text("not ours")

        again = PortStore(d)  # the agent starting again

        self.assertFalse(os.path.exists(group))
        self.assertFalse(os.path.exists(single))
        self.assertTrue(busy.exists())
        self.assertTrue(other.exists())
        # nothing else was lost: both port files replay
        self.assertEqual([f.body["id"] for f in again.load_ports()], [SAMPLE["id"]])
        self.assertEqual([f.body["id"] for f in again.load_vm_ports()], [SAMPLE["id"]])

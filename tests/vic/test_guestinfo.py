"""guestinfo: VIC key names, encodings, both transports, the watcher and the CLI."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import textwrap

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from vrtwist.cli import guestinfo as cli
from vrtwist.vic.guestinfo import (
    NIL,
    FileTransport,
    GuestInfo,
    GuestInfoError,
    GuestInfoWatcher,
    RpcToolTransport,
    decodeIPNet,
    detectTransport,
    encodeIPNet,
    key,
)
from vrtwist.vic.interfaces import IGuestInfoTransport


def _tmp(test: SynchronousTestCase) -> str:
    """A fresh path under the system temp dir (trial's mktemp() litters the cwd under pytest)."""
    import shutil
    import tempfile

    base = tempfile.mkdtemp(prefix="gi")
    test.addCleanup(shutil.rmtree, base, True)
    return os.path.join(base, "d")


FAKE_RPCTOOL = textwrap.dedent(
    """\
    #!{python}
    # Stand-in for open-vm-tools' vmware-rpctool: same argv, same replies, a directory as VMX.
    import os, sys
    from urllib.parse import quote
    store = {store!r}
    cmd = sys.argv[1]
    verb, _, rest = cmd.partition(" ")
    if verb == "info-get":
        try:
            print(open(os.path.join(store, quote(rest, safe=""))).read())
        except FileNotFoundError:
            print("No value found"); sys.exit(1)
    elif verb == "info-set":
        k, _, v = rest.partition(" ")
        open(os.path.join(store, quote(k, safe="")), "w").write(v)
    else:
        print("Unknown command"); sys.exit(1)
    """
)


class KeyTests(SynchronousTestCase):
    def test_vic_key_shapes(self) -> None:
        """The key strings of spec 2.2, derived with VIC's rules."""
        self.assertEqual(key(["common", "id"], readOnly=True), "guestinfo.vice./common/id")
        self.assertEqual(key(["sessions|abc", "status"]), "guestinfo.vice..sessions|abc.status")
        self.assertEqual(
            key(["sessions|abc", "cmd", "Path"], readOnly=True),
            "guestinfo.vice./sessions|abc/cmd/Path",
        )
        self.assertEqual(
            key(["networks|bridge", "assigned", "IP"]),
            "guestinfo.vice..networks|bridge.assigned.IP",
        )
        self.assertEqual(
            key(["execs|e1", "started"], nonPersistent=True),
            "guestinfo.vice..execs|e1.started@non-persistent",
        )
        self.assertEqual(key(["key"], readOnly=True, secret=True), "guestinfo.vice./key@secret")
        self.assertEqual(key(["common", "id"], readOnly=True, hidden=True), "vice./common/id")

    def test_bad_paths(self) -> None:
        self.assertRaises(GuestInfoError, key, [])
        self.assertRaises(GuestInfoError, key, ["a/b"])
        self.assertRaises(GuestInfoError, key, [""])

    def test_ipnet_base64(self) -> None:
        ip, mask = encodeIPNet("172.16.0.2/16")
        self.assertEqual((ip, mask), ("rBAAAg==", "//8AAA=="))
        self.assertEqual(decodeIPNet(ip, mask), "172.16.0.2/16")
        ip6, mask6 = encodeIPNet("fd00::5/64")
        self.assertEqual(decodeIPNet(ip6, mask6), "fd00::5/64")

    def test_bad_ipnets(self) -> None:
        self.assertRaises(GuestInfoError, encodeIPNet, "not-an-ip")
        self.assertRaises(GuestInfoError, decodeIPNet, "!!!", "//8AAA==")
        self.assertRaises(GuestInfoError, decodeIPNet, "rBAAAg==", "AAAA")
        self.assertRaises(GuestInfoError, decodeIPNet, "rBAAAg==", "/wD/AA==")


class FileTransportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = _tmp(self)
        self.t = FileTransport(self.dir)

    def test_interface_and_round_trip(self) -> None:
        verifyObject(IGuestInfoTransport, self.t)
        self.assertIsNone(self.t.get("guestinfo.vice./common/id"))
        self.t.set("guestinfo.vice./common/id", "abc|def\nmore")
        self.assertEqual(self.t.get("guestinfo.vice./common/id"), "abc|def\nmore")
        self.assertEqual(self.t.keys(), ["guestinfo.vice./common/id"])

    def test_atomic_replace_leaves_no_temp_files_and_changes_inode(self) -> None:
        self.t.set("guestinfo.x", "1")
        before = self.t.stamp("guestinfo.x")
        self.t.set("guestinfo.x", "2")
        self.assertNotEqual(self.t.stamp("guestinfo.x"), before)
        self.assertEqual(os.listdir(self.dir), ["guestinfo.x"])

    def test_failed_write_keeps_old_value(self) -> None:
        self.t.set("guestinfo.x", "old")
        if os.geteuid() == 0:
            # root ignores directory permissions: make the value unencodable instead
            self.assertRaises(UnicodeEncodeError, self.t.set, "guestinfo.x", "\udcff")
        else:
            os.chmod(self.dir, stat.S_IRUSR | stat.S_IXUSR)
            self.addCleanup(os.chmod, self.dir, stat.S_IRWXU)
            self.assertRaises(OSError, self.t.set, "guestinfo.x", "new")
        self.assertEqual(self.t.get("guestinfo.x"), "old")
        self.assertEqual(os.listdir(self.dir), ["guestinfo.x"])


class GuestInfoTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = FileTransport(_tmp(self))
        self.guest = GuestInfo(self.t, "guest")
        self.appliance = GuestInfo(self.t, "appliance")

    def test_tether_publishes_appliance_reads(self) -> None:
        self.guest.publish_started("s1")
        self.guest.publish_time("s1", "starttime", 1700000000)
        self.guest.publish_status("s1", 137)
        self.guest.publish_assigned_ip("bridge", "172.16.0.2/16")
        st = self.appliance.session("s1")
        self.assertEqual(
            (st.started, st.status, st.starttime, st.launch_error), ("true", 137, 1700000000, None)
        )
        self.assertEqual(self.appliance.assigned_ip("bridge"), "172.16.0.2/16")
        self.assertEqual(self.t.get("guestinfo.vice..sessions|s1.status"), "137")

    def test_launch_error_reporting(self) -> None:
        self.guest.publish_started("s2", error='exec: "nope": executable file not found in $PATH')
        self.assertIn("not found", self.appliance.session("s2").launch_error or "")

    def test_exec_sessions_are_non_persistent(self) -> None:
        self.guest.publish_started("e1", exec_session=True)
        self.assertEqual(self.t.get("guestinfo.vice..execs|e1.started@non-persistent"), "true")

    def test_empty_values_are_nil(self) -> None:
        self.guest.set("guestinfo.vice..sessions|s1.started", "")
        self.assertEqual(self.t.get("guestinfo.vice..sessions|s1.started"), NIL)
        self.assertEqual(self.guest.get("guestinfo.vice..sessions|s1.started"), "")

    def test_guest_cannot_write_read_only_keys(self) -> None:
        self.assertRaises(GuestInfoError, self.guest.set, "guestinfo.vice./common/id", "x")
        self.assertRaises(GuestInfoError, self.guest.configure, ["common", "id"], "x")
        self.assertRaises(GuestInfoError, self.guest.set, "other.key", "x")
        self.appliance.configure(["common", "id"], "c0ffee")
        self.assertEqual(self.guest.container_id(), "c0ffee")

    def test_bad_numbers_are_reported(self) -> None:
        self.t.set("guestinfo.vice..sessions|s3.status", "twelve")
        self.assertRaises(GuestInfoError, self.appliance.session, "s3")

    def test_bad_role(self) -> None:
        self.assertRaises(GuestInfoError, GuestInfo, self.t, "hypervisor")

    def test_watcher(self) -> None:
        clock = Clock()
        seen: list[tuple[str, str | None]] = []
        k = "guestinfo.vice..sessions|s1.status"
        w = GuestInfoWatcher(self.appliance, [k], lambda key, v: seen.append((key, v)), clock, 0.5)
        w.start()
        clock.advance(0.5)
        self.assertEqual(seen, [])
        self.guest.publish_status("s1", 0)
        clock.advance(0.5)
        self.assertEqual(seen, [(k, "0")])
        clock.advance(0.5)
        self.assertEqual(len(seen), 1)
        w.stop()


class RpcToolTests(SynchronousTestCase):
    """The rpctool transport against a stand-in executable speaking the same argv."""

    def setUp(self) -> None:
        base = _tmp(self)
        os.makedirs(base)
        self.store = os.path.join(base, "vmx")
        os.makedirs(self.store)
        self.tool = os.path.join(base, "vmware-rpctool")
        with open(self.tool, "w") as f:
            f.write(FAKE_RPCTOOL.format(python=sys.executable, store=self.store))
        os.chmod(self.tool, 0o755)

    def test_get_set(self) -> None:
        t = RpcToolTransport(self.tool)
        verifyObject(IGuestInfoTransport, t)
        self.assertIsNone(t.get("guestinfo.vice..sessions|s.status"))
        t.set("guestinfo.vice..sessions|s.status", "0 with spaces")
        self.assertEqual(t.get("guestinfo.vice..sessions|s.status"), "0 with spaces")

    def test_missing_tool_is_a_clear_error(self) -> None:
        t = RpcToolTransport(os.path.join(self.store, "no-such-tool"))
        self.assertRaises(GuestInfoError, t.get, "guestinfo.x")

    def test_detect_prefers_rpctool_on_path(self) -> None:
        self.assertIsInstance(detectTransport(tool=self.tool), RpcToolTransport)
        self.assertIsInstance(detectTransport(directory=self.store, tool=self.tool), FileTransport)
        self.assertIsInstance(detectTransport(tool="/nonexistent/rpctool"), FileTransport)


class CLITests(SynchronousTestCase):
    def run_cli(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = cli.main(list(argv), out=out)
        return code, out.getvalue()

    def test_key(self) -> None:
        self.assertEqual(
            self.run_cli("key", "--read-only", "common", "id"), (0, "guestinfo.vice./common/id\n")
        )

    def test_publish_and_show(self) -> None:
        d = _tmp(self)
        self.assertEqual(self.run_cli("--dir", d, "publish", "started", "s1")[0], 0)
        self.assertEqual(self.run_cli("--dir", d, "publish", "status", "s1", "3")[0], 0)
        self.assertEqual(self.run_cli("--dir", d, "publish", "ip", "bridge", "10.1.2.3/24")[0], 0)
        code, text = self.run_cli("--dir", d, "show", "s1", "--network", "bridge")
        self.assertEqual(code, 0)
        self.assertIn('"status": 3', text)
        self.assertIn('"bridge": "10.1.2.3/24"', text)
        code, text = self.run_cli("--dir", d, "get", "guestinfo.vice..sessions|s1.started")
        self.assertEqual((code, text), (0, "true\n"))
        code, text = self.run_cli("--dir", d, "list")
        self.assertIn("guestinfo.vice..networks|bridge.assigned.IP=CgECAw==", text)

    def test_errors_exit_non_zero(self) -> None:
        d = _tmp(self)
        self.assertEqual(self.run_cli("--dir", d, "get", "guestinfo.missing")[0], 1)
        self.assertEqual(self.run_cli("--dir", d, "set", "guestinfo.vice./common/id", "x")[0], 1)
        self.assertEqual(
            self.run_cli(
                "--dir", d, "--role", "appliance", "set", "guestinfo.vice./common/id", "x"
            )[0],
            0,
        )
        self.assertEqual(self.run_cli("--dir", d, "publish", "ip", "n", "bogus")[0], 1)

    def test_console_script_watch(self) -> None:
        """The installed ``vic-guestinfo`` as a process: watch sees a change made by another."""
        d = _tmp(self)
        exe = os.path.join(os.path.dirname(sys.executable), "vic-guestinfo")
        if not os.path.exists(exe):
            raise self.skipTest("vic-guestinfo console script not installed in this environment")
        k = "guestinfo.vice..sessions|s9.status"
        proc = subprocess.Popen(
            [exe, "--dir", d, "watch", k, "--interval", "0.05", "--count", "1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        from tests.polling import wait_until

        # keep changing the value until the watcher (whenever it started) reports one
        changes = iter(range(1, 1_000_000))

        def reported() -> bool:
            if proc.poll() is not None:
                return True
            FileTransport(d).set(k, str(next(changes)))
            return False

        wait_until(reported, "the watcher to report a change", 20)
        out, _ = proc.communicate(timeout=20)
        self.assertEqual(proc.returncode, 0)
        self.assertRegex(out, rf"^{k.replace('|', '[|]')}=\d+\n$")

"""Unix sockets and private files get their explicit mode whatever the umask.

The attack these pin: a local user connecting to a daemon's socket, or reading the flow
table or a port file, because its mode came from the umask or from Twisted's 0666.
Each case is tried as ``nobody`` (refused) and as root, the owner (still served).
"""

from __future__ import annotations

import grp
import os
import shutil
import socket
import stat
import tempfile

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.unprivileged import as_nobody, connect_as_nobody, need_root, world_traversable
from vrtwist.access import (
    GROUP_MODE,
    OWNER_MODE,
    SocketAccess,
    bind_unix,
    create_private,
    private_dir,
    restrict_before_bind,
)
from vrtwist.unixlisten import (
    DEFAULT_BACKLOG,
    UNIXListenEndpoint,
    access_from_options,
    listen_endpoint,
    with_backlog,
)

NOGROUP = 65534


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class _Umask:
    """Run a block under a given umask (the point: the result must not depend on it)."""

    def __init__(self, mask: int) -> None:
        self.mask = mask

    def __enter__(self) -> None:
        self.old = os.umask(self.mask)

    def __exit__(self, *exc: object) -> None:
        os.umask(self.old)


class TempDir:
    def make_dir(self, case: SynchronousTestCase) -> str:
        d = tempfile.mkdtemp(prefix="ac-access-")
        case.addCleanup(shutil.rmtree, d, True)
        world_traversable(d)
        return d


class BindTests(SynchronousTestCase):
    """``bind_unix`` for stream and datagram sockets."""

    def setUp(self) -> None:
        self.dir = TempDir().make_dir(self)

    def _bound(self, kind: int, name: str, **kw: object) -> str:
        path = os.path.join(self.dir, name)
        s = socket.socket(socket.AF_UNIX, kind)
        self.addCleanup(s.close)
        bind_unix(s, path, **kw)  # type: ignore[arg-type]
        return path

    def test_owner_only_whatever_the_umask(self) -> None:
        """0600 for stream and datagram sockets under umask 0 and 022."""
        for mask in (0, 0o022, 0o077):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with _Umask(mask):
                    path = self._bound(kind, f"s{mask}-{kind}")
                self.assertEqual(_mode(path), OWNER_MODE, (oct(mask), kind))
                self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))

    def test_group_mode_and_group(self) -> None:
        """With a group: 0660 and that group, under umask 0 and 022."""
        for mask in (0, 0o022):
            with _Umask(mask):
                path = self._bound(socket.SOCK_DGRAM, f"g{mask}", mode=GROUP_MODE, gid=NOGROUP)
            self.assertEqual(_mode(path), GROUP_MODE)
            self.assertEqual(os.stat(path).st_gid, NOGROUP)

    def test_no_window_at_bind(self) -> None:
        """Right after bind(2), before any chmod, the file is already owner-only (umask 0).

        This is the step that makes the mechanism race-free: the socket never exists
        with the umask's mode, even for the instant before the final chmod.
        """
        path = os.path.join(self.dir, "raw")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(s.close)
        with _Umask(0):
            restrict_before_bind(s)
            s.bind(path)
        self.assertEqual(_mode(path), OWNER_MODE)
        # without the step, this kernel would have given 0777 under umask 0
        t = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(t.close)
        with _Umask(0):
            t.bind(path + ".plain")
        self.assertEqual(_mode(path + ".plain"), 0o777)

    def test_abstract_address_is_left_alone(self) -> None:
        """An abstract address has no file: bound as it is, no chmod attempted."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        name = f"\0ac-access-{os.getpid()}"
        bind_unix(s, name)
        self.assertEqual(s.getsockname(), name.encode())

    def test_unknown_group_is_a_clear_error(self) -> None:
        """``--socket-group`` naming no group: a usage error that names it."""
        with self.assertRaises(usage.UsageError) as cm:
            access_from_options({"socket-group": "ac-no-such-group-xyz"})
        self.assertIn("ac-no-such-group-xyz", str(cm.exception))
        self.assertEqual(SocketAccess.from_group(None).mode, OWNER_MODE)
        self.assertEqual(SocketAccess.from_group("65534").gid, NOGROUP)
        self.assertEqual(SocketAccess.from_group(grp.getgrgid(0).gr_name).gid, 0)


class EndpointStringTests(SynchronousTestCase):
    """``listen_endpoint``: the strings users pass get the mechanism, others pass through."""

    def test_unix_string_is_restricted(self) -> None:
        r = MemoryReactorClock()
        ep = listen_endpoint(r, "unix:/x/y.sock:backlog=7")
        assert isinstance(ep, UNIXListenEndpoint)
        self.assertEqual((ep.path, ep.backlog, ep.mode), ("/x/y.sock", 7, OWNER_MODE))
        ep = listen_endpoint(r, "unix:/x/y.sock", SocketAccess(NOGROUP))
        assert isinstance(ep, UNIXListenEndpoint)
        self.assertEqual((ep.mode, ep.access.gid), (GROUP_MODE, NOGROUP))

    def test_explicit_mode_is_honoured(self) -> None:
        """``mode=`` written by the operator is an explicit choice; kept."""
        ep = listen_endpoint(MemoryReactorClock(), "unix:/x/y.sock:mode=640")
        assert isinstance(ep, UNIXListenEndpoint)
        self.assertEqual(ep.mode, 0o640)

    def test_other_endpoints_unchanged(self) -> None:
        ep = listen_endpoint(MemoryReactorClock(), "tcp:0:interface=127.0.0.1")
        self.assertIsInstance(ep, TCP4ServerEndpoint)

    def test_fake_reactor_records_the_mode(self) -> None:
        r = MemoryReactorClock()
        listen_endpoint(r, "unix:/x/y.sock").listen(Factory.forProtocol(Protocol))
        self.assertEqual(r.unixServers[0][0], "/x/y.sock")
        self.assertEqual(r.unixServers[0][3], OWNER_MODE)


class BacklogTests(SynchronousTestCase):
    """Every listener gets a backlog that takes a burst of clients; the string may say
    another (200 REST clients at once overflowed Twisted's default of 50)."""

    def test_default_is_sane(self) -> None:
        self.assertGreaterEqual(DEFAULT_BACKLOG, 1024)
        r = MemoryReactorClock()
        listen_endpoint(r, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(Protocol))
        listen_endpoint(r, "unix:/x/y.sock").listen(Factory.forProtocol(Protocol))
        self.assertEqual(r.tcpServers[0][2], DEFAULT_BACKLOG)
        self.assertEqual(r.unixServers[0][2], DEFAULT_BACKLOG)

    def test_endpoint_string_wins(self) -> None:
        r = MemoryReactorClock()
        listen_endpoint(r, "tcp:0:backlog=77:interface=127.0.0.1").listen(
            Factory.forProtocol(Protocol))
        listen_endpoint(r, "tcp6:0:interface=\\:\\:1:backlog=5", backlog=9).listen(
            Factory.forProtocol(Protocol))
        self.assertEqual([s[2] for s in r.tcpServers], [77, 5])

    def test_caller_default(self) -> None:
        r = MemoryReactorClock()
        listen_endpoint(r, "tcp:0", backlog=300).listen(Factory.forProtocol(Protocol))
        self.assertEqual(r.tcpServers[0][2], 300)

    def test_strings_without_a_backlog_option_pass_unchanged(self) -> None:
        self.assertEqual(with_backlog("systemd:domain=INET:index=0"),
                         "systemd:domain=INET:index=0")
        self.assertEqual(with_backlog("unix:/a\\:backlog=b"), "unix:/a\\:backlog=b:backlog=1024")
        self.assertEqual(with_backlog("tcp:9091", 64), "tcp:9091:backlog=64")
        self.assertEqual(with_backlog("vsock:1234", 64), "vsock:1234:backlog=64")

    def test_rest_listener_uses_it(self) -> None:
        """The agent's REST listener: the default unless ``--rest`` says otherwise."""
        from vrtwist.agent.tap import Options

        self.assertNotIn("backlog", Options()["rest"])
        r = MemoryReactorClock()
        listen_endpoint(r, Options()["rest"]).listen(Factory.forProtocol(Protocol))
        self.assertEqual(r.tcpServers[0][2], DEFAULT_BACKLOG)


class ListenerAsNobodyTests(TestCase):
    """A real listener from a ``unix:`` string: nobody is refused, root served."""

    def setUp(self) -> None:
        need_root()
        self.dir = TempDir().make_dir(self)

    async def _listen(self, description: str, access: SocketAccess | None = None) -> str:
        path = description.split(":")[1]
        with _Umask(0):  # the worst umask: must not matter
            port = await listen_endpoint(reactor, description, access).listen(
                Factory.forProtocol(Protocol)
            )
        self.addCleanup(port.stopListening)
        return path

    async def test_nobody_refused_owner_served(self) -> None:
        path = await self._listen(f"unix:{self.dir}/api.sock")
        self.assertEqual(_mode(path), OWNER_MODE)
        self.assertEqual(connect_as_nobody(path), "EACCES")
        proto = await UNIXClientEndpoint(reactor, path).connect(Factory.forProtocol(Protocol))
        self.assertTrue(proto.transport.connected)
        proto.transport.loseConnection()

    async def test_group_member_served_others_refused(self) -> None:
        """``--socket-group``: a member of that group connects, a non-member does not."""
        path = await self._listen(f"unix:{self.dir}/g.sock", SocketAccess(NOGROUP))
        self.assertEqual(_mode(path), GROUP_MODE)
        self.assertEqual(connect_as_nobody(path, group=NOGROUP), "ok")
        # nobody whose only groups exclude the socket's: refused
        os.chown(path, -1, 0)
        self.assertEqual(connect_as_nobody(path), "EACCES")

    async def test_twisted_default_would_have_let_nobody_in(self) -> None:
        """The same string through plain serverFromString: 0666, nobody connects.

        This is the attack as it was; the test above shows the fix closes it.
        """
        from twisted.internet.endpoints import serverFromString

        path = f"{self.dir}/plain.sock"
        port = await serverFromString(reactor, f"unix:{path}").listen(
            Factory.forProtocol(Protocol)
        )
        self.addCleanup(port.stopListening)
        self.assertEqual(connect_as_nobody(path), "ok")

    def test_datagram_socket_refuses_nobody(self) -> None:
        """The same mechanism for SOCK_DGRAM binds (the pkt0 sockets will use it)."""
        path = os.path.join(self.dir, "dgram")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        bind_unix(s, path)
        self.assertEqual(as_nobody("sendto", path), "EACCES")
        c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(c.close)
        c.sendto(b"root", path)
        self.assertEqual(s.recv(10), b"root")


class PrivateFileTests(SynchronousTestCase):
    """``create_private`` and ``private_dir``: exact modes whatever the umask."""

    def setUp(self) -> None:
        self.dir = TempDir().make_dir(self)

    def test_file_modes(self) -> None:
        for mask in (0, 0o022):
            for access, want in ((None, 0o600), (SocketAccess(NOGROUP), 0o640)):
                path = os.path.join(self.dir, f"f{mask}{want}")
                with _Umask(mask):
                    os.close(create_private(path, access))
                self.assertEqual(_mode(path), want)

    def test_dir_modes_tightened(self) -> None:
        """A directory an older run left 0755 is tightened to 0700 (0750 with a group)."""
        d = os.path.join(self.dir, "ports")
        os.mkdir(d, 0o755)
        os.chmod(d, 0o755)
        with _Umask(0):
            private_dir(d)
            self.assertEqual(_mode(d), 0o700)
            private_dir(os.path.join(d, "a", "b"), SocketAccess(NOGROUP))
        self.assertEqual(_mode(os.path.join(d, "a", "b")), 0o750)
        self.assertEqual(os.stat(os.path.join(d, "a", "b")).st_gid, NOGROUP)

    def test_never_an_existing_file_or_symlink(self) -> None:
        """An existing file (old mode, old readers) or a symlink is refused, left untouched."""
        target = os.path.join(self.dir, "target")
        with open(target, "w") as f:
            f.write("keep")
        link = os.path.join(self.dir, "link")
        os.symlink(target, link)
        self.assertRaises(FileExistsError, create_private, target)
        self.assertRaises(FileExistsError, create_private, link)
        with open(target) as f:
            self.assertEqual(f.read(), "keep")


class DaemonListenerTests(SynchronousTestCase):
    """Every daemon's ``unix:`` listen options go through the mechanism (fake reactor)."""

    def _modes(self, make: object, options: object, argv: list[str]) -> list[tuple[str, int]]:
        r = MemoryReactorClock()
        options.parseOptions(argv)  # type: ignore[attr-defined]
        svc = make(options, r)  # type: ignore[operator]
        svc.startService()
        self.addCleanup(svc.stopService)
        return [(u[0], u[3]) for u in r.unixServers]

    def test_vspc_listen_and_api(self) -> None:
        from vrtwist.vic import vspc_tap

        got = self._modes(vspc_tap.makeService, vspc_tap.Options(),
                          ["--listen", "unix:/x/esx.sock", "--api", "unix:/x/api.sock"])
        self.assertEqual(got, [("/x/esx.sock", OWNER_MODE), ("/x/api.sock", OWNER_MODE)])

    def test_vsock_relay_listen_with_group(self) -> None:
        from vrtwist.vsock import relay_tap

        got = self._modes(relay_tap.makeService, relay_tap.Options(),
                          ["--listen", "unix:/x/r.sock", "--backend", "tcp:127.0.0.1:1",
                           "--socket-group", str(NOGROUP)])
        self.assertEqual(got, [("/x/r.sock", GROUP_MODE)])

    def test_vpnkit_data_and_api(self) -> None:
        from vrtwist.vpnkit import forwarder_tap

        got = self._modes(forwarder_tap.makeService, forwarder_tap.Options(),
                          ["--data-listen", "unix:/x/data.sock", "--api", "unix:/x/api.sock"])
        self.assertEqual(got, [("/x/data.sock", OWNER_MODE), ("/x/api.sock", OWNER_MODE)])

    def test_unknown_socket_group_refused_at_parse(self) -> None:
        from vrtwist.vic import vspc_tap
        from vrtwist.vpnkit import forwarder_tap

        with self.assertRaises(usage.UsageError):
            forwarder_tap.Options().parseOptions(
                ["--data-listen", "/x/d.sock", "--socket-group", "ac-no-such-group-xyz"])
        with self.assertRaises(usage.UsageError):
            vspc_tap.makeService(
                {**_parsed(vspc_tap.Options(), []), "socket-group": "ac-no-such-group-xyz"},  # type: ignore[arg-type]
                MemoryReactorClock())


def _parsed(options: usage.Options, argv: list[str]) -> usage.Options:
    options.parseOptions(argv)
    return options

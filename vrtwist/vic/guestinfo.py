"""VIC's guestinfo channel: key names, value encodings, transports, and a watcher.

guestinfo is VMX ``extraConfig``: the appliance writes configuration the guest
reads (read-only keys, ``/`` separators after ``guestinfo.vice./``), and the
guest publishes state the appliance reads (read-write keys, ``.`` separators
after ``guestinfo.vice..``). Map entries and slice indices join with ``|``;
``@secret`` and ``@non-persistent`` go at the very end (docs/protocols/vic.md).

Transports: inside a VM, ``vmware-rpctool 'info-get KEY'`` / ``'info-set KEY
VALUE'`` (the backdoor RPC); anywhere else, :class:`FileTransport`, one file per
key with atomic replace, so the same API runs in tests and on a laptop.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from zope.interface import implementer

from vrtwist.logfields import Logger
from vrtwist.vic.interfaces import IGuestInfoTransport

PREFIX = "guestinfo.vice."
READ_ONLY = PREFIX + "/"
READ_WRITE = PREFIX + "."
NIL = "<nil>"
SECRET = "@secret"
NON_PERSISTENT = "@non-persistent"

__all__ = [
    "FileTransport",
    "GuestInfo",
    "GuestInfoError",
    "RpcToolTransport",
    "decodeIPNet",
    "detectTransport",
    "encodeIPNet",
    "key",
]


class GuestInfoError(Exception):
    """A key the caller may not write, a malformed value, or a failed transport."""


def key(
    path: Sequence[str],
    readOnly: bool = False,
    secret: bool = False,
    nonPersistent: bool = False,
    hidden: bool = False,
) -> str:
    """Build a VIC key from path elements.

    >>> key(["common", "id"], readOnly=True)
    'guestinfo.vice./common/id'
    >>> key(["sessions|abc", "status"])
    'guestinfo.vice..sessions|abc.status'
    """
    if not path:
        raise GuestInfoError("a key needs at least one path element")
    for part in path:
        if not part or "/" in part:
            raise GuestInfoError(f"path element {part!r} is empty or contains '/'")
    sep = "/" if readOnly else "."
    name = (READ_ONLY if readOnly else READ_WRITE) + sep.join(path)
    if hidden:
        name = name[len("guestinfo.") :]
    if secret:
        name += SECRET
    if nonPersistent:
        name += NON_PERSISTENT
    return name


def isReadOnly(name: str) -> bool:
    """Read-only keys are the ones the guest cannot write (VIC refuses keys with '/')."""
    return "/" in name


def entry(collection: str, ident: str) -> str:
    """``sessions`` + ``abc`` -> ``sessions|abc`` (map entry or slice index)."""
    if "|" in ident or "/" in ident:
        raise GuestInfoError(f"identifier {ident!r} may not contain '|' or '/'")
    return f"{collection}|{ident}"


def encodeIPNet(net: str) -> tuple[str, str]:
    """``10.0.0.5/24`` -> (base64 of the 4 IP bytes, base64 of the 4 mask bytes)."""
    try:
        iface = ipaddress.ip_interface(net)
    except ValueError as e:
        raise GuestInfoError(f"{net!r} is not an address with prefix: {e}") from None
    return (
        base64.b64encode(iface.ip.packed).decode(),
        base64.b64encode(iface.network.netmask.packed).decode(),
    )


def decodeIPNet(ip: str, mask: str) -> str:
    """Inverse of :func:`encodeIPNet`: ``10.0.0.5/24``."""
    try:
        raw = base64.b64decode(ip, validate=True)
        rawMask = base64.b64decode(mask, validate=True)
    except ValueError as e:
        raise GuestInfoError(f"bad base64 in IP/Mask pair {ip!r}/{mask!r}: {e}") from None
    if len(raw) not in (4, 16) or len(rawMask) != len(raw):
        raise GuestInfoError(f"IP of {len(raw)} bytes with a mask of {len(rawMask)} bytes")
    m = int.from_bytes(rawMask, "big")
    bits = bin(m).count("1")
    width = 8 * len(rawMask)
    if m != ((1 << width) - 1) ^ ((1 << (width - bits)) - 1):
        raise GuestInfoError(f"mask {rawMask.hex()} is not contiguous")
    addr = ipaddress.ip_address(raw)
    return f"{addr}/{bits}"


@implementer(IGuestInfoTransport)
class FileTransport:
    """One file per key under ``directory``; writes are atomic (temp file + fsync + rename)."""

    name = "file"

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, quote(name, safe=""))

    def get(self, key: str) -> str | None:
        try:
            with open(self._path(key), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def set(self, key: str, value: str) -> None:
        os.makedirs(self.directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(value)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path(key))
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def keys(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(unquote(n) for n in names if not n.startswith(".tmp-"))

    def stamp(self, key: str) -> tuple[int, int] | None:
        """(mtime_ns, inode) of a key's file: cheap change detection for watchers."""
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)


@implementer(IGuestInfoTransport)
class RpcToolTransport:
    """``vmware-rpctool`` (open-vm-tools): the real backdoor inside a VMware guest."""

    name = "rpctool"
    _log = Logger()

    def __init__(self, tool: str = "vmware-rpctool", timeout: float = 10.0) -> None:
        self.tool = tool
        self.timeout = timeout

    def _run(self, command: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.tool, command],
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise GuestInfoError(f"{self.tool} failed: {e}") from None

    def get(self, key: str) -> str | None:
        r = self._run(f"info-get {key}")
        if r.returncode != 0:
            # "No value found" is how the backdoor says "unset"
            return None
        return r.stdout[:-1] if r.stdout.endswith("\n") else r.stdout

    def set(self, key: str, value: str) -> None:
        r = self._run(f"info-set {key} {value}")
        if r.returncode != 0:
            raise GuestInfoError(
                f"{self.tool} info-set {key} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}"
            )


def detectTransport(
    directory: str | None = None, tool: str = "vmware-rpctool"
) -> IGuestInfoTransport:
    """``vmware-rpctool`` when it is on PATH (and no directory was asked for), else files."""
    if directory is None and shutil.which(tool):
        return RpcToolTransport(tool)
    return FileTransport(directory or os.environ.get("VIC_GUESTINFO_DIR", "/run/vrtwist/guestinfo"))


@dataclass
class SessionState:
    """What the tether publishes about one session (VIC's container executor fields)."""

    started: str | None
    status: int | None
    createtime: int | None
    starttime: int | None
    stoptime: int | None

    @property
    def launch_error(self) -> str | None:
        """VIC's error reporting: ``started`` holds the error text when launch failed."""
        if self.started in (None, "", "true"):
            return None
        return self.started


class GuestInfo:
    """VIC's keys over a transport; ``role`` is ``guest`` (tether) or ``appliance``."""

    def __init__(self, transport: IGuestInfoTransport, role: str = "guest") -> None:
        if role not in ("guest", "appliance"):
            raise GuestInfoError(f"role {role!r} is neither 'guest' nor 'appliance'")
        self.transport = transport
        self.role = role

    # raw access

    def get(self, name: str) -> str | None:
        value = self.transport.get(name)
        if value == NIL:
            return ""
        return value

    def set(self, name: str, value: str) -> None:
        if not name.startswith(("guestinfo.", "vice.")):
            raise GuestInfoError(f"{name!r} is not a guestinfo key")
        if self.role == "guest" and isReadOnly(name):
            raise GuestInfoError(f"{name!r} is read-only for the guest (it contains '/')")
        self.transport.set(name, value if value != "" else NIL)

    # what the tether publishes

    def _session(self, session: str, field: str, exec_session: bool = False) -> str:
        coll = "execs" if exec_session else "sessions"
        return key([entry(coll, session), *field.split(".")], nonPersistent=exec_session)

    def publish_started(
        self, session: str, error: str | None = None, exec_session: bool = False
    ) -> None:
        """``true`` once launched, else the launch error text."""
        self.set(self._session(session, "started", exec_session), "true" if error is None else error)

    def publish_status(self, session: str, code: int, exec_session: bool = False) -> None:
        self.set(self._session(session, "status", exec_session), str(int(code)))

    def publish_time(self, session: str, which: str, when: int, exec_session: bool = False) -> None:
        if which not in ("createtime", "starttime", "stoptime"):
            raise GuestInfoError(f"{which!r} is not createtime, starttime or stoptime")
        self.set(self._session(session, f"detail.{which}", exec_session), str(int(when)))

    def publish_assigned_ip(self, network: str, net: str) -> None:
        ip, mask = encodeIPNet(net)
        base = [entry("networks", network), "assigned"]
        self.set(key([*base, "IP"]), ip)
        self.set(key([*base, "Mask"]), mask)

    def publish_resurrections(self, count: int) -> None:
        self.set(key(["diagnostics", "resurrections"]), str(int(count)))

    # what the appliance reads

    def session(self, session: str, exec_session: bool = False) -> SessionState:
        def num(field: str) -> int | None:
            v = self.get(self._session(session, field, exec_session))
            if v in (None, ""):
                return None
            try:
                return int(v)
            except ValueError:
                raise GuestInfoError(
                    f"{field} of session {session} is {v!r}, not an integer"
                ) from None

        return SessionState(
            started=self.get(self._session(session, "started", exec_session)),
            status=num("status"),
            createtime=num("detail.createtime"),
            starttime=num("detail.starttime"),
            stoptime=num("detail.stoptime"),
        )

    def assigned_ip(self, network: str) -> str | None:
        base = [entry("networks", network), "assigned"]
        ip, mask = self.get(key([*base, "IP"])), self.get(key([*base, "Mask"]))
        if not ip or not mask:
            return None
        return decodeIPNet(ip, mask)

    # appliance -> guest configuration (read-only for the guest)

    #: the name before the naming rule (docs/contributing.md); docs/vic.md documented it
    assignedIP = assigned_ip

    def configure(self, path: Sequence[str], value: str) -> None:
        if self.role != "appliance":
            raise GuestInfoError("only the appliance writes read-only configuration keys")
        self.transport.set(key(path, readOnly=True), value if value != "" else NIL)

    def container_id(self) -> str | None:
        return self.get(key(["common", "id"], readOnly=True))


class GuestInfoWatcher:
    """Polls keys and calls back on change: the appliance's stand-in for the
    property collector's ``WaitForKeyChange``. Uses an injected clock."""

    _log = Logger()

    def __init__(
        self,
        info: GuestInfo,
        keys: Sequence[str],
        changed: Callable[[str, str | None], Any],
        clock: Any,
        interval: float = 1.0,
    ) -> None:
        from twisted.internet.task import LoopingCall

        self.info = info
        self.keys = list(keys)
        self.changed = changed
        self.last: dict[str, str | None] = {}
        self._loop = LoopingCall(self.poll)
        self._loop.clock = clock
        self.interval = interval

    def start(self) -> None:
        for k in self.keys:
            self.last[k] = self.info.get(k)
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def poll(self) -> None:
        for k in self.keys:
            try:
                v = self.info.get(k)
            except GuestInfoError as e:
                self._log.warn("guestinfo read of {key} failed: {e}", key=k, e=e)
                continue
            if v != self.last.get(k):
                self.last[k] = v
                self.changed(k, v)

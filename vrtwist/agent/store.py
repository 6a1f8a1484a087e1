"""Port files under ``<state-dir>/ports/``: one JSON file per port, written atomically.

The real agent writes with a plain ``ofstream`` and ignores failures; here every write goes
to a temporary file in the same directory, is fsynced, renamed over the target and the
directory is fsynced, so a crash leaves either the old or the new file, never half of one.
Files (and the temporary files) are 0600 and the directories 0700 whatever the umask:
VM names and addresses are not every local user's to read.
Errors propagate (:class:`PortFileError`) so the REST layer can refuse the request.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from vrtwist.access import private_dir
from vrtwist.agent.interfaces import IPortStore
from vrtwist.agent.model import normalise_uuid
from vrtwist.logfields import Logger

MAX_PORT_FILE = 64 * 1024


class PortFileError(OSError):
    """A port file could not be written, removed or read."""


#: Port files hold VM names and addresses: the agent's alone, whatever the umask.
PORT_FILE_MODE = 0o600
PORT_DIR_MODE = 0o700


def _open_private_tmp(tmp: Path) -> int:
    """The temporary file a port file is written through, exactly 0600 (never a symlink)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, PORT_FILE_MODE)
    try:
        os.fchmod(fd, PORT_FILE_MODE)  # a leftover temp file keeps its old mode otherwise
    except OSError:
        os.close(fd)
        raise
    return fd


_LOWER_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u00([0-9a-f]{2})")


def agent_json(body: dict[str, Any]) -> bytes:
    """``body`` serialised as the real agent's rapidjson ``PrettyWriter`` does: members in
    the given order, four-space indent, ``"key": value``, UTF-8 unescaped, control
    characters as upper-case ``\\u00XX``, no final newline."""
    text = json.dumps(body, indent=4, ensure_ascii=False)
    text = _LOWER_ESCAPE.sub(lambda m: m.group(1) + "\\u00" + m.group(2).upper(), text)
    return text.encode("utf-8", "surrogateescape")


def _file_bytes(body: dict[str, Any] | bytes) -> bytes:
    """Bytes given are written as they are; a dict the way vrouter-port-control's are."""
    if isinstance(body, bytes):
        return body
    return (json.dumps(body, indent=4, sort_keys=True) + "\n").encode()


def write_json_atomic(path: Path, body: dict[str, Any] | bytes) -> None:
    """Write ``body`` (serialised JSON, or a dict) to ``path`` with temp + fsync + rename."""
    data = _file_bytes(body)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = _open_private_tmp(tmp)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise PortFileError(e.errno, f"cannot write {path}: {e.strerror}") from e


#: :func:`write_json_group` result of an item whose ``unchanged`` check said so: not written.
UNCHANGED = "unchanged"

GroupItem = tuple[Path, dict[str, Any] | bytes] | tuple[
    Path, dict[str, Any] | bytes, Callable[[], bool] | None]


def write_json_group(items: list[GroupItem]) -> list[PortFileError | str | None]:
    """Write several files atomically with one journal commit for the lot (group commit).

    Every temporary file is written, then all are fsynced (the first fsync commits the
    journal transaction that holds them all, the others find little left to do), then all
    are renamed and each directory is fsynced once.  Returns one error (or None) per item;
    a failed item never affects the others.  An item's optional third element is a check
    run here, off the reactor thread: when it says the file already holds this content the
    item is not written and its result is :data:`UNCHANGED`.
    """
    results: list[PortFileError | str | None] = [None] * len(items)
    staged: list[tuple[int, int, Path, Path]] = []  # (item, fd, tmp, path)
    for i, item in enumerate(items):
        path, body = item[0], item[1]
        check = item[2] if len(item) > 2 else None
        if check is not None and _unchanged(check):
            results[i] = UNCHANGED
            continue
        tmp = path.with_name(f".{path.name}.{os.getpid()}.g.tmp")
        fd = _write_tmp(tmp, _file_bytes(body))
        if isinstance(fd, OSError):
            results[i] = PortFileError(fd.errno, f"cannot write {path}: {fd.strerror}")
            continue
        staged.append((i, fd, tmp, path))
    # fsyncs issued together: ext4's journal (jbd2) merges concurrent fsyncs into one
    # commit, where one after another each waits for its own (measured 5-10x cheaper)
    synced = _fsync_all([fd for _i, fd, _t, _p in staged])
    renamed: list[tuple[int, Path]] = []
    for (i, fd, tmp, path), err in zip(staged, synced, strict=True):
        try:
            if err is not None:
                raise err
            os.close(fd)
            os.replace(tmp, path)
            renamed.append((i, path))
        except OSError as e:
            try:
                os.close(fd)
            except OSError:
                pass
            _discard(tmp)
            results[i] = PortFileError(e.errno, f"cannot write {path}: {e.strerror}")
    _sync_dirs(renamed, results)
    return results


def _unchanged(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:  # noqa: BLE001 - a check that fails proves nothing: write the file
        return False


def _write_tmp(tmp: Path, data: bytes) -> int | OSError:
    """A new private ``tmp`` holding ``data``: its open fd, or why it could not be written."""
    try:
        fd = _open_private_tmp(tmp)
    except OSError as e:
        return e
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        os.close(fd)
        _discard(tmp)
        return e
    return fd


def _sync_dirs(renamed: list[tuple[int, Path]], results: list[PortFileError | str | None]) -> None:
    """fsync each directory once; a failure is every renamed item's there."""
    for d in {p.parent for _, p in renamed}:
        try:
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            for i, p in renamed:
                if p.parent == d:
                    results[i] = PortFileError(e.errno, f"cannot sync {d}: {e.strerror}")


_FSYNC_THREADS = 8
_fsync_pool: Any = None
_fsync_pool_lock = threading.Lock()


def _fsync_one(fd: int) -> OSError | None:
    try:
        os.fsync(fd)
    except OSError as e:
        return e
    return None


def _fsync_all(fds: list[int]) -> list[OSError | None]:
    """fsync every descriptor, concurrently when there are several; one error per fd."""
    global _fsync_pool
    if len(fds) <= 1:
        return [_fsync_one(fd) for fd in fds]
    with _fsync_pool_lock:
        if _fsync_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _fsync_pool = ThreadPoolExecutor(_FSYNC_THREADS,
                                             thread_name_prefix="vrtwist-fsync")
    return list(_fsync_pool.map(_fsync_one, fds))


def _discard(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class GroupWriter:
    """Coalesces concurrent port-file writes into batches run by :func:`write_json_group`.

    ``run_io(f, *args)`` runs blocking work (in a thread for the service; inline in tests).
    While one batch is being written, new writes queue; they form the next batch.
    """

    def __init__(self, run_io: Callable[..., Deferred[Any]]) -> None:
        self._run_io = run_io
        self._queue: list[tuple[Path, dict[str, Any] | bytes, Callable[[], bool] | None,
                                Deferred[str | None]]] = []
        self._busy = False
        self.batches = 0

    def write(self, path: Path, body: dict[str, Any] | bytes,
              unchanged: Callable[[], bool] | None = None) -> Deferred[str | None]:
        """Queue a write; fires with None once durable, or :data:`UNCHANGED` when the
        ``unchanged`` check (run in the writer's thread) found the file already right."""
        d: Deferred[str | None] = Deferred()
        self._queue.append((path, body, unchanged, d))
        self._kick()
        return d

    def _kick(self) -> None:
        if self._busy or not self._queue:
            return
        batch, self._queue = self._queue, []
        self._busy = True
        self.batches += 1

        def done(results: list[PortFileError | str | None]) -> None:
            self._busy = False
            for (_p, _b, _c, d), res in zip(batch, results, strict=True):
                if isinstance(res, PortFileError):
                    d.errback(res)
                else:
                    d.callback(res)
            self._kick()

        def crashed(f: Any) -> None:
            self._busy = False
            for _p, _b, _c, d in batch:
                d.errback(f)
            self._kick()

        self._run_io(write_json_group, [(p, b, c) for p, b, c, _ in batch]).addCallbacks(
            done, crashed)


@dataclass(frozen=True)
class LoadedFile:
    """One file found at replay: its path and parsed JSON, or the reason it is unusable."""

    path: Path
    body: Any
    error: str | None = None


@implementer(IPortStore)
class PortStore:
    """The ``ports/`` directory (and ``ports/vm/<vm-name>/``) of one state directory."""

    _log = Logger()

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.ports_dir = Path(state_dir) / "ports"
        self.vm_dir = self.ports_dir / "vm"
        # the agent's own directories: 0700 even when an older run left them 0755
        private_dir(self.ports_dir)
        private_dir(self.vm_dir)
        removed = self.remove_stale_temp()
        if removed:
            self._log.info("removed {n} temporary file(s) left by killed writers in {dir}",
                           n=len(removed), dir=str(self.ports_dir))

    def remove_stale_temp(self) -> list[Path]:
        """Remove ``.<name>.<pid>.tmp`` / ``.<name>.<pid>.g.tmp`` files of dead writers.

        A writer killed between creating its temporary file and the rename leaves it
        behind for good (the name carries its pid, so nobody reuses it). Only files of
        processes that no longer exist go: ``vrouter-port-control`` writes here too
        (``--port_json_path``) and may be half-way through a write of its own while
        the agent starts, and the state directory is not under the run-dir lock.
        """
        removed: list[Path] = []
        dirs = [self.ports_dir, *(d for d in self.vm_dir.iterdir() if d.is_dir())]
        for d in dirs:
            for entry in d.iterdir():
                pid = _temp_writer(entry.name)
                if pid is None or _alive(pid):
                    continue
                try:
                    os.unlink(entry)
                except FileNotFoundError:
                    continue  # its writer finished or another cleaner got there first
                except OSError as e:
                    self._log.warn("cannot remove {path}: {e}", path=str(entry), e=e.strerror)
                    continue
                removed.append(entry)
        return removed

    def path_for(self, uuid: str) -> Path:
        return self.ports_dir / uuid

    def exists(self, uuid: str) -> bool:
        return self.path_for(uuid).is_file()

    def read(self, uuid: str) -> Any:
        return _read_json(self.path_for(uuid)).body

    def write(self, uuid: str, body: dict[str, Any]) -> None:
        """Write a port file as the real agent's writer formats it."""
        write_json_atomic(self.path_for(uuid), agent_json(body))

    def remove(self, uuid: str) -> None:
        _unlink(self.path_for(uuid))

    def write_vm(self, vm_name: str, vmi_uuid: str, body: dict[str, Any]) -> None:
        d = self.vm_dir / vm_name
        try:
            d.mkdir(mode=PORT_DIR_MODE, exist_ok=True)
            os.chmod(d, PORT_DIR_MODE)
        except OSError as e:
            raise PortFileError(e.errno, f"cannot create {d}: {e.strerror}") from e
        write_json_atomic(d / vmi_uuid, agent_json(body))

    def remove_vm(self, vm_name: str, vmi_uuid: str) -> None:
        d = self.vm_dir / vm_name
        _unlink(d / vmi_uuid)
        try:
            d.rmdir()
        except OSError:
            pass  # not empty or already gone

    def load_ports(self) -> Iterator[LoadedFile]:
        """Every regular file whose name is a uuid, as the real ``ReloadAllPorts`` does."""
        for entry in sorted(self.ports_dir.iterdir()):
            if entry.is_file() and normalise_uuid(entry.name) == entry.name:
                yield _read_json(entry)

    def load_vm_ports(self) -> Iterator[LoadedFile]:
        for d in sorted(self.vm_dir.iterdir()):
            if not d.is_dir():
                continue
            for entry in sorted(d.iterdir()):
                if entry.is_file() and normalise_uuid(entry.name) == entry.name:
                    yield _read_json(entry)


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)(?:\.g)?\.tmp$")


def _temp_writer(name: str) -> int | None:
    """The pid in a temporary file name of :func:`write_json_atomic`/``write_json_group``."""
    m = _TEMP_NAME.match(name)
    return int(m.group("pid")) if m else None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs, other than this process.

    Our own pid counts as dead: the store is built before this process writes anything,
    and an agent restarted in a container often gets the pid its predecessor had.
    """
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise PortFileError(e.errno, f"cannot remove {path}: {e.strerror}") from e


def _read_json(path: Path) -> LoadedFile:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PORT_FILE + 1)
    except OSError as e:
        return LoadedFile(path, None, f"cannot read: {e.strerror}")
    if len(data) > MAX_PORT_FILE:
        return LoadedFile(path, None, f"larger than {MAX_PORT_FILE} bytes")
    try:
        return LoadedFile(path, json.loads(data))
    except (ValueError, UnicodeDecodeError) as e:
        return LoadedFile(path, None, f"not JSON: {e}")
    except RecursionError:
        # json nests by recursion: a file of "[[[[..." must skip, not abort the replay
        return LoadedFile(path, None, "not JSON: nested deeper than the parser's limit")


#: the policy file holds every SG and network policy; bounded by the API's limits
MAX_POLICY_FILE = 64 * 1024 * 1024


class PolicyFile:
    """``<state>/policy.json``: the security groups, network policies and ports' SG lists
    set over REST, written whole and atomically on each change (changes are rare); with
    ``name="networks.json"`` the networks' settings likewise."""

    def __init__(self, state_dir: str | os.PathLike[str], name: str = "policy.json") -> None:
        self.path = Path(state_dir) / name

    def load(self) -> LoadedFile | None:
        """The saved configuration, or None when there is none."""
        if not self.path.exists():
            return None
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_POLICY_FILE + 1)
        except OSError as e:
            return LoadedFile(self.path, None, f"cannot read: {e.strerror}")
        if len(data) > MAX_POLICY_FILE:
            return LoadedFile(self.path, None, f"larger than {MAX_POLICY_FILE} bytes")
        try:
            return LoadedFile(self.path, json.loads(data))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            return LoadedFile(self.path, None, f"not JSON: {e}")

    def save(self, body: dict[str, Any]) -> None:
        write_json_atomic(self.path, body)

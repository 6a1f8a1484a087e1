"""Port files under ``<state-dir>/ports/``: one JSON file per port, written atomically.

The real agent writes with a plain ``ofstream`` and ignores failures; here every write goes
to a temporary file in the same directory, is fsynced, renamed over the target and the
directory is fsynced, so a crash leaves either the old or the new file, never half of one.
Errors propagate (:class:`PortFileError`) so the REST layer can refuse the request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from vrtwist.agent.interfaces import IPortStore
from vrtwist.agent.model import normalise_uuid

MAX_PORT_FILE = 64 * 1024


class PortFileError(OSError):
    """A port file could not be written, removed or read."""


def write_json_atomic(path: Path, body: dict[str, Any]) -> None:
    """Write ``body`` pretty-printed to ``path`` with temp + fsync + rename."""
    data = (json.dumps(body, indent=4, sort_keys=True) + "\n").encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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
        self.ports_dir.mkdir(parents=True, exist_ok=True)
        self.vm_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, uuid: str) -> Path:
        return self.ports_dir / uuid

    def exists(self, uuid: str) -> bool:
        return self.path_for(uuid).is_file()

    def read(self, uuid: str) -> Any:
        return _read_json(self.path_for(uuid)).body

    def write(self, uuid: str, body: dict[str, Any]) -> None:
        write_json_atomic(self.path_for(uuid), body)

    def remove(self, uuid: str) -> None:
        _unlink(self.path_for(uuid))

    def write_vm(self, vm_name: str, vmi_uuid: str, body: dict[str, Any]) -> None:
        d = self.vm_dir / vm_name
        try:
            d.mkdir(exist_ok=True)
        except OSError as e:
            raise PortFileError(e.errno, f"cannot create {d}: {e.strerror}") from e
        write_json_atomic(d / vmi_uuid, body)

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

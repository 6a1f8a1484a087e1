"""The agent's table of local ports: versions for ``/syncports``, files, observers.

This is the Python counterpart of ``PortSubscribeTable`` + ``PortIpcHandler``: it owns the
in-memory ports, keeps each port's file in step, and tells its observers (the datapath
model, the controller link) about adds and deletes.  It never does network I/O.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredLock, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from vrtwist.agent.interfaces import IPortObserver, IPortStore
from vrtwist.agent.model import (
    PORT_TYPE_NAMESPACE,
    PORT_TYPE_REMOTE,
    Port,
    PortValidationError,
    VmPort,
    port_from_json,
    port_from_vm,
    vm_port_to_json,
)
from vrtwist.agent.store import UNCHANGED, GroupWriter, PortFileError, agent_json
from vrtwist.logfields import Logger

DEFAULT_STALE_TIMEOUT = 60.0


class PortNotFound(KeyError):
    """No port with this uuid."""


class WrongPortType(ValueError):
    """The operation needs another port type (enable/disable only apply to ESXi ports)."""


def interface_exists(name: str) -> bool:
    """True when the OS has a network interface called ``name``."""
    return os.path.exists(f"/sys/class/net/{name}")


@dataclass
class _Entry:
    port: Port
    version: int
    vm: VmPort | None = None


class PortTable:
    """Ports announced over REST or replayed from files, keyed by lowercase uuid."""

    _log = Logger()

    def __init__(self, store: IPortStore, clock: IReactorTime, *,
                 tap_check: bool = True,
                 stale_timeout: float = DEFAULT_STALE_TIMEOUT,
                 exists: Callable[[str], bool] = interface_exists,
                 run_io: Callable[..., Deferred[Any]] | None = None) -> None:
        self.store = store
        # how blocking file I/O is run: in a thread pool by the service, inline in tests
        self._run_io = run_io or maybeDeferred
        self._writer = GroupWriter(self._run_io)
        self._locks: dict[str, DeferredLock] = {}
        self.clock = clock
        self.tap_check = tap_check
        self.stale_timeout = stale_timeout
        self._exists = exists
        self._ports: dict[str, _Entry] = {}
        self._observers: list[IPortObserver] = []
        self.version = 0
        self._stale_call: IDelayedCall | None = None

    # observers -------------------------------------------------------------------------

    def observe(self, observer: IPortObserver) -> None:
        """Add ``observer`` and replay every current port to it."""
        self._observers.append(observer)
        for entry in list(self._ports.values()):
            observer.portAdded(entry.port)

    # queries ---------------------------------------------------------------------------

    def get(self, uuid: str) -> Port | None:
        """The port with this (lowercase) uuid, or None."""
        entry = self._ports.get(uuid)
        return entry.port if entry else None

    def __len__(self) -> int:
        return len(self._ports)

    def ports(self) -> list[Port]:
        """Every port, in insertion order."""
        return [e.port for e in self._ports.values()]

    def ports_of_vm(self, vm_uuid: str) -> list[Port]:
        """The ports whose instance-id is ``vm_uuid``."""
        return [e.port for e in self._ports.values() if e.port.instance_id == vm_uuid]

    def vm_ports_named(self, vm_name: str) -> list[tuple[Port, VmPort]]:
        """Ports added through ``POST /vm`` for a VM name."""
        return [(e.port, e.vm) for e in self._ports.values()
                if e.vm is not None and e.vm.vm_name == vm_name]

    # checks ----------------------------------------------------------------------------

    def check(self, port: Port) -> None:
        """At replay only: refuse a port whose interface is missing (types 0 and 1 with the
        check on), as the real agent's start-up does.  A REST add is never refused for it:
        Nova/os-vif plug the port before libvirt creates the TAP, and the datapath attaches
        the device when it appears."""
        if (self.tap_check and port.type != PORT_TYPE_REMOTE
                and not self._exists(port.system_name)):
            raise PortValidationError(
                [f"system-name: interface {port.system_name!r} does not exist in the OS"])

    def device_exists(self, name: str) -> bool:
        """The OS has a device called ``name`` (the probe the table was given)."""
        return self._exists(name)

    # changes ---------------------------------------------------------------------------

    def add(self, port: Port, *, persist: bool = True, check_os: bool = False) -> None:
        """Add one port (``POST /port``); see :meth:`add_many`."""
        self.add_many([port], persist=persist, check_os=check_os)

    def add_many(self, ports: Iterable[Port], *, persist: bool = True,
                 check_os: bool = False) -> None:
        """Add ports all or nothing: check every one, write every file, then apply.

        A re-POST of a known port with the same VM only refreshes its version; with another
        VM or other settings the old port is replaced.  Raises PortValidationError (nothing
        changed) or PortFileError (files written by this call are removed again).
        """
        batch = self._checked(ports, check_os)
        written = self._write_files(batch) if persist else []
        self._apply_batch(batch, written)

    async def add_many_async(self, ports: Iterable[Port]) -> None:
        """:meth:`add_many` with the file writes off the reactor thread.

        Requests touching the same uuids are serialised, so files and table agree.
        """
        batch = self._checked(ports, False)

        async def go() -> None:
            todo = [p for p in batch if not self._known_same(p)]
            if not todo:
                self._apply_batch(batch, [])
                return
            # a file already holding the same port (written by vrouter-port-control just
            # before the POST) is not written again; checked in the writer's thread
            writes = DeferredList(
                [self._writer.write(self.store.path_for(p.id), agent_json(p.to_file_json()),
                                    partial(self._file_matches, p))
                 for p in todo], consumeErrors=True)
            # ports that are all new are programmed while their files are being written;
            # a failed write then takes them out again (a replacement waits for its file)
            early = all(p.id not in self._ports for p in batch)
            if early:
                try:
                    self._apply_new(batch)
                except Exception:
                    results = await writes
                    await self._run_io(self._undo_files, [
                        p.id for p, (ok, r) in zip(todo, results, strict=True)
                        if ok and r != UNCHANGED])
                    raise
            results = await writes
            written = [p.id for p, (ok, r) in zip(todo, results, strict=True)
                       if ok and r != UNCHANGED]
            failed: list[Any] = [r for ok, r in results if not ok]
            if failed:
                if early:
                    for p in batch:
                        self._remove(p.id)
                await self._run_io(self._undo_files, written)
                failed[0].raiseException()
            if not early:
                self._apply_batch(batch, written)
        await self._locked([p.id for p in batch], go)

    def _apply_new(self, batch: list[Port]) -> None:
        """Apply ports none of which is known yet, all or nothing."""
        done: list[str] = []
        try:
            for p in batch:
                self._apply(p)
                done.append(p.id)
        except Exception:
            for uuid in done:
                self._remove(uuid)
            raise

    def _undo_files(self, written: list[str]) -> None:
        for uuid in written:
            old = self._ports.get(uuid)
            try:
                if old is not None:
                    self.store.write(uuid, old.port.to_file_json())
                else:
                    self.store.remove(uuid)
            except PortFileError:
                self._log.error("cannot undo port file {uuid}", uuid=uuid)

    async def delete_async(self, uuid: str) -> Port | None:
        """:meth:`delete` with the unlink off the reactor thread (file first, then table)."""
        async def go() -> Port | None:
            entry = self._ports.get(uuid)
            vm = entry.vm if entry is not None else None
            await self._run_io(self._remove_files, uuid, vm)
            return self._remove(uuid)
        result: Port | None = await self._locked([uuid], go)
        return result

    def _remove_files(self, uuid: str, vm: VmPort | None) -> None:
        if vm is not None:
            self.store.remove_vm(vm.vm_name, uuid)
        self.store.remove(uuid)

    async def _locked(self, uuids: list[str], fn: Callable[[], Any]) -> Any:
        keys = sorted(set(uuids))
        locks = [self._locks.setdefault(k, DeferredLock()) for k in keys]
        for lock in locks:
            await lock.acquire()
        try:
            return await fn()
        finally:
            for k, lock in zip(keys, locks, strict=True):
                lock.release()
                if not lock.locked and not lock.waiting:
                    self._locks.pop(k, None)

    def _known_same(self, port: Port) -> bool:
        """A re-POST of a port already held with the same settings needs no file write."""
        entry = self._ports.get(port.id)
        return entry is not None and entry.port.same_config(port) and \
            self.store.exists(port.id)

    def _checked(self, ports: Iterable[Port], check_os: bool) -> list[Port]:
        batch = list(ports)
        problems: list[str] = []
        seen: set[str] = set()
        for p in batch:
            if p.id in seen:
                problems.append(f"id: {p.id} appears twice in one request")
            seen.add(p.id)
            if not check_os:
                continue
            try:
                self.check(p)
            except PortValidationError as e:
                problems.extend(e.problems)
        if problems:
            raise PortValidationError(problems)
        return batch

    def _apply_batch(self, batch: list[Port], written: list[str]) -> None:
        for i, p in enumerate(batch):
            try:
                self._apply(p)
            except Exception:
                # nothing after this port was applied: drop the files written for them
                for q in batch[i:]:
                    if q.id in written and q.id not in self._ports:
                        try:
                            self.store.remove(q.id)
                        except PortFileError:
                            pass
                raise

    def _write_files(self, batch: list[Port]) -> list[str]:
        written: list[str] = []
        try:
            for p in batch:
                if self._file_matches(p):
                    continue
                self.store.write(p.id, p.to_file_json())
                written.append(p.id)
        except PortFileError:
            self._undo_files(written)
            raise
        return written

    def _file_matches(self, port: Port) -> bool:
        if not self.store.exists(port.id):
            return False
        try:
            return port_from_json(self.store.read(port.id)).same_config(port)
        except (PortValidationError, TypeError):
            return False

    def _apply(self, port: Port, vm: VmPort | None = None) -> None:
        old = self._ports.get(port.id)
        if old is not None:
            if old.port.instance_id == port.instance_id and old.port.same_config(port):
                old.version = self.version
                return
            self._log.info("port {uuid} changed (vm {old} -> {new}); replacing it",
                           uuid=port.id, old=old.port.instance_id, new=port.instance_id)
            self._remove(port.id)
        self._ports[port.id] = _Entry(port, self.version, vm)
        for i, obs in enumerate(self._observers):
            try:
                obs.portAdded(port)
            except Exception:
                for done in self._observers[:i]:
                    done.portDeleted(port)
                del self._ports[port.id]
                raise
        self._log.info("port {uuid} added: {name} {mac} {ip} vn {vn}", uuid=port.id,
                       name=port.system_name, mac=port.mac_address, ip=port.ip_address,
                       vn=port.vn_id)

    def _remove(self, uuid: str) -> Port | None:
        entry = self._ports.pop(uuid, None)
        if entry is None:
            return None
        for obs in reversed(self._observers):
            try:
                obs.portDeleted(entry.port)
            except Exception:  # noqa: BLE001 - one observer's bug (logged) spares the rest
                self._log.failure("observer {obs} failed to delete port {uuid}",
                                  obs=obs, uuid=uuid)
        self._log.info("port {uuid} deleted", uuid=uuid)
        return entry.port

    def delete(self, uuid: str, *, persist: bool = True) -> Port | None:
        """Delete a port and its file (``DELETE /port``); unknown uuids are not an error."""
        entry = self._ports.get(uuid)
        if persist:
            if entry is not None and entry.vm is not None:
                self.store.remove_vm(entry.vm.vm_name, uuid)
            self.store.remove(uuid)
        return self._remove(uuid)

    def set_link_state(self, uuid: str, up: bool) -> Port:
        """``PUT /enable-port`` / ``/disable-port``: only ESXi (type 2) ports have a link."""
        entry = self._ports.get(uuid)
        if entry is None:
            raise PortNotFound(uuid)
        if entry.port.type != PORT_TYPE_REMOTE:
            raise WrongPortType(f"port {uuid} has type {entry.port.type}; only ESXi ports "
                                "(type 2) can be enabled or disabled")
        new = entry.port.with_link_state(1 if up else 0)
        self.store.write(uuid, new.to_file_json())
        entry.port = new
        return new

    # vm + vn API -----------------------------------------------------------------------

    def add_vm(self, vp: VmPort, *, persist: bool = True, check_os: bool = False) -> Port:
        """``POST /vm``: write ``vm/<name>/<vmi>``, then add the port (the interface is
        checked at replay only, as for :meth:`add`)."""
        port = port_from_vm(vp)
        if check_os:
            self.check(port)
        if persist:
            self.store.write_vm(vp.vm_name, vp.vmi_uuid, vm_port_to_json(vp))
        try:
            self._apply(port, vp)
        except Exception:
            if persist:
                self.store.remove_vm(vp.vm_name, vp.vmi_uuid)
            raise
        entry = self._ports[port.id]
        entry.vm = vp
        return port

    def delete_vm(self, vm_uuid: str, vmi_uuid: str | None = None) -> list[Port]:
        """Delete a VM's ports (all, or one VMI), with their files under ``vm/<name>/``."""
        gone = []
        for p in self.ports_of_vm(vm_uuid):
            if vmi_uuid is None or p.id == vmi_uuid:
                self.delete(p.id)
                gone.append(p)
        return gone

    # sync ------------------------------------------------------------------------------

    def sync(self) -> None:
        """``POST /syncports``: start a new version; unconfirmed ports go when the timer fires."""
        self.version += 1
        if self._stale_call is not None and self._stale_call.active():
            self._stale_call.cancel()
        self._stale_call = self.clock.callLater(self.stale_timeout, self._sweep)

    def _sweep(self) -> None:
        self._stale_call = None
        stale = [e.port.id for e in self._ports.values()
                 if e.version < self.version and e.port.type != PORT_TYPE_NAMESPACE]
        for uuid in stale:
            self._log.info("port {uuid} not re-confirmed after /syncports: removing", uuid=uuid)
            try:
                self.delete(uuid)
            except PortFileError as e:
                self._log.error("cannot remove stale port file {uuid}: {e}", uuid=uuid, e=e)
                self._remove(uuid)

    def stop(self) -> None:
        """Cancel the stale timer (service stop)."""
        if self._stale_call is not None and self._stale_call.active():
            self._stale_call.cancel()
        self._stale_call = None

    # replay ----------------------------------------------------------------------------

    def replay(self) -> tuple[int, list[str]]:
        """Load every port file as if POSTed again (files are not rewritten).

        Returns the number of ports added and one message per file that was skipped (bad
        JSON, a bad field, a missing TAP).  Skipped files stay on disk, as in the real
        agent, so a TAP created later is picked up at the next start.
        """
        added = 0
        skipped: list[str] = []
        for lf in self.store.load_ports():
            try:
                if lf.error is not None:
                    raise PortValidationError([lf.error])
                self.add(port_from_json(lf.body), persist=False, check_os=True)
                added += 1
            except (PortValidationError, PortFileError) as e:
                skipped.append(f"{lf.path}: {e}")
        from vrtwist.agent.model import vm_port_from_json

        for lf in self.store.load_vm_ports():
            try:
                if lf.error is not None:
                    raise PortValidationError([lf.error])
                self.add_vm(vm_port_from_json(lf.body), persist=False, check_os=True)
                added += 1
            except (PortValidationError, PortFileError) as e:
                skipped.append(f"{lf.path}: {e}")
        for msg in skipped:
            self._log.warn("port file skipped at replay: {msg}", msg=msg)
        return added, skipped


def describe(port: Port) -> dict[str, Any]:
    """GET JSON of a port."""
    return port.to_oper_json()

"""The forwarding extension as a Twisted service: tables, shared memory, ksync, ports.

``makeDatapathService`` is used by ``twistd vrouter-dp`` (``vrtwist.datapath.tap``) and,
embedded, by ``twistd vrouter`` (``vrtwist.agent.tap``). Both share
:class:`DatapathOptionsMixin` for the options of ARCHITECTURE.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from twisted.application.service import MultiService, Service
from twisted.internet.interfaces import IReactorUNIX
from twisted.python import usage

from vrtwist._process import DaemonService, RunDirLock, StartupError, describe
from vrtwist.access import SOCKET_GROUP_OPTION, SocketAccess, private_dir
from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import Datapath
from vrtwist.datapath.tables import DatapathConfig
from vrtwist.ksync.server import STYLE_DPDK, KsyncServerService
from vrtwist.logfields import Logger

__all__ = [
    "DEFAULT_RUN_DIR",
    "DatapathOptionsMixin",
    "DatapathService",
    "makeDatapathService",
]

#: the DPDK vRouter's socket directory (``VR_NETLINK_UNIX_NAME`` lives there)
DEFAULT_RUN_DIR = "/var/run/vrouter"

_log = Logger()


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


_positive.coerceDoc = "A positive integer."  # type: ignore[attr-defined]


def _vlan_tci(value: str) -> int:
    try:
        number = int(value, 0)
    except ValueError:
        number = -1
    if not 0 <= number <= 0xFFFF:
        raise ValueError("--vlan-tci must be a 16-bit TCI (0..65535)")
    return number


_vlan_tci.coerceDoc = "A 16-bit 802.1Q TCI (priority << 13 | VLAN id)."  # type: ignore[attr-defined]


class DatapathOptionsMixin:
    """Options of the forwarding extension, shared by ``vrouter-dp`` and ``vrouter``.

    Mix it in before ``usage.Options``: ``class Options(DatapathOptionsMixin,
    usage.Options)``; ``usage.Options`` collects ``optParameters`` from every base.
    """

    optParameters: ClassVar[list[list[Any]]] = [
        ["run-dir", None, DEFAULT_RUN_DIR, "run directory: dpdk_netlink, flow.shmem, bridge.shmem"],
        ["flow-entries", None, C.VR_DEF_FLOW_ENTRIES, "flow table entries", _positive],
        ["bridge-entries", None, C.VR_DEF_BRIDGE_ENTRIES, "bridge table entries", _positive],
        ["fabric", None, None, "fabric (physical) interface the overlay leaves by"],
        SOCKET_GROUP_OPTION,
        ["vlan-tci", None, None, "802.1Q TCI of the physical vif (--vlan_tci)", _vlan_tci],
    ]
    optFlags: ClassVar[list[list[Any]]] = [
        ["vtest-vlan", None, "tag every vif's tx with --vlan-tci (--vtest_vlan, VLAN vtests)"],
        ["no-ports", None, "attach no vif to an OS device (tables only, no packets)"],
    ]


class DatapathService(Service):
    """Owns the :class:`Datapath` and the shared-memory tables installed into it."""

    name = "datapath"
    _log = Logger()

    def __init__(self, datapath: Datapath, run_dir: str, shared: Any = None) -> None:
        self.datapath = datapath
        self.run_dir = run_dir
        self.shared = shared

    def stopService(self) -> None:
        super().stopService()
        close = getattr(self.shared, "close", None)
        if close is not None:
            close()


def _install_shared_memory(
    datapath: Datapath,
    run_dir: str,
    flow_entries: int,
    bridge_entries: int,
    access: SocketAccess | None = None,
) -> Any:
    """The flow and bridge tables in ``<run-dir>/*.shmem`` (``vrtwist.shmem``)."""
    from vrtwist.shmem.service import install

    return install(datapath, run_dir, flow_entries, bridge_entries, access=access)


def lock_datapath(run_dir: str) -> RunDirLock:
    """The run directory's datapath lock (StartupError if another datapath holds it)."""
    return RunDirLock(run_dir, "datapath", "forwarding extension (vrouter-dp or vrouter)")


def makeDatapathService(
    run_dir: str | Mapping[str, Any] = DEFAULT_RUN_DIR,
    flow_entries: int = C.VR_DEF_FLOW_ENTRIES,
    bridge_entries: int = C.VR_DEF_BRIDGE_ENTRIES,
    fabric: str | None = None,
    reactor: IReactorUNIX | None = None,
    config: DatapathConfig | None = None,
    access: SocketAccess | None = None,
    *,
    ports: bool = True,
    vlan_tci: int | None = None,
    vtest_vlan: bool = False,
    lock: RunDirLock | None = None,
) -> MultiService:
    """The forwarding extension: tables + shared memory + ksync on ``<run-dir>/dpdk_netlink``.

    ``lock``: the run directory's datapath lock when the caller took it already (the
    agent with the embedded datapath takes it before its own); otherwise taken here.

    ``run_dir`` may also be a parsed options mapping (``--run-dir``, ``--flow-entries``,
    ``--bridge-entries``, ``--fabric``, ``--socket-group``), as ``vrtwist.agent.tap``
    passes it.  The socket and table files are the owner's (``access`` adds a group); a
    run directory created here is 0700 (0750 with the group), an existing one is kept.
    """
    if isinstance(run_dir, Mapping):
        options = run_dir
        run_dir = str(options.get("run-dir") or DEFAULT_RUN_DIR)
        flow_entries = int(options.get("flow-entries") or flow_entries)
        bridge_entries = int(options.get("bridge-entries") or bridge_entries)
        fabric = options.get("fabric") or fabric
        if access is None:
            try:
                access = SocketAccess.from_group(options.get("socket-group"))
            except ValueError as e:
                raise usage.UsageError(f"--socket-group: {e}") from None
        ports = not options.get("no-ports", not ports)
        if options.get("vlan-tci") is not None:
            vlan_tci = int(options["vlan-tci"])
        vtest_vlan = bool(options.get("vtest-vlan", vtest_vlan))
    if vtest_vlan and vlan_tci is None:
        raise ValueError("--vtest-vlan needs --vlan-tci")
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor  # type: ignore[assignment]
    assert reactor is not None
    if not os.path.exists(run_dir):
        try:
            private_dir(run_dir, access)
        except OSError as e:
            raise StartupError(f"run directory {run_dir}: {describe(e)}") from None
    # before any file in the run directory is opened: a second datapath on it (a
    # vrouter-dp, or a vrouter with the embedded one) must leave the shm files alone
    if lock is None:
        lock = lock_datapath(run_dir)
    if config is None:
        config = DatapathConfig(flow_entries=flow_entries, bridge_entries=bridge_entries)
    datapath = Datapath(config)
    datapath.fabric = fabric
    shared = _install_shared_memory(datapath, run_dir, flow_entries, bridge_entries, access)
    top = DaemonService()
    top.hold(lock)
    top.setName("vrouter-dp")
    owner = DatapathService(datapath, run_dir, shared)
    owner.setServiceParent(top)
    ksync = KsyncServerService(reactor, run_dir, datapath, style=STYLE_DPDK, access=access)
    ksync.setName("ksync")
    ksync.setServiceParent(top)
    top.datapath = datapath  # type: ignore[attr-defined]
    if ports:
        from vrtwist.datapath.packets import PacketService

        packets = PacketService(datapath, reactor, shared, vlan_tci=vlan_tci,
                                vtest_vlan=vtest_vlan, run_dir=run_dir, access=access)
        packets.setServiceParent(top)
        top.packets = packets  # type: ignore[attr-defined]
    _log.info(
        "datapath: serving ksync on {path} ({flows} flows, {bridge} bridge entries)",
        path=ksync.path,
        flows=config.flow_entries,
        bridge=config.bridge_entries,
    )
    return top

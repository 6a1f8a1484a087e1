"""The forwarding extension as a Twisted service: tables, shared memory, ksync socket.

``makeDatapathService`` is used by ``twistd vrouter-dp`` (``vrtwist.datapath.tap``) and,
embedded, by ``twistd vrouter`` (``vrtwist.agent.tap``). Both share
:class:`DatapathOptionsMixin` for the options of ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.interfaces import IReactorUNIX
from twisted.logger import Logger

from vrtwist._process import DaemonService, RunDirLock
from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import Datapath
from vrtwist.datapath.tables import DatapathConfig
from vrtwist.ksync.server import STYLE_DPDK, KsyncServerService

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


class DatapathOptionsMixin:
    """Options of the forwarding extension, shared by ``vrouter-dp`` and ``vrouter``.

    Mix it in before ``usage.Options``: ``class Options(DatapathOptionsMixin,
    usage.Options)``; ``usage.Options`` collects ``optParameters`` from every base.
    """

    optParameters: list[list[Any]] = [
        ["run-dir", None, DEFAULT_RUN_DIR, "run directory: dpdk_netlink, flow.shmem, bridge.shmem"],
        ["flow-entries", None, C.VR_DEF_FLOW_ENTRIES, "flow table entries", _positive],
        ["bridge-entries", None, C.VR_DEF_BRIDGE_ENTRIES, "bridge table entries", _positive],
        ["fabric", None, None, "fabric (physical) interface the overlay leaves by"],
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
    datapath: Datapath, run_dir: str, flow_entries: int, bridge_entries: int
) -> Any:
    """The flow and bridge tables in ``<run-dir>/*.shmem`` (``vrtwist.shmem``)."""
    from vrtwist.shmem.service import install

    return install(datapath, run_dir, flow_entries, bridge_entries)


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
    lock: RunDirLock | None = None,
) -> MultiService:
    """The forwarding extension: tables + shared memory + ksync on ``<run-dir>/dpdk_netlink``.

    ``lock``: the run directory's datapath lock when the caller took it already (the
    agent with the embedded datapath takes it before its own); otherwise taken here.

    ``run_dir`` may also be a parsed options mapping (``--run-dir``, ``--flow-entries``,
    ``--bridge-entries``, ``--fabric``), as ``vrtwist.agent.tap`` passes it.
    """
    if isinstance(run_dir, Mapping):
        options = run_dir
        run_dir = str(options.get("run-dir") or DEFAULT_RUN_DIR)
        flow_entries = int(options.get("flow-entries") or flow_entries)
        bridge_entries = int(options.get("bridge-entries") or bridge_entries)
        fabric = options.get("fabric") or fabric
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor  # type: ignore[assignment]
    assert reactor is not None
    # before any file in the run directory is opened: a second datapath on it (a
    # vrouter-dp, or a vrouter with the embedded one) must leave the shm files alone
    if lock is None:
        lock = lock_datapath(run_dir)
    if config is None:
        config = DatapathConfig(flow_entries=flow_entries, bridge_entries=bridge_entries)
    datapath = Datapath(config)
    datapath.fabric = fabric
    shared = _install_shared_memory(datapath, run_dir, flow_entries, bridge_entries)
    top = DaemonService()
    top.hold(lock)
    top.setName("vrouter-dp")
    owner = DatapathService(datapath, run_dir, shared)
    owner.setServiceParent(top)
    ksync = KsyncServerService(reactor, run_dir, datapath, style=STYLE_DPDK)
    ksync.setName("ksync")
    ksync.setServiceParent(top)
    top.datapath = datapath  # type: ignore[attr-defined]
    _log.info(
        "datapath: serving ksync on {path} ({flows} flows, {bridge} bridge entries)",
        path=ksync.path,
        flows=config.flow_entries,
        bridge=config.bridge_entries,
    )
    return top

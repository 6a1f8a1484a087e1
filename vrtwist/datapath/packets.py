"""The packet side of the forwarding extension as a service: ports, link watcher, pipeline.

:class:`PacketService` builds the :class:`~vrtwist.datapath.ports.PortManager` (the
pipeline's frame output), the rtnetlink :class:`~vrtwist.datapath.links.LinkWatcher`
and the pipeline, and re-synchronises the ports after every ``vr_interface_req`` the
datapath answers, so a vif added over ksync is attached (or kept waiting for its device)
and a deleted one released. Traps go to :class:`CountingTrap` until the agent channel
(pkt0) exists: counted and dropped as ``vds_trap_no_if``, as the vRouter does without
an agent vif.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger
from zope.interface import implementer

from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import Datapath
from vrtwist.datapath.interfaces import IPacketPipeline, IPacketTrap, IRequestHandler
from vrtwist.datapath.links import LinkWatcher
from vrtwist.datapath.ports import Frame, PortManager

__all__ = ["CountingTrap", "DiscardPipeline", "PacketService", "make_pipeline"]

_log = Logger()


@implementer(IPacketTrap)
class CountingTrap:
    """No agent vif yet: every trap is counted under ``vds_trap_no_if`` and dropped."""

    def __init__(self, datapath: Datapath) -> None:
        self.datapath = datapath
        self.trapped = 0

    def trap(self, vif_index: int, vrf: int, code: int, param: int, param_1: int,
             stats: tuple[int, int, int, int], frame: bytes) -> bool:  # fmt: skip
        self.trapped += 1
        tables = self.datapath.tables
        tables.count_drop("trap_no_if", tables.interfaces.get(vif_index))
        return False


@implementer(IPacketPipeline)
class DiscardPipeline:
    """Stands in while no pipeline is installed: counts each frame in and drops it."""

    def __init__(self, datapath: Datapath) -> None:
        self.tables = datapath.tables

    def receive(self, vif_index: int, frame: Frame) -> None:
        vif = self.tables.interfaces.get(vif_index)
        if vif is not None:
            vif.counters["ipackets"] += 1
            vif.counters["ibytes"] += len(frame)
        self.tables.count_drop("discard", vif)


def make_pipeline(datapath: Datapath, output: PortManager, trap: IPacketTrap,
                  flows: Any = None, **options: Any) -> IPacketPipeline:  # fmt: skip
    """The one place the pipeline is imported: ``vrtwist.datapath.pipeline.Pipeline``."""
    try:
        from vrtwist.datapath.pipeline import Pipeline  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        _log.warn("datapath: no packet pipeline installed: frames are counted and dropped")
        return DiscardPipeline(datapath)
    pipeline: IPacketPipeline = Pipeline(datapath, output, trap, flows=flows, **options)
    return pipeline


@implementer(IRequestHandler)
class _InterfaceRequests:
    """``vr_interface_req`` answered as before, then the ports re-synchronised."""

    def __init__(self, inner: IRequestHandler, ports: PortManager) -> None:
        self.inner = inner
        self.ports = ports

    def handle(self, request: Any) -> list[list[Any]]:
        try:
            return self.inner.handle(request)
        finally:
            if getattr(request, "h_op", None) in (C.OP_ADD, C.OP_DEL):  # not GET/DUMP
                self.ports.sync()


class PacketService(Service):
    """Owns the ports, the link watcher and the pipeline of one datapath."""

    name = "packets"

    def __init__(self, datapath: Datapath, reactor: Any, shared: Any = None, *,
                 vlan_tci: int | None = None, vtest_vlan: bool = False) -> None:  # fmt: skip
        self.datapath = datapath
        self.reactor: IReactorFDSet = reactor
        self.ports = PortManager(datapath.tables, reactor)
        self.trap = CountingTrap(datapath)
        options: dict[str, Any] = {}
        if vlan_tci is not None:
            options["vlan_tci"] = vlan_tci
        if vtest_vlan:
            options["vtest_vlan"] = True
        self.pipeline = make_pipeline(
            datapath, self.ports, self.trap, getattr(shared, "flows", None), **options
        )
        self.ports.pipeline = self.pipeline
        self.watcher = LinkWatcher(reactor, self.ports.link_changed, self.ports.resync)
        inner = datapath.handlers["vr_interface_req"]
        datapath.register("vr_interface_req", _InterfaceRequests(inner, self.ports))
        datapath.reset_hooks.append(self.ports.sync)

    def startService(self) -> None:
        super().startService()
        try:
            self.watcher.start()
        except OSError as e:
            _log.warn("datapath: no rtnetlink link events ({error}): late devices stay "
                      "waiting until their vif is added again", error=e.strerror)  # fmt: skip
        self.ports.start()

    def stopService(self) -> Any:
        self.watcher.stop()
        self.ports.stop()
        return super().stopService()

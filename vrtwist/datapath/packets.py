"""The packet side of the forwarding extension as a service: ports, link watcher, pipeline.

:class:`PacketService` builds the :class:`~vrtwist.datapath.ports.PortManager` (the
pipeline's frame output), the rtnetlink :class:`~vrtwist.datapath.links.LinkWatcher`
and the pipeline, and re-synchronises the ports after every ``vr_interface_req`` the
datapath answers, so a vif added over ksync is attached (or kept waiting for its device)
and a deleted one released. Traps go to the agent over pkt0
(:class:`~vrtwist.pkt0.endpoints.DatapathEndpoint` on ``<run-dir>/dpdk_pkt0``); without an
agent vif, or with no agent bound, they are counted and dropped as ``vds_trap_no_if``, as
the vRouter does without an agent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from vrtwist.access import SocketAccess
from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import Datapath
from vrtwist.datapath.interfaces import (
    IPacketPipeline,
    IPacketTrap,
    IPipelineTimers,
    IRequestHandler,
)
from vrtwist.datapath.links import LinkWatcher
from vrtwist.datapath.pipeline import Pipeline
from vrtwist.datapath.ports import PortManager
from vrtwist.logfields import Logger
from vrtwist.pkt0.endpoints import DatapathEndpoint, TrapLimiter
from vrtwist.pkt0.transport import AGENT_SOCKET, DATAPATH_SOCKET, UnixDatagramTransport

__all__ = ["PacketService", "make_pipeline"]

#: seconds between two looks for the devices of vifs still waiting (besides link events)
RETRY_INTERVAL = 1.0
#: seconds between two sweeps of the pipeline's timers (the vRouter scans its fragment
#: table every 250 ms: ``VR_FRAG_HASH_TABLE_SCANNER_INTERVAL_MSEC``)
SWEEP_INTERVAL = 0.25

_log = Logger()


def make_pipeline(datapath: Datapath, output: PortManager, trap: IPacketTrap,
                  flows: Any = None, **options: Any) -> IPacketPipeline:  # fmt: skip
    """The pipeline over ``datapath``'s tables, sending to ``output``, trapping to ``trap``."""
    pipeline: IPacketPipeline = Pipeline(datapath, output, trap, flows=flows, **options)
    return pipeline


@implementer(IRequestHandler)
class _InterfaceRequests:
    """``vr_interface_req`` answered as before, then the ports re-synchronised."""

    def __init__(self, inner: IRequestHandler, changed: Callable[[], None]) -> None:
        self.inner = inner
        self.changed = changed

    def handle(self, request: Any) -> list[list[Any]]:
        try:
            return self.inner.handle(request)
        finally:
            if getattr(request, "h_op", None) in (C.OP_ADD, C.OP_DEL):  # not GET/DUMP
                self.changed()


class PacketService(Service):
    """Owns the ports, the link watcher and the pipeline of one datapath."""

    name = "packets"

    def __init__(self, datapath: Datapath, reactor: Any, shared: Any = None, *,
                 vlan_tci: int | None = None, vtest_vlan: bool = False,
                 run_dir: str | None = None, access: SocketAccess | None = None,
                 now: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        """``now``: the pipeline's clock, which the periodic sweep reads too."""
        self.datapath = datapath
        self.reactor: IReactorFDSet = reactor
        self.ports = PortManager(datapath.tables, reactor)
        self._agent: tuple[int, bytes] | None = None
        self.trap = DatapathEndpoint(lambda: self._agent, limiter=TrapLimiter(reactor.seconds))
        self.pkt0: UnixDatagramTransport | None = None
        if run_dir is not None:
            self.pkt0 = UnixDatagramTransport(
                reactor,
                os.path.join(run_dir, DATAPATH_SOCKET),
                os.path.join(run_dir, AGENT_SOCKET),
                self.trap,
                access=access,
            )
            self.trap.transport = self.pkt0
        options: dict[str, Any] = {}
        if vlan_tci is not None:
            options["vlan_tci"] = vlan_tci
        if vtest_vlan:
            options["vtest_vlan"] = True
        self.pipeline = make_pipeline(
            datapath, self.ports, self.trap, getattr(shared, "flows", None), now=now, **options
        )
        self.ports.pipeline = self.pipeline
        self.trap.deliver = self.pipeline.receive
        self.watcher = LinkWatcher(reactor, self.ports.link_changed, self.ports.resync)
        self._retry = LoopingCall(self.ports.retry_waiting)
        self._retry.clock = reactor
        self._now = now
        self._sweep = LoopingCall(self._sweep_timers)
        self._sweep.clock = reactor
        inner = datapath.handlers["vr_interface_req"]
        datapath.register("vr_interface_req", _InterfaceRequests(inner, self._interfaces_changed))
        datapath.reset_hooks.append(self._interfaces_changed)
        self._interfaces_changed()

    def _interfaces_changed(self) -> None:
        """Attach/detach devices, and note the agent vif the traps are framed for."""
        self.ports.sync()
        agent = None
        for vif in self.datapath.tables.interfaces.values():
            if vif.type == C.VIF_TYPE_AGENT:
                agent = (vif.idx, bytes(vif.mac))
                break
        self._agent = agent

    def _sweep_timers(self) -> None:
        timers = IPipelineTimers(self.pipeline, None)
        if timers is not None:
            timers.sweep(self._now())

    def startService(self) -> None:
        super().startService()
        try:
            self.watcher.start()
        except OSError as e:
            _log.warn("datapath: no rtnetlink link events ({error}): late devices stay "
                      "waiting until their vif is added again", error=e.strerror)  # fmt: skip
        self.ports.start()
        self._retry.start(RETRY_INTERVAL, now=False)
        self._sweep.start(SWEEP_INTERVAL, now=False)
        if self.pkt0 is not None:
            self.pkt0.start()

    def stopService(self) -> Any:
        if self._retry.running:
            self._retry.stop()
        if self._sweep.running:
            self._sweep.stop()
        if self.pkt0 is not None:
            self.pkt0.stop()
        self.watcher.stop()
        self.ports.stop()
        return super().stopService()

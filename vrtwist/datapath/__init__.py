"""The forwarding extension: the vRouter's tables served over ksync, and the packet
path (pipeline, ports, links, offloads, drop log).

``DatapathService`` is what ``twistd vrouter-dp`` runs; ``Datapath`` answers ksync requests
against ``Tables``; ``Pipeline`` forwards frames. The seams are in
``vrtwist.datapath.interfaces``, the vr.sandesh names in ``vrtwist.datapath.constants``.
"""

from __future__ import annotations

from vrtwist._exports import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads it so)

if TYPE_CHECKING:
    from vrtwist.datapath.dispatcher import BridgeRoutesInMemory, Datapath, DumpReply
    from vrtwist.datapath.droplog import DropLog, DropLogError, DropRecord
    from vrtwist.datapath.interfaces import (
        IBridgeRoutes,
        IDatapath,
        IFrameOutput,
        IPacketPipeline,
        IPacketTrap,
        IRequestHandler,
    )
    from vrtwist.datapath.introspect import make_datapath_app
    from vrtwist.datapath.links import LinkEvent, LinkWatcher
    from vrtwist.datapath.offload import OffloadError
    from vrtwist.datapath.packets import PacketService, make_pipeline
    from vrtwist.datapath.pipeline import Packet, Pipeline
    from vrtwist.datapath.ports import PacketPort, PortManager, TapPort
    from vrtwist.datapath.routes import RouteTables
    from vrtwist.datapath.service import (
        DEFAULT_RUN_DIR,
        DatapathOptionsMixin,
        DatapathService,
        makeDatapathService,
    )
    from vrtwist.datapath.tables import DatapathConfig, TableError, Tables

__all__ = [
    "DEFAULT_RUN_DIR",
    "BridgeRoutesInMemory",
    "Datapath",
    "DatapathConfig",
    "DatapathOptionsMixin",
    "DatapathService",
    "DropLog",
    "DropLogError",
    "DropRecord",
    "DumpReply",
    "IBridgeRoutes",
    "IDatapath",
    "IFrameOutput",
    "IPacketPipeline",
    "IPacketTrap",
    "IRequestHandler",
    "LinkEvent",
    "LinkWatcher",
    "OffloadError",
    "Packet",
    "PacketPort",
    "PacketService",
    "Pipeline",
    "PortManager",
    "RouteTables",
    "TableError",
    "Tables",
    "TapPort",
    "makeDatapathService",
    "make_datapath_app",
    "make_pipeline",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "service": ("DatapathService", "DatapathOptionsMixin", "makeDatapathService", "DEFAULT_RUN_DIR"),
    "dispatcher": ("Datapath", "DumpReply", "BridgeRoutesInMemory"),
    "tables": ("Tables", "TableError", "DatapathConfig"),
    "routes": ("RouteTables",),
    "pipeline": ("Pipeline", "Packet"),
    "packets": ("PacketService", "make_pipeline"),
    "ports": ("PortManager", "TapPort", "PacketPort"),
    "links": ("LinkWatcher", "LinkEvent"),
    "droplog": ("DropLog", "DropRecord", "DropLogError"),
    "offload": ("OffloadError",),
    "interfaces": ("IBridgeRoutes", "IDatapath", "IFrameOutput", "IPacketPipeline", "IPacketTrap", "IRequestHandler"),
    "introspect": ("make_datapath_app",),
})

"""The vRouter agent: the REST port API, persisted ports, the datapath model and its
ksync sync, packet services (ARP, DHCP, ICMP, flows) and the XMPP routes it programs.

``AgentService`` is what ``twistd vrouter-agent`` runs. In-memory doubles for tests are in
``vrtwist.agent.testing``.
"""

from __future__ import annotations

from vrtwist._exports import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads it so)

if TYPE_CHECKING:
    from vrtwist.agent.dpstate import DatapathModel
    from vrtwist.agent.interfaces import (
        IControllerLink,
        IGatewayProgrammer,
        IKsyncBunchChannel,
        IKsyncChannel,
        IPortObserver,
        IPortStore,
        IRouteProgrammer,
        LocalRoute,
    )
    from vrtwist.agent.introspect import make_agent_app
    from vrtwist.agent.ksync_sync import (
        DatapathRequestError,
        DatapathSync,
        KsyncSynchroniser,
        LocalChannel,
        LocalSynchroniser,
        ProtocolChannel,
    )
    from vrtwist.agent.model import (
        Gateway,
        Port,
        PortValidationError,
        ResourceExhausted,
        VmPort,
        port_from_json,
    )
    from vrtwist.agent.packet.service import AgentPacketService
    from vrtwist.agent.packet.services import PacketServices
    from vrtwist.agent.ports import PortNotFound, PortTable, WrongPortType
    from vrtwist.agent.rest import PortApi, RestApiError
    from vrtwist.agent.service import AgentService
    from vrtwist.agent.store import PortFileError, PortStore

__all__ = [
    "AgentPacketService",
    "AgentService",
    "DatapathModel",
    "DatapathRequestError",
    "DatapathSync",
    "Gateway",
    "IControllerLink",
    "IGatewayProgrammer",
    "IKsyncBunchChannel",
    "IKsyncChannel",
    "IPortObserver",
    "IPortStore",
    "IRouteProgrammer",
    "KsyncSynchroniser",
    "LocalChannel",
    "LocalRoute",
    "LocalSynchroniser",
    "PacketServices",
    "Port",
    "PortApi",
    "PortFileError",
    "PortNotFound",
    "PortStore",
    "PortTable",
    "PortValidationError",
    "ProtocolChannel",
    "ResourceExhausted",
    "RestApiError",
    "VmPort",
    "WrongPortType",
    "make_agent_app",
    "port_from_json",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "service": ("AgentService",),
    "rest": ("PortApi", "RestApiError"),
    "ports": ("PortTable", "PortNotFound", "WrongPortType"),
    "store": ("PortStore", "PortFileError"),
    "model": ("Port", "VmPort", "Gateway", "PortValidationError", "ResourceExhausted", "port_from_json"),
    "dpstate": ("DatapathModel",),
    "ksync_sync": ("DatapathSync", "KsyncSynchroniser", "LocalSynchroniser", "LocalChannel", "ProtocolChannel", "DatapathRequestError"),
    "interfaces": ("IPortStore", "IPortObserver", "LocalRoute", "IControllerLink", "IRouteProgrammer", "IKsyncChannel", "IKsyncBunchChannel", "IGatewayProgrammer"),
    "packet.service": ("AgentPacketService",),
    "packet.services": ("PacketServices",),
    "introspect": ("make_agent_app",),
})

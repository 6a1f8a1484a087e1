"""The agent's seams.

* :class:`IPortStore` - the port files (``<state-dir>/ports``).
* :class:`IPortObserver` - told about every port add/delete of the port table; the
  datapath model and the controller link both observe the table through it.
* :class:`IControllerLink` / :class:`IRouteProgrammer` / :class:`LocalRoute` - the seam
  to the control node, owned by the XMPP link (``vrtwist.xmpp.interfaces``) and
  re-exported here.  The agent calls ``IControllerLink`` to announce its local ports; the
  link calls ``IRouteProgrammer`` to install or withdraw routes learnt from the controller.
  ``vrtwist.xmpp.agent_link.makeControllerLink(reactor, endpoints, hostname, fabric_ip,
  routes)`` returns an object that provides both ``IControllerLink`` and
  ``twisted.application.service.IService`` (see ``docs/agent.md``).
"""

from __future__ import annotations

from typing import Any

from zope.interface import Interface

from vrtwist.xmpp.interfaces import IControllerLink, IRouteProgrammer, LocalRoute

__all__ = [
    "IControllerLink",
    "IGatewayProgrammer",
    "IKsyncBunchChannel",
    "IKsyncChannel",
    "IPortObserver",
    "IPortStore",
    "IRouteProgrammer",
    "LocalRoute",
]


class IPortStore(Interface):
    """Durable storage of port records, one JSON document per port uuid."""

    def path_for(uuid: str) -> Any:
        """The ``pathlib.Path`` of ``uuid``'s file."""

    def exists(uuid: str) -> bool:
        """True when a file for ``uuid`` is on disk."""

    def read(uuid: str) -> Any:
        """The parsed JSON of ``uuid``'s file (None if unreadable)."""

    def write(uuid: str, body: dict[str, Any]) -> None:
        """Atomically replace ``uuid``'s file; raise ``PortFileError`` on failure."""

    def remove(uuid: str) -> None:
        """Remove ``uuid``'s file if present; raise ``PortFileError`` on failure."""

    def write_vm(vm_name: str, vmi_uuid: str, body: dict[str, Any]) -> None:
        """Atomically write ``vm/<vm_name>/<vmi_uuid>``."""

    def remove_vm(vm_name: str, vmi_uuid: str) -> None:
        """Remove ``vm/<vm_name>/<vmi_uuid>`` (and the directory once empty)."""

    def load_ports() -> Any:
        """Iterate ``LoadedFile`` records of the top-level port files."""

    def load_vm_ports() -> Any:
        """Iterate ``LoadedFile`` records of the ``vm/*/`` files."""


class IPortObserver(Interface):
    """Something that follows the set of local ports (datapath model, controller link)."""

    def portAdded(port: Any) -> None:
        """``port`` (a ``vrtwist.agent.model.Port``) is now wanted on this node."""

    def portDeleted(port: Any) -> None:
        """``port`` is no longer wanted; undo what ``portAdded`` did."""


class IKsyncChannel(Interface):
    """One request/response channel to the datapath (a ksync session, or in-process)."""

    def request(msg: Any) -> Any:
        """Send one Sandesh request; a Deferred firing with every Sandesh object of the
        reply in order, ``vr_response`` first (a DUMP's page of objects included)."""


class IKsyncBunchChannel(IKsyncChannel):
    """A channel that answers a bunch of requests with one Deferred (a ksync session).

    A burst of routes is thousands of requests; one Deferred and one callback per netlink
    message instead of per request is a measurable part of the agent's CPU.
    """

    def request_bunch(msgs: Any) -> Any:
        """Send ``msgs`` in one netlink message; a Deferred firing with one result per
        request, in order: a ``vrtwist.ksync.clientcore.KsyncResponse``, or the
        ``KsyncError`` / ``KsyncProtocolError`` of that request.  It fails as a whole when
        the session is lost."""


class IGatewayProgrammer(Interface):
    """Programs simple-gateway (vgw) interfaces from ``POST``/``DELETE /gateway``."""

    def gatewayAdded(gateway: Any) -> None:
        """Install (or replace) a ``vrtwist.agent.model.Gateway``."""

    def gatewayDeleted(interface: str) -> None:
        """Remove the gateway named ``interface`` (unknown names are ignored)."""

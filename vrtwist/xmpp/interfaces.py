"""The seams the XMPP controller link consumes; the agent implements them.

The link owns these so that ``vrtwist.xmpp`` imports nothing of ``vrtwist.agent``: the
agent's datapath model provides :class:`IRouteProgrammer` (routes learnt from the control
node go into it), and the agent announces its ports through :class:`IControllerLink` with
one :class:`LocalRoute` per port. ``vrtwist.agent.interfaces`` re-exports all three.
"""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import Attribute, Interface

__all__ = ["IControllerLink", "IRouteProgrammer", "LocalRoute"]


@dataclass(frozen=True, slots=True)
class LocalRoute:
    """What the agent announces to the controller for one local port.

    ``vrf_name`` is the routing instance (``default-domain:vrtwist:<vn-uuid>:<vn-uuid>`` when
    no controller config names it), ``label`` the MPLS label that reaches the port's
    interface (L3) next hop on this node, ``nexthop`` the node's fabric address.
    """

    port_id: str
    vm_id: str
    vn_id: str
    vrf_name: str
    mac: str
    ip4: str | None
    ip6: str | None
    label: int
    nexthop: str
    #: the MPLS label of the port's L2 (bridge) next hop, advertised in the EVPN route
    l2_label: int = 0
    #: the network's VXLAN id, advertised in the EVPN route instead when VXLAN is preferred
    vni: int = 0


class IControllerLink(Interface):
    """The agent's side of the control-node session (provided by ``vrtwist.xmpp``)."""

    def localRouteAdded(route: LocalRoute) -> None:
        """Publish ``route`` (inet /32, inet6 /128 and the EVPN MAC) to the control node."""

    def localRouteDeleted(route: LocalRoute) -> None:
        """Withdraw what ``localRouteAdded`` published for this port."""


class IRouteProgrammer(Interface):
    """Installs routes learnt from the controller into the datapath (provided by the agent)."""

    fabric_ip = Attribute("this node's fabric (tunnel source) address, a dotted quad")

    def vrfNames() -> list[str]:
        """Names of the routing instances that currently have local ports."""

    def addRemoteRoute(vrf_name: str, prefix: str, plen: int, nexthop: str, label: int,
                       encap: str = "udp", mac: str | None = None, *,
                       l2_label: int | None = None) -> None:
        """Route ``prefix/plen`` in ``vrf_name`` through a tunnel to ``nexthop`` with ``label``.

        ``encap`` is ``"udp"`` (MPLS over UDP), ``"gre"`` (MPLS over GRE) or ``"vxlan"``;
        ``mac`` is the remote VM's MAC: a bridge entry for it is installed too, with
        ``l2_label`` (the EVPN route's label: the far node's L2 label or, over VXLAN, the
        network's VNI; ``label`` when not given).  Raises
        ``KeyError`` for an unknown VRF and ``ValueError`` for a bad prefix or label.
        """

    def deleteRemoteRoute(vrf_name: str, prefix: str, plen: int) -> None:
        """Withdraw a route added with :meth:`addRemoteRoute` (unknown routes are ignored)."""

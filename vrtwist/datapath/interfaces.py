"""Seams of the forwarding extension.

The ksync server hands each decoded request to an :class:`IRequestHandler` chosen by
Sandesh message name; other packages (``vrtwist.shmem`` for flows and bridge routes)
plug their own handlers into the datapath through :class:`IDatapath`.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface

from vrtwist.pkt0.interfaces import IPacketTrap

__all__ = [
    "IBridgeRoutes",
    "IDatapath",
    "IFrameOutput",
    "IPacketPipeline",
    "IPacketTrap",
    "IRequestHandler",
]


class IRequestHandler(Interface):
    """Answers one decoded Sandesh request."""

    def handle(request: Any) -> list[list[Any]]:
        """Return the reply as transport messages, each a list of Sandesh objects.

        The first object of the first message is the request's one ``vr_response``.
        A GET answers ``[[vr_response, object]]``; a DUMP answers
        ``[[vr_response], [objects...]]`` (the second message only if not empty).
        """


class IBridgeRoutes(IRequestHandler):
    """Answers ``vr_route_req`` for AF_BRIDGE, and resolves MACs for stitched routes."""

    def index_of(vrf: int, mac: bytes) -> int | None:
        """Bridge-table index of (vrf, mac), or None when it has no entry."""


class IDatapath(Interface):
    """The forwarding extension as other packages see it."""

    tables = Attribute("vrtwist.datapath.tables.Tables: interfaces, next hops, labels ...")
    routes = Attribute("vrtwist.datapath.routes.RouteTables: inet and inet6 routes")
    config = Attribute("vrtwist.datapath.tables.DatapathConfig: table sizes")
    drop_log = Attribute(
        "vrtwist.datapath.droplog.DropLog: the last dropped packets per core; the packet "
        "path calls record(core, DropRecord(...)), dropstats --log reads them"
    )

    def register(name: str, handler: IRequestHandler) -> None:
        """Answer requests named ``name`` with ``handler`` (replaces the built-in one)."""

    def register_bridge(handler: IBridgeRoutes) -> None:
        """Answer AF_BRIDGE ``vr_route_req`` with ``handler``."""

    def handle(request: Any) -> list[list[Any]]:
        """Answer one request, whoever handles it."""

    def response(code: int) -> Any:
        """A ``vr_response`` with this resp_code."""

    def dump_reply(objects: Any) -> list[list[Any]]:
        """A DUMP reply over every object after the request's marker (lazy, in key order).

        The ksync server sends one page (3968 bytes of objects) and the vr_response with
        the count and, when objects remain, bit 30; ``handle`` pages it the same way.
        """


class IFrameOutput(Interface):
    """Where the packet pipeline sends frames: the port layer implements it.

    The pipeline is sans-IO; it calls ``transmit`` for every frame that leaves a vif and
    never touches a socket itself, so it runs the same under the reactor, in tests and in
    benchmarks.
    """

    def transmit(vif_index: int, frame: bytes | bytearray | memoryview) -> bool:
        """Send ``frame`` (from its Ethernet header) out of vif ``vif_index``.

        Returns False when the vif has no attached device or its queue is full; the
        pipeline then counts the drop (``vds_interface_tx_discard``) and ``oerrors``.
        """


class IPacketPipeline(Interface):
    """The forwarding pipeline: one received frame in, transmits/traps/drops out."""

    def receive(vif_index: int, frame: bytes | bytearray | memoryview) -> None:
        """Process one frame received on vif ``vif_index`` (an attached device's read)."""

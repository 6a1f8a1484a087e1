"""The seam between the ksync server (transport) and whatever owns the tables.

The server decodes each Sandesh request and hands it to an ``IKsyncDispatcher``; the
dispatcher answers with a ``KsyncReply`` describing what the vRouter would send
(docs/protocols/ksync.md). The server turns that into the exact vr_response/object/page layout and framing,
so dispatchers never deal with bytes, paging or sequence numbers.

The datapath's request-handler seams (:class:`IRequestHandler`, :class:`IBridgeRoutes`,
:class:`IDatapath`) live here too: ``vrtwist.datapath`` implements them and
``vrtwist.shmem`` plugs into them, and neither package imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from zope.interface import Attribute, Interface

__all__ = [
    "IBridgeRoutes",
    "IDatapath",
    "IFlowSetValues",
    "IKsyncDispatcher",
    "IKsyncSession",
    "IRequestHandler",
    "KsyncReply",
]


@dataclass
class KsyncReply:
    """What one request produces.

    * ``code``: the vr_response ``resp_code``: 0 or a negative errno (``-errno.ENOENT``).
    * ``objects``: Sandesh messages sent after the vr_response. For ADD/DEL/GET they go in
      the same transport message as the vr_response (GET: the object; GET of a vif with
      VIF_FLAG_GET_DROP_STATS: the vif and a vr_drop_stats_req; vr_flow_req: the
      vr_flow_response, also on error).
    * ``dump``: True for a DUMP reply. ``objects`` is then every object after the request's
      marker, in key order, possibly a lazy iterator; the server takes as many as fit in
      one 3968-byte page, sends the vr_response with ``count | VR_MESSAGE_DUMP_INCOMPLETE``
      if any remain, then the page as a second transport message. The client asks again
      with the marker set to the last key it received. ``code`` must be 0 for a dump that
      proceeds; a negative ``code`` sends only the vr_response.
    * ``encoded``: a hot handler's shortcut (FLOW_SET): the objects already Sandesh-encoded,
      sent after the vr_response exactly as ``objects`` would be. When it is not empty the
      server ignores ``objects`` (which may then be empty); not used with ``dump``.
    """

    code: int = 0
    objects: Iterable[Any] = field(default_factory=tuple)
    dump: bool = False
    encoded: bytes = b""


class IKsyncDispatcher(Interface):
    """Executes decoded ksync requests against the forwarding tables."""

    def dispatch(request: Any) -> KsyncReply:
        """Apply one request (a ``vrtwist.sandesh.schema`` message) and describe the reply.

        Called synchronously, in the order requests arrive on a session, one Sandesh message
        at a time even when a client bunched several in one netlink message. Must not block.
        An exception is logged and answered with ``-EINVAL`` so one bad handler cannot take
        down the channel.
        """


class IFlowSetValues(Interface):
    """A dispatcher that applies the agent's common FLOW_SETs from their values, with no
    request object each: the ksync server's side of flow setup.

    Each request so applied has every effect ``dispatch`` of its object would have (the
    tables, counters and listeners), and its answer is the usual one to a FLOW_SET that
    succeeded, from the entry's index and generation.
    """

    def flow_set_reader() -> Any:
        """The ``vrtwist.ksync.flowset.FlowSetValues`` whose values ``flow_sets_at``
        takes; None when there is none now (then send the objects to ``dispatch``)."""

    def flow_sets_at(
        values: tuple[int, ...],
        start: int,
        out: list[tuple[int, int]],
        taken: Callable[[], None] | None = None,
    ) -> int:
        """Apply, in order from offset ``start`` of ``values`` (as the reader gave them),
        each request this path takes, appending its entry's index and generation to
        ``out``; stop at the first it does not take, with nothing done for that one
        (then ``dispatch`` its object). Returns where it stopped (``len(values)`` when
        it took them all). ``taken`` is called for each request taken, once its entry
        is written and before anything learns of it (the table's listeners)."""


class IKsyncSession(Interface):
    """One client connection of the ksync server, as seen by tests and diagnostics."""

    requests = Attribute("Number of Sandesh requests dispatched on this session.")
    peer = Attribute("Peer address of the connection.")


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

    def learn(vrf: int, mac: bytes, nh_id: int) -> int:
        """A learnt source MAC (``vr_bridge_learn``): an entry flagged MAC_NEW pointing at
        ``nh_id``; its index, or -1 when the table has no room."""

    def mark_moved(vrf: int, mac: bytes) -> None:
        """Flag the entry of (vrf, mac) MAC_MOVED (its source check failed)."""


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

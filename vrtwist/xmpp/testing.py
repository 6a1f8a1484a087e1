"""In-memory peers for code on either side of the XMPP controller link (as treq ships
``treq.testing``).

* :class:`MemAgent` is an agent on a ``twisted.internet.testing.StringTransport`` speaking
  raw stanzas to a real control node session: test the control node without sockets.
* :func:`make_node` builds a :class:`~vrtwist.xmpp.control.ControlNode` on a
  ``MemoryReactorClock`` and the factory a :class:`MemAgent` connects through.
* :class:`RecordingSink` implements the agent's route-programming seam
  (:class:`~vrtwist.xmpp.interfaces.IRouteProgrammer`) and records what it is told.
* :func:`inet` makes an inet unicast :class:`~vrtwist.xmpp.stanzas.RouteEntry`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from vrtwist.xmpp.control import ControlNode, ControlNodeFactory, ControlSession
from vrtwist.xmpp.framing import StanzaBytes, StanzaSplitter, StreamHeader, build_stream_open
from vrtwist.xmpp.interfaces import IRouteProgrammer
from vrtwist.xmpp.stanzas import (
    EndOfRib,
    NextHop,
    RouteEntry,
    RouteUpdate,
    Stanza,
    build_route_publish,
    build_subscribe,
    parse_stanza,
)

__all__ = ["MemAgent", "RecordingSink", "inet", "make_node", "sink_of"]


def inet(prefix: str, nexthop: str = "192.0.2.1", label: int = 16,
         encaps: tuple[str, ...] = ("gre", "udp"), lp: int = 100) -> RouteEntry:
    """An inet unicast route to ``prefix`` through one next hop (item id = prefix)."""
    return RouteEntry(1, 1, prefix, (NextHop(nexthop, label, encaps),), local_preference=lp)


class MemAgent:
    """An agent on a ``StringTransport``, speaking raw stanzas to a ``ControlSession``.

    Its methods write what a real agent would send; :meth:`received` and :meth:`routes`
    parse what the control node wrote back since the last call.
    """

    def __init__(self, factory: ControlNodeFactory, name: str, host: str = "127.0.0.2",
                 port: int = 40000) -> None:
        self.name = name
        self.proto: ControlSession = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.tr = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        self.proto.makeConnection(self.tr)
        self.splitter = StanzaSplitter()
        self.header: StreamHeader | None = None
        self.seq = 0

    def send(self, data: bytes) -> None:
        """Deliver ``data`` to the control node as if it came off the wire."""
        self.proto.dataReceived(data)

    def open(self) -> None:
        """Open the XMPP stream as this agent."""
        self.send(build_stream_open(self.name))

    def subscribe(self, vrf: str, iid: int = 1) -> None:
        """Subscribe to routing instance ``vrf``."""
        self.send(build_subscribe(self.name, vrf, iid))

    def publish(self, vrf: str, entry: RouteEntry, add: bool = True) -> None:
        """Publish (or, with ``add=False``, retract) ``entry`` in ``vrf``."""
        self.seq += 1
        self.send(build_route_publish(self.name, vrf, entry, add, self.seq))

    def received(self) -> list[Stanza]:
        """Parsed stanzas written to this agent since the last call (keepalives dropped)."""
        data = self.tr.value()
        self.tr.clear()
        out: list[Stanza] = []
        for e in self.splitter.feed(data):
            if isinstance(e, StreamHeader):
                self.header = e
            elif isinstance(e, StanzaBytes):
                out.append(parse_stanza(e.data))
        return out

    def routes(self) -> tuple[dict[str, RouteEntry], list[str], int]:
        """(items by id, retracted ids, EoRs) in what was received since the last call."""
        items: dict[str, RouteEntry] = {}
        retracts: list[str] = []
        eors = 0
        for s in self.received():
            if isinstance(s, RouteUpdate):
                for e in s.items:
                    items[e.item_id] = e
                retracts.extend(s.retracts)
            elif isinstance(s, EndOfRib):
                eors += 1
        return items, retracts, eors

    @property
    def closed(self) -> bool:
        """Whether the control node closed this agent's connection."""
        return bool(self.tr.disconnecting)


def make_node(gr_time: float = 0.0, hold: float = 90.0
              ) -> tuple[MemoryReactorClock, ControlNode, ControlNodeFactory]:
    """A control node ``cn1`` on a fresh ``MemoryReactorClock``, and its session factory
    (hold time ``hold``); advance the clock to let keepalives and graceful restart run."""
    clock = MemoryReactorClock()
    node = ControlNode(clock, "cn1", gr_time=gr_time)
    return clock, node, ControlNodeFactory(node, hold)


@implementer(IRouteProgrammer)
class RecordingSink:
    """Records every call of the route-programming seam and keeps the resulting table.

    ``table`` maps ``(vrf, prefix, plen)`` to ``(nexthop, label, encap, mac)``; with
    ``vrfs`` given, a route for another VRF raises ``KeyError`` as the agent's does.
    """

    def __init__(self, fabric_ip: str = "127.0.0.2", vrfs: tuple[str, ...] | None = None) -> None:
        self.fabric_ip = fabric_ip
        self.vrfs = vrfs
        self.calls: list[tuple[object, ...]] = []
        self.table: dict[tuple[str, str, int], tuple[str, int, str, str | None]] = {}
        self.l2_labels: dict[tuple[str, str, int], int | None] = {}

    def vrfNames(self) -> list[str]:
        return sorted({k[0] for k in self.table})

    def addRemoteRoute(self, vrf_name: str, prefix: str, plen: int, nexthop: str, label: int,
                       encap: str = "udp", mac: str | None = None, *,
                       l2_label: int | None = None) -> None:
        if self.vrfs is not None and vrf_name not in self.vrfs:
            raise KeyError(f"unknown routing instance {vrf_name!r}")
        self.calls.append(("add", vrf_name, prefix, plen, nexthop, label, encap, mac))
        self.l2_labels[(vrf_name, prefix, plen)] = l2_label
        self.table[(vrf_name, prefix, plen)] = (nexthop, label, encap, mac)

    def deleteRemoteRoute(self, vrf_name: str, prefix: str, plen: int) -> None:
        self.calls.append(("del", vrf_name, prefix, plen))
        self.table.pop((vrf_name, prefix, plen), None)


def sink_of(link: Any) -> RecordingSink:
    """The recording sink a test gave a controller link (typed as the seam it is there)."""
    sink = link.remote.sink
    assert isinstance(sink, RecordingSink), sink
    return sink

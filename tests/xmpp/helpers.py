"""Shared test doubles: an in-memory agent for the control node, a recording route sink."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from vrtwist.xmpp.control import ControlNode, ControlNodeFactory, ControlSession
from vrtwist.xmpp.framing import StanzaBytes, StanzaSplitter, StreamHeader, build_stream_open
from vrtwist.xmpp.remote_routes import IRemoteRouteSink
from vrtwist.xmpp.stanzas import (
    EndOfRib,
    NextHop,
    RouteEntry,
    RouteUpdate,
    build_route_publish,
    build_subscribe,
    parse_stanza,
)


def inet(prefix: str, nexthop: str = "192.0.2.1", label: int = 16,
         encaps: tuple[str, ...] = ("gre", "udp"), lp: int = 100) -> RouteEntry:
    return RouteEntry(1, 1, prefix, (NextHop(nexthop, label, encaps),), local_preference=lp)


class MemAgent:
    """An agent on a StringTransport, speaking raw stanzas to a ControlSession."""

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
        self.proto.dataReceived(data)

    def open(self) -> None:
        self.send(build_stream_open(self.name))

    def subscribe(self, vrf: str, iid: int = 1) -> None:
        self.send(build_subscribe(self.name, vrf, iid))

    def publish(self, vrf: str, entry: RouteEntry, add: bool = True) -> None:
        self.seq += 1
        self.send(build_route_publish(self.name, vrf, entry, add, self.seq))

    def received(self) -> list[Any]:
        """Parsed stanzas written to this agent since the last call (keepalives dropped)."""
        data = self.tr.value()
        self.tr.clear()
        out: list[Any] = []
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
        return self.tr.disconnecting


def make_node(gr_time: float = 0.0, hold: float = 90.0) -> tuple[MemoryReactorClock, ControlNode,
                                                                  ControlNodeFactory]:
    clock = MemoryReactorClock()
    node = ControlNode(clock, "cn1", gr_time=gr_time)
    return clock, node, ControlNodeFactory(node, hold)


@implementer(IRemoteRouteSink)
class RecordingSink:
    """Implements the programming seam; records calls and the resulting route table."""

    def __init__(self, fabric_ip: str = "127.0.0.2", vrfs: tuple[str, ...] | None = None) -> None:
        self.fabric_ip = fabric_ip
        self.vrfs = vrfs
        self.calls: list[tuple[Any, ...]] = []
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

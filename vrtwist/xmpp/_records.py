"""Records of the Contrail XMPP dialect and the field rules both parsers share.

The constants, the error types, one record per stanza shape, and the checks of the
fields every parser applies the same way (prefixes, next-hop addresses, MACs, items
nodes), so the tree parser (:mod:`._tree`) and the fast path (:mod:`._fastparse`)
cannot disagree on what is valid.  Public names are re-exported by
:mod:`vrtwist.xmpp.stanzas`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

PUBSUB_NS = "http://jabber.org/protocol/pubsub"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
CONTROL_NODE_JID = "network-control@contrailsystems.com"
EOR_NODE = "0/0/EndOfRib"

AFI_INET = 1
AFI_INET6 = 2
AFI_L2VPN = 25
SAFI_UNICAST = 1
SAFI_ENET = 242

#: Wire names of the tunnel encapsulations and the names the agent's config uses.
ENCAP_NAMES = {"udp": "MPLSoUDP", "gre": "MPLSoGRE", "vxlan": "VXLAN"}

#: The ``afi/safi`` pairs whose items this package reads (inet, inet6, EVPN).
_FAMILIES = frozenset({(AFI_INET, SAFI_UNICAST), (AFI_INET6, SAFI_UNICAST), (AFI_L2VPN, SAFI_ENET)})


class StanzaError(ValueError):
    """A framed stanza is not well formed or not a shape this dialect allows."""


class UnsupportedFamily(StanzaError):
    """A route of an address family this package does not handle (multicast, MVPN...)."""


# ---------------------------------------------------------------------------- records
#
# The records built for every stanza of a route burst (subscribe, publish, collection,
# control-node update) are plain slotted dataclasses, hashable but not frozen: a frozen
# dataclass sets each field through ``object.__setattr__`` and costs three times as much
# to build.  Treat them as immutable all the same.


class NextHop(NamedTuple):
    """One next hop of a route: the tunnel endpoint, label and allowed encapsulations.

    A named tuple rather than a frozen dataclass: tens of thousands are built per second
    on the hot paths, and a tuple is built and compared in C (about 3x cheaper).
    """

    address: str
    label: int
    encapsulations: tuple[str, ...] = ("gre", "udp")
    mac: str = ""
    virtual_network: str = ""
    l3_label: int = 0
    tags: tuple[int, ...] = ()
    #: ``local-sequence-number`` (the real agent's local path sequence; 0 when unset)
    local_sequence: int = 0


class RouteEntry(NamedTuple):
    """A route item: inet/inet6 (``address`` is the prefix) or EVPN (``mac`` + address).

    A named tuple for the same reason as :class:`NextHop`.
    """

    afi: int
    safi: int
    address: str
    next_hops: tuple[NextHop, ...]
    mac: str = ""
    ethernet_tag: int = 0
    virtual_network: str = ""
    sequence_number: int = 0
    local_preference: int = 100
    med: int = 0
    security_groups: tuple[int, ...] = ()
    sub_protocol: str = "interface"
    #: EVPN ``<nlri>`` ``group``/``source``/``flags``: the control node fills ``0.0.0.0``
    #: for a unicast MAC route; the agent sends them empty (multicast (S,G) routes only)
    group: str = ""
    source: str = ""
    flags: int = 0

    @property
    def item_id(self) -> str:
        """The key the control node uses for ``<item id>`` and ``<retract id>``."""
        if self.afi == AFI_L2VPN:
            prefix = f"{self.ethernet_tag}-" if self.ethernet_tag else ""
            return f"{prefix}{self.mac},{self.address}"
        return self.address


@dataclass(slots=True, unsafe_hash=True)
class Subscribe:
    """``<subscribe node>``: a routing instance (bgp-peer) or a config object (config)."""

    node: str
    service: str
    instance_id: int | None = None
    no_ribout: bool = False
    sender: str = ""


@dataclass(slots=True, unsafe_hash=True)
class Unsubscribe:
    node: str
    service: str
    sender: str = ""


@dataclass(slots=True, unsafe_hash=True)
class Publish:
    """First half of a route update; ``node == ""`` with no entry is half an EoR."""

    node: str
    entry: RouteEntry | None
    sender: str = ""
    #: The ``<entry>`` exactly as received when it was in canonical form (a reflector can
    #: forward it without re-encoding); empty otherwise.
    raw_entry: str = field(default="", compare=False, repr=False)


@dataclass(slots=True, unsafe_hash=True)
class Collection:
    """Second half: ``node`` is the VRF, ``associate``/``dissociate`` the publish node."""

    node: str
    associate: str | None = None
    dissociate: str | None = None
    sender: str = ""


@dataclass(slots=True, unsafe_hash=True)
class RouteUpdate:
    """A control-node message: reach items or retracts for one ``afi/safi/vrf`` node."""

    node: str
    items: tuple[RouteEntry, ...] = ()
    retracts: tuple[str, ...] = ()

    @property
    def family(self) -> tuple[int, int]:
        afi, safi, _ = self.node.split("/", 2)
        return int(afi), int(safi)

    @property
    def vrf(self) -> str:
        return self.node.split("/", 2)[2]


@dataclass(frozen=True, slots=True)
class EndOfRib:
    """End-of-RIB in the ``<message>`` form (node ``0/0/EndOfRib``)."""

    sender: str = ""


@dataclass(frozen=True, slots=True)
class ConfigNode:
    """One IFMap object: its type, fq name and properties as plain Python values."""

    type: str
    name: str
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConfigLink:
    """A reference between two IFMap objects (``metadata`` names the link type)."""

    left: tuple[str, str]
    right: tuple[str, str]
    metadata: str
    #: What the metadata element carries (e.g. ``ipam-subnets`` of a VN-IPAM link).
    properties: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class ConfigUpdate:
    """``<config>`` with its ``<update>`` and ``<delete>`` blocks, in document order."""

    updates: tuple[ConfigNode | ConfigLink, ...] = ()
    deletes: tuple[ConfigNode | ConfigLink, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamFeatures:
    starttls: bool
    required: bool


@dataclass(frozen=True, slots=True)
class StartTls:
    pass


@dataclass(frozen=True, slots=True)
class TlsProceed:
    pass


@dataclass(frozen=True, slots=True)
class TlsFailure:
    pass


Stanza = (
    Subscribe
    | Unsubscribe
    | Publish
    | Collection
    | RouteUpdate
    | EndOfRib
    | ConfigUpdate
    | StreamFeatures
    | StartTls
    | TlsProceed
    | TlsFailure
)


# ---------------------------------------------------------------------------- field checks

AFI_SAFI = {AFI_INET: SAFI_UNICAST, AFI_INET6: SAFI_UNICAST, AFI_L2VPN: SAFI_ENET}

#: An ``afi/safi/vrf`` items node; afi and safi in ASCII digits.
_ITEMS_NODE = re.compile(r"([0-9]{1,5})/([0-9]{1,5})/(.+)", re.S)

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_IPV4_PREFIX = re.compile(rf"({_OCTET}(?:\.{_OCTET}){{3}})/(3[0-2]|[12]?[0-9])")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def _items_family(node: str) -> tuple[int, int] | None:
    """``(afi, safi)`` of an ``afi/safi/vrf`` node, or None if it is not one."""
    m = _ITEMS_NODE.fullmatch(node)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2))


def _service(to: str) -> str:
    # The real mux dispatches on a substring of "to".
    if "bgp-peer" in to:
        return "bgp-peer"
    if "config" in to:
        return "config"
    return "bgp-peer" if not to else to.rpartition("/")[2]


def _check_prefix(prefix: str, afi: int | None) -> None:
    if _IPV4_PREFIX.fullmatch(prefix):
        if afi is not None and afi != AFI_INET:
            raise StanzaError(f"prefix {prefix[:60]!r} does not match address family {afi}")
        return
    if "/" not in prefix:
        raise StanzaError(f"prefix {prefix[:60]!r} without a length")
    try:
        net = ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        raise StanzaError(f"bad prefix {prefix[:60]!r}") from None
    if afi is not None and net.version != (4 if afi == AFI_INET else 6):
        raise StanzaError(f"prefix {prefix[:60]!r} does not match address family {afi}")

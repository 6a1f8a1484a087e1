"""The agent's XMPP link to the control node.

:func:`makeControllerLink` is what ``twistd vrouter`` calls: it returns a
:class:`ControllerLink`, an ``IService`` that keeps a session to one of up to two control
nodes through ``ClientService`` (backoff 0, 1, 2, 4, 8, 16, 30 s with +-10 % jitter;
the next controller after 4 failed attempts) and an ``IControllerLink`` through which the
agent announces its local routes.  Routes received from the control node go through a
:class:`~vrtwist.xmpp.remote_routes.RemoteRouteTable` into the agent's ``IRouteProgrammer``.

When a session drops, learnt routes are kept (headless vRouter) but marked stale; the
next session's End-of-RIB, or the stale timer, sweeps those not re-advertised.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.logfields import Logger

from .framing import StreamHeader, build_stream_open
from .interfaces import IControllerLink, LocalRoute
from .remote_routes import DEFAULT_ENCAP_PRIORITY, IRemoteRouteSink, RemoteRouteTable
from .session import DEFAULT_HOLD_TIME, ProtocolViolation, XmppSession, check_hold_time
from .stanzas import (
    AFI_INET,
    AFI_INET6,
    AFI_L2VPN,
    SAFI_ENET,
    SAFI_UNICAST,
    STARTTLS,
    Collection,
    ConfigLink,
    ConfigNode,
    ConfigUpdate,
    EndOfRib,
    NextHop,
    Publish,
    RouteEntry,
    RouteUpdate,
    Stanza,
    StartTls,
    StreamFeatures,
    Subscribe,
    TlsFailure,
    TlsProceed,
    Unsubscribe,
    build_agent_eor,
    build_route_publish,
    build_subscribe,
    build_unsubscribe,
)
from .tls import mutual_tls_options

__all__ = [
    "DEFAULT_STALE_TIME",
    "LINK_OPT_PARAMETERS",
    "MAX_ATTEMPTS",
    "AgentSession",
    "ConfigStore",
    "ControllerLink",
    "FailoverEndpoint",
    "LocalRoute",
    "LocalRouteInfo",
    "backoff_delay",
    "linkKwargsFromOptions",
    "makeControllerLink",
]

#: Failed connection attempts before moving on to the next controller (``kMaxAttempts``).
MAX_ATTEMPTS = 4
#: Seconds learnt routes stay stale after the session drops (EoR-Rx fallback of the agent).
DEFAULT_STALE_TIME = 60.0
#: The agent accepts larger stanzas than the control node: config iqs can be big.
CONTROLLER_MAX_STANZA = 4 << 20


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Delay after ``attempt`` consecutive failures (1-based): 0, 1, 2, 4, 8, 16, 30, 30...

    The real agent's "0" is 50 ms; every value gets +-10 % jitter.
    """
    base = 0.05 if attempt <= 1 else float(min(2 ** (attempt - 2), 30))
    jitter = (rng or random).uniform(-0.1, 0.1)
    return base * (1.0 + jitter)


def _endpoint_description(text: str) -> str:
    """Endpoint strings pass through; ``host[:port]`` (the agent.conf form) becomes tcp."""
    head = text.split(":", 1)[0]
    if head.isalpha() and ":" in text and head not in ("localhost",):
        return text
    host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if not host:
        host, port = text, ""
    return f"tcp:{host}:{port or 5269}"


@implementer(IStreamClientEndpoint)
class FailoverEndpoint:
    """Connects to ``endpoints[current]``; after ``max_attempts`` failures, to the next."""

    _log = Logger()

    def __init__(
        self,
        endpoints: Sequence[IStreamClientEndpoint],
        names: Sequence[str] | None = None,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one controller endpoint is needed")
        self.endpoints = list(endpoints)
        self.names = list(names) if names else [repr(e) for e in endpoints]
        self.max_attempts = max_attempts
        self.current = 0
        self.failures = 0

    @property
    def current_name(self) -> str:
        return self.names[self.current]

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        index = self.current
        d = self.endpoints[index].connect(protocolFactory)

        def failed(reason: Failure) -> Failure:
            if self.current == index:
                self._failed(f"unreachable ({reason.getErrorMessage()})")
            return reason

        d.addErrback(failed)
        return d

    def session_failed(self) -> None:
        """A connection that closed before the stream came up is a failed attempt too."""
        self._failed("closed the connection before the session came up")

    def session_established(self) -> None:
        """A session came up: the attempt count starts over."""
        self.failures = 0

    def _failed(self, why: str) -> None:
        self.failures += 1
        if self.failures >= self.max_attempts and len(self.endpoints) > 1:
            old = self.current
            self.current = (old + 1) % len(self.endpoints)
            self.failures = 0
            self._log.warn(
                "controller {old} failed {n} attempts (last: {why}); trying {new}",
                old=self.names[old],
                n=self.max_attempts,
                why=why,
                new=self.names[self.current],
            )


#: The link reads the agent's own route record; the old name stays importable.
LocalRouteInfo = LocalRoute


class ConfigStore:
    """IFMap objects received on the config channel, by type and name.

    The agent reads virtual networks, routing instances, IPAM subnets and VM interfaces
    here when a controller sends them, and keeps using its REST data otherwise.  Objects
    without ``id-perms`` are ignored, as the real agent does.
    """

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], ConfigNode] = {}
        self._links: dict[tuple[tuple[str, str], tuple[str, str], str], ConfigLink] = {}
        self.listeners: list[Callable[[ConfigUpdate], None]] = []
        # indexes: the agent asks per port, and a node's config holds thousands of objects
        self._adjacent: dict[tuple[str, str], dict[tuple[str, str], int]] = {}
        self._vmis: dict[str, tuple[str, str]] = {}  # uuid / last name part -> VMI key

    @property
    def links(self) -> list[ConfigLink]:
        return list(self._links.values())

    def apply(self, update: ConfigUpdate) -> None:
        for item in update.updates:
            if isinstance(item, ConfigLink):
                key = (item.left, item.right, item.metadata)
                if key not in self._links:
                    self._adjoin(item.left, item.right, 1)
                self._links[key] = item
            elif "id-perms" in item.properties:
                self._forget_vmi((item.type, item.name))
                self.nodes[(item.type, item.name)] = item
                if item.type == "virtual-machine-interface":
                    for alias in _vmi_aliases(item):
                        self._vmis[alias] = (item.type, item.name)
        for item in update.deletes:
            if isinstance(item, ConfigLink):
                if self._links.pop((item.left, item.right, item.metadata), None) is not None:
                    self._adjoin(item.left, item.right, -1)
            else:
                self._forget_vmi((item.type, item.name))
                self.nodes.pop((item.type, item.name), None)
        for listener in self.listeners:
            listener(update)

    def _adjoin(self, left: tuple[str, str], right: tuple[str, str], delta: int) -> None:
        for a, b in ((left, right), (right, left)):
            peers = self._adjacent.setdefault(a, {})
            n = peers.get(b, 0) + delta
            if n > 0:
                peers[b] = n
            else:
                peers.pop(b, None)
                if not peers:
                    del self._adjacent[a]

    def _forget_vmi(self, key: tuple[str, str]) -> None:
        node = self.nodes.get(key)
        if node is not None and node.type == "virtual-machine-interface":
            for alias in _vmi_aliases(node):
                if self._vmis.get(alias) == key:
                    del self._vmis[alias]

    def objects(self, type_: str) -> list[ConfigNode]:
        return [n for (t, _), n in self.nodes.items() if t == type_]

    def get(self, type_: str, name: str) -> ConfigNode | None:
        return self.nodes.get((type_, name))

    def linked(self, type_: str, name: str, other: str | None = None) -> list[tuple[str, str]]:
        """Objects referenced from or to ``(type_, name)`` (only of type ``other``)."""
        peers = self._adjacent.get((type_, name), {})
        return [p for p in peers if other is None or p[0] == other]

    # -- what the agent needs ---------------------------------------------------------

    def network_by_uuid(self, uuid: str) -> str | None:
        """The fq-name of the virtual network whose ``id-perms`` uuid is ``uuid``."""
        want = uuid.lower()
        for (t, name), node in self.nodes.items():
            if t == "virtual-network" and _uuid_of(node) == want:
                return name
        return None

    def routing_instance_of(self, vn: str) -> str | None:
        """The routing instance (VRF name) of virtual network ``vn`` (fq-name)."""
        ris = self.linked("virtual-network", vn, "routing-instance")
        return sorted(r[1] for r in ris)[0] if ris else None

    def subnets_of(self, vn: str) -> list[dict[str, Any]]:
        """IPAM subnets of ``vn``: ``prefix``, ``plen``, ``gateway``, ``dns`` per subnet."""
        out = []
        for (left, right, meta), link in self._links.items():
            if meta != "virtual-network-network-ipam" or ("virtual-network", vn) not in (
                left,
                right,
            ):
                continue
            for sub in _as_list(_dig(link.properties, "ipam-subnets", "ipam-subnets")) or \
                    _as_list(link.properties.get("ipam-subnets")):
                if not isinstance(sub, dict):
                    continue
                subnet = sub.get("subnet", {})
                if not isinstance(subnet, dict):
                    continue
                out.append({
                    "prefix": subnet.get("ip-prefix", ""),
                    "plen": int(subnet.get("ip-prefix-len", 0) or 0),
                    "gateway": sub.get("default-gateway", ""),
                    "dns": sub.get("dns-server-address", ""),
                })
        return out

    def network_settings(self, vn: str) -> dict[str, Any]:
        """What the config says of network ``vn`` (fq-name) beyond its subnets, as plain
        values (unset ones left out): ``vni`` (``virtual-network-properties``'
        ``vxlan-network-identifier``), and from its first IPAM's ``network-ipam-mgmt``
        ``dns_method``, ``tenant_dns`` (addresses) and ``virtual_dns`` (the named
        virtual DNS's ``domain``, ``next`` server, ``ttl`` and ``records``)."""
        out: dict[str, Any] = {}
        node = self.get("virtual-network", vn)
        if node is not None:
            vni = _dig(node.properties, "virtual-network-properties", "vxlan-network-identifier")
            if vni not in (None, ""):
                out["vni"] = vni
        for _, ipam_name in sorted(self.linked("virtual-network", vn, "network-ipam")):
            ipam = self.get("network-ipam", ipam_name)
            mgmt = _dig(ipam.properties, "network-ipam-mgmt") if ipam is not None else None
            if not isinstance(mgmt, dict):
                continue
            if mgmt.get("ipam-dns-method"):
                out["dns_method"] = str(mgmt["ipam-dns-method"])
            servers = _dig(mgmt, "ipam-dns-server", "tenant-dns-server-address", "ip-address")
            out["tenant_dns"] = [str(s) for s in _as_list(servers)]
            vdns_name = _dig(mgmt, "ipam-dns-server", "virtual-dns-server-name")
            if vdns_name:
                vdns = self._virtual_dns(str(vdns_name))
                if vdns is not None:
                    out["virtual_dns"] = vdns
            break
        return out

    def _virtual_dns(self, name: str) -> dict[str, Any] | None:
        node = self.get("virtual-DNS", name)
        data = _dig(node.properties, "virtual-DNS-data") if node is not None else None
        if not isinstance(data, dict):
            return None
        records = []
        for _, rec_name in sorted(self.linked("virtual-DNS", name, "virtual-DNS-record")):
            rec = self.get("virtual-DNS-record", rec_name)
            rd = _dig(rec.properties, "virtual-DNS-record-data") if rec is not None else None
            if isinstance(rd, dict):
                records.append({"name": rd.get("record-name"), "type": rd.get("record-type"),
                                "data": rd.get("record-data"),
                                "ttl": rd.get("record-ttl-seconds")})
        return {"domain": data.get("domain-name"), "next": data.get("next-virtual-DNS"),
                "ttl": data.get("default-ttl-seconds"), "records": records}

    # The names before the naming rule (docs/contributing.md, "Names"); docs/xmpp.md
    # documented them.
    networkByUuid = network_by_uuid
    routingInstanceOf = routing_instance_of
    subnetsOf = subnets_of

    def interface(self, uuid: str) -> dict[str, Any] | None:
        """A VM interface by uuid (its ``id-perms`` uuid, or the last part of its name, as
        the real agent names VMIs): its ``mac``, virtual ``network`` and instance ``ips``
        (in name order, so the choice of an address is stable)."""
        key = self._vmis.get(uuid.lower())
        node = self.nodes.get(key) if key is not None else None
        if node is None:
            return None
        t, name = node.type, node.name
        macs = _as_list(_dig(node.properties, "virtual-machine-interface-mac-addresses",
                             "mac-address"))
        vns = sorted(self.linked(t, name, "virtual-network"))
        ips = []
        for _, ip_name in sorted(self.linked(t, name, "instance-ip")):
            ip = self.get("instance-ip", ip_name)
            if ip is not None and ip.properties.get("instance-ip-address"):
                ips.append(str(ip.properties["instance-ip-address"]))
        return {"name": name, "mac": str(macs[0]) if macs else "",
                "network": vns[0][1] if vns else None, "ips": ips}


def _vmi_aliases(node: ConfigNode) -> set[str]:
    """The uuids a VM interface is asked for by: its ``id-perms`` uuid, the last part of
    its fq-name."""
    out = {node.name.rsplit(":", 1)[-1].lower()}
    uuid = _uuid_of(node)
    if uuid:
        out.add(uuid)
    return out


def _uuid_of(node: ConfigNode) -> str:
    """``id-perms`` uuid as text: IFMap sends it as two 64-bit halves, tests as a string."""
    uuid = _dig(node.properties, "id-perms", "uuid")
    if isinstance(uuid, dict):
        try:
            ms = int(uuid.get("uuid-mslong", 0)) & (1 << 64) - 1
            ls = int(uuid.get("uuid-lslong", 0)) & (1 << 64) - 1
        except (TypeError, ValueError):
            return ""
        h = f"{ms:016x}{ls:016x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return str(uuid or "").lower()


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


class AgentSession(XmppSession):
    """The agent's end of one XMPP stream (client)."""

    _log = Logger()

    def __init__(
        self,
        link: ControllerLink,
        clock: IReactorTime,
        hold_time: float = DEFAULT_HOLD_TIME,
        tls: CertificateOptions | None = None,
    ) -> None:
        super().__init__(clock, hold_time, CONTROLLER_MAX_STANZA)
        self.link = link
        self.tls = tls
        self.tls_started = False
        self.peer_name = "control-node"

    def connectionMade(self) -> None:
        super().connectionMade()
        self.send(build_stream_open(self.link.hostname))

    def dataReceived(self, data: bytes) -> None:
        """Every route of one read reaches the datapath model as one change when the
        sink offers ``batched()`` (the agent's model does): its synchroniser then plans
        and bunches them together instead of one ksync message per route."""
        batched = getattr(self.link.remote.sink, "batched", None)
        if batched is None:
            super().dataReceived(data)
            return
        with batched():
            super().dataReceived(data)

    def header_received(self, header: StreamHeader) -> None:
        if self.established:
            raise ProtocolViolation("second stream header on an established stream")
        if header.from_:
            self.peer_name = header.from_
        if self.tls is not None and not self.tls_started:
            return  # wait for <stream:features>
        self.established = True
        self.start_timers()
        self.link.session_ready(self)

    def stanza_received(self, stanza: Stanza) -> None:
        if isinstance(stanza, StreamFeatures) and stanza.starttls and self.tls is None:
            raise ProtocolViolation("control node requires TLS; no --xmpp-cert given")
        if not self.established:
            if isinstance(stanza, StreamFeatures):
                if self.tls is None:
                    raise ProtocolViolation("control node requires TLS; no --xmpp-cert given")
                self.send(STARTTLS)
                return
            if isinstance(stanza, TlsProceed) and self.tls is not None:
                self.tls_started = True
                self.restart_framing()
                self.transport.startTLS(self.tls)  # type: ignore[union-attr]
                self.send(build_stream_open(self.link.hostname))
                return
            if isinstance(stanza, TlsFailure):
                raise ProtocolViolation("control node refused STARTTLS")
            raise ProtocolViolation(f"{type(stanza).__name__} before the stream is established")
        if isinstance(stanza, RouteUpdate):
            self.link.routes_received(stanza)
        elif isinstance(stanza, EndOfRib):
            self.link.end_of_rib_received()
        elif isinstance(stanza, ConfigUpdate):
            self.link.config.apply(stanza)
        elif isinstance(stanza, Subscribe | Unsubscribe | Publish | Collection):
            raise ProtocolViolation(f"control node sent an agent stanza ({type(stanza).__name__})")
        elif isinstance(stanza, StreamFeatures | StartTls | TlsProceed | TlsFailure):
            raise ProtocolViolation(f"unexpected {type(stanza).__name__} on an established stream")

    def session_closed(self, reason: str) -> None:
        self.link.session_lost(self, reason)


class _SessionFactory(Factory):
    def __init__(self, link: ControllerLink) -> None:
        self.link = link

    def buildProtocol(self, addr: IAddress | None) -> AgentSession:
        session = AgentSession(self.link, self.link.clock, self.link.hold_time, self.link.tls)
        session.factory = self
        return session


@implementer(IControllerLink)
class ControllerLink(MultiService):
    """The controller link service: one session at a time, local routes, learnt routes."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        endpoints: Sequence[IStreamClientEndpoint],
        hostname: str,
        fabric_ip: str,
        routes: IRemoteRouteSink,
        *,
        names: Sequence[str] | None = None,
        hold_time: float = DEFAULT_HOLD_TIME,
        tls: CertificateOptions | None = None,
        stale_time: float = DEFAULT_STALE_TIME,
        encapsulations: tuple[str, ...] = ("gre", "udp"),
        encap_priority: tuple[str, ...] = DEFAULT_ENCAP_PRIORITY,
        rng: random.Random | None = None,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.hostname = hostname
        self.fabric_ip = fabric_ip
        self.hold_time = check_hold_time(hold_time)
        self.tls = tls
        self.stale_time = stale_time
        self.encapsulations = encapsulations
        #: the host (vhost) interface's MAC, which the real agent puts in inet next hops
        self.host_mac = ""
        self.remote = RemoteRouteTable(routes, encap_priority)
        self.config = ConfigStore()
        self.endpoint = FailoverEndpoint(endpoints, names)
        self.session: AgentSession | None = None
        self.sessions_established = 0
        self.end_of_ribs = 0
        self._rng = rng or random.Random()
        self._local: dict[str, LocalRoute] = {}
        self._vrf_ports: dict[str, set[str]] = {}
        self._vrf_ids: dict[str, int] = {}
        self._vm_ports: dict[str, set[str]] = {}
        self._vrf_release: dict[str, IDelayedCall] = {}
        self._vrf_vn: dict[str, str] = {}  # agent VRF name -> virtual network uuid
        self._wire: dict[str, str] = {}  # agent VRF name -> routing instance on the wire
        self._from_wire: dict[str, str] = {}
        self._seq = 0
        self._stale_call: IDelayedCall | None = None
        self._ready_waiters: list[Deferred[None]] = []
        #: False while the agent is still replaying its ports: End-of-RIB waits, or the
        #: control node would sweep the routes of a restarting agent it keeps stale
        self.local_routes_complete = True
        self._eor_pending = False
        #: called at each End-of-RIB from the control node and when the stale timer
        #: expires: the learnt routes are as complete as they will get
        self.on_routes_synced: list[Callable[[], None]] = []
        self.client = ClientService(
            self.endpoint,
            _SessionFactory(self),
            retryPolicy=retry_policy or self._retry_delay,
            clock=clock,
        )
        self.client.setName("xmpp-client")
        self.client.setServiceParent(self)
        self.config.listeners.append(self._config_changed)
        #: (vn uuid, routing instance) -> network fq-name, until config changes
        self._vn_names: dict[tuple[str, str], str] = {}

    def _retry_delay(self, client_attempts: int) -> float:
        # Our own count: ClientService resets its count on every TCP connect, but a
        # connection that dies before the session is up must back off too.
        return backoff_delay(max(1, self.endpoint.failures), self._rng)

    # -- IControllerLink ------------------------------------------------------------------

    def localRouteAdded(self, route: Any) -> None:
        """Publish a local port's routes (subscribing to its VRF / VM first if new)."""
        info = _info(route)
        old = self._local.get(info.port_id)
        if old is not None:
            self.localRouteDeleted(old)
        self._local[info.port_id] = info
        ports = self._vrf_ports.get(info.vrf_name)
        new_vrf = ports is None
        if ports is None:
            ports = self._vrf_ports[info.vrf_name] = set()
            self._vrf_ids[info.vrf_name] = self._vrf_id_for(info)
            self._vrf_vn[info.vrf_name] = info.vn_id
            self._set_wire(info.vrf_name, self._config_instance(info.vn_id))
        else:
            release = self._vrf_release.pop(info.vrf_name, None)
            if release is not None and release.active():
                release.cancel()  # a port came back in the same turn: keep the subscription
        ports.add(info.port_id)
        vm_ports = self._vm_ports.setdefault(info.vm_id, set()) if info.vm_id else None
        new_vm = vm_ports is not None and not vm_ports
        if vm_ports is not None:
            vm_ports.add(info.port_id)
        session = self._live()
        if session is None:
            return
        out = []
        if new_vm:
            out.append(self._vm_subscribe(info.vm_id, True))
        if new_vrf:
            out.append(build_subscribe(self.hostname, self._wire_of(info.vrf_name),
                                       self._vrf_ids[info.vrf_name], iq_id=self._id("subscribe")))
        out.extend(self._publish(info, True))
        session.send(b"".join(out))

    def localRouteDeleted(self, route: Any) -> None:
        """Withdraw a port's routes; unsubscribe its VRF / VM when it was the last."""
        info = self._local.pop(_info(route).port_id, None)
        if info is None:
            return
        session = self._live()
        out = []
        if session is not None:
            out.extend(self._publish(info, False))
        ports = self._vrf_ports.get(info.vrf_name)
        if ports is not None:
            ports.discard(info.port_id)
            if not ports and info.vrf_name not in self._vrf_release:
                # Released at the end of this reactor turn: an update of the VRF's only
                # port (delete + add) then costs no unsubscribe / resubscribe / re-learn.
                self._vrf_release[info.vrf_name] = self.clock.callLater(
                    0, self._release_vrf, info.vrf_name
                )
        if info.vm_id:
            vm_ports = self._vm_ports.get(info.vm_id, set())
            vm_ports.discard(info.port_id)
            if not vm_ports:
                self._vm_ports.pop(info.vm_id, None)
                if session is not None:
                    out.append(self._vm_subscribe(info.vm_id, False))
        if session is not None and out:
            session.send(b"".join(out))

    def _release_vrf(self, vrf: str) -> None:
        """The VRF's last port is gone: unsubscribe and forget what was learnt there."""
        self._vrf_release.pop(vrf, None)
        if self._vrf_ports.get(vrf):
            return
        self._vrf_ports.pop(vrf, None)
        self._vrf_ids.pop(vrf, None)
        self._vrf_vn.pop(vrf, None)
        session = self._live()
        if session is not None:
            session.send(build_unsubscribe(self.hostname, self._wire_of(vrf),
                                           iq_id=self._id("unsubscribe")))
        self._set_wire(vrf, None)
        self.remote.drop_vrf(vrf)

    # -- routing-instance names from config -----------------------------------------------

    def _wire_of(self, vrf: str) -> str:
        return self._wire.get(vrf, vrf)

    def _set_wire(self, vrf: str, wire: str | None) -> None:
        old = self._wire.pop(vrf, None)
        if old is not None:
            self._from_wire.pop(old, None)
        if wire and wire != vrf:
            self._wire[vrf] = wire
            self._from_wire[wire] = vrf

    def _config_instance(self, vn_id: str) -> str | None:
        """The routing instance config gives the port's network, if config named it."""
        vn = self.config.network_by_uuid(vn_id) if vn_id else None
        return self.config.routing_instance_of(vn) if vn else None

    def _config_changed(self, update: ConfigUpdate) -> None:
        self._vn_names.clear()
        """Config renamed a VRF's routing instance: move the subscription and the routes."""
        session = self._live()
        for vrf in list(self._vrf_ports):
            wire = self._config_instance(self._vrf_vn.get(vrf, "")) or vrf
            old = self._wire_of(vrf)
            if wire == old:
                continue
            self._log.info("routing instance of {vrf} is {wire} (from config)", vrf=vrf,
                           wire=wire)
            out = []
            if session is not None:
                out.append(build_unsubscribe(self.hostname, old, iq_id=self._id("unsubscribe")))
            self.remote.drop_vrf(vrf)
            self._set_wire(vrf, wire)
            if session is not None:
                out.append(build_subscribe(self.hostname, wire, self._vrf_ids.get(vrf, 0),
                                           iq_id=self._id("subscribe")))
                for info in self._local.values():
                    if info.vrf_name == vrf:
                        out.extend(self._publish(info, True))
                session.send(b"".join(out))

    # -- session events -------------------------------------------------------------------

    def _live(self) -> AgentSession | None:
        s = self.session
        return s if s is not None and s.established and not s.closing else None

    def session_ready(self, session: AgentSession) -> None:
        """Established: config subscribe, VM subscribes, VRF subscribes, routes, EoR."""
        self.session = session
        self.sessions_established += 1
        self.endpoint.session_established()
        self._log.info(
            "XMPP session to {cn} ({ep}) established; {n} local routes to publish",
            cn=session.peer_name,
            ep=self.endpoint.current_name,
            n=len(self._local),
        )
        out = [
            build_subscribe(
                self.hostname,
                f"virtual-router:default-global-system-config:{self.hostname}",
                service="config",
            )
        ]
        for vrf, vrf_id in self._vrf_ids.items():
            out.append(build_subscribe(self.hostname, self._wire_of(vrf), vrf_id,
                                       iq_id=self._id("subscribe")))
        out.extend(self._vm_subscribe(vm, True) for vm in self._vm_ports)
        for info in self._local.values():
            out.extend(self._publish(info, True))
        # End-of-RIB once the walk of local routes is done, as the real agent's walker
        # sends it (never ahead of the routes it closes), and not before the agent has
        # replayed its ports (a restarting agent would otherwise close an empty table)
        if self.local_routes_complete:
            out.append(build_agent_eor(self.hostname))
        else:
            self._eor_pending = True
        session.send(b"".join(out))
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(None)

    def session_lost(self, session: AgentSession, reason: str) -> None:
        if not session.established and session.keepalives_received == 0:
            self.endpoint.session_failed()
        if self.session is not session:
            return
        self.session = None
        n = self.remote.mark_all_stale()
        # the agent stopping closed it itself: news, not a warning
        (self._log.warn if self.running else self._log.info)(
            "XMPP session to {cn} lost ({reason}); {n} learnt routes kept stale for {t} s",
            cn=session.peer_name,
            reason=reason,
            n=n,
            t=self.stale_time,
        )
        self._arm_stale()

    def _arm_stale(self) -> None:
        if self._stale_call is not None and self._stale_call.active():
            self._stale_call.cancel()
        self._stale_call = None
        if self.remote.stale_count and self.running:
            self._stale_call = self.clock.callLater(self.stale_time, self._stale_expired)

    def _stale_expired(self) -> None:
        self._stale_call = None
        n = self.remote.sweep_stale()
        if n:
            self._log.info("stale timer expired: {n} learnt routes removed", n=n)
        self._routes_synced()

    def end_of_rib_received(self) -> None:
        self.end_of_ribs += 1
        if self._stale_call is not None and self._stale_call.active():
            self._stale_call.cancel()
        self._stale_call = None
        n = self.remote.sweep_stale()
        if n:
            self._log.info("End-of-RIB: {n} stale routes not re-advertised were removed", n=n)
        self._routes_synced()

    def _routes_synced(self) -> None:
        for fn in list(self.on_routes_synced):
            fn()

    def routes_received(self, update: RouteUpdate) -> None:
        vrf = self._from_wire.get(update.vrf, update.vrf)
        if vrf not in self._vrf_ports:
            self._log.warn(
                "routes for {vrf}, which this agent did not subscribe to, ignored", vrf=vrf
            )
            return
        family = update.family
        if not update.items and not update.retracts:
            return  # a family this agent does not use (multicast, MVPN, ...)
        if update.retracts:
            self.remote.retract(vrf, family, update.retracts)
        else:
            self.remote.reach(vrf, family, update.items)

    def hold_end_of_rib(self) -> None:
        """The agent is (re)starting: send End-of-RIB only at :meth:`local_routes_ready`."""
        self.local_routes_complete = False

    def local_routes_ready(self) -> None:
        """Every local route is known (the port files were replayed): send End-of-RIB
        now if a session is up and was waiting for it, and at once on later sessions."""
        self.local_routes_complete = True
        session = self._live()
        if self._eor_pending and session is not None:
            session.send(build_agent_eor(self.hostname))
        self._eor_pending = False

    # the names before the naming rule (docs/contributing.md); docs/xmpp.md documented them
    holdEndOfRib = hold_end_of_rib
    localRoutesReady = local_routes_ready

    def when_ready(self) -> Deferred[None]:
        """Fires when the next (or current) session is established."""
        d: Deferred[None] = Deferred()
        if self._live() is not None:
            d.callback(None)
        else:
            self._ready_waiters.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        for call in self._vrf_release.values():
            if call.active():
                call.cancel()
        self._vrf_release.clear()
        if self._stale_call is not None and self._stale_call.active():
            self._stale_call.cancel()
        self._stale_call = None
        session = self._live()
        if session is not None:
            session.close_session("agent stopping", clean=True)
        d: Deferred[None] = super().stopService()  # ClientService's: always a Deferred
        return d

    # -- stanza building ------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{self._seq}"

    def _vrf_id_for(self, info: LocalRoute) -> int:
        """The instance-id of a subscribe is the agent's VRF id (the RD's second half)."""
        get = getattr(self.remote.sink, "vrf_id_of", None)
        if get is not None:
            try:
                value = get(info.vn_id)
                if value is not None:
                    return int(value)
            except (KeyError, ValueError, TypeError):
                pass
        return 0

    def _vm_subscribe(self, vm_id: str, sub: bool) -> bytes:
        node = f"virtual-machine:{vm_id}"
        if sub:
            return build_subscribe(self.hostname, node, service="config")
        return build_unsubscribe(self.hostname, node, service="config")

    def _vn_name(self, info: LocalRoute, wire: str) -> str:
        """The port's network by fq-name, as the real agent names it in a next hop: from
        config, else the routing instance's name without its last part, else the uuid."""
        key = (info.vn_id, wire)
        name = self._vn_names.get(key)
        if name is None:
            vn = self.config.network_by_uuid(info.vn_id) if info.vn_id else None
            parts = wire.split(":")
            name = vn or (":".join(parts[:-1]) if len(parts) >= 4 else info.vn_id)
            if len(self._vn_names) >= 4096:
                self._vn_names.clear()
            self._vn_names[key] = name
        return name

    def _publish(self, info: LocalRoute, add: bool) -> list[bytes]:
        """The real agent's route items: an inet next hop names the network (fq-name) and
        carries the host interface's MAC, the entry leaves ``virtual-network`` empty; an
        EVPN item names no network at all."""
        nexthop = info.nexthop or self.fabric_ip
        wire = self._wire_of(info.vrf_name)
        nh = NextHop(nexthop, info.label, self.encapsulations, mac=self.host_mac,
                     virtual_network=self._vn_name(info, wire))
        out = []
        if info.ip4:
            entry = RouteEntry(AFI_INET, SAFI_UNICAST, f"{info.ip4}/32", (nh,))
            self._seq += 1
            out.append(build_route_publish(self.hostname, wire, entry, add, self._seq))
        if info.ip6:
            entry = RouteEntry(AFI_INET6, SAFI_UNICAST, f"{info.ip6}/128", (nh,))
            self._seq += 1
            out.append(build_route_publish(self.hostname, wire, entry, add, self._seq))
        if info.mac:
            addr = f"{info.ip4}/32" if info.ip4 else "0.0.0.0/32"
            evpn_nh = NextHop(nexthop, self._evpn_label(info), self.encapsulations)
            entry = RouteEntry(AFI_L2VPN, SAFI_ENET, addr, (evpn_nh,), mac=info.mac.lower())
            self._seq += 1
            out.append(build_route_publish(self.hostname, wire, entry, add, self._seq))
        return out

    def _evpn_label(self, info: LocalRoute) -> int:
        """The EVPN route's label, as the real agent picks it: the network's VNI when
        VXLAN is the preferred encapsulation, else the port's L2 label (the L3 label
        for a route made without one)."""
        if self.encapsulations and self.encapsulations[0] == "vxlan" and info.vni:
            return info.vni
        return info.l2_label or info.label

    # -- inspection ---------------------------------------------------------------------

    @property
    def subscribed_vrfs(self) -> list[str]:
        return sorted(self._vrf_ports)

    def flush_releases(self) -> None:
        """Release now the VRFs whose last port went in this turn (service stop, tests)."""
        for vrf, call in list(self._vrf_release.items()):
            if call.active():
                call.cancel()
            self._release_vrf(vrf)


def _info(route: Any) -> LocalRoute:
    if isinstance(route, LocalRoute):
        return route
    return LocalRoute(
        route.port_id, route.vm_id or "", route.vn_id, route.vrf_name, route.mac or "",
        route.ip4 or None, route.ip6 or None, int(route.label), route.nexthop or "",
        int(getattr(route, "l2_label", 0) or 0), int(getattr(route, "vni", 0) or 0),
    )


ENCAPSULATIONS = ("udp", "gre", "vxlan")


def parse_encap(text: str) -> tuple[str, ...]:
    """``--encap``: encapsulations in order of preference, comma separated (``udp`` is
    MPLSoUDP, ``gre`` MPLSoGRE); ValueError names what is wrong."""
    names = tuple(n.strip().lower() for n in str(text).split(",") if n.strip())
    if not names:
        raise ValueError("--encap needs at least one of udp, gre, vxlan")
    bad = [n for n in names if n not in ENCAPSULATIONS]
    if bad:
        raise ValueError(f"--encap: {', '.join(bad)} not one of udp, gre, vxlan")
    if len(set(names)) != len(names):
        raise ValueError("--encap lists an encapsulation twice")
    return names


#: Options ``twistd vrouter`` can add to its ``optParameters`` for the link.
LINK_OPT_PARAMETERS: list[list[Any]] = [
    ["encap", None, None, "encapsulations this node advertises and prefers, in order "
     "(udp = MPLSoUDP, gre = MPLSoGRE, vxlan), e.g. gre or udp,gre; default udp,gre "
     "advertised and udp,gre,vxlan preferred", parse_encap],
    ["xmpp-hold-time", None, DEFAULT_HOLD_TIME, "XMPP hold time in seconds (1..90)",
     check_hold_time],
    ["xmpp-stale-time", None, DEFAULT_STALE_TIME,
     "seconds learnt routes survive a lost controller session", float],
    ["xmpp-cert", None, None, "PEM client certificate: turns on STARTTLS (mutual)"],
    ["xmpp-key", None, None, "PEM private key of --xmpp-cert"],
    ["xmpp-ca", None, None, "PEM CA that signs the control node's certificate"],
]


def linkKwargsFromOptions(options: Any) -> dict[str, Any]:
    """Keyword arguments for :func:`makeControllerLink` from options holding the above."""
    kwargs: dict[str, Any] = {}
    get = options.get if hasattr(options, "get") else lambda k, d=None: d
    if get("xmpp-hold-time", None) is not None:
        kwargs["hold_time"] = float(get("xmpp-hold-time"))
    if get("xmpp-stale-time", None) is not None:
        kwargs["stale_time"] = float(get("xmpp-stale-time"))
    for key in ("xmpp-cert", "xmpp-key", "xmpp-ca"):
        if get(key, None):
            kwargs[key.replace("-", "_")] = get(key)
    encap = get("encap", None)
    if encap:
        # advertise only these; among what a peer advertises take the first of these,
        # then the default order (a peer may offer none of ours)
        encap = parse_encap(",".join(encap)) if not isinstance(encap, str) else parse_encap(encap)
        kwargs["encapsulations"] = encap
        kwargs["encap_priority"] = encap + tuple(
            e for e in DEFAULT_ENCAP_PRIORITY if e not in encap)
    return kwargs


def makeControllerLink(
    reactor: Any,
    endpoints: Sequence[str],
    hostname: str,
    fabric_ip: str,
    routes: IRemoteRouteSink,
    *,
    hold_time: float = DEFAULT_HOLD_TIME,
    stale_time: float = DEFAULT_STALE_TIME,
    xmpp_cert: str | None = None,
    xmpp_key: str | None = None,
    xmpp_ca: str | None = None,
    **kwargs: Any,
) -> ControllerLink:
    """The link service for ``twistd vrouter``: add it under the agent's MultiService.

    ``endpoints`` are client endpoint strings (``tcp:10.0.0.1:5269``) or ``host[:port]``;
    only the first two are used, as the real agent keeps two controllers.
    """
    if len(endpoints) > 2:
        Logger().warn("only the first two of {n} controllers are used", n=len(endpoints))
    descriptions = [_endpoint_description(e) for e in endpoints[:2]]
    eps = [clientFromString(reactor, d) for d in descriptions]
    tls = None
    if xmpp_cert or xmpp_key or xmpp_ca:
        if not (xmpp_cert and xmpp_key and xmpp_ca):
            raise ValueError("--xmpp-cert, --xmpp-key and --xmpp-ca go together")
        tls = mutual_tls_options(xmpp_cert, xmpp_key, xmpp_ca)
    link = ControllerLink(
        reactor, eps, hostname, fabric_ip, routes, names=descriptions, hold_time=hold_time,
        tls=tls, stale_time=stale_time, **kwargs,
    )
    link.setName("xmpp")
    return link

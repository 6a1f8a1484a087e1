"""The control node: accepts agents over XMPP and reflects routes between them.

State (:class:`ControlNode`) keeps one table per routing instance with every path each
agent published.  Each session keeps, per ``afi/safi/vrf`` node, the set of items that
changed since it last wrote; a flush turns that into messages from the current table.
So a slow agent costs at most one pending mark per route (no unbounded queue): when its
transport pushes back (``pauseProducing``) marks just accumulate and the latest state is
sent on ``resumeProducing``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions
from zope.interface import Interface, implementer

from vrtwist.logfields import Logger

from .framing import StreamHeader, build_stream_response
from .session import DEFAULT_HOLD_TIME, ProtocolViolation, XmppSession
from .stanzas import (
    AFI_L2VPN,
    CONTROL_NODE_JID,
    PROCEED,
    Collection,
    ConfigLink,
    ConfigNode,
    ConfigUpdate,
    EndOfRib,
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
    build_config,
    build_eor_message,
    build_features,
    entry_xml,
)

__all__ = [
    "MAX_ITEMS_PER_MESSAGE",
    "ControlNode",
    "ControlNodeFactory",
    "ControlSession",
    "IControlNode",
]

#: Items per control-node message (the real one also bounds this, ``kMaxReachCount``).
MAX_ITEMS_PER_MESSAGE = 128
#: The control node accepts at most this size of stanza from an agent.
AGENT_MAX_STANZA = 256 * 1024
#: Time to wait for the stream open after the TCP accept.
OPEN_TIMEOUT = 15.0
#: Paths one agent may have in the tables (a bound on what a misbehaving agent costs).
DEFAULT_MAX_ROUTES = 1_000_000
#: Routing instances one agent may subscribe to (the vRouter has at most 65,536 VRFs).
MAX_SUBSCRIPTIONS = 65536
#: End-of-RIB goes out once this long has passed without a new subscribe from the agent,
#: so an agent whose subscribes span several reads gets one EoR after all of them (the
#: real control node also sends EoR from a timer, not per subscribe).
EOR_QUIET = 0.05

Family = tuple[int, int]
NodeKey = tuple[str, int, int]  # (vrf, afi, safi)


class IControlNode(Interface):
    """What a control-node session asks of the shared routing state."""

    def register(session: ControlSession) -> str | None:
        """Admit a session after its stream open; return a refusal reason or None."""

    def unregister(session: ControlSession) -> None:
        """The session is gone: keep its routes stale for the GR time, then retract."""

    def subscribe(session: ControlSession, vrf: str, instance_id: int | None) -> None:
        """Subscribe to a routing instance; raises ProtocolViolation on a duplicate."""

    def unsubscribe(session: ControlSession, vrf: str) -> None:
        """Unsubscribe (and withdraw what the session published there)."""

    def update(
        session: ControlSession, vrf: str, entry: RouteEntry, add: bool, raw: str = ""
    ) -> None:
        """A route published (add) or withdrawn by the session in ``vrf``.

        ``raw`` is the entry's XML as received, when canonical: it is reflected as is.
        """

    def endOfRib(session: ControlSession) -> None:
        """The session has re-advertised everything: sweep its stale paths."""


def as_control_node_sends(entry: RouteEntry, network: str) -> RouteEntry:
    """An agent's route item as the real control node advertises it: the entry names the
    origin network (an agent leaves it empty; an inet next hop names it, an EVPN item is
    given the network last seen in the instance's inet routes) and an EVPN ``<nlri>``
    carries ``group``/``source`` (``0.0.0.0`` for a unicast MAC route)."""
    vn = entry[6]  # virtual_network (tuple indexing: this runs per route)
    if not vn:
        vn = network
        for nh in entry[3]:
            if nh[4]:  # NextHop.virtual_network
                vn = nh[4]
                break
    if entry[0] == AFI_L2VPN:
        group = entry[12] or "0.0.0.0"
        source = entry[13] or "0.0.0.0"
        if vn == entry[6] and group == entry[12] and source == entry[13]:
            return entry
        return _new_tuple(RouteEntry, (*entry[:6], vn, *entry[7:12], group, source, entry[14]))
    if vn == entry[6]:
        return entry
    return _new_tuple(RouteEntry, (*entry[:6], vn, *entry[7:]))


_new_tuple = tuple.__new__


_INET_EMPTY_VN = "</version><virtual-network></virtual-network>"
_EVPN_EMPTY_VN = "<olist /><virtual-network></virtual-network>"
_EVPN_EMPTY_GS = "<group></group><source></source>"


def _patched(raw: str, old: RouteEntry, new: RouteEntry) -> str:
    """``raw`` (an agent's canonical entry XML) with what :func:`as_control_node_sends`
    filled in, by text (a burst of routes is not rebuilt); "" when it does not apply."""
    vn = f"<virtual-network>{_attr(new.virtual_network)}</virtual-network>"
    if new.afi != AFI_L2VPN:
        if old.virtual_network or raw.count(_INET_EMPTY_VN) != 1:
            return ""
        return raw.replace(_INET_EMPTY_VN, "</version>" + vn)
    if old.virtual_network or old.group or old.source or raw.count(_EVPN_EMPTY_VN) != 1 \
            or raw.count(_EVPN_EMPTY_GS) != 1:
        return ""
    gs = f"<group>{_attr(new.group)}</group><source>{_attr(new.source)}</source>"
    return raw.replace(_EVPN_EMPTY_GS, gs).replace(_EVPN_EMPTY_VN, "<olist />" + vn)


@dataclass(slots=True)
class _Path:
    entry: RouteEntry
    xml: str
    stale: bool = False


@dataclass(slots=True)
class RoutingInstance:
    """One VRF's table: family -> item id -> origin agent -> path; and its subscribers."""

    name: str
    routes: dict[Family, dict[str, dict[str, _Path]]] = field(default_factory=dict)
    subscribers: dict[str, ControlSession] = field(default_factory=dict)
    instance_ids: dict[str, int | None] = field(default_factory=dict)
    #: the network (fq-name) the instance's inet routes name, for its EVPN items
    network: str = ""

    def count(self) -> int:
        return sum(len(items) for items in self.routes.values())


@implementer(IControlNode)
class ControlNode:
    """Routing state of the control node, shared by every agent session."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        hostname: str = "vrtwist-control",
        gr_time: float = 30.0,
        max_routes: int = DEFAULT_MAX_ROUTES,
    ) -> None:
        self.clock = clock
        self.hostname = hostname
        self.gr_time = gr_time
        self.max_routes = max_routes
        self.route_counts: dict[str, int] = {}
        self.sessions: dict[str, ControlSession] = {}
        self.instances: dict[str, RoutingInstance] = {}
        self._gr_timers: dict[str, IDelayedCall] = {}
        self._flush_call: IDelayedCall | None = None
        self._dirty_sessions: set[ControlSession] = set()

    # -- sessions ---------------------------------------------------------------------

    def register(self, session: ControlSession) -> str | None:
        name = session.peer_name
        old = self.sessions.get(name)
        if old is not None and old is not session:
            if _host(old.peer_address()) != _host(session.peer_address()):
                return f"agent {name!r} is already connected from another address"
            # Same agent restarting: the old session goes first, its paths turn stale.
            self.unregister(old)
            old.close_session("replaced by a new session from the same address")
        self.sessions[name] = session
        return None

    def unregister(self, session: ControlSession) -> None:
        name = session.peer_name
        self._dirty_sessions.discard(session)
        if self.sessions.get(name) is not session:
            return
        del self.sessions[name]
        for vrf in list(session.subscriptions):
            inst = self.instances.get(vrf)
            if inst is not None and inst.subscribers.get(name) is session:
                del inst.subscribers[name]
                inst.instance_ids.pop(name, None)
        session.subscriptions.clear()
        if self.gr_time > 0:
            n = self._mark_stale(name)
            if n:
                self._log.info(
                    "agent {agent} gone: its {n} routes are kept for {gr} s",
                    agent=name,
                    n=n,
                    gr=self.gr_time,
                )
                self._arm_gr(name)
        else:
            self._purge(name, stale_only=False)

    def _arm_gr(self, name: str) -> None:
        old = self._gr_timers.pop(name, None)
        if old is not None and old.active():
            old.cancel()
        self._gr_timers[name] = self.clock.callLater(self.gr_time, self._gr_expired, name)

    def _gr_expired(self, name: str) -> None:
        self._gr_timers.pop(name, None)
        n = self._purge(name, stale_only=True)
        if n:
            self._log.info(
                "graceful-restart time of {agent} over: {n} stale routes retracted",
                agent=name,
                n=n,
            )

    def _mark_stale(self, origin: str) -> int:
        n = 0
        for inst in self.instances.values():
            for items in inst.routes.values():
                for paths in items.values():
                    path = paths.get(origin)
                    if path is not None:
                        path.stale = True
                        n += 1
        return n

    def _purge(self, origin: str, stale_only: bool) -> int:
        n = 0
        for inst in list(self.instances.values()):
            for family, items in inst.routes.items():
                for item_id in list(items):
                    paths = items[item_id]
                    path = paths.get(origin)
                    if path is None or (stale_only and not path.stale):
                        continue
                    del paths[origin]
                    self._uncount(origin)
                    if not paths:
                        del items[item_id]
                    self._changed(inst, family, item_id, origin)
                    n += 1
            self._maybe_drop(inst)
        return n

    def _maybe_drop(self, inst: RoutingInstance) -> None:
        if not inst.subscribers and not any(inst.routes.values()):
            self.instances.pop(inst.name, None)

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(self, session: ControlSession, vrf: str, instance_id: int | None) -> None:
        if vrf in session.subscriptions:
            raise ProtocolViolation(f"duplicate subscribe to {vrf!r}")
        if len(session.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise ProtocolViolation(f"more than {MAX_SUBSCRIPTIONS} routing instances subscribed")
        inst = self.instances.get(vrf)
        if inst is None:
            inst = self.instances[vrf] = RoutingInstance(vrf)
        session.subscriptions.add(vrf)
        inst.subscribers[session.peer_name] = session
        inst.instance_ids[session.peer_name] = instance_id
        # Current routes of the instance, then End-of-RIB.
        n = 0
        for family, items in inst.routes.items():
            if items:
                n += len(items)
                session.mark_dirty((vrf, family[0], family[1]), items.keys())
        self._log.info(
            "agent {agent} subscribed to {vrf} (instance-id {iid}): {n} routes to send",
            agent=session.peer_name,
            vrf=vrf,
            iid=instance_id,
            n=n,
        )
        session.eor_pending = True
        session.last_subscribe = self.clock.seconds()
        self._schedule(session)

    def unsubscribe(self, session: ControlSession, vrf: str) -> None:
        if vrf not in session.subscriptions:
            raise ProtocolViolation(f"unsubscribe from {vrf!r} without a subscribe")
        session.subscriptions.discard(vrf)
        inst = self.instances[vrf]
        inst.subscribers.pop(session.peer_name, None)
        inst.instance_ids.pop(session.peer_name, None)
        session.forget_instance(vrf)
        name = session.peer_name
        for family, items in inst.routes.items():
            for item_id in list(items):
                paths = items[item_id]
                if name in paths:
                    del paths[name]
                    self._uncount(name)
                    if not paths:
                        del items[item_id]
                    self._changed(inst, family, item_id, name)
        self._maybe_drop(inst)

    # -- routes -------------------------------------------------------------------------

    def update(
        self, session: ControlSession, vrf: str, entry: RouteEntry, add: bool, raw: str = ""
    ) -> None:
        if vrf not in session.subscriptions:
            raise ProtocolViolation(f"route {entry.item_id} for unsubscribed instance {vrf!r}")
        inst = self.instances[vrf]
        if add:
            sent = as_control_node_sends(entry, inst.network)
            if sent is not entry:
                raw = _patched(raw, entry, sent) if raw else ""
                entry = sent
            if entry.afi != AFI_L2VPN and entry.virtual_network:
                inst.network = entry.virtual_network
        family = (entry.afi, entry.safi)
        items = inst.routes.get(family)
        if items is None:
            items = inst.routes[family] = {}
        item_id = entry.item_id
        name = session.peer_name
        if add:
            if not self._add_path(items, name, entry, raw):
                return
        else:
            paths = items.get(item_id)
            if paths is None or name not in paths:
                return
            del paths[name]
            self._uncount(name)
            if not paths:
                del items[item_id]
        self._changed(inst, family, item_id, name)

    def _add_path(
        self, items: dict[str, dict[str, _Path]], name: str, entry: RouteEntry, raw: str
    ) -> bool:
        """Store ``name``'s path to the entry's item; False when it holds that already."""
        item_id = entry.item_id
        paths = items.get(item_id)
        if paths is None:
            paths = items[item_id] = {}
        old = paths.get(name)
        if old is not None and old.entry == entry:
            old.stale = False
            return False
        if old is None:
            count = self.route_counts.get(name, 0)
            if count >= self.max_routes:
                if not paths:
                    del items[item_id]
                raise ProtocolViolation(f"more than {self.max_routes} routes published")
            self.route_counts[name] = count + 1
        paths[name] = _Path(entry, raw or entry_xml(entry))
        return True

    def _uncount(self, origin: str) -> None:
        left = self.route_counts.get(origin, 0) - 1
        if left > 0:
            self.route_counts[origin] = left
        else:
            self.route_counts.pop(origin, None)

    def endOfRib(self, session: ControlSession) -> None:
        timer = self._gr_timers.pop(session.peer_name, None)
        if timer is not None and timer.active():
            timer.cancel()
        n = self._purge(session.peer_name, stale_only=True)
        if n:
            self._log.info(
                "End-of-RIB from {agent}: {n} stale routes swept", agent=session.peer_name, n=n
            )

    def best_path(self, vrf: str, family: Family, item_id: str, viewer: str) -> _Path | None:
        """The path ``viewer`` should see: never its own; highest local preference wins."""
        inst = self.instances.get(vrf)
        if inst is None:
            return None
        paths = inst.routes.get(family, {}).get(item_id)
        if not paths:
            return None
        best: _Path | None = None
        best_key: tuple[int, str] = (0, "")
        for origin, path in paths.items():
            if origin == viewer:
                continue
            key = (-path.entry.local_preference, origin)
            if best is None or key < best_key:
                best, best_key = path, key
        return best

    def _changed(self, inst: RoutingInstance, family: Family, item_id: str, origin: str) -> None:
        """``origin``'s path of an item changed: every other subscriber may see a new best
        path.  ``origin`` itself never sees its own paths, so its view did not change."""
        key = (inst.name, family[0], family[1])
        dirty = self._dirty_sessions
        for name, session in inst.subscribers.items():
            if name == origin:
                continue
            pending = session._dirty.get(key)
            if pending is None:
                session._dirty[key] = {item_id}
            else:
                pending.add(item_id)
            dirty.add(session)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def _schedule(self, session: ControlSession) -> None:
        self._dirty_sessions.add(session)
        self._schedule_all()

    def _schedule_all(self) -> None:
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write pending changes to every session that can take them."""
        self._flush_call = None
        sessions, self._dirty_sessions = self._dirty_sessions, set()
        for session in sessions:
            if not session.flush():
                self._dirty_sessions.add(session)

    def resumed(self, session: ControlSession) -> None:
        self._schedule(session)

    # -- config -------------------------------------------------------------------------

    def send_config(
        self,
        agent: str,
        updates: tuple[ConfigNode | ConfigLink, ...] = (),
        deletes: tuple[ConfigNode | ConfigLink, ...] = (),
    ) -> bool:
        """Push IFMap-style config to a connected agent (tests, demos, a config feeder)."""
        session = self.sessions.get(agent)
        if session is None or not session.established:
            return False
        session.send(build_config(agent, updates, deletes))
        return True

    #: the name before the naming rule (docs/contributing.md); docs/xmpp.md documented it
    sendConfig = send_config

    def stop(self) -> None:
        """Cancel pending timers (service stop); sessions are closed by their transports."""
        for call in self._gr_timers.values():
            if call.active():
                call.cancel()
        self._gr_timers.clear()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None

    def route_count(self) -> int:
        return sum(inst.count() for inst in self.instances.values())


def _host(addr: IAddress | None) -> str:
    return str(getattr(addr, "host", addr))


@implementer(IPushProducer)
class ControlSession(XmppSession):
    """One agent as seen by the control node."""

    _log = Logger()

    def __init__(
        self,
        node: IControlNode,
        clock: IReactorTime,
        hold_time: float = DEFAULT_HOLD_TIME,
        tls: CertificateOptions | None = None,
        max_stanza: int = AGENT_MAX_STANZA,
    ) -> None:
        super().__init__(clock, hold_time, max_stanza)
        self.node = node
        self.tls = tls
        self.tls_started = False
        self.registered = False
        self.subscriptions: set[str] = set()
        self.config_subscriptions: set[str] = set()
        self.eor_pending = False
        self.last_subscribe = 0.0
        self._eor_call: IDelayedCall | None = None
        self.paused = False
        self._pending_publish: Publish | None = None
        self._dirty: dict[NodeKey, set[str]] = {}
        self._sent: dict[NodeKey, set[str]] = {}
        self._open_call: IDelayedCall | None = None

    def peer_address(self) -> IAddress | None:
        return self.transport.getPeer() if self.transport is not None else None

    # -- producer ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._open_call = self.clock.callLater(OPEN_TIMEOUT, self._open_timeout)

    def _open_timeout(self) -> None:
        self._open_call = None
        if not self.established:
            self.close_session(f"no stream open within {OPEN_TIMEOUT:g} s")

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            if isinstance(self.node, ControlNode):
                self.node.resumed(self)

    def stopProducing(self) -> None:
        self.paused = True

    # -- stream -------------------------------------------------------------------------

    def header_received(self, header: StreamHeader) -> None:
        if self.established:
            raise ProtocolViolation("second stream open on an established stream")
        name = header.from_
        if not name:
            raise ProtocolViolation("stream open without 'from'")
        self.peer_name = name
        # the real control node's JID, whatever its host is called (the agent accepts any)
        self.send(build_stream_response(CONTROL_NODE_JID, name))
        if self.tls is not None and not self.tls_started:
            self.send(build_features(True))
            return
        reason = self.node.register(self)
        if reason is not None:
            self.close_session(reason)
            return
        self.registered = True
        self.established = True
        if self._open_call is not None and self._open_call.active():
            self._open_call.cancel()
        self._open_call = None
        self._log.info("agent {agent} connected from {peer}", agent=name, peer=self.peer_label())
        self.start_timers()

    def stanza_received(self, stanza: Stanza) -> None:
        if not self.established:
            self._before_established(stanza)
            return
        pending = self._pending_publish
        if pending is not None and not isinstance(stanza, Collection):
            raise ProtocolViolation("publish not followed by its collection")
        if isinstance(stanza, Collection):
            self._pending_publish = None
            if pending is None:
                raise ProtocolViolation("collection without a publish before it")
            self._collection(stanza, pending)
        elif isinstance(stanza, Publish):
            self._pending_publish = stanza
        elif isinstance(stanza, Subscribe | Unsubscribe):
            self._subscription(stanza)
        elif isinstance(stanza, EndOfRib):
            self.node.endOfRib(self)
        elif isinstance(stanza, RouteUpdate | ConfigUpdate):
            raise ProtocolViolation(f"agent sent a control-node stanza ({type(stanza).__name__})")
        elif isinstance(stanza, StreamFeatures | StartTls | TlsProceed | TlsFailure):
            raise ProtocolViolation(f"unexpected {type(stanza).__name__} on an established stream")

    def _before_established(self, stanza: Stanza) -> None:
        """Only STARTTLS (when offered) may come before the stream is established."""
        if isinstance(stanza, StartTls) and self.tls is not None and not self.tls_started:
            self.send(PROCEED)
            self.tls_started = True
            self.restart_framing()
            self.transport.startTLS(self.tls)  # type: ignore[union-attr]
            return
        raise ProtocolViolation(f"{type(stanza).__name__} before the stream is established")

    def _collection(self, stanza: Collection, pending: Publish) -> None:
        """The collection that completes ``pending``: a route added or withdrawn, or EoR."""
        if not stanza.node and pending.entry is None:
            self.node.endOfRib(self)
            return
        target = stanza.associate if stanza.associate is not None else stanza.dissociate
        if pending.entry is None and pending.node and target == pending.node:
            return  # a family this node does not reflect (multicast, MVPN, ...)
        if pending.entry is None or target != pending.node:
            raise ProtocolViolation(
                f"collection node {target!r} differs from publish node {pending.node!r}"
            )
        self.node.update(
            self, stanza.node, pending.entry, stanza.associate is not None, pending.raw_entry
        )

    def _subscription(self, stanza: Subscribe | Unsubscribe) -> None:
        """A routing instance's routes, or a config node, subscribed to or not any more."""
        if isinstance(stanza, Subscribe):
            if stanza.service == "config":
                self.config_subscriptions.add(stanza.node)
            else:
                self.node.subscribe(self, stanza.node, stanza.instance_id)
        elif stanza.service == "config":
            self.config_subscriptions.discard(stanza.node)
        else:
            self.node.unsubscribe(self, stanza.node)

    def session_closed(self, reason: str) -> None:
        for call in (self._open_call, self._eor_call):
            if call is not None and call.active():
                call.cancel()
        self._open_call = self._eor_call = None
        if self.registered:
            self.registered = False
            # a lost connection is worth a warning; an agent that ended its stream
            # properly (it is stopping) is not
            (self._log.info if self.closed_cleanly else self._log.warn)(
                "agent {agent} disconnected{how}: {reason}", agent=self.peer_name,
                how=" cleanly" if self.closed_cleanly else "", reason=reason)
            self.node.unregister(self)

    # -- output -------------------------------------------------------------------------

    def mark_dirty(self, key: NodeKey, item_ids: Iterable[str]) -> None:
        dirty = self._dirty.get(key)
        if dirty is None:
            self._dirty[key] = set(item_ids)
        else:
            dirty.update(item_ids)

    def forget_instance(self, vrf: str) -> None:
        for key in [k for k in self._dirty if k[0] == vrf]:
            del self._dirty[key]
        for key in [k for k in self._sent if k[0] == vrf]:
            del self._sent[key]

    def flush(self) -> bool:
        """Send what changed; False if paused with work left (the node retries)."""
        if self.closing or not self.established:
            self._dirty.clear()
            return True
        node = self.node
        assert isinstance(node, ControlNode)
        to = f"{self.peer_name}/bgp-peer"
        while self._dirty:
            if self.paused:
                return False
            # EVPN before inet: an agent that gets a VM's MAC route first programs the
            # route and its bridge entry once, and the inet item then changes nothing.
            key = next(iter(self._dirty))
            if key[1] != AFI_L2VPN and len(self._dirty) > 1:
                key = min(self._dirty, key=_evpn_first)
            self._flush_key(node, key, to)
        if self.eor_pending:
            self._flush_eor(node, to)
        return True

    def _flush_key(self, node: ControlNode, key: NodeKey, to: str) -> None:
        """One message of up to MAX_ITEMS_PER_MESSAGE of ``key``'s dirty items (and the
        retractions among them)."""
        me = self.peer_name
        item_ids = self._dirty[key]
        vrf, afi, safi = key
        family = (afi, safi)
        sent = self._sent.setdefault(key, set())
        reach: list[str] = []
        retract: list[str] = []
        inst = node.instances.get(vrf)
        table = inst.routes.get(family, {}) if inst is not None else {}
        while item_ids and len(reach) < MAX_ITEMS_PER_MESSAGE:
            item_id = item_ids.pop()
            paths = table.get(item_id)
            path: _Path | None
            if not paths:
                path = None
            elif len(paths) == 1:  # one origin (the usual case): no best-path choice
                ((origin, path),) = paths.items()
                if origin == me:
                    path = None
            else:
                path = node.best_path(vrf, family, item_id, me)
            eid = _attr(item_id)
            if path is None:
                if item_id in sent:
                    sent.discard(item_id)
                    retract.append(f'<retract id="{eid}" />')
            else:
                sent.add(item_id)
                reach.append(f'<item id="{eid}">{path.xml}</item>')
        if not item_ids:
            del self._dirty[key]
        self._send_items(f"{afi}/{safi}/{vrf}", to, reach, retract)

    def _send_items(self, node_name: str, to: str, reach: list[str], retract: list[str]) -> None:
        head = (
            f'<message from="{CONTROL_NODE_JID}" to="{_attr(to)}">'
            f'<event xmlns="http://jabber.org/protocol/pubsub"><items node="{_attr(node_name)}">'
        )
        tail = "</items></event></message>"
        if reach:
            self.send((head + "".join(reach) + tail).encode())
        for i in range(0, len(retract), MAX_ITEMS_PER_MESSAGE):
            self.send((head + "".join(retract[i : i + MAX_ITEMS_PER_MESSAGE]) + tail).encode())

    def _flush_eor(self, node: ControlNode, to: str) -> None:
        """End-of-RIB once subscriptions have been quiet for EOR_QUIET (else: later)."""
        wait = self.last_subscribe + EOR_QUIET - self.clock.seconds()
        if wait > 0:
            if self._eor_call is None or not self._eor_call.active():
                self._eor_call = self.clock.callLater(wait, node.resumed, self)
            return
        self.eor_pending = False
        self.send(build_eor_message(CONTROL_NODE_JID, to))

def _evpn_first(key: NodeKey) -> bool:
    return key[1] != AFI_L2VPN


def _attr(value: str) -> str:
    if "&" in value or "<" in value or '"' in value or ">" in value:
        return (
            value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;")
        )
    return value


class ControlNodeFactory(Factory):
    """Builds a :class:`ControlSession` per accepted agent, all sharing one node."""

    def __init__(
        self,
        node: ControlNode,
        hold_time: float = DEFAULT_HOLD_TIME,
        tls: CertificateOptions | None = None,
        max_stanza: int = AGENT_MAX_STANZA,
    ) -> None:
        self.node = node
        self.hold_time = hold_time
        self.tls = tls
        self.max_stanza = max_stanza

    def buildProtocol(self, addr: IAddress | None) -> ControlSession:
        session = ControlSession(self.node, self.node.clock, self.hold_time, self.tls,
                                 self.max_stanza)
        session.factory = self
        return session


"""The agent's end of pkt0 as a Twisted service: socket, services, flow channel, aging.

It binds ``<run-dir>/agent_pkt0`` (the datapath sends its traps there and listens on
``dpdk_pkt0``), hands each trap to :class:`~vrtwist.agent.packet.services.PacketServices`,
announces the gateway to each VM when its port is programmed, writes flows over ksync
(its own session, as one more client of the datapath) or straight into an embedded
datapath, and ages the flows it created from the shared-memory statistics.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.application.internet import ClientService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from vrtwist.access import SocketAccess
from vrtwist.agent.dpstate import NH, VIF, DatapathModel
from vrtwist.agent.ksync_window import BUNCH
from vrtwist.agent.networks import dns_settings
from vrtwist.agent.packet.arp import FabricResolver, PathProber
from vrtwist.agent.packet.dns import DnsProxy, VmName
from vrtwist.agent.packet.flowaudit import FlowAdoption, vm_sources
from vrtwist.agent.packet.flowpolicy import FlowPolicy, LocalPort
from vrtwist.agent.packet.flows import FlowSetup, RouteView
from vrtwist.agent.packet.services import Announcer, PacketServices, VmPort
from vrtwist.agent.policy import PolicyConfig, gateway_set
from vrtwist.ksync.client import KsyncClientProtocol
from vrtwist.ksync.clientcore import KsyncError
from vrtwist.logfields import Logger
from vrtwist.pkt0.endpoints import AgentEndpoint
from vrtwist.pkt0.transport import AGENT_SOCKET, DATAPATH_SOCKET, UnixDatagramTransport
from vrtwist.sandesh import encode, schema
from vrtwist.sandesh.constants import FLOW_TABLE_GET

if TYPE_CHECKING:
    from vrtwist.agent.packet.dns import DnsSettings

__all__ = ["AgentPacketService", "KsyncFlowChannel", "LocalFlowChannel"]

#: how often the flows this agent created are checked for idleness
AGE_SCAN_INTERVAL = 1.0
#: how often the flow table is scanned for HOLD entries no setup is coming for
AUDIT_SCAN_INTERVAL = 2.5


def _answer(code: int, objects: Iterable[Any]) -> tuple[int, int, int]:
    fr = next((o for o in objects if type(o).__name__ == "vr_flow_response"), None)
    if fr is None:
        return code, -1, 0
    return code, int(fr.fresp_index), int(fr.fresp_gen_id)


class LocalFlowChannel:
    """FLOW_SET straight into an embedded datapath's flow table (same process, no socket,
    no Sandesh message: the table takes the request's fields as a mapping)."""

    def __init__(self, datapath: Any) -> None:
        handler = datapath.handlers.get("vr_flow_req") if hasattr(datapath, "handlers") else None
        self._flows = getattr(handler, "flows", None)
        self._datapath = datapath
        values = getattr(self._flows, "flow_set_pair_values", None)
        if values is not None:
            #: both flows of a pair from the two requests' values, ``flow_request``'s
            #: order (flow setup's hot path): (the reverse's index, its gen id, ...), or
            #: None when the table left the pair to two ``set_now`` calls
            self.set_pair_values: Callable[[tuple[int, ...], tuple[int, ...]],
                                           tuple[int, ...] | None] = values

    def __call__(self, fields: dict[str, int]) -> Deferred[tuple[int, int, int]]:
        return succeed(self.set_now(fields))

    def set_now(self, fields: dict[str, int]) -> tuple[int, int, int]:
        """The datapath's answer at once: flow setup uses this and skips the Deferred."""
        if self._flows is not None:
            r = self._flows.flow_set(fields)
            return r.errno, r.index, r.gen_id
        reply = self._datapath.handle(schema.vr_flow_req(**fields))
        return _answer(int(reply[0][0].resp_code), (o for m in reply for o in m))

    def set_pair_now(self, rev: dict[str, int], fwd: dict[str, int]) -> tuple[int, int] | None:
        """Both flows of a pair in one call (the table's ``flow_set_pair``): the reverse's
        (index, gen), or None when the table left the pair to two ``set_now`` calls."""
        pair = getattr(self._flows, "flow_set_pair", None)
        if pair is None:
            return None
        done = pair(rev, fwd)
        if done is None:
            return None
        return done[0].index, done[0].gen_id


class KsyncFlowChannel:
    """FLOW_SET over the agent's own ksync session to ``<run-dir>/dpdk_netlink``.

    Reconnects with back-off; while the datapath is away a request fails at once with
    ``-ENOTCONN`` (the datapath keeps the HOLD entry and traps again later).  A session
    the datapath closes as idle (600 s without a request) is replaced the same way.

    Requests made in one turn of the reactor (the traps of one pkt0 read, the forward
    flows of one batch of answers) leave together at the end of it, up to ``BUNCH`` per
    netlink message, as the real agent bunches its FLOW_SETs.
    """

    _log = Logger()

    def __init__(self, reactor: Any, run_dir: str) -> None:
        endpoint = UNIXClientEndpoint(reactor, os.path.join(run_dir, "dpdk_netlink"))
        factory = Factory.forProtocol(lambda: KsyncClientProtocol(pid=os.getpid()))
        self.service = ClientService(endpoint, factory, clock=reactor,
                                     prepareConnection=self._connected)
        self._client: KsyncClientProtocol | None = None
        self._reactor = reactor
        #: requests of this turn, sent by ``_flush``; bounded by the flow setup's own
        #: limit of setups in flight
        self._queue: list[tuple[dict[str, int], Deferred[tuple[int, int, int]]]] = []
        self._flush_call: Any = None

    def _connected(self, client: Any) -> None:
        """Each new session (the service reconnects by itself after the datapath closed
        one) becomes the channel's, and asks for the flow table's description, as the
        agent does when it maps the table. That is also the session's first frame, which
        the datapath wants within 10 s of connecting: an agent with no flow to set up
        would otherwise be disconnected again and again."""
        self._client = client
        request = schema.vr_flow_table_data(ftable_op=FLOW_TABLE_GET)
        client.request(request).addErrback(self._probe_failed)

    def _probe_failed(self, f: Failure) -> None:
        """A refusal is worth a warning; a session closed under the query (the agent or
        the datapath stopping) is not: the next FLOW_SET takes a new one."""
        if isinstance(f.value, KsyncError):
            self._log.warn("ksync flow table query refused: {e}", e=f.value)

    def __call__(self, fields: dict[str, int]) -> Deferred[tuple[int, int, int]]:
        client = self._client
        if client is None or client.closed:
            return succeed((-errno.ENOTCONN, -1, 0))  # until the service reconnects
        # fired by the client with the answer itself (no callback of the channel's own)
        d: Deferred[tuple[int, int, int]] = Deferred()
        self._queue.append((fields, d))
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        """Send this turn's requests, ``BUNCH`` per netlink message."""
        self._flush_call = None
        queue, self._queue = self._queue, []
        client = self._client
        if client is None or client.closed:
            _not_sent(queue)
            return
        for start in range(0, len(queue), BUNCH):
            chunk = queue[start : start + BUNCH]
            client.request_flow_sets([encode_flow_request(f) for f, _ in chunk],
                                     [d for _, d in chunk])

    def stop(self) -> None:
        """Answer what is still queued as not sent (the channel is going away)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        queue, self._queue = self._queue, []
        _not_sent(queue)


def _not_sent(queue: list[tuple[dict[str, int], Deferred[tuple[int, int, int]]]]) -> None:
    """Requests still queued when the session went away or the channel stopped."""
    for _, d in queue:
        d.callback((-errno.ENOTCONN, -1, 0))


#: the fields ``flow_request`` sets, the only ones the agent's FLOW_SETs carry
_FLOW_FIELDS = (
    "fr_op", "fr_index", "fr_gen_id", "fr_action", "fr_flags", "fr_ecmp_nh_index",
    "fr_family", "fr_flow_proto", "fr_flow_sport", "fr_flow_dport", "fr_flow_nh_id",
    "fr_flow_sip_l", "fr_flow_dip_l", "fr_flow_vrf", "fr_src_nh_index", "fr_rindex",
    "fr_drop_reason",
)  # fmt: skip
_WIDTH_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _flow_req_encoder() -> Callable[[dict[str, int]], bytes] | None:
    """``fields -> bytes`` of the ``vr_flow_req`` with those of ``_FLOW_FIELDS`` set and
    the others zero, byte for byte what the Sandesh encoder writes, in one ``struct``
    pack: the codec's layout (each field's place and width) is read from its own output
    here and checked against it; None when it does not fit (the codec then encodes)."""
    blank = encode(schema.vr_flow_req())
    places: list[tuple[int, int, str]] = []
    for name in _FLOW_FIELDS:
        marked = encode(schema.vr_flow_req(**{name: -1}))
        diff = [i for i in range(min(len(blank), len(marked))) if blank[i] != marked[i]]
        if len(marked) != len(blank) or len(diff) not in _WIDTH_CODES or (
            diff != list(range(diff[0], diff[0] + len(diff)))
        ):
            return None
        places.append((diff[0], len(diff), name))
    places.sort()
    fmt, args, at = ">", [], 0
    for offset, width, name in places:
        if offset < at:
            return None
        if offset > at:
            fmt += "%ds" % (offset - at)
            args.append(repr(blank[at:offset]))
        fmt += _WIDTH_CODES[width]
        args.append("f[%r] & %#x" % (name, (1 << (8 * width)) - 1))
        at = offset + width
    source = "def enc(f):\n    return _pack(%s) + _tail\n" % ", ".join(args)
    namespace: dict[str, Any] = {"_pack": struct.Struct(fmt).pack, "_tail": blank[at:]}
    exec(source, namespace)  # generated from the codec's output, as the codec's own are
    enc: Callable[[dict[str, int]], bytes] = namespace["enc"]
    # a check with a value in every field (and the agent's -1 and all-ones ones)
    sample = {name: (0x5A3C1E0F2D4B6987 >> (8 * (i % 4))) & ((1 << (8 * width - 1)) - 1)
              for i, (_, width, name) in enumerate(places)}  # fmt: skip
    sample["fr_index"] = sample["fr_rindex"] = -1
    sample["fr_ecmp_nh_index"] = 0xFFFFFFFF
    try:
        same = enc(sample) == encode(schema.vr_flow_req(**sample))
    except (struct.error, ValueError):
        return None
    return enc if same else None


_ENCODE_FLOW_REQ = _flow_req_encoder()


def encode_flow_request(fields: dict[str, int]) -> bytes | Any:
    """The agent's FLOW_SET ready for the ksync client: encoded at once when it carries
    only ``flow_request``'s fields (one pack), else the Sandesh object."""
    if _ENCODE_FLOW_REQ is not None and len(fields) == len(_FLOW_FIELDS):
        try:
            return _ENCODE_FLOW_REQ(fields)
        except KeyError:
            pass
    return schema.vr_flow_req(**fields)


class AgentPacketService(MultiService):
    """pkt0, the packet services and flow aging for one agent."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        run_dir: str,
        model: DatapathModel,
        *,
        local_datapath: Any = None,
        vhost_mac: Callable[[], bytes] | None = None,
        flow_age: float | None = None,
        access: SocketAccess | None = None,
        policy: PolicyConfig | None = None,
        dns_method: str = "default-dns-server",
        dns_upstream: list[tuple[str, int]] | None = None,
        network_settings: Callable[[str], Any] | None = None,
    ) -> None:
        super().__init__()
        #: vn-id -> the network's settings (``vrtwist.agent.networks.NetworkSettings``:
        #: DNS method, tenant servers, virtual DNS), None: ``dns_method`` everywhere
        self.network_settings = network_settings
        self.reactor = reactor
        self.run_dir = run_dir
        self.model = model
        self.endpoint = AgentEndpoint()
        self.transport = UnixDatagramTransport(
            reactor,
            os.path.join(run_dir, AGENT_SOCKET),
            os.path.join(run_dir, DATAPATH_SOCKET),
            self.endpoint,
            access=access,
        )
        self.endpoint.transport = self.transport
        self._ksync: KsyncFlowChannel | None = None
        if local_datapath is not None:
            channel: Any = LocalFlowChannel(local_datapath)
        else:
            ksync = self._ksync = KsyncFlowChannel(reactor, run_dir)
            ksync.service.setServiceParent(self)
            channel = ksync
        self.routes = RouteView(model.desired)
        self.flows = FlowSetup(self.routes, channel, reactor.seconds)
        if flow_age is not None:
            self.flows.age = flow_age
        self.policy = policy if policy is not None else PolicyConfig()
        self.flows.policy = FlowPolicy(self.policy, self._local_port, self._network_of,
                                       model.mirror_index)
        self.policy.listeners.append(self._policy_changed)
        self._set_mirrors()
        #: the flows a previous agent left (external datapath): adopted or deleted
        self.adoption = FlowAdoption(self.flows, self._vm_sources)
        mac = vhost_mac or (lambda: bytes(model.desired[(VIF, model.fabric_vif)][1]["vifr_mac"]))
        self.flows.fabric = self._fabric_address
        self.resolver = FabricResolver(reactor, self._send_fabric, self._fabric_source,
                                       model.set_fabric_mac)
        self.prober = PathProber(reactor, self.endpoint.send_switch)
        self.dns = DnsProxy(self._vm_names, None, dns_method, settings_of=self._dns_settings,
                            resolver_for=self._resolver_for)
        self._dns_upstream = dns_upstream
        self.packet_services = PacketServices(self.vm_port, self.endpoint.send_switch, mac,
                                              self.flows, fabric_arp=self._fabric_arp,
                                              vm_arp=self.prober.received, dns=self.dns)
        self.endpoint.handler = self.packet_services
        self.announcer = Announcer(reactor, self.endpoint.send_switch)
        self._aging = LoopingCall(self._age)
        self._aging.clock = reactor
        self._audit = LoopingCall(self._audit_holds)
        self._audit.clock = reactor
        self._view: Any = None
        model.listeners.append(self._changed)

    def vm_port(self, vif: int) -> VmPort | None:
        found = self.model.port_on_vif(vif)
        if found is None:
            return None
        port, vrf = found
        dns = self._network_dns(port.vn_id)
        return VmPort(
            vif, vrf, bytes.fromhex(port.mac_address.replace(":", "")), port.ip_address,
            port.plen, port.gateway, port.dns_server, port.display_name, port.tx_vlan_id,
            ip6=port.ip6_address,
            dns_servers=tuple(a for a, _ in dns.servers)
            if dns.method == "tenant-dns-server" else None,
            domain=dns.domain if dns.method == "virtual-dns-server" else "",
            ip6_plen=port.ip6_plen, ip6_gateway=port.ip6_gateway,
            ip6_dns_server=port.ip6_dns_server,
        )  # fmt: skip

    def _network_dns(self, vn_id: str) -> DnsSettings:
        """The DNS settings of network ``vn_id`` (the agent's method when it sets none)."""
        found = self.network_settings(vn_id) if self.network_settings is not None else None
        return dns_settings(found, self.dns.method)

    def _dns_settings(self, vrf: int) -> DnsSettings | None:
        """The DNS settings of the network behind ``vrf`` (its ports name it)."""
        ports = self.model.ports_in_vrf(vrf)
        return self._network_dns(ports[0].vn_id) if ports else None

    def _resolver_for(self, servers: tuple[tuple[str, int], ...]) -> Any:
        return _upstream(self.reactor, list(servers))

    def _vm_names(self, vrf: int) -> list[VmName]:
        """The VMs of the network behind ``vrf``, for the DNS answers."""
        return [VmName(p.display_name, p.ip_address, p.ip6_address)
                for p in self.model.ports_in_vrf(vrf)]

    def _local_port(self, vif: int) -> LocalPort | None:
        found = self.model.port_on_vif(vif)
        if found is None:
            return None
        port = found[0]
        return port.id, port.vn_id, gateway_set((port.gateway, port.dns_server))

    def _network_of(self, vrf: int) -> str | None:
        for vn in self.policy.networks():
            if self.model.vrf_id_of(vn) == vrf:
                return vn
        return None

    def _vm_sources(self) -> dict[tuple[int, bytes], int]:
        return vm_sources(self.model.desired)

    def routes_settled(self) -> None:
        """The routes are all back (the controller's End-of-RIB or stale time, or no
        controller): flows of a previous agent that still match nothing can go."""
        self.adoption.settled = True

    def _set_mirrors(self) -> None:
        """A mirror entry in the datapath for each analyzer the policies name."""
        self.model.set_mirrors({name: (a.ip, a.port) for name, a in
                                self.policy.analyzers().items() if a.ip is not None})

    def _policy_changed(self) -> None:
        """A policy or a port's security groups changed: flows set up before are
        re-evaluated and re-written where their action changed (and the analyzers the
        policies name get their mirror entries first)."""
        self._set_mirrors()
        self.flows.revaluate()

    def _send_fabric(self, frame: bytes) -> bool:
        return bool(self.endpoint.send_switch(self.model.fabric_vif, 0, frame))

    def _fabric_source(self) -> tuple[bytes, bytes]:
        return self.model.fabric_mac(), ipaddress.IPv4Address(self.model.fabric_ip).packed

    def _fabric_address(self) -> tuple[int, bytes] | None:
        if self.model.fabric_ip in ("", "0.0.0.0"):
            return None
        return self.model.fabric_vif, ipaddress.IPv4Address(self.model.fabric_ip).packed

    def _fabric_arp(self, ifindex: int, frame: memoryview) -> None:
        if ifindex == self.model.fabric_vif:
            self.resolver.received(frame)

    def _changed(self, keys: Iterable[Any]) -> None:
        keys = list(keys)
        self.routes.changed(keys)
        if not self.running:
            return
        if any(key[0] == NH for key in keys):
            self.resolver.wanted(self.model.tunnel_destinations())
        for key in keys:
            if key[0] != VIF:
                continue
            if key in self.model.desired:
                port = self.vm_port(key[1])
                if port is not None:
                    self.announcer.port_up(port)
                    self.prober.port_up(port.vif, port.vrf, port.mac, port.ip,
                                        port.dns_server, port.tx_vlan)
            else:
                self.announcer.port_down(key[1])
                self.prober.port_down(key[1])

    def startService(self) -> None:
        super().startService()
        try:
            self.transport.start()
        except OSError as e:
            self._log.error("pkt0: cannot bind {path}: {e}", path=self.transport.local_path, e=e)
            raise
        # the host's resolvers (or --dns-upstream): default-dns-server networks, and
        # virtual DNS servers that name no next server
        self.dns.upstream = _upstream(self.reactor, self._dns_upstream)
        self._aging.start(AGE_SCAN_INTERVAL, now=False)
        self._flow_view()  # mapped now, not in the middle of traffic (when it exists)
        self._audit.start(AUDIT_SCAN_INTERVAL, now=False)
        self.resolver.wanted(self.model.tunnel_destinations())

    def _age(self) -> None:
        if not self.flows.pairs:
            return
        view = self._flow_view()
        if view is None:
            return
        self.flows.age_pass(view.get)

    def _flow_view(self) -> Any:
        if self._view is None:
            from vrtwist.shmem.listing import FlowTableView

            try:
                self._view = FlowTableView(os.path.join(self.run_dir, "flow.shmem"))
            except OSError:
                return None
        return self._view

    def _audit_holds(self) -> None:
        view = self._flow_view()
        if view is None:
            return
        self.flows.audit_pass(held_indices(view.map), view.get)
        if not self.adoption.finished:
            self.adoption.adopt_pass(view.active_indices(), view.get)

    def stopService(self) -> Deferred[None]:
        if self._aging.running:
            self._aging.stop()
        if self._audit.running:
            self._audit.stop()
        self.announcer.stop()
        self.prober.stop()
        self.resolver.stop()
        self.transport.stop()
        if self._ksync is not None:
            self._ksync.stop()
        if self._view is not None:
            self._view.close()
            self._view = None
        return super().stopService()  # type: ignore[no-any-return]


def _upstream(reactor: Any, servers: list[tuple[str, int]] | None,
              resolv_conf: str = "/etc/resolv.conf") -> Any:
    """The resolver queries are forwarded to: the given servers, else the host's
    (read from ``resolv.conf`` when the agent starts; 127.0.0.1 when it names none)."""
    from twisted.names import client

    if not servers:
        servers = []
        try:
            with open(resolv_conf, encoding="utf-8", errors="replace") as f:
                for line in f:
                    words = line.split()
                    if len(words) >= 2 and words[0] == "nameserver":
                        servers.append((words[1], 53))
        except OSError:
            pass
        servers = servers or [("127.0.0.1", 53)]
    return client.Resolver(servers=servers, reactor=reactor)


def held_indices(table: Any) -> list[int]:
    """Indices of the active HOLD entries of a flow table mapping, from two strided reads
    (flags and action columns), without decoding any entry."""
    from vrtwist.shmem import layout as L

    mv = memoryview(table)
    try:
        n = len(mv) // L.FLOW_ENTRY_SIZE
        words = mv[: n * L.FLOW_ENTRY_SIZE].cast("H")
        try:
            step = L.FLOW_ENTRY_SIZE // 2
            flags = words[L.OFF_FE_FLAGS // 2 :: step].tolist()
            actions = words[L.OFF_FE_ACTION // 2 :: step].tolist()
        finally:
            words.release()
    finally:
        mv.release()
    return [i for i, (f, a) in enumerate(zip(flags, actions, strict=True))
            if f & L.FLAG_ACTIVE and a == L.ACTION_HOLD]

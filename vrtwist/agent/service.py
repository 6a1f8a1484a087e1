"""The agent as a Twisted service: port table, REST API, datapath sync, controller link.

Start-up order matters: the port files are replayed before the REST endpoint listens (the
real agent opens 9091 only at ``InitDone``), and the datapath synchroniser first reads the
datapath (``--datapath=external``) so replayed ports keep the ids they already have.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThreadPool
from twisted.web.server import Site

from vrtwist._process import report_start_failure
from vrtwist.access import SocketAccess
from vrtwist.agent.dpstate import (
    INTF_ATTACHED,
    INTF_WAITING,
    DatapathModel,
    host_if_index,
    host_if_mac,
)
from vrtwist.agent.introspect import RequestCounter
from vrtwist.agent.ksync_sync import KsyncSynchroniser, LocalSynchroniser
from vrtwist.agent.model import Port
from vrtwist.agent.networks import (
    MAX_NETWORKS,
    NetworkConfig,
    NetworkSettings,
    NetworkValidationError,
    merge_settings,
    settings_from_config,
)
from vrtwist.agent.packet.service import AgentPacketService
from vrtwist.agent.policy import PolicyConfig, PolicyValidationError
from vrtwist.agent.ports import DEFAULT_STALE_TIMEOUT, PortTable
from vrtwist.agent.rest import BoundedRequest, PortApi
from vrtwist.agent.store import PolicyFile, PortStore
from vrtwist.bounds import bounded_site
from vrtwist.introspect.listen import enabled as introspect_enabled
from vrtwist.introspect.listen import listen_introspect
from vrtwist.logfields import Logger
from vrtwist.unixlisten import listen_endpoint
from vrtwist.xmpp.agent_link import makeControllerLink
from vrtwist.xmpp.interfaces import IRouteProgrammer


class AgentService(MultiService):
    """The vRouter agent: owns the port table and wires REST, ksync and XMPP to it."""

    _log = Logger()

    def __init__(self, reactor: Any, *, run_dir: str, state_dir: str, rest: str,
                 datapath: str = "embedded", tap_check: bool = True,
                 stale_timeout: float = DEFAULT_STALE_TIMEOUT, fabric_ip: str = "0.0.0.0",
                 hostname: str = "", controllers: list[str] | None = None,
                 fabric: str | None = None, local_datapath: Any = None,
                 link_kwargs: dict[str, Any] | None = None,
                 access: SocketAccess | None = None, introspect: str | None = None,
                 introspect_datapath: Any = None, introspect_pkt0: Any = None,
                 dns_method: str = "default-dns-server",
                 dns_upstream: list[tuple[str, int]] | None = None) -> None:
        super().__init__()
        #: the IPAM DNS method and the servers queries are forwarded to (None: the host's)
        self.dns_method = dns_method
        self.dns_upstream = dns_upstream
        self.reactor = reactor
        self.run_dir = run_dir
        self.state_dir = state_dir
        self.rest_description = rest
        #: who may use a unix REST socket (``unix:`` in ``rest``): owner, or with a group
        self.access = access
        self.datapath = datapath
        self.tap_check = tap_check
        self.stale_timeout = stale_timeout
        self.fabric_ip = fabric_ip
        self.hostname = hostname
        self.controllers = controllers or []
        self.local_datapath = local_datapath
        self.link_kwargs = link_kwargs or {}
        self.model = DatapathModel(fabric_ip=fabric_ip, fabric_name=fabric or "fabric0",
                                   os_index=host_if_index, if_mac=host_if_mac)
        # with VXLAN among the encapsulations, every port's label is also its VNI
        self.model.vxlan = "vxlan" in self.link_kwargs.get("encapsulations", ())
        self.table: PortTable | None = None
        self.api: PortApi | None = None
        self.sync: Any = None
        self.link: Any = None
        self.rest_port: IListeningPort | None = None
        self.packets: AgentPacketService | None = None
        self._routes_settled = False
        #: security groups and network policies, set over REST, kept in the state dir
        self.policy = PolicyConfig()
        #: the networks' DNS settings and VNIs set over REST, kept in the state dir
        self.networks = NetworkConfig()
        self.model.vni_source = lambda vn_id: self.network_settings(vn_id).vni
        self.networks.listeners.append(self._networks_changed)
        #: vn-id -> merged settings; cleared when REST or the controller's config changes
        #: (DHCP and DNS ask per packet, the config lookup scans its objects)
        self._settings: dict[str, NetworkSettings] = {}
        self.ready: Deferred[None] = Deferred()
        self._release_timer: Any = None
        #: ``--introspect`` endpoint (None/"none": off) and the datapath whose live
        #: counters it shows (the embedded one)
        self.introspect_description = introspect
        self.introspect_datapath = introspect_datapath if introspect_datapath is not None \
            else local_datapath
        self.introspect_pkt0 = introspect_pkt0
        self.introspect_port: IListeningPort | None = None
        self.introspect_app: Any = None
        #: REST requests answered per endpoint, method and status (for the metrics)
        self.rest_counter = RequestCounter()

    def startService(self) -> None:
        super().startService()
        d = ensureDeferred(self._start())

        def failed(f: Any) -> None:
            # under twistd: one line and the process ends (vrtwist._process); otherwise
            # (a test, a library user) the whole failure is logged
            if not report_start_failure(self, f):
                self._log.failure("agent start-up failed", f)
            if not self.ready.called:
                self.ready.errback(f)
        d.addErrback(failed)

    def _load_policy(self, policy_file: PolicyFile) -> None:
        loaded = policy_file.load()
        if loaded is None:
            return
        try:
            if loaded.error is not None:
                raise PolicyValidationError([loaded.error])
            self.policy.load_json(loaded.body)
        except PolicyValidationError as e:
            # as a bad port file: the agent starts (with no policy) and says why
            self._log.error("{path}: unusable, no policy loaded: {e}", path=str(loaded.path),
                            e=str(e))

    def _networks_changed(self) -> None:
        self._settings.clear()
        self.model.refresh_vnis()

    def network_settings(self, vn_id: str) -> NetworkSettings:
        """Network ``vn_id``'s settings: REST's, then the controller's config, field by
        field (unset: the agent's defaults)."""
        found = self._settings.get(vn_id)
        if found is None:
            if len(self._settings) >= 4 * MAX_NETWORKS:
                self._settings.clear()
            found = self._settings[vn_id] = self._network_settings(vn_id)
        return found

    def _network_settings(self, vn_id: str) -> NetworkSettings:
        config = getattr(self.link, "config", None)
        from_config = None
        if config is not None:
            vn = config.network_by_uuid(vn_id)
            if vn is not None:
                from_config, problems = settings_from_config(vn_id, config.network_settings(vn))
                for problem in problems:
                    self._log.warn("config of network {vn}: {problem} (ignored)", vn=vn,
                                   problem=problem)
        return merge_settings(self.networks.get(vn_id), from_config, vn_id)

    def _load_networks(self, networks_file: PolicyFile) -> None:
        loaded = networks_file.load()
        if loaded is None:
            return
        try:
            if loaded.error is not None:
                raise NetworkValidationError([loaded.error])
            self.networks.load_json(loaded.body)
        except NetworkValidationError as e:
            self._log.error("{path}: unusable, no network settings loaded: {e}",
                            path=str(loaded.path), e=str(e))

    async def _start(self) -> None:
        state_dir = _usable_state_dir(self.state_dir, self.run_dir)
        store = PortStore(state_dir)
        policy_file = PolicyFile(state_dir)
        self._load_policy(policy_file)
        networks_file = PolicyFile(state_dir, "networks.json")
        self._load_networks(networks_file)
        pool = self.reactor.getThreadPool()

        def run_io(f: Any, *args: Any) -> Deferred[Any]:
            return deferToThreadPool(self.reactor, pool, f, *args)
        table = PortTable(store, self.reactor, tap_check=self.tap_check,
                          stale_timeout=self.stale_timeout, run_io=run_io)
        self.table = table
        if self.controllers:
            self._attach_controller()
            if self.link is not None:
                self.link.hold_end_of_rib()  # until the port files are replayed
        sync = self._make_sync()
        if sync is not None:
            self.sync = sync
            await sync.prepare()  # external datapath: dump, adopt ids
            self._release_learnt_when_synced(sync.sync)
        self.packets = AgentPacketService(self.reactor, self.run_dir, self.model,
                                          local_datapath=self.local_datapath,
                                          access=self.access, policy=self.policy,
                                          dns_method=self.dns_method,
                                          dns_upstream=self.dns_upstream,
                                          network_settings=self.network_settings)
        self.packets.setServiceParent(self)
        table.observe(self.model)
        added, skipped = table.replay()
        self._log.info("replayed {added} port(s) from {dir}, skipped {skipped}",
                       added=added, dir=str(store.ports_dir), skipped=len(skipped))
        if self.link is not None:
            self.link.local_routes_ready()
        if sync is None or self._routes_settled:
            self.packets.routes_settled()  # the ports are replayed: their routes are all
        if sync is not None:
            sync.start()
        self.api = PortApi(table, self._programmed if sync is not None else None,
                           gateways=self.model, attachment=self._attached,
                           policy=self.policy, save_policy=policy_file.save,
                           networks=self.networks, save_networks=networks_file.save)
        endpoint = listen_endpoint(self.reactor, self.rest_description, self.access)
        site = Site(self.api.app.resource(), requestFactory=BoundedRequest)
        site.noisy = False
        site.log = self.rest_counter  # type: ignore[method-assign]  # counts, no access log
        self.rest_port = await endpoint.listen(bounded_site(site, self.reactor, "rest"))
        self._log.info("REST port API listening on {addr}", addr=self.rest_port.getHost())
        await self._start_introspect()
        self.ready.callback(None)

    def _attached(self, port: Port) -> Deferred[bool] | bool:
        """The datapath's word on the port's vif (attached or waiting for its device); the
        OS's when the datapath does not say (a real vRouter, or none connected)."""
        ids = self.model.port_ids(port.id)
        table = self.table
        assert table is not None
        if ids is None or self.sync is None:
            return table.device_exists(port.system_name)
        d: Deferred[int | None] = self.sync.sync.interface_status(ids["vif"])

        def decide(status: int | None) -> bool:
            if status in (INTF_ATTACHED, INTF_WAITING):
                return status == INTF_ATTACHED
            return table.device_exists(port.system_name)
        return d.addCallback(decide)

    def _release_learnt_when_synced(self, dsync: Any) -> None:
        """Routes the previous agent learnt stay in the datapath (traffic to other nodes
        keeps flowing) until the controller has sent them again: End-of-RIB, or the
        stale time without one; with no controller, at once."""
        def settled() -> None:
            dsync.release_learnt()
            self._routes_settled = True
            if self.packets is not None:
                self.packets.routes_settled()

        if self.link is None or not dsync.retained:
            settled()
            return
        timer = self.reactor.callLater(self.link.stale_time, settled)
        self._release_timer = timer

        def synced() -> None:
            if timer.active():
                timer.cancel()
            settled()
        self.link.on_routes_synced.append(synced)

    async def _start_introspect(self) -> None:
        if not introspect_enabled(self.introspect_description):
            return
        from vrtwist.agent.introspect import make_agent_app

        assert self.introspect_description is not None
        self.introspect_app = make_agent_app(self, self.introspect_datapath,
                                             self.introspect_pkt0)
        try:
            self.introspect_port = await listen_introspect(
                self.reactor, self.introspect_description, self.introspect_app.resource(),
                self.access)
        except Exception as e:  # noqa: BLE001 - observability must not keep the node from working
            self._log.error("introspect: cannot listen on {ep}: {e}",
                            ep=self.introspect_description, e=e)
            return
        self._log.info("introspect listening on {addr}", addr=self.introspect_port.getHost())

    def _programmed(self) -> Deferred[None]:
        """The datapath has what was changed so far, or PROGRAM_WAIT seconds passed (the
        datapath may be away: the port is persisted and will be programmed later)."""
        d: Deferred[None] = self.sync.sync.when_flushed()
        if d.called:
            return d
        out: Deferred[None] = Deferred()

        def fire(_: object = None) -> None:
            if not out.called:
                out.callback(None)
        timer = self.reactor.callLater(PROGRAM_WAIT, fire)

        def fired(_: object) -> None:
            if timer.active():
                timer.cancel()
            fire()
        d.addBoth(fired)
        return out

    def _make_sync(self) -> Any:
        if self.local_datapath is not None:
            self._log.info("programming the embedded datapath in-process")
            return LocalSynchroniser(self.model, self.local_datapath,
                                     adopt=self.datapath == "external")
        sock = os.path.join(self.run_dir, "dpdk_netlink").replace("\\", "\\\\")
        sock = sock.replace(":", "\\:")
        return KsyncSynchroniser(self.reactor, self.model, f"unix:{sock}",
                                 adopt=self.datapath == "external")

    def _attach_controller(self) -> None:
        if self.fabric_ip in ("", "0.0.0.0"):
            self._log.warn("--controller without --fabric-ip: routes are published with next "
                           "hop 0.0.0.0 and the datapath refuses tunnels from it (EINVAL)")
        routes: IRouteProgrammer = self.model
        link = makeControllerLink(self.reactor, self.controllers, self.hostname,
                                  self.fabric_ip, routes, **self.link_kwargs)
        self.model.controller = link
        if hasattr(link, "host_mac"):
            link.host_mac = self.model.host_mac()
        config = getattr(link, "config", None)
        if config is not None:
            # from the config channel: IPAM subnets for ports without plen, and the VM
            # interface (instance IPs, MAC) for ports whose REST data lacks them
            def subnets(vn_id: str) -> list[dict[str, Any]]:
                vn = config.network_by_uuid(vn_id)
                return list(config.subnets_of(vn)) if vn else []
            self.model.subnet_source = subnets
            self.model.interface_source = config.interface
            def changed(_update: Any) -> None:
                self._settings.clear()
                self.model.refresh_config()
            config.listeners.append(changed)
        link.setServiceParent(self)
        self.link = link

    async def _stop(self) -> None:
        if self._release_timer is not None and self._release_timer.active():
            self._release_timer.cancel()
        if self.introspect_port is not None:
            stopping = self.introspect_port.stopListening()
            if stopping is not None:
                await stopping
        if self.rest_port is not None:
            stopping = self.rest_port.stopListening()
            if stopping is not None:
                await stopping
        if self.table is not None:
            self.table.stop()
        if self.sync is not None:
            await self.sync.stop()

    def stopService(self) -> Deferred[None]:
        stopping = getattr(self.sync, "stopping", None)
        if stopping is not None:  # before the embedded datapath closes its end
            stopping()
        d1 = ensureDeferred(self._stop())
        d1.addBoth(lambda _: super(AgentService, self).stopService())
        return d1


def _usable_state_dir(state_dir: str, run_dir: str) -> str:
    """``state_dir``, or ``<run-dir>/state`` when the default cannot be created (non-root)."""
    try:
        Path(state_dir, "ports").mkdir(parents=True, exist_ok=True)
        return state_dir
    except PermissionError:
        if state_dir != DEFAULT_STATE_DIR:
            raise
        fallback = os.path.join(run_dir, "state")
        AgentService._log.warn("cannot create {dir}; keeping port files in {fallback}",
                               dir=state_dir, fallback=fallback)
        return fallback


DEFAULT_STATE_DIR = "/var/lib/contrail"
#: Longest a REST request waits for the datapath to take its change.
PROGRAM_WAIT = 2.0

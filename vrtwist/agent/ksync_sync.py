"""The agent's ksync synchroniser: desired datapath state in, ksync requests out.

:class:`DatapathSync` keeps what it believes the datapath holds (``applied``) next to the
model's ``desired`` objects and sends the difference, in dependency order: deletes of
routes, labels, next hops, interfaces first, then adds of interfaces, next hops, labels,
routes.  The datapath answers the requests of one session in order, so they are
pipelined (a window of outstanding requests) instead of waited for one by one.

At start with ``--datapath=external`` it first dumps the datapath (interfaces, next hops,
labels, inet/inet6/bridge routes of every VRF in use), lets the model adopt the ids a TAP
already has, and afterwards adds only what is missing or different and deletes only what
is stale - never flows, never objects outside the agent's id ranges.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.agent.dpstate import (
    AGENT_VIF,
    FIRST_LABEL,
    FIRST_VM_VIF,
    MPLS,
    NH,
    RANK,
    ROUTE,
    VIF,
    VXLAN,
    Adopted,
    DatapathModel,
    Key,
)
from vrtwist.agent.interfaces import IKsyncBunchChannel, IKsyncChannel
from vrtwist.datapath import constants as C
from vrtwist.ksync.client import KsyncClientProtocol, KsyncConnectionLost
from vrtwist.ksync.client import KsyncError as ClientKsyncError
from vrtwist.ksync.clientcore import DumpPager, KsyncProtocolError, KsyncResponse
from vrtwist.logfields import Logger
from vrtwist.sandesh import SPECS_BY_NAME, schema

#: Fields compared to decide whether a dumped object still matches the desired one.
COMPARED = {
    "vr_interface_req": ("vifr_type", "vifr_name", "vifr_vrf", "vifr_mac", "vifr_nh_id",
                         "vifr_ip", "vifr_transport"),
    "vr_nexthop_req": ("nhr_type", "nhr_family", "nhr_vrf", "nhr_encap_oif_id", "nhr_encap",
                       "nhr_tun_dip"),
    "vr_mpls_req": ("mr_nhid",),
    "vr_vxlan_req": ("vxlanr_nhid",),
    "vr_route_req": ("rtr_nh_id", "rtr_label"),
}
_KEY_FIELD = {"vr_interface_req": "vifr_idx", "vr_nexthop_req": "nhr_id",
              "vr_mpls_req": "mr_label", "vr_vxlan_req": "vxlanr_vnid", "vr_route_req": None}
_OP_FIELD = "h_op"


class DatapathRequestError(Exception):
    """The datapath refused a request; ``code`` is the negative errno of ``vr_response``."""

    def __init__(self, code: int, what: str) -> None:
        name = errno.errorcode.get(-code, str(code)) if code < 0 else str(code)
        super().__init__(f"{what}: vRouter answered {name} ({code}): "
                         f"{os.strerror(-code) if code < 0 else ''}")
        self.code = code


def make(name: str, fields: dict[str, Any]) -> Any:
    """A Sandesh request object of ``name`` from a dict of its fields."""
    spec = SPECS_BY_NAME[name]
    return spec.cls(**{k: (list(v) if isinstance(v, (bytes, bytearray)) else v)
                       for k, v in fields.items()})


def _norm(v: Any) -> Any:
    if isinstance(v, (list, bytes, bytearray)):
        return bytes(x & 0xFF for x in v)
    return v


def matches(name: str, want: dict[str, Any], have: dict[str, Any]) -> bool:
    """True when ``have`` (from the datapath) agrees with ``want`` on the compared fields."""
    for f in COMPARED[name]:
        if f == "rtr_label" and not int(want.get("rtr_label_flags", 0)) & (
                C.VR_RT_LABEL_VALID_FLAG if want.get("rtr_family") != C.AF_BRIDGE
                else C.VR_BE_LABEL_VALID_FLAG):
            continue  # no valid label: the datapath stores its "invalid label" value
        if f in want and _norm(want[f]) != _norm(have.get(f, 0)):
            return False
    return True


def key_of(name: str, obj: Any) -> Key:
    """The desired-state key of an object read from the datapath."""
    if name == "vr_interface_req":
        return (VIF, int(obj.vifr_idx))
    if name == "vr_nexthop_req":
        return (NH, int(obj.nhr_id))
    if name == "vr_mpls_req":
        return (MPLS, int(obj.mr_label))
    if name == "vr_vxlan_req":
        return (VXLAN, int(obj.vxlanr_vnid))
    fam = int(obj.rtr_family)
    if fam == C.AF_BRIDGE:
        return (ROUTE, fam, int(obj.rtr_vrf_id), _norm(obj.rtr_mac))
    return (ROUTE, fam, int(obj.rtr_vrf_id), _norm(obj.rtr_prefix), int(obj.rtr_prefix_len))


def fields_of(obj: Any) -> dict[str, Any]:
    """A Sandesh object as a dict of its fields."""
    spec = SPECS_BY_NAME[type(obj).__name__]
    return {f.name: getattr(obj, f.name) for f in spec.fields}


def _tunnel_encap(flags: int) -> str | None:
    """The encapsulation name of a tunnel next hop's flags (as ``addRemoteRoute`` takes it)."""
    if flags & C.NH_FLAG_TUNNEL_UDP_MPLS:
        return "udp"
    if flags & C.NH_FLAG_TUNNEL_GRE:
        return "gre"
    if flags & C.NH_FLAG_TUNNEL_VXLAN:
        return "vxlan"
    return None


def owned(key: Key, name: str, fields: dict[str, Any]) -> bool:
    """Objects the agent may delete as stale: its own id ranges, never VRF 0 routes."""
    kind = key[0]
    if kind == VIF:
        return bool(key[1] >= FIRST_VM_VIF)
    if kind == NH:
        return bool(fields.get("nhr_vrf", 0) >= 1 or fields.get("nhr_type") == C.NH_TUNNEL)
    if kind == MPLS or kind == VXLAN:
        return bool(key[1] >= FIRST_LABEL)
    return bool(key[2] >= 1)


def owned_subset(present: dict[Key, tuple[str, dict[str, Any]]],
                 keep: tuple[Key, ...] = ()) -> dict[Key, tuple[str, dict[str, Any]]]:
    """The objects of a dump the agent owns (see :func:`owned`), plus fabric-VRF routes
    that lead through one of the agent's next hops (a gateway's subnets), plus ``keep``."""
    out = {k: v for k, v in present.items() if owned(k, v[0], v[1]) or k in keep}
    nhs = {k[1] for k in out if k[0] == NH}
    for k, (name, f) in present.items():
        if k[0] == ROUTE and k[2] == 0 and int(f.get("rtr_nh_id", 0)) in nhs:
            out[k] = (name, f)
    return out


@implementer(IKsyncChannel)
class LocalChannel:
    """An in-process channel straight into a ``vrtwist.datapath`` dispatcher (no socket)."""

    def __init__(self, datapath: Any) -> None:
        self.datapath = datapath

    def request(self, msg: Any) -> Deferred[list[Any]]:
        return succeed([obj for part in self.datapath.handle(msg) for obj in part])

    def request_many(self, msgs: list[Any]) -> list[Deferred[list[Any]]]:
        return [self.request(m) for m in msgs]


class DatapathSync:
    """Keeps a datapath in step with a :class:`DatapathModel` over an IKsyncChannel."""

    _log = Logger()

    def __init__(self, model: DatapathModel, *, window: int = 128,
                 schedule: Callable[[Callable[[], None]], object] | None = None) -> None:
        self.model = model
        self.window = window
        # with ``schedule`` (e.g. ``lambda f: reactor.callLater(0, f)``) a change starts a
        # batch at the end of the reactor turn, so the changes of every request and XMPP
        # read handled in one turn are planned and bunched together
        self._schedule = schedule
        self._kick_pending = False
        self.channel: IKsyncChannel | None = None
        self.reader: IKsyncChannel | None = None  # used for reads before attach()
        # prefix lengths ever applied per (family, VRF): where covering routes may be
        self._route_lens: dict[tuple[int, int], set[int]] = {}
        self._applied: dict[Key, tuple[str, dict[str, Any]]] = {}
        self.dirty: set[Key] = set()
        #: what the controller taught the previous agent (tunnel next hops, routes and
        #: bridge entries through them), found at adoption: kept, not deleted as stale,
        #: until the controller has sent its routes again (``release_learnt``)
        self.retained: set[Key] = set()
        self.errors: dict[Key, str] = {}
        #: requests sent and refused per object kind (vif, nh, mpls, route), for metrics
        self.sent_by_kind: dict[str, int] = {}
        self.failed_by_kind: dict[str, int] = {}
        self._running = False
        self._started = 0  # batches of requests started / answered
        self._finished = 0
        self._flushes: list[tuple[int, Deferred[None]]] = []
        self._in_flight = 0  # requests sent and not answered yet
        self._room: Deferred[None] | None = None  # fired when _in_flight drops below window
        self._tail: Deferred[None] = succeed(None)  # fires when the last batch is answered
        self._idle: list[Deferred[None]] = []
        self.requests_sent = 0
        self.tables: dict[str, Any] = {}
        model.listeners.append(self.changed)

    @property
    def applied(self) -> dict[Key, tuple[str, dict[str, Any]]]:
        """What the datapath holds once it has executed every request sent."""
        return self._applied

    @applied.setter
    def applied(self, value: dict[Key, tuple[str, dict[str, Any]]]) -> None:
        self._applied = value
        self._route_lens = {}
        for key in value:
            self._note_route(key)

    def _note_route(self, key: Key) -> None:
        if key[0] == ROUTE and key[1] != C.AF_BRIDGE:
            lens = self._route_lens.get((key[1], key[2]))
            if lens is None:
                lens = self._route_lens[(key[1], key[2])] = set()
            lens.add(key[4])

    def covering(self, key: Key) -> dict[str, Any] | None:
        """The fields of the longest applied route strictly shorter than the inet/inet6
        route ``key`` that contains it (what traffic falls back to when ``key`` goes)."""
        _, fam, vrf, raw, plen = key
        lens = self._route_lens.get((fam, vrf))
        if not lens:
            return None
        width = len(raw)
        bits = width * 8
        addr = int.from_bytes(raw, "big")
        applied = self._applied
        for n in sorted((n for n in lens if n < plen), reverse=True):
            shift = bits - n
            hit = applied.get((ROUTE, fam, vrf, ((addr >> shift) << shift).to_bytes(
                width, "big"), n))
            if hit is not None:
                return hit[1]
        return None

    def delete_fields(self, name: str, key: Key, fields: dict[str, Any]) -> dict[str, Any]:
        """The fields of the DEL request for ``key``.  An inet/inet6 route delete carries
        the covering route (next hop, label, flags, stitched MAC, ``rtr_replace_plen``)
        as the real agent's does, so the vRouter writes it into the hole; with no covering
        route, the discard next hop and prefix length 0."""
        out = _identity(name, fields)
        if name == "vr_route_req" and key[1] != C.AF_BRIDGE:
            cover = self.covering(key)
            if cover is not None:
                out["rtr_nh_id"] = int(cover["rtr_nh_id"])
                out["rtr_label"] = int(cover.get("rtr_label", 0))
                out["rtr_label_flags"] = int(cover.get("rtr_label_flags", 0))
                out["rtr_replace_plen"] = int(cover["rtr_prefix_len"])
                out["rtr_mac"] = list(_norm(cover.get("rtr_mac") or b""))
        return out

    # change intake ---------------------------------------------------------------------

    def changed(self, keys: Iterable[Key]) -> None:
        """Model listener: these keys need checking against the datapath."""
        self.dirty.update(keys)
        self._kick()

    def attach(self, channel: IKsyncChannel | None) -> None:
        """Use ``channel`` (None while disconnected); everything desired is re-checked."""
        self.channel = channel
        if channel is not None:
            self.dirty.update(self.model.desired)
            self.dirty.update(self.applied)
            self._kick()

    def interface_status(self, vif: int) -> Deferred[int | None]:
        """The datapath's ``vifr_intf_status`` of ``vif`` (vrtwist's datapath: 1 attached,
        2 waiting for its device; 0 from a datapath that does not say), None when the
        datapath is away or does not hold the vif."""
        channel = self.channel or self.reader
        if channel is None:
            return succeed(None)
        d = channel.request(make("vr_interface_req", {"h_op": C.OP_GET, "vifr_idx": vif}))

        def status(reply: list[Any]) -> int | None:
            if len(reply) < 2 or int(getattr(reply[0], "resp_code", -1)) < 0:
                return None
            return int(getattr(reply[1], "vifr_intf_status", 0))
        d.addCallbacks(status, lambda f: None)
        return d

    def release_learnt(self) -> None:
        """The controller's routes are back (End-of-RIB, or its stale time passed): what
        the previous agent learnt and no one wants any more is deleted now."""
        if not self.retained:
            return
        keys, self.retained = self.retained, set()
        self.dirty.update(k for k in keys if k not in self.model.desired)
        self._log.info("learnt routes re-synchronised: {n} kept object(s) checked",
                       n=len(keys))
        self._kick()

    def whenIdle(self) -> Deferred[None]:
        """Fires once nothing is left to send or unanswered (or immediately)."""
        if not self._running and self._finished >= self._started and (
                not self.dirty or self.channel is None):
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    # reading the datapath ---------------------------------------------------------------

    async def call(self, name: str, fields: dict[str, Any]) -> list[Any]:
        """One request; the reply (vr_response first) or DatapathRequestError."""
        return await self._request(name, make(name, fields))

    async def _request(self, name: str, request: Any) -> list[Any]:
        channel = self.reader or self.channel
        if channel is None:
            raise DatapathRequestError(-errno.ENOTCONN, f"{name}: no ksync session")
        self.requests_sent += 1
        return _checked(name, await channel.request(request))

    async def dump(self, name: str, fields: dict[str, Any]) -> list[Any]:
        """A whole DUMP, paged by the ksync client's :class:`DumpPager` (one implementation
        of the marker rules); a server that never ends the dump is a DatapathRequestError."""
        req = dict(fields, h_op=C.OP_DUMP)
        if name == "vr_vxlan_req":
            req.setdefault("vxlanr_vnid", 0)  # the VNI is the marker, 0 = from the start
        elif name != "vr_route_req":
            req.setdefault({"vr_interface_req": "vifr_marker", "vr_nexthop_req": "nhr_marker",
                            "vr_mpls_req": "mr_marker"}[name], -1)
        pager = DumpPager(make(name, req))
        request: Any = pager.request
        while request is not None:
            reply = await self._request(name, request)
            more = bool(int(reply[0].resp_code) & C.DUMP_INCOMPLETE)
            try:
                request = pager.page([o for o in reply[1:] if type(o).__name__ == name], more)
            except KsyncProtocolError as e:
                raise DatapathRequestError(-errno.EPROTO, f"{name}: {e}") from e
        return pager.objects

    async def read_tables(self) -> dict[str, Any]:
        """Start-up reads of spec 2.5: ``vrouter_ops`` GET (table sizes, which bound the
        model's id allocators) and the flow and bridge table data (where the shared
        memory is).  Failures are logged; the defaults stay."""
        info: dict[str, Any] = {}
        try:
            ops = (await self.call("vrouter_ops", {"h_op": C.OP_GET}))[1:]
        except DatapathRequestError as e:
            self._log.warn("vrouter_ops GET refused: {e}", e=e)
            ops = []
        if ops:
            o = ops[0]
            info.update(interfaces=int(o.vo_interfaces), nexthops=int(o.vo_nexthops),
                        labels=int(o.vo_mpls_labels), vrfs=int(o.vo_vrfs))
            self.model.set_limits(**info)
        for name, op_field in (("vr_flow_table_data", "ftable_op"),
                               ("vr_bridge_table_data", "btable_op")):
            try:
                reply = await self.call(name, {op_field: C.OP_GET if name.startswith(
                    "vr_bridge") else C.FLOW_OP_FLOW_TABLE_GET})
            except DatapathRequestError as e:
                self._log.warn("{name} refused: {e}", name=name, e=e)
                continue
            for obj in reply[1:]:
                prefix = "ftable" if name == "vr_flow_table_data" else "btable"
                info[prefix] = (str(getattr(obj, prefix + "_file_path")),
                                int(getattr(obj, prefix + "_size")) & 0xFFFFFFFF)
        self._log.info("datapath tables: {info}", info=info)
        return info

    async def read_datapath(self) -> dict[Key, tuple[str, dict[str, Any]]]:
        """Everything the agent could own in the datapath, keyed like ``model.desired``."""
        self.tables = await self.read_tables()
        present: dict[Key, tuple[str, dict[str, Any]]] = {}
        vrfs: set[int] = set()
        names = ["vr_interface_req", "vr_nexthop_req", "vr_mpls_req"]
        if self.model.vxlan:
            names.append("vr_vxlan_req")
        for name in names:
            for obj in await self.dump(name, {}):
                f = fields_of(obj)
                present[key_of(name, obj)] = (name, f)
                if name == "vr_interface_req":
                    vrfs.add(int(obj.vifr_vrf))
                elif name == "vr_nexthop_req":
                    vrfs.add(int(obj.nhr_vrf))
        for vrf in sorted(vrfs | {0}):
            for fam in (C.AF_INET, C.AF_INET6, C.AF_BRIDGE):
                try:
                    objs = await self.dump("vr_route_req", {"rtr_vrf_id": vrf,
                                                            "rtr_family": fam})
                except DatapathRequestError as e:
                    self._log.warn("cannot dump family {fam} of VRF {vrf}: {e}", fam=fam,
                                   vrf=vrf, e=e)
                    continue
                for obj in objs:
                    present[key_of("vr_route_req", obj)] = ("vr_route_req", fields_of(obj))
        return present

    async def adopt(self) -> int:
        """Dump the datapath and let the model keep the ids each TAP already has.

        Returns the number of interfaces adopted.  ``applied`` becomes what was found, so
        the first pass afterwards sends only the differences.
        """
        present = await self.read_datapath()
        nhs = {k[1]: f for k, (n, f) in present.items() if k[0] == NH}
        label_of = {f["mr_nhid"]: k[1] for k, (n, f) in present.items() if k[0] == MPLS}
        count = 0
        for key, (_name, f) in present.items():
            if key[0] != VIF or key[1] < FIRST_VM_VIF:
                continue
            idx, vrf, l3 = key[1], int(f["vifr_vrf"]), int(f["vifr_nh_id"])
            l2 = next((i for i, n in nhs.items() if n["nhr_type"] == C.NH_ENCAP
                       and n["nhr_family"] == C.AF_BRIDGE
                       and list(n["nhr_encap_oif_id"])[:1] == [idx]), None)
            rcv = next((i for i, n in nhs.items() if n["nhr_type"] == C.NH_RCV
                        and n["nhr_vrf"] == vrf), None)
            res = next((i for i, n in nhs.items() if n["nhr_type"] == C.NH_RESOLVE
                        and n["nhr_vrf"] == vrf), None)
            self.model.adopt(str(f["vifr_name"]), Adopted(
                vif=idx, vrf_id=vrf, l3_nh=l3, l2_nh=l2, label=label_of.get(l3),
                rcv_nh=rcv, resolve_nh=res))
            count += 1
        tunnels = {k[1] for k, (_n, f) in present.items()
                   if k[0] == NH and f.get("nhr_type") == C.NH_TUNNEL}
        self.retained = {k for k, (_n, f) in present.items()
                         if (k[0] == NH and k[1] in tunnels)
                         or (k[0] == ROUTE and k[2] >= 1
                             and int(f.get("rtr_nh_id", 0)) in tunnels)}
        for key, (_name, f) in present.items():
            if key[0] == NH and f.get("nhr_type") == C.NH_TUNNEL:
                encap = _tunnel_encap(int(f.get("nhr_flags", 0)))
                if encap is not None:
                    dip = socket.inet_ntoa(int(f.get("nhr_tun_dip", 0)).to_bytes(
                        4, sys.byteorder))
                    self.model.adopt_tunnel(dip, encap, key[1],
                                            bytes(list(f.get("nhr_encap") or [])[:6]))
        self.applied = owned_subset(present, ((VIF, AGENT_VIF), (VIF, self.model.fabric_vif)))
        self._log.info("datapath holds {n} agent object(s); {vifs} interface(s) adopted",
                       n=len(self.applied), vifs=count)
        return count

    # writing ---------------------------------------------------------------------------

    def _plan(self) -> list[tuple[int, str, Key, str, dict[str, Any]]]:
        """(order, op, key, name, fields) for every dirty key that needs a request."""
        ops = []
        desired = self.model.desired
        applied = self._applied
        errors = self.errors
        fabric = (VIF, self.model.fabric_vif)
        for key in self.dirty:
            want = desired.get(key)
            have = applied.get(key)
            kind = key[0]
            rank = (3 if key[1] == C.AF_BRIDGE else 4) if kind == ROUTE else RANK[kind]
            if want is None:
                if have is not None and key not in self.retained:
                    ops.append((5 - rank, "del", key, have[0], have[1]))
                continue
            name, fields = want
            if have is None:
                ops.append((6 + rank, "add", key, name, fields))
                continue
            if key == fabric:
                continue  # the fabric vif the datapath (or its operator) set up stays
            if not matches(name, fields, have[1]) or key in errors:
                if kind == NH and int(have[1].get("nhr_type", -1)) != fields["nhr_type"]:
                    ops.append((5 - rank, "del", key, have[0], have[1]))
                ops.append((6 + rank, "add", key, name, fields))
        try:
            # keys of one order are of one kind, so they compare as they are
            ops.sort(key=_op_order)
        except TypeError:
            ops.sort(key=lambda o: (o[0], _sort_key(o[2])))
        return ops

    def _kick(self) -> None:
        if self._running or self.channel is None or not self.dirty:
            return
        if self._schedule is not None:
            if not self._kick_pending:
                self._kick_pending = True
                self._schedule(self._kick_now)
            return
        self._kick_now()

    def _kick_now(self) -> None:
        self._kick_pending = False
        if not self._running and self.channel is not None and self.dirty:
            self._running = True
            d = Deferred.fromCoroutine(self._run())
            d.addErrback(lambda f: self._log.failure("ksync sync failed", f))

    def whenFlushed(self) -> Deferred[None]:
        """Fires once everything changed so far has been sent and answered.

        Unlike :meth:`whenIdle` it does not wait for changes made later, so a REST
        request can wait for its own port under a steady stream of others.
        """
        target = self._started + (1 if self.dirty else 0)
        if self._finished >= target:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._flushes.append((target, d))
        return d

    async def _run(self) -> None:
        """Plan and send batches back to back; a batch does not wait for the previous one
        to be answered (the datapath executes one session's requests in order), only for
        room in the window."""
        try:
            while self.dirty and self.channel is not None:
                ops = self._plan()
                self.dirty.clear()
                self._started += 1
                self._track(await self._send(ops))
        finally:
            self._running = False
            self._maybe_idle()
            if self.dirty and self.channel is not None:
                self._kick()

    def _track(self, batch: list[Deferred[Any]]) -> None:
        """Count a batch as finished once it and every batch before it are answered."""
        mine: Deferred[None] = Deferred()
        prev, self._tail = self._tail, mine

        def finished(_: object) -> None:
            self._finished += 1
            self._fire_flushes()
            self._maybe_idle()
            mine.callback(None)

        def after_prev(result: object) -> object:
            # a counter, not a DeferredList: the requests' own callbacks already record
            # each outcome, this only needs to know when the last one is in
            left = [len(batch)]
            if not batch:
                finished(None)

            def one(_: object) -> None:
                left[0] -= 1
                if not left[0]:
                    finished(None)
                return None  # the outcome is recorded; nothing is left to report

            for d in batch:
                d.addBoth(one)
            return result
        prev.addBoth(after_prev)

    def _maybe_idle(self) -> None:
        if self._running or self._finished < self._started:
            return
        if not self.dirty or self.channel is None:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    async def _send(self, ops: list[tuple[int, str, Key, str, dict[str, Any]]]
                    ) -> list[Deferred[Any]]:
        """Send ``ops`` in order, bunched (up to BUNCH per netlink message, as the real
        agent does) with at most ``window`` requests unanswered across batches.

        ``applied`` is updated when a request is sent (what the datapath will hold once
        it has executed everything sent so far) and put back if the request fails.
        Returns one Deferred per bunch, fired once its answers are recorded.
        """
        batch: list[Deferred[Any]] = []
        for start in range(0, len(ops), BUNCH):
            chunk = ops[start:start + BUNCH]
            while self._in_flight >= self.window:
                # replies come in order, a bunch per netlink message: one resume per
                # bunch answered, not per request
                room = self._room = Deferred()
                await room
            channel = self.channel
            if channel is None:
                self.dirty.update(o[2] for o in chunk)
                continue
            msgs = []
            prevs = []
            applied = self._applied
            by_kind = self.sent_by_kind
            for _order, op, key, name, fields in chunk:
                by_kind[key[0]] = by_kind.get(key[0], 0) + 1
                # built in order against what the datapath will hold by then, so a route
                # delete names the covering route as it will be when it is executed
                prevs.append(applied.get(key))
                if op == "del":
                    req = self.delete_fields(name, key, fields)
                    req[_OP_FIELD] = C.OP_DEL
                    applied.pop(key, None)
                    msgs.append(make(name, req))
                else:
                    applied[key] = (name, fields)
                    if key[0] == ROUTE and key[1] != C.AF_BRIDGE:
                        self._note_route(key)
                    msgs.append(_add_request(name, fields))
            self.requests_sent += len(msgs)
            self._in_flight += len(msgs)
            d: Deferred[Any]
            if IKsyncBunchChannel.providedBy(channel):
                d = channel.request_bunch(msgs)
                d.addBoth(self._bunch_answered, chunk, prevs)
            else:
                many = getattr(channel, "request_many", None)
                ds = many(msgs) if many is not None else [channel.request(m) for m in msgs]
                d = _gather(ds)
                d.addCallback(self._replies_answered, chunk, prevs)
            batch.append(d)
        return batch

    def _bunch_answered(self, results: list[Any] | Failure,
                        chunk: list[tuple[int, str, Key, str, dict[str, Any]]],
                        prevs: list[tuple[str, dict[str, Any]] | None]) -> None:
        """Record the answers of one bunch (one callback for up to BUNCH requests)."""
        self._in_flight -= len(chunk)
        if isinstance(results, Failure):
            for (_order, op, key, _name, _fields), prev in zip(chunk, prevs, strict=True):
                self._failed(results, op, key, prev)
        else:
            errors = self.errors
            for r, prev, (_order, op, key, name, _fields) in zip(results, prevs, chunk,
                                                                 strict=True):
                if type(r) is KsyncResponse:
                    if errors:
                        errors.pop(key, None)
                elif isinstance(r, ClientKsyncError):
                    self._failed(Failure(DatapathRequestError(r.code, name)), op, key, prev)
                else:  # an unreadable answer: like a lost session, read it again later
                    self._failed(Failure(r), op, key, prev)
        self._make_room()

    def _replies_answered(self, replies: list[Any],
                          chunk: list[tuple[int, str, Key, str, dict[str, Any]]],
                          prevs: list[tuple[str, dict[str, Any]] | None]) -> None:
        """Record the answers of one bunch sent with per-request Deferreds."""
        self._in_flight -= len(chunk)
        for r, prev, (_order, op, key, name, _fields) in zip(replies, prevs, chunk,
                                                             strict=True):
            if isinstance(r, Failure):
                self._failed(r, op, key, prev)
            else:
                self._answered(r, name, op, key, prev)
        self._make_room()

    def _make_room(self) -> None:
        room = self._room
        if room is not None and self._in_flight < self.window:
            self._room = None
            room.callback(None)

    def _fire_flushes(self) -> None:
        ready = [d for t, d in self._flushes if t <= self._finished]
        self._flushes = [(t, d) for t, d in self._flushes if t > self._finished]
        for d in ready:
            d.callback(None)

    def _answered(self, reply: list[Any], name: str, op: str, key: Key,
                  prev: tuple[str, dict[str, Any]] | None) -> None:
        """One callback per request: check the vr_response, then record success or not."""
        try:
            _checked(name, reply)
        except DatapathRequestError as e:
            return self._failed(Failure(e), op, key, prev)
        self.errors.pop(key, None)
        return None

    def _failed(self, f: Any, op: str, key: Key,
                prev: tuple[str, dict[str, Any]] | None) -> None:
        err = f.value
        if isinstance(err, DatapathRequestError) and op == "del" and err.code == -errno.ENOENT:
            return None  # already gone
        if not isinstance(err, DatapathRequestError):
            # the channel went away: the datapath is read again when it is back
            self.dirty.add(key)
            return None
        # the datapath still holds what it held before this request
        if prev is None:
            self.applied.pop(key, None)
        else:
            self.applied[key] = prev
        self.errors[key] = str(err)
        self.failed_by_kind[key[0]] = self.failed_by_kind.get(key[0], 0) + 1
        self._log.error("ksync {op} of {key} failed: {err}", op=op, key=key, err=str(err))
        return None


#: Requests bunched into one netlink message (the agent's ``kMaxBulkMsgCount``).
BUNCH = 16


def _gather(ds: list[Deferred[Any]]) -> Deferred[list[Any]]:
    """One Deferred for per-request Deferreds: fires with each result or its Failure."""
    out: list[Any] = [None] * len(ds)
    done: Deferred[list[Any]] = Deferred()
    left = [len(ds)]

    def one(result: Any, i: int) -> None:
        out[i] = result
        left[0] -= 1
        if not left[0]:
            done.callback(out)
        return None

    for i, d in enumerate(ds):
        d.addBoth(one, i)
    if not ds:
        done.callback(out)
    return done


def _checked(name: str, reply: list[Any]) -> list[Any]:
    """The reply if its vr_response is not negative, else DatapathRequestError."""
    if not reply or type(reply[0]).__name__ != "vr_response":
        raise DatapathRequestError(-errno.EPROTO, f"{name}: reply without vr_response")
    code = int(reply[0].resp_code)
    if code < 0:
        raise DatapathRequestError(code, name)
    return list(reply)


def rank_of(key: Key) -> int:
    """Add order: interfaces, next hops, labels, bridge entries, then inet routes (which
    may name a stitched MAC that must already be in the bridge table)."""
    if key[0] == ROUTE:
        return 3 if key[1] == C.AF_BRIDGE else 4
    return RANK[key[0]]


def _identity(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The fields that name an object for DEL."""
    if name == "vr_route_req":
        keep = ("rtr_vrf_id", "rtr_family", "rtr_prefix", "rtr_prefix_len", "rtr_mac",
                "rtr_nh_id", "rtr_label")
        out = {k: fields[k] for k in keep if k in fields}
        # on DEL the vRouter writes the covering route into the hole; here: none
        # (discard); DatapathSync.delete_fields puts the covering route in
        out["rtr_nh_id"] = C.NH_DISCARD_ID
        out["rtr_label"] = 0
        out["rtr_replace_plen"] = 0
        out["rtr_label_flags"] = 0
        return out
    field = _KEY_FIELD[name]
    assert field is not None
    out = {field: fields[field]}
    if name == "vr_interface_req":
        out["vifr_type"] = fields.get("vifr_type", 0)
    return out


def _op_order(op: tuple[int, str, Key, str, dict[str, Any]]) -> tuple[int, Key]:
    return op[0], op[2]


def _add_request(name: str, fields: dict[str, Any]) -> Any:
    """The ADD request for desired ``fields`` (lists for byte fields, as the model keeps
    them), built without copying the dict."""
    return SPECS_BY_NAME[name].cls(h_op=C.OP_ADD, **fields)


def _sort_key(key: Key) -> tuple[Any, ...]:
    return tuple(str(x) if isinstance(x, bytes) else x for x in key)


@implementer(IKsyncBunchChannel)
class ProtocolChannel:
    """IKsyncChannel over a connected ``vrtwist.ksync.client.KsyncClientProtocol``."""

    def __init__(self, proto: Any) -> None:
        self.proto = proto

    def request_bunch(self, msgs: list[Any]) -> Deferred[list[Any]]:
        """One Deferred for a bunch (see ``IKsyncBunchChannel``)."""
        bunch = getattr(self.proto, "request_bunch", None)
        if bunch is not None:
            return bunch(msgs)  # type: ignore[no-any-return]
        # a plain KsyncClientProtocol: its per-request Deferreds, gathered
        d = _gather(self.proto.request_many(msgs))
        return d.addCallback(_as_results)

    def request(self, msg: Any) -> Deferred[list[Any]]:
        return self.request_many([msg])[0]

    def request_many(self, msgs: list[Any]) -> list[Deferred[list[Any]]]:
        """Bunch ``msgs`` into one netlink message; one Deferred per request, in order."""
        return [d.addCallbacks(_as_reply, _refused_reply)
                for d in self.proto.request_many(msgs)]


def _as_results(results: list[Any]) -> list[Any]:
    """Per-request outcomes in the ``request_bunch`` form (a lost session fails it all)."""
    out = []
    for r in results:
        if isinstance(r, Failure):
            if not isinstance(r.value, ClientKsyncError | KsyncProtocolError):
                return r  # type: ignore[return-value]
            out.append(r.value)
        else:
            out.append(r)
    return out


def _as_reply(resp: Any) -> list[Any]:
    return [schema.vr_response(h_op=C.OP_RESPONSE, resp_code=resp.code), *resp.objects]


def _refused_reply(f: Any) -> list[Any]:
    f.trap(ClientKsyncError)
    return [schema.vr_response(h_op=C.OP_RESPONSE, resp_code=f.value.code), *f.value.objects]


class KsyncSynchroniser:
    """Keeps a ksync session to ``<run-dir>/dpdk_netlink`` and a :class:`DatapathSync` on it.

    Every (re)connection reads the datapath first, so a datapath that restarted empty is
    refilled and one that kept its state is only corrected.  The first read also lets the
    model adopt the ids each TAP already has (``prepare``, before the ports are replayed).
    """

    _log = Logger()

    def __init__(self, reactor: Any, model: DatapathModel, endpoint: str, *,
                 adopt: bool = True, first_connect_timeout: float = 10.0) -> None:
        from twisted.application.internet import ClientService
        from twisted.internet.endpoints import clientFromString
        from twisted.internet.protocol import Factory

        self.reactor = reactor
        self.model = model
        self.sync = DatapathSync(model, schedule=lambda f: reactor.callLater(0, f))
        self.adopt_ids = adopt
        self.first_connect_timeout = first_connect_timeout
        self._stopping = False
        self._prepared: Any = None
        factory = Factory.forProtocol(_SyncProtocol)
        self.client = ClientService(clientFromString(reactor, endpoint), factory,
                                    retryPolicy=_retry_policy)
        self._loop: Deferred[None] | None = None
        self._nap: Deferred[None] | None = None

    async def prepare(self) -> None:
        """Start connecting; wait (bounded) for the first session and adopt ids from it."""
        self.client.startService()
        d = self.client.whenConnected(failAfterFailures=None)
        timer = self.reactor.callLater(self.first_connect_timeout, d.cancel)
        try:
            proto: Any = await d
        except Exception:
            self._log.warn("datapath not reachable after {t} s; ports are replayed and "
                           "programmed once it is", t=self.first_connect_timeout)
            return
        finally:
            if timer.active():
                timer.cancel()
        await self._session(proto, adopt=self.adopt_ids, attach=False)

    def start(self) -> None:
        """Follow connections from now on (call after the ports were replayed)."""
        self._loop = Deferred.fromCoroutine(self._follow())
        self._loop.addErrback(self._follower_failed)

    def _follower_failed(self, f: Any) -> None:
        if self._stopping and f.check(CancelledError):
            return  # stop() cancelled its wait between sessions
        self._log.failure("ksync follower failed", f)

    async def _follow(self) -> None:
        while not self._stopping:
            try:
                proto: Any = await self.client.whenConnected(failAfterFailures=None)
            except Exception:
                return
            if self._stopping:
                return
            if proto.lost_d.called:
                # ClientService still reports the session that just ended: let it notice
                self._nap = deferLater(self.reactor, 0.05, lambda: None)
                try:
                    await self._nap
                finally:
                    self._nap = None
                continue
            if proto is self._prepared:
                self.sync.attach(ProtocolChannel(proto))
            else:
                await self._session(proto, adopt=False)
            self._prepared = None
            await proto.lost_d
            self.sync.attach(None)
            if self._stopping:
                return  # our own stop closed it (or the datapath went with us): no news
            self._log.warn("ksync session to the datapath lost; reconnecting")

    async def _session(self, proto: Any, adopt: bool, attach: bool = True) -> bool:
        """Read the datapath over a new session, then (``attach``) start writing to it."""
        channel = ProtocolChannel(proto)
        self.sync.reader = channel
        try:
            if adopt:
                await self.sync.adopt()
            else:
                present = await self.sync.read_datapath()
                self.sync.applied = owned_subset(
                    present, ((VIF, AGENT_VIF), (VIF, self.model.fabric_vif)))
        except Exception as e:
            self._log.error("cannot read the datapath: {e}", e=e)
            return False
        finally:
            self.sync.reader = None
        if attach:
            self.sync.attach(channel)
        else:
            self._prepared = proto
        return True

    def whenIdle(self) -> Deferred[None]:
        return self.sync.whenIdle()

    def stopping(self) -> None:
        """The agent is stopping: a session lost from now on is not news (no warning).

        Called before anything else stops, since the embedded datapath may close the
        session before :meth:`stop` runs.
        """
        self._stopping = True

    async def stop(self) -> None:
        self._stopping = True
        if self._nap is not None and not self._nap.called:
            self._nap.cancel()  # the follower's pause before a reconnection check
        stopped = self.client.stopService()
        if stopped is not None:
            await stopped


class LocalSynchroniser:
    """The synchroniser of an embedded datapath reached in-process (``--ksync inprocess``).

    Same Sandesh requests and replies as over ``dpdk_netlink``, handed to the datapath's
    dispatcher directly: no netlink framing and no encode/decode on either side.  The
    utilities still use the socket.
    """

    def __init__(self, model: DatapathModel, datapath: Any, *, adopt: bool = True) -> None:
        self.sync = DatapathSync(model)
        self.channel = LocalChannel(datapath)
        self.adopt_ids = adopt

    async def prepare(self) -> None:
        self.sync.reader = self.channel
        try:
            if self.adopt_ids:
                await self.sync.adopt()
            else:
                present = await self.sync.read_datapath()
                self.sync.applied = owned_subset(
                    present, ((VIF, AGENT_VIF), (VIF, self.sync.model.fabric_vif)))
        finally:
            self.sync.reader = None

    def start(self) -> None:
        self.sync.attach(self.channel)

    def whenIdle(self) -> Deferred[None]:
        return self.sync.whenIdle()

    async def stop(self) -> None:
        self.sync.attach(None)


def _retry_policy(attempt: int) -> float:
    return float(min(0.05 * (2 ** min(attempt, 6)), 2.0))


class _SyncProtocol(KsyncClientProtocol):
    """The ksync client protocol plus a Deferred that fires when the session ends, and
    ``request_bunch``: one Deferred per netlink message rather than per request."""

    def __init__(self) -> None:
        super().__init__(pid=os.getpid())
        self.lost_d: Deferred[None] = Deferred()
        self._bunches: dict[int, Deferred[list[Any]]] = {}

    def request_bunch(self, msgs: list[Any]) -> Deferred[list[Any]]:
        """Bunch ``msgs`` into one netlink message; one Deferred for all their results."""
        if self._lost is not None or self.transport is None:
            return fail(KsyncConnectionLost("ksync connection is closed"))
        seq, data = self._core.build(msgs)
        d: Deferred[list[Any]] = Deferred()
        self._bunches[seq] = d
        self.transport.write(data)
        return d

    def _deliver(self, done: list[tuple[int, list[Any]]]) -> None:
        if not self._bunches:
            super()._deliver(done)
            return
        for seq, results in done:
            bunch = self._bunches.pop(seq, None)
            if bunch is not None:
                bunch.callback(results)
            else:
                super()._deliver([(seq, results)])  # a plain request, in its turn

    def _fail_all(self, f: Failure) -> None:
        bunches, self._bunches = self._bunches, {}
        super()._fail_all(f)
        for d in bunches.values():
            d.errback(f)

    def connectionLost(self, reason: Any = None) -> None:
        if reason is None:
            super().connectionLost()
        else:
            super().connectionLost(reason)
        if not self.lost_d.called:
            self.lost_d.callback(None)

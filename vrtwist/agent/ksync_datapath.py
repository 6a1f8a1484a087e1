"""The ksync synchroniser proper: keeps a datapath in step with the agent's model.

:class:`DatapathSync` keeps what it believes the datapath holds (``applied``) next to the
model's ``desired`` objects and sends the difference that :func:`~vrtwist.agent.ksync_plan.plan`
orders, pipelined within an :class:`~vrtwist.agent.ksync_window.InFlightWindow` (the
datapath answers one session's requests in order).  At start with
``--datapath=external`` it first dumps the datapath, lets the model adopt the ids a TAP
already has, and afterwards adds only what is missing or different and deletes only
what is stale - never flows, never objects outside the agent's id ranges.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from vrtwist.agent.dpstate import AGENT_VIF, ROUTE, VIF, DatapathModel, Key
from vrtwist.agent.interfaces import IKsyncBunchChannel, IKsyncChannel
from vrtwist.agent.ksync_plan import (
    _OP_FIELD,
    Op,
    _add_request,
    adoptions,
    covering_route,
    delete_request,
    fields_of,
    key_of,
    learnt,
    make,
    mirrors,
    note_route,
    owned_subset,
    plan,
    tunnels,
)
from vrtwist.agent.ksync_window import BUNCH, InFlightWindow, gather
from vrtwist.datapath import constants as C
from vrtwist.ksync.client import KsyncError as ClientKsyncError
from vrtwist.ksync.clientcore import DumpPager, KsyncProtocolError, KsyncResponse
from vrtwist.logfields import Logger

__all__ = ["DatapathRequestError", "DatapathSync"]


class DatapathRequestError(Exception):
    """The datapath refused a request; ``code`` is the negative errno of ``vr_response``."""

    def __init__(self, code: int, what: str) -> None:
        name = errno.errorcode.get(-code, str(code)) if code < 0 else str(code)
        super().__init__(f"{what}: vRouter answered {name} ({code}): "
                         f"{os.strerror(-code) if code < 0 else ''}")
        self.code = code


class DatapathSync:
    """Keeps a datapath in step with a :class:`DatapathModel` over an IKsyncChannel."""

    _log = Logger()

    def __init__(self, model: DatapathModel, *, window: int = 128,
                 schedule: Callable[[Callable[[], None]], object] | None = None) -> None:
        self.model = model
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
        #: requests unanswered (at most ``window``) and batches started / finished
        self.flight = InFlightWindow(window, on_finished=self._maybe_idle)
        self._idle: list[Deferred[None]] = []
        self.requests_sent = 0
        self.tables: dict[str, Any] = {}
        model.listeners.append(self.changed)

    @property
    def window(self) -> int:
        """Requests that may be unanswered at once (across batches)."""
        return self.flight.window

    @window.setter
    def window(self, value: int) -> None:
        self.flight.window = value

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
        note_route(self._route_lens, key)

    def covering(self, key: Key) -> dict[str, Any] | None:
        """The fields of the longest applied route strictly shorter than the inet/inet6
        route ``key`` that contains it (what traffic falls back to when ``key`` goes)."""
        return covering_route(self._applied, self._route_lens, key)

    def delete_fields(self, name: str, key: Key, fields: dict[str, Any]) -> dict[str, Any]:
        """The fields of the DEL request for ``key`` (a route's names its covering route:
        see :func:`~vrtwist.agent.ksync_plan.delete_request`)."""
        cover = None
        if name == "vr_route_req" and key[1] != C.AF_BRIDGE:
            cover = self.covering(key)
        return delete_request(name, key, fields, cover)

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
        out: Deferred[int | None] = d
        return out

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

    def when_idle(self) -> Deferred[None]:
        """Fires once nothing is left to send or unanswered (or immediately)."""
        if not self._running and self.flight.settled and (
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
                            "vr_mpls_req": "mr_marker", "vr_mirror_req": "mirr_marker"}[name],
                           -1)
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
        try:
            for obj in await self.dump("vr_mirror_req", {}):
                present[key_of("vr_mirror_req", obj)] = ("vr_mirror_req", fields_of(obj))
        except DatapathRequestError as e:
            self._log.warn("cannot dump the mirror table: {e}", e=e)
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
        found = adoptions(present)
        for name, adopted in found:
            self.model.adopt(name, adopted)
        self.retained = learnt(present)
        for nh, encap, dip, mac in tunnels(present):
            self.model.adopt_tunnel(socket.inet_ntoa(dip.to_bytes(4, sys.byteorder)), encap,
                                    nh, mac)
        for index, nh, dip, port, mac in mirrors(present):
            self.model.adopt_mirror(index, nh, socket.inet_ntoa(dip.to_bytes(4, sys.byteorder)),
                                    port, mac)
        self.applied = owned_subset(present, ((VIF, AGENT_VIF), (VIF, self.model.fabric_vif)))
        self._log.info("datapath holds {n} agent object(s); {vifs} interface(s) adopted",
                       n=len(self.applied), vifs=len(found))
        return len(found)

    # writing ---------------------------------------------------------------------------

    def _plan(self) -> list[Op]:
        """(order, op, key, name, fields) for every dirty key that needs a request."""
        return plan(self.dirty, self.model.desired, self._applied, retained=self.retained,
                    errors=self.errors, fabric=(VIF, self.model.fabric_vif))

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

    def when_flushed(self) -> Deferred[None]:
        """Fires once everything changed so far has been sent and answered.

        Unlike :meth:`when_idle` it does not wait for changes made later, so a REST
        request can wait for its own port under a steady stream of others.
        """
        return self.flight.when_flushed(bool(self.dirty))

    async def _run(self) -> None:
        """Plan and send batches back to back; a batch does not wait for the previous one
        to be answered (the datapath executes one session's requests in order), only for
        room in the window."""
        try:
            while self.dirty and self.channel is not None:
                ops = self._plan()
                self.dirty.clear()
                self.flight.start_batch()
                self.flight.track(await self._send(ops))
        finally:
            self._running = False
            self._maybe_idle()
            if self.dirty and self.channel is not None:
                self._kick()

    def _maybe_idle(self) -> None:
        if self._running or not self.flight.settled:
            return
        if not self.dirty or self.channel is None:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    async def _send(self, ops: list[Op]) -> list[Deferred[Any]]:
        """Send ``ops`` in order, bunched (up to BUNCH per netlink message, as the real
        agent does) with at most ``window`` requests unanswered across batches.

        ``applied`` is updated when a request is sent (what the datapath will hold once
        it has executed everything sent so far) and put back if the request fails.
        Returns one Deferred per bunch, fired once its answers are recorded.
        """
        batch: list[Deferred[Any]] = []
        for start in range(0, len(ops), BUNCH):
            chunk = ops[start:start + BUNCH]
            await self.flight.room()
            channel = self.channel
            if channel is None:
                self.dirty.update(o[2] for o in chunk)
                continue
            batch.append(self._send_bunch(channel, chunk))
        return batch

    def _requests(self, chunk: list[Op]) -> tuple[list[Any], list[tuple[str, dict[str, Any]] | None]]:
        """The requests of ``chunk``, and what each key held before (``applied`` moves on)."""
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
        return msgs, prevs

    def _send_bunch(self, channel: IKsyncChannel, chunk: list[Op]) -> Deferred[Any]:
        msgs, prevs = self._requests(chunk)
        self.requests_sent += len(msgs)
        self.flight.sent(len(msgs))
        d: Deferred[Any]
        if IKsyncBunchChannel.providedBy(channel):
            d = channel.request_bunch(msgs)
            d.addBoth(self._bunch_answered, chunk, prevs)
        else:
            many = getattr(channel, "request_many", None)
            ds = many(msgs) if many is not None else [channel.request(m) for m in msgs]
            d = gather(ds)
            d.addCallback(self._replies_answered, chunk, prevs)
        return d

    def _bunch_answered(self, results: list[Any] | Failure,
                        chunk: list[Op],
                        prevs: list[tuple[str, dict[str, Any]] | None]) -> None:
        """Record the answers of one bunch (one callback for up to BUNCH requests)."""
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
        self.flight.answered(len(chunk))

    def _replies_answered(self, replies: list[Any],
                          chunk: list[Op],
                          prevs: list[tuple[str, dict[str, Any]] | None]) -> None:
        """Record the answers of one bunch sent with per-request Deferreds."""
        for r, prev, (_order, op, key, name, _fields) in zip(replies, prevs, chunk,
                                                             strict=True):
            if isinstance(r, Failure):
                self._failed(r, op, key, prev)
            else:
                self._answered(r, name, op, key, prev)
        self.flight.answered(len(chunk))

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


def _checked(name: str, reply: list[Any]) -> list[Any]:
    """The reply if its vr_response is not negative, else DatapathRequestError."""
    if not reply or type(reply[0]).__name__ != "vr_response":
        raise DatapathRequestError(-errno.EPROTO, f"{name}: reply without vr_response")
    code = int(reply[0].resp_code)
    if code < 0:
        raise DatapathRequestError(code, name)
    return list(reply)

"""The forwarding extension's request dispatcher: Sandesh requests in, replies out.

Sans-IO: :meth:`Datapath.handle` takes one decoded request object (from
``vrtwist.sandesh.decode``) and returns the transport messages of its reply, as the
vRouter's ``<name>_process`` handlers queue them (docs/protocols/ksync.md): every request gets exactly
one ``vr_response`` first; a GET adds its object to the same message; a DUMP sends the
``vr_response`` (object count, bit 30 if more remain) and then one page of at most
3968 bytes of objects. Handlers are found by Sandesh message name and can be replaced
or added with :meth:`Datapath.register` (the shared-memory flow and bridge tables do
that), and AF_BRIDGE routes go to :meth:`Datapath.register_bridge`'s handler.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from zope.interface import implementer

from vrtwist.datapath import constants as C
from vrtwist.datapath.droplog import DropLog
from vrtwist.datapath.interfaces import IBridgeRoutes, IDatapath, IRequestHandler
from vrtwist.datapath.routes import RouteTables
from vrtwist.datapath.tables import DatapathConfig, Fields, TableError, Tables
from vrtwist.ksync.interfaces import IFlowSetValues, IKsyncDispatcher, KsyncReply
from vrtwist.logfields import Logger
from vrtwist.sandesh import SPECS_BY_CLASS, SPECS_BY_NAME, encode, schema

Reply = list[list[Any]]


class DumpReply(list[list[Any]]):
    """A DUMP reply not paged yet: ``objects`` are every object after the marker, lazily.

    The ksync server pages it itself (``KsyncReply(dump=True)``); :meth:`Datapath.handle`
    pages it for in-process callers.
    """

    def __init__(self, objects: Iterable[Any]) -> None:
        super().__init__()
        self.objects: Iterator[Any] = iter(objects)


BUILD_INFO = json.dumps(
    {
        "build-info": [
            {
                "build-time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                "build-hostname": socket.gethostname(),
                "build-user": "vrtwist",
                "build-version": "vrtwist-0.1.0",
            }
        ]
    }
)

# vrouter_ops runtime knobs and the values a fresh DPDK vRouter reports
_OPS_KNOBS: dict[str, int] = {
    "vo_perfr": 0,
    "vo_perfs": 0,
    "vo_from_vm_mss_adj": 1,
    "vo_to_vm_mss_adj": 1,
    "vo_perfr1": 0,
    "vo_perfr2": 0,
    "vo_perfr3": 0,
    "vo_perfp": 0,
    "vo_perfq1": 0,
    "vo_perfq2": 0,
    "vo_perfq3": 0,
    "vo_udp_coff": 0,
    "vo_flow_hold_limit": 1,
    "vo_mudp": 0,
    "vo_burst_tokens": 0,
    "vo_burst_interval": 0,
    "vo_burst_step": 0,
    "vo_priority_tagging": 1,
    "vo_packet_dump": 0,
    "vo_log_level": 7,  # VR_LOG_INFO, the DPDK vRouter's default (rte log level INFO)
    "vo_pkt_droplog_bufsz": 200,
    "vo_pkt_droplog_buf_en": 1,
    "vo_pkt_droplog_en": 1,
    "vo_pkt_droplog_min_en": 0,
    "vo_uncond_close_flow_on_tcp_rst": 0,
}

#: the flow table's request: it leaves ``Datapath.generation`` alone
_FLOW_REQ = SPECS_BY_NAME["vr_flow_req"].cls

_BYTE_KNOBS = frozenset(
    {
        "vo_pkt_droplog_buf_en",
        "vo_pkt_droplog_en",
        "vo_pkt_droplog_min_en",
        "vo_uncond_close_flow_on_tcp_rst",
    }
)

#: signature of the provider of used-entry counters for ``vrouter_ops`` GET
UsageSource = Callable[[], dict[str, int]]


def fields_of(msg: Any) -> Fields:
    """A decoded Sandesh object as a dict of its field names."""
    spec = SPECS_BY_CLASS[type(msg)]
    return {f.name: getattr(msg, f.name) for f in spec.fields}


def make(name: str, fields: Fields | None = None) -> Any:
    """A Sandesh object from a dict; byte strings become ``list<byte>`` values."""
    spec = SPECS_BY_NAME[name]
    known = {f.name for f in spec.fields}
    values: dict[str, Any] = {}
    for key, value in (fields or {}).items():
        if key not in known:
            continue
        if isinstance(value, (bytes, bytearray)):
            value = list(value)
        values[key] = value
    return spec.cls(**values)


@implementer(IRequestHandler)
class _Method:
    """Adapts a bound method to :class:`IRequestHandler`."""

    def __init__(self, method: Callable[[Any], Reply]) -> None:
        self._method = method

    def handle(self, request: Any) -> Reply:
        return self._method(request)


@implementer(IBridgeRoutes)
class BridgeRoutesInMemory:
    """AF_BRIDGE routes kept in a dict, for a datapath run without shared memory.

    ``vrtwist.shmem`` replaces it with the shared-memory bridge table; this one keeps
    the same request semantics (``vr_bridge.c``) so the ksync channel answers bridge
    routes either way.
    """

    def __init__(self, datapath: Datapath) -> None:
        self.datapath = datapath
        self.entries: dict[tuple[int, bytes], tuple[int, Fields]] = {}
        self._next_index = 0

    def index_of(self, vrf: int, mac: bytes) -> int | None:
        found = self.entries.get((vrf, bytes(mac)))
        return found[0] if found is not None else None

    def learn(self, vrf: int, mac: bytes, nh_id: int) -> int:
        """A learnt MAC (flag MAC_NEW), bounded like the shared table by its entry count."""
        config = self.datapath.config
        if len(self.entries) >= config.bridge_entries + config.oflow_bridge_entries:
            return -1
        key = (vrf, bytes(mac))
        if key in self.entries:
            return -1
        nh = self.datapath.tables.hold_nexthop(nh_id)
        if nh is None:
            return -1
        index = self._next_index
        self._next_index += 1
        self.entries[key] = (
            index,
            {
                "rtr_family": C.AF_BRIDGE,
                "rtr_vrf_id": vrf,
                "rtr_mac": key[1],
                "rtr_nh_id": nh_id,
                "rtr_label": 0,
                "rtr_label_flags": C.VR_BE_VALID_FLAG | C.VR_BE_MAC_NEW_FLAG,
                "rtr_index": index,
            },
        )
        return index

    def mark_moved(self, vrf: int, mac: bytes) -> None:
        found = self.entries.get((vrf, bytes(mac)))
        if found is not None:
            found[1]["rtr_label_flags"] |= C.VR_BE_MAC_MOVED_FLAG

    def reset(self) -> None:
        tables = self.datapath.tables
        for _, fields in self.entries.values():
            tables.release_nexthop(tables.get_nexthop(fields["rtr_nh_id"]))
        self.entries.clear()

    def handle(self, request: Any) -> Reply:
        dp = self.datapath
        req = fields_of(request)
        op = req["h_op"]
        vrf = int(req["rtr_vrf_id"])
        mac = bytes(v & 0xFF for v in req["rtr_mac"] or [])
        if op == C.OP_DUMP:
            return dp.dump_reply(self._dump(vrf, req))
        if not 0 <= vrf < dp.config.vrfs or (op != C.OP_GET and len(mac) != 6):
            return [[dp.response(-errno.EINVAL)]]
        key = (vrf, mac)
        tables = dp.tables
        if op == C.OP_ADD:
            nh = tables.hold_nexthop(int(req["rtr_nh_id"]))
            if nh is None:
                return [[dp.response(-errno.ENOENT)]]
            old = self.entries.get(key)
            index = old[0] if old is not None else self._next_index
            if old is None:
                self._next_index += 1
            else:
                tables.release_nexthop(tables.get_nexthop(old[1]["rtr_nh_id"]))
            flags = int(req["rtr_label_flags"]) | C.VR_BE_VALID_FLAG
            self.entries[key] = (
                index,
                {
                    "rtr_family": C.AF_BRIDGE,
                    "rtr_vrf_id": vrf,
                    "rtr_mac": mac,
                    "rtr_nh_id": nh.id,
                    "rtr_label": int(req["rtr_label"]),
                    "rtr_label_flags": flags,
                    "rtr_index": index,
                },
            )
            return [[dp.response(0)]]
        if op == C.OP_DEL:
            old = self.entries.pop(key, None)
            if old is None:
                return [[dp.response(-errno.ENOENT)]]
            tables.release_nexthop(tables.get_nexthop(old[1]["rtr_nh_id"]))
            return [[dp.response(0)]]
        if op == C.OP_GET:
            found = self.entries.get(key)
            if found is None:
                return [[dp.response(-errno.ENOENT)]]
            return [[dp.response(0), make("vr_route_req", found[1])]]
        return [[dp.response(-errno.EOPNOTSUPP)]]

    def _dump(self, vrf: int, req: Fields) -> Iterator[Any]:
        marker = bytes(v & 0xFF for v in req["rtr_mac"] or [])
        started = len(marker) == 6
        for (entry_vrf, mac), (_, fields) in sorted(self.entries.items()):
            if entry_vrf != vrf or (started and mac <= marker):
                continue
            yield make("vr_route_req", fields)


_FLOW_REQ = SPECS_BY_NAME["vr_flow_req"].cls


@implementer(IDatapath, IKsyncDispatcher, IFlowSetValues)
class Datapath:
    """All tables of one forwarding extension behind one ``handle(request)`` call."""

    _log = Logger()

    def __init__(self, config: DatapathConfig | None = None) -> None:
        self.config = config if config is not None else DatapathConfig()
        #: fabric interface the overlay leaves by (``--fabric``), for the packet path
        self.fabric: str | None = None
        self.tables = Tables(self.config)
        self.routes = RouteTables(self.tables)
        self.ops: dict[str, int] = dict(_OPS_KNOBS)
        self.log_types: list[int] = []
        #: the last dropped packets per core (``dropstats --log``); the packet path records
        self.drop_log = DropLog(self.config.cores, self.ops["vo_pkt_droplog_bufsz"])
        self.usage_sources: list[UsageSource] = []
        self.reset_hooks: list[Callable[[], None]] = []
        #: bumped on every ksync request but a flow table's (any other table, any op)
        #: and by the packet path's own table writes (MAC learning): what caches a
        #: forwarding decision checks. No cached decision reads the flow table (a packet
        #: that takes the flow stage looks its flow up each time), so FLOW_SETs, one per
        #: new flow over ksync, leave the caches alone
        self.generation = 0
        self.bridge: IBridgeRoutes = BridgeRoutesInMemory(self)
        self.routes.bridge_index = self._bridge_index
        self.handlers: dict[str, IRequestHandler] = {}
        #: message class -> dispatch() of a registered handler that is an IKsyncDispatcher
        self._direct: dict[type, Callable[[Any], KsyncReply]] = {}
        #: ksync requests handled and refused per message name (exported as metrics);
        #: the direct handlers count per class, named when read (see ``ksync_counts``)
        self.request_counts: dict[str, int] = {}
        self.error_counts: dict[str, int] = {}
        self.direct_counts: dict[type, int] = {}
        #: the vr_flow_req handler when it takes FLOW_SETs from their values
        self._flow_values: Any = None
        builtin: dict[str, Callable[[Any], Reply]] = {
            "vr_interface_req": self._interface,
            "vr_nexthop_req": self._nexthop,
            "vr_route_req": self._route,
            "vr_mpls_req": self._mpls,
            "vr_vxlan_req": self._vxlan,
            "vr_mirror_req": self._mirror,
            "vr_vrf_assign_req": self._vrf_assign,
            "vr_vrf_req": self._vrf,
            "vr_vrf_stats_req": self._vrf_stats,
            "vr_drop_stats_req": self._drop_stats,
            "vrouter_ops": self._vrouter_ops,
            "vr_mem_stats_req": self._mem_stats,
            "vr_pkt_drop_log_req": self._pkt_drop_log,
            "vr_info_req": self._info,
            "vr_qos_map_req": self._qos_map,
            "vr_fc_map_req": self._fc_map,
            "vr_hugepage_config": self._hugepage,
        }
        for name, method in builtin.items():
            self.handlers[name] = _Method(method)

    # -- seams ---------------------------------------------------------------------

    def register(self, name: str, handler: IRequestHandler) -> None:
        if name not in SPECS_BY_NAME:
            raise KeyError(f"no Sandesh message named {name!r}")
        self.handlers[name] = handler
        self.generation += 1
        cls = SPECS_BY_NAME[name].cls
        if IKsyncDispatcher.providedBy(handler):
            self._direct[cls] = handler.dispatch  # answers the ksync server itself
        else:
            self._direct.pop(cls, None)
        if cls is _FLOW_REQ:
            direct = IKsyncDispatcher.providedBy(handler)
            self._flow_values = handler if direct and IFlowSetValues.providedBy(handler) else None
        self._log.info("datapath: {name} answered by {handler!r}", name=name, handler=handler)

    def register_bridge(self, handler: IBridgeRoutes) -> None:
        self.bridge = handler
        self.generation += 1

    def add_usage_source(self, source: UsageSource) -> None:
        """Add used-entry counters (``vo_flow_used_entries`` ...) to vrouter_ops GET."""
        self.usage_sources.append(source)

    def _bridge_index(self, vrf: int, mac: bytes) -> int | None:
        return self.bridge.index_of(vrf, mac)

    # -- replies -------------------------------------------------------------------

    @staticmethod
    def response(code: int) -> Any:
        return schema.vr_response(h_op=C.OP_RESPONSE, resp_code=code)

    def dump_reply(self, objects: Iterable[Any]) -> Reply:
        """A DUMP reply over ``objects`` (every object after the marker, in key order)."""
        return DumpReply(objects)

    def page(self, objects: Iterator[Any]) -> Reply:
        """One dump page: as many objects as fit in 3968 bytes, bit 30 if more remain."""
        page: list[Any] = []
        size = 0
        more = False
        for obj in objects:
            length = len(encode(obj))
            if size + length > C.DUMP_PAGE_SIZE:
                more = True
                break
            page.append(obj)
            size += length
        code = len(page) | (C.DUMP_INCOMPLETE if more else 0)
        reply: Reply = [[self.response(code)]]
        if page:
            reply.append(page)
        return reply

    def _get_reply(self, name: str, fields: Fields) -> Reply:
        return [[self.response(0), make(name, fields)]]

    def _answer(self, request: Any) -> Reply:
        if request.__class__ is not _FLOW_REQ:
            self.generation += 1
        spec = SPECS_BY_CLASS.get(type(request))
        name = spec.name if spec is not None else "unknown"
        counts = self.request_counts
        counts[name] = counts.get(name, 0) + 1
        handler = self.handlers.get(name)
        if handler is None:
            self._count_error(name)
            return [[self.response(-errno.EOPNOTSUPP)]]
        try:
            return handler.handle(request)
        except TableError as e:
            self._count_error(name)
            return [[self.response(e.resp_code)]]

    def _count_error(self, name: str) -> None:
        self.error_counts[name] = self.error_counts.get(name, 0) + 1

    def handle(self, request: Any) -> Reply:
        """The reply as transport messages, dumps paged (first page only)."""
        reply = self._answer(request)
        if isinstance(reply, DumpReply):
            return self.page(reply.objects)
        return reply

    def dispatch(self, request: Any) -> KsyncReply:
        """:class:`IKsyncDispatcher`: the same answer for the ksync server to frame."""
        direct = self._direct.get(request.__class__)
        if direct is not None:
            if request.__class__ is not _FLOW_REQ:
                self.generation += 1
            counts = self.direct_counts
            counts[request.__class__] = counts.get(request.__class__, 0) + 1
            try:
                return direct(request)
            except TableError as e:
                self._count_error(SPECS_BY_CLASS[request.__class__].name)
                return KsyncReply(code=e.resp_code)
        reply = self._answer(request)
        if isinstance(reply, DumpReply):
            return KsyncReply(code=0, objects=reply.objects, dump=True)
        first = reply[0]
        objects = [obj for message in reply for obj in message][1:]
        return KsyncReply(code=int(first[0].resp_code), objects=objects)

    def flow_set_reader(self) -> Any:
        """:class:`IFlowSetValues`: the FLOW_SET handler's reader, if it has one."""
        handler = self._flow_values
        return None if handler is None else handler.flow_set_reader()

    def flow_sets_at(
        self,
        values: tuple[int, ...],
        start: int,
        out: list[tuple[int, int]],
        taken: Callable[[], None] | None = None,
    ) -> int:
        """:class:`IFlowSetValues`: the FLOW_SET handler's, each request it takes
        counted as ``dispatch`` counts it (and, as there, the generation left alone)."""
        handler = self._flow_values
        if handler is None:
            return start
        before = len(out)
        try:
            stop: int = handler.flow_sets_at(values, start, out, taken)
        finally:
            done = len(out) - before
            if done:
                counts = self.direct_counts
                counts[_FLOW_REQ] = counts.get(_FLOW_REQ, 0) + done
        return stop

    def ksync_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(requests, errors) per message name, for the metrics collectors."""
        out = dict(self.request_counts)
        for cls, n in self.direct_counts.items():
            spec = SPECS_BY_CLASS.get(cls)
            name = spec.name if spec is not None else "unknown"
            out[name] = out.get(name, 0) + n
        return out, dict(self.error_counts)

    # -- per message -----------------------------------------------------------------

    def _interface(self, msg: Any) -> Reply:
        req = fields_of(msg)
        op = req["h_op"]
        tables = self.tables
        if op == C.OP_ADD:
            tables.interface_add(req)
        elif op == C.OP_DEL:
            tables.interface_del(req)
        elif op == C.OP_GET:
            vif = tables.interface_get(req)
            core = int(req["vifr_core"])
            reply = [
                self.response(0),
                make("vr_interface_req", vif.to_fields(core, self.config.cores)),
            ]
            if int(req["vifr_flags"]) & C.VIF_FLAG_GET_DROP_STATS:
                stats = tables.drop_stats_fields(core, vif)
                reply.append(make("vr_drop_stats_req", stats))
            return [reply]
        elif op == C.OP_DUMP:
            core = int(req["vifr_core"])
            with_drops = bool(int(req["vifr_flags"]) & C.VIF_FLAG_GET_DROP_STATS)

            def objects() -> Iterator[Any]:
                for vif in tables.interface_dump(int(req["vifr_marker"])):
                    yield make("vr_interface_req", vif.to_fields(core, self.config.cores))
                    if with_drops:
                        yield make("vr_drop_stats_req", tables.drop_stats_fields(core, vif))

            return self.dump_reply(objects())
        else:
            raise TableError(errno.EOPNOTSUPP, f"vif op {op}")
        return [[self.response(0)]]

    def _nexthop(self, msg: Any) -> Reply:
        req = fields_of(msg)
        op = req["h_op"]
        if op == C.OP_ADD:
            self.tables.nexthop_add(req)
        elif op == C.OP_DEL:
            self.tables.nexthop_del(req)
        elif op == C.OP_GET:
            return self._get_reply("vr_nexthop_req", self.tables.nexthop_get(req).to_fields())
        elif op == C.OP_DUMP:
            return self.dump_reply(
                make("vr_nexthop_req", nh.to_fields())
                for nh in self.tables.nexthop_dump(int(req["nhr_marker"]))
            )
        else:
            raise TableError(errno.EOPNOTSUPP, f"nexthop op {op}")
        return [[self.response(0)]]

    def _route(self, msg: Any) -> Reply:
        family = int(msg.rtr_family)
        if family == C.AF_BRIDGE:
            return self.bridge.handle(msg)
        req = fields_of(msg)
        op = req["h_op"]
        if family not in (C.AF_INET, C.AF_INET6):
            code = errno.EINVAL if op == C.OP_GET else errno.ENOENT
            raise TableError(code, f"route family {family}")
        if op == C.OP_ADD:
            self.routes.add(req)
        elif op == C.OP_DEL:
            self.routes.delete(req)
        elif op == C.OP_GET:
            return self._get_reply("vr_route_req", self.routes.get(req))
        elif op == C.OP_DUMP:
            return self.dump_reply(make("vr_route_req", f) for f in self.routes.dump(req))
        else:
            raise TableError(errno.EOPNOTSUPP, f"route op {op}")
        return [[self.response(0)]]

    def _simple(
        self,
        msg: Any,
        name: str,
        marker: str,
        add: Callable[[Fields], None],
        delete: Callable[[Fields], None],
        get: Callable[[Fields], Fields],
        dump: Callable[[int], Iterator[Fields]],
    ) -> Reply:
        req = fields_of(msg)
        op = req["h_op"]
        if op == C.OP_ADD:
            add(req)
        elif op == C.OP_DEL:
            delete(req)
        elif op == C.OP_GET:
            return self._get_reply(name, get(req))
        elif op == C.OP_DUMP:
            return self.dump_reply(make(name, f) for f in dump(int(req[marker])))
        else:
            raise TableError(errno.EOPNOTSUPP, f"{name} op {op}")
        return [[self.response(0)]]

    def _mpls(self, msg: Any) -> Reply:
        t = self.tables
        return self._simple(
            msg, "vr_mpls_req", "mr_marker", t.mpls_add, t.mpls_del, t.mpls_get, t.mpls_dump
        )

    def _vxlan(self, msg: Any) -> Reply:
        t = self.tables
        # the VNID itself is the dump marker, starting at 0
        if int(msg.h_op) == C.OP_DUMP:
            first = int(msg.vxlanr_vnid)
            return self.dump_reply(
                make("vr_vxlan_req", f) for f in t.vxlan_dump(first if first else -1)
            )
        return self._simple(
            msg, "vr_vxlan_req", "vxlanr_vnid", t.vxlan_add, t.vxlan_del, t.vxlan_get, t.vxlan_dump
        )

    def _mirror(self, msg: Any) -> Reply:
        t = self.tables
        return self._simple(
            msg,
            "vr_mirror_req",
            "mirr_marker",
            t.mirror_add,
            t.mirror_del,
            t.mirror_get,
            t.mirror_dump,
        )

    def _vrf(self, msg: Any) -> Reply:
        t = self.tables
        return self._simple(
            msg, "vr_vrf_req", "vrf_marker", t.vrf_add, t.vrf_del, t.vrf_get, t.vrf_dump
        )

    def _qos_map(self, msg: Any) -> Reply:
        t = self.tables
        return self._simple(
            msg,
            "vr_qos_map_req",
            "qmr_marker",
            t.qos_map_add,
            t.qos_map_del,
            t.qos_map_get,
            t.qos_map_dump,
        )

    def _fc_map(self, msg: Any) -> Reply:
        t = self.tables
        return self._simple(
            msg,
            "vr_fc_map_req",
            "fmr_marker",
            t.fc_map_add,
            t.fc_map_del,
            t.fc_map_get,
            t.fc_map_dump,
        )

    def _vrf_assign(self, msg: Any) -> Reply:
        req = fields_of(msg)
        op = req["h_op"]
        if op in (C.OP_ADD, C.OP_DEL):
            self.tables.vrf_assign_set(req, delete=op == C.OP_DEL)
            return [[self.response(0)]]
        if op == C.OP_GET:
            return self._get_reply("vr_vrf_assign_req", self.tables.vrf_assign_get(req))
        if op == C.OP_DUMP:
            return self.dump_reply(
                make("vr_vrf_assign_req", f) for f in self.tables.vrf_assign_dump(req)
            )
        raise TableError(errno.EINVAL, f"vrf assign op {op}")

    def _vrf_stats_fields(self, vrf: int, family: int, stype: int) -> Fields:
        return {"vsr_vrf": vrf, "vsr_family": family, "vsr_type": stype}

    def _vrf_stats(self, msg: Any) -> Reply:
        req = fields_of(msg)
        op = req["h_op"]
        family, stype = int(req["vsr_family"]), int(req["vsr_type"])
        if op == C.OP_GET:
            vrf = int(req["vsr_vrf"])
            if not 0 <= vrf < self.config.vrfs:
                raise TableError(errno.EINVAL, f"VRF {vrf} out of range")
            return self._get_reply("vr_vrf_stats_req", self._vrf_stats_fields(vrf, family, stype))
        if op == C.OP_DUMP:
            marker = int(req["vsr_marker"])
            known = set(self.routes.vrf_ids()) | set(self.tables.vrfs)
            known |= {v.vrf for v in self.tables.interfaces.values() if v.vrf >= 0}
            return self.dump_reply(
                make("vr_vrf_stats_req", self._vrf_stats_fields(vrf, family, stype))
                for vrf in sorted(known)
                if vrf > marker and vrf < self.config.vrfs
            )
        raise TableError(errno.EOPNOTSUPP, f"vrf stats op {op}")

    def _drop_stats(self, msg: Any) -> Reply:
        op = int(msg.h_op)
        core = int(msg.vds_core)
        if op == C.OP_RESET:
            self.tables.drop_stats.clear()
            for vif in self.tables.interfaces.values():
                vif.drops.clear()
            return [[self.response(0)]]
        if op == C.OP_GET:
            if not 0 <= core <= self.config.cores:
                raise TableError(errno.EINVAL, f"core {core} out of range")
            return self._get_reply("vr_drop_stats_req", self.tables.drop_stats_fields(core))
        raise TableError(errno.EOPNOTSUPP, f"drop stats op {op}")

    def ops_fields(self) -> Fields:
        cfg = self.config
        out: Fields = {
            "vo_interfaces": cfg.interfaces,
            "vo_vrfs": cfg.vrfs,
            "vo_nexthops": cfg.nexthops,
            "vo_mpls_labels": cfg.mpls_labels,
            "vo_bridge_entries": cfg.bridge_entries,
            "vo_oflow_bridge_entries": cfg.oflow_bridge_entries,
            "vo_flow_entries": cfg.flow_entries,
            "vo_oflow_entries": cfg.oflow_entries,
            "vo_mirror_entries": cfg.mirrors,
            "vo_build_info": BUILD_INFO,
            "vo_log_type_enable": list(self.log_types),
            "vo_vif_bridge_entries": 0,
            "vo_vif_oflow_bridge_entries": 0,
            "vo_memory_alloc_checks": 0,
        }
        out.update(self.ops)
        for source in self.usage_sources:
            out.update(source())
        return out

    def _vrouter_ops(self, msg: Any) -> Reply:
        req = fields_of(msg)
        op = req["h_op"]
        if op == C.OP_GET:
            return self._get_reply("vrouter_ops", self.ops_fields())
        if op == C.OP_ADD:
            for name in self.ops:
                value = int(req[name])
                # "don't change" is -1, which unsigned fields carry as all ones
                if value in (-1, 0xFF) and name in _BYTE_KNOBS:
                    continue
                if value in (-1, 0xFFFFFFFF):
                    continue
                self.ops[name] = value
            for t in req["vo_log_type_enable"] or []:
                if t not in self.log_types:
                    self.log_types.append(int(t))
            for t in req["vo_log_type_disable"] or []:
                if t in self.log_types:
                    self.log_types.remove(int(t))
            return [[self.response(0)]]
        if op == C.OP_RESET:
            self.soft_reset()
            return [[self.response(0)]]
        raise TableError(errno.EOPNOTSUPP, f"vrouter_ops op {op}")

    def soft_reset(self) -> None:
        """Empty every table (``vrouter_ops`` RESET), including registered ones."""
        self._log.info("datapath: soft reset")
        self.routes.reset()
        if isinstance(self.bridge, BridgeRoutesInMemory):
            self.bridge.reset()
        self.drop_log.clear()
        for hook in self.reset_hooks:
            hook()
        self.tables.reset()

    def _mem_stats(self, msg: Any) -> Reply:
        if int(msg.h_op) != C.OP_GET:
            raise TableError(errno.EOPNOTSUPP, "mem stats op")
        return self._get_reply("vr_mem_stats_req", {})

    def _pkt_drop_log(self, msg: Any) -> Reply:
        if int(msg.h_op) != C.OP_GET:
            raise TableError(errno.EOPNOTSUPP, "drop log op")
        core = int(msg.vdl_core)
        if not 0 <= core <= self.config.cores:
            raise TableError(errno.EINVAL, f"core {core} out of range")
        index = int(msg.vdl_log_idx)
        # vdl_core N is core N-1; 0 (the tool's "every core") starts at the first one
        page = self.drop_log.page(max(core - 1, 0), index)
        return self._get_reply(
            "vr_pkt_drop_log_req",
            {
                "vdl_core": core,
                "vdl_log_idx": index,
                "vdl_max_num_cores": self.config.cores,
                "vdl_pkt_droplog_max_bufsz": self.drop_log.bufsz,
                # buffer support (module parameter) and the runtime switch (sysctl)
                "vdl_pkt_droplog_en": self.ops["vo_pkt_droplog_buf_en"],
                "vdl_pkt_droplog_sysctl_en": self.ops["vo_pkt_droplog_en"],
                "vdl_pkt_droplog_arr": page,
            },
        )

    def _info(self, msg: Any) -> Reply:
        if int(msg.h_op) != C.OP_DUMP:
            return [[self.response(0)]]
        text = (
            f"vrtwist forwarding extension (pid {os.getpid()})\n"
            f"interfaces {len(self.tables.interfaces)}, next hops {len(self.tables.nexthops)}, "
            f"labels {len(self.tables.mpls)}, vnids {len(self.tables.vxlan)}\n"
        ).encode()
        return self.dump_reply([make("vr_info_req", {"vdu_proc_info": text})])

    def _hugepage(self, msg: Any) -> Reply:
        if int(msg.vhp_op) != C.OP_ADD:
            raise TableError(errno.EOPNOTSUPP, "hugepage op")
        return [[self.response(0), make("vr_hugepage_config", {"vhp_resp": 0})]]

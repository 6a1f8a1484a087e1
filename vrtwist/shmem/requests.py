"""ksync request handlers for the shared-memory tables, plugged into the datapath.

``vr_flow_req`` (FLOW_SET), ``vr_flow_table_data``, ``vr_bridge_table_data`` and
AF_BRIDGE ``vr_route_req`` are answered here; the datapath dispatcher routes them by
message name (``IDatapath.register`` / ``register_bridge``).  Replies follow docs/protocols/ksync.md:
one ``vr_response`` first, the object (if any) in the same transport message.
"""

from __future__ import annotations

import errno
import operator
import struct
from collections.abc import Callable, Iterator
from typing import Any

from zope.interface import implementer

from vrtwist.ksync.flowset import FlowSetValues
from vrtwist.ksync.interfaces import (
    IBridgeRoutes,
    IDatapath,
    IFlowSetValues,
    IKsyncDispatcher,
    IRequestHandler,
    KsyncReply,
)
from vrtwist.logfields import Logger
from vrtwist.sandesh import SPECS_BY_NAME, encode, schema
from vrtwist.sandesh.constants import ADD as _OP_ADD
from vrtwist.sandesh.constants import DEL as _OP_DEL
from vrtwist.sandesh.constants import DUMP as _OP_DUMP
from vrtwist.sandesh.constants import GET as _OP_GET
from vrtwist.sandesh.constants import RESPONSE as _OP_RESPONSE
from vrtwist.shmem import layout as L
from vrtwist.shmem.bridgetable import BridgeTable
from vrtwist.shmem.entries import BridgeEntry
from vrtwist.shmem.flowtable import LINKED_FIELDS, FlowSetResult, FlowTable

__all__ = ["BridgeRoutes", "BridgeTableData", "FlowRequests", "FlowTableData", "make"]

Reply = list[list[Any]]


def make(name: str, fields: dict[str, Any]) -> Any:
    """A Sandesh object from a dict (unknown keys dropped, bytes become list<byte>)."""
    spec = SPECS_BY_NAME[name]
    known = {f.name for f in spec.fields}
    values = {
        k: (list(v) if isinstance(v, (bytes, bytearray)) else v)
        for k, v in fields.items()
        if k in known
    }
    return spec.cls(**values)


_RESPONSE = schema.vr_response
_FLOW_RESPONSE = schema.vr_flow_response


_RESPONSES: dict[int, Any] = {}


def _response(code: int) -> Any:
    """A vr_response; the few distinct codes are built once (readers never mutate replies)."""
    r = _RESPONSES.get(code)
    if r is None:
        r = _RESPONSE(h_op=_OP_RESPONSE, resp_code=code)
        if len(_RESPONSES) < 256:
            _RESPONSES[code] = r
    return r


def _fresp_encoder() -> Any:
    """``(flags, index, bytes, packets, stats_oflow, gen_id) -> bytes`` for a vr_flow_response
    with op and rid 0, byte for byte what the Sandesh encoder writes; None if the layout
    assumed here does not match the codec (then the generic encoder is used)."""
    one = _FLOW_RESPONSE(
        fresp_op=0,
        fresp_rid=0,
        fresp_flags=0x1234,
        fresp_index=0x89ABCDEF,
        fresp_bytes=0x01020304,
        fresp_packets=0x05060708,
        fresp_stats_oflow=0x090A0B0C,
        fresp_gen_id=0xA5,
    )
    ref = encode(one)
    # name header, op (i32 0), rid (u16 0), then flags, index, bytes, packets, oflow, gen, STOP
    cut = len(ref) - (2 + 4 * 7 + 3 + 1 + 1)
    prefix = ref[:cut]
    s = struct.Struct(">H3sI3sI3sI3sI3sBB")
    h4, h5, h6, h7, h8 = [ref[cut + 2 + i * 7 : cut + 5 + i * 7] for i in range(5)]
    pack = s.pack

    def enc(flags: int, index: int, nbytes: int, packets: int, oflow: int, gen: int) -> bytes:
        return prefix + pack(flags, h4, index, h5, nbytes, h6, packets, h7, oflow, h8, gen, 0)

    try:
        ok = enc(0x1234, 0x89ABCDEF, 0x01020304, 0x05060708, 0x090A0B0C, 0xA5) == ref
    except struct.error:
        ok = False
    return enc if ok else None


_ENCODE_FRESP = _fresp_encoder()


class _Getters(list[Any]):
    """``self[k]``: request ``k``'s values of a reader's tuple, in ``LINKED_FIELDS``'s
    order (one C call, no slice), made as longer bunches come."""

    def __init__(self, reader: FlowSetValues) -> None:
        super().__init__()
        where = {name: i for i, name in enumerate(reader.names)}
        self.width = reader.width
        self.places = [where[name] for name in LINKED_FIELDS]

    def upto(self, count: int) -> _Getters:
        """Itself, with a getter for each of ``count`` requests."""
        while len(self) < count:
            base = len(self) * self.width
            self.append(operator.itemgetter(*(base + p for p in self.places)))
        return self


def _linked_reader() -> tuple[FlowSetValues, _Getters] | None:
    """The reader of ``LINKED_FIELDS`` and the getters that put each request's values
    in that order; None when the codec's FLOW_SET has no fixed layout."""
    try:
        reader = FlowSetValues(LINKED_FIELDS)
    except ValueError:
        return None
    return reader, _Getters(reader)


_LINKED_READER = _linked_reader()


@implementer(IRequestHandler, IKsyncDispatcher, IFlowSetValues)
class FlowRequests:
    """``vr_flow_req``: FLOW_SET only; the reply is vr_response + vr_flow_response, always.

    As an ``IKsyncDispatcher`` it answers the ksync server directly with the
    vr_flow_response already encoded (no response object per request): FLOW_SET is the
    agent's hot path. As an ``IFlowSetValues`` it takes the two requests of the agent's
    flow pair from their values alone (``FlowTable.flow_sets_values``).
    """

    _log = Logger()

    def __init__(self, flows: FlowTable) -> None:
        self.flows = flows
        self._reader: FlowSetValues | None = None
        if _LINKED_READER is not None and hasattr(flows, "flow_sets_values"):
            self._reader = _LINKED_READER[0]

    def flow_set_reader(self) -> FlowSetValues | None:
        """The reader of ``LINKED_FIELDS`` (None: the codec's FLOW_SET has no layout, or
        the table takes no values)."""
        return self._reader

    def flow_sets_at(
        self,
        values: tuple[int, ...],
        start: int,
        out: list[tuple[int, int]],
        taken: Callable[[], None] | None = None,
    ) -> int:
        """``IFlowSetValues``: ``FlowTable.flow_sets_values``."""
        if self._reader is None or _LINKED_READER is None:
            return start
        width = self._reader.width
        getters = _LINKED_READER[1].upto(len(values) // width)
        return self.flows.flow_sets_values(getters, width, values, start, out, taken)

    def handle(self, request: Any) -> Reply:
        op = int(getattr(request, "fr_op", 0) or 0)
        if op != 0:
            resp = {
                "fresp_op": op,
                "fresp_index": int(getattr(request, "fr_index", 0)) & 0xFFFFFFFF,
            }
            return [[_response(-errno.EINVAL), make("vr_flow_response", resp)]]
        r = self.flows.flow_set(request)
        return self._reply(r, op)

    def dispatch(self, request: Any) -> KsyncReply:
        """The same reply as :meth:`handle`, the vr_flow_response pre-encoded when possible."""
        if getattr(request, "fr_op", 0) or _ENCODE_FRESP is None:
            reply = self.handle(request)[0]
            return KsyncReply(int(reply[0].resp_code), reply[1:])
        r = self.flows.flow_set(request)
        try:
            raw = _ENCODE_FRESP(
                r.flags, r.index & 0xFFFFFFFF, r.bytes, r.packets, r.stats_oflow, r.gen_id
            )
        except struct.error:  # a field out of its wire range: let the codec say why
            reply = self._reply(r, 0)[0]
            return KsyncReply(r.errno, reply[1:])
        return KsyncReply(r.errno, (), False, raw)

    def _reply(self, r: FlowSetResult, op: int) -> Reply:
        return [
            [
                _response(r.errno),
                _FLOW_RESPONSE(
                    fresp_op=op,
                    fresp_rid=0,
                    fresp_flags=r.flags,
                    fresp_index=r.index & 0xFFFFFFFF,
                    fresp_bytes=r.bytes,
                    fresp_packets=r.packets,
                    fresp_stats_oflow=r.stats_oflow,
                    fresp_gen_id=r.gen_id,
                ),
            ]
        ]


@implementer(IRequestHandler)
class FlowTableData:
    """``vr_flow_table_data``: path, size and counters (the op is not checked, as in the vRouter)."""

    def __init__(self, flows: FlowTable) -> None:
        self.flows = flows

    def handle(self, request: Any) -> Reply:
        op = int(getattr(request, "ftable_op", 2) or 0)
        return [[_response(0), make("vr_flow_table_data", self.flows.table_data(op))]]


@implementer(IRequestHandler)
class BridgeTableData:
    """``vr_bridge_table_data`` GET: size and path of ``bridge.shmem``; other ops -EINVAL."""

    def __init__(self, bridge: BridgeTable) -> None:
        self.bridge = bridge

    def handle(self, request: Any) -> Reply:
        op = int(getattr(request, "btable_op", 0) or 0)
        if op != _OP_GET:
            return [[_response(-errno.EINVAL)]]
        fields = {
            "btable_op": op,
            "btable_rid": 0,
            "btable_size": self.bridge.size,
            "btable_dev": 0,
            "btable_file_path": self.bridge.path,
        }
        return [[_response(0), make("vr_bridge_table_data", fields)]]


def _mac(value: Any) -> bytes:
    return bytes(int(v) & 0xFF for v in (value or []))


@implementer(IBridgeRoutes)
class BridgeRoutes:
    """AF_BRIDGE ``vr_route_req`` over the shared bridge table, with next-hop references."""

    _log = Logger()

    def __init__(self, bridge: BridgeTable, datapath: IDatapath) -> None:
        self.bridge = bridge
        self.datapath = datapath
        bridge.nexthop_exists = lambda nh_id: datapath.tables.get_nexthop(nh_id) is not None

    def index_of(self, vrf: int, mac: bytes) -> int | None:
        idx = self.bridge.lookup(vrf, bytes(mac))
        return idx if idx >= 0 else None

    def learn(self, vrf: int, mac: bytes, nh_id: int) -> int:
        """A learnt MAC: a MAC_NEW entry holding a reference on ``nh_id``; -1 if full."""
        tables = self.datapath.tables
        if tables.get_nexthop(nh_id) is None:
            return -1
        code, idx = self.bridge.add(vrf, mac, nh_id, learned=True)
        if code:
            return -1
        tables.hold_nexthop(nh_id)
        return idx

    def mark_moved(self, vrf: int, mac: bytes) -> None:
        idx = self.bridge.lookup(vrf, mac)
        if idx >= 0:
            self.bridge.set_flags(idx, L.BE_MAC_MOVED)

    def _route(self, e: BridgeEntry) -> Any:
        return make(
            "vr_route_req",
            {
                "h_op": 0,
                "rtr_family": L.AF_BRIDGE,
                "rtr_vrf_id": e.vrf,
                "rtr_mac": e.mac,
                "rtr_nh_id": e.nh_id,
                "rtr_label": e.label,
                "rtr_label_flags": e.flags,
                "rtr_index": e.index,
            },
        )

    def handle(self, request: Any) -> Reply:
        dp = self.datapath
        op = int(getattr(request, "h_op", 0))
        vrf = int(getattr(request, "rtr_vrf_id", 0))
        mac = _mac(getattr(request, "rtr_mac", None))
        if op == _OP_DUMP:
            if mac and len(mac) != 6:
                return [[_response(-errno.EINVAL)]]
            return dp.dump_reply(self._dump(vrf, mac or bytes(6)))
        if not 0 <= vrf < dp.config.vrfs:
            return [[_response(-errno.EINVAL)]]
        if op == _OP_ADD:
            return self._add(request, vrf, mac)
        if op == _OP_DEL:
            return self._delete(vrf, mac)
        if op == _OP_GET:
            index = int(getattr(request, "rtr_index", -1))
            index = -1 if index in (-1, L.INVALID_INDEX) else index
            found = self.bridge.get(vrf, mac if len(mac) == 6 else None, index)
            if found is None or not found.valid:
                return [[_response(-errno.ENOENT)]]
            return [[_response(0), self._route(found)]]
        return [[_response(-errno.EOPNOTSUPP)]]

    def _add(self, request: Any, vrf: int, mac: bytes) -> Reply:
        """Add or change a MAC route; the next hop references follow the change."""
        tables = self.datapath.tables
        if len(mac) != 6 or mac == bytes(6):
            return [[_response(-errno.EINVAL)]]
        nh_id = int(getattr(request, "rtr_nh_id", 0))
        if tables.get_nexthop(nh_id) is None:
            return [[_response(-errno.ENOENT)]]
        old = self.bridge.get(vrf, mac)
        code, _idx = self.bridge.add(
            vrf,
            mac,
            nh_id,
            int(getattr(request, "rtr_label", 0)) & 0xFFFFFFFF,
            int(getattr(request, "rtr_label_flags", 0)) & 0xFFFF,
        )
        if code == 0 and (old is None or old.nh_id != nh_id):
            tables.hold_nexthop(nh_id)
            if old is not None:
                tables.release_nexthop(tables.get_nexthop(old.nh_id))
        return [[_response(code)]]

    def _delete(self, vrf: int, mac: bytes) -> Reply:
        tables = self.datapath.tables
        if len(mac) != 6:
            return [[_response(-errno.EINVAL)]]
        old = self.bridge.get(vrf, mac)
        code = self.bridge.delete(vrf, mac)
        if code == 0 and old is not None:
            tables.release_nexthop(tables.get_nexthop(old.nh_id))
        return [[_response(code)]]

    def _dump(self, vrf: int, marker: bytes) -> Iterator[Any]:
        for e in self.bridge.dump(vrf, marker):
            yield self._route(e)

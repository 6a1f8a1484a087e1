"""An in-memory ``IKsyncDispatcher`` for tests of anything that speaks ksync.

``MemoryDispatcher`` keeps objects per message type under their key field and answers
ADD/GET/DEL/DUMP the way the vRouter's handlers do in shape (vr_response codes, GET
object, dump order and markers), without any of the tables' semantics (no reference
checks, no longest-prefix match). The real dispatcher lives in ``vrtwist.datapath``.
"""

from __future__ import annotations

import bisect
import errno
from collections.abc import Callable, Iterator
from typing import Any

from zope.interface import implementer

from vrtwist.ksync.interfaces import IKsyncDispatcher, KsyncReply
from vrtwist.sandesh import schema
from vrtwist.sandesh.constants import (
    ADD,
    DEL,
    DUMP,
    FLOW_SET,
    GET,
    RESET,
    VR_DEF_BRIDGE_ENTRIES,
    VR_DEF_FLOW_ENTRIES,
    VR_DEF_INTERFACES,
    VR_DEF_LABELS,
    VR_DEF_MIRROR_ENTRIES,
    VR_DEF_NEXTHOPS,
    VR_DEF_VRFS,
)

__all__ = ["MemoryDispatcher", "object_key"]

_KEYS: dict[str, Callable[[Any], Any]] = {
    "vr_interface_req": lambda m: m.vifr_idx,
    "vr_nexthop_req": lambda m: m.nhr_id,
    "vr_mpls_req": lambda m: m.mr_label,
    "vr_mirror_req": lambda m: m.mirr_index,
    "vr_vxlan_req": lambda m: m.vxlanr_vnid,
    "vr_vrf_req": lambda m: m.vrf_idx,
    "vr_vrf_assign_req": lambda m: (m.var_vif_index, m.var_vlan_id),
    "vr_qos_map_req": lambda m: m.qmr_id,
    "vr_route_req": lambda m: (
        m.rtr_vrf_id,
        m.rtr_family,
        tuple(m.rtr_prefix),
        m.rtr_prefix_len,
        tuple(m.rtr_mac),
    ),
}

_MARKER_ABOVE: dict[str, Callable[[Any, Any], bool]] = {
    "vr_interface_req": lambda req, m: m.vifr_idx > req.vifr_marker,
    "vr_nexthop_req": lambda req, m: m.nhr_id > req.nhr_marker,
    "vr_mpls_req": lambda req, m: m.mr_label > req.mr_marker,
    "vr_mirror_req": lambda req, m: m.mirr_index > req.mirr_marker,
    "vr_vxlan_req": lambda req, m: m.vxlanr_vnid > req.vxlanr_vnid,
    "vr_vrf_req": lambda req, m: m.vrf_idx > req.vrf_marker,
    "vr_vrf_assign_req": lambda req, m: (
        m.var_vif_index == req.var_vif_index and m.var_vlan_id > req.var_marker
    ),
    "vr_qos_map_req": lambda req, m: m.qmr_id > req.qmr_marker,
    "vr_route_req": lambda req, m: (
        m.rtr_vrf_id == req.rtr_vrf_id
        and m.rtr_family == req.rtr_family
        and (tuple(m.rtr_prefix), m.rtr_prefix_len, tuple(m.rtr_mac))
        > (tuple(req.rtr_marker), req.rtr_marker_plen if req.rtr_marker else -1, ())
    ),
}


#: Integer-keyed tables: the request field holding the dump marker (objects with a larger
#: key follow). Looked up with bisect so paging through a big table stays linear.
_INT_MARKER = {
    "vr_interface_req": "vifr_marker",
    "vr_nexthop_req": "nhr_marker",
    "vr_mpls_req": "mr_marker",
    "vr_mirror_req": "mirr_marker",
    "vr_vxlan_req": "vxlanr_vnid",
    "vr_vrf_req": "vrf_marker",
    "vr_qos_map_req": "qmr_marker",
}


def object_key(msg: Any) -> Any:
    """The key a table stores ``msg`` under."""
    return _KEYS[type(msg).__name__](msg)


@implementer(IKsyncDispatcher)
class MemoryDispatcher:
    """Dictionary-backed tables answering ksync requests (a test double)."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[Any, Any]] = {name: {} for name in _KEYS}
        self._sorted: dict[str, list[Any]] = {}
        self.requests: list[Any] = []
        self.next_flow_index = 0

    def dispatch(self, request: Any) -> KsyncReply:
        self.requests.append(request)
        name = type(request).__name__
        if name == "vr_flow_req":
            return self._flow(request)
        if name == "vrouter_ops":
            return self._vrouter_ops(request)
        table = self.tables.get(name)
        if table is None:
            return KsyncReply(-errno.EOPNOTSUPP)
        op = request.h_op
        if op == ADD:
            stored = type(request)(**vars(request))
            stored.h_op = 0
            key = object_key(stored)
            if key not in table:
                self._sorted.pop(name, None)
            table[key] = stored
            return KsyncReply(0)
        if op == GET:
            obj = table.get(object_key(request))
            return KsyncReply(0, [obj]) if obj is not None else KsyncReply(-errno.ENOENT)
        if op == DEL:
            return (
                KsyncReply(0) if table.pop(object_key(request), None) else KsyncReply(-errno.ENOENT)
            )
        if op == DUMP:
            return KsyncReply(0, self._dump(name, table, request), dump=True)
        return KsyncReply(-errno.EINVAL)

    def _dump(self, name: str, table: dict[Any, Any], req: Any) -> Iterator[Any]:
        keys = self._sorted.get(name)
        if keys is None:
            keys = self._sorted[name] = sorted(table)
        marker = _INT_MARKER.get(name)
        if marker is not None:
            for key in keys[bisect.bisect_right(keys, getattr(req, marker)) :]:
                yield table[key]
            return
        above = _MARKER_ABOVE[name]
        for key in keys:
            obj = table[key]
            if above(req, obj):
                yield obj

    def _flow(self, req: Any) -> KsyncReply:
        if req.fr_op != FLOW_SET:
            return KsyncReply(-errno.EINVAL)
        index = req.fr_index
        if index < 0:
            index = self.next_flow_index
            self.next_flow_index += 1
        resp = schema.vr_flow_response(
            fresp_op=FLOW_SET, fresp_index=index, fresp_gen_id=req.fr_gen_id
        )
        return KsyncReply(0, [resp])

    def _vrouter_ops(self, req: Any) -> KsyncReply:
        if req.h_op in (ADD, RESET):
            return KsyncReply(0)
        if req.h_op != GET:
            return KsyncReply(-errno.EOPNOTSUPP)
        ops = schema.vrouter_ops(
            vo_mpls_labels=VR_DEF_LABELS,
            vo_nexthops=VR_DEF_NEXTHOPS,
            vo_bridge_entries=VR_DEF_BRIDGE_ENTRIES,
            vo_flow_entries=VR_DEF_FLOW_ENTRIES,
            vo_interfaces=VR_DEF_INTERFACES,
            vo_mirror_entries=VR_DEF_MIRROR_ENTRIES,
            vo_vrfs=VR_DEF_VRFS,
            vo_build_info='{"build-info": [{"build-version": "vrtwist"}]}',
        )
        return KsyncReply(0, [ops])

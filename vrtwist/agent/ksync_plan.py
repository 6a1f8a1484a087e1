"""The ksync planner: desired state and the datapath's state in, ordered requests out.

Pure functions and data, no I/O and no Twisted: :func:`plan` turns the keys that
changed into (order, op, key, name, fields) tuples - deletes of routes, bridge entries,
labels, next hops, interfaces first, then adds the other way round - and the helpers
read dumped Sandesh objects into the model's keys, decide what the agent owns, and
build the ADD and DEL requests (a route DEL names its covering route, see
:func:`covering_route`).  :mod:`vrtwist.agent.ksync_sync` sends what this plans.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias

from vrtwist.agent.dpstate import (
    FIRST_LABEL,
    FIRST_VM_VIF,
    MIRROR,
    MPLS,
    NH,
    RANK,
    ROUTE,
    VIF,
    VXLAN,
    Adopted,
    Key,
)
from vrtwist.datapath import constants as C
from vrtwist.sandesh import SPECS_BY_NAME

#: One planned request: (order, "add" | "del", key, Sandesh name, fields).
Op: TypeAlias = tuple[int, str, Key, str, dict[str, Any]]
#: What is (or will be) in the datapath: key -> (Sandesh name, fields).
State: TypeAlias = dict[Key, tuple[str, dict[str, Any]]]

#: Fields compared to decide whether a dumped object still matches the desired one.
COMPARED = {
    "vr_interface_req": ("vifr_type", "vifr_name", "vifr_vrf", "vifr_mac", "vifr_nh_id",
                         "vifr_ip", "vifr_transport"),
    "vr_nexthop_req": ("nhr_type", "nhr_family", "nhr_vrf", "nhr_encap_oif_id", "nhr_encap",
                       "nhr_tun_dip"),
    "vr_mpls_req": ("mr_nhid",),
    "vr_vxlan_req": ("vxlanr_nhid",),
    "vr_mirror_req": ("mirr_nhid", "mirr_flags"),
    "vr_route_req": ("rtr_nh_id", "rtr_label"),
}
_KEY_FIELD = {"vr_interface_req": "vifr_idx", "vr_nexthop_req": "nhr_id",
              "vr_mpls_req": "mr_label", "vr_vxlan_req": "vxlanr_vnid",
              "vr_mirror_req": "mirr_index", "vr_route_req": None}
_OP_FIELD = "h_op"


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
    if name == "vr_mirror_req":
        return (MIRROR, int(obj.mirr_index))
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
    if kind == MIRROR:
        return True
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


def plan(dirty: Iterable[Key], desired: State, applied: State, *, retained: set[Key],
         errors: dict[Key, str], fabric: Key) -> list[Op]:
    """The requests that bring ``applied`` to ``desired`` for the ``dirty`` keys, in order.

    A key wanted and absent is added; present and not wanted is deleted (unless the
    previous agent learnt it and it is ``retained``); present and different (or failed
    before, in ``errors``) is added again over it - after a delete when a next hop
    changes type.  The ``fabric`` vif is never touched once present.
    """
    ops: list[Op] = []
    for key in dirty:
        want = desired.get(key)
        have = applied.get(key)
        rank = rank_of(key)
        if want is None:
            if have is not None and key not in retained:
                ops.append((5 - rank, "del", key, have[0], have[1]))
            continue
        name, fields = want
        if have is None:
            ops.append((6 + rank, "add", key, name, fields))
        elif key != fabric and (not matches(name, fields, have[1]) or key in errors):
            if key[0] == NH and int(have[1].get("nhr_type", -1)) != fields["nhr_type"]:
                ops.append((5 - rank, "del", key, have[0], have[1]))
            ops.append((6 + rank, "add", key, name, fields))
    try:
        # keys of one order are of one kind, so they compare as they are
        ops.sort(key=_op_order)
    except TypeError:
        ops.sort(key=lambda o: (o[0], _sort_key(o[2])))
    return ops


def note_route(route_lens: dict[tuple[int, int], set[int]], key: Key) -> None:
    """Remember the prefix length of an inet/inet6 route (where covering routes may be)."""
    if key[0] == ROUTE and key[1] != C.AF_BRIDGE:
        lens = route_lens.get((key[1], key[2]))
        if lens is None:
            lens = route_lens[(key[1], key[2])] = set()
        lens.add(key[4])


def covering_route(applied: State, route_lens: dict[tuple[int, int], set[int]],
                   key: Key) -> dict[str, Any] | None:
    """The fields of the longest applied route strictly shorter than the inet/inet6
    route ``key`` that contains it (what traffic falls back to when ``key`` goes)."""
    _, fam, vrf, raw, plen = key
    lens = route_lens.get((fam, vrf))
    if not lens:
        return None
    width = len(raw)
    bits = width * 8
    addr = int.from_bytes(raw, "big")
    for n in sorted((n for n in lens if n < plen), reverse=True):
        shift = bits - n
        hit = applied.get((ROUTE, fam, vrf, ((addr >> shift) << shift).to_bytes(
            width, "big"), n))
        if hit is not None:
            return hit[1]
    return None


def delete_request(name: str, key: Key, fields: dict[str, Any],
                   cover: dict[str, Any] | None) -> dict[str, Any]:
    """The fields of the DEL request for ``key``.  An inet/inet6 route delete carries
    the covering route ``cover`` (next hop, label, flags, stitched MAC,
    ``rtr_replace_plen``) as the real agent's does, so the vRouter writes it into the
    hole; with no covering route, the discard next hop and prefix length 0."""
    out = _identity(name, fields)
    if cover is not None:
        out["rtr_nh_id"] = int(cover["rtr_nh_id"])
        out["rtr_label"] = int(cover.get("rtr_label", 0))
        out["rtr_label_flags"] = int(cover.get("rtr_label_flags", 0))
        out["rtr_replace_plen"] = int(cover["rtr_prefix_len"])
        out["rtr_mac"] = list(_norm(cover.get("rtr_mac") or b""))
    return out


def _first_nh(nhs: dict[int, dict[str, Any]], **want: Any) -> int | None:
    return next((i for i, n in nhs.items()
                 if all(n[f] == v for f, v in want.items())), None)


def adoptions(present: State) -> list[tuple[str, Adopted]]:
    """What each VM interface found in a dump already has (ids the model may keep)."""
    nhs = {k[1]: f for k, (n, f) in present.items() if k[0] == NH}
    label_of = {f["mr_nhid"]: k[1] for k, (n, f) in present.items() if k[0] == MPLS}
    out = []
    for key, (_name, f) in present.items():
        if key[0] != VIF or key[1] < FIRST_VM_VIF:
            continue
        idx, vrf, l3 = key[1], int(f["vifr_vrf"]), int(f["vifr_nh_id"])
        l2 = next((i for i, n in nhs.items() if n["nhr_type"] == C.NH_ENCAP
                   and n["nhr_family"] == C.AF_BRIDGE
                   and list(n["nhr_encap_oif_id"])[:1] == [idx]), None)
        out.append((str(f["vifr_name"]), Adopted(
            vif=idx, vrf_id=vrf, l3_nh=l3, l2_nh=l2, label=label_of.get(l3),
            l2_label=label_of.get(l2) if l2 is not None else None,
            rcv_nh=_first_nh(nhs, nhr_type=C.NH_RCV, nhr_vrf=vrf),
            resolve_nh=_first_nh(nhs, nhr_type=C.NH_RESOLVE, nhr_vrf=vrf))))
    return out


def learnt(present: State) -> set[Key]:
    """What the controller taught the previous agent: tunnel next hops, and the routes
    and bridge entries (of VRFs other than the fabric's) through them."""
    tunnels = {k[1] for k, (_n, f) in present.items()
               if k[0] == NH and f.get("nhr_type") == C.NH_TUNNEL}
    return {k for k, (_n, f) in present.items()
            if (k[0] == NH and k[1] in tunnels)
            or (k[0] == ROUTE and k[2] >= 1 and int(f.get("rtr_nh_id", 0)) in tunnels)}


def mirrors(present: State) -> list[tuple[int, int, int, int, bytes]]:
    """(mirror index, next hop id, analyzer address as the next hop stores it, UDP port,
    MAC) of every mirror entry whose next hop is a plain UDP tunnel (an analyzer's)."""
    out = []
    for key, (_name, f) in present.items():
        if key[0] != MIRROR:
            continue
        nh = present.get((NH, int(f.get("mirr_nhid", -1))))
        if nh is None or nh[1].get("nhr_type") != C.NH_TUNNEL:
            continue
        nf = nh[1]
        flags = int(nf.get("nhr_flags", 0))
        if not flags & C.NH_FLAG_TUNNEL_UDP or flags & C.NH_FLAG_TUNNEL_UDP_MPLS:
            continue
        port = int.from_bytes((int(nf.get("nhr_tun_dport", 0)) & 0xFFFF).to_bytes(2, "little"),
                              "big")
        out.append((key[1], int(nf["nhr_id"]), int(nf.get("nhr_tun_dip", 0)), port,
                    bytes(list(nf.get("nhr_encap") or [])[:6])))
    return out


def tunnels(present: State) -> list[tuple[int, str, int, bytes]]:
    """(next hop id, encapsulation, destination as the next hop stores it, MAC) of every
    tunnel next hop with a known encapsulation."""
    out = []
    for key, (_name, f) in present.items():
        if key[0] == NH and f.get("nhr_type") == C.NH_TUNNEL:
            encap = _tunnel_encap(int(f.get("nhr_flags", 0)))
            if encap is not None:
                out.append((key[1], encap, int(f.get("nhr_tun_dip", 0)),
                            bytes(list(f.get("nhr_encap") or [])[:6])))
    return out

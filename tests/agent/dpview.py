"""Reading the datapath over ksync from a test (a separate session, as a utility would)."""

from __future__ import annotations

from typing import Any

from vrtwist.ksync.blocking import open_ksync
from vrtwist.sandesh import schema


def snapshot(run_dir: str, vrfs: range = range(1, 4)) -> dict[str, Any]:
    """vifs {idx: (name, vrf, nh)}, nhs {id: (type, family, vrf, oif)}, labels {label: nh},
    routes {(vrf, prefix bytes, plen): (nh, label)}, bridge {(vrf, mac): (nh, label)}."""
    with open_ksync(run_dir, timeout=10) as c:
        vifs = {o.vifr_idx: (o.vifr_name, o.vifr_vrf, o.vifr_nh_id)
                for o in c.dump(schema.vr_interface_req(vifr_marker=-1))}
        nhs = {o.nhr_id: (o.nhr_type, o.nhr_family, o.nhr_vrf, (o.nhr_encap_oif_id or [0])[0])
               for o in c.dump(schema.vr_nexthop_req(nhr_marker=-1))}
        labels = {o.mr_label: o.mr_nhid for o in c.dump(schema.vr_mpls_req(mr_marker=-1))}
        routes = {}
        bridge = {}
        for vrf in vrfs:
            for o in c.dump(schema.vr_route_req(rtr_vrf_id=vrf, rtr_family=2)):
                routes[(vrf, bytes(o.rtr_prefix), o.rtr_prefix_len)] = (o.rtr_nh_id,
                                                                          o.rtr_label)
            for o in c.dump(schema.vr_route_req(rtr_vrf_id=vrf, rtr_family=7)):
                bridge[(vrf, bytes(x & 255 for x in o.rtr_mac))] = (o.rtr_nh_id, o.rtr_label)
    return {"vifs": vifs, "nhs": nhs, "labels": labels, "routes": routes, "bridge": bridge}


def vif_names(run_dir: str) -> set[str]:
    return {name for name, _vrf, _nh in snapshot(run_dir, range(0))["vifs"].values()}

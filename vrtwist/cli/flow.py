"""``flow``: list and manipulate the vRouter flow table (``utils/flow.c``).

It asks ``vr_flow_table_data`` over ksync for the file and size, maps
``flow.shmem`` read-only for listings, and sends ``vr_flow_req`` FLOW_SET for
changes, exactly as the real tool does.  Output formats follow the real ``utils/flow.c``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from vrtwist.cli._common import ether_ntoa, mask_prefix
from vrtwist.datapath import constants as C
from vrtwist.ksync.blocking import KsyncConnectError, KsyncConnection, open_ksync
from vrtwist.ksync.clientcore import KsyncError, KsyncProtocolError
from vrtwist.sandesh import SPECS_BY_CLASS, schema
from vrtwist.shmem import layout as L
from vrtwist.shmem.entries import FlowEntry, ip4_to_wire, port_to_wire
from vrtwist.shmem.listing import (
    FlowMatch,
    FlowTableView,
    MatchError,
    parse_match,
    write_flow_table,
)

DEFAULT_SOCK_DIR = "/var/run/vrouter"
MAX_FLOWS = 1_000_000
MAX_BUNCH = 15
FIELD = 30

_PROTO_STR = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPV6", 132: "SCTP"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flow", add_help=False)
    g = p.add_argument
    g("-f", dest="forward", type=lambda s: int(s, 0))
    g("-d", dest="drop", type=lambda s: int(s, 0))
    g("-i", dest="invalidate", type=lambda s: int(s, 0))
    g("-e", "--force-evict", dest="evict", type=lambda s: int(s, 0))
    g("-g", "--get", dest="get", type=lambda s: int(s, 0))
    g("-l", dest="list", action="store_true")
    g("-r", dest="rate", action="store_true")
    g("-s", dest="stats", action="store_true")
    g("-F", dest="flush", action="store_true")
    g("-p", dest="perf", type=lambda s: int(s, 0), default=0)
    g("-b", dest="bunch", type=lambda s: int(s, 0), default=1)
    g("-u", "--sock-dir", dest="sock_dir", default=None)
    g("--match", dest="match")
    g("--show-evicted", dest="show_evicted", action="store_true")
    g("--mirror", dest="mirror", type=lambda s: int(s, 0), default=-1)
    g("--dvrf", dest="dvrf", type=lambda s: int(s, 0), default=-1)
    g("--iterations", dest="iterations", type=int, default=0, help=argparse.SUPPRESS)
    g("--help", dest="help", action="store_true")
    return p


USAGE = """Usage:flow [-f flow_index]
           [-d flow_index]
           [-i flow_index]
           [-e flow_index]
           [--sock-dir <netlink socket dir>
           [--mirror=mirror table index]
           [--match "match_string"
           [-l]
           [--show-evicted]
           [-r]
           [-s]
           [-p flow_count]
           [-b bunch_count]
           [-F]

-f <flow_index>  Set forward action for flow at flow_index <flow_index>
-d <flow_index>  Set drop action for flow at flow_index <flow_index>
-i <flow_index>  Invalidate flow at flow_index <flow_index>
-e <flow_index>  force evict flow at flow_index <flow_index>
-p <flow_count>  Profile time to add/delete flow entries
-b <bunch_count> Bunch flow messages in one netlink message
-F               Flush all the flows
--get            Get and print flow entry in a particular index
                 e.g.: --get <flow_index>
--mirror         Mirror index to mirror to
--match          Match criteria separated by a '&'; IP:PORT separated by a ','
                 e.g.: --match 1.1.1.1:20
                       --match "1.1.1.1:20,2.2.2.2:22"
                       --match "[fe80::225:90ff:fec3:afa]:22"
                       --match "10.204.217.10:56910 & vrf 0 & proto tcp"
                       --match "10.204.217.10:56910,169.254.0.3:22 & vrf 0 & proto tcp"
                               proto {tcp, udp, icmp, icmp6, sctp}
-l               List flows
--show-evicted   Show evicted flows too
-r               Start dumping flow setup rate
-s               Start dumping flow stats
--help           Print this help
"""


def _usage() -> int:
    sys.stdout.write(USAGE)
    return 22


class FlowTool:
    """State of one ``flow`` run: the ksync session, the table data and the mapping."""

    def __init__(self, sock_dir: str, out: TextIO) -> None:
        self.client: KsyncConnection = open_ksync(sock_dir, timeout=30.0)
        self.out = out
        self.data: dict[str, Any] = {}
        self.view: FlowTableView | None = None

    def close(self) -> None:
        if self.view is not None:
            self.view.close()
        self.client.close()

    def call(self, req: Any) -> tuple[int, list[Any]]:
        """One request: (resp_code, objects after the vr_response), errors included."""
        (r,) = self.client.exchange([req])
        if isinstance(r, KsyncProtocolError):
            raise r
        return r.code, r.objects

    def table_get(self) -> int:
        code, reply = self.call(schema.vr_flow_table_data(ftable_op=2))
        if code < 0:
            return code
        obj = next(o for o in reply if type(o).__name__ == "vr_flow_table_data")
        self.data = {f.name: getattr(obj, f.name) for f in SPECS_BY_CLASS[type(obj)].fields}
        return 0

    def map(self) -> FlowTableView:
        if self.view is None:
            path = self.data.get("ftable_file_path") or ""
            if not path:
                raise KsyncProtocolError("the vRouter reported no flow table file")
            self.view = FlowTableView(path, int(self.data.get("ftable_size") or 0) or None)
        return self.view

    # -- FLOW_SET ------------------------------------------------------------------
    def request_for(self, index: int, action: str, mirror: int) -> Any | None:
        view = self.map()
        e = view.raw_entry(index)
        if e.type not in (L.VP_TYPE_IP, L.VP_TYPE_IP6):
            return None
        f: dict[str, Any] = {
            "fr_op": 0,
            "fr_index": index,
            "fr_family": L.AF_INET6 if e.type == L.VP_TYPE_IP6 else L.AF_INET,
            "fr_flags": L.FLAG_ACTIVE,
            "fr_flow_proto": e.proto,
            "fr_flow_sport": port_to_wire(e.sport),
            "fr_flow_dport": port_to_wire(e.dport),
            "fr_flow_nh_id": e.nh_id,
            "fr_gen_id": e.gen_id,
        }
        off = index * L.FLOW_ENTRY_SIZE + L.OFF_FE_KEY
        raw = bytes(view.map[off + 12 : off + 44])
        if e.type == L.VP_TYPE_IP:
            f["fr_flow_sip_l"] = int.from_bytes(raw[0:4], "little")
            f["fr_flow_dip_l"] = int.from_bytes(raw[4:8], "little")
        else:
            f["fr_flow_sip_u"] = int.from_bytes(raw[0:8], "little")
            f["fr_flow_sip_l"] = int.from_bytes(raw[8:16], "little")
            f["fr_flow_dip_u"] = int.from_bytes(raw[16:24], "little")
            f["fr_flow_dip_l"] = int.from_bytes(raw[24:32], "little")
        if action == "d":
            f["fr_action"] = L.ACTION_DROP
        elif action == "f":
            f["fr_action"] = L.ACTION_FORWARD
        elif action == "i":
            f["fr_flags"] = 0
            f["fr_action"] = L.ACTION_DROP
        elif action == "e":
            f["fr_extflags"] = L.EXT_FLAG_FORCE_EVICT
        if mirror >= 0:
            f["fr_mir_id"] = mirror
            f["fr_flags"] |= L.FLAG_MIRROR
        return schema.vr_flow_req(**f)

    def do_op(self, index: int, action: str, mirror: int) -> int:
        req = self.request_for(index, action, mirror)
        if req is None:
            return 0
        code, _ = self.call(req)
        if code < 0:
            self.out.write("vRouter(Response): %s (%d)\n" % (os.strerror(-code), -code))
            return 1
        return 0

    # -- --get ---------------------------------------------------------------------
    def get(self, index: int, show_evicted: bool) -> int:
        view = self.map()
        e = view.get(index)
        if e is None:
            self.out.write("Flow index %d is not active\n" % index)
            return 1
        if e.flags & L.FLAG_EVICTED and not show_evicted:
            self.out.write("Flow at index %d is EVICTED. Use --show-evicted\n" % index)
            return 1
        rfe = view.get(e.rflow) if e.flags & L.RFLOW_VALID and e.rflow >= 0 else None
        paths = self.paths(e, rfe)
        drops = None
        code, reply = self.call(schema.vr_drop_stats_req(h_op=1, vds_core=0))
        if code == 0:
            drops = next((o for o in reply if type(o).__name__ == "vr_drop_stats_req"), None)
        self.out.write(format_detail(e, rfe, drops, paths))
        return 0

    def _object(self, req: Any) -> Any | None:
        """The object a GET answers, or None (a negative answer is not printed here)."""
        code, objects = self.call(req)
        return next((o for o in objects if type(o) is type(req)), None) if code >= 0 else None

    def _hop(self, nh_id: int) -> Hop | None:
        """A next hop with the interface it sends to (``flow_get_nexthop`` + ``_vif``)."""
        nh = self._object(schema.vr_nexthop_req(h_op=1, nhr_id=nh_id))
        if nh is None:
            return None
        vif = None
        if nh.nhr_type in _NH_WITH_VIF:
            oif = nh.nhr_encap_oif_id[0] if nh.nhr_encap_oif_id else 0
            vif = self._object(schema.vr_interface_req(h_op=1, vifr_idx=oif))
        return Hop(nh, vif)

    def _route(self, family: int, vrf: int, address: bytes) -> Any | None:
        req = schema.vr_route_req(h_op=1, rtr_family=family, rtr_vrf_id=vrf)
        if family == L.AF_BRIDGE:
            req.rtr_mac = list(address)
            req.rtr_index = -1
        else:
            req.rtr_prefix = list(address)
            req.rtr_prefix_len = len(address) * 8
        return self._object(req)

    def _route_info(self, family: int, vrf: int, address: bytes) -> RouteInfo | None:
        """``flow_get_routes`` for one address: the L3 route, its next hop, the L2 one."""
        l3 = self._route(family, vrf, address)
        if l3 is None:
            return None
        info = RouteInfo(l3, self._hop(int(l3.rtr_nh_id)))
        mac = bytes(b & 0xFF for b in (l3.rtr_mac or ()))
        if len(mac) == 6 and mac != bytes(6):
            l2 = self._route(L.AF_BRIDGE, vrf, mac)
            if l2 is not None:
                info.l2 = self._hop(int(l2.rtr_nh_id))
        return info

    def _mirror_nh(self, index: int) -> Any | None:
        """``flow_get_mirror_nh``: the next hop a mirror entry sends to."""
        if not 0 <= index < L.DEFAULT_MAX_MIRRORS:
            return None
        mirror = self._object(schema.vr_mirror_req(h_op=1, mirr_index=index))
        if mirror is None:
            return None
        return self._object(schema.vr_nexthop_req(h_op=1, nhr_id=mirror.mirr_nhid))

    def paths(self, e: FlowEntry, rfe: FlowEntry | None) -> FlowPaths:
        """Everything ``flow --get`` asks the vRouter about a flow (``flow_get_entry``)."""
        paths = FlowPaths()
        if e.src_nh_index >= 0:
            paths.source = self._hop(e.src_nh_index)
            nh = paths.source.nh if paths.source is not None else None
            if nh is not None and nh.nhr_type == C.NH_COMPOSITE:
                if nh.nhr_flags & C.NH_FLAG_COMPOSITE_ECMP and rfe is not None:
                    paths.ecmp_index = rfe.ecmp_nh_index
                members = list(nh.nhr_nh_list or ())[:16]
                if 0 <= paths.ecmp_index < len(members):
                    paths.ecmp_member = self._hop(int(members[paths.ecmp_index]))
        if e.flags & L.FLAG_MIRROR:
            paths.mirror = self._mirror_nh(e.mirror_id)
            paths.mirror1 = self._mirror_nh(e.sec_mirror_id)
        if e.action == L.ACTION_NAT and rfe is None:
            return paths
        family = L.AF_INET6 if e.type == L.VP_TYPE_IP6 else L.AF_INET
        packed = socket.inet_pton(socket.AF_INET6 if family == L.AF_INET6 else socket.AF_INET,
                                  e.sip)  # fmt: skip
        paths.src = self._route_info(family, e.vrf, packed)
        vrf = e.dvrf if e.flags & L.FLAG_VRFT else e.vrf
        dst = rfe.sip if e.flags & L.FLAG_DNAT and rfe is not None else e.dip
        packed = socket.inet_pton(socket.AF_INET6 if family == L.AF_INET6 else socket.AF_INET,
                                  dst)  # fmt: skip
        paths.dst = self._route_info(family, vrf, packed)
        return paths

    # -- -p / -b -------------------------------------------------------------------
    def perf(self, count: int, bunch: int) -> int:
        sip, dip = ip4_to_wire("1.1.1.1"), ip4_to_wire("2.2.2.2")
        base = dict(
            fr_op=0,
            fr_family=L.AF_INET,
            fr_flags=L.FLAG_ACTIVE,
            fr_flow_proto=0xFF,
            fr_flow_nh_id=1,
            fr_gen_id=0,
        )
        sport = 1000
        md: list[tuple[int, int]] = []
        t0 = time.monotonic()
        for i in range(count):
            req = schema.vr_flow_req(
                **base,
                fr_action=L.ACTION_HOLD,
                fr_index=-1,
                fr_flow_sip_l=sip,
                fr_flow_dip_l=dip,
                fr_flow_sport=port_to_wire(sport + i // 65535),
                fr_flow_dport=port_to_wire(i % 65535),
            )
            resp = [o for o in self.call(req)[1] if type(o).__name__ == "vr_flow_response"]
            md.append((int(resp[0].fresp_index), int(resp[0].fresp_gen_id)) if resp else (-1, 0))
        ms = int((time.monotonic() - t0) * 1000)
        self.out.write("Created %d HOLD entries in %d msec\n" % (count, ms))
        t0 = time.monotonic()
        pending: list[Any] = []
        for i in range(count):
            pending.append(
                schema.vr_flow_req(
                    **base,
                    fr_action=L.ACTION_FORWARD,
                    fr_index=-1,
                    fr_flow_sip_l=dip,
                    fr_flow_dip_l=sip,
                    fr_flow_sport=port_to_wire(i % 65535),
                    fr_flow_dport=port_to_wire(sport + i // 65535),
                )
            )
            self._flush_if(pending, bunch, False)
            idx, gen = md[i]
            pending.append(
                schema.vr_flow_req(
                    **{**base, "fr_gen_id": gen},
                    fr_action=L.ACTION_FORWARD,
                    fr_index=idx,
                    fr_flow_sip_l=sip,
                    fr_flow_dip_l=dip,
                    fr_flow_sport=port_to_wire(sport + i // 65535),
                    fr_flow_dport=port_to_wire(i % 65535),
                )
            )
            self._flush_if(pending, bunch, i == count - 1)
        ms = int((time.monotonic() - t0) * 1000)
        self.out.write("Created %d HOLD and %d FWD entries in %d msec\n" % (count, count, ms))
        return 0

    def _flush_if(self, pending: list[Any], bunch: int, last: bool) -> None:
        if pending and (len(pending) >= bunch or last):
            self.client.exchange(pending)
            pending.clear()

    # -- -F --------------------------------------------------------------------------
    def flush(self) -> int:
        view = self.map()
        self.out.write("Scanning flow table\n")
        t0 = time.monotonic()
        reqs = []
        for i in view.active_indices():
            r = self.request_for(i, "i", -1)
            if r is not None:
                reqs.append(r)
        self.out.write(
            "Found %d entries in %d msec\n" % (len(reqs), int((time.monotonic() - t0) * 1000))
        )
        self.out.write("Deleting %d entries in flow-table\n" % len(reqs))
        t0 = time.monotonic()
        for r in reqs:
            self.call(r)
        self.out.write(
            "Deleted %d entries in %d msec\n" % (len(reqs), int((time.monotonic() - t0) * 1000))
        )
        return 0

    # -- -r / -s -----------------------------------------------------------------------
    def rate(self, iterations: int) -> int:
        old = dict(self.data)
        last = time.monotonic()
        n = 0
        while not iterations or n < iterations:
            n += 1
            time.sleep(0.5)
            self.table_get()
            now = time.monotonic()
            diff_ms = max(1, int((now - last) * 1000))
            d = self.data
            hold = int(d["ftable_hold_entries"])
            processed = int(d["ftable_processed"]) - int(old.get("ftable_processed", 0))
            added = int(d["ftable_added"]) - int(old.get("ftable_added", 0))
            deleted = int(d["ftable_deleted"]) - int(old.get("ftable_deleted", 0))
            hold_rate = hold * 1000 // diff_ms
            p_rate, a_rate, d_rate = (
                processed * 1000 // diff_ms,
                added * 1000 // diff_ms,
                deleted * 1000 // diff_ms,
            )
            if hold_rate or p_rate or a_rate or d_rate:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
                self.out.write(
                    "%s.%03d:  Entries = %8d Rate = %6d (Fwd = %8d Rev = %8d Del = %8d) "
                    "Hold = %8d Free Burst Tokens = %8d Total Hold Entries %8d\n"
                    % (
                        stamp,
                        int((time.time() % 1) * 1000),
                        int(d["ftable_used_entries"]),
                        p_rate + a_rate + d_rate,
                        processed,
                        added,
                        deleted,
                        hold,
                        int(d["ftable_burst_free_tokens"]),
                        hold,
                    )
                )
                self.out.flush()
            last = now
            old = dict(d)
        return 0

    def stats(self, iterations: int) -> int:
        view = self.map()
        prev_active = prev_total = prev_hold = 0
        n = 0
        last = time.monotonic()
        while not iterations or n < iterations:
            time.sleep(0.5)
            total = active = drop = fwd = nat = 0
            for i in view.active_indices():
                e = view.get(i)
                if e is None or e.flags & L.FLAG_EVICTED:
                    continue
                total += 1
                if e.action != L.ACTION_HOLD:
                    active += 1
                if e.action == L.ACTION_DROP:
                    drop += 1
                elif e.action == L.ACTION_FORWARD:
                    fwd += 1
                elif e.action == L.ACTION_NAT:
                    nat += 1
            self.table_get()
            hold = int(self.data["ftable_hold_entries"])
            now = time.monotonic()
            diff_ms = max(1, int((now - last) * 1000))
            rate = 0 if n == 0 else (active - prev_active) * 1000 // diff_ms
            total_rate = 0 if n == 0 else (total - prev_total) * 1000 // diff_ms
            n += 1
            w = self.out.write
            if self.out.isatty():
                w("\x1b[H\x1b[2J")
            w(time.strftime("%Y-%m-%d %H:%M:%S %z") + "\n")
            w("Flow Statistics\n---------------\n")
            w("    Total  Entries  --- Total = %7d, new = %7d \n" % (total, total - prev_total))
            w("    Active Entries  --- Total = %7d, new = %7d \n" % (active, active - prev_active))
            w("    Hold   Entries  --- Total = %7d, new = %7d \n" % (hold, hold - prev_hold))
            w("    Fwd flow Entries  - Total = %7d\n" % fwd)
            w("    drop flow Entries - Total = %7d\n" % drop)
            w("    NAT flow Entries  - Total = %7d\n\n" % nat)
            w("    Rate of change of Active Entries\n    --------------------------------\n")
            w("        current rate      = %8d\n" % rate)
            w("    Rate of change of Flow Entries\n    ------------------------------\n")
            w("        current rate      = %8d\n" % total_rate)
            self.out.flush()
            last = now
            prev_active, prev_total, prev_hold = active, total, hold
        return 0


def _field(name: str) -> str:
    s = name + ":"
    return s + " " * max(0, FIELD - len(s))


#: the counters ``vr_sum_drop_stats`` (utils/vr_util.c) adds up
_ALL_DROPS = (
    "discard pull invalid_if invalid_arp trap_no_if nowhere_to_go flow_queue_limit_exceeded "
    "flow_no_memory flow_invalid_protocol flow_nat_no_rflow flow_action_drop "
    "flow_action_invalid flow_unusable flow_table_full interface_tx_discard interface_drop "
    "duplicated push ttl_exceeded invalid_nh invalid_label invalid_protocol "
    "interface_rx_discard invalid_mcast_source head_alloc_fail pcow_fail mcast_df_bit "
    "mcast_clone_fail no_memory rewrite_fail misc invalid_packet cksum_err no_fmd "
    "cloned_original invalid_vnid frag_err invalid_source l2_no_route fragment_queue_fail "
    "vlan_fwd_tx vlan_fwd_enq drop_new_flow trap_original pkt_loop no_crypt_path"
).split()
#: and the flow-related ones ``flow_sum_drops_stats`` (utils/flow.c) adds up
_FLOW_DROPS = (
    "flow_queue_limit_exceeded flow_no_memory flow_invalid_protocol flow_nat_no_rflow "
    "flow_action_drop flow_action_invalid flow_unusable flow_table_full drop_new_flow"
).split()


def _drop_sum(ds: Any, names: list[str]) -> int:
    return sum(int(getattr(ds, "vds_" + n, 0) or 0) for n in names)


@dataclass
class Hop:
    """A next hop and, for the kinds that send on one, its interface."""

    nh: Any
    vif: Any | None = None


@dataclass
class RouteInfo:
    """The matching L3 route of an address, its next hop and the stitched MAC's next hop."""

    route: Any
    l3: Hop | None = None
    l2: Hop | None = None


@dataclass
class FlowPaths:
    """What ``flow --get`` fetched about a flow's source and destination."""

    source: Hop | None = None  # fe_src_nh_index, the RPF next hop
    ecmp_index: int = -1
    ecmp_member: Hop | None = None
    src: RouteInfo | None = None
    dst: RouteInfo | None = None
    mirror: Any | None = None  # next hop of the primary mirror entry
    mirror1: Any | None = None  # and of the secondary one


_NH_WITH_VIF = (C.NH_ENCAP, C.NH_TUNNEL, C.NH_RCV, C.NH_L2_RCV)
_NH_TYPE_STRING = {
    C.NH_DEAD: "DEAD", C.NH_RCV: "RECEIVE", C.NH_ENCAP: "ENCAP", C.NH_TUNNEL: "TUNNEL",
    C.NH_RESOLVE: "RESOLVE", C.NH_DISCARD: "DISCARD", C.NH_COMPOSITE: "COMPOSITE",
    C.NH_VRF_TRANSLATE: "VRF_TRANSLATE", C.NH_L2_RCV: "L2_RECEIVE",
}  # fmt: skip


def _os_name(vif: Any) -> str:
    """``if_indextoname`` of the vif's OS index ("" when it names no OS interface)."""
    try:
        return socket.if_indextoname(int(vif.vifr_os_idx)) if vif.vifr_os_idx > 0 else ""
    except OSError:
        return ""


def _format_hop(hop: Hop | None, ingress: bool, paths: FlowPaths) -> str:
    """``flow_dump_nexthop``: header, tunnel source or ECMP members, then the interface.

    Like the real tool it starts where the caller left the cursor and prints nothing for
    next-hop kinds it has no layout for.
    """
    if hop is None:
        return ""
    nh, pad = hop.nh, " " * FIELD
    head = "NextHop(Index, VRF, Type): %u, %u, %s\n" % (
        nh.nhr_id & 0xFFFFFFFF,
        nh.nhr_vrf & 0xFFFFFFFF,
        _NH_TYPE_STRING.get(nh.nhr_type, "NONE"),
    )
    out = ""
    if nh.nhr_type in (C.NH_ENCAP, C.NH_RCV):
        out = head
    elif nh.nhr_type == C.NH_TUNNEL:
        out = head + pad + "Tunnel Source: "
        if nh.nhr_family in (L.AF_INET, L.AF_INET6):
            six = nh.nhr_family == L.AF_INET6
            out += "%s\n" % _inet(nh.nhr_family, nh.nhr_tun_dip6 if six else nh.nhr_tun_dip)
    elif nh.nhr_type == C.NH_COMPOSITE:
        out = head
        if nh.nhr_flags & C.NH_FLAG_COMPOSITE_ECMP:
            members = list(nh.nhr_nh_list or ())[:16]
            out += pad + "ECMP\n" + pad
            out += "".join(
                "%d%s, " % (m, "*" if i == paths.ecmp_index else "") for i, m in enumerate(members)
            )
            out += "\n" + pad
            if paths.ecmp_index >= 0:
                out += _format_hop(paths.ecmp_member, ingress, paths)
        return out
    else:
        return ""
    vif = hop.vif
    if vif is not None:
        out += pad + ("Ingress " if ingress else "Egress ")
        out += "Interface(Index, VRF, OS): vif0/%u, %d, %s\n" % (
            vif.vifr_idx,
            vif.vifr_vrf,
            _os_name(vif),
        )
        out += pad + "Interface Statistics(Out, In, Errors): %d, %d, %d\n" % (
            vif.vifr_opackets,
            vif.vifr_ipackets,
            vif.vifr_ierrors + vif.vifr_oerrors,
        )
    return out


def _inet(family: int, value: Any) -> str:
    """A next hop's tunnel address: IPv4 in a host integer (docs/protocols/ksync.md) or 16 bytes."""
    if family == L.AF_INET6:
        return socket.inet_ntop(
            socket.AF_INET6, bytes(b & 0xFF for b in value or ()).ljust(16, b"\0")
        )
    return socket.inet_ntoa((int(value) & 0xFFFFFFFF).to_bytes(4, "little"))


def _format_mirror(nh: Any) -> str:
    """``flow_dump_mirror``: where a mirror's copies go (no newline at the end)."""
    if nh.nhr_type != C.NH_TUNNEL:
        return "NextHop %u of type %u" % (nh.nhr_id & 0xFFFFFFFF, nh.nhr_type)
    pad = " " * FIELD
    six = nh.nhr_family == L.AF_INET6
    out = "NextHop %u\n" % (nh.nhr_id & 0xFFFFFFFF) + pad + "To Destination "
    if nh.nhr_family in (L.AF_INET, L.AF_INET6):
        out += "%s " % _inet(nh.nhr_family, nh.nhr_tun_dip6 if six else nh.nhr_tun_dip)
    out += "in the same VRF (%d)\n" % nh.nhr_vrf if nh.nhr_vrf < 0 else "in VRF %d\n" % nh.nhr_vrf
    if nh.nhr_flags & C.NH_FLAG_TUNNEL_SIP_COPY:
        return out + pad + "Tunnel Source IP from packet\n"
    out += pad + "Tunnel Source IP "
    if nh.nhr_family in (L.AF_INET, L.AF_INET6):
        out += "%s " % _inet(nh.nhr_family, nh.nhr_tun_sip6 if six else nh.nhr_tun_sip)
    return out


def _format_route_info(title: str, mac_title: str, info: RouteInfo, ingress: bool,
                       paths: FlowPaths) -> str:  # fmt: skip
    """The "Source Information" / "Destination Information" block."""
    pad = " " * FIELD
    rt = info.route
    family = int(rt.rtr_family)
    width = 16 if family == L.AF_INET6 else 4
    plen = int(rt.rtr_prefix_len)
    raw = bytes(b & 0xFF for b in rt.rtr_prefix or ()).ljust(width, b"\0")[:width]
    addr = socket.inet_ntop(socket.AF_INET6 if width == 16 else socket.AF_INET,
                            mask_prefix(raw, plen))  # fmt: skip
    out = _field(title) + "VRF: %u\n" % (rt.rtr_vrf_id & 0xFFFFFFFF)
    out += pad + "Layer 3 Route Information\n"
    out += pad + "Matching Route: %s/%-2d\n" % (addr, plen)
    if info.l3 is not None:
        out += pad + _format_hop(info.l3, ingress, paths)
    if rt.rtr_mac:
        out += "\n" + pad + "Layer 2 Route Information\n"
        out += pad + "%s: %s\n" % (mac_title, ether_ntoa(rt.rtr_mac))
        if info.l2 is not None:
            out += pad + _format_hop(info.l2, ingress, paths)
    return out


def _action_text(e: FlowEntry, pad: str) -> str:
    """The Flow Action field: the action, with the drop reason or the NAT kinds."""
    if e.action == L.ACTION_HOLD:
        return "HOLD"
    elif e.action == L.ACTION_FORWARD:
        return "FORWARD"
    elif e.action == L.ACTION_DROP:
        return "DROP:" + pad + L.DROP_REASONS.get(e.drop_reason, "(null)")
    elif e.action == L.ACTION_NAT:
        names = (
            (L.FLAG_SNAT, "SourceNAT"),
            (L.FLAG_SPAT, "SourcePortNAT"),
            (L.FLAG_DNAT, "DestinationNAT"),
            (L.FLAG_DPAT, "DestinationPortNAT"),
            (L.FLAG_LINK_LOCAL, "LinkLocalNAT"),
        )
        return "NAT: " + "".join(n + ", " for bit, n in sorted(names) if e.flags & bit)
    return "Unknown"


def _paths_text(paths: FlowPaths) -> str:
    """Expected source, and the source's and destination's routes, next hops, interfaces."""
    block = ""
    if paths.source is not None:
        block += _field("Expected Source") + _format_hop(paths.source, True, paths)
    if paths.src is not None:
        block += _format_route_info("Source Information", "SourceMAC", paths.src, True, paths)
    if paths.dst is not None:
        block += _format_route_info(
            "Destination Information", "DestinationMAC", paths.dst, False, paths
        )
    return block


def _mirror_text(e: FlowEntry, paths: FlowPaths | None) -> str:
    """The Mirror Index field; the real tool ends it with the newline it prints before
    the statistics."""
    m = ""
    if e.mirror_id < L.DEFAULT_MAX_MIRRORS:
        m += "%d" % e.mirror_id
    if e.sec_mirror_id < L.DEFAULT_MAX_MIRRORS:
        m += ", %d, " % e.sec_mirror_id
    if paths is not None and paths.mirror is not None:
        m += _field("Primary Mirror") + _format_mirror(paths.mirror)
    if paths is not None and paths.mirror1 is not None:
        m += _field("Secondary Mirror") + _format_mirror(paths.mirror1)
    return m


def format_detail(
    e: FlowEntry, rfe: FlowEntry | None = None, drops: Any = None, paths: FlowPaths | None = None
) -> str:
    """``flow --get``: the real tool's 30-column layout, from the entry, its reverse flow,
    what the vRouter says about its source and destination (``paths``: expected source
    next hop, matching routes, their next hops and interfaces) and the system-wide drop
    statistics."""
    pad = " " * FIELD
    rev = "%u" % e.rflow if e.flags & L.RFLOW_VALID and e.rflow >= 0 else "-1"
    lines = [
        _field("Flow Index") + "%d" % e.index,
        _field("Flow Generation ID") + "%u" % e.gen_id,
        _field("Reverse Flow Index") + rev,
        _field("VRF") + "%d" % e.vrf,
        _field("Destination VRF") + "%d" % (e.dvrf if e.flags & L.FLAG_VRFT else e.vrf),
        _field("Flow Source") + "[%s]:%-5u" % (e.sip, e.sport),
        _field("Flow Destination") + "[%s]:%-5u" % (e.dip, e.dport),
        _field("Flow Protocol") + _PROTO_STR.get(e.proto, str(e.proto)),
    ]
    lines.append(_field("Flow Action") + _action_text(e, pad))
    if e.action == L.ACTION_NAT:
        nat = pad + "NAT(Source, Destination): "
        if rfe is not None:
            nat += "[%s]:" % (rfe.dip if e.flags & L.FLAG_SNAT else e.sip)
            nat += "%d" % (rfe.dport if e.flags & L.FLAG_SPAT else e.sport) + ", "
            nat += "[%s]:" % (rfe.sip if e.flags & L.FLAG_DNAT else e.dip)
            nat += "%d" % (rfe.sport if e.flags & L.FLAG_DPAT else e.dport)
        lines.append(nat)
    if paths is not None:
        block = _paths_text(paths)
        if block:
            lines.append(block[:-1] if block.endswith("\n") else block)
    lines.append("")
    flag_names = (
        (L.FLAG_EVICTED, "EVICTED "),
        (L.FLAG_EVICT_CANDIDATE, "EVICT CANDIDATE "),
        (L.FLAG_NEW_FLOW, "NEW "),
        (L.FLAG_MODIFIED, "MODIFIED "),
        (L.FLAG_MIRROR, "MIRROR "),
    )
    lines.append(_field("Flow Flags") + "".join(n for bit, n in flag_names if e.flags & bit))
    if e.proto == L.IPPROTO_TCP:
        tcp_names = (
            (L.TCP_SYN, "SYN, "),
            (L.TCP_SYN_R, "SYN(REVERSE), "),
            (L.TCP_ESTABLISHED, "ESTABLISHED, "),
            (L.TCP_ESTABLISHED_R, "ESTABLISHED(REVERSE), "),
            (L.TCP_FIN, "FIN, "),
            (L.TCP_FIN_R, "FIN(REVERSE), "),
            (L.TCP_RST, "RESET, "),
            (L.TCP_HALF_CLOSE, "HALFCLOSED, "),
            (L.TCP_DEAD, "DEAD, "),
        )
        lines.append(_field("TCP FLAGS") + "".join(n for bit, n in tcp_names if e.tcp_flags & bit))
    lines.append(_field("UDP Source Port") + "%u" % e.udp_src_port)
    lines.append("")
    if e.flags & L.FLAG_MIRROR:
        lines.append(_field("Mirror Index") + _mirror_text(e, paths))
    lines.append(_field("Flow Statistics") + "%u/%u" % (e.packets, e.bytes))
    if drops is not None:
        lines.append(_field("System Wide Packet Drops") + "%d" % _drop_sum(drops, _ALL_DROPS))
        lines.append(pad + "Reverse Path Failures: %d" % int(drops.vds_invalid_source or 0))
        lines.append(pad + "Flow Block Drops: %d" % _drop_sum(drops, _FLOW_DROPS))
    return "\n".join(lines) + "\n"


def _command(args: argparse.Namespace) -> tuple[str | None, int]:
    """The one-letter operation asked for (the last given wins) and its flow index."""
    cmd = None
    index = 0
    for name, letter in (
        ("forward", "f"),
        ("drop", "d"),
        ("invalidate", "i"),
        ("evict", "e"),
        ("get", "g"),
    ):
        v = getattr(args, name)
        if v is not None:
            cmd, index = letter, v
    return cmd, index


def _wanted(args: argparse.Namespace, cmd: str | None) -> bool:
    """Whether the options ask for something this tool does (else: usage)."""
    if cmd is None and not (args.list or args.rate or args.stats or args.perf or args.flush):
        return False
    return not (args.show_evicted and not args.list and cmd != "g")


def _bunch(args: argparse.Namespace, out: TextIO) -> int | None:
    """The request bunch size (capped, said so); None when ``--perf`` asks too many."""
    if args.perf > MAX_FLOWS:
        out.write("Invalid perf count %d. Max value %d\n" % (args.perf, MAX_FLOWS))
        return None
    bunch: int = max(1, args.bunch)
    if bunch > MAX_BUNCH:
        out.write("Max NETLINK messages in a bunch cannot exceed %u.\n" % MAX_BUNCH)
        bunch = MAX_BUNCH
    return bunch


def _run(
    tool: FlowTool,
    args: argparse.Namespace,
    cmd: str | None,
    index: int,
    match: FlowMatch | None,
    bunch: int,
    out: TextIO,
) -> int:
    """Carry out the operation on the connected ``tool``: the exit status."""
    code = tool.table_get()
    if code < 0:
        out.write("vRouter(Response): %s (%d)\n" % (os.strerror(-code), -code))
        return 1
    if args.list:
        write_flow_table(out, tool.map(), tool.data, match, args.show_evicted)
        return 0
    if args.rate:
        return tool.rate(args.iterations)
    if args.stats:
        return tool.stats(args.iterations)
    if args.perf:
        return tool.perf(args.perf, bunch)
    if args.flush:
        return tool.flush()
    view = tool.map()
    if index >= view.num_entries or index < 0:
        out.write(
            "Flow index %d is greater than available indices (%u)\n"
            % (index, view.num_entries - 1)
        )
        return 1
    assert cmd is not None
    if cmd == "g":
        return tool.get(index, args.show_evicted)
    return tool.do_op(index, cmd, args.mirror)


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    try:
        args = _parser().parse_args(argv)
    except SystemExit:
        return _usage()
    if args.help:
        return _usage()
    cmd, index = _command(args)
    match = None
    if args.match is not None:
        try:
            match = parse_match(args.match)
        except MatchError as e:
            out.write("%s\n" % e)
            return 22
        args.list = True
    if not _wanted(args, cmd):
        return _usage()
    bunch = _bunch(args, out)
    if bunch is None:
        return 1
    sock_dir = args.sock_dir or os.environ.get("VRTWIST_RUN_DIR") or DEFAULT_SOCK_DIR
    try:
        tool = FlowTool(sock_dir, out)
    except KsyncConnectError as e:
        sys.stderr.write("%s\n" % (e.strerror or e))
        return 1
    try:
        return _run(tool, args, cmd, index, match, bunch, out)
    except (KsyncError, KsyncProtocolError, OSError) as e:
        sys.stderr.write("flow: %s\n" % e)
        return 1
    except BrokenPipeError:
        return 0
    finally:
        tool.close()

if __name__ == "__main__":
    sys.exit(main())

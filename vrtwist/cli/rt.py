"""``rt``: dump and look up routes, in the real ``rt``'s table format.

``--dump VRF`` lists the inet (default), inet6 or bridge table of one VRF; ``--get
ADDR/PLEN --vrf VRF`` shows the longest-prefix match. The bridge table is read from the
shared memory by ``vrtwist.shmem.cli_bridge.dump_bridge``, as the real tool maps the
bridge table; ``format_bridge_route`` is the row format.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from vrtwist.cli import _common as cli
from vrtwist.datapath import constants as C
from vrtwist.sandesh import ADD, DEL, DUMP, GET, schema

INET_FLAGS = [
    (C.VR_RT_LABEL_VALID_FLAG, "L", "Label Valid"),
    (C.VR_RT_ARP_PROXY_FLAG, "P", "Proxy ARP"),
    (C.VR_RT_ARP_TRAP_FLAG, "T", "Trap ARP"),
    (C.VR_RT_ARP_FLOOD_FLAG, "F", "Flood ARP"),
]
BRIDGE_FLAGS = [
    (C.VR_BE_LABEL_VALID_FLAG, "L", "Label Valid"),
    (C.VR_BE_FLOOD_DHCP_FLAG, "Df", "DHCP flood"),
    (C.VR_BE_MAC_MOVED_FLAG, "Mm", "Mac Moved"),
    (C.VR_BE_L2_CONTROL_DATA_FLAG, "L2c", "L2 Evpn Control Word"),
    (C.VR_BE_MAC_NEW_FLAG, "N", "New Entry"),
    (C.VR_BE_EVPN_CONTROL_PROCESSING_FLAG, "Ec", "EvpnControlProcessing"),
]
FAMILIES = {"inet": C.AF_INET, "inet6": C.AF_INET6, "bridge": C.AF_BRIDGE}


def legend(family: int) -> str:
    flags = BRIDGE_FLAGS if family == C.AF_BRIDGE else INET_FLAGS
    return "Flags: " + ", ".join("%s=%s" % (s, m) for _, s, m in flags) + "\n"


def table_header(family: int, vrf: int) -> str:
    if family == C.AF_BRIDGE:
        return legend(family) + (
            "vRouter bridge table 0/%d\n"
            "Index       DestMac                  Flags           Label/VNID      Nexthop"
            "           Stats\n" % vrf
        )
    return legend(family) + (
        "vRouter inet%c routing table 0/%d/unicast\n"
        "Destination           PPL        Flags        Label         Nexthop    "
        "Stitched MAC(Index)\n" % ("4" if family == C.AF_INET else "6", vrf)
    )


def _addr(family: int, raw: Sequence[int]) -> str:
    data = bytes(b & 0xFF for b in raw)
    if family == C.AF_INET6:
        return str(ipaddress.IPv6Address(data.ljust(16, b"\0")[:16]))
    return str(ipaddress.IPv4Address(data.ljust(4, b"\0")[:4]))


def format_inet_route(rt: Any) -> str:
    """One row of ``route_req_process`` for inet/inet6."""
    line = ""
    if rt.rtr_prefix:
        line = "%s/%-2d" % (_addr(rt.rtr_family, rt.rtr_prefix), rt.rtr_prefix_len)
    line = line.ljust(21)
    line += "%4d" % rt.rtr_replace_plen + " " * 8
    flags = "".join(s for bit, s, _ in INET_FLAGS if rt.rtr_label_flags & bit)
    line += "%5s" % flags + " " * 6
    if rt.rtr_label_flags & C.VR_RT_LABEL_VALID_FLAG:
        line += "%5d" % rt.rtr_label
    else:
        line += "%5c" % "-"
    line += " " * 8 + "%7d" % rt.rtr_nh_id + " " * 8
    if rt.rtr_mac:
        line += "%s(%d)" % (cli.ether_ntoa(rt.rtr_mac), rt.rtr_index)
    else:
        line += "-"
    return line + "\n"


#: the vRouter's inet mtrie strides (``IPBUCKET_LEVEL_BITS``): 8 bits a level
_STRIDE = 8


def _trie_index(
    routes: Sequence[Any], bits: int
) -> tuple[dict[int, dict[int, Any]], set[tuple[int, int]]]:
    """Routes by prefix length and masked prefix, and the trie's (depth, prefix) buckets."""
    width = bits // 8
    by_len: dict[int, dict[int, Any]] = {}
    buckets: set[tuple[int, int]] = set()
    for r in routes:
        plen = max(0, min(int(r.rtr_prefix_len), bits))
        value = int.from_bytes(bytes(b & 0xFF for b in r.rtr_prefix).ljust(width, b"\0"), "big")
        value &= ((1 << plen) - 1) << (bits - plen) if plen else 0
        by_len.setdefault(plen, {})[value] = r
        for depth in range(_STRIDE, min(plen, bits) + _STRIDE - 1, _STRIDE):
            if depth < plen:
                buckets.add((depth, value >> (bits - depth)))
    return by_len, buckets


def expand_routes(family: int, vrf: int, routes: Sequence[Any]) -> Iterator[Any]:
    """The rows the real vRouter's DUMP walk yields for a VRF holding ``routes``.

    The vRouter stores inet routes in a multibit trie of 256-entry buckets
    (``dp-core/vr_ip_mtrie.c``) and dumps its leaves: every bucket entry that is not a
    deeper bucket is one row, its prefix the entry's own (a /8, /16, /24 or /32 for
    IPv4), its PPL the length of the route that filled it (0 and next hop 0 where no
    route covers it). A level-N bucket exists under a prefix exactly when a route longer
    than 8N bits lies inside it. vrtwist's datapath answers DUMP with the routes it was
    given; ``rt --dump`` rebuilds the trie's view from them, so it prints what the real
    tool prints.
    """
    bits = 128 if family == C.AF_INET6 else 32
    width = bits // 8
    by_len, buckets = _trie_index(routes, bits)
    if not by_len:
        return
    lengths = sorted(by_len, reverse=True)

    def leaf(value: int, depth: int) -> Any:
        for plen in lengths:
            if plen <= depth:
                shift = bits - plen
                found = by_len[plen].get((value >> shift) << shift if plen else 0)
                if found is not None:
                    return found
        return None

    def walk(parent: int, depth: int) -> Iterator[Any]:
        depth += _STRIDE
        for i in range(1 << _STRIDE):
            node = (parent << _STRIDE) | i
            if depth < bits and (depth, node) in buckets:
                yield from walk(node, depth)
                continue
            value = node << (bits - depth)
            src = leaf(value, depth)
            row = schema.vr_route_req(
                rtr_family=family,
                rtr_vrf_id=vrf,
                rtr_prefix=list(value.to_bytes(width, "big")),
                rtr_prefix_len=depth,
                rtr_replace_plen=int(src.rtr_replace_plen) if src is not None else 0,
                rtr_nh_id=int(src.rtr_nh_id) if src is not None else C.NH_DISCARD_ID,
                rtr_label=int(src.rtr_label) if src is not None else C.VR_INVALID_LABEL,
                rtr_label_flags=int(src.rtr_label_flags) if src is not None else 0,
                rtr_index=int(src.rtr_index) if src is not None else C.VR_BE_INVALID_INDEX,
            )
            if src is not None and src.rtr_mac:
                row.rtr_mac = list(src.rtr_mac)
            yield row

    yield from walk(0, 0)


def format_bridge_route(
    index: int, mac: Sequence[int], flags: int, label: int, nh_id: int, packets: int = 0
) -> str:
    """One row of ``vr_bridge_print_route``."""
    flag_string = "".join(s for bit, s, _ in BRIDGE_FLAGS if flags & bit)
    line = ("%-9d" % index).ljust(12)
    line += cli.ether_ntoa(mac).ljust(20)
    line += " %9s" % flag_string + " " * 11
    line += " %9d" % label if flags & C.VR_BE_LABEL_VALID_FLAG else " %9c" % "-"
    line += " " * 6 + "%7d" % nh_id + " " * 4 + "%12d" % packets
    return line + "\n"


_FAMILY_NAMES = {C.AF_INET: "AF_INET", C.AF_INET6: "AF_INET6", C.AF_BRIDGE: "AF_BRIDGE"}
_MONITOR_INTERVAL = 0.5


def format_route_json(rt: Any, operation: str) -> str:
    """One line of ``vr_print_route_json`` (what ``rt --monitor`` prints per change)."""
    out = '{"operation":"%s","family":"%s"' % (
        operation,
        _FAMILY_NAMES.get(rt.rtr_family, "unknown"),
    )
    if rt.rtr_family in (C.AF_INET, C.AF_INET6):
        out += ',"vrf_id":%d' % rt.rtr_vrf_id
        if rt.rtr_prefix:
            out += ',"prefix":%d,"address":"%s","nh_id":%d' % (
                rt.rtr_prefix_len,
                _addr(rt.rtr_family, rt.rtr_prefix),
                rt.rtr_nh_id,
            )
        f = rt.rtr_label_flags
        out += ',"flags":{"label_valid":%s, "arp_proxy":%s, "arp_trap":%s, "arp_flood":%s}' % tuple(
            "true" if f & bit else "false"
            for bit in (
                C.VR_RT_LABEL_VALID_FLAG,
                C.VR_RT_ARP_PROXY_FLAG,
                C.VR_RT_ARP_TRAP_FLAG,
                C.VR_RT_ARP_FLOOD_FLAG,
            )
        )
        if f & C.VR_RT_LABEL_VALID_FLAG:
            out += ',"label":%d' % rt.rtr_label
        if rt.rtr_mac:
            out += ',"mac_address":"%s","mac_index":%d' % (cli.ether_ntoa(rt.rtr_mac), rt.rtr_index)
    return out + "}\n"


def _route_state(ks: Any) -> dict[tuple[Any, ...], Any]:
    """Every route of every VRF the datapath knows: (family, vrf, key) -> route."""
    state: dict[tuple[Any, ...], Any] = {}
    vrfs = [int(v.vsr_vrf) for v in ks.dump(schema.vr_vrf_stats_req(h_op=DUMP, vsr_marker=-1))]
    for vrf in vrfs:
        for family in (C.AF_INET, C.AF_INET6, C.AF_BRIDGE):
            req = schema.vr_route_req(h_op=DUMP, rtr_family=family, rtr_vrf_id=vrf)
            if family == C.AF_BRIDGE:
                req.rtr_mac = [0] * 6
            for r in ks.dump(req):
                key = bytes(
                    b & 0xFF for b in (r.rtr_mac if family == C.AF_BRIDGE else r.rtr_prefix)
                )
                state[(family, vrf, key, int(r.rtr_prefix_len))] = r
    return state


def _same(a: Any, b: Any) -> bool:
    return (a.rtr_nh_id, a.rtr_label, a.rtr_label_flags, list(a.rtr_mac or ())) == (
        b.rtr_nh_id,
        b.rtr_label,
        b.rtr_label_flags,
        list(b.rtr_mac or ()),
    )


def _monitor(args: argparse.Namespace) -> int:
    """``--monitor``: one JSON line per route added, changed or deleted, in any VRF.

    The kernel vRouter multicasts route changes on a genetlink group; the DPDK-style
    ``dpdk_netlink`` socket carries no multicast, so this polls the route tables over
    ksync and prints the differences in the real tool's JSON form.
    """
    n = 0
    with cli.connect(args.sock_dir) as ks:
        before = _route_state(ks)
        while not args.iterations or n < args.iterations:
            time.sleep(_MONITOR_INTERVAL)
            now = _route_state(ks)
            for key, r in now.items():
                old = before.get(key)
                if old is None or not _same(old, r):
                    cli.write(format_route_json(r, "add"))
            for key, r in before.items():
                if key not in now:
                    cli.write(format_route_json(r, "delete"))
            sys.stdout.flush()
            before = now
            n += 1
    return 0


def _dump_bridge(sock_dir: str, vrf: int) -> int:
    """The bridge table, read from ``bridge.shmem`` as the real tool maps it."""
    from vrtwist.shmem.cli_bridge import dump_bridge

    return int(dump_bridge(sock_dir, vrf) or 0)


def _get_bridge(args: argparse.Namespace) -> int:
    """``--get MAC --vrf V --family bridge``: one bridge entry, looked up over ksync."""
    try:
        mac = cli.mac(args.get)
    except argparse.ArgumentTypeError as e:
        raise cli.UsageError(str(e)) from None
    with cli.connect(args.sock_dir) as ks:
        objects = cli.request(
            ks,
            schema.vr_route_req(
                h_op=GET, rtr_family=C.AF_BRIDGE, rtr_vrf_id=args.vrf, rtr_mac=mac, rtr_index=-1
            ),
        )
    cli.write("Match %s in vRouter bridge table 0/%d/unicast\n\n" % (cli.ether_ntoa(mac), args.vrf))
    cli.write(table_header(C.AF_BRIDGE, args.vrf))
    for rt in objects:
        if type(rt) is schema.vr_route_req:
            cli.write(
                format_bridge_route(
                    rt.rtr_index, rt.rtr_mac, rt.rtr_label_flags, rt.rtr_label, rt.rtr_nh_id
                )
            )
    return 0


def _family(args: argparse.Namespace) -> int:
    if args.family is None:
        return C.AF_INET
    try:
        return FAMILIES[args.family]
    except KeyError:
        raise cli.UsageError("--family must be inet, inet6 or bridge") from None


_SHORT_FAMILIES = {0: C.AF_INET, 1: C.AF_BRIDGE, 2: C.AF_INET6}


def _change(args: argparse.Namespace) -> int:
    """The real tool's hidden ``-c``/``-d`` (create/delete one route)."""
    if args.c and args.d:
        raise cli.UsageError("-c and -d exclude each other")
    if args.v is None:
        raise cli.UsageError("-c/-d need -v <vrf>")
    family = _SHORT_FAMILIES.get(args.f if args.f is not None else 0, C.AF_INET6)
    flags = args.x or 0
    if args.P:
        flags |= C.VR_RT_ARP_PROXY_FLAG
    if args.F:
        flags |= C.VR_RT_ARP_FLOOD_FLAG
    if args.T:
        flags |= C.VR_RT_ARP_TRAP_FLAG
    req = schema.vr_route_req(
        h_op=ADD if args.c else DEL,
        rtr_vrf_id=args.v,
        rtr_family=family,
        rtr_nh_id=args.n if args.n is not None else -1,
        rtr_label=args.t,
        rtr_replace_plen=args.r if args.r is not None else 0xFFFFFFFF,
    )
    if args.t != -1:
        flags |= C.VR_RT_LABEL_VALID_FLAG
    req.rtr_label_flags = flags
    if family == C.AF_BRIDGE:
        req.rtr_index = C.VR_BE_INVALID_INDEX
    else:
        if args.p is None:
            raise cli.UsageError("-c/-d of an inet route need -p <prefix>")
        try:
            address = ipaddress.ip_address(args.p)
        except ValueError:
            raise cli.UsageError("invalid prefix %r" % args.p) from None
        if (address.version == 6) != (family == C.AF_INET6):
            raise cli.UsageError("-p %s does not match -f %s" % (args.p, args.f))
        req.rtr_prefix = list(address.packed)
        req.rtr_prefix_len = args.l if args.l is not None else address.max_prefixlen
    if args.e is not None:
        req.rtr_mac = args.e
    with cli.connect(args.sock_dir) as ks:
        cli.request(ks, req)
    return 0


def _dump(args: argparse.Namespace) -> int:
    """``--dump VRF``: the table as the real vRouter's trie walk lists it."""
    family = _family(args)
    if family == C.AF_BRIDGE:
        return _dump_bridge(args.sock_dir, args.dump)
    with cli.connect(args.sock_dir) as ks:
        req = schema.vr_route_req(h_op=DUMP, rtr_family=family, rtr_vrf_id=args.dump, rtr_rid=0)
        routes = ks.dump(req)
    cli.write(table_header(family, args.dump))
    for rt in expand_routes(family, args.dump, routes):
        cli.write(format_inet_route(rt))
    return 0


def _get(args: argparse.Namespace) -> int:
    """``--get PREFIX --vrf VRF``: the route that matches, as the real tool prints it."""
    if args.vrf is None:
        raise cli.UsageError("--get needs --vrf")
    if args.family is not None and _family(args) == C.AF_BRIDGE:
        return _get_bridge(args)
    try:
        net = ipaddress.ip_network(args.get, strict=False)
    except ValueError:
        raise cli.UsageError("invalid prefix %r" % args.get) from None
    family = C.AF_INET if net.version == 4 else C.AF_INET6
    if args.family is not None and _family(args) != family:
        raise cli.UsageError("%s is not an --family %s address" % (args.get, args.family))
    address = ipaddress.ip_address(args.get.split("/")[0])
    with cli.connect(args.sock_dir) as ks:
        objects = cli.request(
            ks,
            schema.vr_route_req(
                h_op=GET,
                rtr_family=family,
                rtr_vrf_id=args.vrf,
                rtr_prefix=list(address.packed),
                rtr_prefix_len=net.prefixlen,
            ),
        )
    # the real tool names the request masked to its length
    cli.write(
        "Match %s in vRouter inet%c table 0/%d/unicast\n\n"
        % (net, "4" if family == C.AF_INET else "6", args.vrf)
    )
    cli.write(table_header(family, args.vrf))
    for rt in objects:
        if type(rt) is schema.vr_route_req and rt.rtr_prefix:
            # as the real tool: the answer's prefix masked to the matching length
            rt.rtr_prefix = list(cli.mask_prefix(rt.rtr_prefix, int(rt.rtr_prefix_len)))
        cli.write(format_inet_route(rt))
    return 0


def _body(args: argparse.Namespace) -> int:
    if args.c or args.d:
        return _change(args)
    if args.monitor:
        return _monitor(args)
    if args.dump is not None:
        return _dump(args)
    if args.get is not None:
        return _get(args)
    raise cli.UsageError("one of --dump, --get, --monitor is needed")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("rt", "Dump and look up vRouter routes.")
    p.add_argument("--dump", type=cli.int0, metavar="VRF", help="dump the routes of a VRF")
    p.add_argument("--family", help="inet (default), inet6 or bridge")
    p.add_argument("--get", metavar="ADDR/PLEN|MAC", help="longest-prefix match in --vrf "
                   "(a MAC with --family bridge)")  # fmt: skip
    p.add_argument("--vrf", type=cli.int0)
    p.add_argument("--monitor", action="store_true", help="print route changes as JSON lines")
    p.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)
    hidden = p.add_argument_group("create/delete (the real tool's hidden options)")
    hidden.add_argument("-c", action="store_true", help="create a route")
    hidden.add_argument("-d", action="store_true", help="delete a route")
    hidden.add_argument("-v", type=cli.int0, metavar="VRF")
    hidden.add_argument("-f", type=cli.int0, metavar="0|1|2", help="0 inet, 1 bridge, 2 inet6")
    hidden.add_argument("-p", metavar="ADDR", help="prefix address")
    hidden.add_argument("-l", type=cli.int0, metavar="PLEN")
    hidden.add_argument("-n", type=cli.int0, metavar="NH_ID")
    hidden.add_argument("-t", type=cli.int0, default=-1, metavar="LABEL", help="label or VNID")
    hidden.add_argument("-e", type=cli.mac, metavar="MAC")
    hidden.add_argument("-r", type=cli.int0, metavar="PLEN", help="replacement length (delete)")
    hidden.add_argument("-x", type=lambda t: int(t, 16), metavar="HEX", help="custom flags")
    hidden.add_argument("-P", action="store_true", help="proxy ARP")
    hidden.add_argument("-F", action="store_true", help="flood ARP")
    hidden.add_argument("-T", action="store_true", help="trap ARP")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

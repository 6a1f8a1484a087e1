"""``vrfstats``: per-VRF forwarding counters, in the real ``vrfstats`` layout."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from vrtwist.cli import _common as cli
from vrtwist.sandesh import DUMP, GET, schema


def format_vrf_stats(s: Any) -> str:
    return (
        "Vrf: %d\n"
        "Discards %d, Resolves %d, Receives %d, L2 Receives %d, Vrf Translates %d, "
        "Unknown Unicast Floods %d\n"
        "Ecmp Composites %d, L2 Mcast Composites %d, Fabric Composites %d, "
        "Encap Composites %d, Evpn Composites %d\n"
        "Udp Tunnels %d, Udp Mpls Tunnels %d, Gre Mpls Tunnels %d, Vxlan Tunnels %d, "
        "Pbb Tunnels %d, Mpls over Mpls Tunnels %d\n"
        "L2 Encaps %d, Encaps %d\n"
        "GROs %d, Diags %d\n"
        "Arp Virtual Proxys %d, Arp Virtual Stitchs %d, Arp Virtual Floods %d, "
        "Arp Physical Stitchs %d, Arp Tor Proxys %d, Arp Physical Floods %d\n"
        "\n"
        % (
            s.vsr_vrf,
            s.vsr_discards, s.vsr_resolves, s.vsr_receives, s.vsr_l2_receives,
            s.vsr_vrf_translates, s.vsr_uuc_floods,
            s.vsr_ecmp_composites, s.vsr_l2_mcast_composites, s.vsr_fabric_composites,
            s.vsr_encap_composites, s.vsr_evpn_composites,
            s.vsr_udp_tunnels, s.vsr_udp_mpls_tunnels, s.vsr_gre_mpls_tunnels,
            s.vsr_vxlan_tunnels, s.vsr_pbb_tunnels, s.vsr_udp_mpls_over_mpls_tunnels,
            s.vsr_l2_encaps, s.vsr_encaps,
            s.vsr_gros, s.vsr_diags,
            s.vsr_arp_virtual_proxy, s.vsr_arp_virtual_stitch, s.vsr_arp_virtual_flood,
            s.vsr_arp_physical_stitch, s.vsr_arp_tor_proxy, s.vsr_arp_physical_flood,
        )
    )  # fmt: skip


def _body(args: argparse.Namespace) -> int:
    with cli.connect(args.sock_dir) as ks:
        if args.dump:
            objects = ks.dump(schema.vr_vrf_stats_req(h_op=DUMP, vsr_marker=-1))
        elif args.get is not None:
            objects = cli.request(ks, schema.vr_vrf_stats_req(h_op=GET, vsr_vrf=args.get))
        else:
            raise cli.UsageError("one of --get, --dump is needed")
    for obj in objects:
        cli.write(format_vrf_stats(obj))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("vrfstats", "Show per-VRF forwarding counters.")
    p.add_argument("--get", type=cli.int0, metavar="VRF")
    p.add_argument("--dump", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""``nh``: list, read, create and delete next hops, in the real ``nh``'s format.

``Id:%-9d  Type:%-13s  Fmly:%8s  Rid:%d  Ref_cnt:%-10d Vrf:%d``, then ``Flags:`` and the
type-specific lines (encap data, tunnel addresses, composite members), as in
``utils/nh.c``. ``--get`` of a composite next hop also prints its members.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Sequence
from typing import Any

from vrtwist.cli import _common as cli
from vrtwist.datapath import constants as C
from vrtwist.sandesh import ADD, DEL, DUMP, GET, int_to_ipv4, int_to_port, ipv4_to_int, schema

_NL = "\n" + " " * 14

#: flag names in bit order, with the next-hop type they apply to (None = any)
_FLAG_NAMES: list[tuple[int, str, int | None]] = [
    (C.NH_FLAG_VALID, "Valid", None),
    (C.NH_FLAG_POLICY_ENABLED, "Policy", None),
    (C.NH_FLAG_TUNNEL_GRE, "MPLSoGRE", C.NH_TUNNEL),
    (C.NH_FLAG_TUNNEL_UDP, "Udp", C.NH_TUNNEL),
    (C.NH_FLAG_MCAST, "Multicast", None),
    (C.NH_FLAG_TUNNEL_UDP_MPLS, "MPLSoUDP", C.NH_TUNNEL),
    (C.NH_FLAG_TUNNEL_VXLAN, "Vxlan", None),
    (C.NH_FLAG_RELAXED_POLICY, "Policy(R)", None),
    (C.NH_FLAG_COMPOSITE_FABRIC, "Fabric", C.NH_COMPOSITE),
    (C.NH_FLAG_COMPOSITE_ECMP, "Ecmp", C.NH_COMPOSITE),
    (C.NH_FLAG_COMPOSITE_EVPN, "Evpn", C.NH_COMPOSITE),
    (C.NH_FLAG_COMPOSITE_ENCAP, "Encap", C.NH_COMPOSITE),
    (C.NH_FLAG_COMPOSITE_TOR, "Tor", C.NH_COMPOSITE),
    (C.NH_FLAG_ROUTE_LOOKUP, "RouteLookup", None),
    (C.NH_FLAG_UNKNOWN_UC_FLOOD, "Unicast Flood", None),
    (C.NH_FLAG_TUNNEL_SIP_COPY, "Copy SIP", None),
    (C.NH_FLAG_FLOW_LOOKUP, "Flow Lookup", None),
    (C.NH_FLAG_TUNNEL_PBB, "Pbb", None),
    (C.NH_FLAG_MAC_LEARN, "Mac Learn", None),
    (C.NH_FLAG_ETREE_ROOT, "Etree Root", None),
    (C.NH_FLAG_INDIRECT, "Indirect", None),
    (C.NH_FLAG_L2_CONTROL_DATA, "Evpn Control Word", None),
    (C.NH_FLAG_CRYPT_TRAFFIC, "Encrypt Traffic", None),
    (C.NH_FLAG_L3_VXLAN, "l3_vxlan", None),
]

_FAMILIES = {C.AF_INET: "AF_INET", C.AF_INET6: "AF_INET6", C.AF_BRIDGE: "AF_BRIDGE", 0: "AF_UNSPEC"}


def flags_text(flags: int, nh_type: int) -> str:
    flags &= 0xFFFFFFFF
    if not flags:
        return "None"
    out = ""
    for bit, name, only in _FLAG_NAMES:
        if flags & bit and (only is None or only == nh_type):
            if bit in (C.NH_FLAG_TUNNEL_GRE, C.NH_FLAG_TUNNEL_UDP_MPLS) and (
                flags & C.NH_FLAG_TUNNEL_MPLS_O_MPLS
            ):
                out += "MPLSo"
            out += name + ", "
    return out


def _bytes_hex(data: Sequence[int]) -> str:
    return "".join("%02x " % (b & 0xFF) for b in data)


def _oif(nh: Any) -> int:
    """The first outgoing interface, the one the real ``nh`` prints (the list may be empty)."""
    return int(nh.nhr_encap_oif_id[0]) if nh.nhr_encap_oif_id else 0


def _tunnel_text(nh: Any, flags: int) -> str:
    """A tunnel next hop's lines after its flags."""
    out = ""
    if not flags & C.NH_FLAG_TUNNEL_PBB:
        out += _NL + "Oif:%d Len:%d Data:" % (_oif(nh), len(nh.nhr_encap))
        out += _bytes_hex(nh.nhr_encap) + _NL
        if nh.nhr_family == C.AF_INET:
            out += "Sip:%s Dip:%s" % (int_to_ipv4(nh.nhr_tun_sip), int_to_ipv4(nh.nhr_tun_dip))
        elif nh.nhr_family == C.AF_INET6:
            sip = ipaddress.IPv6Address(
                bytes(b & 0xFF for b in nh.nhr_tun_sip6).ljust(16, b"\0")
            )
            dip = ipaddress.IPv6Address(
                bytes(b & 0xFF for b in nh.nhr_tun_dip6).ljust(16, b"\0")
            )
            out += "Sip: %s Dip: %s" % (sip, dip)
    if flags & C.NH_FLAG_TUNNEL_UDP:
        out += _NL + "Sport:%d Dport:%d\n" % (
            int_to_port(nh.nhr_tun_sport),
            int_to_port(nh.nhr_tun_dport),
        )
    if flags & C.NH_FLAG_L3_VXLAN:
        out += " L3_Vxlan_Mac: " + cli.mac_text(nh.nhr_rw_dst_mac)
    if flags & C.NH_FLAG_TUNNEL_PBB:
        label = nh.nhr_label_list[0] if nh.nhr_label_list else -1
        out += "Bmac:%s Label:%d" % (cli.mac_text(nh.nhr_pbb_mac), label)
    if flags & C.NH_FLAG_TUNNEL_MPLS_O_MPLS:
        out += " Transport Label:%u" % nh.nhr_transport_label
    if nh.nhr_encap_crypt_oif_id not in (-1, 0):
        out += _NL + "CryptOif:%d\n" % nh.nhr_encap_crypt_oif_id
    return out


def _composite_text(nh: Any) -> str:
    """A composite's members with their labels, wrapped as the real tool wraps them."""
    out = _NL + "Sub NH(label):"
    printed = 0
    for i, member in enumerate(nh.nhr_nh_list):
        if printed > 60:
            out += _NL + " " * 14
            printed = 0
        part = " %d" % member
        label = nh.nhr_label_list[i] if i < len(nh.nhr_label_list) else -1
        if label >= 0:
            part += "(%d)" % label
        out += part
        printed += len(part)
    return out


def format_nh(nh: Any) -> str:
    """One next hop as ``nexthop_req_process`` prints it, with its blank line."""
    fam = _FAMILIES.get(nh.nhr_family, "N/A")
    type_name = C.NH_TYPE_NAMES.get(nh.nhr_type, "Invalid")
    out = "Id:%-9d  Type:%-13s  Fmly:%8s  Rid:%d  Ref_cnt:%-10d Vrf:%d" % (
        nh.nhr_id,
        type_name,
        fam,
        nh.nhr_rid,
        nh.nhr_ref_cnt,
        nh.nhr_vrf,
    )
    flags = nh.nhr_flags & 0xFFFFFFFF
    out += _NL + "Flags:" + flags_text(flags, nh.nhr_type)
    if flags & C.NH_FLAG_INDIRECT and nh.nhr_nh_list:
        label = nh.nhr_label_list[0] if nh.nhr_label_list else -1
        out += _NL + "Direct NH(label): %d(%d)" % (nh.nhr_nh_list[0], label)
    if nh.nhr_type == C.NH_RCV:
        out += _NL + "Oif:%d" % _oif(nh)
    elif nh.nhr_type == C.NH_ENCAP:
        out += _NL + "EncapFmly:%04x Oif:%d Len:%d" % (
            nh.nhr_encap_family & 0xFFFF,
            _oif(nh),
            len(nh.nhr_encap),
        )
        out += _NL + "Encap Data: " + _bytes_hex(nh.nhr_encap)
    elif nh.nhr_type == C.NH_TUNNEL:
        out += _tunnel_text(nh, flags)
    elif nh.nhr_type == C.NH_VRF_TRANSLATE:
        out += _NL + "Vrf:%d" % nh.nhr_vrf
    elif nh.nhr_type == C.NH_COMPOSITE:
        out += _composite_text(nh)
    return out + "\n\n"


def _create_encap(req: Any, args: argparse.Namespace, flags: int) -> tuple[int, int]:
    """An encap or tunnel next hop's rewrite data: (family, flags)."""
    nh_type = args.type
    dmac = args.dmac or [0] * 6
    smac = args.smac or [0] * 6
    req.nhr_encap = list(dmac) + list(smac) + [0x08, 0x00]
    req.nhr_encap_family = 0x0806  # ETH_P_ARP, as the real tool sends
    if nh_type == C.NH_ENCAP:
        family = C.AF_BRIDGE
    else:
        family = C.AF_INET
        if args.sip is None or args.dip is None:
            raise cli.UsageError("a tunnel needs --sip and --dip")
        req.nhr_tun_sip = ipv4_to_int(args.sip)
        req.nhr_tun_dip = ipv4_to_int(args.dip)
        if args.udp:
            if args.sport is None or args.dport is None:
                flags |= C.NH_FLAG_TUNNEL_UDP_MPLS
            else:
                flags |= C.NH_FLAG_TUNNEL_UDP
        elif args.vxlan:
            flags |= C.NH_FLAG_TUNNEL_VXLAN
        else:
            flags |= C.NH_FLAG_TUNNEL_GRE
        if args.sport is not None and args.dport is not None:
            req.nhr_tun_sport = int.from_bytes(args.sport.to_bytes(2, "big"), "little")
            req.nhr_tun_dport = int.from_bytes(args.dport.to_bytes(2, "big"), "little")
    return family, flags


def _create_composite(req: Any, args: argparse.Namespace, flags: int) -> int:
    """A composite's members and labels; its flags."""
    if not args.cni:
        raise cli.UsageError("a composite needs --cni")
    for opt, bit in (
        (args.cmc, C.NH_FLAG_MCAST),
        (args.cfa, C.NH_FLAG_COMPOSITE_FABRIC),
        (args.cen, C.NH_FLAG_COMPOSITE_ENCAP),
        (args.cevpn, C.NH_FLAG_COMPOSITE_EVPN),
        (args.tor, C.NH_FLAG_COMPOSITE_TOR),
        (args.ecmp, C.NH_FLAG_COMPOSITE_ECMP),
    ):
        if opt:
            flags |= bit
    labels = list(args.lbl or [])
    labels += [-1] * (len(args.cni) - len(labels))
    req.nhr_nh_list = list(args.cni)
    req.nhr_label_list = labels[: len(args.cni)]
    return flags


def _create(ks: Any, args: argparse.Namespace) -> None:
    if args.type is None:
        raise cli.UsageError("--create needs --type")
    nh_type = args.type
    flags = C.NH_FLAG_VALID
    for opt, bit in (
        (args.mc, C.NH_FLAG_MCAST),
        (args.pol, C.NH_FLAG_POLICY_ENABLED),
        (args.ind, C.NH_FLAG_INDIRECT),
        (args.rpol, C.NH_FLAG_RELAXED_POLICY),
        (args.rlkup, C.NH_FLAG_ROUTE_LOOKUP),
        (args.root, C.NH_FLAG_ETREE_ROOT),
    ):
        if opt:
            flags |= bit
    family = C.AF_BRIDGE if args.l2 else C.AF_INET
    req = schema.vr_nexthop_req(
        h_op=ADD,
        nhr_id=args.create,
        nhr_type=nh_type,
        nhr_vrf=args.vrf or 0,
        nhr_encap_oif_id=[args.oif or 0],
    )
    if nh_type in (C.NH_ENCAP, C.NH_TUNNEL):
        family, flags = _create_encap(req, args, flags)
    elif nh_type == C.NH_COMPOSITE:
        flags = _create_composite(req, args, flags)
    elif nh_type == C.NH_VRF_TRANSLATE and args.vxlan:
        flags |= C.NH_FLAG_TUNNEL_VXLAN
    req.nhr_family = family
    req.nhr_flags = flags
    cli.request(ks, req)


def _body(args: argparse.Namespace) -> int:
    with cli.connect(args.sock_dir) as ks:
        if args.list:
            for nh in ks.dump(schema.vr_nexthop_req(h_op=DUMP, nhr_marker=-1)):
                cli.write(format_nh(nh))
            return 0
        if args.get is not None:
            (nh,) = cli.request(ks, schema.vr_nexthop_req(h_op=GET, nhr_id=args.get))
            cli.write(format_nh(nh))
            if nh.nhr_type == C.NH_COMPOSITE:
                for member in nh.nhr_nh_list:
                    if member != -1:
                        (sub,) = cli.request(ks, schema.vr_nexthop_req(h_op=GET, nhr_id=member))
                        cli.write(format_nh(sub))
            return 0
        if args.create is not None:
            _create(ks, args)
            return 0
        if args.delete is not None:
            cli.request(ks, schema.vr_nexthop_req(h_op=DEL, nhr_id=args.delete))
            return 0
    raise cli.UsageError("one of --list, --get, --create, --delete is needed")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("nh", "List, read, create and delete vRouter next hops.")
    p.add_argument("--list", action="store_true", help="list every next hop")
    p.add_argument("--get", type=cli.int0, metavar="NH_ID")
    p.add_argument("--create", type=cli.int0, metavar="NH_ID")
    p.add_argument("--delete", type=cli.int0, metavar="NH_ID")
    p.add_argument(
        "--type",
        type=cli.int0,
        help="1 rcv, 2 encap, 3 tunnel, 4 resolve, "
        "5 discard, 6 composite, 7 vrf translate, 8 L2 rcv",
    )
    p.add_argument("--vrf", type=cli.int0)
    p.add_argument("--oif", type=cli.int0, help="outgoing vif index")
    p.add_argument("--smac", type=cli.mac)
    p.add_argument("--dmac", type=cli.mac)
    p.add_argument("--sip")
    p.add_argument("--dip")
    p.add_argument("--sport", type=cli.int0)
    p.add_argument("--dport", type=cli.int0)
    p.add_argument("--udp", action="store_true", help="MPLS over UDP tunnel")
    p.add_argument("--vxlan", action="store_true", help="VXLAN tunnel")
    p.add_argument("--cni", type=cli.int0, action="append", help="composite member (repeat)")
    p.add_argument("--lbl", type=cli.int0, action="append", help="member label (repeat)")
    for flag in (
        "pol",
        "rpol",
        "l2",
        "mc",
        "ind",
        "rlkup",
        "root",
        "cmc",
        "cfa",
        "cen",
        "cevpn",
        "tor",
        "ecmp",
    ):
        p.add_argument("--" + flag, action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

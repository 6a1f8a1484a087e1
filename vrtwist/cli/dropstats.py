"""``dropstats``: the vRouter's packet drop counters (``vr_drop_stats_req``).

Without options it prints the sum over all cores (``vds_core`` 0); ``--core N`` prints
core N; ``--clear`` resets every counter. The block layout and names are those of
``vr_print_drop_stats`` in the real ``utils/vr_util.c``.
"""

from __future__ import annotations

import argparse
import ipaddress
import time
from collections.abc import Sequence
from typing import Any

from vrtwist.cli import _common as cli
from vrtwist.datapath import droplog
from vrtwist.sandesh import GET, RESET, schema

#: blocks of (label, field) exactly as the real tool prints them
BLOCKS: list[list[tuple[str, str]]] = [
    [
        ("Invalid IF", "vds_invalid_if"),
        ("Trap No IF", "vds_trap_no_if"),
        ("IF TX Discard", "vds_interface_tx_discard"),
        ("IF Drop", "vds_interface_drop"),
        ("IF RX Discard", "vds_interface_rx_discard"),
    ],
    [
        ("Flow Unusable", "vds_flow_unusable"),
        ("Flow No Memory", "vds_flow_no_memory"),
        ("Flow Table Full", "vds_flow_table_full"),
        ("Flow NAT no rflow", "vds_flow_nat_no_rflow"),
        ("Flow Action Drop", "vds_flow_action_drop"),
        ("Flow Action Invalid", "vds_flow_action_invalid"),
        ("Flow Invalid Protocol", "vds_flow_invalid_protocol"),
        ("Flow Queue Limit Exceeded", "vds_flow_queue_limit_exceeded"),
        ("New Flow Drops", "vds_drop_new_flow"),
        ("Flow Unusable (Eviction)", "vds_flow_evict"),
    ],
    [("Original Packet Trapped", "vds_trap_original")],
    [
        ("Discards", "vds_discard"),
        ("TTL Exceeded", "vds_ttl_exceeded"),
        ("Mcast Clone Fail", "vds_mcast_clone_fail"),
    ],
    [
        ("Invalid NH", "vds_invalid_nh"),
        ("Invalid Label", "vds_invalid_label"),
        ("Invalid Protocol", "vds_invalid_protocol"),
        ("Etree Leaf to Leaf", "vds_leaf_to_leaf"),
        ("Bmac/ISID Mismatch", "vds_bmac_isid_mismatch"),
        ("Rewrite Fail", "vds_rewrite_fail"),
        ("Invalid Mcast Source", "vds_invalid_mcast_source"),
        ("Packet Loop", "vds_pkt_loop"),
    ],
    [
        ("Push Fails", "vds_push"),
        ("Pull Fails", "vds_pull"),
        ("Duplicated", "vds_duplicated"),
        ("Head Alloc Fails", "vds_head_alloc_fail"),
        ("PCOW fails", "vds_pcow_fail"),
        ("Invalid Packets", "vds_invalid_packet"),
    ],
    [
        ("Misc", "vds_misc"),
        ("Nowhere to go", "vds_nowhere_to_go"),
        ("Checksum errors", "vds_cksum_err"),
        ("No Fmd", "vds_no_fmd"),
        ("Invalid VNID", "vds_invalid_vnid"),
        ("Fragment errors", "vds_frag_err"),
        ("Invalid Source", "vds_invalid_source"),
        ("Jumbo Mcast Pkt with DF Bit", "vds_mcast_df_bit"),
        ("No L2 Route", "vds_l2_no_route"),
        ("Memory Failures", "vds_no_memory"),
        ("Fragment Queueing Failures", "vds_fragment_queue_fail"),
        ("No Encrypt Path Failures", "vds_no_crypt_path"),
        ("Invalid HBS received packet", "vds_invalid_hbs_pkt"),
        ("No Fragment Entries", "vds_no_frag_entry"),
        ("ICMP errors", "vds_icmp_error"),
        ("Clone Failures", "vds_clone_fail"),
    ],
    [
        ("VLAN fwd intf failed TX", "vds_vlan_fwd_tx"),
        ("VLAN fwd intf failed enq", "vds_vlan_fwd_enq"),
    ],
    [("Cloned Original", "vds_cloned_original")],
]


def format_drop_stats(stats: Any, core: int | None = None) -> str:
    """The counters in the real tool's blocks, labels padded to 30 columns."""
    out: list[str] = []
    if core is not None and core >= 0:
        out.append("Statistics for core %u\n\n" % core)
    if stats.vds_pcpu_stats_failure_status:
        out.append("Failed to maintain PerCPU stats for this interface\n\n")
    for block in BLOCKS:
        for label, name in block:
            out.append("%-30s%d\n" % (label, getattr(stats, name)))
        out.append("\n")
    return "".join(out)


#: ``FILE_MAP`` index 0; vrtwist records no C source locations
_VP_TYPE_IP, _VP_TYPE_IP6 = 2, 3


def format_drop_record(seq: int, r: droplog.DropRecord) -> str:
    """One entry of ``vr_print_pkt_drop_log_data``."""
    out = ["sl no: %d  " % seq, "Epoch Time: %d " % r.timestamp]
    out.append("Local Time: %s\n " % time.asctime(time.localtime(r.timestamp)))
    out.append("Packet Type: %d  " % r.vp_type)
    reasons = droplog.DROP_REASONS
    if r.drop_reason:
        name = reasons[r.drop_reason] if r.drop_reason < len(reasons) else str(r.drop_reason)
        out.append("Drop reason: %s  " % name)
    else:
        out.append("Drop reason: NULL  ")
    out.append("Vif idx: %d  Nexthop id: %d  " % (r.vif_idx, r.nh_id))
    if r.vp_type == _VP_TYPE_IP:
        out.append("Src IP: %s  " % ipaddress.IPv4Address(r.src[:4]))
        out.append("Dst IP: %s  " % ipaddress.IPv4Address(r.dst[:4]))
    elif r.vp_type == _VP_TYPE_IP6:
        out.append("Src IPv6: %s  " % ipaddress.IPv6Address(r.src[:16]))
        out.append("Dst IPv6: %s  " % ipaddress.IPv6Address(r.dst[:16]))
    else:
        out.append("Src IP: NULL  Dst IP: NULL  ")
    out.append("Source port: %d  Dest port: %d  " % (r.sport, r.dport))
    out.append("file: NULL  " if not r.file else "file: %d  " % r.file)
    out.append("line no: %d  Packet Length: %d  Packet Data: " % (r.line, r.pkt_len))
    out.extend("%02X  " % b for b in r.pkt_header[: min(r.pkt_len, droplog.HEADER_BYTES)])
    out.append("\n\n")
    return "".join(out)


def _drop_log(ks: Any, log_core: int) -> int:
    """``--log CORE``: page through one core's drop log (CORE 0: every core in turn)."""
    core, printed_cores = log_core, 0
    while True:
        index = 0
        while True:
            objects = cli.request(
                ks, schema.vr_pkt_drop_log_req(h_op=GET, vdl_core=core, vdl_log_idx=index)
            )
            log = next((o for o in objects if type(o) is schema.vr_pkt_drop_log_req), None)
            if log is None:
                return 0
            if log.vdl_pkt_droplog_sysctl_en != 1:
                cli.write(
                    "\n\nPacket Drop Log sysctl is not enabled or misconfigured, "
                    "Configured value is %d\n" % log.vdl_pkt_droplog_sysctl_en
                )
                return 0
            if log.vdl_pkt_droplog_en != 1:
                cli.write(
                    "\n\nPkt drop stats log support is not enabled or misconfigured in "
                    "vrouter module parameters. Configured value is %d\n" % log.vdl_pkt_droplog_en
                )
                return 0
            if index == 0:
                cli.write("**********PKT DROP LOG**********\n")
                cli.write("Total No. of CPU's %d\n" % log.vdl_max_num_cores)
                cli.write("Pkt Drop Log for Core %d\n\n" % max(core, 1))
            raw = bytes(b & 0xFF for b in (log.vdl_pkt_droplog_arr or ()))
            count = min(droplog.PAGE, max(0, log.vdl_pkt_droplog_max_bufsz - index))
            records = list(droplog.unpack_records(raw))[:count]
            for i, record in enumerate(records):
                cli.write(format_drop_record(index + i, record))
            index += droplog.PAGE
            if index >= log.vdl_pkt_droplog_max_bufsz or not records:
                break
        printed_cores += 1
        if log_core != 0 or printed_cores >= log.vdl_max_num_cores:
            return 0
        core = printed_cores + 1


def _body(args: argparse.Namespace) -> int:
    with cli.connect(args.sock_dir) as ks:
        if args.log is not None:
            return _drop_log(ks, args.log)
        if args.clear:
            cli.request(ks, schema.vr_drop_stats_req(h_op=RESET))
            return 0
        core = args.core
        objects = cli.request(
            ks, schema.vr_drop_stats_req(h_op=GET, vds_core=(core + 1) if core is not None else 0)
        )
        for obj in objects:
            cli.write(format_drop_stats(obj, core))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("dropstats", "Show the vRouter's packet drop counters.")
    p.add_argument("--core", "-c", type=cli.int0, help="one core's counters (0-based)")
    p.add_argument("--clear", action="store_true", help="reset every counter")
    p.add_argument("--log", type=cli.int0, metavar="CORE", help="packet drop log of a core "
                   "(0: every core)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""``vrouter``: start-up and runtime parameters (``vrouter_ops``), as the real ``vrouter``.

``--info`` prints the build string, "Startup parameters" (table sizes) and "Runtime
parameters"; the setters send ``vrouter_ops`` ADD with -1 for every knob left alone.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from vrtwist.cli import _common as cli
from vrtwist.sandesh import ADD, GET, schema

LOG_LEVELS = {
    "emergency": 1, "alert": 2, "critical": 3, "error": 4,
    "warning": 5, "notice": 6, "info": 7, "debug": 8,
}  # fmt: skip

#: option name -> vrouter_ops field of the runtime knobs the tool sets
KNOBS = {
    "perfr": "vo_perfr",
    "perfs": "vo_perfs",
    "from_vm_mss_adj": "vo_from_vm_mss_adj",
    "to_vm_mss_adj": "vo_to_vm_mss_adj",
    "perfr1": "vo_perfr1",
    "perfr2": "vo_perfr2",
    "perfr3": "vo_perfr3",
    "perfp": "vo_perfp",
    "perfq1": "vo_perfq1",
    "perfq2": "vo_perfq2",
    "perfq3": "vo_perfq3",
    "udp_coff": "vo_udp_coff",
    "flow_hold_limit": "vo_flow_hold_limit",
    "set-mudp": "vo_mudp",
    "burst_tokens": "vo_burst_tokens",
    "burst_interval": "vo_burst_interval",
    "burst_step": "vo_burst_step",
    "packet-dump": "vo_packet_dump",
}


def _build_line(build_info: str) -> str:
    line = "vRouter/DPDK version        "
    try:
        info = json.loads(build_info)["build-info"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return line + "\n\n"
    return line + " %s (Built by %s@%s on %s)\n\n" % (
        info.get("build-version", ""),
        info.get("build-user", ""),
        info.get("build-hostname", ""),
        info.get("build-time", ""),
    )


def format_info(o: Any) -> str:
    return (
        _build_line(o.vo_build_info)
        + "Startup parameters\n"
        "    Interfaces limit                     %u\n"
        "    VRF tables limit                     %u\n"
        "    NextHops limit                       %u\n"
        "    MPLS Labels limit                    %u\n"
        "    Bridge Table limit                   %u\n"
        "    Bridge Table Overflow limit          %u\n"
        "    Flow Table limit                     %u\n"
        "    Flow Table overflow limit            %u\n"
        "    Mirror entries limit                 %u\n"
        "    Memroy Allocation Checks             %u\n"
        "    Vif Bridge Table limit               %u\n"
        "    Vif Bridge Table Overflow limit      %u\n"
        "    Vrouter pkt drop log buf size   \t  %u\n"
        "    En/Dis pkt drop debug log infra      %u\n"
        "\n"
        % (
            o.vo_interfaces, o.vo_vrfs, o.vo_nexthops, o.vo_mpls_labels,
            o.vo_bridge_entries, o.vo_oflow_bridge_entries, o.vo_flow_entries,
            o.vo_oflow_entries, o.vo_mirror_entries, o.vo_memory_alloc_checks,
            o.vo_vif_bridge_entries, o.vo_vif_oflow_bridge_entries,
            o.vo_pkt_droplog_bufsz, o.vo_pkt_droplog_buf_en,
        )
        + "Runtime parameters\n"
        "  Performance tweaks\n"
        "    GRO                                  %d\n"
        "    Segmentation in software             %d\n"
        "  TCP MSS adjust settings\n"
        "    TCP MSS on packets from VM           %d\n"
        "    TCP MSS on packet sent to VM         %d\n"
        "  RPS settings\n"
        "    RPS after pulling inner hdr (perfr1) %d\n"
        "    RPS after GRO on pkt1 (perfr2)       %d\n"
        "    RPS from phys rx handler (perfr3)    %d\n"
        "    Pull inner header (faster version)   %d\n"
        "    CPU to send pkts to, if perfr1 set   %d\n"
        "    CPU to send pkts to, if perfr2 set   %d\n"
        "    CPU to send pkts to, if perfr3 set   %d\n"
        "  Other settings\n"
        "    NIC cksum offload for outer UDP hdr  %d\n"
        "    Flow hold limit:                     %u\n"
        "    MPLS over UDP globally               %d\n"
        "    Used Flow entries                    %u\n"
        "    Used Over Flow entries               %u\n"
        "    Used Bridge entries                  %u\n"
        "    Used Over Flow bridge entries        %u\n"
        "    Burst Total Tokens                   %u\n"
        "    Burst Interval                       %u\n"
        "    Burst Step                           %u\n"
        "    NIC Priority Tagging                 %u\n"
        "    Packet dump                          %u\n"
        "    Vrouter packet drop log enable       %u\n"
        "    Vrouter Packet drop log minimum enable %u\n"
        "    Enable/Disable closure of Flow on TCP RST   %u\n"
        "\n"
        % (
            o.vo_perfr, o.vo_perfs, o.vo_from_vm_mss_adj, o.vo_to_vm_mss_adj,
            o.vo_perfr1, o.vo_perfr2, o.vo_perfr3, o.vo_perfp,
            o.vo_perfq1, o.vo_perfq2, o.vo_perfq3,
            o.vo_udp_coff, o.vo_flow_hold_limit, o.vo_mudp,
            o.vo_flow_used_entries, o.vo_flow_used_oentries,
            o.vo_bridge_used_entries, o.vo_bridge_used_oentries,
            o.vo_burst_tokens, o.vo_burst_interval, o.vo_burst_step,
            o.vo_priority_tagging, o.vo_packet_dump, o.vo_pkt_droplog_en,
            o.vo_pkt_droplog_min_en, o.vo_uncond_close_flow_on_tcp_rst,
        )
    )  # fmt: skip


def _log_level_name(level: int) -> str:
    for name, value in LOG_LEVELS.items():
        if value == level:
            return name
    return "UNKNOWN"


def _body(args: argparse.Namespace) -> int:
    setting = {field: getattr(args, opt.replace("-", "_")) for opt, field in KNOBS.items()}
    setting = {k: v for k, v in setting.items() if v is not None}
    if args.set_log_level is not None:
        if args.set_log_level not in LOG_LEVELS:
            raise cli.UsageError("invalid log level %r" % args.set_log_level)
        setting["vo_log_level"] = LOG_LEVELS[args.set_log_level]
    with cli.connect(args.sock_dir) as ks:
        if setting:
            if args.info or args.get_log_level:
                raise cli.UsageError("can not use both get AND set options together")
            req = schema.vrouter_ops(h_op=ADD)
            for name in list(vars(req)):
                if name.startswith("vo_") and isinstance(getattr(req, name), int):
                    setattr(req, name, -1)
            req.vo_rid = 0
            # byte and u32 knobs carry "don't change" as all ones
            for name in (
                "vo_pkt_droplog_buf_en",
                "vo_pkt_droplog_en",
                "vo_pkt_droplog_min_en",
                "vo_uncond_close_flow_on_tcp_rst",
            ):
                setattr(req, name, 0xFF)
            for name in (
                "vo_log_level",
                "vo_priority_tagging",
                "vo_flow_used_entries",
                "vo_flow_used_oentries",
                "vo_bridge_used_entries",
                "vo_bridge_used_oentries",
            ):
                setattr(req, name, 0xFFFFFFFF)
            for name, value in setting.items():
                setattr(req, name, value)
            cli.request(ks, req)
            return 0
        (ops,) = cli.request(ks, schema.vrouter_ops(h_op=GET))
    if args.get_log_level:
        cli.write(
            "Current log level                        %s\n" % _log_level_name(ops.vo_log_level)
        )
        return 0
    cli.write(format_info(ops))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("vrouter", "Show or set the vRouter's start-up and runtime parameters.")
    p.add_argument("--info", action="store_true", help="show build and table sizes")
    p.add_argument("--get-log-level", action="store_true")
    p.add_argument("--set-log-level", metavar="LEVEL", help=", ".join(LOG_LEVELS))
    for opt in KNOBS:
        p.add_argument("--" + opt, type=cli.int0, dest=opt.replace("-", "_"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""``vif``: list, read, add and delete vRouter interfaces, as the real ``vif`` does.

Output follows ``utils/vif.c`` on the DPDK platform: the "Vrouter Interface Table"
header with its flag legend, then one block per vif (``vif0/<idx>  <transport>: <name>``,
``Type: HWaddr: IPaddr:``, ``Vrf: Mcast Vrf: Flags: QOS: Ref:``, RX/TX counters, Drops).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import socket
import struct
import sys
import termios
import time
import tty
from collections.abc import Sequence
from typing import Any

from vrtwist.cli import _common as cli
from vrtwist.cli.dropstats import format_drop_stats
from vrtwist.datapath import constants as C
from vrtwist.sandesh import ADD, DEL, DUMP, GET, int_to_ipv4, schema, u64_pair_to_ipv6

#: (flag, symbol, meaning) in the real tool's order
FLAGS: list[tuple[int, str, str]] = [
    (C.VIF_FLAG_POLICY_ENABLED, "P", "Policy"),
    (C.VIF_FLAG_XCONNECT, "X", "Cross Connect"),
    (C.VIF_FLAG_SERVICE_IF, "S", "Service Chain"),
    (C.VIF_FLAG_MIRROR_RX, "Mr", "Receive Mirror"),
    (C.VIF_FLAG_MIRROR_TX, "Mt", "Transmit Mirror"),
    (C.VIF_FLAG_TX_CSUM_OFFLOAD, "Tc", "Transmit Checksum Offload"),
    (C.VIF_FLAG_L3_ENABLED, "L3", "Layer 3"),
    (C.VIF_FLAG_L2_ENABLED, "L2", "Layer 2"),
    (C.VIF_FLAG_DHCP_ENABLED, "D", "DHCP"),
    (C.VIF_FLAG_VHOST_PHYS, "Vp", "Vhost Physical"),
    (C.VIF_FLAG_PROMISCOUS, "Pr", "Promiscuous"),
    (C.VIF_FLAG_NATIVE_VLAN_TAG, "Vnt", "Native Vlan Tagged"),
    (C.VIF_FLAG_NO_ARP_PROXY, "Mnp", "No MAC Proxy"),
    (C.VIF_FLAG_PMD, "Dpdk", "DPDK PMD Interface"),
    (C.VIF_FLAG_FILTERING_OFFLOAD, "Rfl", "Receive Filtering Offload"),
    (C.VIF_FLAG_MONITORED, "Mon", "Interface is Monitored"),
    (C.VIF_FLAG_UNKNOWN_UC_FLOOD, "Uuf", "Unknown Unicast Flood"),
    (C.VIF_FLAG_VLAN_OFFLOAD, "Vof", "VLAN insert/strip offload"),
    (C.VIF_FLAG_DROP_NEW_FLOWS, "Df", "Drop New Flows"),
    (C.VIF_FLAG_MAC_LEARN, "L", "MAC Learning Enabled"),
    (C.VIF_FLAG_MAC_PROXY, "Proxy", "MAC Requests Proxied Always"),
    (C.VIF_FLAG_ETREE_ROOT, "Er", "Etree Root"),
    (C.VIF_FLAG_MIRROR_NOTAG, "Mn", "Mirror without Vlan Tag"),
    (C.VIF_FLAG_HBS_LEFT, "HbsL", "HBS Left Intf"),
    (C.VIF_FLAG_HBS_RIGHT, "HbsR", "HBS Right Intf"),
    (C.VIF_FLAG_IGMP_ENABLED, "Ig", "Igmp Trap Enabled"),
]

TYPES = {
    "vhost": C.VIF_TYPE_HOST,
    "agent": C.VIF_TYPE_AGENT,
    "physical": C.VIF_TYPE_PHYSICAL,
    "virtual-vlan": C.VIF_TYPE_VIRTUAL_VLAN,
    "virtual": C.VIF_TYPE_VIRTUAL,
    "xenll": C.VIF_TYPE_XEN_LL_HOST,
    "gateway": C.VIF_TYPE_GATEWAY,
    "stats": C.VIF_TYPE_STATS,
    "monitoring": C.VIF_TYPE_MONITORING,
}
TRANSPORTS = {
    "eth": C.VIF_TRANSPORT_ETH,
    "pmd": C.VIF_TRANSPORT_PMD,
    "virtual": C.VIF_TRANSPORT_VIRTUAL,
    "socket": C.VIF_TRANSPORT_SOCKET,
}
_PAD = " " * 12


def _prefix_lookup(table: dict[str, int], text: str, what: str) -> int:
    """The real tool matches by prefix of the known words (``strncmp``)."""
    for word, value in table.items():
        if text.startswith(word):
            return value
    raise cli.UsageError("invalid %s %r (one of %s)" % (what, text, ", ".join(table)))


def header() -> str:
    out = ["Vrouter Interface Table\n\n", "Flags: "]
    for i, (_, symbol, meaning) in enumerate(FLAGS):
        if i:
            out.append("\n       " if i % 4 == 0 else ", ")
        out.append("%s=%s" % (symbol, meaning))
    out.append("\n\n")
    return "".join(out)


def flag_string(flags: int) -> str:
    if not flags:
        return "NULL"
    return "".join(symbol for bit, symbol, _ in FLAGS if flags & bit)[:63]


def _pbem(
    title: str, always: bool, packets: int, bytes_: int, errors: int, nombufs: int, core: str = ""
) -> str:
    """``vr_interface_pbem_counters_print``: packets, bytes, errors (and no-mbufs).

    ``core``: ``"Core N "`` when one core's counters were asked for (``--core N``).
    """
    if not (always or packets or bytes_ or errors):
        return ""
    line = "%s%s%s packets:%d  bytes:%d errors:%d" % (_PAD, core, title, packets, bytes_, errors)
    return line + (" no mbufs:%d" % nombufs if nombufs else "") + "\n"


def _pesm(
    title: str, always: bool, packets: int, errors: int, syscalls: int, nombufs: int, core: str = ""
) -> str:
    """``vr_interface_pesm_counters_print``: the DPDK port counters."""
    if not (always or packets or errors):
        return ""
    line = "%s%s%s packets:%d errors:%d" % (_PAD, core, title, packets, errors)
    if syscalls:
        line += " syscalls:%d" % syscalls
    return line + (" no mbufs:%d" % nombufs if nombufs else "") + "\n"


def _pe(title: str, always: bool, packets: int, errors: int, core: str = "") -> str:
    if not (always or packets or errors):
        return ""
    return "%s%s%s packets:%d errors:%d\n" % (_PAD, core, title, packets, errors)


_PORT_STATUS = {1: "UP", 2: "DOWN (waiting for the device)"}


def _vif_device(v: Any, flags: int) -> str:
    """The device part of a vif's first line (PCI address, transport and name, ...)."""
    first = ""
    if flags & C.VIF_FLAG_PMD:
        first += "PMD: %d" % v.vifr_os_idx
    elif v.vifr_type == C.VIF_TYPE_PHYSICAL:
        if flags & C.VIF_FLAG_MOCK_DEVICE:
            first += "PCI: Mock"
        else:
            o = v.vifr_os_idx & 0xFFFFFFFF
            first += "PCI: %.4x:%.2x:%.2x.%x" % (o >> 16, (o >> 8) & 0xFF, (o >> 3) & 0x1F, o & 7)
    elif v.vifr_type == C.VIF_TYPE_MONITORING:
        first += "Monitoring: %s for vif%d/%d" % (v.vifr_name, v.vifr_rid, v.vifr_os_idx)
    else:
        if v.vifr_name:
            transport = C.VIF_TRANSPORT_NAMES.get(v.vifr_transport, "Unknown")
            first += "%s: %s" % (transport, v.vifr_name)
        if flags & C.VIF_FLAG_MOCK_DEVICE:
            first += " Mock"
    return first


def _vif_first_line(v: Any, flags: int) -> str:
    first = ("vif%d/%d" % (v.vifr_rid, v.vifr_idx)).ljust(12) + _vif_device(v, flags)
    if v.vifr_type == C.VIF_TYPE_PHYSICAL and not flags & C.VIF_FLAG_MOCK_DEVICE:
        if v.vifr_speed >= 0:
            first += " (Speed %d," % v.vifr_speed
            if v.vifr_duplex >= 0:
                first += " Duplex %d" % v.vifr_duplex
            first += ")"
    elif v.vifr_type == C.VIF_TYPE_VIRTUAL_VLAN:
        first += " Vlan(o/i)(,S): %d/%d" % (v.vifr_ovlan_id, v.vifr_vlan_id)
    if v.vifr_parent_vif_idx >= 0:
        first += " Parent:vif0/%d" % v.vifr_parent_vif_idx
    if v.vifr_nh_id != 0:
        first += " NH: %d" % v.vifr_nh_id
    return first


def format_vif(v: Any, print_zero: bool = False, core: int | None = None) -> str:
    """One vif block as ``list_get_print`` prints it (the ``--sock-dir`` platform).

    ``print_zero`` (``--rate``) prints the DPDK device/port/queue counters even when 0;
    ``core`` (``--core N``) prefixes the counter lines with ``Core N``.
    """
    c = "Core %d " % core if core is not None and core >= 0 else ""
    flags = v.vifr_flags & 0xFFFFFFFF
    lines = [_vif_first_line(v, flags) + "\n"]
    vtype = C.VIF_TYPE_NAMES.get(v.vifr_type, "Invalid")
    lines.append(
        "%sType:%s HWaddr:%s IPaddr:%s\n"
        % (_PAD, vtype, cli.mac_text(v.vifr_mac), int_to_ipv4(v.vifr_ip))
    )
    if v.vifr_ip6_u or v.vifr_ip6_l:
        lines.append("%sIP6addr:%s\n" % (_PAD, u64_pair_to_ipv6(v.vifr_ip6_u, v.vifr_ip6_l)))
    line = "%sVrf:%d Mcast Vrf:%d Flags:%s QOS:%d Ref:%d" % (
        _PAD,
        v.vifr_vrf,
        v.vifr_mcast_vrf,
        flag_string(flags),
        v.vifr_qos_map_index,
        v.vifr_ref_cnt,
    )
    if flags & (C.VIF_FLAG_MIRROR_TX | C.VIF_FLAG_MIRROR_RX):
        line += " Mirror index %d" % v.vifr_mir_id
    lines.append(line + "\n")
    # vrtwist's port layer: 1 = attached to its OS device, 2 = waiting for it (TF's vif
    # prints a fabric bond's link the same way, "Status: UP|DOWN", on a line of its own)
    status = _PORT_STATUS.get(v.vifr_intf_status)
    if status:
        lines.append("%sStatus: %s\n" % (_PAD, status))
    z = print_zero
    dev_in = (v.vifr_dev_ipackets, v.vifr_dev_ibytes, v.vifr_dev_ierrors, v.vifr_dev_inombufs)
    port_in = (v.vifr_port_ipackets, v.vifr_port_ierrors, v.vifr_port_isyscalls,
               v.vifr_port_inombufs)  # fmt: skip
    lines.append(_pbem("RX device", z, *dev_in, core=c))
    lines.append(_pesm("RX port  ", z, *port_in, core=c))
    lines.append(_pe("RX queue ", z, v.vifr_queue_ipackets, v.vifr_queue_ierrors, core=c))
    if v.vifr_queue_ierrors_to_lcore:
        # the DPDK vRouter reports one counter per forwarding lcore
        errors = "".join(" %d" % n for n in v.vifr_queue_ierrors_to_lcore)
        lines.append("%sRX queue errors to lcore%s\n" % (_PAD, errors))
    lines.append(_pbem("RX", True, v.vifr_ipackets, v.vifr_ibytes, v.vifr_ierrors, 0, core=c))
    lines.append(_pbem("TX", True, v.vifr_opackets, v.vifr_obytes, v.vifr_oerrors, 0, core=c))
    if v.vifr_isid or v.vifr_pbb_mac:
        lines.append("%sISID: %d Bmac: %s\n" % (_PAD, v.vifr_isid, cli.mac_text(v.vifr_pbb_mac)))
    lines.append("%sDrops:%d\n" % (_PAD, v.vifr_dpackets))
    port_out = (v.vifr_port_opackets, v.vifr_port_oerrors, v.vifr_port_osyscalls, 0)
    dev_out = (v.vifr_dev_opackets, v.vifr_dev_obytes, v.vifr_dev_oerrors, 0)
    lines.append(_pe("TX queue ", z, v.vifr_queue_opackets, v.vifr_queue_oerrors, core=c))
    lines.append(_pesm("TX port  ", z, *port_out, core=c))
    lines.append(_pbem("TX device", z, *dev_out, core=c))
    lines.append("\n")
    return "".join(lines)


#: counters ``rate_stats_diff`` turns into per-second rates (errors never go backwards)
_RATE_COUNTERS = (
    "dev_ibytes", "dev_ipackets", "dev_ierrors", "dev_inombufs", "port_isyscalls",
    "port_ipackets", "port_ierrors", "port_inombufs", "queue_ierrors", "queue_ipackets",
    "ibytes", "ipackets", "ierrors", "obytes", "opackets", "oerrors", "queue_oerrors",
    "queue_opackets", "port_osyscalls", "port_opackets", "port_oerrors", "dev_obytes",
    "dev_opackets", "dev_oerrors",
)  # fmt: skip
_RATE_INTERVAL = 1.0  # SET_TIMEOUT_MS


def rate_of(cur: Any, prev: Any, diff_ms: int) -> Any:
    """A copy of ``cur`` whose counters are per-second rates since ``prev``."""
    out = type(cur)(**vars(cur))
    diff_ms = max(1, diff_ms)
    for name in _RATE_COUNTERS:
        field = "vifr_" + name
        now, before = int(getattr(cur, field)), int(getattr(prev, field))
        if name.endswith("errors") and now < before:
            now = before
        setattr(out, field, (now - before) * 1000 // diff_ms)
    a, b = list(cur.vifr_queue_ierrors_to_lcore or ()), list(prev.vifr_queue_ierrors_to_lcore or ())
    out.vifr_queue_ierrors_to_lcore = [
        (x - (b[i] if i < len(b) else x)) * 1000 // diff_ms for i, x in enumerate(a)
    ]
    return out


def rate_header() -> str:
    """``list_header_print`` of ``vif --list --rate``."""
    top = "Interface name".ljust(30) + "VIF ID".ljust(30) + "RX".ljust(30) + "TX".ljust(30)
    return top + "\n" + " " * 54 + "Errors   Packets".ljust(30) + "Errors   Packets\n\n"


def format_rate_row(v: Any) -> str:
    """``list_rate_print``: one vif's error and packet rates."""
    rx_errors = v.vifr_dev_ierrors + v.vifr_port_ierrors + v.vifr_queue_ierrors + v.vifr_ierrors
    tx_errors = v.vifr_dev_oerrors + v.vifr_port_oerrors + v.vifr_queue_oerrors + v.vifr_oerrors
    line = ("%s: %s" % (C.VIF_TYPE_NAMES.get(v.vifr_type, "Invalid"), v.vifr_name)).ljust(30)
    line += ("vif%d/%d" % (v.vifr_rid, v.vifr_idx)).ljust(24)
    line += ("%-7d  %-7d" % (rx_errors, v.vifr_ipackets)).ljust(30)
    line += ("%-7d  %-7d" % (tx_errors, v.vifr_opackets)).ljust(25)
    return line + "\n\n\n"


def _read_key(timeout: float) -> str:
    """Wait up to ``timeout`` for one key on a terminal (``""`` if none, or no terminal)."""
    if not sys.stdin.isatty():
        time.sleep(timeout)
        return ""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return os.read(sys.stdin.fileno(), 1).decode("latin-1").lower() if ready else ""


def _page_size() -> int:
    """Rows of vifs that fit the terminal (3 lines each under a 9-line header), at most 32."""
    if not sys.stdout.isatty():
        return 1 << 30
    try:
        rows = os.get_terminal_size(sys.stdout.fileno()).lines
    except OSError:
        rows = 24
    return max(1, min(32, (rows - 9) // 3))


def _rate(ks: Any, args: argparse.Namespace, core: int) -> int:
    """``--rate``: refresh per-second rates every second until ``q`` (or ``--iterations``);
    with ``--list``, ``k``/``j`` page back and forth through the vifs as the real tool."""
    saved = None
    if sys.stdin.isatty():
        saved = termios.tcgetattr(sys.stdin.fileno())
        tty.setcbreak(sys.stdin.fileno())
    try:
        return _rate_screens(ks, args, core)
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)


def _rate_screens(ks: Any, args: argparse.Namespace, core: int) -> int:
    prev: dict[int, Any] = {}
    last = time.monotonic()
    n = skip = 0
    while True:
        if n:
            key = _read_key(_RATE_INTERVAL)
            if key == "q":
                return 0
            page = _page_size()
            if key == "k":
                skip = max(0, skip - page)
            elif key == "j":
                skip += page
        if args.list:
            vifs = ks.dump(schema.vr_interface_req(h_op=DUMP, vifr_marker=-1, vifr_core=core + 1))
        else:
            req = schema.vr_interface_req(h_op=GET, vifr_core=core + 1, vifr_idx=args.get)
            vifs = [o for o in cli.request(ks, req) if type(o) is schema.vr_interface_req]
        now = time.monotonic()
        diff_ms = int((now - last) * 1000)
        last = now
        if sys.stdout.isatty():
            cli.write("\033[H\033[2J")
        cli.write("Interface rate statistics\n-------------------------\n\n")
        cli.write(rate_header() if args.list else header())
        shown = vifs[skip : skip + _page_size()] if args.list else vifs
        for v in vifs:
            rated = rate_of(v, prev.get(v.vifr_idx, v), diff_ms)
            prev[v.vifr_idx] = v
            if any(v is s for s in shown):
                cli.write(
                    format_rate_row(rated) if args.list else format_vif(rated, True, args.core)
                )
        if args.list:
            cli.write("Key 'q' for quit, key 'k' for previous page, key 'j' for next page.\n")
        cli.write(time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime()) + " \n")
        sys.stdout.flush()
        n += 1
        if args.iterations and n >= args.iterations:
            return 0


_TUNSETIFF = 0x400454CA
_TUNSETPERSIST = 0x400454CB
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_SIOCSIFHWADDR = 0x8924
_ARPHRD_ETHER = 1


def create_host_interface(name: str, mac: Sequence[int] | None) -> None:
    """``vif --create``: the OS side of a vhost interface, as a persistent TAP device.

    The kernel vRouter makes a ``vhost`` link through rtnetlink; a user-space datapath
    (DPDK, this one) serves the host through a TAP device, so that is what is made.
    Raises OSError (EPERM without CAP_NET_ADMIN, EBUSY/EEXIST ...).
    """
    if not name or len(name.encode()) >= 16:
        raise ValueError("interface name must be 1 to 15 bytes")
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        ifr = struct.pack("16sH22x", name.encode(), _IFF_TAP | _IFF_NO_PI)
        fcntl.ioctl(fd, _TUNSETIFF, ifr)
        fcntl.ioctl(fd, _TUNSETPERSIST, 1)
    finally:
        os.close(fd)
    if mac is not None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            hw = struct.pack("16sH6s16x", name.encode(), _ARPHRD_ETHER, bytes(mac))
            fcntl.ioctl(s.fileno(), _SIOCSIFHWADDR, hw)


def _free_index(ks: Any) -> int:
    used = {v.vifr_idx for v in ks.dump(schema.vr_interface_req(h_op=DUMP, vifr_marker=-1))}
    idx = 0
    while idx in used:
        idx += 1
    return idx


def _leading_int(text: str) -> int:
    """C ``strtol(text, NULL, 0)``: the leading number of ``text``, 0 if none."""
    digits = ""
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else 0


def _os_index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


def _body(args: argparse.Namespace) -> int:
    core = args.core if args.core is not None else -1
    if args.create is not None:
        try:
            create_host_interface(args.create, args.mac)
        except (OSError, ValueError) as e:
            print("vhost_create: %s." % (getattr(e, "strerror", None) or e), file=sys.stderr)
            return cli.EXIT_RESPONSE
        return 0
    if args.rate and not args.list and args.get is None:
        raise cli.UsageError("--rate goes with --list or --get")
    with cli.connect(args.sock_dir) as ks:
        if args.rate:
            return _rate(ks, args, core)
        if args.list:
            cli.write(header())
            for v in ks.dump(
                schema.vr_interface_req(h_op=DUMP, vifr_marker=-1, vifr_core=core + 1)
            ):
                cli.write(format_vif(v, core=args.core))
            return 0
        if args.get is not None:
            return _get(ks, args, core)
        if args.add is not None:
            return _add(ks, args)
        if args.delete is not None:
            return _delete(ks, args)
        if args.set is not None:
            return _set(ks, args)
    raise cli.UsageError("one of --list, --get, --add, --delete, --set is needed")


def _get(ks: Any, args: argparse.Namespace, core: int) -> int:
    """``--get``: one vif (and its drop stats, its VLAN -> VRF table when it has one)."""
    flags = C.VIF_FLAG_GET_DROP_STATS if args.get_drop_stats else 0
    req = schema.vr_interface_req(h_op=GET, vifr_core=core + 1, vifr_flags=flags)
    if args.kernel:
        req.vifr_idx = -1
        req.vifr_os_idx = args.get
    else:
        req.vifr_idx = args.get
    objects = cli.request(ks, req)
    cli.write(header())
    for obj in objects:
        if type(obj) is schema.vr_interface_req:
            cli.write(format_vif(obj, core=args.core))
            if obj.vifr_flags & C.VIF_FLAG_SERVICE_IF:
                # a service interface: its VLAN -> VRF table follows
                cli.write("VRF table(vlan:vrf):\n")
                assigns = ks.dump(
                    schema.vr_vrf_assign_req(
                        h_op=DUMP, var_vif_index=obj.vifr_idx, var_marker=-1
                    )
                )
                cli.write(
                    "".join("%d:%d, " % (a.var_vlan_id, a.var_vif_vrf) for a in assigns)
                )
                cli.write("\n")
        elif type(obj) is schema.vr_drop_stats_req:
            cli.write(format_drop_stats(obj, args.core))
    return 0


def _delete(ks: Any, args: argparse.Namespace) -> int:
    req = schema.vr_interface_req(h_op=DEL)
    try:
        req.vifr_idx = cli.int0(args.delete)
    except argparse.ArgumentTypeError:
        req.vifr_name = args.delete
    cli.request(ks, req)
    return 0


def _set(ks: Any, args: argparse.Namespace) -> int:
    if args.vlan is None or args.vrf is None:
        raise cli.UsageError("--set needs --vlan and --vrf")
    cli.request(
        ks,
        schema.vr_vrf_assign_req(
            h_op=ADD, var_vif_index=args.set, var_vlan_id=args.vlan, var_vif_vrf=args.vrf
        ),
    )
    return 0


def _add_os_indexes(args: argparse.Namespace) -> tuple[int, int]:
    """The new vif's OS index and cross-connect index, from its name and the options."""
    # as utils/vif.c: the name's OS ifindex, a numeric name is a PMD/PCI index,
    # --vif overrides the OS index (the monitored vif for a monitoring vif),
    # --id is the vif index, --pmd/--pci take the PMD index for both OS indexes
    os_idx = _os_index(args.add)
    pmd_index = _leading_int(args.add)
    if args.vif is not None:
        os_idx = args.vif
    xc = -1
    if args.xconnect is not None:
        xc = _os_index(args.xconnect)
        if args.xconnect[:1].isdigit():
            pmd_index = _leading_int(args.xconnect)
            if xc <= 0:
                xc = pmd_index
        elif xc <= 0:
            raise cli.UsageError(
                "%s does not seem to be a valid physical interface name" % args.xconnect
            )
    if args.pmd or args.pci:
        os_idx = xc = pmd_index
    return os_idx, xc


def _add_flags(args: argparse.Namespace) -> int:
    flags = 0
    if args.policy:
        flags |= C.VIF_FLAG_POLICY_ENABLED
    if args.vhost_phys:
        flags |= C.VIF_FLAG_VHOST_PHYS
    if args.dhcp_enable:
        flags |= C.VIF_FLAG_DHCP_ENABLED
    if args.pmd:
        flags |= C.VIF_FLAG_PMD
    return flags


def _add(ks: Any, args: argparse.Namespace) -> int:
    if args.type is None:
        raise cli.UsageError("--add needs --type")
    vtype = _prefix_lookup(TYPES, args.type, "type")
    transport = 0
    if args.transport is not None:
        transport = _prefix_lookup(TRANSPORTS, args.transport, "transport")
    os_idx, xc = _add_os_indexes(args)
    if vtype == C.VIF_TYPE_MONITORING and args.vif is None:
        raise cli.UsageError("a monitoring vif needs --vif <monitored vif>")
    flags = _add_flags(args)
    if args.id is not None:
        idx = args.id
    elif os_idx > 0 or args.vif is not None or args.pmd or args.pci:
        idx = max(os_idx, 0)
    else:
        # not an OS interface (DPDK, vtest): take the lowest free vif index
        idx = _free_index(ks)
    mac = args.mac
    if mac is None:
        mac = [2, 0, 0, 0, 0, 0] if vtype == C.VIF_TYPE_MONITORING else [0] * 6
    req = schema.vr_interface_req(
        h_op=ADD,
        vifr_name=args.add,
        vifr_mac=mac,
        vifr_vrf=args.vrf if args.vrf is not None else 0,
        vifr_mcast_vrf=0xFFFF,
        vifr_os_idx=os_idx if os_idx > 0 else 0,
        vifr_idx=idx,
        vifr_type=vtype,
        vifr_flags=flags,
        vifr_transport=transport,
    )
    if vtype == C.VIF_TYPE_HOST:
        req.vifr_cross_connect_idx = [xc]
    cli.request(ks, req)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("vif", "List, read, add and delete vRouter interfaces.")
    p.add_argument("--list", action="store_true", help="list every interface")
    p.add_argument("--get", type=cli.int0, metavar="IDX", help="show one interface")
    p.add_argument("--kernel", action="store_true", help="--get by OS interface index")
    p.add_argument("--core", type=cli.int0, help="counters of one forwarding core")
    p.add_argument("--get-drop-stats", action="store_true", help="--get also the drop stats")
    p.add_argument("--rate", action="store_true", help="per-second rates, refreshed (q quits)")
    p.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--create", metavar="NAME", help="create the OS side of a vhost (a TAP)")
    p.add_argument("--add", metavar="NAME", help="add an interface")
    p.add_argument("--mac", type=cli.mac)
    p.add_argument("--vrf", type=cli.int0)
    p.add_argument("--type", help="vhost|agent|physical|virtual|monitoring|virtual-vlan")
    p.add_argument("--transport", help="eth|pmd|virtual|socket")
    p.add_argument("--xconnect", metavar="PHYS", help="physical interface of a vhost")
    p.add_argument("--policy", action="store_true")
    p.add_argument("--vhost-phys", action="store_true")
    p.add_argument("--dhcp-enable", action="store_true")
    p.add_argument("--vif", type=cli.int0, help="OS index (the monitored vif of a monitoring vif)")
    p.add_argument("--id", type=cli.int0, help="vif index to add at")
    p.add_argument("--pmd", action="store_true")
    p.add_argument("--pci", action="store_true")
    p.add_argument("--delete", metavar="IDX|NAME", help="delete an interface")
    p.add_argument("--set", type=cli.int0, metavar="IDX", help="assign --vlan of IDX to --vrf")
    p.add_argument("--vlan", type=cli.int0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""``rt --dump VRF --family bridge``: read the shared bridge table as the real ``rt`` does.

The ``rt`` tool belongs to the datapath package; it calls :func:`dump_bridge`, which
asks ``vr_bridge_table_data`` over ksync for the file and size, maps the file
read-only and prints the VALID entries of one VRF in ``vr_bridge_print_route``'s
format.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from vrtwist.ksync.blocking import KsyncConnectError, KsyncProtocolError, open_ksync
from vrtwist.sandesh import schema
from vrtwist.shmem.listing import BRIDGE_LEGEND, BridgeTableView, format_bridge_entry

__all__ = ["dump_bridge", "print_bridge_table"]


def print_bridge_table(view: BridgeTableView, vrf: int, out: TextIO) -> int:
    """Write legend, header and the VALID rows of ``vrf``; return the row count."""
    out.write(BRIDGE_LEGEND)
    out.write("vRouter bridge table %d/%d\n" % (0, vrf))
    out.write(
        "Index       DestMac                  Flags           Label/VNID      Nexthop           Stats\n"
    )
    n = 0
    for e in view:
        if e.vrf != vrf:
            continue
        out.write(format_bridge_entry(e))
        n += 1
    return n


def dump_bridge(sock_dir: str, vrf: int, out: TextIO | None = None) -> int:
    """Print the bridge table of ``vrf`` from the vRouter serving ``<sock_dir>/dpdk_netlink``.

    Returns the process exit status (0 on success).  Errors are printed the way
    the real tool prints them.
    """
    out = out if out is not None else sys.stdout
    try:
        with open_ksync(sock_dir, timeout=30.0) as client:
            (result,) = client.exchange([schema.vr_bridge_table_data(btable_op=1, btable_rid=0)])
    except KsyncConnectError as e:
        sys.stderr.write("%s\n" % (e.strerror or e))
        return 1
    except (KsyncProtocolError, OSError) as e:
        sys.stderr.write("bridge table: ksync channel error: %s\n" % e)
        return 1
    if isinstance(result, KsyncProtocolError):
        sys.stderr.write("bridge table: ksync channel error: %s\n" % result)
        return 1
    code, reply = result.code, result.objects
    if code < 0:
        out.write("vRouter(Response): %s (%d)\n" % (os.strerror(-code), -code))
        return 1
    data = next((o for o in reply if type(o).__name__ == "vr_bridge_table_data"), None)
    if data is None or not data.btable_file_path:
        sys.stderr.write("bridge table: the vRouter reported no shared-memory file\n")
        return 1
    try:
        view = BridgeTableView(data.btable_file_path, int(data.btable_size) or None)
    except (OSError, ValueError) as e:
        sys.stderr.write("bridge table: cannot map %s: %s\n" % (data.btable_file_path, e))
        return 1
    try:
        print_bridge_table(view, vrf, out)
    finally:
        view.close()
    return 0

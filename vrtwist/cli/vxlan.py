"""``vxlan``: the VNID -> next hop table (``VXLAN Table``), as the real ``vxlan``."""

from __future__ import annotations

from typing import Any

from vrtwist.cli._table import keyed_tool
from vrtwist.sandesh import schema

HEADER = "VXLAN Table\n\n VNID    NextHop\n----------------\n"


def format_vnid(req: Any) -> str:
    return "%7d    %d\n" % (req.vxlanr_vnid, req.vxlanr_nhid)


main = keyed_tool(
    "vxlan",
    "Dump, read, create and delete VXLAN VNIDs.",
    schema.vr_vxlan_req,
    "vxlanr_vnid",
    "vxlanr_nhid",
    {"vxlanr_vnid": 0},
    HEADER,
    format_vnid,
)

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(None))

"""``mpls``: the incoming label map (``MPLS Input Label Map``), as the real ``mpls``."""

from __future__ import annotations

from typing import Any

from vrtwist.cli._table import keyed_tool
from vrtwist.sandesh import schema

HEADER = "MPLS Input Label Map\n\n   Label    NextHop\n-------------------\n"


def format_label(req: Any) -> str:
    return "%8d    %6d\n" % (req.mr_label, req.mr_nhid)


main = keyed_tool(
    "mpls",
    "Dump, read, create and delete MPLS incoming labels.",
    schema.vr_mpls_req,
    "mr_label",
    "mr_nhid",
    {"mr_marker": -1},
    HEADER,
    format_label,
)

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(None))

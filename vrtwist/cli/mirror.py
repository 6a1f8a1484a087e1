"""``mirror``: the mirror table, as the real ``mirror`` prints it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from vrtwist.cli import _common as cli
from vrtwist.datapath import constants as C
from vrtwist.sandesh import ADD, DEL, DUMP, GET, schema

HEADER = (
    "Mirror Table\n\n"
    "Flags:D=Dynamic Mirroring, Hw=NIC Assisted Mirroring \n\n"
    "Index    NextHop    Flags       VNI    Vlan\n"
    "------------------------------------------------\n"
)
_HW_ASSISTED = 0x2


def format_mirror(req: Any) -> str:
    flags = ""
    if req.mirr_flags & C.VR_MIRROR_FLAG_DYNAMIC:
        flags += "D"
    if req.mirr_flags & _HW_ASSISTED:
        flags += "Hw"
    line = "%5d    %7d" % (req.mirr_index, req.mirr_nhid) + "    %4s" % flags
    if req.mirr_vni != -1:
        line += "    %7d" % req.mirr_vni
    return line + "    %4d\n" % req.mirr_vlan


def _body(args: argparse.Namespace) -> int:
    with cli.connect(args.sock_dir) as ks:
        if args.dump or args.get is not None:
            if args.dump:
                objects = ks.dump(schema.vr_mirror_req(h_op=DUMP, mirr_marker=-1))
            else:
                objects = cli.request(ks, schema.vr_mirror_req(h_op=GET, mirr_index=args.get))
            cli.write(HEADER)
            for obj in objects:
                cli.write(format_mirror(obj))
            return 0
        if args.create is not None:
            if args.nh is None:
                raise cli.UsageError("--create needs --nh")
            cli.request(
                ks,
                schema.vr_mirror_req(
                    h_op=ADD,
                    mirr_index=args.create,
                    mirr_nhid=args.nh,
                    mirr_vni=args.vni if args.vni is not None else -1,
                    mirr_flags=C.VR_MIRROR_FLAG_DYNAMIC if args.dyn else 0,
                ),
            )
            return 0
        if args.delete is not None:
            cli.request(ks, schema.vr_mirror_req(h_op=DEL, mirr_index=args.delete))
            return 0
    raise cli.UsageError("one of --dump, --get, --create, --delete is needed")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("mirror", "Dump, read, create and delete mirror entries.")
    p.add_argument("--dump", action="store_true")
    p.add_argument("--get", type=cli.int0, metavar="INDEX")
    p.add_argument("--create", type=cli.int0, metavar="INDEX")
    p.add_argument("--nh", type=cli.int0, metavar="NH_ID")
    p.add_argument("--vni", type=cli.int0)
    p.add_argument("--dyn", action="store_true", help="dynamic mirroring")
    p.add_argument("--delete", type=cli.int0, metavar="INDEX")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""The small key -> next hop tables (``mpls``, ``vxlan``): one tool shape, two schemas."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from vrtwist.cli import _common as cli
from vrtwist.sandesh import ADD, DEL, DUMP, GET


def keyed_tool(
    prog: str,
    description: str,
    make: Callable[..., Any],
    key: str,
    nh_field: str,
    dump_start: dict[str, int],
    header: str,
    row: Callable[[Any], str],
) -> Callable[[Sequence[str] | None], int]:
    """``--dump``, ``--get K``, ``--create K --nh N``, ``--delete K`` over one table."""

    def body(args: argparse.Namespace) -> int:
        with cli.connect(args.sock_dir) as ks:
            if args.dump:
                objects = ks.dump(make(h_op=DUMP, **dump_start))
                cli.write(header)
                for obj in objects:
                    cli.write(row(obj))
                return 0
            if args.get is not None:
                objects = cli.request(ks, make(h_op=GET, **{key: args.get}))
                cli.write(header)
                for obj in objects:
                    cli.write(row(obj))
                return 0
            if args.create is not None:
                if args.nh is None:
                    raise cli.UsageError("--create needs --nh")
                cli.request(ks, make(h_op=ADD, **{key: args.create, nh_field: args.nh}))
                return 0
            if args.delete is not None:
                cli.request(ks, make(h_op=DEL, **{key: args.delete}))
                return 0
        raise cli.UsageError("one of --dump, --get, --create, --delete is needed")

    def main(argv: Sequence[str] | None = None) -> int:
        p = cli.parser(prog, description)
        p.add_argument("--dump", action="store_true", help="dump the whole table")
        p.add_argument("--get", type=cli.int0, metavar="KEY")
        p.add_argument("--create", type=cli.int0, metavar="KEY")
        p.add_argument("--nh", type=cli.int0, metavar="NH_ID")
        p.add_argument("--delete", type=cli.int0, metavar="KEY")
        return cli.run(body, p, argv)

    return main

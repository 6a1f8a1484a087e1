"""``vic-guestinfo``: read, write, publish and watch VIC's guestinfo keys.

Transport: ``vmware-rpctool`` when it is on PATH, else a directory of files
(``--dir``, or ``$VIC_GUESTINFO_DIR``, default ``/run/vrtwist/guestinfo``).

Examples::

    vic-guestinfo key --read-only common id          # guestinfo.vice./common/id
    vic-guestinfo publish started SESSION            # guest: launched fine
    vic-guestinfo publish started SESSION --error "exec: not found"
    vic-guestinfo publish status SESSION 0
    vic-guestinfo publish ip bridge 172.16.0.2/16
    vic-guestinfo show SESSION                       # appliance: what the guest said
    vic-guestinfo watch 'guestinfo.vice..sessions|SESSION.status' --count 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from vrtwist.vic.guestinfo import (
    FileTransport,
    GuestInfo,
    GuestInfoError,
    detectTransport,
    key,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vic-guestinfo", description="VIC guestinfo keys")
    p.add_argument("--dir", help="file-backed transport directory (instead of vmware-rpctool)")
    p.add_argument("--rpctool", default="vmware-rpctool", help="path of vmware-rpctool")
    p.add_argument(
        "--role",
        choices=("guest", "appliance"),
        default="guest",
        help="guest may not write read-only keys; appliance may (file transport only)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("get", help="print one key's value")
    g.add_argument("key")
    s = sub.add_parser("set", help="set one key")
    s.add_argument("key")
    s.add_argument("value")
    k = sub.add_parser("key", help="print the full key name for path elements")
    k.add_argument("--read-only", action="store_true")
    k.add_argument("--secret", action="store_true")
    k.add_argument("--non-persistent", action="store_true")
    k.add_argument("path", nargs="+")

    pub = sub.add_parser("publish", help="publish guest state as the tether does")
    psub = pub.add_subparsers(dest="what", required=True)
    ps = psub.add_parser("started")
    ps.add_argument("session")
    ps.add_argument("--error", help="launch error text instead of 'true'")
    ps.add_argument("--exec", action="store_true", help="an exec session (non-persistent)")
    pst = psub.add_parser("status")
    pst.add_argument("session")
    pst.add_argument("code", type=int)
    pst.add_argument("--exec", action="store_true")
    pt = psub.add_parser("time")
    pt.add_argument("session")
    pt.add_argument("which", choices=("createtime", "starttime", "stoptime"))
    pt.add_argument("when", type=int, nargs="?", help="unix seconds (default: now)")
    pt.add_argument("--exec", action="store_true")
    pip = psub.add_parser("ip")
    pip.add_argument("network")
    pip.add_argument("cidr")

    sh = sub.add_parser("show", help="a session's published state as JSON")
    sh.add_argument("session")
    sh.add_argument("--exec", action="store_true")
    sh.add_argument("--network", action="append", default=[], help="also show this network's IP")

    ls = sub.add_parser("list", help="all keys (file transport only)")
    del ls

    w = sub.add_parser("watch", help="print each change of the keys")
    w.add_argument("keys", nargs="+")
    w.add_argument("--interval", type=float, default=1.0)
    w.add_argument("--count", type=int, default=0, help="exit after this many changes")
    return p


def _publish(info: GuestInfo, args: argparse.Namespace) -> None:
    """``publish started|status|time|ip``: what the tether writes for a session."""
    if args.what == "started":
        info.publish_started(args.session, args.error, exec_session=args.exec)
    elif args.what == "status":
        info.publish_status(args.session, args.code, exec_session=args.exec)
    elif args.what == "time":
        when = args.when if args.when is not None else int(time.time())
        info.publish_time(args.session, args.which, when, exec_session=args.exec)
    elif args.what == "ip":
        info.publish_assigned_ip(args.network, args.cidr)


def _show(info: GuestInfo, args: argparse.Namespace, out: TextIO) -> None:
    """``show``: a session's state and the networks' addresses, as JSON."""
    st = info.session(args.session, exec_session=args.exec)
    body = {
        "session": args.session,
        "started": st.started,
        "launch_error": st.launch_error,
        "status": st.status,
        "createtime": st.createtime,
        "starttime": st.starttime,
        "stoptime": st.stoptime,
        "networks": {n: info.assigned_ip(n) for n in args.network},
    }
    print(json.dumps(body, indent=1, sort_keys=True), file=out)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of ``vic-guestinfo``; returns the exit code."""
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "key":
            print(
                key(
                    args.path,
                    readOnly=args.read_only,
                    secret=args.secret,
                    nonPersistent=args.non_persistent,
                ),
                file=out,
            )
            return 0
        transport = FileTransport(args.dir) if args.dir else detectTransport(tool=args.rpctool)
        info = GuestInfo(transport, role=args.role)
        if args.cmd == "get":
            value = info.get(args.key)
            if value is None:
                print(f"vic-guestinfo: {args.key} is not set", file=sys.stderr)
                return 1
            print(value, file=out)
        elif args.cmd == "set":
            info.set(args.key, args.value)
        elif args.cmd == "publish":
            _publish(info, args)
        elif args.cmd == "show":
            _show(info, args, out)
        elif args.cmd == "list":
            if not isinstance(transport, FileTransport):
                print("vic-guestinfo: list needs the file transport (--dir)", file=sys.stderr)
                return 2
            for name in transport.keys():
                print(f"{name}={transport.get(name)}", file=out)
        elif args.cmd == "watch":
            return _watch(info, args.keys, args.interval, args.count, out)
    except GuestInfoError as e:
        print(f"vic-guestinfo: {e}", file=sys.stderr)
        return 1
    return 0


def _watch(info: GuestInfo, keys: list[str], interval: float, count: int, out: TextIO) -> int:
    """Blocking poll loop for the command line (the library has a reactor-based watcher)."""
    last = {k: info.get(k) for k in keys}
    seen = 0
    try:
        while True:
            time.sleep(interval)
            for k in keys:
                v = info.get(k)
                if v != last[k]:
                    last[k] = v
                    print(f"{k}={'' if v is None else v}", file=out, flush=True)
                    seen += 1
                    if count and seen >= count:
                        return 0
    except KeyboardInterrupt:
        return 130

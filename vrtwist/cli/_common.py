"""What every vRouter utility shares: ``--sock-dir``, the ksync session, error printing.

The utilities talk ksync to ``<sock-dir>/dpdk_netlink`` with the blocking client of
``vrtwist.ksync.blocking``. A negative ``vr_response`` prints exactly what the real
tools print, ``vRouter(Response): <strerror> (<errno>)``, and the tool exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from vrtwist.ksync.blocking import KsyncConnectError, KsyncConnection, open_ksync
from vrtwist.ksync.clientcore import KsyncError, KsyncProtocolError

#: the DPDK vRouter's socket directory, the real tools' default for ``--sock-dir``
DEFAULT_SOCK_DIR = "/var/run/vrouter"

#: exit status after a negative vr_response, a broken channel, or bad usage
EXIT_RESPONSE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line arguments: the message is printed with the usage line."""


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--sock-dir`` (default: VRTWIST_SOCK_DIR or /var/run/vrouter)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--sock-dir",
        default=os.environ.get("VRTWIST_SOCK_DIR", DEFAULT_SOCK_DIR),
        help="directory holding the vRouter's dpdk_netlink socket (default %(default)s)",
    )
    return p


def int0(text: str) -> int:
    """An integer as C's ``strtoul(x, NULL, 0)`` reads it (decimal, 0x.., 0..)."""
    try:
        if len(text) > 1 and text.startswith("0") and text[1] not in "xXbBoO":
            return int(text, 8)
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid number: %r" % text) from None


def mac(text: str) -> list[int]:
    """``xx:xx:xx:xx:xx:xx`` (as ``ether_aton`` reads it) to six bytes."""
    parts = text.split(":")
    try:
        values = [int(p, 16) for p in parts]
    except ValueError:
        values = []
    if len(values) != 6 or not all(
        0 <= v <= 255 and 1 <= len(p) <= 2 for v, p in zip(values, parts, strict=True)
    ):
        raise argparse.ArgumentTypeError("invalid MAC address: %r" % text)
    return values


def mac_text(data: Sequence[int] | bytes) -> str:
    """``%02x:..`` as the tools' ``MAC_FORMAT``; zeros when the list is short."""
    raw = bytes(x & 0xFF for x in data)[:6].ljust(6, b"\0")
    return ":".join("%02x" % b for b in raw)


def ether_ntoa(data: Sequence[int] | bytes) -> str:
    """glibc ``ether_ntoa``: hex bytes without leading zeros (``de:ad:be:ef:0:1``)."""
    raw = bytes(x & 0xFF for x in data)[:6].ljust(6, b"\0")
    return ":".join("%x" % b for b in raw)


def mask_prefix(raw: Sequence[int] | bytes, plen: int) -> bytes:
    """``address_mask`` of the tools: the address bytes with bits past ``plen`` cleared."""
    data = bytes(x & 0xFF for x in raw)
    bits = len(data) * 8
    plen = max(0, min(plen, bits))
    value = int.from_bytes(data, "big") >> (bits - plen) << (bits - plen) if plen else 0
    return value.to_bytes(len(data), "big")


def connect(sock_dir: str) -> KsyncConnection:
    return open_ksync(sock_dir)


def run(
    body: Callable[[argparse.Namespace], int | None],
    p: argparse.ArgumentParser,
    argv: Sequence[str] | None,
) -> int:
    """Parse, run ``body``, and map channel errors to the real tools' messages."""
    args = p.parse_args(argv)
    try:
        status = body(args)
    except UsageError as e:
        p.print_usage(sys.stderr)
        print("%s: error: %s" % (p.prog, e), file=sys.stderr)
        return EXIT_USAGE
    except KsyncError as e:
        sys.stdout.flush()
        print(str(e))
        return EXIT_RESPONSE
    except KsyncConnectError as e:
        print("%s: %s" % (p.prog, e.strerror or e), file=sys.stderr)
        return EXIT_RESPONSE
    except BrokenPipeError:
        # the reader went away (``vif --list | head``): stop quietly, as the C tools die
        # of SIGPIPE; point stdout at /dev/null so the exit-time flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_RESPONSE
    except (KsyncProtocolError, OSError) as e:
        print("%s: ksync channel error: %s" % (p.prog, e), file=sys.stderr)
        return EXIT_RESPONSE
    return status or 0


def request(ks: KsyncConnection, msg: Any) -> list[Any]:
    """One request; its objects (raises KsyncError on a negative vr_response)."""
    return ks.request(msg).objects


def write(text: str) -> None:
    sys.stdout.write(text)

"""Blocking ksync client for the command-line utilities: no reactor, quick to start.

    with open_ksync("/var/run/vrouter") as ks:
        vifs = ks.dump(schema.vr_interface_req(h_op=DUMP, vifr_marker=-1))
        ks.request(schema.vr_mpls_req(h_op=ADD, mr_label=5, mr_nhid=1))

Same wire behaviour as the Twisted client (both use ``ClientCore``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from vrtwist.ksync.clientcore import (
    MAX_DUMP_PAGES,
    ClientCore,
    DumpPager,
    KsyncError,
    KsyncProtocolError,
    KsyncResponse,
    Result,
)

__all__ = [
    "KsyncConnectError",
    "KsyncConnection",
    "KsyncError",
    "KsyncProtocolError",
    "KsyncResponse",
    "open_ksync",
]

_MAX_DUMP_PAGES = MAX_DUMP_PAGES


class KsyncConnectError(OSError):
    """Cannot reach the vRouter's ksync socket."""


class KsyncConnection:
    """One blocking session on ``<sock-dir>/dpdk_netlink``."""

    def __init__(self, sock_dir: str, timeout: float | None = 10.0, nl_type: int = 0) -> None:
        self.path = os.path.join(sock_dir, "dpdk_netlink")
        self._core = ClientCore(nl_type=nl_type, pid=0)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
        except OSError as e:
            self._sock.close()
            raise KsyncConnectError(
                e.errno, "cannot connect to %s: %s" % (self.path, e.strerror or e)
            ) from None

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> KsyncConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def exchange(self, msgs: Sequence[Any]) -> list[Result]:
        """Send ``msgs`` bunched in one netlink message; one result (or error object) each."""
        seq, data = self._core.build(msgs)
        self._sock.sendall(data)
        while True:
            chunk = self._sock.recv(65536)
            if not chunk:
                self._core.pending.clear()
                raise KsyncProtocolError("connection closed by the vRouter")
            for got_seq, results in self._core.feed(chunk):
                if got_seq == seq:
                    return results

    def request(self, msg: Any) -> KsyncResponse:
        """Send one request; return its response or raise KsyncError / KsyncProtocolError."""
        (r,) = self.exchange([msg])
        if isinstance(r, Exception):
            raise r
        return r

    def dump(self, req: Any) -> list[Any]:
        """Every object of a DUMP, following the marker page by page."""
        pager = DumpPager(req, _MAX_DUMP_PAGES)
        while req is not None:
            resp = self.request(pager.request)
            req = pager.page(resp.objects, resp.more)
        return pager.objects


def open_ksync(sock_dir: str, timeout: float | None = 10.0) -> KsyncConnection:
    """Connect to ``<sock-dir>/dpdk_netlink`` (family id 0, as vtest/--sock-dir clients do)."""
    return KsyncConnection(sock_dir, timeout, nl_type=0)

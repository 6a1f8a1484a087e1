"""ADDR, as ``vpnkit-forwarder -data-listen/-data-connect`` reads it, turned into endpoints.

Forms, tried in this order:

``PORT`` (decimal integer)
    AF_VSOCK port; listen on any CID, connect to CID 2 (the host), as Go does.
``CID/PORT``
    AF_VSOCK with an explicit CID (Go's ``transport`` syntax).
``vsock:CID:PORT``
    AF_VSOCK; listening binds that CID.
``tcp:...``, ``unix:...``, ``ssl:...``, any other Twisted endpoint string
    handed to ``serverFromString``/``clientFromString``.
anything else
    a Unix socket path; a stale socket file there is removed before listening (a
    regular file is not: that is an error), as Go's transport does.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import (
    UNIXClientEndpoint,
    clientFromString,
)
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

from vrtwist.access import SocketAccess
from vrtwist.unixlisten import UNIXListenEndpoint, listen_endpoint

__all__ = ["VSOCK_HOST_CID", "AddressError", "parse_connect_addr", "parse_listen_addr"]

VSOCK_HOST_CID = 2
_ENDPOINT = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_CID_PORT = re.compile(r"^(\d+)/(\d+)$")


class AddressError(ValueError):
    """ADDR is not one of the accepted forms."""


def _vsock_numbers(cid: str, port: str, addr: str) -> tuple[int, int]:
    try:
        c, p = int(cid, 0), int(port, 0)
    except ValueError:
        raise AddressError(f"{addr!r}: vsock CID and port must be integers") from None
    if not (0 <= c <= 0xFFFFFFFF and 0 <= p <= 0xFFFFFFFF):
        raise AddressError(f"{addr!r}: vsock CID and port are 32-bit unsigned")
    return c, p


def _classify(addr: str) -> tuple[str, Any]:
    if not addr:
        raise AddressError("empty address")
    if addr.isdigit():
        return "vsock", (None, _vsock_numbers("0", addr, addr)[1])
    m = _CID_PORT.match(addr)
    if m:
        return "vsock", _vsock_numbers(m.group(1), m.group(2), addr)
    if addr.startswith("vsock:"):
        parts = addr.split(":")
        if len(parts) != 3:
            raise AddressError(f"{addr!r}: expected vsock:CID:PORT")
        return "vsock", _vsock_numbers(parts[1], parts[2], addr)
    if _ENDPOINT.match(addr) and not addr.startswith(("/", ".")):
        return "endpoint", addr
    return "unix", addr


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressError(f"{path}: exists and is not a socket; refusing to remove it")
    os.unlink(path)


@implementer(IStreamServerEndpoint)
class _StaleSocketUNIXServerEndpoint:
    """A unix listener that first removes a stale socket file (never a regular file).

    The socket is the owner's (0600), or ``access``'s group's too (0660): whoever holds
    the data link may open channels the forwarder dials with its own rights.
    """

    def __init__(self, reactor: Any, path: str, access: SocketAccess | None = None) -> None:
        self.path = path
        self._inner = UNIXListenEndpoint(reactor, path, access)

    def listen(self, protocolFactory: Any) -> Any:
        try:
            _remove_stale_socket(self.path)
        except AddressError:
            return defer.fail()
        return self._inner.listen(protocolFactory)


def parse_listen_addr(reactor: Any, addr: str, access: SocketAccess | None = None) -> Any:
    """An ``IStreamServerEndpoint`` for ``--data-listen ADDR`` (unix ones get ``access``)."""
    kind, value = _classify(addr)
    if kind == "vsock":
        from vrtwist.vsock.endpoints import VMADDR_CID_ANY, VSockServerEndpoint

        cid, port = value
        return VSockServerEndpoint(reactor, port, VMADDR_CID_ANY if cid is None else cid)
    if kind == "endpoint":
        return listen_endpoint(reactor, value, access)
    return _StaleSocketUNIXServerEndpoint(reactor, value, access)


def parse_connect_addr(reactor: Any, addr: str) -> Any:
    """An ``IStreamClientEndpoint`` for ``--data-connect ADDR``."""
    kind, value = _classify(addr)
    if kind == "vsock":
        from vrtwist.vsock.endpoints import VSockClientEndpoint

        cid, port = value
        return VSockClientEndpoint(reactor, VSOCK_HOST_CID if cid is None else cid, port)
    if kind == "endpoint":
        return clientFromString(reactor, value)
    return UNIXClientEndpoint(reactor, value)

"""Twisted listeners on unix sockets with :mod:`vrtwist.access`'s explicit modes.

:class:`UNIXListenEndpoint` is an ``IStreamServerEndpoint`` whose socket is bound
owner-only and then opened to exactly the wanted mode (Twisted's own binds with the
umask, then ``chmod``\\ s to 0666 by default); :func:`listen_endpoint` turns the endpoint
strings users already pass (``unix:/path``, or any other ``serverFromString`` string)
into endpoints, giving every ``unix:`` one this treatment.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.unix import Port as _TwistedUNIXPort
from twisted.python import usage
from zope.interface import implementer

from vrtwist._twisted_compat import bound_unix_path
from vrtwist.access import (
    OWNER_MODE,
    SocketAccess,
    is_filesystem_path,
    open_after_bind,
    restrict_before_bind,
)

__all__ = [
    "DEFAULT_BACKLOG",
    "UNIXListenEndpoint",
    "access_from_options",
    "listen_endpoint",
    "with_backlog",
]

_EXPLICIT_MODE = re.compile(r"(?:^|(?<!\\):)mode=([0-7]+)(?::|$)")
_EXPLICIT_BACKLOG = re.compile(r"(?:^|(?<!\\):)backlog=")

#: Listen backlog of every daemon's listener whose endpoint string does not say
#: ``backlog=``. Twisted's default (50) overflowed when 200 REST clients connected at
#: once (SYN cookies, then now and then a reset); the kernel caps it at somaxconn.
DEFAULT_BACKLOG = 1024
#: Endpoint types whose string parser takes ``backlog=``.
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix", "vsock"})


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """``description`` with ``:backlog=<backlog>`` added, unless it names a backlog
    itself (the operator's choice wins) or its endpoint type takes none."""
    kind = description.partition(":")[0]
    if kind not in _BACKLOG_TYPES or _EXPLICIT_BACKLOG.search(description):
        return description
    return f"{description}:backlog={backlog}"


def access_from_options(options: Any) -> SocketAccess:
    """The :class:`SocketAccess` of parsed options with ``--socket-group`` (usage errors)."""
    try:
        return SocketAccess.from_group(options.get("socket-group"))
    except ValueError as e:
        raise usage.UsageError(f"--socket-group: {e}") from None


class _RestrictedPort(_TwistedUNIXPort):
    """Twisted's unix listening port, bound through :func:`bind_unix`'s two steps."""

    def __init__(
        self, path: str, factory: IProtocolFactory, backlog: int, mode: int,
        gid: int | None, reactor: Any, wantPID: bool,
    ) -> None:
        # Twisted chmods to self.mode right after bind: keep that at owner-only and
        # open up to the wanted mode (group set first) once listening has started.
        super().__init__(path, factory, backlog, OWNER_MODE, reactor, wantPID)  # type: ignore[arg-type]
        self._finalMode = mode
        self._gid = gid

    def createInternetSocket(self) -> socket.socket:
        skt: socket.socket = super().createInternetSocket()
        restrict_before_bind(skt)
        return skt

    def startListening(self) -> None:
        super().startListening()
        path = bound_unix_path(self)
        if is_filesystem_path(path):
            try:
                open_after_bind(path, self._finalMode, self._gid)
            except OSError:
                self.stopListening()
                raise


@implementer(IStreamServerEndpoint)
class UNIXListenEndpoint:
    """A unix ``IStreamServerEndpoint`` whose socket gets exactly ``access.mode``.

    On a reactor that is not a real POSIX one (``MemoryReactor`` in tests) it falls back to
    ``listenUNIX`` with the same mode, so fakes still record the listener.
    """

    def __init__(
        self,
        reactor: Any,
        path: str,
        access: SocketAccess | None = None,
        backlog: int = 50,
        mode: int | None = None,
        wantPID: bool = False,
    ) -> None:
        self.reactor = reactor
        self.path = path
        self.access = access or SocketAccess()
        self.backlog = backlog
        self.mode = self.access.mode if mode is None else mode
        self.wantPID = wantPID

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        if not isinstance(self.reactor, PosixReactorBase):
            return defer.execute(
                self.reactor.listenUNIX, self.path, protocolFactory, self.backlog, self.mode
            )

        def start() -> IListeningPort:
            port = _RestrictedPort(
                self.path, protocolFactory, self.backlog, self.mode, self.access.gid,
                self.reactor, self.wantPID,
            )
            port.startListening()
            return port

        return defer.execute(start)


def listen_endpoint(
    reactor: Any,
    description: str,
    access: SocketAccess | None = None,
    backlog: int = DEFAULT_BACKLOG,
) -> IStreamServerEndpoint:
    """``serverFromString(reactor, description)``, with ``unix:`` made restrictive and a
    listen backlog of ``backlog`` unless the string says ``backlog=``.

    A ``unix:`` description gets ``access``'s mode (0600, or 0660 and the group)
    instead of Twisted's 0666; a ``mode=`` the operator wrote in the string is honoured
    (it is an explicit choice), still applied without a umask window.
    """
    description = with_backlog(description, backlog)
    ep: IStreamServerEndpoint = serverFromString(reactor, description)
    if not isinstance(ep, UNIXServerEndpoint):
        return ep
    explicit = _EXPLICIT_MODE.search(description)
    return UNIXListenEndpoint(
        reactor,
        ep._address,
        access,
        backlog=ep._backlog,
        mode=int(explicit.group(1), 8) if explicit else None,
        wantPID=bool(ep._wantPID),
    )

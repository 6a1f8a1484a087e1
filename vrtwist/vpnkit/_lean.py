"""Lean socket transports for the relay's local connections (one per proxied connection).

A forwarded connection lives for a few hundred microseconds in the connection-rate
benchmark, and Twisted's generic path costs a noticeable part of that in Python:
``Port.doRead`` builds a logging context, an attrs address and a formatted log prefix for
every accepted client, and ``adoptStreamConnection`` duplicates the file descriptor and
asks the kernel for both addresses of a socket we have just connected.  These classes keep
Twisted's transport machinery (``tcp.Connection``: buffering, producers, half-close,
``loseConnection``/``abortConnection`` and the reactor's event dispatch) and only skip
that per-connection set-up:

- :class:`LeanStream` is a ``tcp.Connection`` built straight from a connected socket,
  with ``getPeer``/``getHost`` computed when asked.  It closes without the redundant
  ``shutdown(SHUT_RDWR)`` before ``close()`` (the splice has already sent its FIN when
  both directions are done; the socket is never shared with another process).
- :class:`LeanTCPPort` is a ``tcp.Port`` whose accept loop builds :class:`LeanStream`
  transports; on descriptor exhaustion it falls back to Twisted's own loop, which knows
  how to shed the client instead of spinning.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import abstract, address, tcp
from twisted.internet.interfaces import IProtocol

from vrtwist.logfields import Logger

__all__ = ["LeanStream", "LeanTCPPort", "adopt_connected"]

_FAMILY_TYPE = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6", socket.AF_UNIX: "UNIX"}


def _address(family: int, sockaddr: Any) -> Any:
    if family == socket.AF_INET:
        return address.IPv4Address("TCP", sockaddr[0], sockaddr[1])
    if family == socket.AF_INET6:
        return address.IPv6Address("TCP", *sockaddr)
    name = sockaddr if sockaddr else None
    if isinstance(name, str):
        name = name.encode("utf-8")
    return address.UNIXAddress(name)


class LeanStream(tcp.Connection):
    """A connected stream socket (TCP or unix) as a Twisted transport, set up cheaply."""

    _shouldShutdown = False
    logstr = "vpnkit-local"

    def __init__(
        self, skt: socket.socket, protocol: IProtocol, reactor: Any, peer: Any = None
    ) -> None:
        # tcp.Connection.__init__ minus setblocking(): our sockets are non-blocking already.
        abstract.FileDescriptor.__init__(self, reactor=reactor)
        self.socket = skt
        self.fileno = skt.fileno
        self.protocol = protocol
        self._family = skt.family
        self._peer = peer

    def setTcpNoDelay(self, enabled: bool) -> None:
        """TCP_NODELAY on TCP sockets; unix sockets have no Nagle to turn off."""
        if self._family != socket.AF_UNIX:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled)

    def getPeer(self) -> Any:
        if self._peer is None:
            try:
                self._peer = self.socket.getpeername()
            except (OSError, AttributeError):
                self._peer = ("", 0) if self._family != socket.AF_UNIX else None
        return _address(self._family, self._peer)

    def getHost(self) -> Any:
        try:
            return _address(self._family, self.socket.getsockname())
        except (OSError, AttributeError):
            return _address(self._family, ("", 0) if self._family != socket.AF_UNIX else None)

    def __repr__(self) -> str:
        return f"<LeanStream {_FAMILY_TYPE.get(self._family, '?')} fd={self._fd()}>"

    def _fd(self) -> int:
        try:
            return self.socket.fileno()
        except AttributeError:
            return -1


def adopt_connected(reactor: Any, skt: socket.socket, protocol: IProtocol) -> LeanStream:
    """Start a transport on a connected non-blocking socket and connect ``protocol`` to it."""
    t = LeanStream(skt, protocol, reactor)
    t.connected = 1
    t.startReading()
    protocol.makeConnection(t)
    return t


#: accepts per readiness event at most (Twisted grows its own count; a fixed cap is
#: enough here and keeps one busy port from starving the link)
ACCEPTS_PER_EVENT = 64
_SHED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class LeanTCPPort(tcp.Port):
    """A TCP listening port whose clients get :class:`LeanStream` transports."""

    _log = Logger()

    def doRead(self) -> None:
        sock = self.socket
        family = self.addressFamily
        factory: Any = self.factory
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                fd, addr = sock._accept()  # type: ignore[union-attr]
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno in _SHED:
                    # Twisted's loop sheds the client with its reserved descriptor.
                    tcp.Port.doRead(self)
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                self._log.error("accept on {port}: {err}", port=self.getHost(), err=str(e))
                return
            skt = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            skt.setblocking(False)
            try:
                protocol = factory.buildProtocol(_address(family, addr))
            except Exception:  # noqa: BLE001 - as the reactor does: log, drop this connection only
                self._log.failure("building a protocol for {addr}", addr=addr)
                skt.close()
                continue
            if protocol is None:
                skt.close()
                continue
            t = LeanStream(skt, protocol, self.reactor, addr)
            t.connected = 1
            t.startReading()
            try:
                protocol.makeConnection(t)
            except Exception:  # noqa: BLE001 - else the listening port closes
                # Escaping into the reactor would close the listening port itself.
                self._log.failure("starting the protocol for {addr}", addr=addr)
                t.abortConnection()

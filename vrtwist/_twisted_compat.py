"""The one door to Twisted's private internals.

A few hot paths (the vpnkit relay's immediate sends, the vsock relay's splice, the daemons'
signal exit code) need state that Twisted keeps private. Every such use is here, and
each helper first probes for the private name it needs: when a Twisted release no longer
has it, the helper takes the public API instead, which is slower (one more reactor turn,
one more copy) or plainer (no re-raised signal), but correct. The ``HAS_*`` flags hold
the import-time probes; helpers that read instance state also probe the instance.
``tests/test_twisted_compat.py`` forces each fallback and checks what it does.
"""

from __future__ import annotations

import socket
import types
from collections.abc import Callable
from typing import Any

from twisted.internet import abstract, tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, ISSLTransport
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

__all__ = [
    "HAS_CLOSE_WRITE",
    "HAS_SENDMSG_MIXIN",
    "HAS_WRAPPING_FACTORY",
    "HAS_WRITE_STATE",
    "bound_unix_path",
    "client_wrapping_factory",
    "close_write_now",
    "disconnector",
    "nothing_queued",
    "override_io",
    "plain_socket",
    "plain_unix_reads",
    "restore_io",
    "set_exit_signal",
    "write_closed",
    "write_idle",
]

# -- probes ---------------------------------------------------------------------------

#: ``FileDescriptor`` keeps its half-close state in ``_writeDisconnecting`` /
#: ``_writeDisconnected`` (class defaults) and the queued bytes not yet joined into
#: ``dataBuffer`` in ``_tempDataBuffer`` / ``_tempDataLen`` (set per instance).
HAS_WRITE_STATE = all(
    hasattr(abstract.FileDescriptor, n) for n in ("dataBuffer", "_writeDisconnecting")
)
#: ``tcp.Connection._closeWriteConnection``: the FIN that ``doWrite`` sends after a
#: ``loseWriteConnection`` once the buffer is empty.
HAS_CLOSE_WRITE = HAS_WRITE_STATE and hasattr(tcp.Connection, "_closeWriteConnection") and (
    hasattr(abstract.FileDescriptor, "_writeDisconnected")
)

try:
    from twisted.internet.unix import _SendmsgMixin as _SendmsgMixinType
except ImportError:  # a Twisted without it: unix transports read as tcp.Connection does
    _SendmsgMixinType = None  # type: ignore[assignment, misc]
#: Twisted's unix transports read through ``recvmsg`` (for passed descriptors) by
#: mixing ``_SendmsgMixin`` in.
HAS_SENDMSG_MIXIN = _SendmsgMixinType is not None

try:
    from twisted.internet.endpoints import _WrappingFactory
except ImportError:
    _WrappingFactory = None  # type: ignore[assignment, misc]
#: ``endpoints._WrappingFactory``: a client factory whose ``_onConnection`` fires with the
#: protocol once connected (what every Twisted client endpoint returns).
HAS_WRAPPING_FACTORY = _WrappingFactory is not None


# -- writes -----------------------------------------------------------------------------


def nothing_queued(t: Any) -> bool:
    """True only when transport ``t`` provably holds no bytes waiting to be written.

    Without the private write state the answer is False: the caller uses ``write``.
    """
    if not HAS_WRITE_STATE:
        return False
    temp = getattr(t, "_tempDataLen", None)
    return temp is not None and not temp and not t.dataBuffer


def write_idle(t: Any) -> bool:
    """:func:`nothing_queued`, connected, and neither closing nor half-closing.

    Then bytes may go to its socket directly without reordering what Twisted holds.
    """
    return nothing_queued(t) and bool(t.connected) and not (
        t.disconnecting or t._writeDisconnecting
    )


def write_closed(t: Any) -> bool:
    """True when ``t`` has already sent its FIN (a half-close completed)."""
    return HAS_CLOSE_WRITE and bool(getattr(t, "_writeDisconnected", False))


def close_write_now(t: Any) -> bool:
    """Send the FIN of an idle transport now, as its own ``doWrite`` would later.

    Returns False, having called the public ``loseWriteConnection`` (the FIN leaves on
    the next reactor turn), when ``t`` is not idle or the private path is absent.
    """
    if not HAS_CLOSE_WRITE or not write_idle(t) or not hasattr(t, "_closeWriteConnection"):
        t.loseWriteConnection()
        return False
    t._writeDisconnecting = True
    t._writeDisconnected = True
    t._closeWriteConnection()
    return True


# -- reads ------------------------------------------------------------------------------


def disconnector(reactor: Any) -> Callable[[Any, Any, bool], None] | None:
    """The reactor's ``_disconnectSelectable(selectable, why, isRead)``, or None.

    With it a caller may run a transport's ``doRead`` outside a read event and close the
    transport as the reactor would; without it the caller waits for the read event.
    """
    return getattr(reactor, "_disconnectSelectable", None)


def plain_unix_reads(t: Any) -> bool:
    """Make a unix-socket transport read with ``recv`` instead of ``recvmsg``.

    Returns False (and leaves ``t`` alone) when ``t`` is not such a transport or this
    Twisted has no ``_SendmsgMixin``; reads then keep Twisted's own path.
    """
    if not HAS_SENDMSG_MIXIN or _SendmsgMixinType is None:
        return False
    if not (isinstance(t, _SendmsgMixinType) and isinstance(t, tcp.Connection)):
        return False
    t.doRead = types.MethodType(tcp.Connection.doRead, t)  # type: ignore[method-assign]
    return True


def override_io(t: Any, **methods: Callable[..., Any]) -> bool:
    """Give one transport its own ``doRead``/``doWrite``/... (the reactor looks them up
    on the instance); False, with nothing changed, if the instance cannot hold them."""
    d = getattr(t, "__dict__", None)
    if d is None:
        return False
    d.update(methods)
    return True


def restore_io(t: Any, names: tuple[str, ...]) -> None:
    """Back to the class's methods after :func:`override_io`."""
    d = getattr(t, "__dict__", None)
    if d is not None:
        for name in names:
            d.pop(name, None)


# -- process ----------------------------------------------------------------------------


def set_exit_signal(reactor: Any, signum: int) -> bool:
    """Tell twistd which signal stopped the reactor, so it re-raises it at exit.

    Returns False where the reactor keeps no ``_exitSignal``: the daemon then exits
    with status 0 after a clean stop, as a plain ``reactor.stop()`` would.
    """
    if not hasattr(reactor, "_exitSignal"):
        return False
    reactor._exitSignal = signum
    return True


# -- endpoints --------------------------------------------------------------------------


class _PublicWrappingFactory(ClientFactory):
    """What ``_WrappingFactory`` does, from public pieces: ``_onConnection`` fires with
    the protocol once its transport is connected, or fails with why it was not."""

    def __init__(self, wrapped: IProtocolFactory) -> None:
        self._wrappedFactory = wrapped
        self._onConnection: Deferred[IProtocol] = Deferred()

    def doStart(self) -> None:
        self._wrappedFactory.doStart()

    def doStop(self) -> None:
        self._wrappedFactory.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        try:
            proto = self._wrappedFactory.buildProtocol(addr)
        except BaseException:  # noqa: BLE001 - as Twisted's wrapper: to the Deferred
            self._onConnection.errback()
            return None
        if proto is None:
            from twisted.internet.error import NoProtocol

            self._onConnection.errback(NoProtocol())
            return None
        made = proto.makeConnection
        onConnection = self._onConnection

        def makeConnection(transport: Any) -> None:
            made(transport)
            if not onConnection.called:
                onConnection.callback(proto)

        proto.makeConnection = makeConnection  # type: ignore[method-assign]
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self._onConnection.called:
            self._onConnection.errback(reason)


def client_wrapping_factory(factory: IProtocolFactory) -> tuple[Any, Deferred[IProtocol]]:
    """A client factory for a connector and the Deferred that fires with the protocol."""
    if HAS_WRAPPING_FACTORY and _WrappingFactory is not None:
        wf: Any = _WrappingFactory(factory)
    else:
        wf = _PublicWrappingFactory(factory)
    return wf, wf._onConnection


# -- sockets ----------------------------------------------------------------------------


def plain_socket(transport: Any) -> socket.socket | None:
    """The socket object under a plain (not TLS) socket transport, or None.

    Twisted's socket transports keep it in ``socket``; a transport that started TLS
    says so with ``TLS`` or ``ISSLTransport``, and its socket carries ciphertext.
    """
    if getattr(transport, "TLS", False) or ISSLTransport.providedBy(transport):
        return None
    sock = getattr(transport, "socket", None)
    return sock if isinstance(sock, socket.socket) else None


def bound_unix_path(port: Any) -> Any:
    """The path a listening unix port bound (str or bytes; abstract names start with NUL).

    Newer Twisted keeps it in ``Port._bindPath``; without that, the public
    ``getHost().name`` of the listening socket says the same.
    """
    path = getattr(port, "_bindPath", None)
    if path is None:
        path = port.getHost().name
    return path

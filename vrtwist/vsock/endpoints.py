"""AF_VSOCK stream endpoints for Twisted.

Twisted's ``adoptStreamPort``/``adoptStreamConnection`` refuse ``AF_VSOCK``
(``UnsupportedAddressFamily: 40``), so the listening port and the client
connection here reuse Twisted's POSIX TCP transport classes with the address
family switched and the address objects replaced. A vsock socket is a stream
socket with the same read/write/shutdown semantics as TCP; only addressing
differs: ``(cid, port)``, both unsigned 32-bit.

String grammar (``serverFromString`` / ``clientFromString`` through the
``vsock`` plugin in ``twisted/plugins/vrtwist_plugins.py``):

server
    ``vsock:PORT``                  listen on ``(VMADDR_CID_ANY, PORT)``
    ``vsock:PORT:cid=CID``          listen on ``(CID, PORT)``
    ``vsock:CID:PORT``              the same, positional
    ``...:backlog=N``               listen backlog (default 50)
client
    ``vsock:CID:PORT``              connect to ``(CID, PORT)``
    ``vsock:cid=CID:port=PORT``     the same, by keyword
    ``...:timeout=SECONDS``         connect timeout (default 30)

``CID`` is a decimal or ``0x`` hex number or one of the names ``any``,
``hypervisor`` (0), ``local`` (1), ``host`` (2). ``PORT`` is a number or
``any``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, error, tcp
from twisted.internet.base import BaseConnector
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from zope.interface import implementer

from vrtwist._twisted_compat import client_wrapping_factory
from vrtwist.logfields import Logger

AF_VSOCK: socket.AddressFamily = socket.AF_VSOCK  # Linux only, like vsock itself
VMADDR_CID_ANY: int = 0xFFFFFFFF
VMADDR_PORT_ANY: int = 0xFFFFFFFF
VMADDR_CID_HYPERVISOR: int = 0
VMADDR_CID_LOCAL: int = 1
VMADDR_CID_HOST: int = 2
IOCTL_VM_SOCKETS_GET_LOCAL_CID: int = 0x7B9

_CID_NAMES = {
    "any": VMADDR_CID_ANY,
    "hypervisor": VMADDR_CID_HYPERVISOR,
    "local": VMADDR_CID_LOCAL,
    "host": VMADDR_CID_HOST,
}

__all__ = [
    "AF_VSOCK",
    "VMADDR_CID_ANY",
    "VMADDR_CID_HOST",
    "VMADDR_CID_LOCAL",
    "VMADDR_PORT_ANY",
    "VSockAddress",
    "VSockClientEndpoint",
    "VSockClientParser",
    "VSockServerEndpoint",
    "VSockServerParser",
    "localCID",
    "parseCID",
    "parsePort",
]


class VSockAddressError(ValueError):
    """A CID or port that is not a valid unsigned 32-bit vsock value."""


def _u32(text: str, what: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise VSockAddressError(f"vsock {what} {text!r} is not a number") from None
    if value == -1:
        value = 0xFFFFFFFF
    if not 0 <= value <= 0xFFFFFFFF:
        raise VSockAddressError(f"vsock {what} {text!r} is out of the 32-bit range")
    return value


def parseCID(text: str | int) -> int:
    """Turn ``3``, ``0x3``, ``any``, ``host``... into a CID number."""
    if isinstance(text, int):
        return _u32(str(text), "CID")
    name = text.strip().lower()
    if name in _CID_NAMES:
        return _CID_NAMES[name]
    return _u32(name, "CID")


def parsePort(text: str | int) -> int:
    """Turn ``1024`` or ``any`` into a vsock port number."""
    if isinstance(text, int):
        return _u32(str(text), "port")
    name = text.strip().lower()
    if name == "any":
        return VMADDR_PORT_ANY
    return _u32(name, "port")


def localCID() -> int:
    """This machine's own CID, read with the vsock ioctl on ``/dev/vsock``."""
    import fcntl
    import struct

    with open("/dev/vsock", "rb") as dev:
        buf = fcntl.ioctl(dev, IOCTL_VM_SOCKETS_GET_LOCAL_CID, b"\0" * 4)
    cid: int = struct.unpack("I", buf)[0]
    return cid


@implementer(IAddress)
@dataclass(frozen=True)
class VSockAddress:
    """A vsock endpoint address: the peer's CID is how a host identifies a guest."""

    cid: int
    port: int
    type: str = "VSOCK"

    def __str__(self) -> str:
        return f"vsock:{self.cid}:{self.port}"


def _addr(pair: Any) -> VSockAddress:
    cid, port = pair
    return VSockAddress(int(cid), int(port))


class _VSockTransport:
    """What both vsock transports answer differently from TCP: addresses and TCP options."""

    socket: Any

    def getHost(self) -> VSockAddress:
        return _addr(self.socket.getsockname())

    def getTcpNoDelay(self) -> bool:
        """vsock has no Nagle: always "no delay"."""
        return True

    def setTcpNoDelay(self, enabled: bool) -> None:
        """No-op: vsock has no Nagle algorithm to turn off."""

    def getTcpKeepAlive(self) -> bool:
        return False

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """No-op: vsock has no TCP keepalive."""


class VSockServer(_VSockTransport, tcp.Server):
    """Accepted vsock connection: Twisted's TCP server transport with vsock addresses."""

    def getPeer(self) -> VSockAddress:
        return _addr(self.client)


@implementer(IListeningPort)
class VSockPort(tcp.Port):
    """A listening AF_VSOCK port, built on Twisted's TCP port."""

    addressFamily = AF_VSOCK
    transport = VSockServer
    _type = "VSOCK"

    def __init__(
        self,
        port: int,
        factory: IProtocolFactory,
        backlog: int = 50,
        cid: int = VMADDR_CID_ANY,
        reactor: Any = None,
    ) -> None:
        # Bypass tcp.Port.__init__ (it parses IP interfaces); set what
        # startListening reads.
        from twisted.internet import base

        base.BasePort.__init__(self, reactor=reactor)
        self.port = port
        self.interface = cid  # type: ignore[assignment]
        self._reuseAddress = False
        self._reusePort = False
        self.factory = factory  # type: ignore[assignment]
        self.backlog = backlog

    def _buildAddr(self, address: Any) -> VSockAddress:
        return _addr(address)

    def getHost(self) -> VSockAddress:
        return _addr(self.socket.getsockname())


class VSockClient(_VSockTransport, tcp.BaseClient):
    """An outgoing vsock connection: Twisted's TCP client with vsock addresses."""

    addressFamily = AF_VSOCK

    def __init__(self, cid: int, port: int, connector: VSockConnector, reactor: Any) -> None:
        self.connector = connector
        self.addr = (cid, port)
        self._requiresResolution = False
        whenDone: Any = self.resolveAddress
        err = None
        skt = None
        try:
            skt = self.createInternetSocket()
        except OSError as se:
            err = error.ConnectBindError(se.args[0], se.args[1])
            whenDone = None
        self._finishInit(whenDone, skt, err, reactor)

    def getPeer(self) -> VSockAddress:
        return _addr(self.addr)


class VSockConnector(BaseConnector):
    """Drives one outgoing vsock connection attempt (timeout, cancellation)."""

    def __init__(self, cid: int, port: int, factory: Any, timeout: float, reactor: Any) -> None:
        self.cid = cid
        self.port = port
        BaseConnector.__init__(self, factory, timeout, reactor)

    def _makeTransport(self) -> VSockClient:  # type: ignore[override]
        return VSockClient(self.cid, self.port, self, self.reactor)

    def getDestination(self) -> VSockAddress:
        return VSockAddress(self.cid, self.port)


@implementer(IStreamServerEndpoint)
class VSockServerEndpoint:
    """Listen for vsock connections; protocols see the caller's CID in ``getPeer()``."""

    _log = Logger()

    def __init__(
        self, reactor: Any, port: int, cid: int = VMADDR_CID_ANY, backlog: int = 50
    ) -> None:
        self._reactor = reactor
        self._port = parsePort(port)
        self._cid = parseCID(cid)
        self._backlog = backlog

    def __repr__(self) -> str:
        return f"VSockServerEndpoint(cid={self._cid}, port={self._port})"

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        def start() -> IListeningPort:
            p = VSockPort(self._port, protocolFactory, self._backlog, self._cid, self._reactor)
            p.startListening()
            return p

        return defer.execute(start)


@implementer(IStreamClientEndpoint)
class VSockClientEndpoint:
    """Connect to ``(cid, port)`` over vsock."""

    def __init__(self, reactor: Any, cid: int, port: int, timeout: float = 30) -> None:
        self._reactor = reactor
        self._cid = parseCID(cid)
        self._port = parsePort(port)
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"VSockClientEndpoint(cid={self._cid}, port={self._port})"

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        try:
            wf, connected = client_wrapping_factory(protocolFactory)
            connector = VSockConnector(self._cid, self._port, wf, self._timeout, self._reactor)
            connector.connect()
            return connected
        except BaseException:  # noqa: BLE001 - endpoint contract: fail the Deferred
            return defer.fail()


class VSockServerParser:
    """``vsock:PORT[:cid=CID][:backlog=N]`` or ``vsock:CID:PORT``."""

    prefix = "vsock"

    def parseStreamServer(self, reactor: Any, *args: str, **kwargs: str) -> VSockServerEndpoint:
        kw = dict(kwargs)
        pos = list(args)
        if len(pos) == 2:
            if "cid" in kw or "port" in kw:
                raise VSockAddressError(
                    "vsock server: give CID and PORT either by position or by keyword"
                )
            kw["cid"], kw["port"] = pos
        elif len(pos) == 1:
            if "port" in kw:
                raise VSockAddressError("vsock server: port given twice")
            kw["port"] = pos[0]
        elif len(pos) > 2:
            raise VSockAddressError(f"vsock server: too many fields {args!r}; use vsock:CID:PORT")
        if "port" not in kw:
            raise VSockAddressError(
                "vsock server: a port is required (vsock:PORT or vsock:CID:PORT)"
            )
        unknown = set(kw) - {"cid", "port", "backlog"}
        if unknown:
            raise VSockAddressError(f"vsock server: unknown options {sorted(unknown)}")
        return VSockServerEndpoint(
            reactor,
            parsePort(kw["port"]),
            parseCID(kw.get("cid", "any")),
            int(kw.get("backlog", "50")),
        )


class VSockClientParser:
    """``vsock:CID:PORT[:timeout=SECONDS]``."""

    prefix = "vsock"

    def parseStreamClient(self, reactor: Any, *args: str, **kwargs: str) -> VSockClientEndpoint:
        kw = dict(kwargs)
        pos = list(args)
        if len(pos) == 2:
            if "cid" in kw or "port" in kw:
                raise VSockAddressError(
                    "vsock client: give CID and PORT either by position or by keyword"
                )
            kw["cid"], kw["port"] = pos
        elif pos:
            raise VSockAddressError(f"vsock client: expected vsock:CID:PORT, got fields {args!r}")
        if "cid" not in kw or "port" not in kw:
            raise VSockAddressError("vsock client: both CID and PORT are required (vsock:CID:PORT)")
        unknown = set(kw) - {"cid", "port", "timeout"}
        if unknown:
            raise VSockAddressError(f"vsock client: unknown options {sorted(unknown)}")
        return VSockClientEndpoint(
            reactor,
            parseCID(kw["cid"]),
            parsePort(kw["port"]),
            float(kw.get("timeout", "30")),
        )

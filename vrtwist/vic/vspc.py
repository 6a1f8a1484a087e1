"""The vSPC relay: ESX network serial ports (TELNET option 232) to per-VM backends.

Pieces, from the wire up:

* :class:`VSPCConnection` -- one ESX TCP/TLS connection. Negotiates options as
  the real proxies do (spec vic-relay 1.4), answers option 232, and hands serial
  bytes to its :class:`SerialPort`.
* :class:`SerialPort` -- one VM serial port, keyed by normalised VC UUID plus the
  DO-PROXY port label. Owns the backend link (a ``ClientService`` with backoff),
  the two bounded buffers, flow control, and the vMotion hand-off of spec 1.5.
* :class:`VMPortTable` -- all ports and the pending hand-offs by seq+secret.

Flow control: each side registers a streaming producer on its own transport, so
a full ESX write buffer pauses reading from the backend and a full backend write
buffer (or a backend that is down once the bounded buffer is full) pauses
reading from ESX. Nothing buffers without a bound; nothing is dropped.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.bounds import ConnectionGuard, ConnectionLimits, Ticket
from vrtwist.logfields import Logger
from vrtwist.vic import telnet as T
from vrtwist.vic import vmware_ext as X
from vrtwist.vic.interfaces import IVMPortTable
from vrtwist.vsock.tuning import READ_SIZE_LARGE, UNIX_SOCKET_BUFFER, tuneTransport


@dataclass
class VSPCConfig:
    """Knobs of the relay; defaults follow the real vSPCs and ESX's timers."""

    backendTemplate: str = "tcp:127.0.0.1:2379"
    serviceURI: str = "vSPC.py"
    bufferLimit: int = 256 * 1024
    handoffTimeout: float = 30.0
    vmExpire: float = 60.0
    setupTimeout: float = 30.0
    sourceGrace: float = 5.0
    backoffInitial: float = 0.2
    backoffMax: float = 10.0
    secretLength: int = 8
    # 1 MiB reads (and write high-water marks) on both sides: fewer reactor trips
    # and pause/resume flips per megabyte. That only pays with the allocator tuned
    # (tuning.tuneAllocator, done by twistd vspc): with glibc's defaults each 1 MiB
    # buffer is a fresh mmap and its page faults cost more than the parse. docs/vic.md.
    readSize: int = READ_SIZE_LARGE
    backendReadSize: int = READ_SIZE_LARGE
    # While an ESX connection is paused (backend stalled), peek at its socket this
    # often for an option-232 command (VMOTION-BEGIN, COMPLETE, ...) and consume up
    # to it, at most controlLookahead bytes per pause: ESX waits only 5 s for GOAHEAD.
    controlLookahead: int = 1024 * 1024
    controlPeekInterval: float = 0.5
    socketBuffer: int = UNIX_SOCKET_BUFFER  # unix sockets only; TCP autotunes

    def backendFor(self, uuid: str, label: str) -> str:
        return self.backendTemplate.format(uuid=uuid, label=label or "default")


def checkTemplate(template: str) -> None:
    """Reject a ``--backend`` template with unknown ``{fields}`` before any VM arrives."""
    try:
        template.format(uuid="00000000-0000-0000-0000-000000000000", label="default")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"backend template {template!r} may only use {{uuid}} and {{label}}: {e!r}"
        ) from None


# -- ESX side ---------------------------------------------------------------

_ACCEPT_REMOTE = frozenset({T.BINARY, T.SGA, T.VMWARE_EXT})  # we say DO
_ACCEPT_LOCAL = frozenset({T.BINARY, T.SGA, T.ECHO})  # we say WILL
_OFFERS = (
    (T.WILL, T.BINARY),
    (T.WILL, T.SGA),
    (T.WILL, T.ECHO),
    (T.DO, T.BINARY),
    (T.DO, T.SGA),
    (T.DO, T.VMWARE_EXT),
)


def _setReadSize(transport: Any, size: int, socketBuffer: int = UNIX_SOCKET_BUFFER) -> None:
    """Bulk sizing for one transport (see :mod:`vrtwist.vsock.tuning`)."""
    tuneTransport(transport, size, socketBuffer)


@implementer(IPushProducer)
class _WritePressure:
    """Registered on a transport; tells the owner when that transport's buffer is full."""

    def __init__(self, changed: Callable[[bool], None]) -> None:
        self._changed = changed

    def pauseProducing(self) -> None:
        self._changed(True)

    def resumeProducing(self) -> None:
        self._changed(False)

    def stopProducing(self) -> None:
        self._changed(False)


def _isExtension(event: T.Event) -> bool:
    return isinstance(event, T.Subnegotiation) and event.option == T.VMWARE_EXT


def _peekableSocket(transport: Any) -> socket.socket | None:
    """The plain socket under ``transport``, or None (TLS, StringTransport, ...)."""
    sock = getattr(transport, "socket", None)
    if isinstance(sock, socket.socket) and not getattr(transport, "TLS", False):
        return sock
    return None


class VSPCConnection(Protocol):
    """One connection from an ESX host acting for one VM serial port."""

    _log = Logger()

    def __init__(self, table: VMPortTable) -> None:
        self.table = table
        self.config = table.config
        self.parser = T.TelnetParser()
        self.local: dict[int, bool] = {}
        self.remote: dict[int, bool] = {}
        self._askedLocal: set[int] = set()
        self._askedRemote: set[int] = set()
        self.role: str | None = None  # "proxy" after DO-PROXY, "peer" after VMOTION-PEER
        self.uuid: str | None = None
        self.name: str | None = None
        self.label = ""
        self.port: SerialPort | None = None
        self.vmKnown = b""
        self._sentKnown = False
        self._early: list[bytes] = []
        self._earlyLen = 0
        self._portPaused = False
        self._readPaused = False
        self.closed = False
        self._setupTimer: IDelayedCall | None = None
        self._lookTimer: IDelayedCall | None = None
        self._lookUsed = 0
        self.lookaheadReads = 0
        self.peerText = "?"
        #: the listener's connection guard (the cap), if any; see VSPC_LIMITS
        self.guard: ConnectionGuard | None = None
        self._ticket: Ticket | None = None

    # connection life

    def connectionMade(self) -> None:
        if self.guard is not None:
            t: Any = self.transport
            self._ticket = self.guard.open(lambda why: t.abortConnection())
        _setReadSize(self.transport, self.config.readSize, self.config.socketBuffer)
        self.table.connections.add(self)
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.peerText = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        self.transport.registerProducer(  # type: ignore[union-attr]
            _WritePressure(self._writeFull), True
        )
        out = []
        for verb, opt in _OFFERS:
            (self._askedLocal if verb == T.WILL else self._askedRemote).add(opt)
            out.append(T.encodeNegotiation(verb, opt))
        self.transport.write(b"".join(out))  # type: ignore[union-attr]
        self._setupTimer = self.table.clock.callLater(self.config.setupTimeout, self._setupExpired)

    def _setupExpired(self) -> None:
        self._setupTimer = None
        if self.role is None or self.port is None:
            self._log.warn(
                "ESX {peer} sent no DO-PROXY/VMOTION-PEER with a VC UUID in {t}s; closing",
                peer=self.peerText,
                t=self.config.setupTimeout,
            )
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.table.connections.discard(self)
        self.closed = True
        if self._ticket is not None:
            self._ticket.release()
        if self._setupTimer is not None and self._setupTimer.active():
            self._setupTimer.cancel()
        self._setupTimer = None
        self._stopLookahead()
        self._early = []
        port, self.port = self.port, None
        if port is not None:
            port.connectionGone(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.parser.feed(data)
        except T.TelnetProtocolError as e:
            # Act on what came before the bad bytes (nothing valid is lost), then drop
            # this connection only; the VM's state and backend stay for a reconnect.
            self._handle(e.events)
            self._log.warn("ESX {peer}: {error}; closing", peer=self.peerText, error=str(e))
            if not self.closed:
                self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._handle(events)
        if self._ticket is not None:
            # set up (a role and a VM port) is this connection's first frame
            self._ticket.received(1 if self.port is not None else 0)

    def _handle(self, events: list[T.Event]) -> None:
        for ev in events:
            if isinstance(ev, bytes):
                self._serial(ev)
            elif isinstance(ev, T.Negotiation):
                self._negotiate(ev.verb, ev.option)
            elif isinstance(ev, T.Subnegotiation):
                if ev.option == T.VMWARE_EXT:
                    self._extension(ev.payload)
                else:
                    self._log.debug("ignoring subnegotiation of option {o}", o=ev.option)
            if self.closed:
                return

    # writing

    def send(self, raw: bytes) -> None:
        if not self.closed:
            self.transport.write(raw)  # type: ignore[union-attr]

    def sendSerial(self, data: bytes) -> None:
        """Serial bytes toward the VM, IAC doubled."""
        self.send(T.encodeData(data))

    def _writeFull(self, full: bool) -> None:
        if self.port is not None:
            self.port.esxWriteFull(self, full)

    def setPortPaused(self, paused: bool) -> None:
        self._portPaused = paused
        self._applyPause()

    def _applyPause(self) -> None:
        want = self._portPaused or self._earlyLen >= self.config.bufferLimit
        if want != self._readPaused and not self.closed:
            self._readPaused = want
            if want:
                self.transport.pauseProducing()  # type: ignore[union-attr]
                self._startLookahead()
            else:
                self._stopLookahead()
                self.transport.resumeProducing()  # type: ignore[union-attr]

    # control commands behind held data

    def _startLookahead(self) -> None:
        """Keep the option-232 channel alive while serial data is held.

        ESX sends VMOTION-BEGIN in-band, behind whatever serial bytes it queued;
        with this connection paused it would go unread and the migration would
        time out. So while paused we look at the socket now and then (MSG_PEEK)
        and read ahead: up to the end of the first complete option-232 command in
        view, else what is queued. The serial bytes join the held data in order;
        commands are handled at once. At most ``controlLookahead`` bytes per
        pause, so the backpressure bound stays a bound.
        """
        if (
            self._lookTimer is None
            and self.config.controlLookahead > 0
            and _peekableSocket(self.transport) is not None
        ):
            self._lookUsed = 0
            self._lookTimer = self.table.clock.callLater(
                self.config.controlPeekInterval, self._lookForControl
            )

    def _stopLookahead(self) -> None:
        if self._lookTimer is not None and self._lookTimer.active():
            self._lookTimer.cancel()
        self._lookTimer = None

    def _lookForControl(self) -> None:
        self._lookTimer = None
        sock = _peekableSocket(self.transport)
        if self.closed or not self._readPaused or sock is None:
            return
        room = self.config.controlLookahead - self._lookUsed
        if room <= 0:
            return  # the bound for this pause is spent; wait for the backend
        try:
            peeked = sock.recv(room, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            peeked = b""
        except OSError:
            return  # the ordinary read path reports the error once resumed
        if peeked:
            # A command in view: read exactly up to its end. None in view: read
            # what is queued (still within the bound), so that what ESX queued
            # behind it (its send buffer) can move up into view.
            end = self.parser.lookahead(peeked, _isExtension)
            data = _recvUpTo(sock, len(peeked) if end is None else end)
            self._lookUsed += len(data)
            self.lookaheadReads += 1
            if self.port is not None:
                self.port.counters.lookaheadReads += 1
            if end is not None:
                self._log.info(
                    "ESX {peer}: option-232 command read {n} bytes ahead while paused",
                    peer=self.peerText,
                    n=len(data),
                )
            self.dataReceived(data)
        if not self.closed and self._readPaused and self._lookTimer is None:
            self._lookTimer = self.table.clock.callLater(
                self.config.controlPeekInterval, self._lookForControl
            )

    # serial data

    def _serial(self, data: bytes) -> None:
        if self.port is not None:
            self.port.fromVM(data)
        else:
            self._early.append(data)
            self._earlyLen += len(data)
            self._applyPause()

    def takeEarly(self) -> bytes:
        data = b"".join(self._early)
        self._early = []
        self._earlyLen = 0
        self._applyPause()
        return data

    # option negotiation (spec 1.4): answer only on a state change, never loop

    def _negotiate(self, verb: int, opt: int) -> None:
        if verb == T.WILL:
            if opt in _ACCEPT_REMOTE:
                if not self.remote.get(opt):
                    self.remote[opt] = True
                    if opt not in self._askedRemote:
                        self.send(T.encodeNegotiation(T.DO, opt))
                    self._askedRemote.discard(opt)
                    if opt == T.VMWARE_EXT:
                        self._extensionEnabled()
            else:
                self._askedRemote.discard(opt)
                self.send(T.encodeNegotiation(T.DONT, opt))
        elif verb == T.WONT:
            was = self.remote.get(opt, False)
            self.remote[opt] = False
            if opt in self._askedRemote:
                self._askedRemote.discard(opt)
            elif was:
                self.send(T.encodeNegotiation(T.DONT, opt))
        elif verb == T.DO:
            if opt in _ACCEPT_LOCAL:
                if not self.local.get(opt):
                    self.local[opt] = True
                    if opt not in self._askedLocal:
                        self.send(T.encodeNegotiation(T.WILL, opt))
                    self._askedLocal.discard(opt)
            else:
                self._askedLocal.discard(opt)
                self.send(T.encodeNegotiation(T.WONT, opt))
        elif verb == T.DONT:
            was = self.local.get(opt, False)
            self.local[opt] = False
            if opt in self._askedLocal:
                self._askedLocal.discard(opt)
            elif was:
                self.send(T.encodeNegotiation(T.WONT, opt))

    def _extensionEnabled(self) -> None:
        if not self._sentKnown:
            self._sentKnown = True
            self.send(X.command(X.KNOWN_SUBOPTIONS_2, X.IMPLEMENTED))

    # option 232

    def _extension(self, payload: bytes) -> None:
        try:
            cmd, params = X.split(payload)
        except X.ExtensionError as e:
            self._log.warn("ESX {peer}: {error}", peer=self.peerText, error=str(e))
            return
        if cmd not in X.FROM_VM:
            self._log.info(
                "ESX {peer} sent option-232 command {cmd} we do not implement",
                peer=self.peerText,
                cmd=cmd,
            )
            self.send(X.command(X.UNKNOWN_SUBOPTION_RCVD_2, bytes((cmd,))))
            return
        if cmd == X.KNOWN_SUBOPTIONS_1:
            self.vmKnown = params
            self._extensionEnabled()
        elif cmd == X.UNKNOWN_SUBOPTION_RCVD_1:
            self._log.info(
                "ESX {peer} did not know our command {p!r}", peer=self.peerText, p=params
            )
        elif cmd == X.DO_PROXY:
            self._doProxy(params)
        elif cmd == X.VM_VC_UUID:
            self._vcUUID(params)
        elif cmd == X.VM_NAME:
            self.name = params.decode("utf-8", "replace")
            if self.port is not None and self.port.esx is self:
                self.port.name = self.name
        elif cmd == X.VMOTION_BEGIN:
            self._begin(params)
        elif cmd == X.VMOTION_PEER:
            self._peer(params)
        elif cmd == X.VMOTION_COMPLETE:
            if self.port is not None:
                self.port.completeVMotion(self, params)
        elif cmd == X.VMOTION_ABORT:
            if self.port is not None:
                self.port.abortVMotion(self)

    def _doProxy(self, params: bytes) -> None:
        if self.role is not None:
            self._log.warn(
                "ESX {peer}: DO-PROXY after {role}; ignored", peer=self.peerText, role=self.role
            )
            return
        try:
            req = X.parseDoProxy(params)
        except X.ExtensionError as e:
            self._refuse(str(e))
            return
        if not X.serviceURIMatches(self.config.serviceURI, req.serviceURI):
            self._refuse(f"service URI {req.serviceURI!r} is not {self.config.serviceURI!r}")
            return
        self.role = "proxy"
        self.label = req.label
        self.send(X.command(X.WILL_PROXY) + X.command(X.GET_VM_VC_UUID) + X.command(X.GET_VM_NAME))
        if self.uuid is not None:
            self._attach()

    def _refuse(self, why: str) -> None:
        self._log.warn("ESX {peer}: refusing DO-PROXY: {why}", peer=self.peerText, why=why)
        self.send(X.command(X.WONT_PROXY))
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _vcUUID(self, params: bytes) -> None:
        try:
            uuid = X.normaliseUUID(params)
        except X.ExtensionError as e:
            self._log.warn("ESX {peer}: {error}; closing", peer=self.peerText, error=str(e))
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if self.uuid is not None and uuid != self.uuid:
            self._log.warn(
                "ESX {peer}: VC UUID changed to {u}; ignored", peer=self.peerText, u=uuid
            )
            return
        self.uuid = uuid
        if self.role == "proxy" and self.port is None:
            self._attach()
        elif self.role == "peer" and self.port is not None and self.port.uuid != uuid:
            self._log.warn(
                "vMotion target {peer} reports VC UUID {u}, expected {e}",
                peer=self.peerText,
                u=uuid,
                e=self.port.uuid,
            )

    def _attach(self) -> None:
        assert self.uuid is not None
        self.port = self.table.attach(self.uuid, self.label, self)
        if self._setupTimer is not None and self._setupTimer.active():
            self._setupTimer.cancel()
        self._setupTimer = None

    def _begin(self, seq: bytes) -> None:
        if self.port is None or self.port.esx is not self:
            self._log.warn(
                "ESX {peer}: VMOTION-BEGIN on a connection with no VM", peer=self.peerText
            )
            self.send(X.command(X.VMOTION_NOTNOW, seq))
            return
        self.send(self.port.beginVMotion(self, seq))

    def _peer(self, payload: bytes) -> None:
        if self.role is not None:
            self._log.warn(
                "ESX {peer}: VMOTION-PEER after {role}; ignored", peer=self.peerText, role=self.role
            )
            return
        port = self.table.matchPeer(payload, self)
        if port is None:
            # No defined error reply (spec 1.5); ESX times out the migration.
            self._log.warn(
                "ESX {peer}: VMOTION-PEER matches no pending vMotion", peer=self.peerText
            )
            return
        assert port.handoff is not None
        self.role = "peer"
        self.port = port
        self.label = port.label
        if self._setupTimer is not None and self._setupTimer.active():
            self._setupTimer.cancel()
        self._setupTimer = None
        self.send(X.command(X.VMOTION_PEER_OK, port.handoff.sequence))
        early = self.takeEarly()
        if early:
            port.fromVM(early)


def _recvUpTo(sock: socket.socket, n: int) -> bytes:
    """Read ``n`` bytes already seen with MSG_PEEK (fewer only if the socket failed)."""
    parts = []
    while n > 0:
        try:
            chunk = sock.recv(n, socket.MSG_DONTWAIT)
        except OSError:
            break
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


# -- backend side -------------------------------------------------------------


class BackendProtocol(Protocol):
    """The appliance side of one serial port."""

    def __init__(self, port: SerialPort) -> None:
        self.serialPort = port

    def connectionMade(self) -> None:
        _setReadSize(
            self.transport,
            self.serialPort.config.backendReadSize,
            self.serialPort.config.socketBuffer,
        )
        self.transport.registerProducer(  # type: ignore[union-attr]
            _WritePressure(self._writeFull), True
        )
        self.serialPort.backendUp(self)

    def _writeFull(self, full: bool) -> None:
        self.serialPort.backendWriteFull(self, full)

    def dataReceived(self, data: bytes) -> None:
        self.serialPort.fromBackend(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.serialPort.backendDown(self)


class _BackendFactory(Factory):
    noisy = False

    def __init__(self, port: SerialPort) -> None:
        self.serialPort = port

    def buildProtocol(self, addr: Any) -> BackendProtocol:
        return BackendProtocol(self.serialPort)


@dataclass
class Handoff:
    """A vMotion in flight: from GOAHEAD until COMPLETE, ABORT or expiry."""

    sequence: bytes
    secret: bytes
    source: VSPCConnection | None
    target: VSPCConnection | None = None
    timer: IDelayedCall | None = None
    started: float = 0.0

    @property
    def key(self) -> bytes:
        return self.sequence + self.secret


@dataclass
class _Counters:
    bytesFromVM: int = 0
    bytesToVM: int = 0
    handoffs: int = 0
    notnow: int = 0
    aborted: int = 0
    expired: int = 0
    backendConnects: int = 0
    lookaheadReads: int = 0


class SerialPort:
    """One VM serial port: ESX connection(s), backend link, buffers, hand-off."""

    _log = Logger()

    def __init__(self, table: VMPortTable, uuid: str, label: str) -> None:
        self.table = table
        self.config = table.config
        self.uuid = uuid
        self.label = label
        self.name: str | None = None
        self.esx: VSPCConnection | None = None
        self.esxPeer = ""
        self.retiring: list[VSPCConnection] = []  # old sources, still read after COMPLETE
        self.handoff: Handoff | None = None
        self.backend: BackendProtocol | None = None
        self.counters = _Counters()
        self._toBackend: list[bytes] = []
        self._toBackendLen = 0
        self._toVM: list[bytes] = []
        self._toVMLen = 0
        self._esxFull = False
        self._backendFull = False
        self._backendReadPaused = False
        self._expireTimer: IDelayedCall | None = None
        self._timers: list[IDelayedCall] = []
        self.backendAddress = self.config.backendFor(uuid, label)
        endpoint = clientFromString(table.clock, self.backendAddress)
        self.service = ClientService(
            endpoint,
            _BackendFactory(self),
            retryPolicy=backoffPolicy(self.config.backoffInitial, self.config.backoffMax),
            clock=table.clock,
        )
        self.service.startService()

    @property
    def key(self) -> tuple[str, str]:
        return (self.uuid, self.label)

    def connections(self) -> list[VSPCConnection]:
        conns = [self.esx] if self.esx is not None else []
        if self.handoff is not None:
            for c in (self.handoff.source, self.handoff.target):
                if c is not None and c not in conns:
                    conns.append(c)
        return conns + [c for c in self.retiring if c not in conns]

    # ESX attach/detach

    def attachESX(self, conn: VSPCConnection) -> None:
        if self._expireTimer is not None and self._expireTimer.active():
            self._expireTimer.cancel()
        self._expireTimer = None
        old = self.esx
        if old is not None and old is not conn:
            self._log.info(
                "VM {uuid}/{label}: new ESX connection {new} replaces {old}",
                uuid=self.uuid,
                label=self.label,
                new=conn.peerText,
                old=old.peerText,
            )
            old.port = None
            old.transport.loseConnection()  # type: ignore[union-attr]
        self.esx = conn
        self.esxPeer = conn.peerText
        self._esxFull = False
        if conn.name:
            self.name = conn.name
        early = conn.takeEarly()
        if early:
            self.fromVM(early)
        if self.handoff is None:
            self._flushToVM()
        self._updateFlow()

    def connectionGone(self, conn: VSPCConnection) -> None:
        if conn in self.retiring:
            self.retiring.remove(conn)
        h = self.handoff
        if h is not None:
            if conn is h.source:
                h.source = None  # ESX closes the source around COMPLETE: not "VM gone"
            if conn is h.target:
                h.target = None  # abandoned; the timer or an ABORT settles it
        if conn is self.esx:
            self.esx = None
            self._esxFull = False
            if h is None:
                self._startExpiry()
        self._updateFlow()

    def _startExpiry(self) -> None:
        if self._expireTimer is None or not self._expireTimer.active():
            self._expireTimer = self.table.clock.callLater(self.config.vmExpire, self._expired)

    def _expired(self) -> None:
        self._expireTimer = None
        if self.esx is None and self.handoff is None:
            if self._toBackendLen:
                self._log.warn(
                    "VM {uuid}/{label} gone for {t}s; dropping {n} bytes the backend never took",
                    uuid=self.uuid,
                    label=self.label,
                    t=self.config.vmExpire,
                    n=self._toBackendLen,
                )
            self.table.remove(self)

    def close(self) -> Deferred[None]:
        """Forget the port: stop its backend and close its ESX connections."""
        if self._expireTimer is not None and self._expireTimer.active():
            self._expireTimer.cancel()
        for t in self._timers:
            if t.active():
                t.cancel()
        self._timers = []
        if self.handoff is not None:
            self._endHandoff()
        for c in self.connections():
            c.port = None
            c.transport.loseConnection()  # type: ignore[union-attr]
        self.esx = None
        d: Deferred[None] = self.service.stopService()
        return d

    # data VM -> backend

    def fromVM(self, data: bytes) -> None:
        self.counters.bytesFromVM += len(data)
        if self.backend is not None and not self._toBackendLen:
            self.backend.transport.write(data)  # type: ignore[union-attr]
            return
        self._toBackend.append(data)
        self._toBackendLen += len(data)
        self._updateFlow()

    def backendUp(self, proto: BackendProtocol) -> None:
        self.backend = proto
        self._backendFull = False
        self._backendReadPaused = False
        self.counters.backendConnects += 1
        self._log.info(
            "VM {uuid}/{label}: backend {addr} connected",
            uuid=self.uuid,
            label=self.label,
            addr=self.backendAddress,
        )
        if self._toBackend:
            data = b"".join(self._toBackend)
            self._toBackend = []
            self._toBackendLen = 0
            proto.transport.write(data)  # type: ignore[union-attr]
        self._updateFlow()

    def backendDown(self, proto: BackendProtocol) -> None:
        if proto is self.backend:
            self.backend = None
            self._backendFull = False
            self._updateFlow()

    def backendWriteFull(self, proto: BackendProtocol, full: bool) -> None:
        if proto is self.backend:
            self._backendFull = full
            self._updateFlow()

    # data backend -> VM

    def fromBackend(self, data: bytes) -> None:
        esx = self.esx
        if esx is not None and self.handoff is None and not self._toVMLen:
            self.counters.bytesToVM += len(data)
            esx.sendSerial(data)
            return
        self._toVM.append(data)
        self._toVMLen += len(data)
        self._updateFlow()

    def _flushToVM(self) -> None:
        if self._toVM and self.esx is not None:
            data = b"".join(self._toVM)
            self._toVM = []
            self._toVMLen = 0
            self.counters.bytesToVM += len(data)
            self.esx.sendSerial(data)

    def esxWriteFull(self, conn: VSPCConnection, full: bool) -> None:
        if conn is self.esx:
            self._esxFull = full
            self._updateFlow()

    # flow control

    def _updateFlow(self) -> None:
        pauseESX = self._backendFull or self._toBackendLen >= self.config.bufferLimit
        for c in self.connections():
            c.setPortPaused(pauseESX)
        pauseBackend = self._esxFull or self._toVMLen >= self.config.bufferLimit
        b = self.backend
        if b is not None and pauseBackend != self._backendReadPaused:
            self._backendReadPaused = pauseBackend
            if pauseBackend:
                b.transport.pauseProducing()  # type: ignore[union-attr]
            else:
                b.transport.resumeProducing()  # type: ignore[union-attr]

    # vMotion (spec 1.5)

    def beginVMotion(self, conn: VSPCConnection, sequence: bytes) -> bytes:
        """Answer VMOTION-BEGIN: GOAHEAD(seq+secret), or NOTNOW if one is running."""
        if self.handoff is not None:
            self.counters.notnow += 1
            self._log.info(
                "VM {uuid}/{label}: VMOTION-BEGIN while a hand-off runs; NOTNOW",
                uuid=self.uuid,
                label=self.label,
            )
            return X.command(X.VMOTION_NOTNOW, sequence)
        secret = os.urandom(self.config.secretLength)
        h = Handoff(sequence, secret, conn, started=self.table.clock.seconds())
        h.timer = self.table.clock.callLater(self.config.handoffTimeout, self._handoffExpired)
        self.handoff = h
        self.table.pending[h.key] = self
        self._log.info(
            "VM {uuid}/{label}: vMotion begins from {src}",
            uuid=self.uuid,
            label=self.label,
            src=conn.peerText,
        )
        # Everything written to the source so far precedes GOAHEAD on its stream;
        # backend data from now on is held until COMPLETE or ABORT.
        return X.command(X.VMOTION_GOAHEAD, sequence + secret)

    def peerArrived(self, conn: VSPCConnection) -> None:
        h = self.handoff
        assert h is not None
        if h.target is not None and h.target is not conn:
            self._log.warn("VM {uuid}: second VMOTION-PEER replaces the first", uuid=self.uuid)
            old = h.target
            old.port = None
            old.transport.loseConnection()  # type: ignore[union-attr]
        h.target = conn
        self._updateFlow()

    def completeVMotion(self, conn: VSPCConnection, sequence: bytes) -> None:
        h = self.handoff
        if h is None or conn is not h.target:
            self._log.warn(
                "VM {uuid}: VMOTION-COMPLETE from {peer} with no hand-off to it; ignored",
                uuid=self.uuid,
                peer=conn.peerText,
            )
            return
        if sequence and sequence != h.sequence:
            self._log.warn(
                "VM {uuid}: VMOTION-COMPLETE with another sequence; ignored", uuid=self.uuid
            )
            return
        source = h.source
        self._endHandoff()
        self.counters.handoffs += 1
        old = self.esx
        self.esx = conn
        self.esxPeer = conn.peerText
        self._esxFull = False
        if conn.name:
            self.name = conn.name
        for gone in (old, source):
            if gone is not None and gone is not conn and gone not in self.retiring:
                # Keep reading the source until ESX closes it (nothing it sent is
                # lost), never write to it again; close it after a grace period.
                self.retiring.append(gone)
                self._timers.append(
                    self.table.clock.callLater(self.config.sourceGrace, self._retire, gone)
                )
        self._log.info(
            "VM {uuid}/{label}: vMotion complete, now on {peer}",
            uuid=self.uuid,
            label=self.label,
            peer=conn.peerText,
        )
        self._flushToVM()
        self._updateFlow()

    def _retire(self, conn: VSPCConnection) -> None:
        self._timers = [t for t in self._timers if t.active()]
        if conn in self.retiring and not conn.closed:
            conn.transport.loseConnection()  # type: ignore[union-attr]

    def abortVMotion(self, conn: VSPCConnection) -> None:
        h = self.handoff
        if h is None or conn is not h.source:
            self._log.warn(
                "VM {uuid}: VMOTION-ABORT with no hand-off from {peer}",
                uuid=self.uuid,
                peer=conn.peerText,
            )
            return
        self.counters.aborted += 1
        self._log.info(
            "VM {uuid}/{label}: vMotion aborted; staying on the source",
            uuid=self.uuid,
            label=self.label,
        )
        self._cancelHandoff()

    def _handoffExpired(self) -> None:
        if self.handoff is None:
            return
        self.handoff.timer = None
        self.counters.expired += 1
        self._log.warn(
            "VM {uuid}/{label}: vMotion hand-off abandoned after {t}s",
            uuid=self.uuid,
            label=self.label,
            t=self.config.handoffTimeout,
        )
        self._cancelHandoff()

    def _cancelHandoff(self) -> None:
        h = self.handoff
        assert h is not None
        target = h.target
        self._endHandoff()
        if target is not None and target is not self.esx:
            target.port = None
            target.transport.loseConnection()  # type: ignore[union-attr]
        if self.esx is None:
            self._startExpiry()
        else:
            self._flushToVM()
        self._updateFlow()

    def _endHandoff(self) -> None:
        h = self.handoff
        assert h is not None
        if h.timer is not None and h.timer.active():
            h.timer.cancel()
        self.table.pending.pop(h.key, None)
        self.handoff = None

    def describe(self) -> dict[str, object]:
        h = self.handoff
        return {
            "uuid": self.uuid,
            "label": self.label,
            "name": self.name,
            "esx": self.esxPeer if self.esx is not None else None,
            "attached": self.esx is not None,
            "backend": {
                "address": self.backendAddress,
                "state": "connected" if self.backend is not None else "connecting",
                "connects": self.counters.backendConnects,
                "pending_bytes": self._toBackendLen,
            },
            "bytes_from_vm": self.counters.bytesFromVM,
            "bytes_to_vm": self.counters.bytesToVM,
            "held_to_vm": self._toVMLen,
            "handoffs": self.counters.handoffs,
            "handoffs_refused": self.counters.notnow,
            "handoffs_aborted": self.counters.aborted,
            "handoffs_expired": self.counters.expired,
            "control_lookahead_reads": self.counters.lookaheadReads,
            "vmotion": None
            if h is None
            else {
                "sequence": h.sequence.hex(),
                "source": h.source.peerText if h.source else None,
                "target": h.target.peerText if h.target else None,
            },
        }


@implementer(IVMPortTable)
class VMPortTable(Service):
    """Every serial port by (uuid, label), and the pending hand-offs by seq+secret."""

    _log = Logger()

    def __init__(self, clock: Any, config: VSPCConfig | None = None) -> None:
        self.clock = clock
        self.config = config or VSPCConfig()
        checkTemplate(self.config.backendTemplate)
        self.byKey: dict[tuple[str, str], SerialPort] = {}
        self.pending: dict[bytes, SerialPort] = {}
        self.connections: set[VSPCConnection] = set()

    def attach(self, uuid: str, label: str, connection: object) -> SerialPort:
        assert isinstance(connection, VSPCConnection)
        port = self.byKey.get((uuid, label))
        if port is None:
            port = SerialPort(self, uuid, label)
            self.byKey[port.key] = port
            self._log.info(
                "VM {uuid}/{label} attached from {peer}",
                uuid=uuid,
                label=label,
                peer=connection.peerText,
            )
        port.attachESX(connection)
        return port

    def matchPeer(self, sequenceAndSecret: bytes, connection: object) -> SerialPort | None:
        assert isinstance(connection, VSPCConnection)
        port = self.pending.get(sequenceAndSecret)
        if port is None:
            return None
        port.peerArrived(connection)
        return port

    def remove(self, port: SerialPort) -> Deferred[None]:
        if self.byKey.get(port.key) is port:
            del self.byKey[port.key]
        return port.close()

    def ports(self) -> list[SerialPort]:  # type: ignore[override]
        return list(self.byKey.values())

    def snapshot(self) -> list[dict[str, object]]:
        return [p.describe() for p in self.byKey.values()]

    def stopService(self) -> Deferred[Any]:
        """Stop every backend link and close every ESX connection."""
        Service.stopService(self)
        stopped = [self.remove(port) for port in list(self.byKey.values())]
        for conn in list(self.connections):
            conn.transport.loseConnection()  # type: ignore[union-attr]
        return gatherResults(stopped)


class VSPCFactory(Factory):
    """Builds a :class:`VSPCConnection` per ESX connection."""

    noisy = False

    def __init__(self, table: VMPortTable, guard: ConnectionGuard | None = None) -> None:
        self.table = table
        self.guard = guard

    def buildProtocol(self, addr: Any) -> VSPCConnection:
        conn = VSPCConnection(self.table)
        conn.guard = self.guard
        return conn


#: ESX connections, one per VM serial port: the set-up deadline is the protocol's own
#: (``setupTimeout``) and a serial line may stay silent for days, so only the cap: at
#: most 1024 connections, the oldest one not yet set up (else the one idle the
#: longest) closed for a newcomer.
VSPC_LIMITS = ConnectionLimits(max_connections=1024, first_frame=None, partial=None, idle=None)

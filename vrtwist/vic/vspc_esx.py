"""The ESX side of the vSPC: TELNET negotiation and option 232 on one ESX connection.

:class:`VSPCConnection` is one ESX TCP/TLS connection acting for one VM serial port.
It negotiates options as the real proxies do (spec vic-relay 1.4; the state is
:class:`OptionNegotiation`, sans-IO), answers VMware's option-232 commands (DO-PROXY,
the VM's UUID and name, the vMotion commands), and hands serial bytes to its
:class:`~vrtwist.vic.vspc_port.SerialPort`.  While its port holds it paused it still
reads option-232 commands ahead (see :meth:`VSPCConnection._startLookahead`).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from vrtwist._twisted_compat import plain_socket
from vrtwist.bounds import ConnectionGuard, Ticket
from vrtwist.logfields import Logger
from vrtwist.vic import telnet as T
from vrtwist.vic import vmware_ext as X
from vrtwist.vic.vspc_port import _setReadSize, _WritePressure

if TYPE_CHECKING:
    from vrtwist.vic.vspc import VMPortTable
    from vrtwist.vic.vspc_port import SerialPort

__all__ = ["OptionNegotiation", "VSPCConnection"]

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



class OptionNegotiation:
    """TELNET option state of one ESX connection (RFC 1143's rules, simply).

    Answers only a change of state and never a confirmation of our own request, so
    two ends can never loop; what is accepted follows the real proxies (spec 1.4).
    Sans-IO: :meth:`receive` returns the bytes to send.
    """

    def __init__(self) -> None:
        self.local: dict[int, bool] = {}  # options we do (WILL)
        self.remote: dict[int, bool] = {}  # options the peer does (DO)
        self._askedLocal: set[int] = set()
        self._askedRemote: set[int] = set()

    def offers(self) -> bytes:
        """What we ask for when the connection opens."""
        out = []
        for verb, opt in _OFFERS:
            (self._askedLocal if verb == T.WILL else self._askedRemote).add(opt)
            out.append(T.encodeNegotiation(verb, opt))
        return b"".join(out)

    def receive(self, verb: int, opt: int) -> tuple[bytes, bool]:
        """The answer to one negotiation, and whether the peer just enabled ``opt``."""
        if verb == T.WILL:
            return self._will(opt)
        if verb == T.WONT:
            return _refusal(self.remote, self._askedRemote, opt, T.DONT), False
        if verb == T.DO:
            return self._do(opt), False
        if verb == T.DONT:
            return _refusal(self.local, self._askedLocal, opt, T.WONT), False
        return b"", False

    def _will(self, opt: int) -> tuple[bytes, bool]:
        if opt not in _ACCEPT_REMOTE:
            self._askedRemote.discard(opt)
            return T.encodeNegotiation(T.DONT, opt), False
        if self.remote.get(opt):
            return b"", False
        self.remote[opt] = True
        answer = b"" if opt in self._askedRemote else T.encodeNegotiation(T.DO, opt)
        self._askedRemote.discard(opt)
        return answer, True

    def _do(self, opt: int) -> bytes:
        if opt not in _ACCEPT_LOCAL:
            self._askedLocal.discard(opt)
            return T.encodeNegotiation(T.WONT, opt)
        if self.local.get(opt):
            return b""
        self.local[opt] = True
        answer = b"" if opt in self._askedLocal else T.encodeNegotiation(T.WILL, opt)
        self._askedLocal.discard(opt)
        return answer


def _refusal(state: dict[int, bool], asked: set[int], opt: int, verb: int) -> bytes:
    """WONT/DONT received: off; confirm only if it was on and we did not ask."""
    was = state.get(opt, False)
    state[opt] = False
    if opt in asked:
        asked.discard(opt)
        return b""
    return T.encodeNegotiation(verb, opt) if was else b""


def _isExtension(event: T.Event) -> bool:
    return isinstance(event, T.Subnegotiation) and event.option == T.VMWARE_EXT


def _peekableSocket(transport: Any) -> socket.socket | None:
    """The plain socket under ``transport``, or None (TLS, StringTransport, ...)."""
    return plain_socket(transport)


class VSPCConnection(Protocol):
    """One connection from an ESX host acting for one VM serial port."""

    _log = Logger()

    def __init__(self, table: VMPortTable) -> None:
        self.table = table
        self.config = table.config
        self.parser = T.TelnetParser()
        self.options = OptionNegotiation()
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
        self.transport.write(self.options.offers())  # type: ignore[union-attr]
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
        answer, enabled = self.options.receive(verb, opt)
        if answer:
            self.send(answer)
        if enabled and opt == T.VMWARE_EXT:
            self._extensionEnabled()

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
        handler = _EXTENSION_HANDLERS.get(cmd)
        if handler is not None:
            getattr(self, handler)(params)

    def _knownSuboptions(self, params: bytes) -> None:
        self.vmKnown = params
        self._extensionEnabled()

    def _unknownToVM(self, params: bytes) -> None:
        self._log.info("ESX {peer} did not know our command {p!r}", peer=self.peerText, p=params)

    def _vmName(self, params: bytes) -> None:
        self.name = params.decode("utf-8", "replace")
        if self.port is not None and self.port.esx is self:
            self.port.name = self.name

    def _complete(self, params: bytes) -> None:
        if self.port is not None:
            self.port.completeVMotion(self, params)

    def _abort(self, params: bytes) -> None:
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


#: option-232 commands from ESX -> the VSPCConnection method that handles them
_EXTENSION_HANDLERS = {
    X.KNOWN_SUBOPTIONS_1: "_knownSuboptions",
    X.UNKNOWN_SUBOPTION_RCVD_1: "_unknownToVM",
    X.DO_PROXY: "_doProxy",
    X.VM_VC_UUID: "_vcUUID",
    X.VM_NAME: "_vmName",
    X.VMOTION_BEGIN: "_begin",
    X.VMOTION_PEER: "_peer",
    X.VMOTION_COMPLETE: "_complete",
    X.VMOTION_ABORT: "_abort",
}

"""Test doubles shipped with the package (as treq ships ``treq.testing``).

:class:`FakeESX` plays an ESX host's side of one proxied serial port, replaying
the handshake captured from a real ESXi host (spec vic-relay 1.4) and answering
the proxy's identification requests. :class:`RecordingBackend` is an appliance
backend that records what it gets and can stall on purpose.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from vrtwist.vic import telnet as T
from vrtwist.vic import vmware_ext as X

#: KNOWN-SUBOPTIONS-1 exactly as the captured ESX host sent it.
ESX_KNOWN = bytes(
    [0, 1, 2, 3, 40, 41, 43, 44, 45, 46, 48, 70, 71, 73, 80, 81, 84, 85, 86, 87, 82, 83]
)
#: The VC UUID text format ESX sends (16 hex pairs, spaces, one dash).
PCAP_UUID = b"01 23 45 67 89 ab cd ef-fe dc ba 98 00 00 00 00"


def uuidText(n: int) -> bytes:
    """A VC UUID in ESX's text format, distinct per ``n``."""
    raw = f"{n:032x}"
    pairs = [raw[i : i + 2] for i in range(0, 32, 2)]
    return (" ".join(pairs[:8]) + "-" + " ".join(pairs[8:])).encode()


class _Waiting:
    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def waitFor(self, predicate: Callable[[], bool]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if predicate():
            d.callback(None)
        else:
            self._waiters.append((predicate, d))
        return d

    def _check(self) -> None:
        if not self._waiters:
            return
        still = []
        for pred, d in self._waiters:
            if pred():
                d.callback(None)
            else:
                still.append((pred, d))
        self._waiters = still


class FakeESX(Protocol, _Waiting):
    """An ESX host's serial-port proxy client: DO-PROXY (or VMOTION-PEER), then serial bytes."""

    def __init__(
        self,
        uuid: bytes = PCAP_UUID,
        name: bytes = b"vm-00000",
        serviceURI: bytes = b"vSPC.py",
        direction: bytes = b"S",
        peer: bytes | None = None,
    ) -> None:
        _Waiting.__init__(self)
        self.uuid = uuid
        self.name = name
        self.serviceURI = serviceURI
        self.direction = direction
        self.peer = peer
        self.parser = T.TelnetParser()
        self.serial = bytearray()
        self.ext: list[tuple[int, bytes]] = []
        self.negotiations: list[tuple[int, int]] = []
        self.lost = False
        self.lostDeferred: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        # The order of the capture (spec 1.4, rows 1-11), without waiting for replies.
        w = T.encodeNegotiation
        script = [
            w(T.WILL, T.AUTHENTICATION),
            w(T.DO, T.BINARY),
            w(T.DO, T.SGA) + w(T.DO, T.ECHO) + w(T.WILL, T.BINARY),
            w(T.WILL, T.SGA),
            w(T.WILL, T.VMWARE_EXT),
            X.command(X.KNOWN_SUBOPTIONS_1, ESX_KNOWN),
        ]
        if self.peer is None:
            script.append(X.command(X.DO_PROXY, self.direction + self.serviceURI))
        else:
            script.append(X.command(X.VMOTION_PEER, self.peer))
        self.transport.write(b"".join(script))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for ev in self.parser.feed(data):
            if isinstance(ev, bytes):
                self.serial += ev
            elif isinstance(ev, T.Negotiation):
                self.negotiations.append((ev.verb, ev.option))
            elif isinstance(ev, T.Subnegotiation) and ev.option == T.VMWARE_EXT:
                cmd, params = X.split(ev.payload)
                self.ext.append((cmd, params))
                if cmd == X.GET_VM_VC_UUID:
                    self.sendExt(X.VM_VC_UUID, self.uuid)
                elif cmd == X.GET_VM_NAME:
                    self.sendExt(X.VM_NAME, self.name)
                    # The capture's row 16: ESX then offers COM-PORT (RFC 2217).
                    self.transport.write(T.encodeNegotiation(T.WILL, T.COM_PORT))  # type: ignore[union-attr]
        self._check()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        self._check()
        self.lostDeferred.callback(None)

    def sendExt(self, cmd: int, params: bytes = b"") -> None:
        self.transport.write(X.command(cmd, params))  # type: ignore[union-attr]

    def sendSerial(self, data: bytes) -> None:
        self.transport.write(T.encodeData(data))  # type: ignore[union-attr]

    def extReceived(self, cmd: int) -> list[bytes]:
        return [p for c, p in self.ext if c == cmd]

    def proxied(self) -> Deferred[None]:
        """Fires once the proxy said WILL-PROXY (or PEER-OK for a peer)."""
        want = X.WILL_PROXY if self.peer is None else X.VMOTION_PEER_OK
        return self.waitFor(lambda: bool(self.extReceived(want)))


class BackendConnection(Protocol):
    """One backend connection: records bytes, can stall (stop reading)."""

    def __init__(self, backend: RecordingBackend) -> None:
        self.backend = backend
        self.received = bytearray()
        self.lost = False

    def connectionMade(self) -> None:
        self.backend.connections.append(self)
        if self.backend.stalled:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self.backend._check()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.backend.echo:
            self.transport.write(data)  # type: ignore[union-attr]
        self.backend._check()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        self.backend._check()

    def stall(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def unstall(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]


class RecordingBackend(Factory, _Waiting):
    """An appliance backend listener: all connections and their bytes."""

    noisy = False

    def __init__(self, echo: bool = False, stalled: bool = False) -> None:
        _Waiting.__init__(self)
        self.echo = echo
        self.stalled = stalled
        self.connections: list[BackendConnection] = []

    def buildProtocol(self, addr: object) -> BackendConnection:
        return BackendConnection(self)

    def received(self) -> bytes:
        return b"".join(bytes(c.received) for c in self.connections)

"""One VM serial port of the vSPC: its backend link, buffers, flow control, vMotion.

:class:`SerialPort` is keyed by normalised VC UUID plus the DO-PROXY port label. It
owns the backend link (a ``ClientService`` with backoff, :class:`BackendProtocol`),
the two bounded buffers, flow control, and the vMotion hand-off (its states and
transitions are :mod:`vrtwist.vic.vmotion`'s).

Flow control: each side registers a streaming producer on its own transport, so a
full ESX write buffer pauses reading from the backend and a full backend write
buffer (or a backend that is down once the bounded buffer is full) pauses reading
from ESX. Nothing buffers without a bound; nothing is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.logfields import Logger
from vrtwist.vic import vmware_ext as X
from vrtwist.vic.vmotion import Handoff, HandoffEvent
from vrtwist.vsock.tuning import UNIX_SOCKET_BUFFER, tuneTransport

if TYPE_CHECKING:
    from vrtwist.vic.vspc import VMPortTable
    from vrtwist.vic.vspc_esx import VSPCConnection

__all__ = ["BackendProtocol", "SerialPort"]


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
        )  # started by the table's attach: building a port connects nowhere

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
                h.advance(HandoffEvent.PEER_GONE)
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
            self.handoff.advance(HandoffEvent.CLOSE)
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
        h.advance(HandoffEvent.PEER)
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
        h.advance(HandoffEvent.COMPLETE)
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
        h.advance(HandoffEvent.ABORT)
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
        self.handoff.advance(HandoffEvent.EXPIRE)
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

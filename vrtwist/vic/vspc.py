"""The vSPC relay: ESX network serial ports (TELNET option 232) to per-VM backends.

Pieces, from the wire up, each in its own module (re-exported here):

* :class:`VSPCConnection` (:mod:`vrtwist.vic.vspc_esx`) -- one ESX TCP/TLS
  connection: TELNET negotiation and option 232 (spec vic-relay 1.4); hands serial
  bytes to its :class:`SerialPort`.
* :class:`SerialPort` (:mod:`vrtwist.vic.vspc_port`) -- one VM serial port, keyed by
  normalised VC UUID plus the DO-PROXY port label. Owns the backend link, the two
  bounded buffers, flow control, and the vMotion hand-off of spec 1.5, whose states
  and transitions are :class:`~vrtwist.vic.vmotion.Handoff`'s.
* :class:`VMPortTable` (here) -- all ports and the pending hand-offs by seq+secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Factory
from zope.interface import implementer

from vrtwist.bounds import ConnectionGuard, ConnectionLimits
from vrtwist.logfields import Logger
from vrtwist.vic.interfaces import IVMPortTable
from vrtwist.vic.vmotion import Handoff, HandoffState, InvalidHandoff
from vrtwist.vic.vspc_esx import OptionNegotiation, VSPCConnection
from vrtwist.vic.vspc_port import BackendProtocol, SerialPort
from vrtwist.vsock.tuning import READ_SIZE_LARGE, UNIX_SOCKET_BUFFER

__all__ = [
    "VSPC_LIMITS",
    "BackendProtocol",
    "Handoff",
    "HandoffState",
    "InvalidHandoff",
    "OptionNegotiation",
    "SerialPort",
    "VMPortTable",
    "VSPCConfig",
    "VSPCConnection",
    "VSPCFactory",
    "checkTemplate",
]


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
            port.service.startService()  # the backend link
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

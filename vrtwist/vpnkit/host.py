"""The host side: exposed ports (listeners) whose clients ride channels of the current link.

:class:`Links` tracks the live multiplexers (one per data connection) and hands out the
newest ready one; :class:`ForwardTable` is the model behind the HTTP expose API: one
listener per exposed :class:`Port`, TCP and unix clients spliced onto channels, UDP
clients tracked per source address ("conntrack") with one channel each, idle flows
closed after 90 s as in Go.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import asdict, dataclass, replace
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
)
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from vrtwist.access import SocketAccess
from vrtwist.logfields import Logger
from vrtwist.unixlisten import UNIXListenEndpoint
from vrtwist.vpnkit._fastwrite import read_now
from vrtwist.vpnkit._lean import LeanTCPPort
from vrtwist.vpnkit.frames import Destination, UDPDecoder, UDPRecordError
from vrtwist.vpnkit.interfaces import IForwardTable
from vrtwist.vpnkit.mux import Multiplexer, MuxStats
from vrtwist.vpnkit.proxy import Splice, send_datagram

__all__ = ["UDP_CONNTRACK_TIMEOUT", "ExposeError", "ForwardTable", "Links", "Port", "PortError"]

#: Go's ``UDPConnTrackTimeout``: a UDP flow with no traffic for this long is closed.
UDP_CONNTRACK_TIMEOUT = 90.0
#: Listen backlog of exposed ports (Go's net.Listen takes somaxconn; bursts of clients
#: must not see SYNs dropped).
LISTEN_BACKLOG = 1024


class PortError(ValueError):
    """A Port description is invalid (bad proto, address, missing field)."""


class ExposeError(Exception):
    """Listening failed (address in use, no such interface); the message says why."""


@dataclass(frozen=True)
class Port:
    """One forward, with the JSON field names of Go's ``vpnkit.Port``."""

    proto: str
    out_ip: str = ""
    out_port: int = 0
    out_path: str = ""
    in_ip: str = ""
    in_port: int = 0
    in_path: str = ""
    annotation: str = ""

    def __post_init__(self) -> None:
        if self.proto not in ("tcp", "udp", "unix"):
            raise PortError(f"unknown protocol {self.proto!r}: use tcp, udp or unix")
        if self.proto == "unix":
            if not self.out_path or not self.in_path:
                raise PortError("a unix forward needs out_path and in_path")
            return
        for what, ip in (("out_ip", self.out_ip), ("in_ip", self.in_ip)):
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise PortError(f"{what} {ip!r} is not an IP address") from None
        for what, p in (("out_port", self.out_port), ("in_port", self.in_port)):
            if not isinstance(p, int) or not 0 <= p <= 0xFFFF:
                raise PortError(f"{what} {p!r} is not a port number")
        if self.in_port == 0:
            raise PortError("in_port must not be 0")

    @classmethod
    def from_json(cls, obj: Any) -> Port:
        if not isinstance(obj, dict):
            raise PortError("expected a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(obj) - known
        if unknown:
            raise PortError(f"unknown fields {sorted(unknown)}")
        try:
            return cls(**obj)
        except TypeError as e:
            raise PortError(str(e)) from None

    def to_json(self) -> dict[str, Any]:
        """Go marshals with ``omitempty``: zero values are left out."""
        return {k: v for k, v in asdict(self).items() if v not in ("", 0)}

    @classmethod
    def parse(cls, spec: str) -> Port:
        """``proto:outip:outport:inip:inport`` (IPv6 in brackets) or ``unix:outpath:inpath``."""
        parts = _split_spec(spec)
        if parts and parts[0] == "unix":
            if len(parts) != 3:
                raise PortError(f"{spec!r}: expected unix:outpath:inpath")
            return cls("unix", out_path=parts[1], in_path=parts[2])
        if len(parts) != 5:
            raise PortError(f"{spec!r}: expected proto:outip:outport:inip:inport")
        try:
            return cls(parts[0], parts[1], int(parts[2]), "", parts[3], int(parts[4]))
        except ValueError as e:
            if isinstance(e, PortError):
                raise
            raise PortError(f"{spec!r}: ports must be integers") from None

    def key(self) -> tuple[str, str, int, str]:
        """What identifies the listening end (two forwards cannot share it)."""
        return (self.proto, self.out_ip, self.out_port, self.out_path)

    def destination(self) -> Destination:
        if self.proto == "unix":
            return Destination.unix(self.in_path)
        if self.proto == "tcp":
            return Destination.tcp(self.in_ip, self.in_port)
        return Destination.udp(self.in_ip, self.in_port)

    def __str__(self) -> str:
        if self.proto == "unix":
            return f"unix:{self.out_path}:{self.in_path}"

        def b(ip: str) -> str:
            return f"[{ip}]" if ":" in ip else ip

        return f"{self.proto}:{b(self.out_ip)}:{self.out_port}:{b(self.in_ip)}:{self.in_port}"


def _split_spec(spec: str) -> list[str]:
    """Split on colons outside brackets, dropping the brackets of IPv6 addresses."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for c in spec:
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == ":" and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    out.append("".join(cur))
    return out


class Links:
    """The data connections of this process; channels are opened on the newest ready one."""

    _log = Logger()

    def __init__(self) -> None:
        self.muxes: list[Multiplexer] = []
        self.past = MuxStats()  # counters of links that are gone
        self.links_seen = 0

    def add(self, mux: Multiplexer) -> None:
        self.links_seen += 1
        self.muxes.append(mux)
        mux.whenLost.addBoth(lambda _: self._gone(mux))

    def _gone(self, mux: Multiplexer) -> None:
        if mux in self.muxes:
            self.muxes.remove(mux)
            self.past.add(mux.stats)

    def current(self) -> Multiplexer | None:
        for mux in reversed(self.muxes):
            if mux.ready and mux._connected:
                return mux
        return None

    def stats(self) -> MuxStats:
        total = MuxStats()
        total.add(self.past)
        for m in self.muxes:
            total.add(m.stats)
        return total

    def dump(self) -> str:
        lines = [f"data links: {len(self.muxes)} live, {self.links_seen} seen"]
        lines.append("totals: " + " ".join(f"{k}={v}" for k, v in self.stats().as_dict().items()))
        for i, m in enumerate(self.muxes):
            lines.append(f"--- link {i}")
            lines.append(m.dump())
        return "\n".join(lines) + "\n"


class _StreamForwardFactory(Factory):
    noisy = False

    def __init__(self, fwd: _Forward) -> None:
        self.fwd = fwd

    def buildProtocol(self, addr: Any) -> Protocol:
        fwd = self.fwd
        splice = Splice(resetOnRefused=fwd.table.resetOnRefused, opener=fwd.open_for)
        splice.onLocalLost = lambda: fwd.splices.discard(splice)
        fwd.splices.add(splice)
        return splice.local_end


class _Forward:
    """One exposed port: its listener and its live connections."""

    _log = Logger()

    def __init__(self, table: ForwardTable, port: Port) -> None:
        self.table = table
        self.port = port
        self.destination = port.destination()  # parsed once, not per connection
        self.listener: Any = None
        self.splices: set[Splice] = set()
        self.udp: _UDPForward | None = None

    def open_for(self, splice: Splice) -> None:
        mux = self.table.links.current()
        if mux is None:
            raise error.ConnectionClosed("multiplexer is not running")
        # The client's first bytes or FIN are often queued already: read them now, so
        # they leave with Open + Window in one link write instead of one more turn.
        mux.cork()
        try:
            mux.openChannel(self.destination, splice.channel_end)
            local = splice.local_end.transport
            if local is not None and self.table.reactor is not None:
                read_now(self.table.reactor, local)
        finally:
            mux.uncork()

    def close(self, closeConnections: bool) -> defer.Deferred[None]:
        d: defer.Deferred[Any] = defer.maybeDeferred(self.listener.stopListening)
        if self.udp is not None:
            self.udp.stop()
        if closeConnections:
            for s in list(self.splices):
                for end in (s.local_end, s.channel_end):
                    if end.transport is not None and not end.lost:
                        end.transport.loseConnection()
        if self.port.proto == "unix":

            def unlink(r: Any) -> Any:
                try:
                    os.unlink(self.port.out_path)
                except OSError:
                    pass
                return r

            d.addBoth(unlink)
        return d.addCallback(lambda _: None)


class _UDPChannel(Protocol):
    def __init__(self, flow: _UDPFlow) -> None:
        self.flow = flow
        self.decoder = UDPDecoder()

    def dataReceived(self, data: bytes) -> None:
        try:
            recs = self.decoder.feed(data)
        except UDPRecordError as e:
            self.flow.fwd._log.warn("malformed UDP record: {err}", err=str(e))
            assert self.transport is not None
            self.transport.loseConnection()
            return
        for r in recs:
            self.flow.fwd.stats.datagrams_in += 1
            self.flow.last = self.flow.fwd.clock.seconds()
            self.flow.fwd.to_client(r.payload, self.flow.client)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.flow.fwd.flows.pop(self.flow.client, None)


class _UDPFlow:
    def __init__(self, fwd: _UDPForward, client: tuple[str, int]) -> None:
        self.fwd = fwd
        self.client = client
        self.last = fwd.clock.seconds()
        self.protocol = _UDPChannel(self)


class _UDPForward(DatagramProtocol):
    """A UDP listener; one channel per client address, idle flows expire."""

    _log = Logger()

    def __init__(self, fwd: _Forward, clock: Any, timeout: float) -> None:
        self.fwd = fwd
        self.clock = clock
        self.timeout = timeout
        self.flows: dict[tuple[str, int], _UDPFlow] = {}
        self.stats = fwd.table.udp_stats
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = clock

    def startProtocol(self) -> None:
        self._sweeper.start(self.timeout / 3, now=False)

    def stop(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        for flow in list(self.flows.values()):
            if flow.protocol.transport is not None:
                flow.protocol.transport.loseConnection()
        self.flows.clear()

    def sweep(self) -> None:
        now = self.clock.seconds()
        for flow in list(self.flows.values()):
            if now - flow.last >= self.timeout and flow.protocol.transport is not None:
                flow.protocol.transport.loseConnection()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        client = (addr[0], addr[1])
        flow = self.flows.get(client)
        if flow is None:
            mux = self.fwd.table.links.current()
            if mux is None:
                self.stats.datagrams_dropped += 1
                return
            flow = _UDPFlow(self, client)
            self.flows[client] = flow
            mux.openChannel(self.fwd.destination, flow.protocol)
        flow.last = self.clock.seconds()
        assert flow.protocol.transport is not None
        send_datagram(flow.protocol.transport, datagram, self.stats)

    def to_client(self, payload: bytes, client: tuple[str, int]) -> None:
        if self.transport is not None:
            try:
                self.transport.write(payload, client)
            except OSError:
                self.stats.datagrams_dropped += 1


@implementer(IForwardTable)
class ForwardTable:
    """Exposed ports of the host side (the model behind ``/forwards/*``)."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        links: Links,
        resetOnRefused: bool = True,
        udpTimeout: float = UDP_CONNTRACK_TIMEOUT,
        access: SocketAccess | None = None,
    ) -> None:
        self.reactor = reactor
        self.links = links
        #: who may connect to an exposed unix socket: the owner (0600), or a group (0660)
        self.access = access
        self.resetOnRefused = resetOnRefused
        self.udpTimeout = udpTimeout
        self.forwards: dict[tuple[str, str, int, str], _Forward] = {}
        self.udp_stats = MuxStats()

    def list(self) -> list[Port]:
        return [f.port for f in self.forwards.values()]

    def _find(self, port: Port) -> _Forward | None:
        f = self.forwards.get(port.key())
        if f is not None:
            return f
        if port.out_port == 0:
            return None
        for f in self.forwards.values():
            if f.port.key() == port.key():
                return f
        return None

    async def expose(self, port: Port) -> Port:
        existing = self.forwards.get(port.key()) if port.out_port or port.proto == "unix" else None
        if existing is not None:
            if replace(existing.port, annotation=port.annotation) == replace(
                port, annotation=port.annotation
            ):
                return existing.port  # idempotent
            raise ExposeError(f"{port}: {existing.port} is already exposed there")
        fwd = _Forward(self, port)
        try:
            if port.proto == "udp":
                fwd.udp = _UDPForward(fwd, self.reactor, self.udpTimeout)
                fwd.listener = self.reactor.listenUDP(port.out_port, fwd.udp, interface=port.out_ip)
            else:
                fwd.listener = await self._listen_stream(port, _StreamForwardFactory(fwd))
        except (error.CannotListenError, OSError, ExposeError) as e:
            raise ExposeError(_listen_message(port, e)) from None
        granted = port
        if port.proto != "unix" and port.out_port == 0:
            granted = replace(port, out_port=fwd.listener.getHost().port)
        fwd.port = granted
        self.forwards[granted.key()] = fwd
        self._log.info("exposed {port}", port=str(granted))
        return granted

    async def _listen_stream(self, port: Port, factory: Factory) -> IListeningPort:
        if port.proto == "unix":
            try:
                st = os.lstat(port.out_path)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISSOCK(st.st_mode):
                    raise ExposeError(f"{port.out_path} exists and is not a socket")
                os.unlink(port.out_path)  # stale socket (Go TestUnixForwardAlreadyExists2)
            ep: Any = UNIXListenEndpoint(
                self.reactor, port.out_path, self.access, backlog=LISTEN_BACKLOG
            )
        elif hasattr(self.reactor, "adoptStreamPort"):
            # A real reactor: the lean accept loop (see _lean.py), bound as listenTCP would.
            lp = LeanTCPPort(
                port.out_port, factory, LISTEN_BACKLOG, port.out_ip, reactor=self.reactor
            )
            lp.startListening()
            return lp
        elif ":" in port.out_ip:
            ep = TCP6ServerEndpoint(self.reactor, port.out_port, LISTEN_BACKLOG, port.out_ip)
        else:
            ep = TCP4ServerEndpoint(self.reactor, port.out_port, LISTEN_BACKLOG, port.out_ip)
        return await ep.listen(factory)  # type: ignore[no-any-return]

    async def unexpose(self, port: Port, closeConnections: bool = False) -> None:
        fwd = self._find(port)
        if fwd is None:
            return
        del self.forwards[fwd.port.key()]
        await fwd.close(closeConnections)
        self._log.info("unexposed {port}", port=str(fwd.port))

    async def unexpose_all(self) -> None:
        for fwd in list(self.forwards.values()):
            await self.unexpose(fwd.port, closeConnections=True)

    def connections(self) -> int:
        return sum(
            len(f.splices) + (len(f.udp.flows) if f.udp else 0) for f in self.forwards.values()
        )

    def dump(self) -> str:
        lines = [f"forwards: {len(self.forwards)}"]
        for f in self.forwards.values():
            n = len(f.splices) if f.udp is None else len(f.udp.flows)
            lines.append(f"  {f.port} connections={n}")
        u = self.udp_stats
        lines.append(
            f"udp: datagrams_in={u.datagrams_in} datagrams_out={u.datagrams_out}"
            f" datagrams_dropped={u.datagrams_dropped}"
        )
        return "\n".join(lines) + "\n" + self.links.dump()


def _listen_message(port: Port, e: BaseException) -> str:
    msg = str(e)
    if isinstance(e, error.CannotListenError) and e.socketError is not None:
        msg = str(e.socketError)
    where = port.out_path if port.proto == "unix" else f"{port.out_ip}:{port.out_port}"
    return f"listen {port.proto} {where}: {msg}"

"""The two ends of pkt0: what the datapath and the agent do with its frames.

:class:`DatapathEndpoint` is the datapath's :class:`~vrtwist.datapath.interfaces.IPacketTrap`:
it rate-limits traps per source vif (a VM flooding ARP, DHCP or new flows uses up only its
own budget, as the real datapath's per-interface limits intend), frames them with the agent
vif's MAC and hands them to a transport. Frames from the agent are decoded and executed
through :class:`IAgentCommands` (SWITCH: transmit on a vif; ROUTE: inject as if received).

:class:`AgentEndpoint` is the agent's side: it decodes traps for an
:class:`ITrapHandler` and frames the agent's transmissions.

Both are state with counters and no I/O of their own; malformed frames are counted and
dropped, never raised into the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.logger import Logger
from zope.interface import Interface, implementer

from vrtwist.pkt0 import constants as K
from vrtwist.pkt0.codec import (
    AgentHeader,
    Pkt0Error,
    decode,
    encode_command,
    encode_trap,
    trap_header,
)
from vrtwist.pkt0.interfaces import IPacketTrap
from vrtwist.pkt0.transport import IPkt0Receiver, IPkt0Transport

__all__ = [
    "AgentEndpoint",
    "DatapathEndpoint",
    "EndpointCounters",
    "IAgentCommands",
    "ITrapHandler",
    "TrapLimiter",
]


class IAgentCommands(Interface):
    """What the datapath does with the agent's frames (``agent_rx`` in the vRouter)."""

    def agent_switch(vif_index: int, vrf: int, frame: bytes) -> bool:
        """Transmit ``frame`` on vif ``vif_index`` as it is (no flow, no lookup)."""

    def agent_route(vif_index: int, vrf: int, frame: bytes, param: int, param_1: int) -> bool:
        """Process ``frame`` as if received on ``vif_index``, looked up in ``vrf``."""


class ITrapHandler(Interface):
    """The agent's packet services: one trapped packet at a time."""

    def trap_received(header: AgentHeader, frame: memoryview) -> None:
        """``frame`` is the trapped packet from its own Ethernet header."""


@dataclass
class EndpointCounters:
    """Per-end counters (exported by the daemons)."""

    traps: int = 0
    rate_limited: int = 0
    malformed: int = 0
    unknown_command: int = 0
    commands: int = 0
    command_failed: int = 0


class TrapLimiter:
    """A token bucket per source vif: ``rate`` traps per second, bursts of ``burst``.

    Memory is bounded by the number of vifs (the datapath's vif table bounds it). The
    clock is injected so the limiter stays free of I/O.
    """

    def __init__(self, rate: float, burst: int, now: Callable[[], float]) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("trap rate and burst must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self._now = now
        self._buckets: dict[int, list[float]] = {}

    def allow(self, vif_index: int) -> bool:
        now = self._now()
        bucket = self._buckets.get(vif_index)
        if bucket is None:
            self._buckets[vif_index] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def forget(self, vif_index: int) -> None:
        """Drop the bucket of a deleted vif."""
        self._buckets.pop(vif_index, None)


@implementer(IPacketTrap, IPkt0Receiver)
class DatapathEndpoint:
    """The datapath's end: traps out, agent commands in."""

    _log = Logger()

    def __init__(
        self,
        agent_mac: Callable[[], bytes | None],
        commands: IAgentCommands | None = None,
        limiter: TrapLimiter | None = None,
    ) -> None:
        self._agent_mac = agent_mac
        self.commands = commands
        self.transport: IPkt0Transport | None = None
        self.limiter = limiter
        self.counters = EndpointCounters()

    # -- IPacketTrap

    def trap(
        self,
        vif_index: int,
        vrf: int,
        code: int,
        param: int,
        param_1: int,
        stats: tuple[int, int, int, int],
        frame: bytes,
    ) -> bool:
        """Frame and send one trap; False when there is no agent or the budget is spent."""
        transport = self.transport
        mac = self._agent_mac()
        if transport is None or mac is None:
            return False
        if self.limiter is not None and not self.limiter.allow(vif_index):
            self.counters.rate_limited += 1
            return False
        hdr = trap_header(vif_index, vrf & 0xFFFF, code, param, param_1, stats)
        if transport.send(encode_trap(mac, hdr, frame)):
            self.counters.traps += 1
            return True
        return False

    # -- IPkt0Receiver

    def frame_received(self, frame: bytes) -> None:
        counters = self.counters
        try:
            hdr, inner = decode(frame)
        except Pkt0Error:
            counters.malformed += 1
            return
        commands = self.commands
        if commands is None:
            counters.command_failed += 1
            return
        if hdr.cmd == K.AGENT_CMD_SWITCH:
            done = commands.agent_switch(hdr.ifindex, hdr.vrf, bytes(inner))
        elif hdr.cmd == K.AGENT_CMD_ROUTE:
            done = commands.agent_route(hdr.ifindex, hdr.vrf, bytes(inner), hdr.param, hdr.param_1)
        else:
            counters.unknown_command += 1
            return
        counters.commands += 1
        if not done:
            counters.command_failed += 1


@implementer(IPkt0Receiver)
class AgentEndpoint:
    """The agent's end: traps in (to the packet services), transmissions out."""

    def __init__(self, handler: ITrapHandler | None = None) -> None:
        self.handler = handler
        self.transport: IPkt0Transport | None = None
        self.counters = EndpointCounters()
        #: traps received per code (bounded: codes are 16-bit, unknown ones are one bucket)
        self.by_code: dict[int, int] = {}

    def frame_received(self, frame: bytes) -> None:
        try:
            hdr, inner = decode(frame)
        except Pkt0Error:
            self.counters.malformed += 1
            return
        if hdr.cmd >= K.MAX_AGENT_HDR_COMMANDS or hdr.cmd < K.AGENT_TRAP_ARP:
            self.counters.unknown_command += 1
            return
        self.counters.traps += 1
        self.by_code[hdr.cmd] = self.by_code.get(hdr.cmd, 0) + 1
        if self.handler is not None:
            self.handler.trap_received(hdr, inner)

    def send_switch(self, vif_index: int, vrf: int, frame: bytes) -> bool:
        """Have the datapath transmit ``frame`` on ``vif_index`` (DHCP, ICMP, ARP replies)."""
        return self._send(encode_command(vif_index, vrf, K.AGENT_CMD_SWITCH, frame))

    def send_route(
        self, vif_index: int, vrf: int, frame: bytes, param: int = 0, param_1: int = 0
    ) -> bool:
        """Have the datapath process ``frame`` as if received on ``vif_index``."""
        return self._send(
            encode_command(vif_index, vrf, K.AGENT_CMD_ROUTE, frame, param, param_1)
        )

    def _send(self, frame: bytes) -> bool:
        transport = self.transport
        if transport is None or not transport.send(frame):
            self.counters.command_failed += 1
            return False
        self.counters.commands += 1
        return True

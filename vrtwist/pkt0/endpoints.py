"""The two ends of pkt0: what the datapath and the agent do with its frames.

:class:`DatapathEndpoint` is the datapath's :class:`~vrtwist.datapath.interfaces.IPacketTrap`:
it rate-limits traps per source vif (a VM flooding ARP, DHCP or new flows uses up only its
own budget and cannot starve the other VMs' traps), frames them with the agent vif's MAC
and hands them to a transport. Frames from the agent are decoded and executed
by the pipeline on the agent vif (SWITCH: transmit on a vif; ROUTE: process as if received).

:class:`AgentEndpoint` is the agent's side: it decodes traps for an
:class:`ITrapHandler` and frames the agent's transmissions.

Both are state with counters and no I/O of their own; malformed frames are counted and
dropped, never raised into the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from zope.interface import Interface, implementer

from vrtwist.pkt0 import constants as K
from vrtwist.pkt0.codec import (
    HEADER_LEN,
    AgentHeader,
    Pkt0Error,
    decode,
    encode_command,
    encode_trap_fields,
)
from vrtwist.pkt0.interfaces import IPacketTrap
from vrtwist.pkt0.transport import IPkt0Receiver, IPkt0Transport

__all__ = [
    "AgentEndpoint",
    "DatapathEndpoint",
    "EndpointCounters",
    "ITrapHandler",
    "TrapLimiter",
]


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


#: traps that set up flows: a busy VM opens many connections a second
FLOW_TRAPS = frozenset({K.AGENT_TRAP_FLOW_MISS, K.AGENT_TRAP_FLOW_ACTION_HOLD})
#: default budgets per vif, (per second, burst): flow traps, and everything else (DHCP,
#: ARP, ICMP to the gateway...), which no VM has a reason to send by the thousand
FLOW_BUDGET = (50_000.0, 5_000)
OTHER_BUDGET = (500.0, 100)


class TrapLimiter:
    """Token buckets per source vif, one for flow traps and one for all other traps.

    Memory is bounded by the number of vifs (the datapath's vif table bounds it). The
    clock is injected so the limiter stays free of I/O.
    """

    def __init__(
        self,
        now: Callable[[], float],
        flow: tuple[float, int] = FLOW_BUDGET,
        other: tuple[float, int] = OTHER_BUDGET,
    ) -> None:
        for rate, burst in (flow, other):
            if rate <= 0 or burst <= 0:
                raise ValueError("trap rate and burst must be positive")
        self._now = now
        self._budgets = (
            (float(flow[0]), float(flow[1])),
            (float(other[0]), float(other[1])),
        )
        self._buckets: dict[tuple[int, int], list[float]] = {}

    def allow(self, vif_index: int, code: int) -> bool:
        kind = 0 if code in FLOW_TRAPS else 1
        rate, burst = self._budgets[kind]
        now = self._now()
        bucket = self._buckets.get((vif_index, kind))
        if bucket is None:
            self._buckets[(vif_index, kind)] = [burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * rate
        if tokens > burst:  # min() without its call: this is on every trap
            tokens = burst
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def forget(self, vif_index: int) -> None:
        """Drop the buckets of a deleted vif."""
        self._buckets.pop((vif_index, 0), None)
        self._buckets.pop((vif_index, 1), None)


@implementer(IPacketTrap, IPkt0Receiver)
class DatapathEndpoint:
    """The datapath's end: traps out, the agent's frames in.

    ``agent_vif`` names the agent vif (index and MAC) or None when there is none; the
    agent's frames are handed to ``deliver(agent vif index, frame)``, the pipeline's
    receive on that vif, which reads ``agent_hdr`` and executes SWITCH or ROUTE as the
    vRouter's ``agent_rx`` does (and counts what it refuses).
    """

    def __init__(
        self,
        agent_vif: Callable[[], tuple[int, bytes] | None],
        deliver: Callable[[int, bytes], None] | None = None,
        limiter: TrapLimiter | None = None,
    ) -> None:
        self._agent_vif = agent_vif
        self.deliver = deliver
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
        agent = self._agent_vif()
        if transport is None or agent is None:
            return False
        if self.limiter is not None and not self.limiter.allow(vif_index, code):
            self.counters.rate_limited += 1
            return False
        frame = encode_trap_fields(agent[1], vif_index, vrf & 0xFFFF, code, param, param_1,
                                   stats, frame)
        if transport.send(frame):
            self.counters.traps += 1
            return True
        return False

    # -- IPkt0Receiver

    def frame_received(self, frame: bytes) -> None:
        counters = self.counters
        if len(frame) <= HEADER_LEN:
            counters.malformed += 1
            return
        agent = self._agent_vif()
        if agent is None or self.deliver is None:
            counters.command_failed += 1
            return
        counters.commands += 1
        self.deliver(agent[0], frame)


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
        cmd = hdr.cmd
        if cmd >= K.MAX_AGENT_HDR_COMMANDS or cmd < K.AGENT_TRAP_ARP:
            self.counters.unknown_command += 1
            return
        self.counters.traps += 1
        by_code = self.by_code
        by_code[cmd] = by_code.get(cmd, 0) + 1
        handler = self.handler
        if handler is not None:
            handler.trap_received(hdr, inner)

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

"""Applies the configured network policies and security groups to a flow decision.

:func:`~vrtwist.agent.packet.flows.analyse` decides routes and keys; this turns its
default (allow) into the policy's verdict: who the ends of the flow are (the ports on
the trapped vif and on the out vif, the network of the flow's VRF), then
:func:`vrtwist.agent.policy.decide`. With nothing configured it is not called at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from vrtwist.agent.packet.flows import FlowDecision
from vrtwist.agent.policy import Analyzer, FlowSides, PolicyConfig, decide, header_of
from vrtwist.shmem import layout as L

__all__ = ["FlowPolicy", "LocalPort"]

#: a local VM port: (uuid, network uuid, its gateway/DNS addresses as ints)
LocalPort = tuple[str, str, frozenset[int]]


@dataclass
class FlowPolicy:
    """The policy step of flow setup: ``apply`` gives a decision its policy actions."""

    config: PolicyConfig
    #: vif -> the local port on it (None: not a VM vif)
    port_of: Callable[[int], LocalPort | None]
    #: VRF id -> the network uuid it belongs to (None: not a network's VRF)
    vn_of: Callable[[int], str | None]
    #: analyzer name -> its datapath mirror index (None: none, so no copies)
    mirror_index: Callable[[str], int | None] = lambda name: None

    @property
    def active(self) -> bool:
        return self.config.active

    def apply(self, d: FlowDecision) -> FlowDecision:
        """``d`` with the forward and reverse actions the policy gives (short flows keep
        their DROP)."""
        if d.reverse is None or d.short:
            return d
        if not self.config.active:
            return replace(d, action=L.ACTION_FORWARD, drop_reason=0, reverse_action=-1,
                           reverse_drop_reason=0)
        src = self.port_of(d.in_vif) if d.in_vif >= 0 else None
        dst = self.port_of(d.out_vif) if d.out_vif >= 0 else None
        vn = src[1] if src is not None else self.vn_of(d.vrf)
        gw = (src[2] if src is not None else frozenset()) | (
            dst[2] if dst is not None else frozenset())
        sides = FlowSides(src[0] if src else None, dst[0] if dst else None, vn,
                          dst[1] if dst is not None else vn, gw, d.tcp_ack)
        f = d.forward
        hdr = header_of(f.sip, f.dip, f.proto, f.sport, f.dport, vn)
        if dst is not None:
            hdr = replace(hdr, dst_vn=dst[1])
        v = decide(self.config, hdr, sides)
        fwd = L.ACTION_DROP if v.forward_drops else L.ACTION_FORWARD
        rev = L.ACTION_DROP if v.reverse_drops else L.ACTION_FORWARD
        return replace(d, action=fwd, drop_reason=v.forward_reason if v.forward_drops else 0,
                       reverse_action=rev,
                       reverse_drop_reason=v.reverse_reason if v.reverse_drops else 0,
                       mirrors=self._indices(v.forward_mirrors),
                       reverse_mirrors=self._indices(v.reverse_mirrors))

    def _indices(self, analyzers: tuple[Analyzer, ...]) -> tuple[int, ...]:
        """The mirror indices of the first two analyzers that have one (the real agent
        programs at most two mirrors per flow)."""
        if not analyzers:
            return ()
        found = (self.mirror_index(a.name) for a in analyzers if a.ip is not None)
        return tuple(i for i in found if i is not None)[:2]

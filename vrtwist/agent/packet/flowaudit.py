"""Adopting the flows a previous agent left in the shared-memory flow table.

With ``--datapath external`` the datapath keeps its flow table while the agent restarts,
so streams go on without an agent. The new agent knows nothing of those flows: it would
neither age them nor apply a policy or security group that changed while it was away,
and a flow of a port removed meanwhile would keep its action. The real agent never meets
this case (it flushes the datapath with ``vrouter_ops`` RESET at start, and its own audit,
``tungstenfabric/tf-controller:src/vnsw/agent/vrouter/ksync/ksync_memory.cc``
``KSyncMemory::AuditProcess``, only removes HOLD entries nobody answered). Here each
linked pair of active entries is examined once the agent has its ports and routes:

* a pair whose keys are what this agent would set up for the forward key's packet
  (same reverse key from the current routes) is *adopted*: it joins the pairs the agent
  ages and re-evaluates, and its actions are decided again under the current policy; the
  entries are re-written only when that changes an action or a drop reason, so a stream
  whose flows stay FORWARD is not touched at all;
* a pair that no longer matches (a port or a route gone) is deleted, once the routes the
  controller sends are back (``settled``) and the pair was seen unmatched for the audit
  timeout; the flow's next packet is trapped and set up afresh;
* single entries (not written by the agent as a pair) are left alone, and HOLD entries
  are the HOLD audit's (:meth:`~vrtwist.agent.packet.flows.FlowSetup.audit_pass`).

Which entry of a pair is the forward flow (the side that opened it) is not recorded in
the table. Between two local VMs both readings fit the routes; when the policy gives the
two entries the same actions either way, the pair is adopted (the reading kept, which
also picks the drop reasons, is the one that leaves the entries as written, else the one
going to the lower port: a client to its server). When the actions differ (an asymmetric security group, say), the pair is
deleted instead: the flow's next packet is
trapped and set up from that packet, which says which side it comes from.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from twisted.internet.defer import Deferred

from vrtwist.agent.packet.flows import (
    AUDIT_TIMEOUT,
    FlowDecision,
    FlowKey,
    FlowSetup,
    RouteView,
    _Pair,
    flow_request,
    reverse_hop,
    reverse_key,
    short_decision,
    with_mirrors,
)
from vrtwist.logfields import Logger
from vrtwist.packet.headers import IPPROTO_ICMP
from vrtwist.sandesh import constants as C
from vrtwist.shmem import layout as L

__all__ = ["FlowAdoption", "decision_for_key", "vm_sources"]

#: actions the agent writes into a pair (NAT and HOLD entries are not the agent's pairs)
_PAIR_ACTIONS: Final = frozenset({L.ACTION_FORWARD, L.ACTION_DROP})

#: (forward entry, reverse entry, the decision under the current policy)
_Orientation = tuple[Any, Any, FlowDecision]


def _key_of(entry: Any) -> FlowKey:
    return FlowKey(ipaddress.IPv4Address(entry.sip).packed,
                   ipaddress.IPv4Address(entry.dip).packed, entry.proto, entry.sport,
                   entry.dport, entry.nh_id)


def decision_for_key(key: FlowKey, vrf: int, routes: RouteView, in_vif: int) -> FlowDecision:
    """What flow setup decides for a packet with the forward key ``key`` in ``vrf``
    arriving on ``in_vif`` (-1: not a VM's vif), before policy; as
    :func:`~vrtwist.agent.packet.flows.analyse` does from a trapped packet. The TCP ACK
    of the first packet is not known any more: taken as unset."""
    src_route = routes.lookup(vrf, key.sip)
    dst_route = routes.lookup(vrf, key.dip)
    if src_route is None or dst_route is None:
        return short_decision(key, vrf, src_route is None, dst_route, routes)
    reverse_nh, out_nh, out_vif = reverse_hop(key.nh_id, dst_route, routes)
    return FlowDecision(key, reverse_key(key, reverse_nh), L.ACTION_FORWARD, 0, vrf, vrf,
                        int(src_route.get("rtr_nh_id", 0)), out_nh, in_vif=in_vif,
                        out_vif=out_vif)


def vm_sources(desired: Mapping[Any, tuple[str, dict[str, Any]]]) -> dict[tuple[int, bytes], int]:
    """(flow key next hop, address) -> vif, of every VM vif among the agent's ``desired``
    objects (the ``FlowAdoption.sources`` of an agent)."""
    out: dict[tuple[int, bytes], int] = {}
    for key, (_, fields) in list(desired.items()):
        if key[0] != "vif" or fields.get("vifr_type") != C.VIF_TYPE_VIRTUAL:
            continue
        ip = int(fields.get("vifr_ip", 0)).to_bytes(4, sys.byteorder)
        out[(int(fields.get("vifr_nh_id", 0)), ip)] = int(key[1])
    return out


def _mirrors_of(e: Any) -> tuple[int, ...]:
    if not e.flags & L.FLAG_MIRROR:
        return ()
    return tuple(m for m in (e.mirror_id, e.sec_mirror_id) if m != 0xFF)


def _written(fwd: Any, rev: Any) -> tuple[Any, ...]:
    return (fwd.action, fwd.drop_reason, rev.action, rev.drop_reason, _mirrors_of(fwd),
            _mirrors_of(rev))


def _wanted(d: FlowDecision) -> tuple[Any, ...]:
    rev_action = d.action if d.reverse_action < 0 else d.reverse_action
    return (d.action, d.drop_reason, rev_action, d.reverse_drop_reason, d.mirrors,
            d.reverse_mirrors)


@dataclass
class AdoptionCounters:
    adopted: int = 0
    rewritten: int = 0
    deleted: int = 0


@dataclass
class FlowAdoption:
    """The start-up audit of the pairs a previous agent left (see the module doc).

    ``sources()`` maps (flow key next hop, address) of each local VM vif to that vif:
    a forward key whose next hop and source address are a VM's comes from that VM.
    """

    flows: FlowSetup
    sources: Callable[[], Mapping[tuple[int, bytes], int]]
    #: the routes the controller sends are back (or there is no controller): a pair that
    #: matches nothing now will not match later
    settled: bool = False
    #: nothing left to examine: the passes stop
    finished: bool = False
    counters: AdoptionCounters = field(default_factory=AdoptionCounters)
    #: unmatched pairs: (fwd index, gen, rev index, gen) -> first seen
    _unmatched: dict[tuple[int, int, int, int], float] = field(default_factory=dict)
    _vm_sources: Mapping[tuple[int, bytes], int] = field(default_factory=dict)

    _log = Logger()

    def adopt_pass(self, active: Iterable[int],
                   read: Callable[[int], Any]) -> list[Deferred[tuple[int, int, int]]]:
        """One pass over the active entries (``active``: their indices; ``read`` as for
        :meth:`~vrtwist.agent.packet.flows.FlowSetup.age_pass`). Returns the FLOW_SETs
        it sent (re-writes and deletes)."""
        out: list[Deferred[tuple[int, int, int]]] = []
        if self.finished:
            return out
        flows = self.flows
        owned = {i for p in flows.pairs.values() for i in (p.fwd_index, p.rev_index)}
        busy = {index for index, _ in flows._pending}
        now = flows.now()
        unmatched: dict[tuple[int, int, int, int], float] = {}
        seen: set[int] = set()
        self._vm_sources = self.sources()
        for index in active:
            if index in owned or index in seen or index in busy:
                continue
            a = read(index)
            pair = self._linked(a, read)
            if pair is None:
                continue
            b = pair
            seen.update((a.index, b.index))
            if b.index in owned or b.index in busy:
                continue
            chosen = self._orientation(a, b)
            if chosen is False:
                # which side opened the flow decides its action, and the table does not
                # say: the flow's next packet is trapped and set up afresh
                out.extend(self._delete(a, b))
                continue
            if chosen is not None:
                out.extend(self._adopt(*chosen))
                continue
            token = (a.index, a.gen_id, b.index, b.gen_id)
            first = self._unmatched.get(token, now)
            if self.settled and now - first >= AUDIT_TIMEOUT:
                out.extend(self._delete(a, b))
            else:
                unmatched[token] = first
        self._unmatched = unmatched
        if self.settled and not unmatched:
            self.finished = True
            c = self.counters
            self._log.info("flows left by the previous agent: {adopted} pair(s) adopted, "
                           "{rewritten} re-written, {deleted} deleted", adopted=c.adopted,
                           rewritten=c.rewritten, deleted=c.deleted)
        return out

    @staticmethod
    def _linked(a: Any, read: Callable[[int], Any]) -> Any:
        """The entry ``a`` is paired with, when both are active pair entries naming each
        other (None otherwise)."""
        if a is None or not a.flags & L.RFLOW_VALID or a.action not in _PAIR_ACTIONS:
            return None
        if a.family != C.AF_INET or a.rflow == a.index:
            return None
        b = read(a.rflow)
        if b is None or not b.flags & L.RFLOW_VALID or b.rflow != a.index:
            return None
        if b.action not in _PAIR_ACTIONS or b.family != C.AF_INET:
            return None
        return b

    def _orientation(self, a: Any, b: Any) -> _Orientation | Literal[False] | None:
        """The forward/reverse reading of the pair (a, b) that fits the current routes,
        with its decision under the current policy; None when neither fits, False when
        both fit and the policy treats the two readings differently."""
        fits: list[_Orientation] = []
        for fwd, rev in ((a, b), (b, a)):
            key = _key_of(fwd)
            if self.flows.routes.nexthop(key.nh_id) is None:
                continue  # a next hop this agent does not have (a port removed)
            d = decision_for_key(key, fwd.vrf, self.flows.routes,
                                 self._vm_sources.get((key.nh_id, key.sip), -1))
            if d.reverse is None or d.reverse != _key_of(rev):
                continue
            policy = self.flows.policy
            if policy is not None and policy.active:
                d = policy.apply(d)
            fits.append((fwd, rev, d))
        if len(fits) < 2:
            return fits[0] if fits else None
        (_, _, d1), (_, _, d2) = fits
        w1, w2 = _wanted(d1), _wanted(d2)
        if (w1[0], w1[2], w1[4], w1[5]) != (w2[2], w2[0], w2[5], w2[4]):
            return False
        # each entry gets the same action either way (drop reasons may differ); the
        # reading kept: the one that leaves what is written, else the one going to the
        # lower port (a client to its server)
        for fit in fits:
            if _wanted(fit[2]) == _written(fit[0], fit[1]):
                return fit
        return min(fits, key=lambda f: (f[0].proto == IPPROTO_ICMP or f[0].dport > f[0].sport))

    def _adopt(self, fwd: Any, rev: Any, d: FlowDecision) -> list[Deferred[tuple[int, int, int]]]:
        flows = self.flows
        assert d.reverse is not None
        self.counters.adopted += 1
        flows.pairs[fwd.index] = _Pair(fwd.index, fwd.gen_id, d.forward, rev.index,
                                       rev.gen_id, d.reverse, last_change=flows.now(),
                                       decision=d)
        if _wanted(d) == _written(fwd, rev):
            return []
        self.counters.rewritten += 1
        action, reason, rev_action, rev_reason, _, _ = _wanted(d)
        flags = L.FLAG_ACTIVE | L.RFLOW_VALID
        return [
            flows.channel(with_mirrors(flow_request(
                d.reverse, rev.index, rev.gen_id, rev_action, flags, flow_vrf=d.dvrf,
                src_nh_index=d.reverse_src_nh, rindex=fwd.index, drop_reason=rev_reason),
                d.reverse_mirrors)),
            flows.channel(with_mirrors(flow_request(
                d.forward, fwd.index, fwd.gen_id, action, flags, flow_vrf=d.vrf,
                src_nh_index=d.src_nh, rindex=rev.index, drop_reason=reason), d.mirrors)),
        ]

    def _delete(self, a: Any, b: Any) -> list[Deferred[tuple[int, int, int]]]:
        self.counters.deleted += 1
        return [self.flows.channel(flow_request(_key_of(e), e.index, e.gen_id, L.ACTION_DROP, 0))
                for e in (a, b)]

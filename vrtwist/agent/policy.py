"""Network policies and security groups: the agent's flow policy as state, no I/O.

The real agent (``tungstenfabric/tf-controller:src/vnsw/agent/pkt/flow_entry.cc``
``DoPolicy``/``MatchAcl``/``ActionRecompute``, ``filter/acl.cc``) matches a new flow
against lists of ACLs and sums the actions of what matched:

* an ACL is an ordered list of entries (ACEs); each matching entry adds its action bits
  and the walk stops at the first matching *terminal* entry;
* an empty list passes ("implicit allow"); ICMP, and UDP to or from port 53, to or from
  the port's gateway/DNS address always pass; a non-empty list that nothing matched
  denies ("implicit deny");
* network policy: the source network's ACL, and for a flow between two local VMs also
  the other network's ACL ("out" policy);
* security groups: the sending port's egress rules, and for a flow to a local VM that
  port's ingress rules ("out" SG); a port without any SG rule passes, one with rules
  denies what they do not allow. The reverse flow copies the forward flow's SG result
  (SGs are reflexive); a TCP flow whose first packet had ACK set (a stream picked up
  half-way) passes if either direction's SG allows it.

Any deny makes the flow DROP with the drop reason of the first list that denied, in
the real agent's order: POLICY, OUT_POLICY, SG, OUT_SG, REVERSE_SG, REVERSE_OUT_SG.

The configuration (what the controller would send) comes from the agent's REST API:
:func:`security_group_from_json`, :func:`network_policy_from_json` validate it strictly.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "ACTION_DENY",
    "ACTION_IMPLICIT_DENY",
    "ACTION_MIRROR",
    "ACTION_PASS",
    "ANALYZER_PORT",
    "Ace",
    "Analyzer",
    "FlowHeader",
    "FlowSides",
    "NetworkPolicy",
    "PolicyConfig",
    "PolicyValidationError",
    "SecurityGroup",
    "SgRule",
    "Verdict",
    "decide",
    "match_acl",
    "mirrors_of",
    "network_policy_from_json",
    "security_group_from_json",
    "security_groups_from_json",
]

# TrafficAction bit numbers (tungstenfabric/tf-controller:src/vnsw/agent/filter/traffic_action.h)
ACTION_PASS: Final = 1 << 5
ACTION_DENY: Final = 1 << 3
ACTION_MIRROR: Final = 1 << 7
ACTION_TRAP: Final = 1 << 28
ACTION_IMPLICIT_DENY: Final = 1 << 29
_DROP_BITS: Final = ACTION_DENY | ACTION_IMPLICIT_DENY

# VR_FLOW_DR_* the agent writes for a denied flow
DR_UNKNOWN: Final = 0x00
DR_POLICY: Final = 0x15
DR_OUT_POLICY: Final = 0x16
DR_SG: Final = 0x17
DR_OUT_SG: Final = 0x18
DR_REVERSE_SG: Final = 0x19
DR_REVERSE_OUT_SG: Final = 0x1A

#: bounds of what the REST API stores (each list is matched per flow setup)
MAX_RULES: Final = 1024
MAX_SECURITY_GROUPS: Final = 1024
MAX_NETWORK_POLICIES: Final = 1024
MAX_GROUPS_PER_PORT: Final = 32
MAX_NETWORKS_PER_POLICY: Final = 256
#: distinct analyzers the policies may mirror to (each takes a datapath mirror entry)
MAX_ANALYZERS: Final = 32
#: the analyzer's UDP port when a rule names none (the controller's default)
ANALYZER_PORT: Final = 8099
NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_UUID_RE: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

_PROTOCOLS: Final = {"any": None, "icmp": 1, "tcp": 6, "udp": 17}
_UDP: Final = 17
_ICMP: Final = 1
_DNS_PORT: Final = 53


def should_drop(action: int) -> bool:
    return bool(action & _DROP_BITS)


class PolicyValidationError(ValueError):
    """A policy or security-group body that cannot be stored; ``problems`` names each fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One side of an ACE: any, an IPv4 prefix (``net``/``mask`` ints) or a network uuid."""

    net: int = 0
    mask: int = 0
    network: str | None = None

    def matches(self, addr: int, vn: str | None) -> bool:
        if self.network is not None:
            return vn == self.network
        return addr & self.mask == self.net

    def to_json(self) -> str:
        if self.network is not None:
            return self.network
        if self.mask == 0:
            return "any"
        plen = bin(self.mask).count("1")
        return f"{ipaddress.IPv4Address(self.net)}/{plen}"


ANY: Final = Endpoint()
FULL_RANGE: Final = (0, 65535)


@dataclass(frozen=True)
class Analyzer:
    """Where a mirror rule sends copies (the real policy entry's ``mirror_to``): copies go
    in UDP to ``ip``:``port``; without an address the MIRROR bit is matched and shown
    but no copy is sent (a bare ``"mirror": name``)."""

    name: str
    ip: str | None = None
    port: int = ANALYZER_PORT

    def to_json(self) -> dict[str, Any]:
        return {"analyzer-name": self.name, "analyzer-ip-address": self.ip,
                "udp-port": self.port}


@dataclass(frozen=True)
class Ace:
    """One ACL entry: what it matches and the action bits it adds."""

    action: int
    src: Endpoint = ANY
    dst: Endpoint = ANY
    protocol: int | None = None
    sports: tuple[int, int] = FULL_RANGE
    dports: tuple[int, int] = FULL_RANGE
    terminal: bool = False
    mirror: Analyzer | None = None

    def matches(self, h: FlowHeader) -> bool:
        if self.protocol is not None and h.proto != self.protocol:
            return False
        if not (self.sports[0] <= h.sport <= self.sports[1]
                and self.dports[0] <= h.dport <= self.dports[1]):
            return False
        return self.src.matches(h.sip, h.src_vn) and self.dst.matches(h.dip, h.dst_vn)


@dataclass(frozen=True)
class FlowHeader:
    """What ACEs look at: addresses as ints, host-order ports, the two networks."""

    sip: int
    dip: int
    proto: int
    sport: int
    dport: int
    src_vn: str | None = None
    dst_vn: str | None = None

    def reversed(self) -> FlowHeader:
        swap = self.proto != _ICMP  # an ICMP flow keeps its id as the source port
        return FlowHeader(self.dip, self.sip, self.proto,
                          self.dport if swap else self.sport, self.sport if swap else self.dport,
                          self.dst_vn, self.src_vn)


def match_acl(h: FlowHeader, acls: Sequence[Sequence[Ace]], *, implicit_allow: bool = True,
              gateway: frozenset[int] = frozenset()) -> int:
    """The summed action of ``acls`` for ``h``, as the real ``MatchAcl``.

    ``acls`` is the list of ACLs (each a list of entries); ``gateway`` the addresses
    whose ICMP and DNS always pass. Within each ACL the matching entries' bits are ORed
    until a terminal one matches; nothing matched in any ACL denies (IMPLICIT_DENY).
    """
    if not acls and implicit_allow:
        return ACTION_PASS
    if gateway and (h.sip in gateway or h.dip in gateway) and (
            h.proto == _ICMP or (h.proto == _UDP and _DNS_PORT in (h.sport, h.dport))):
        return ACTION_PASS
    action = 0
    for acl in acls:
        for ace in acl:
            if ace.matches(h):
                action |= ace.action
                if ace.terminal:
                    break
    if action == 0:
        return ACTION_DENY | ACTION_IMPLICIT_DENY
    return action


@dataclass(frozen=True)
class SgRule:
    """One security-group rule as the user wrote it (direction is the VM's view)."""

    direction: str  # "ingress": to the VM; "egress": from the VM
    ethertype: str = "IPv4"
    protocol: int | None = None
    remote: Endpoint = ANY
    ports: tuple[int, int] = FULL_RANGE

    def ace(self) -> Ace | None:
        """The ACE this rule becomes in its direction's ACL (None for IPv6: vrtwist sets
        up IPv4 flows only). The port range is the destination port's: the VM's own
        port for ingress, the remote one for egress."""
        if self.ethertype != "IPv4":
            return None
        if self.direction == "ingress":
            return Ace(ACTION_PASS, src=self.remote, protocol=self.protocol, dports=self.ports)
        return Ace(ACTION_PASS, dst=self.remote, protocol=self.protocol, dports=self.ports)

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "ethertype": self.ethertype,
                "protocol": _protocol_name(self.protocol), "remote": self.remote.to_json(),
                "ports": _range_json(self.ports)}


@dataclass(frozen=True)
class SecurityGroup:
    uuid: str
    name: str
    rules: tuple[SgRule, ...]
    ingress: tuple[Ace, ...] = field(default=(), compare=False)
    egress: tuple[Ace, ...] = field(default=(), compare=False)

    @classmethod
    def build(cls, uuid: str, name: str, rules: Iterable[SgRule]) -> SecurityGroup:
        rules = tuple(rules)
        aces = {"ingress": [], "egress": []}  # type: dict[str, list[Ace]]
        for r in rules:
            ace = r.ace()
            if ace is not None:
                aces[r.direction].append(ace)
        return cls(uuid, name, rules, tuple(aces["ingress"]), tuple(aces["egress"]))

    def to_json(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "name": self.name, "rules": [r.to_json() for r in self.rules]}


@dataclass(frozen=True)
class PolicyRule:
    """One network-policy rule; ``<>`` rules match both ways (two ACEs)."""

    action: str
    direction: str
    protocol: int | None
    src: Endpoint
    dst: Endpoint
    sports: tuple[int, int]
    dports: tuple[int, int]
    terminal: bool = False
    mirror: Analyzer | None = None

    def aces(self) -> list[Ace]:
        bits = ACTION_PASS if self.action == "pass" else ACTION_DENY
        if self.mirror is not None:
            bits |= ACTION_MIRROR
        out = [Ace(bits, self.src, self.dst, self.protocol, self.sports, self.dports,
                   self.terminal, self.mirror)]
        if self.direction == "<>":
            out.append(Ace(bits, self.dst, self.src, self.protocol, self.dports, self.sports,
                           self.terminal, self.mirror))
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": self.action, "direction": self.direction,
            "protocol": _protocol_name(self.protocol), "ethertype": "IPv4",
            "src": self.src.to_json(), "dst": self.dst.to_json(),
            "src-ports": _range_json(self.sports), "dst-ports": _range_json(self.dports),
            "terminal": self.terminal,
        }
        if self.mirror is not None and self.mirror.ip is None:
            out["mirror"] = self.mirror.name
        elif self.mirror is not None:
            out["mirror-to"] = self.mirror.to_json()
        return out


@dataclass(frozen=True)
class NetworkPolicy:
    name: str
    networks: tuple[str, ...]
    rules: tuple[PolicyRule, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "networks": list(self.networks),
                "rules": [r.to_json() for r in self.rules]}


@dataclass
class PolicyConfig:
    """Security groups, network policies and the ports' SG lists; derived ACLs cached.

    ``listeners`` are told the ports and networks whose flows a change may affect
    (``None``: every flow), so flows can be re-evaluated.
    """

    groups: dict[str, SecurityGroup] = field(default_factory=dict)
    policies: dict[str, NetworkPolicy] = field(default_factory=dict)
    port_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    listeners: list[Callable[[], None]] = field(default_factory=list)
    _vn_acls: dict[str, tuple[Ace, ...]] | None = None
    #: port -> (rules present, ingress ACLs, egress ACLs), built on first use
    _port_acls: dict[str, tuple[bool, list[tuple[Ace, ...]], list[tuple[Ace, ...]]]] = field(
        default_factory=dict)

    @property
    def active(self) -> bool:
        """Whether anything is configured (the flow hot path skips policy when not)."""
        return bool(self.policies or self.port_groups)

    def _changed(self) -> None:
        self._vn_acls = None
        self._port_acls.clear()
        for listener in list(self.listeners):
            listener()

    # changes ----------------------------------------------------------------------------

    def set_group(self, group: SecurityGroup) -> None:
        if group.uuid not in self.groups and len(self.groups) >= MAX_SECURITY_GROUPS:
            raise PolicyValidationError([f"security-groups: at most {MAX_SECURITY_GROUPS}"])
        self.groups[group.uuid] = group
        self._changed()

    def delete_group(self, uuid: str) -> bool:
        """Remove a group; refused (ValueError) while a port uses it."""
        users = sorted(p for p, gs in self.port_groups.items() if uuid in gs)
        if users:
            raise ValueError(f"security group {uuid} is used by port(s) {', '.join(users)}")
        found = self.groups.pop(uuid, None) is not None
        if found:
            self._changed()
        return found

    def set_port_groups(self, port: str, groups: Sequence[str]) -> None:
        missing = [g for g in groups if g not in self.groups]
        if missing:
            raise PolicyValidationError([f"security-groups: unknown group {g}" for g in missing])
        if groups:
            self.port_groups[port] = tuple(groups)
        else:
            self.port_groups.pop(port, None)
        self._changed()

    def set_policy(self, policy: NetworkPolicy) -> None:
        if policy.name not in self.policies and len(self.policies) >= MAX_NETWORK_POLICIES:
            raise PolicyValidationError([f"network-policies: at most {MAX_NETWORK_POLICIES}"])
        others = [p for name, p in self.policies.items() if name != policy.name]
        _analyzers([*others, policy])  # one address per name, at most MAX_ANALYZERS
        self.policies[policy.name] = policy
        self._changed()

    def delete_policy(self, name: str) -> bool:
        found = self.policies.pop(name, None) is not None
        if found:
            self._changed()
        return found

    # derived ----------------------------------------------------------------------------

    def vn_acl(self, vn: str | None) -> tuple[Ace, ...]:
        """The network's ACL: the rules of the policies attached to it, by policy name,
        then what the config node adds when a policy is attached (the network to itself
        passes, then anything else passes); empty when no policy is attached."""
        if vn is None:
            return ()
        if self._vn_acls is None:
            acls: dict[str, list[Ace]] = {}
            for name in sorted(self.policies):
                p = self.policies[name]
                for net in p.networks:
                    acls.setdefault(net, []).extend(a for r in p.rules for a in r.aces())
            self._vn_acls = {net: (*aces, Ace(ACTION_PASS, Endpoint(network=net),
                                              Endpoint(network=net)), Ace(ACTION_PASS))
                             for net, aces in acls.items()}
        return self._vn_acls.get(vn, ())

    def sg_acls(self, port: str | None, direction: str) -> tuple[bool, list[tuple[Ace, ...]]]:
        """(rules present, the port's ACLs for ``direction``) of a local port."""
        if port is None:
            return False, []
        cached = self._port_acls.get(port)
        if cached is None:
            groups = [self.groups[g] for g in self.port_groups.get(port, ()) if g in self.groups]
            cached = (any(g.rules for g in groups), [g.ingress for g in groups],
                      [g.egress for g in groups])
            self._port_acls[port] = cached
        return cached[0], cached[1] if direction == "ingress" else cached[2]

    def networks(self) -> set[str]:
        return {n for p in self.policies.values() for n in p.networks}

    def analyzers(self) -> dict[str, Analyzer]:
        """The analyzers with an address the policies mirror to, by name."""
        return _analyzers(self.policies.values())

    # persistence ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "security-groups": [g.to_json() for g in self.groups.values()],
            "network-policies": [p.to_json() for p in self.policies.values()],
            "port-security-groups": {p: list(g) for p, g in self.port_groups.items()},
        }

    def load_json(self, body: Any) -> None:
        """Replace everything with a saved configuration (validated as REST input)."""
        if not isinstance(body, dict):
            raise PolicyValidationError(["policy file: not an object"])
        kinds = (("security-groups", list), ("network-policies", list),
                 ("port-security-groups", dict))
        for key, kind in kinds:
            if not isinstance(body.get(key, kind()), kind):
                raise PolicyValidationError([f"{key}: expected a JSON {kind.__name__}"])
        groups = {}
        for i, g in enumerate(body.get("security-groups", [])):
            uuid = g.get("uuid") if isinstance(g, dict) else None
            sg = security_group_from_json(_uuid_field(uuid, f"[{i}].uuid"), g)
            groups[sg.uuid] = sg
        policies = {}
        for p in body.get("network-policies", []):
            name = p.get("name") if isinstance(p, dict) else None
            np = network_policy_from_json(str(name), p)
            policies[np.name] = np
        ports = {}
        for port, gs in body.get("port-security-groups", {}).items():
            ports[_uuid_field(port, "port")] = tuple(security_groups_from_json(gs))
        unknown = sorted({g for gs in ports.values() for g in gs} - set(groups))
        if unknown:
            raise PolicyValidationError([f"port-security-groups: unknown group {g}"
                                         for g in unknown])
        _analyzers(policies.values())
        self.groups, self.policies, self.port_groups = groups, policies, ports
        self._changed()


def _analyzers(policies: Iterable[NetworkPolicy]) -> dict[str, Analyzer]:
    """The analyzers (with an address) of ``policies`` by name; refused when one name has
    two addresses or there are more than MAX_ANALYZERS."""
    out: dict[str, Analyzer] = {}
    for p in policies:
        for r in p.rules:
            a = r.mirror
            if a is None or a.ip is None:
                continue
            seen = out.setdefault(a.name, a)
            if seen != a:
                raise PolicyValidationError([f"mirror-to: analyzer {a.name!r} is given as "
                                             f"{seen.ip}:{seen.port} and {a.ip}:{a.port}"])
    if len(out) > MAX_ANALYZERS:
        raise PolicyValidationError([f"mirror-to: at most {MAX_ANALYZERS} analyzers"])
    return out


def mirrors_of(h: FlowHeader, acl: Sequence[Ace]) -> list[Analyzer]:
    """The analyzers of the mirror entries of ``acl`` that ``h`` matches (the walk stops
    at a matching terminal entry, as in :func:`match_acl`), in ACL order; what the real
    agent collects into a flow's ``mirror_l``."""
    out: list[Analyzer] = []
    for ace in acl:
        if ace.matches(h):
            if ace.mirror is not None and ace.mirror not in out:
                out.append(ace.mirror)
            if ace.terminal:
                break
    return out


# flow decision --------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowSides:
    """Who a flow is between: the local ports at either end (uuid, or None for a remote
    or non-VM end), each port's gateway/DNS addresses, and the flow's two networks."""

    src_port: str | None
    dst_port: str | None
    src_vn: str | None
    dst_vn: str | None
    gateway: frozenset[int] = frozenset()
    tcp_ack: bool = False


@dataclass(frozen=True)
class Verdict:
    """Forward and reverse actions (TrafficAction bits) and drop reasons."""

    forward: int
    forward_reason: int
    reverse: int
    reverse_reason: int
    #: analyzers each direction's network policy mirrors to (ACTION_MIRROR set)
    forward_mirrors: tuple[Analyzer, ...] = ()
    reverse_mirrors: tuple[Analyzer, ...] = ()

    @property
    def forward_drops(self) -> bool:
        return should_drop(self.forward)

    @property
    def reverse_drops(self) -> bool:
        return should_drop(self.reverse)


def _sg(cfg: PolicyConfig, h: FlowHeader, port: str | None, direction: str,
        gw: frozenset[int]) -> int:
    present, acls = cfg.sg_acls(port, direction)
    if not present:
        return ACTION_PASS
    return match_acl(h, acls, implicit_allow=False, gateway=gw)


def _policy(cfg: PolicyConfig, h: FlowHeader, s: FlowSides, reverse: bool) -> tuple[int, int]:
    """(policy, out policy) actions: the sending side's network, and for two local VMs
    the receiving side's as well."""
    own, other = (s.dst_vn, s.src_vn) if reverse else (s.src_vn, s.dst_vn)
    acl = cfg.vn_acl(own)
    pol = match_acl(h, [acl] if acl else [], gateway=s.gateway)
    if should_drop(pol) or s.src_port is None or s.dst_port is None:
        return pol, 0
    out_acl = cfg.vn_acl(other)
    return pol, match_acl(h, [out_acl] if out_acl else [], gateway=s.gateway)


def _sg_summary(cfg: PolicyConfig, h: FlowHeader, s: FlowSides) -> tuple[int, tuple[int, ...]]:
    """The forward flow's SG summary and the four SG actions (sg, out, reverse, rev out)."""
    gw = s.gateway
    sg = _sg(cfg, h, s.src_port, "egress", gw)
    out = 0
    if not should_drop(sg) and s.dst_port is not None:
        out = _sg(cfg, h, s.dst_port, "ingress", gw)
    rsg = rout = 0
    if should_drop(sg | out) or s.tcp_ack:
        r = h.reversed()
        rsg = _sg(cfg, r, s.dst_port, "egress", gw)
        if not should_drop(rsg) and s.src_port is not None:
            rout = _sg(cfg, r, s.src_port, "ingress", gw)
    if not s.tcp_ack:
        return sg | out | rsg | rout, (sg, out, rsg, rout)
    if should_drop(sg | out) and should_drop(rsg | rout):
        return ACTION_DENY, (sg, out, rsg, rout)
    return ACTION_PASS, (sg, out, rsg, rout)


def _drop_reason(lists: Sequence[int], reasons: Sequence[int]) -> int:
    for action, reason in zip(lists, reasons, strict=True):
        if should_drop(action):
            return reason
    return DR_UNKNOWN


_REASONS: Final = (DR_POLICY, DR_OUT_POLICY, DR_SG, DR_OUT_SG, DR_REVERSE_SG, DR_REVERSE_OUT_SG)


def decide(cfg: PolicyConfig, h: FlowHeader, s: FlowSides) -> Verdict:
    """The actions of a new flow pair (``h`` is the forward flow's header).

    As the real agent's ``DoPolicy``: network policy first (a deny there skips SGs), SGs
    for the forward flow, their summary copied to the reverse flow. Where the TCP-ACK
    rule lets the flow pass despite a deny in one direction, that deny is not a reason.
    """
    pol, out_pol = _policy(cfg, h, s, False)
    sg_sum, sgs = (0, (0, 0, 0, 0)) if should_drop(pol | out_pol) else _sg_summary(cfg, h, s)
    fwd = pol | out_pol | sg_sum
    reason = DR_UNKNOWN
    if should_drop(fwd):
        fwd = (fwd & ~(_DROP_BITS | ACTION_PASS)) | ACTION_DENY
        reason = _drop_reason((pol, out_pol, *sgs), _REASONS)
    rpol, rout_pol = _policy(cfg, h.reversed(), s, True)
    rev = rpol | rout_pol | sg_sum
    rreason = DR_UNKNOWN
    if should_drop(rev):
        rev = (rev & ~(_DROP_BITS | ACTION_PASS)) | ACTION_DENY
        rreason = _drop_reason((rpol, rout_pol), _REASONS[:2])
    fm = _mirrors(cfg, h, s, False) if (pol | out_pol) & ACTION_MIRROR else ()
    rm = _mirrors(cfg, h.reversed(), s, True) if (rpol | rout_pol) & ACTION_MIRROR else ()
    return Verdict(fwd, reason, rev, rreason, fm, rm)


def _mirrors(cfg: PolicyConfig, h: FlowHeader, s: FlowSides,
             reverse: bool) -> tuple[Analyzer, ...]:
    """The analyzers of one direction: its network's ACL, then (two local VMs) the other
    network's, as the real agent's policy and out-policy mirror lists."""
    own, other = (s.dst_vn, s.src_vn) if reverse else (s.src_vn, s.dst_vn)
    found = mirrors_of(h, cfg.vn_acl(own))
    if s.src_port is not None and s.dst_port is not None:
        found += [a for a in mirrors_of(h, cfg.vn_acl(other)) if a not in found]
    return tuple(found)


# JSON -----------------------------------------------------------------------------------


def _protocol_name(proto: int | None) -> str | int:
    for name, value in _PROTOCOLS.items():
        if value == proto:
            return name
    return proto if proto is not None else "any"


def _range_json(r: tuple[int, int]) -> str | list[int]:
    return "any" if r == FULL_RANGE else [r[0], r[1]]


def _uuid_field(value: Any, what: str) -> str:
    if isinstance(value, str) and _UUID_RE.match(value.strip().lower()):
        return value.strip().lower()
    raise PolicyValidationError([f"{what}: {value!r} is not a uuid"])


def _protocol(value: Any, what: str) -> int | None:
    if isinstance(value, str) and value.lower() in _PROTOCOLS:
        return _PROTOCOLS[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    raise PolicyValidationError([f"{what}: {value!r} is not any/icmp/tcp/udp or 0-255"])


def _ports(value: Any, what: str) -> tuple[int, int]:
    if value == "any":
        return FULL_RANGE
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535
                  for v in value) and value[0] <= value[1])
    if not ok:
        raise PolicyValidationError([f"{what}: {value!r} is not \"any\" or [first, last] "
                                     "with 0 <= first <= last <= 65535"])
    return value[0], value[1]


def _endpoint(value: Any, what: str, networks: bool) -> Endpoint:
    if value == "any":
        return ANY
    if isinstance(value, str):
        if networks and _UUID_RE.match(value.lower()):
            return Endpoint(network=value.lower())
        try:
            net = ipaddress.IPv4Network(value, strict=True)
        except ValueError:
            pass
        else:
            return Endpoint(int(net.network_address), int(net.netmask))
    kinds = "\"any\", an IPv4 prefix (a.b.c.d/n) or a network uuid" if networks else \
        "\"any\" or an IPv4 prefix (a.b.c.d/n)"
    raise PolicyValidationError([f"{what}: {value!r} is not {kinds}"])


def _check_keys(body: Any, what: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise PolicyValidationError([f"{what}: expected an object"])
    problems = [f"{what}.{k}: unknown member" for k in sorted(set(body) - allowed)]
    problems += [f"{what}.{k}: missing" for k in sorted(required - set(body))]
    if problems:
        raise PolicyValidationError(problems)
    return body


def _rule_list(body: dict[str, Any], what: str) -> list[Any]:
    rules = body.get("rules", [])
    if not isinstance(rules, list):
        raise PolicyValidationError([f"{what}.rules: expected an array"])
    if len(rules) > MAX_RULES:
        raise PolicyValidationError([f"{what}.rules: {len(rules)} rules, at most {MAX_RULES}"])
    return rules


def _collect(items: list[Any], what: str, parse: Callable[[Any, str], Any]) -> list[Any]:
    out, problems = [], []
    for i, item in enumerate(items):
        try:
            out.append(parse(item, f"{what}[{i}]"))
        except PolicyValidationError as e:
            problems.extend(e.problems)
    if problems:
        raise PolicyValidationError(problems)
    return out


_SG_RULE_KEYS: Final = {"direction", "ethertype", "protocol", "remote", "ports"}


def _sg_rule(body: Any, what: str) -> SgRule:
    b = _check_keys(body, what, _SG_RULE_KEYS, {"direction"})
    direction = b["direction"]
    if direction not in ("ingress", "egress"):
        raise PolicyValidationError([f"{what}.direction: {direction!r} is not ingress/egress"])
    ethertype = b.get("ethertype", "IPv4")
    if ethertype not in ("IPv4", "IPv6"):
        raise PolicyValidationError([f"{what}.ethertype: {ethertype!r} is not IPv4/IPv6"])
    remote = b.get("remote", "any")
    endpoint = ANY if ethertype == "IPv6" and remote == "any" else \
        _endpoint(remote, f"{what}.remote", False)
    return SgRule(direction, ethertype, _protocol(b.get("protocol", "any"), f"{what}.protocol"),
                  endpoint, _ports(b.get("ports", "any"), f"{what}.ports"))


def security_group_from_json(uuid: str, body: Any) -> SecurityGroup:
    """A security group from ``{"name": ..., "rules": [...]}`` (``uuid`` from the path)."""
    b = _check_keys(body, "body", {"uuid", "name", "rules"}, set())
    if "uuid" in b and _uuid_field(b["uuid"], "uuid") != uuid:
        raise PolicyValidationError([f"uuid: {b['uuid']!r} differs from the path's {uuid}"])
    name = b.get("name", uuid)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise PolicyValidationError([f"name: {name!r} is not 1-128 of A-Z a-z 0-9 . _ : -"])
    rules = _collect(_rule_list(b, "body"), "rules", _sg_rule)
    return SecurityGroup.build(uuid, name, rules)


def security_groups_from_json(body: Any) -> list[str]:
    """A port's SG list: an array of uuids, or ``{"security-groups": [...]}``."""
    if isinstance(body, dict):
        body = _check_keys(body, "body", {"security-groups"}, {"security-groups"})
        body = body["security-groups"]
    if not isinstance(body, list):
        raise PolicyValidationError(["security-groups: expected an array of uuids"])
    if len(body) > MAX_GROUPS_PER_PORT:
        raise PolicyValidationError([f"security-groups: at most {MAX_GROUPS_PER_PORT} per port"])
    out = _collect(body, "security-groups", _uuid_field)
    if len(set(out)) != len(out):
        raise PolicyValidationError(["security-groups: a group is listed twice"])
    return out


_RULE_KEYS: Final = {"action", "direction", "protocol", "ethertype", "src", "dst", "src-ports",
                     "dst-ports", "terminal", "mirror", "mirror-to"}
_MIRROR_KEYS: Final = {"analyzer-name", "analyzer-ip-address", "udp-port"}


def _mirror_to(body: Any, what: str) -> Analyzer:
    """``mirror-to``: ``{"analyzer-name", "analyzer-ip-address", "udp-port"}``."""
    b = _check_keys(body, what, _MIRROR_KEYS, {"analyzer-name", "analyzer-ip-address"})
    name, ip, port = b["analyzer-name"], b["analyzer-ip-address"], b.get("udp-port", ANALYZER_PORT)
    problems = []
    if not (isinstance(name, str) and NAME_RE.match(name)):
        problems.append(f"{what}.analyzer-name: {name!r} is not 1-128 of A-Z a-z 0-9 . _ : -")
    try:
        addr = ipaddress.IPv4Address(ip) if isinstance(ip, str) else None
    except ValueError:
        addr = None
    if addr is None or addr.is_unspecified or addr.is_multicast or addr.is_loopback \
            or addr == ipaddress.IPv4Address("255.255.255.255"):
        problems.append(f"{what}.analyzer-ip-address: {ip!r} is not a unicast IPv4 address")
    if not (isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535):
        problems.append(f"{what}.udp-port: {port!r} is not 1-65535")
    if problems:
        raise PolicyValidationError(problems)
    return Analyzer(name, str(addr), port)


def _policy_rule(body: Any, what: str) -> PolicyRule:
    b = _check_keys(body, what, _RULE_KEYS, {"action"})
    action, direction = b["action"], b.get("direction", ">")
    problems = []
    if action not in ("pass", "deny"):
        problems.append(f"{what}.action: {action!r} is not pass/deny")
    if direction not in (">", "<>"):
        problems.append(f"{what}.direction: {direction!r} is not \">\" or \"<>\"")
    if b.get("ethertype", "IPv4") != "IPv4":
        problems.append(f"{what}.ethertype: only IPv4")
    terminal, mirror = b.get("terminal", False), b.get("mirror")
    if not isinstance(terminal, bool):
        problems.append(f"{what}.terminal: expected true/false")
    analyzer = None
    if mirror is not None and "mirror-to" in b:
        problems.append(f"{what}: mirror and mirror-to are exclusive")
    elif mirror is not None and not (isinstance(mirror, str) and NAME_RE.match(mirror)):
        problems.append(f"{what}.mirror: {mirror!r} is not an analyzer name")
    elif mirror is not None:
        analyzer = Analyzer(mirror)
    elif "mirror-to" in b:
        try:
            analyzer = _mirror_to(b["mirror-to"], f"{what}.mirror-to")
        except PolicyValidationError as e:
            problems += e.problems
    if problems:
        raise PolicyValidationError(problems)
    return PolicyRule(
        action, direction, _protocol(b.get("protocol", "any"), f"{what}.protocol"),
        _endpoint(b.get("src", "any"), f"{what}.src", True),
        _endpoint(b.get("dst", "any"), f"{what}.dst", True),
        _ports(b.get("src-ports", "any"), f"{what}.src-ports"),
        _ports(b.get("dst-ports", "any"), f"{what}.dst-ports"), terminal, analyzer)


def network_policy_from_json(name: str, body: Any) -> NetworkPolicy:
    """A network policy from ``{"networks": [vn uuids], "rules": [...]}``."""
    if not NAME_RE.match(name):
        raise PolicyValidationError([f"name: {name!r} is not 1-128 of A-Z a-z 0-9 . _ : -"])
    b = _check_keys(body, "body", {"name", "networks", "rules"}, {"networks"})
    if "name" in b and b["name"] != name:
        raise PolicyValidationError([f"name: {b['name']!r} differs from the path's {name!r}"])
    nets = b["networks"]
    if not isinstance(nets, list) or len(nets) > MAX_NETWORKS_PER_POLICY:
        raise PolicyValidationError([f"networks: expected an array of at most "
                                     f"{MAX_NETWORKS_PER_POLICY} network uuids"])
    problems: list[str] = []
    networks: list[str] = []
    rules: list[PolicyRule] = []
    try:
        networks = _collect(nets, "networks", _uuid_field)
    except PolicyValidationError as e:
        problems += e.problems
    try:
        rules = _collect(_rule_list(b, "body"), "rules", _policy_rule)
    except PolicyValidationError as e:
        problems += e.problems
    if problems:
        raise PolicyValidationError(problems)
    policy = NetworkPolicy(name, tuple(dict.fromkeys(networks)), tuple(rules))
    _analyzers([policy])
    return policy


def gateway_set(addresses: Iterable[str | None]) -> frozenset[int]:
    return frozenset(int(ipaddress.IPv4Address(a)) for a in addresses if a and a != "0.0.0.0")


def header_of(sip: bytes, dip: bytes, proto: int, sport: int, dport: int,
              vn: str | None) -> FlowHeader:
    return FlowHeader(int.from_bytes(sip, "big"), int.from_bytes(dip, "big"), proto, sport,
                      dport, vn, vn)

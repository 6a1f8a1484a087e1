"""Per-network settings: the IPAM's DNS method and servers, a virtual DNS, the VNI.

In the real system these come from the controller's config: the network's IPAM
(``network_ipam_mgmt``: ``ipam_dns_method``, ``ipam_dns_server`` with the tenant server
list or the virtual DNS's name), the virtual DNS and its records (``virtual_DNS_data``,
``virtual_DNS_record_data``) and the network's ``vxlan_network_identifier``
(``tungstenfabric/tf-controller:src/vnsw/agent/oper/vn.cc``). vrtwist takes them over
REST (``PUT /network/<vn-uuid>``, kept in ``<state-dir>/networks.json``) and from the
control node's config channel when it sends them; REST wins field by field, and what
neither gives is the agent's default (``--dns-method``, the VNI derived from the
network's name). State only, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from vrtwist.agent.model import normalise_uuid
from vrtwist.agent.packet.dns import (
    DEFAULT_TTL,
    DNS_METHODS,
    RECORD_TYPES,
    DnsRecord,
    DnsSettings,
)

__all__ = [
    "MAX_NETWORKS",
    "NetworkConfig",
    "NetworkSettings",
    "NetworkValidationError",
    "VirtualDns",
    "dns_settings",
    "merge_settings",
    "network_from_json",
    "settings_from_config",
]

MAX_NETWORKS: Final = 4096
MAX_SERVERS: Final = 8
MAX_RECORDS: Final = 1024
#: the schema's range of ``vxlan_network_identifier`` (24 bits, 0 excluded)
VNI_MIN, VNI_MAX = 1, (1 << 24) - 1
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


class NetworkValidationError(ValueError):
    """A network body that cannot be accepted; ``problems`` names each bad field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class VirtualDns:
    """A virtual DNS server: its domain, the servers other names go to, its records."""

    domain: str
    next_servers: tuple[str, ...] = ()
    ttl: int = DEFAULT_TTL
    records: tuple[DnsRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"domain-name": self.domain, "next-dns-servers": list(self.next_servers),
                "default-ttl": self.ttl,
                "records": [{"name": r.name, "type": r.type, "data": r.data,
                             **({"ttl": r.ttl} if r.ttl is not None else {})}
                            for r in self.records]}


@dataclass(frozen=True)
class NetworkSettings:
    """One network's settings; None (or empty) means "not set here"."""

    vn_id: str
    dns_method: str | None = None
    tenant_dns: tuple[str, ...] = ()
    virtual_dns: VirtualDns | None = None
    vni: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``PUT /network/<uuid>`` form (also the file's)."""
        out: dict[str, Any] = {"vn-id": self.vn_id}
        if self.dns_method is not None:
            out["ipam-dns-method"] = self.dns_method
        if self.tenant_dns:
            out["tenant-dns-servers"] = list(self.tenant_dns)
        if self.virtual_dns is not None:
            out["virtual-dns"] = self.virtual_dns.to_json()
        if self.vni is not None:
            out["vxlan-network-identifier"] = self.vni
        return out


def merge_settings(rest: NetworkSettings | None, config: NetworkSettings | None,
                   vn_id: str) -> NetworkSettings:
    """REST's fields where it sets them, else the controller's."""
    if rest is None:
        return config if config is not None else NetworkSettings(vn_id)
    if config is None:
        return rest
    return NetworkSettings(
        vn_id, rest.dns_method or config.dns_method, rest.tenant_dns or config.tenant_dns,
        rest.virtual_dns or config.virtual_dns,
        rest.vni if rest.vni is not None else config.vni)


def dns_settings(settings: NetworkSettings | None, default_method: str) -> DnsSettings:
    """What the DNS proxy and DHCP need of a network: its method (``default_method`` when
    it sets none), the servers its queries are forwarded to (port 53) and, for a virtual
    DNS, its domain, records and TTL."""
    if settings is None:
        return DnsSettings(default_method)
    method = settings.dns_method or default_method
    vdns = settings.virtual_dns
    if method == "tenant-dns-server":
        return DnsSettings(method, tuple((a, 53) for a in settings.tenant_dns))
    if method == "virtual-dns-server" and vdns is not None:
        return DnsSettings(method, tuple((a, 53) for a in vdns.next_servers), vdns.domain,
                           vdns.records, vdns.ttl)
    return DnsSettings(method)


def domain_name(value: str) -> str | None:
    """``value`` as a lowercase domain name without the final dot, or None if it is not
    one (at most 253 characters, labels of 1-63 letters, digits, ``-``, ``_``)."""
    name = value.strip().rstrip(".").lower()
    if not name or len(name) > 253:
        return None
    return name if all(_LABEL.match(label) for label in name.split(".")) else None


def _addresses(value: Any, where: str, problems: list[str], *,
               limit: int = MAX_SERVERS) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f"{where}: must be an array of IP addresses")
        return ()
    if len(value) > limit:
        problems.append(f"{where}: at most {limit} addresses, got {len(value)}")
        return ()
    out = []
    for i, item in enumerate(value):
        try:
            out.append(str(ipaddress.ip_address(item if isinstance(item, str) else "")))
        except ValueError:
            problems.append(f"{where}[{i}]: {item!r} is not an IP address")
    return tuple(out)


def _int(value: Any, where: str, problems: list[str], lo: int, hi: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{where}: must be an integer, got {type(value).__name__}")
        return None
    if not lo <= value <= hi:
        problems.append(f"{where}: {value} is out of range {lo}..{hi}")
        return None
    return value


def _record_data(data: Any, rtype: Any, where: str, problems: list[str]) -> str:
    """A record's data in its canonical form: an address (A, AAAA) or a name."""
    if not isinstance(data, str):
        problems.append(f"{where}: must be a string")
        return ""
    if rtype in ("A", "AAAA"):
        version = 4 if rtype == "A" else 6
        try:
            addr = ipaddress.ip_address(data)
        except ValueError:
            addr = None
        if addr is None or addr.version != version:
            problems.append(f"{where}: {data!r} is not an IPv{version} address")
            return ""
        return str(addr)
    target = domain_name(data)
    if target is None:
        problems.append(f"{where}: {data!r} is not a DNS name")
        return ""
    return target


def _record(item: Any, where: str, domain: str, problems: list[str]) -> DnsRecord | None:
    if not isinstance(item, dict):
        problems.append(f"{where}: must be an object")
        return None
    before = len(problems)
    rtype = item.get("type")
    if rtype not in RECORD_TYPES:
        problems.append(f"{where}.type: {rtype!r} is not one of {', '.join(RECORD_TYPES)}")
    raw_name = item.get("name")
    name = domain_name(raw_name) if isinstance(raw_name, str) else None
    if name is None:
        problems.append(f"{where}.name: {raw_name!r} is not a DNS name")
    elif isinstance(raw_name, str) and not raw_name.endswith(".") and \
            not name.endswith(".arpa") and not (name == domain or name.endswith("." + domain)):
        name = f"{name}.{domain}"  # relative to the zone, as in a zone file
    data = _record_data(item.get("data"), rtype, f"{where}.data", problems)
    ttl = _int(item.get("ttl"), f"{where}.ttl", problems, 0, 2**31 - 1)
    unknown = sorted(set(item) - {"name", "type", "data", "ttl"})
    if unknown:
        problems.append(f"{where}: unknown member(s) {', '.join(unknown)}")
    if len(problems) > before or name is None:
        return None
    return DnsRecord(name, str(rtype), str(data), ttl)


def _virtual_dns(value: Any, problems: list[str]) -> VirtualDns | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append("virtual-dns: must be an object")
        return None
    raw = value.get("domain-name")
    domain = domain_name(raw) if isinstance(raw, str) else None
    if domain is None:
        problems.append(f"virtual-dns.domain-name: {raw!r} is not a domain name")
        return None
    nexts = _addresses(value.get("next-dns-servers"), "virtual-dns.next-dns-servers", problems)
    ttl = _int(value.get("default-ttl"), "virtual-dns.default-ttl", problems, 0, 2**31 - 1)
    raw_records = value.get("records", [])
    records: list[DnsRecord] = []
    if not isinstance(raw_records, list):
        problems.append("virtual-dns.records: must be an array")
    elif len(raw_records) > MAX_RECORDS:
        problems.append(f"virtual-dns.records: at most {MAX_RECORDS}, got {len(raw_records)}")
    else:
        for i, item in enumerate(raw_records):
            rec = _record(item, f"virtual-dns.records[{i}]", domain, problems)
            if rec is not None:
                records.append(rec)
    unknown = sorted(set(value) - {"domain-name", "next-dns-servers", "default-ttl", "records"})
    if unknown:
        problems.append(f"virtual-dns: unknown member(s) {', '.join(unknown)}")
    return VirtualDns(domain, nexts, DEFAULT_TTL if ttl is None else ttl, tuple(records))


def network_from_json(vn_id: str, body: Any) -> NetworkSettings:
    """Validate a ``PUT /network/<vn-uuid>`` body; every bad field is named at once."""
    if not isinstance(body, dict):
        raise NetworkValidationError([f"network: expected a JSON object, got "
                                      f"{type(body).__name__}"])
    problems: list[str] = []
    method = body.get("ipam-dns-method")
    if method is not None and method not in DNS_METHODS:
        problems.append(f"ipam-dns-method: {method!r} is not one of {', '.join(DNS_METHODS)}")
        method = None
    tenant = _addresses(body.get("tenant-dns-servers"), "tenant-dns-servers", problems)
    vdns = _virtual_dns(body.get("virtual-dns"), problems)
    vni = _int(body.get("vxlan-network-identifier"), "vxlan-network-identifier", problems,
               VNI_MIN, VNI_MAX)
    if method == "tenant-dns-server" and "tenant-dns-servers" not in body:
        problems.append("tenant-dns-servers: required with ipam-dns-method tenant-dns-server")
    if method == "virtual-dns-server" and vdns is None and "virtual-dns" not in body:
        problems.append("virtual-dns: required with ipam-dns-method virtual-dns-server")
    if "vn-id" in body and str(body["vn-id"]).lower() != vn_id:
        problems.append(f"vn-id: {body['vn-id']!r} is not the uuid of the path ({vn_id})")
    unknown = sorted(set(body) - {"vn-id", "ipam-dns-method", "tenant-dns-servers",
                                  "virtual-dns", "vxlan-network-identifier"})
    if unknown:
        problems.append(f"network: unknown member(s) {', '.join(unknown)}")
    if problems:
        raise NetworkValidationError(problems)
    return NetworkSettings(vn_id, method, tenant, vdns, vni)


@dataclass
class NetworkConfig:
    """The networks' settings given over REST; ``listeners`` hear of every change."""

    networks: dict[str, NetworkSettings] = field(default_factory=dict)
    listeners: list[Callable[[], None]] = field(default_factory=list)

    def get(self, vn_id: str) -> NetworkSettings | None:
        return self.networks.get(vn_id)

    def set(self, settings: NetworkSettings) -> None:
        """Add or replace one network's settings (bounded: :data:`MAX_NETWORKS`)."""
        if settings.vn_id not in self.networks and len(self.networks) >= MAX_NETWORKS:
            raise NetworkValidationError([f"network: at most {MAX_NETWORKS} networks"])
        self.networks[settings.vn_id] = settings
        self._changed()

    def delete(self, vn_id: str) -> bool:
        found = self.networks.pop(vn_id, None) is not None
        if found:
            self._changed()
        return found

    def set_all(self, networks: dict[str, NetworkSettings]) -> None:
        """Replace every network's settings (undo of a change that was not persisted)."""
        self.networks = dict(networks)
        self._changed()

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()

    def to_json(self) -> dict[str, Any]:
        return {"networks": [n.to_json() for n in self.networks.values()]}

    def load_json(self, body: Any) -> None:
        """Replace everything with a saved ``to_json`` body (all or nothing)."""
        if not isinstance(body, dict) or not isinstance(body.get("networks"), list):
            raise NetworkValidationError(["networks: expected {\"networks\": [...]}"])
        loaded: dict[str, NetworkSettings] = {}
        problems: list[str] = []
        for i, item in enumerate(body["networks"][:MAX_NETWORKS + 1]):
            raw = item.get("vn-id") if isinstance(item, dict) else None
            vn = normalise_uuid(raw) if isinstance(raw, str) else None
            if vn is None:
                problems.append(f"networks[{i}].vn-id: {raw!r} is not a uuid")
                continue
            try:
                loaded[vn] = network_from_json(vn, item)
            except NetworkValidationError as e:
                problems += [f"networks[{i}].{p}" for p in e.problems]
        if len(loaded) > MAX_NETWORKS:
            problems.append(f"networks: at most {MAX_NETWORKS}")
        if problems:
            raise NetworkValidationError(problems)
        self.networks = loaded
        self._changed()


def _config_int(value: Any) -> Any:
    """IFMap sends numbers as text."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


def settings_from_config(vn_id: str, config: dict[str, Any]) -> tuple[NetworkSettings, list[str]]:
    """A network's settings from the controller's config (``ConfigStore.network_settings``):
    each unusable value is left out and named in the returned problems."""
    body: dict[str, Any] = {}
    if config.get("dns_method"):
        body["ipam-dns-method"] = config["dns_method"]
    if config.get("tenant_dns") or config.get("dns_method") == "tenant-dns-server":
        body["tenant-dns-servers"] = list(config.get("tenant_dns") or ())
    vdns = config.get("virtual_dns")
    if isinstance(vdns, dict):
        nxt = vdns.get("next")
        try:
            nexts = [str(ipaddress.ip_address(nxt))] if nxt else []
        except ValueError:
            nexts = []  # another virtual DNS by name: not followed here
        body["virtual-dns"] = {
            "domain-name": vdns.get("domain"), "next-dns-servers": nexts,
            **({"default-ttl": _config_int(vdns["ttl"])} if vdns.get("ttl") else {}),
            "records": [{k: _config_int(v) for k, v in r.items() if v not in (None, "")}
                        for r in vdns.get("records", []) if isinstance(r, dict)]}
    if config.get("vni") not in (None, "", 0, "0"):
        body["vxlan-network-identifier"] = _config_int(config["vni"])
    problems: list[str] = []
    for _ in range(len(body) + 1):
        try:
            return network_from_json(vn_id, body), problems
        except NetworkValidationError as e:
            problems += e.problems
            bad = {p.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0] for p in e.problems}
            if not bad & set(body):
                break
            for key in bad:
                body.pop(key, None)
            if "virtual-dns" in bad and body.get("ipam-dns-method") == "virtual-dns-server":
                body.pop("ipam-dns-method")
    return NetworkSettings(vn_id), problems

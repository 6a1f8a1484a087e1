"""The port record of the agent's REST API and port files, with strict validation.

The real agent (``port_ipc_handler.cc``) checks JSON types loosely: a malformed address
silently becomes 0.0.0.0 and a malformed uuid the nil uuid.  Here every field is checked
and a bad one names itself in :class:`PortValidationError`, so the REST layer can answer
400 with ``{"error": "<field>: <problem>"}``.  The JSON produced for files keeps the real
agent's field names so that files written by either side load in the other.
"""

from __future__ import annotations

import ipaddress
import re
import sys
import time as _time
from dataclasses import dataclass, field, replace
from typing import Any

NIL_UUID = "00000000-0000-0000-0000-000000000000"
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")

#: ``type`` values of the port API (``PortSubscribeEntry::Type``).
PORT_TYPE_VM = 0
PORT_TYPE_NAMESPACE = 1
PORT_TYPE_REMOTE = 2
PORT_TYPES = {PORT_TYPE_VM: "NovaVMPort", PORT_TYPE_NAMESPACE: "NameSpacePort",
              PORT_TYPE_REMOTE: "ESXiPort"}

#: ``author`` of a port whose body named none (and of files when argv[0] is empty).
AUTHOR = "vrtwist-agent"


def program_name() -> str:
    """The agent's own program name, as the real agent puts it in ``author``: its argv[0]."""
    return sys.argv[0] if sys.argv and sys.argv[0] else AUTHOR


def agent_time(now: float | None = None) -> str:
    """``time`` as the real agent writes it: the UTC time since the epoch printed as a
    duration, ``H:MM:SS`` with unbounded hours and ``.ffffff`` when the microseconds are
    not zero (e.g. ``492553:17:41.005120``)."""
    usec = round((_time.time() if now is None else now) * 1_000_000)
    secs, frac = divmod(usec, 1_000_000)
    hours, rest = divmod(secs, 3600)
    text = "%02d:%02d:%02d" % (hours, rest // 60, rest % 60)
    return text + (".%06d" % frac if frac else "")


class PortValidationError(ValueError):
    """A port body or field that cannot be accepted; ``problems`` lists each field's fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ResourceExhausted(RuntimeError):
    """An id space (vif index, next hop, label, VRF) has no free id left."""


def normalise_uuid(value: str) -> str | None:
    """Return the lowercase canonical form of a dashed uuid, or None if it is not one."""
    low = value.strip().lower()
    return low if _UUID_RE.match(low) else None


def dashed_uuid(value: str) -> str:
    """vrouter-port-control's rule: 32 hex digits become the dashed form, else ``""``."""
    v = value.strip().lower()
    if re.fullmatch(r"[0-9a-f]{32}", v):
        return f"{v[0:8]}-{v[8:12]}-{v[12:16]}-{v[16:20]}-{v[20:32]}"
    return v if _UUID_RE.match(v) else ""


@dataclass(frozen=True)
class Port:
    """One virtual machine interface as the orchestrator announced it."""

    id: str
    instance_id: str
    vn_id: str
    vm_project_id: str
    display_name: str
    ip_address: str | None  # None: no IPv4 address
    ip6_address: str | None  # None: no IPv6 address
    type: int
    system_name: str
    mac_address: str
    rx_vlan_id: int = -1
    tx_vlan_id: int = -1
    vhostuser_mode: int | None = None
    link_state: int | None = None
    plen: int | None = None
    gateway: str | None = None
    dns_server: str | None = None
    #: the IPv6 subnet's prefix length, gateway and DNS (service) address (vrtwist's
    #: ``v6-plen``, ``v6-gateway``, ``v6-dns-server``; the real port data has none)
    ip6_plen: int | None = None
    ip6_gateway: str | None = None
    ip6_dns_server: str | None = None
    author: str = AUTHOR
    time: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_file_json(self, author: str | None = None, now: float | None = None) -> dict[str, Any]:
        """A port file as the real agent's writer (``MakeVmiUuidJson``) makes it.

        Its members in its order, its spellings of "none" (``0.0.0.0``, ``::``, the nil
        uuid), ``vhostuser-mode`` always, ``link-state`` for ESXi ports only, and ``author``
        and ``time`` set at writing (the writer's program name, the current time).  The
        IPAM members vrtwist accepts (``plen``, ``gateway``, ``dns-server``) follow, only
        when given: a real agent ignores them.
        """
        out: dict[str, Any] = {
            "id": self.id,
            "instance-id": self.instance_id,
            "display-name": self.display_name,
            "ip-address": self.ip_address or "0.0.0.0",
            "ip6-address": self.ip6_address or "::",
            "vn-id": self.vn_id,
            "vm-project-id": self.vm_project_id or NIL_UUID,
            "mac-address": self.mac_address,
            "system-name": self.system_name,
            "type": self.type,
            "rx-vlan-id": self.rx_vlan_id,
            "tx-vlan-id": self.tx_vlan_id,
            "vhostuser-mode": self.vhostuser_mode or 0,
        }
        if self.type == PORT_TYPE_REMOTE:
            out["link-state"] = self.link_state or 0
        out["author"] = program_name() if author is None else author
        out["time"] = agent_time(now)
        if self.plen is not None:
            out["plen"] = self.plen
        if self.gateway is not None:
            out["gateway"] = self.gateway
        if self.dns_server is not None:
            out["dns-server"] = self.dns_server
        for name, value in (("v6-plen", self.ip6_plen), ("v6-gateway", self.ip6_gateway),
                            ("v6-dns-server", self.ip6_dns_server)):
            if value is not None:
                out[name] = value
        return out

    def to_oper_json(self) -> dict[str, Any]:
        """What ``GET /port/<uuid>`` answers (``MakeJsonFromVmi``).

        Without a controller the IPAM comes from the port's own ``plen``/``gateway``/
        ``dns-server`` (a /32 with no gateway when they were not given), and for IPv6
        from ``v6-plen``/``v6-gateway``/``v6-dns-server`` (a /128, ``::``).
        """
        out: dict[str, Any] = {
            "id": self.id,
            "instance-id": self.instance_id,
            "vn-id": self.vn_id,
            "vm-project-id": self.vm_project_id,
            "mac-address": self.mac_address,
            "system-name": self.system_name,
            "rx-vlan-id": self.rx_vlan_id,
            "tx-vlan-id": self.tx_vlan_id,
            "vhostuser-mode": self.vhostuser_mode or 0,
        }
        if self.ip_address is not None:
            out["ip-address"] = self.ip_address
            out["plen"] = self.plen if self.plen is not None else 32
            out["dns-server"] = self.dns_server or "0.0.0.0"
            out["gateway"] = self.gateway or "0.0.0.0"
        if self.ip6_address is not None:
            out["v6-ip-address"] = self.ip6_address
            out["v6-plen"] = self.ip6_plen if self.ip6_plen is not None else 128
            out["v6-dns-server"] = self.ip6_dns_server or "::"
            out["v6-gateway"] = self.ip6_gateway or "::"
        out["author"] = self.author
        out["time"] = self.time
        return out

    def with_link_state(self, state: int) -> Port:
        """A copy with ``link-state`` set (ESXi enable/disable)."""
        return replace(self, link_state=state)

    def same_config(self, other: Port) -> bool:
        """True when two records describe the same port (metadata ignored)."""
        return replace(self, author="", time="") == replace(other, author="", time="")


def _given(body: dict[str, Any], name: str, problems: list[str], required: bool) -> Any:
    """The field's value, or None when absent or null (a problem if ``required``)."""
    if name not in body:
        if required:
            problems.append(f"{name}: missing")
        return None
    value = body[name]
    if value is None and required:
        problems.append(f"{name}: must not be null")
    return value


def _uuid_field(body: dict[str, Any], name: str, problems: list[str], *,
                allow_empty: bool = False) -> str:
    value = _given(body, name, problems, True)
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append(f"{name}: must be a string uuid, got {type(value).__name__}")
        return ""
    if allow_empty and value == "":
        return ""
    norm = normalise_uuid(value)
    if norm is None:
        problems.append(f"{name}: {value!r} is not a uuid (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
        return ""
    return norm


def _str_field(body: dict[str, Any], name: str, problems: list[str], *,
               required: bool = True) -> str | None:
    value = _given(body, name, problems, required)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"{name}: must be a string, got {type(value).__name__}")
        return None
    return value


def _int_field(body: dict[str, Any], name: str, problems: list[str], *, required: bool,
               lo: int, hi: int) -> int | None:
    value = _given(body, name, problems, required)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{name}: must be an integer, got {type(value).__name__}")
        return None
    if not lo <= value <= hi:
        problems.append(f"{name}: {value} is out of range {lo}..{hi}")
        return None
    return value


def _ipv4(value: str, name: str, problems: list[str], *, allow_none: bool) -> str | None:
    if allow_none and value in ("", "None", "0.0.0.0"):
        return None
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        problems.append(f"{name}: {value!r} is not an IPv4 address")
        return None


def parse_mac(value: str) -> bytes:
    """``xx:xx:xx:xx:xx:xx`` to 6 bytes; ValueError with the reason otherwise."""
    low = value.strip().lower()
    if not _MAC_RE.match(low):
        raise ValueError(f"{value!r} is not a MAC, use xx:xx:xx:xx:xx:xx format")
    raw = bytes(int(p, 16) for p in low.split(":"))
    if raw == b"\0" * 6:
        raise ValueError("00:00:00:00:00:00 is not a usable MAC")
    if raw[0] & 1:
        raise ValueError(f"{low} is a multicast MAC, a port needs a unicast one")
    return raw


def _ip6_field(body: dict[str, Any], problems: list[str]) -> str | None:
    ip6: str | None = None
    # null is "no IPv6" here; the real agent refuses it although its own script sends it
    raw_ip6 = _str_field(body, "ip6-address", problems) if body.get("ip6-address",
                                                                    "") is not None else None
    if raw_ip6 is not None and raw_ip6 not in ("", "None", "::"):
        try:
            ip6 = str(ipaddress.IPv6Address(raw_ip6))
        except ValueError:
            problems.append(f"ip6-address: {raw_ip6!r} is not an IPv6 address")
    return ip6


def _ipv6(value: str, name: str, problems: list[str]) -> str | None:
    if value in ("", "None", "::"):
        return None
    try:
        return str(ipaddress.IPv6Address(value))
    except ValueError:
        problems.append(f"{name}: {value!r} is not an IPv6 address")
        return None


def _ip6_ipam(body: dict[str, Any], ip6: str | None,
              problems: list[str]) -> tuple[int | None, str | None, str | None]:
    """``v6-plen``, ``v6-gateway``, ``v6-dns-server``: checked, the gateway in the subnet."""
    plen = _int_field(body, "v6-plen", problems, required=False, lo=0, hi=128)
    found: list[str | None] = []
    for name in ("v6-gateway", "v6-dns-server"):
        raw = _str_field(body, name, problems, required=False)
        found.append(_ipv6(raw, name, problems) if raw is not None else None)
    gw, dns = found
    if ip6 is not None and gw is not None and plen is not None:
        net = ipaddress.IPv6Network(f"{ip6}/{plen}", strict=False)
        if ipaddress.IPv6Address(gw) not in net:
            problems.append(f"v6-gateway: {gw} is outside the port's subnet {net}")
    if ip6 is None and (plen is not None or gw is not None):
        problems.append("v6-plen, v6-gateway: need an ip6-address")
    return plen, gw, dns


def _system_name_field(body: dict[str, Any], ptype: int | None, problems: list[str]) -> str | None:
    system_name = _str_field(body, "system-name", problems)
    if ptype == PORT_TYPE_REMOTE and system_name is not None and \
            _UUID_RE.match(system_name.lower()):
        pass  # an ESXi port names its vSphere port by uuid (the real API's own example)
    elif system_name is not None and not _IFNAME_RE.match(system_name):
        problems.append(f"system-name: {system_name!r} is not an interface name "
                        "(1-15 characters, no space, '/' or ':')"
                        + (" or a uuid" if ptype == PORT_TYPE_REMOTE else ""))
        system_name = None
    return system_name


def _mac_field(body: dict[str, Any], problems: list[str]) -> str | None:
    mac = _str_field(body, "mac-address", problems)
    if mac is not None:
        try:
            parse_mac(mac)
            mac = mac.strip().lower()
        except ValueError as e:
            problems.append(f"mac-address: {e}")
            mac = None
    return mac


def port_from_json(body: Any, *, now: float | None = None) -> Port:
    """Validate one ``POST /port`` object (or port file) and build the :class:`Port`.

    Raises :class:`PortValidationError` naming every bad field at once.
    """
    if not isinstance(body, dict):
        raise PortValidationError([f"port: expected a JSON object, got {type(body).__name__}"])
    problems: list[str] = []
    port_id = _uuid_field(body, "id", problems)
    if port_id == NIL_UUID:
        problems.append("id: the nil uuid is not a port id")
    instance_id = _uuid_field(body, "instance-id", problems)
    vn_id = _uuid_field(body, "vn-id", problems)
    if vn_id == NIL_UUID:
        problems.append("vn-id: the nil uuid names no virtual network")
    project = _uuid_field(body, "vm-project-id", problems, allow_empty=True) or NIL_UUID
    display = _str_field(body, "display-name", problems) or ""
    ptype = _int_field(body, "type", problems, required=True, lo=0, hi=2)

    ip4: str | None = None
    raw_ip = _str_field(body, "ip-address", problems)
    if raw_ip is not None:
        ip4 = _ipv4(raw_ip, "ip-address", problems, allow_none=True)
    ip6 = _ip6_field(body, problems)

    system_name = _system_name_field(body, ptype, problems)
    mac = _mac_field(body, problems)
    # null vlan ids (what vrouter-port-control sends when not given) mean "no VLAN"
    rx = _int_field(body, "rx-vlan-id", problems, required=True, lo=-1, hi=4095) \
        if body.get("rx-vlan-id", 0) is not None else -1
    tx = _int_field(body, "tx-vlan-id", problems, required=True, lo=-1, hi=4095) \
        if body.get("tx-vlan-id", 0) is not None else -1
    vhu = _int_field(body, "vhostuser-mode", problems, required=False, lo=0, hi=1) or 0
    link = _int_field(body, "link-state", problems, required=False, lo=0, hi=1)
    # the real agent keeps a link state for ESXi ports only (default down)
    link = (link or 0) if ptype == PORT_TYPE_REMOTE else None
    plen = _int_field(body, "plen", problems, required=False, lo=0, hi=32)
    gw = dns = None
    raw_gw = _str_field(body, "gateway", problems, required=False)
    if raw_gw is not None:
        gw = _ipv4(raw_gw, "gateway", problems, allow_none=True)
    raw_dns = _str_field(body, "dns-server", problems, required=False)
    if raw_dns is not None:
        dns = _ipv4(raw_dns, "dns-server", problems, allow_none=True)
    plen6, gw6, dns6 = _ip6_ipam(body, ip6, problems)
    author = _str_field(body, "author", problems, required=False) or AUTHOR
    when = _str_field(body, "time", problems, required=False)
    if ip4 is not None and gw is not None and plen is not None:
        net = ipaddress.IPv4Network(f"{ip4}/{plen}", strict=False)
        if ipaddress.IPv4Address(gw) not in net:
            problems.append(f"gateway: {gw} is outside the port's subnet {net}")
    if problems:
        raise PortValidationError(problems)
    assert ptype is not None and system_name is not None and mac is not None
    assert rx is not None and tx is not None
    if when is None:
        when = _time.strftime("%a %b %d %H:%M:%S %Y", _time.localtime(now))
    known = {"id", "instance-id", "vn-id", "vm-project-id", "display-name", "ip-address",
             "ip6-address", "type", "system-name", "mac-address", "rx-vlan-id", "tx-vlan-id",
             "vhostuser-mode", "link-state", "plen", "gateway", "dns-server", "v6-plen",
             "v6-gateway", "v6-dns-server", "author", "time"}
    return Port(
        id=port_id, instance_id=instance_id, vn_id=vn_id, vm_project_id=project,
        display_name=display, ip_address=ip4, ip6_address=ip6, type=ptype,
        system_name=system_name, mac_address=mac, rx_vlan_id=rx, tx_vlan_id=tx,
        vhostuser_mode=vhu, link_state=link, plen=plen, gateway=gw, dns_server=dns,
        ip6_plen=plen6, ip6_gateway=gw6, ip6_dns_server=dns6, author=author, time=when,
        extra={k: v for k, v in body.items() if k not in known},
    )


@dataclass(frozen=True)
class VmPort:
    """A port added through the CNI/Mesos ``POST /vm`` API (vm + vn in one object)."""

    vm_uuid: str
    vmi_uuid: str
    vn_uuid: str
    vm_name: str
    host_ifname: str
    vm_ifname: str = ""
    vm_namespace: str = ""
    vm_id: str = ""
    time: str = ""


def vm_port_from_json(body: Any) -> VmPort:
    """Validate a ``POST /vm`` body."""
    if not isinstance(body, dict):
        raise PortValidationError([f"vm: expected a JSON object, got {type(body).__name__}"])
    problems: list[str] = []
    vm_uuid = _uuid_field(body, "vm-uuid", problems)
    vmi = _uuid_field(body, "vmi-uuid", problems)
    vn = _uuid_field(body, "vn-uuid", problems)
    if vn == NIL_UUID:
        problems.append("vn-uuid: the nil uuid names no virtual network")
    name = _str_field(body, "vm-name", problems)
    if name is not None and (not name or "/" in name or name in (".", "..")):
        problems.append(f"vm-name: {name!r} cannot name a directory")
    host = _str_field(body, "host-ifname", problems)
    if host is not None and not _IFNAME_RE.match(host):
        problems.append(f"host-ifname: {host!r} is not an interface name")
    opt = {k: _str_field(body, k, problems, required=False) or ""
           for k in ("vm-ifname", "vm-namespace", "vm-id", "time")}
    if problems:
        raise PortValidationError(problems)
    assert name is not None and host is not None
    return VmPort(vm_uuid=vm_uuid, vmi_uuid=vmi, vn_uuid=vn, vm_name=name, host_ifname=host,
                  vm_ifname=opt["vm-ifname"], vm_namespace=opt["vm-namespace"],
                  vm_id=opt["vm-id"], time=opt["time"])


def vm_port_to_json(vp: VmPort, author: str | None = None,
                    now: float | None = None) -> dict[str, Any]:
    """The file body of a ``/vm`` port as the real agent writes it (``MakeVmVnPortJson``):
    its member order, ``author`` and ``time`` set at writing."""
    return {"vm-uuid": vp.vm_uuid, "vn-uuid": vp.vn_uuid, "vmi-uuid": vp.vmi_uuid,
            "vm-id": vp.vm_id, "vm-name": vp.vm_name, "host-ifname": vp.host_ifname,
            "vm-ifname": vp.vm_ifname, "vm-namespace": vp.vm_namespace,
            "author": program_name() if author is None else author, "time": agent_time(now)}


def mac_for_vmi(vmi_uuid: str) -> str:
    """A locally administered MAC derived from a VMI uuid (``02:`` + first 5 bytes).

    The real agent takes a ``/vm`` port's MAC from config pushed by the controller; with no
    controller we derive it the way Contrail's Nova driver names MACs (``02:`` + uuid).
    """
    h = vmi_uuid.replace("-", "")
    return "02:" + ":".join(h[i:i + 2] for i in range(0, 10, 2))


def port_from_vm(vp: VmPort) -> Port:
    """The port record a ``POST /vm`` body stands for (namespace-type, no address yet)."""
    return Port(id=vp.vmi_uuid, instance_id=vp.vm_uuid, vn_id=vp.vn_uuid, vm_project_id=NIL_UUID,
                display_name=vp.vm_name, ip_address=None, ip6_address=None,
                type=PORT_TYPE_NAMESPACE, system_name=vp.host_ifname,
                mac_address=mac_for_vmi(vp.vmi_uuid), time=vp.time)


@dataclass(frozen=True)
class Gateway:
    """A simple-gateway interface (``POST /gateway``): vgw name, VRF name, subnets, routes."""

    interface: str
    routing_instance: str
    subnets: tuple[tuple[str, int], ...]
    routes: tuple[tuple[str, int], ...]

    def to_json(self) -> dict[str, Any]:
        """The ``POST /gateway`` form of this gateway."""
        return {"interface": self.interface, "routing-instance": self.routing_instance,
                "subnets": [{"ip-address": a, "prefix-len": p} for a, p in self.subnets],
                "routes": [{"ip-address": a, "prefix-len": p} for a, p in self.routes]}


def _prefixes(value: Any, name: str, problems: list[str]) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list):
        problems.append(f"{name}: must be an array")
        return ()
    out = []
    for i, item in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be an object")
            continue
        before = len(problems)
        addr = _str_field(item, "ip-address", problems)
        plen = _int_field(item, "prefix-len", problems, required=True, lo=0, hi=128)
        if addr is None or plen is None:
            problems[before:] = [f"{where}.{p}" for p in problems[before:]]
            continue
        try:
            net = ipaddress.ip_network(f"{addr}/{plen}", strict=False)
        except ValueError:
            problems.append(f"{where}: {addr}/{plen} is not a prefix")
            continue
        out.append((str(net.network_address), net.prefixlen))
    return tuple(out)


def gateways_from_json(body: Any) -> list[Gateway]:
    """Validate a ``POST /gateway`` array."""
    if not isinstance(body, list):
        raise PortValidationError(["gateway: expected a JSON array of gateway objects"])
    problems: list[str] = []
    out = []
    for i, item in enumerate(body):
        if not isinstance(item, dict):
            problems.append(f"[{i}]: expected an object")
            continue
        before = len(problems)
        intf = _str_field(item, "interface", problems)
        ri = _str_field(item, "routing-instance", problems)
        if intf is not None and not _IFNAME_RE.match(intf):
            problems.append(f"interface: {intf!r} is not an interface name")
        subnets = _prefixes(item.get("subnets"), "subnets", problems)
        routes = _prefixes(item.get("routes", []), "routes", problems)
        problems[before:] = [f"[{i}].{p}" for p in problems[before:]]
        if len(problems) == before:
            assert intf is not None and ri is not None
            out.append(Gateway(intf, ri, subnets, routes))
    if problems:
        raise PortValidationError(problems)
    return out

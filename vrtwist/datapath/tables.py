"""State of the forwarding extension: interfaces, next hops, MPLS, VXLAN, mirrors, VRFs.

Plain Python objects, no I/O. Requests arrive as mappings of Sandesh field names to
values (a decoded ``vr_*_req``); answers leave as dicts of the same field names, ready
to be encoded. Validation and error codes follow the real vRouter's handlers
(``dp-core/vr_interface.c``, ``vr_nexthop.c``, ``vr_mpls.c``, ``vr_vxlan.c``,
``vr_mirror.c``, ``vr_vrf_assign.c``): each failure raises :class:`TableError` with the
errno the real vRouter puts in ``vr_response.resp_code`` (negated on the wire).

Reference counting is the real vRouter's: a table holds one reference to each object
it lists, and every next hop, route, label, VNID or mirror that points at an object
holds one more. Deleting an object that is still referenced succeeds, as it does in
the vRouter: the object leaves its table, and lives on for its holders (its ``Ref``
count shows them) until the last one lets go.
"""

from __future__ import annotations

import bisect
import errno
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vrtwist.datapath import constants as C

Request = Mapping[str, Any]
Fields = dict[str, Any]


class TableError(Exception):
    """A request the vRouter rejects; ``errno`` is positive, ``resp_code`` negative."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"{why} ({errno.errorcode.get(code, code)})")
        self.errno = code
        self.why = why

    @property
    def resp_code(self) -> int:
        return -self.errno


V = TypeVar("V")


class KeyedTable(dict[int, V]):
    """A dict of objects by integer key that can list keys after a dump marker quickly.

    The sorted key list is rebuilt lazily after the key set changes, so a dump of a
    large table (524288 next hops) costs one sort per change burst, not one per page.
    """

    _sorted: list[int] | None = None

    def __setitem__(self, key: int, value: V) -> None:
        if key not in self:
            self._sorted = None
        super().__setitem__(key, value)

    def __delitem__(self, key: int) -> None:
        super().__delitem__(key)
        self._sorted = None

    def pop(self, key: int, *default: Any) -> Any:
        self._sorted = None
        return super().pop(key, *default)

    def clear(self) -> None:
        self._sorted = None
        super().clear()

    def keys_after(self, marker: int) -> list[int]:
        """Keys greater than ``marker``, ascending."""
        if self._sorted is None:
            self._sorted = sorted(self)
        keys = self._sorted
        return keys[bisect.bisect_right(keys, marker) :]


def _i(req: Request, name: str, default: int = 0) -> int:
    value = req.get(name)
    if value is None:
        return default
    return int(value)


def _b(req: Request, name: str) -> bytes:
    value = req.get(name)
    if not value:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return bytes(v & 0xFF for v in value)


def _s(req: Request, name: str) -> str:
    value = req.get(name)
    if not value:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _first(req: Request, name: str, default: int = 0) -> int:
    """First element of a field the newest vr.sandesh declares a list (an int still taken)."""
    value = req.get(name)
    if value is None:
        return default
    if isinstance(value, int):
        return value
    return int(value[0]) if len(value) else default


def _l(req: Request, name: str) -> list[int]:
    value = req.get(name)
    if not value:
        return []
    return [int(v) for v in value]


def _u32(value: int) -> int:
    return value & 0xFFFFFFFF


@dataclass
class DatapathConfig:
    """Table sizes, as the vRouter's start-up parameters set them."""

    interfaces: int = C.VR_DEF_INTERFACES
    nexthops: int = C.VR_DEF_NEXTHOPS
    mpls_labels: int = C.VR_DEF_LABELS
    vrfs: int = C.VR_DEF_VRFS
    mirrors: int = C.VR_DEF_MIRROR_ENTRIES
    flow_entries: int = C.VR_DEF_FLOW_ENTRIES
    oflow_entries: int = -1
    bridge_entries: int = C.VR_DEF_BRIDGE_ENTRIES
    oflow_bridge_entries: int = -1
    cores: int = 1

    def __post_init__(self) -> None:
        if self.oflow_entries < 0:
            self.oflow_entries = C.default_overflow(self.flow_entries)
        if self.oflow_bridge_entries < 0:
            self.oflow_bridge_entries = C.default_overflow(self.bridge_entries)


# interface counters the forwarding path increments
_VIF_COUNTERS = (
    "ibytes", "ipackets", "ierrors", "obytes", "opackets", "oerrors",
    "queue_ipackets", "queue_ierrors", "queue_opackets", "queue_oerrors",
    "port_ipackets", "port_ierrors", "port_isyscalls", "port_inombufs",
    "port_opackets", "port_oerrors", "port_osyscalls",
    "dev_ibytes", "dev_ipackets", "dev_ierrors", "dev_inombufs",
    "dev_obytes", "dev_opackets", "dev_oerrors",
)  # fmt: skip

# request fields an interface keeps verbatim and returns on GET/DUMP
_VIF_KEPT_LISTS = (
    "vifr_fat_flow_protocol_port", "vifr_fat_flow_exclude_ip_list",
    "vifr_fat_flow_exclude_ip6_u_list", "vifr_fat_flow_exclude_ip6_l_list",
    "vifr_fat_flow_exclude_ip6_plen_list", "vifr_fat_flow_src_prefix_h",
    "vifr_fat_flow_src_prefix_l", "vifr_fat_flow_src_prefix_mask",
    "vifr_fat_flow_src_aggregate_plen", "vifr_fat_flow_dst_prefix_h",
    "vifr_fat_flow_dst_prefix_l", "vifr_fat_flow_dst_prefix_mask",
    "vifr_fat_flow_dst_aggregate_plen", "vifr_in_mirror_md", "vifr_out_mirror_md",
    "vifr_hw_queues", "vifr_pbb_mac", "vifr_src_mac", "vifr_if_guid",
    "vifr_fab_name", "vifr_fab_drv_name", "vifr_bond_slave_name",
    "vifr_bond_slave_drv_name", "vifr_vlan_name",
)  # fmt: skip


@dataclass(eq=False)
class Interface:
    """One vif: configuration from the agent plus the counters of the forwarding path."""

    idx: int
    type: int
    name: str = ""
    transport: int = 0
    flags: int = 0
    vrf: int = 0
    mcast_vrf: int = 0
    mtu: int = 0
    mac: bytes = b""
    ip: int = 0
    ip6_u: int = 0
    ip6_l: int = 0
    os_idx: int = 0
    nh_id: int = 0
    mir_id: int = 0
    qos_map_index: int = 0
    vlan_id: int = 0
    ovlan_id: int = 0
    parent: Interface | None = None
    cross_connect_idx: tuple[int, ...] = ()
    vhostuser_mode: int = 0
    isid: int = 0
    intf_status: int = 0
    vlan_tag: int = 0
    kept: Fields = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_VIF_COUNTERS, 0))
    drops: dict[str, int] = field(default_factory=dict)
    users: int = 0
    # VLAN -> VRF assignments of this vif (vr_vrf_assign_req), with their next hops
    vrf_assign: dict[int, tuple[int, int]] = field(default_factory=dict)

    def apply_flags(self, requested: int) -> None:
        """vif_set_flags: keep vRouter-owned capability bits, default to L3+L2."""
        cap_mask = (
            C.VIF_FLAG_TX_CSUM_OFFLOAD
            | C.VIF_FLAG_VLAN_OFFLOAD
            | C.VIF_FLAG_GRO_NEEDED
            | C.VIF_FLAG_MRG_RXBUF
        )
        flags = (self.flags & cap_mask) | (_u32(requested) & ~cap_mask)
        if not flags & (C.VIF_FLAG_L3_ENABLED | C.VIF_FLAG_L2_ENABLED):
            flags |= C.VIF_FLAG_L3_ENABLED | C.VIF_FLAG_L2_ENABLED
        if self.type == C.VIF_TYPE_PHYSICAL:
            # no NIC is bound to a physical vif here: the DPDK vRouter marks such a
            # vif as a mock device (vtest expects the bit on GET)
            flags |= C.VIF_FLAG_MOCK_DEVICE
        self.flags = flags & 0xFFFFFFFF
        if self.flags & 0x80000000:
            self.flags -= 1 << 32

    def to_fields(self, core: int = 0, cores: int = 1) -> Fields:
        """The ``vr_interface_req`` the vRouter returns for this vif (GET/DUMP).

        ``cores``: forwarding cores; the DPDK vRouter reports one RX-queue error counter
        per core (``vifr_queue_ierrors_to_lcore``), which ``vif`` prints on every vif.
        """
        out: Fields = {
            "vifr_idx": self.idx,
            "vifr_type": self.type,
            "vifr_name": self.name,
            "vifr_transport": self.transport,
            "vifr_flags": self.flags,
            "vifr_vrf": self.vrf,
            "vifr_mcast_vrf": self.mcast_vrf,
            "vifr_mtu": self.mtu,
            "vifr_mac": self.mac,
            "vifr_ip": self.ip,
            "vifr_ip6_u": self.ip6_u,
            "vifr_ip6_l": self.ip6_l,
            "vifr_os_idx": self.os_idx,
            "vifr_nh_id": self.nh_id,
            "vifr_mir_id": self.mir_id,
            "vifr_qos_map_index": self.qos_map_index,
            "vifr_vlan_id": self.vlan_id,
            "vifr_ovlan_id": self.ovlan_id,
            "vifr_parent_vif_idx": self.parent.idx if self.parent is not None else -1,
            "vifr_cross_connect_idx": list(self.cross_connect_idx),
            "vifr_vhostuser_mode": self.vhostuser_mode,
            "vifr_isid": self.isid,
            "vifr_intf_status": self.intf_status,
            "vifr_vlan_tag": self.vlan_tag,
            "vifr_ref_cnt": self.users,
            "vifr_core": core,
            "vifr_speed": -1,
            "vifr_duplex": -1,
        }
        out.update(self.kept)
        # one forwarding core: core 0 (sum of all) and core 1 show the counters
        show = core in (0, 1)
        for name in _VIF_COUNTERS:
            out["vifr_" + name] = self.counters[name] if show else 0
        out["vifr_dpackets"] = sum(self.drops.values()) if show else 0
        out.setdefault("vifr_queue_ierrors_to_lcore", [0] * max(1, cores))
        return out


@dataclass(eq=False)
class NextHop:
    """One next hop and the objects it holds references to."""

    id: int
    type: int
    family: int = 0
    flags: int = 0
    vrf: int = 0
    oif: Interface | None = None
    crypt_oif: Interface | None = None
    encap_family: int = 0
    encap: bytes = b""
    tun_sip: int = 0
    tun_dip: int = 0
    tun_sport: int = 0
    tun_dport: int = 0
    tun_sip6: bytes = b""
    tun_dip6: bytes = b""
    components: list[tuple[NextHop | None, int]] = field(default_factory=list)
    direct: NextHop | None = None
    ecmp_config_hash: int = 0
    pbb_mac: bytes = b""
    rw_dst_mac: bytes = b""
    transport_label: int = 0
    crypt_traffic: int = 0
    crypt_path_available: int = 0
    users: int = 0

    def to_fields(self) -> Fields:
        """The ``vr_nexthop_req`` the vRouter returns for this next hop."""
        out: Fields = {
            "nhr_id": self.id,
            "nhr_type": self.type,
            "nhr_family": self.family,
            "nhr_flags": self.flags,
            "nhr_vrf": self.vrf,
            "nhr_ref_cnt": self.users,
            "nhr_encap_family": self.encap_family,
            "nhr_encap_oif_id": [self.oif.idx if self.oif is not None else 0],
            "nhr_encap_crypt_oif_id": self.crypt_oif.idx if self.crypt_oif is not None else 0,
            "nhr_encap": self.encap,
            "nhr_encap_len": len(self.encap),
            "nhr_tun_sip": self.tun_sip,
            "nhr_tun_dip": self.tun_dip,
            "nhr_tun_sport": self.tun_sport,
            "nhr_tun_dport": self.tun_dport,
            "nhr_tun_sip6": self.tun_sip6,
            "nhr_tun_dip6": self.tun_dip6,
            "nhr_ecmp_config_hash": self.ecmp_config_hash,
            "nhr_pbb_mac": self.pbb_mac,
            "nhr_rw_dst_mac": self.rw_dst_mac,
            "nhr_transport_label": self.transport_label,
            "nhr_crypt_traffic": self.crypt_traffic,
            "nhr_crypt_path_available": self.crypt_path_available,
        }
        if self.type == C.NH_COMPOSITE:
            out["nhr_nh_list"] = [c.id if c is not None else -1 for c, _ in self.components]
            out["nhr_label_list"] = [label for _, label in self.components]
            out["nhr_nh_count"] = len(self.components)
        elif self.direct is not None:
            out["nhr_nh_list"] = [self.direct.id]
        return out


_VIF_NAME = re.compile(r"^vif(\d+)/(\d+)$")


class Tables:
    """Every ksync-visible table of one vRouter (router id 0), with reference counts.

    The flow and bridge tables live in shared memory (``vrtwist.shmem``) and are not
    kept here; routes are in :mod:`vrtwist.datapath.routes`.
    """

    def __init__(self, config: DatapathConfig | None = None) -> None:
        self.config = config if config is not None else DatapathConfig()
        self.interfaces: KeyedTable[Interface] = KeyedTable()
        self.nexthops: KeyedTable[NextHop] = KeyedTable()
        self.mpls: KeyedTable[NextHop] = KeyedTable()
        self.vxlan: KeyedTable[NextHop] = KeyedTable()
        self.mirrors: KeyedTable[tuple[NextHop, Fields]] = KeyedTable()
        self.vrfs: dict[int, Fields] = {}
        self.qos_maps: dict[int, Fields] = {}
        self.fc_maps: dict[int, Fields] = {}
        self.drop_stats: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        """Soft reset (``vrouter_ops`` RESET): empty every table, keep the discard NH."""
        self.interfaces.clear()
        self.nexthops.clear()
        self.mpls.clear()
        self.vxlan.clear()
        self.mirrors.clear()
        self.vrfs.clear()
        self.qos_maps.clear()
        self.fc_maps.clear()
        self.drop_stats.clear()
        discard = NextHop(
            id=C.NH_DISCARD_ID, type=C.NH_DISCARD, family=C.AF_INET, flags=C.NH_FLAG_VALID
        )
        self._hold_nh(discard)
        self.nexthops[C.NH_DISCARD_ID] = discard

    # -- reference counting ------------------------------------------------------

    @staticmethod
    def _hold_vif(vif: Interface | None) -> None:
        if vif is not None:
            vif.users += 1

    def _put_vif(self, vif: Interface | None) -> None:
        if vif is None:
            return
        vif.users -= 1
        if vif.users <= 0 and vif.parent is not None:
            parent, vif.parent = vif.parent, None
            self._put_vif(parent)

    @staticmethod
    def _hold_nh(nh: NextHop | None) -> None:
        if nh is not None:
            nh.users += 1

    def _put_nh(self, nh: NextHop | None) -> None:
        if nh is None:
            return
        nh.users -= 1
        if nh.users > 0:
            return
        self._release_nh_refs(nh)

    def _release_nh_refs(self, nh: NextHop) -> None:
        oif, nh.oif = nh.oif, None
        self._put_vif(oif)
        crypt, nh.crypt_oif = nh.crypt_oif, None
        self._put_vif(crypt)
        components, nh.components = nh.components, []
        for component, _ in components:
            self._put_nh(component)
        direct, nh.direct = nh.direct, None
        self._put_nh(direct)

    def get_nexthop(self, nh_id: int) -> NextHop | None:
        """The next hop listed under ``nh_id`` (no reference taken)."""
        return self.nexthops.get(nh_id)

    def hold_nexthop(self, nh_id: int) -> NextHop | None:
        """Take a reference on a listed next hop, for a holder outside these tables."""
        nh = self.nexthops.get(nh_id)
        self._hold_nh(nh)
        return nh

    def release_nexthop(self, nh: NextHop | None) -> None:
        """Drop a reference taken with :meth:`hold_nexthop`."""
        self._put_nh(nh)

    # -- interfaces --------------------------------------------------------------

    def interface_add(self, req: Request) -> None:
        """ADD ``vr_interface_req``: create, or change an existing vif in place."""
        idx = _i(req, "vifr_idx")
        if not 0 <= idx < self.config.interfaces:
            raise TableError(errno.EINVAL, f"vif index {idx} out of range")
        vtype = _i(req, "vifr_type")
        if not 0 <= vtype < C.VIF_TYPE_MAX:
            raise TableError(errno.EINVAL, f"invalid vif type {vtype}")
        transport = _i(req, "vifr_transport")
        if transport not in C.VIF_TRANSPORT_NAMES:
            raise TableError(errno.EINVAL, f"invalid vif transport {transport}")
        existing = self.interfaces.get(idx)
        if existing is not None:
            self._interface_change(existing, req)
            return
        mac = _b(req, "vifr_mac")
        if mac and len(mac) != 6:
            raise TableError(errno.EINVAL, f"vif MAC of {len(mac)} bytes")
        vif = Interface(idx=idx, type=vtype, transport=transport)
        # vif_name is a char[VR_INTERFACE_NAME_LEN] (64): strncpy keeps 63 characters
        vif.name = _s(req, "vifr_name")[:63]
        vif.mac = mac
        vif.vrf = _i(req, "vifr_vrf")
        vif.mcast_vrf = _i(req, "vifr_mcast_vrf")
        vif.mtu = _i(req, "vifr_mtu")
        os_idx = _i(req, "vifr_os_idx")
        vif.os_idx = 0 if os_idx == -1 else os_idx
        vif.vhostuser_mode = _i(req, "vifr_vhostuser_mode")
        xc = req.get("vifr_cross_connect_idx")
        # An absent list reads as the old layout's zero (the interface at OS index 0).
        vif.cross_connect_idx = (
            (xc,) if isinstance(xc, int) else tuple(_l(req, "vifr_cross_connect_idx")) or (0,)
        )
        vif.vlan_tag = _i(req, "vifr_vlan_tag")
        self._interface_common(vif, req)
        if vtype == C.VIF_TYPE_HOST:
            if min(vif.cross_connect_idx) < 0:
                raise TableError(errno.EINVAL, "vhost vif without a cross-connect index")
            os_idxs = {v.os_idx for v in self.interfaces.values()}
            if not os_idxs.issuperset(vif.cross_connect_idx):
                raise TableError(errno.ENODEV, "vhost cross-connect names no interface")
        if vtype == C.VIF_TYPE_VIRTUAL_VLAN:
            self._vlan_attach(vif, req)
        self._hold_vif(vif)
        self.interfaces[idx] = vif

    def _vlan_attach(self, vif: Interface, req: Request) -> None:
        parent_idx = _i(req, "vifr_parent_vif_idx")
        vlan = _i(req, "vifr_vlan_id") & 0xFFFF
        ovlan = _i(req, "vifr_ovlan_id") & 0xFFFF
        if not 0 <= parent_idx <= self.config.interfaces:
            raise TableError(errno.EINVAL, f"parent vif {parent_idx} out of range")
        if vlan >= C.VLAN_ID_MAX or ovlan >= C.VLAN_ID_MAX:
            raise TableError(errno.EINVAL, "VLAN id out of range")
        parent = self.interfaces.get(parent_idx)
        if parent is None:
            raise TableError(errno.EINVAL, f"parent vif {parent_idx} does not exist")
        if not vif.kept.get("vifr_src_mac"):
            for other in self.interfaces.values():
                if other.parent is parent and other.vlan_id == vlan:
                    raise TableError(errno.EEXIST, f"VLAN {vlan} already on vif {parent_idx}")
        if not vif.mtu:
            vif.mtu = 1514
        vif.vlan_id, vif.ovlan_id = vlan, ovlan
        vif.parent = parent
        self._hold_vif(parent)

    def _interface_common(self, vif: Interface, req: Request) -> None:
        vif.apply_flags(_i(req, "vifr_flags"))
        vif.mir_id = _i(req, "vifr_mir_id")
        if not vif.flags & (C.VIF_FLAG_MIRROR_RX | C.VIF_FLAG_MIRROR_TX):
            vif.mir_id = self.config.mirrors
        vif.nh_id = _i(req, "vifr_nh_id")
        vif.qos_map_index = _i(req, "vifr_qos_map_index")
        vif.isid = _i(req, "vifr_isid")
        vif.ip = _i(req, "vifr_ip")
        vif.ip6_u = _i(req, "vifr_ip6_u")
        vif.ip6_l = _i(req, "vifr_ip6_l")
        vif.intf_status = _i(req, "vifr_intf_status")
        for name in _VIF_KEPT_LISTS:
            value = req.get(name)
            if value:
                vif.kept[name] = value
            else:
                vif.kept.pop(name, None)

    def _interface_change(self, vif: Interface, req: Request) -> None:
        vrf = _i(req, "vifr_vrf")
        mcast_vrf = _i(req, "vifr_mcast_vrf")
        mtu = _i(req, "vifr_mtu")
        self._interface_common(vif, req)
        if vrf >= 0:
            vif.vrf = vrf
        if mcast_vrf >= 0:
            vif.mcast_vrf = mcast_vrf
        if mtu:
            vif.mtu = mtu

    def interface_del(self, req: Request) -> None:
        """DEL ``vr_interface_req`` by ``vifr_name`` (``vifN/M`` or a name) or index."""
        name = _s(req, "vifr_name")
        vif: Interface | None
        if name:
            match = _VIF_NAME.match(name)
            if match:
                vif = self.interfaces.get(int(match.group(2)))
            else:
                vif = next((v for v in self.interfaces.values() if v.name == name), None)
        else:
            vif = self.interfaces.get(_i(req, "vifr_idx"))
        if vif is None:
            raise TableError(errno.ENODEV, "no such interface")
        del self.interfaces[vif.idx]
        self._put_vif(vif)

    def interface_get(self, req: Request) -> Interface:
        """GET ``vr_interface_req`` by index, or by OS index when the index is too big."""
        idx = _i(req, "vifr_idx")
        if not 0 <= idx < self.config.interfaces:
            os_idx = _i(req, "vifr_os_idx")
            found = next((v for v in self.interfaces.values() if v.os_idx == os_idx), None)
        else:
            found = self.interfaces.get(idx)
        if found is None:
            raise TableError(errno.ENOENT, "no such interface")
        return found

    def interface_dump(self, marker: int) -> Iterator[Interface]:
        """Interfaces after index ``marker`` (-1 starts at the beginning)."""
        for idx in self.interfaces.keys_after(marker):
            yield self.interfaces[idx]

    # -- next hops ---------------------------------------------------------------

    def nexthop_add(self, req: Request) -> None:
        """ADD ``vr_nexthop_req``: create, or change a listed next hop of the same kind."""
        nh_id = _i(req, "nhr_id")
        nh_type = _i(req, "nhr_type")
        flags = _u32(_i(req, "nhr_flags"))
        if not 0 <= nh_id < self.config.nexthops:
            raise TableError(errno.EINVAL, f"next hop id {nh_id} out of range")
        if not 0 <= nh_type < C.NH_MAX:
            raise TableError(errno.EINVAL, f"invalid next hop type {nh_type}")
        encap = _b(req, "nhr_encap")
        existing = self.nexthops.get(nh_id)
        if existing is not None and flags & C.NH_FLAG_VALID:
            if nh_type != existing.type:
                raise TableError(errno.EINVAL, "next hop change of type")
            if encap and len(encap) != len(existing.encap):
                raise TableError(errno.EINVAL, "next hop change of encap length")
            if (flags ^ existing.flags) & C.NH_FLAG_INDIRECT:
                raise TableError(errno.EINVAL, "next hop change of indirection")
        nh = NextHop(id=nh_id, type=nh_type)
        nh.family = _i(req, "nhr_family")
        nh.flags = flags
        nh.vrf = _i(req, "nhr_vrf")
        nh.encap_family = _i(req, "nhr_encap_family")
        nh.encap = encap
        nh.ecmp_config_hash = _i(req, "nhr_ecmp_config_hash")
        nh.pbb_mac = _b(req, "nhr_pbb_mac")
        nh.rw_dst_mac = _b(req, "nhr_rw_dst_mac")
        nh.transport_label = _i(req, "nhr_transport_label")
        nh.crypt_traffic = _i(req, "nhr_crypt_traffic")
        nh.crypt_path_available = _i(req, "nhr_crypt_path_available")
        if flags & C.NH_FLAG_VALID:
            try:
                self._nexthop_build(nh, req)
            except TableError:
                self._release_nh_refs(nh)
                raise
        if existing is not None:
            # a change keeps the object (routes and labels point at it) and swaps
            # what it holds
            old = NextHop(id=nh_id, type=existing.type)
            old.oif, old.crypt_oif = existing.oif, existing.crypt_oif
            old.components, old.direct = existing.components, existing.direct
            users = existing.users
            existing.__dict__.update(nh.__dict__)
            existing.users = users
            self._release_nh_refs(old)
            return
        self._hold_nh(nh)
        self.nexthops[nh_id] = nh

    def _nexthop_build(self, nh: NextHop, req: Request) -> None:
        """The per-type checks of ``vr_nexthop_add``; takes the references it needs."""
        oif_id = _first(req, "nhr_encap_oif_id")
        if nh.flags & C.NH_FLAG_INDIRECT:
            self._nexthop_indirect(nh, req)
        if nh.type == C.NH_ENCAP:
            self._nexthop_encap_check(nh)
            self._nh_attach_oif(nh, oif_id, errno.EINVAL)
        elif nh.type == C.NH_TUNNEL:
            self._nexthop_tunnel(nh, req, oif_id)
        elif nh.type == C.NH_RCV:
            self._nh_attach_oif(nh, oif_id, errno.ENODEV)
        elif nh.type == C.NH_COMPOSITE:
            self._nexthop_composite(nh, req)
        elif nh.type in (C.NH_L2_RCV, C.NH_RESOLVE, C.NH_DISCARD, C.NH_VRF_TRANSLATE):
            pass
        else:
            raise TableError(errno.EINVAL, f"next hop type {nh.type} cannot be added")

    def _nexthop_indirect(self, nh: NextHop, req: Request) -> None:
        """A PBB tunnel pointing at one direct next hop: checked, referenced."""
        if nh.type != C.NH_TUNNEL or not nh.flags & C.NH_FLAG_TUNNEL_PBB:
            raise TableError(errno.EINVAL, "indirect next hop must be a PBB tunnel")
        direct_ids = _l(req, "nhr_nh_list")
        if len(direct_ids) > 1:
            raise TableError(errno.EINVAL, "indirect next hop with several direct ones")
        if direct_ids:
            direct = self.nexthops.get(direct_ids[0])
            if direct is None:
                raise TableError(errno.EINVAL, "indirect next hop names a missing one")
            self._hold_nh(direct)
            nh.direct = direct

    def _nexthop_encap_check(self, nh: NextHop) -> None:
        if nh.family not in (C.AF_INET, C.AF_BRIDGE):
            raise TableError(errno.EINVAL, f"encap next hop of family {nh.family}")
        if nh.family == C.AF_BRIDGE and nh.flags & C.NH_FLAG_MCAST:
            raise TableError(errno.EINVAL, "multicast bridge encap next hop")
        if nh.family == C.AF_INET and not nh.flags & C.NH_FLAG_MCAST and len(nh.encap) < 6:
            raise TableError(errno.EINVAL, "encap shorter than a MAC address")

    def _nexthop_composite(self, nh: NextHop, req: Request) -> None:
        """Components and labels, one reference taken per component."""
        ids = _l(req, "nhr_nh_list")
        labels = _l(req, "nhr_label_list")
        if len(ids) != len(labels):
            raise TableError(errno.EINVAL, "composite lists of different lengths")
        for component_id, label in zip(ids, labels, strict=True):
            component = self.nexthops.get(component_id)
            self._hold_nh(component)
            nh.components.append((component, label))

    def _nexthop_tunnel(self, nh: NextHop, req: Request, oif_id: int) -> None:
        if nh.family == C.AF_INET6:
            nh.tun_sip6 = _b(req, "nhr_tun_sip6")
            nh.tun_dip6 = _b(req, "nhr_tun_dip6")
            if not nh.tun_sip6 or not nh.tun_dip6:
                raise TableError(errno.EINVAL, "IPv6 tunnel without addresses")
        elif nh.family == C.AF_INET:
            nh.tun_sip = _u32(_i(req, "nhr_tun_sip"))
            nh.tun_dip = _u32(_i(req, "nhr_tun_dip"))
            if not nh.tun_sip or not nh.tun_dip:
                raise TableError(errno.EINVAL, "IPv4 tunnel without addresses")
        nh.tun_sport = _i(req, "nhr_tun_sport")
        nh.tun_dport = _i(req, "nhr_tun_dport")
        crypt = self.interfaces.get(_i(req, "nhr_encap_crypt_oif_id"))
        self._hold_vif(crypt)
        nh.crypt_oif = crypt
        kinds = (
            C.NH_FLAG_TUNNEL_GRE
            | C.NH_FLAG_TUNNEL_UDP
            | C.NH_FLAG_TUNNEL_UDP_MPLS
            | C.NH_FLAG_TUNNEL_VXLAN
        )
        if nh.flags & kinds:
            self._nh_attach_oif(nh, oif_id, errno.ENODEV)
        elif nh.flags & C.NH_FLAG_TUNNEL_PBB:
            if not nh.flags & C.NH_FLAG_INDIRECT:
                raise TableError(errno.EINVAL, "PBB tunnel must be indirect")
        else:
            raise TableError(errno.EINVAL, "tunnel next hop without a tunnel type flag")

    def _nh_attach_oif(self, nh: NextHop, oif_id: int, code: int) -> None:
        vif = self.interfaces.get(oif_id)
        if vif is None:
            raise TableError(code, f"next hop {nh.id} names missing interface {oif_id}")
        self._hold_vif(vif)
        nh.oif = vif

    def nexthop_del(self, req: Request) -> None:
        """DEL ``vr_nexthop_req``; a missing id is -EINVAL as in the vRouter."""
        nh_id = _i(req, "nhr_id")
        nh = self.nexthops.pop(nh_id, None)
        if nh is None:
            raise TableError(errno.EINVAL, f"no next hop {nh_id}")
        self._put_nh(nh)

    def nexthop_get(self, req: Request) -> NextHop:
        nh_id = _i(req, "nhr_id")
        if not 0 <= nh_id < self.config.nexthops:
            raise TableError(errno.EINVAL, f"next hop id {nh_id} out of range")
        nh = self.nexthops.get(nh_id)
        if nh is None:
            raise TableError(errno.ENOENT, f"no next hop {nh_id}")
        return nh

    def nexthop_dump(self, marker: int) -> Iterator[NextHop]:
        for nh_id in self.nexthops.keys_after(marker):
            yield self.nexthops[nh_id]

    # -- MPLS labels -------------------------------------------------------------

    def _label_check(self, label: int) -> None:
        if not 0 <= label < self.config.mpls_labels:
            raise TableError(errno.EINVAL, f"label {label} out of range")

    def mpls_add(self, req: Request) -> None:
        label = _i(req, "mr_label")
        self._label_check(label)
        self._put_nh(self.mpls.pop(label, None))
        nh = self.nexthops.get(_i(req, "mr_nhid"))
        if nh is None:
            raise TableError(errno.EINVAL, f"label {label} names a missing next hop")
        self._hold_nh(nh)
        self.mpls[label] = nh

    def mpls_del(self, req: Request) -> None:
        label = _i(req, "mr_label")
        self._label_check(label)
        self._put_nh(self.mpls.pop(label, None))

    def mpls_get(self, req: Request) -> Fields:
        label = _i(req, "mr_label")
        self._label_check(label)
        nh = self.mpls.get(label)
        if nh is None:
            raise TableError(errno.ENOENT, f"no label {label}")
        return {"mr_label": label, "mr_nhid": nh.id}

    def mpls_dump(self, marker: int) -> Iterator[Fields]:
        for label in self.mpls.keys_after(marker):
            yield {"mr_label": label, "mr_nhid": self.mpls[label].id}

    # -- VXLAN -------------------------------------------------------------------

    def vxlan_add(self, req: Request) -> None:
        vnid = _i(req, "vxlanr_vnid")
        nh = self.nexthops.get(_i(req, "vxlanr_nhid"))
        if nh is None:
            raise TableError(errno.EINVAL, f"VNID {vnid} names a missing next hop")
        if not 0 <= vnid < C.VR_VXLAN_MAX_VNID:
            raise TableError(errno.EINVAL, f"VNID {vnid} out of range")
        self._hold_nh(nh)
        self._put_nh(self.vxlan.get(vnid))
        self.vxlan[vnid] = nh

    def vxlan_del(self, req: Request) -> None:
        self._put_nh(self.vxlan.pop(_i(req, "vxlanr_vnid"), None))

    def vxlan_get(self, req: Request) -> Fields:
        vnid = _i(req, "vxlanr_vnid")
        nh = self.vxlan.get(vnid)
        if nh is None:
            raise TableError(errno.ENOENT, f"no VNID {vnid}")
        return {"vxlanr_vnid": vnid, "vxlanr_nhid": nh.id}

    def vxlan_dump(self, marker: int) -> Iterator[Fields]:
        for vnid in self.vxlan.keys_after(marker):
            yield {"vxlanr_vnid": vnid, "vxlanr_nhid": self.vxlan[vnid].id}

    # -- mirrors -----------------------------------------------------------------

    def mirror_add(self, req: Request) -> None:
        index = _i(req, "mirr_index")
        if not 0 <= index < self.config.mirrors:
            raise TableError(errno.EINVAL, f"mirror index {index} out of range")
        nh = self.nexthops.get(_i(req, "mirr_nhid"))
        if nh is None:
            raise TableError(errno.EINVAL, f"mirror {index} names a missing next hop")
        self._hold_nh(nh)
        old = self.mirrors.get(index)
        self.mirrors[index] = (
            nh,
            {
                "mirr_flags": _i(req, "mirr_flags"),
                "mirr_vni": _i(req, "mirr_vni"),
                "mirr_vlan": _i(req, "mirr_vlan"),
            },
        )
        if old is not None:
            self._put_nh(old[0])

    def mirror_del(self, req: Request) -> None:
        index = _i(req, "mirr_index")
        if not 0 <= index < self.config.mirrors or index not in self.mirrors:
            raise TableError(errno.EINVAL, f"no mirror {index}")
        nh, _ = self.mirrors.pop(index)
        self._put_nh(nh)

    def _mirror_fields(self, index: int) -> Fields:
        nh, extra = self.mirrors[index]
        users = sum(1 for v in self.interfaces.values() if v.mir_id == index)
        return {"mirr_index": index, "mirr_nhid": nh.id, "mirr_users": users, **extra}

    def mirror_get(self, req: Request) -> Fields:
        index = _i(req, "mirr_index")
        if not 0 <= index < self.config.mirrors:
            raise TableError(errno.ENODEV, f"mirror index {index} out of range")
        if index not in self.mirrors:
            raise TableError(errno.ENOENT, f"no mirror {index}")
        return self._mirror_fields(index)

    def mirror_dump(self, marker: int) -> Iterator[Fields]:
        for index in self.mirrors.keys_after(marker):
            yield self._mirror_fields(index)

    # -- VRF assignment (per vif and VLAN) ---------------------------------------

    def vrf_assign_set(self, req: Request, delete: bool = False) -> None:
        """ADD/DEL ``vr_vrf_assign_req``: VLAN ``var_vlan_id`` of a vif into a VRF."""
        vif = self.interfaces.get(_i(req, "var_vif_index"))
        if vif is None:
            raise TableError(errno.EINVAL, "VRF assignment names a missing interface")
        vlan = _i(req, "var_vlan_id") & 0xFFFF
        if vlan >= C.VLAN_ID_MAX:
            raise TableError(errno.EINVAL, f"VLAN {vlan} out of range")
        vrf = _i(req, "var_vif_vrf")
        if delete or vrf == -1:
            vif.vrf_assign.pop(vlan, None)
            return
        if not 0 <= vrf < self.config.vrfs:
            raise TableError(errno.EINVAL, f"VRF {vrf} out of range")
        vif.vrf_assign[vlan] = (vrf, _i(req, "var_nh_id"))

    def vrf_assign_get(self, req: Request) -> Fields:
        vif = self.interfaces.get(_i(req, "var_vif_index"))
        if vif is None:
            raise TableError(errno.EINVAL, "VRF assignment names a missing interface")
        vlan = _i(req, "var_vlan_id") & 0xFFFF
        vrf, nh_id = vif.vrf_assign.get(vlan, (-1, 0))
        return {
            "var_vif_index": vif.idx,
            "var_vlan_id": vlan,
            "var_vif_vrf": vrf,
            "var_nh_id": nh_id,
        }

    def vrf_assign_dump(self, req: Request) -> Iterator[Fields]:
        """The VLAN assignments of one vif after ``var_marker`` (checked before iterating)."""
        vif = self.interfaces.get(_i(req, "var_vif_index"))
        if vif is None:
            raise TableError(errno.EINVAL, "VRF assignment names a missing interface")
        return self._vrf_assign_iter(vif, _i(req, "var_marker"))

    @staticmethod
    def _vrf_assign_iter(vif: Interface, marker: int) -> Iterator[Fields]:
        for vlan in sorted(vif.vrf_assign):
            if vlan > marker:
                vrf, nh_id = vif.vrf_assign[vlan]
                yield {
                    "var_vif_index": vif.idx,
                    "var_vlan_id": vlan,
                    "var_vif_vrf": vrf,
                    "var_nh_id": nh_id,
                }

    # -- VRF table (vr_vrf_req) --------------------------------------------------

    def _vrf_check(self, idx: int) -> None:
        if not 0 <= idx < self.config.vrfs:
            raise TableError(errno.EINVAL, f"VRF {idx} out of range")

    def vrf_add(self, req: Request) -> None:
        idx = _i(req, "vrf_idx")
        self._vrf_check(idx)
        self.vrfs[idx] = {
            "vrf_idx": idx,
            "vrf_flags": _i(req, "vrf_flags"),
            "vrf_hbfl_vif_idx": _i(req, "vrf_hbfl_vif_idx"),
            "vrf_hbfr_vif_idx": _i(req, "vrf_hbfr_vif_idx"),
        }

    def vrf_del(self, req: Request) -> None:
        idx = _i(req, "vrf_idx")
        self._vrf_check(idx)
        if self.vrfs.pop(idx, None) is None:
            raise TableError(errno.ENOENT, f"no VRF {idx}")

    def vrf_get(self, req: Request) -> Fields:
        idx = _i(req, "vrf_idx")
        self._vrf_check(idx)
        found = self.vrfs.get(idx)
        if found is None:
            raise TableError(errno.ENOENT, f"no VRF {idx}")
        return dict(found)

    def vrf_dump(self, marker: int) -> Iterator[Fields]:
        for idx in sorted(self.vrfs):
            if idx > marker:
                yield dict(self.vrfs[idx])

    # -- QoS and forwarding-class maps -------------------------------------------

    def qos_map_add(self, req: Request) -> None:
        qid = _i(req, "qmr_id")
        if not 0 <= qid < 4096:
            raise TableError(errno.EINVAL, f"QoS map {qid} out of range")
        names = (
            "qmr_dscp", "qmr_dscp_fc_id", "qmr_mpls_qos", "qmr_mpls_qos_fc_id",
            "qmr_dotonep", "qmr_dotonep_fc_id",
        )  # fmt: skip
        self.qos_maps[qid] = {"qmr_id": qid, **{n: _b(req, n) for n in names}}

    def qos_map_del(self, req: Request) -> None:
        qid = _i(req, "qmr_id")
        if self.qos_maps.pop(qid, None) is None:
            raise TableError(errno.EINVAL, f"no QoS map {qid}")

    def qos_map_get(self, req: Request) -> Fields:
        qid = _i(req, "qmr_id")
        found = self.qos_maps.get(qid)
        if found is None:
            raise TableError(errno.ENOENT, f"no QoS map {qid}")
        return dict(found)

    def qos_map_dump(self, marker: int) -> Iterator[Fields]:
        for qid in sorted(self.qos_maps):
            if qid > marker:
                yield dict(self.qos_maps[qid])

    def fc_map_add(self, req: Request) -> None:
        ids = _l(req, "fmr_id")
        lists = {n: _b(req, n) for n in ("fmr_dscp", "fmr_mpls_qos", "fmr_dotonep", "fmr_queue_id")}
        if not ids or any(len(v) != len(ids) for v in lists.values()):
            raise TableError(errno.EINVAL, "forwarding-class lists of different lengths")
        for pos, fc_id in enumerate(ids):
            if not 0 <= fc_id < 256:
                raise TableError(errno.EINVAL, f"forwarding class {fc_id} out of range")
            self.fc_maps[fc_id] = {
                "fmr_id": [fc_id],
                **{n: v[pos : pos + 1] for n, v in lists.items()},
            }

    def fc_map_del(self, req: Request) -> None:
        for fc_id in _l(req, "fmr_id"):
            self.fc_maps.pop(fc_id, None)

    def fc_map_get(self, req: Request) -> Fields:
        ids = _l(req, "fmr_id")
        fc_id = ids[0] if ids else 0
        found = self.fc_maps.get(fc_id)
        if found is None:
            raise TableError(errno.ENOENT, f"no forwarding class {fc_id}")
        return dict(found)

    def fc_map_dump(self, marker: int) -> Iterator[Fields]:
        for fc_id in sorted(self.fc_maps):
            if fc_id > marker:
                yield dict(self.fc_maps[fc_id])

    # -- drop statistics ---------------------------------------------------------

    def count_drop(self, reason: str, vif: Interface | None = None, n: int = 1) -> None:
        """Count a dropped packet under ``vds_<reason>`` (globally and on its vif)."""
        key = "vds_" + reason
        self.drop_stats[key] = self.drop_stats.get(key, 0) + n
        if vif is not None:
            vif.drops[key] = vif.drops.get(key, 0) + n

    def drop_stats_fields(self, core: int, vif: Interface | None = None) -> Fields:
        """``vr_drop_stats_req`` for all cores (core 0) or one core (core N = N-1)."""
        source = vif.drops if vif is not None else self.drop_stats
        if core not in (0, 1):
            source = {}
        return {"vds_core": core, **source}

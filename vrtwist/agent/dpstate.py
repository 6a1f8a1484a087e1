"""The desired datapath state: what every local port (and remote route) needs in the vRouter.

Plain state, no I/O (ARCHITECTURE layer 3).  For each port it derives the objects the real
agent installs over ksync and keeps them in one dictionary keyed by the object's identity
in the datapath; a synchroniser (``vrtwist.agent.ksync_sync``) turns the differences
between this and the datapath into ksync requests.

Per port: a virtual interface, an L3 and an L2 interface next hop, an MPLS label on the L3
next hop, the /32 (and /128) route of the VM and its bridge entry.  Per VRF: a receive and
a resolve next hop, the gateway and DNS /32 routes and the subnet route.  A virtual
network (vn-id) maps to one VRF.  Ids are allocated round robin, so a freed id is not
reused at once, and they are reserved again when adopted from a datapath dump.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from zope.interface import implementer

from vrtwist.agent.interfaces import (
    IControllerLink,
    IGatewayProgrammer,
    IPortObserver,
    IRouteProgrammer,
    LocalRoute,
)
from vrtwist.agent.model import Gateway, Port, ResourceExhausted, mac_for_vmi, parse_mac
from vrtwist.datapath import constants as C
from vrtwist.logfields import Logger

#: The vRouter's own MAC, source of every L2 rewrite towards a VM.
VROUTER_MAC = bytes.fromhex("00005e000100")
#: vif index of the agent's packet interface (pkt0); VM interfaces come after it.
AGENT_VIF = 2
FIRST_VM_VIF = 3
#: First label the agent allocates (0-15 are reserved MPLS labels).
FIRST_LABEL = 16
DEFAULT_MTU = 1500
VM_VIF_FLAGS = (C.VIF_FLAG_POLICY_ENABLED | C.VIF_FLAG_L3_ENABLED | C.VIF_FLAG_L2_ENABLED
                | C.VIF_FLAG_DHCP_ENABLED)

# kinds, in the order objects must be added (deletes run in reverse)
VIF, NH, MPLS, VXLAN, ROUTE = "vif", "nh", "mpls", "vxlan", "route"
MIRROR = "mirror"
RANK = {VIF: 0, NH: 1, MPLS: 2, VXLAN: 2, MIRROR: 2, ROUTE: 3}
#: UDP source port of the copies sent to an analyzer (the agent's mirror port)
MIRROR_SPORT = 8097

Key = tuple[Any, ...]


def host_u32(addr: str) -> int:
    """An IPv4 address as network-order bytes held in a host integer (docs/protocols/ksync.md)."""
    return int.from_bytes(ipaddress.IPv4Address(addr).packed, sys.byteorder)


def host_u64_pair(addr: str) -> tuple[int, int]:
    """An IPv6 address as the (upper, lower) halves under the same rule (docs/protocols/ksync.md)."""
    packed = ipaddress.IPv6Address(addr).packed
    return (int.from_bytes(packed[:8], sys.byteorder), int.from_bytes(packed[8:], sys.byteorder))


def vrf_name_for(vn_id: str) -> str:
    """Routing-instance name of a virtual network when no controller config names it."""
    return f"default-domain:vrtwist:{vn_id}:{vn_id}"


#: ``vifr_intf_status`` of vrtwist's datapath (``vrtwist.datapath.ports``): the vif's OS
#: device is attached, or the vif waits for its device to appear.
INTF_ATTACHED = 1
INTF_WAITING = 2


class IdAllocator:
    """Ids in ``[lo, hi)`` handed out round robin; ``reserve`` adopts an id already in use."""

    def __init__(self, what: str, lo: int, hi: int) -> None:
        self.what = what
        self.lo, self.hi = lo, hi
        self.used: set[int] = set()
        self._next = lo

    def alloc(self) -> int:
        """The next free id after the last one handed out; ResourceExhausted if none."""
        size = self.hi - self.lo
        if len(self.used) >= size:
            raise ResourceExhausted(f"no free {self.what} left ({size} in use)")
        i = self._next
        while i in self.used:
            i = i + 1 if i + 1 < self.hi else self.lo
        self.used.add(i)
        self._next = i + 1 if i + 1 < self.hi else self.lo
        return i

    def reserve(self, i: int) -> bool:
        """Mark ``i`` used (adoption at restart); False if outside the range or taken."""
        if not self.lo <= i < self.hi or i in self.used:
            return False
        self.used.add(i)
        return True

    def free(self, i: int) -> None:
        """Give ``i`` back (unknown ids are ignored)."""
        self.used.discard(i)

    def __len__(self) -> int:
        return len(self.used)


@dataclass
class _Vrf:
    name: str
    vrf_id: int
    rcv_nh: int
    resolve_nh: int
    ports: set[str] = field(default_factory=set)
    #: the L2-receive next hop the VRRP MAC's bridge entry points at (routes what VMs
    #: send to their gateway MAC instead of bridging it)
    l2rcv_nh: int = 0
    #: the policy-enabled next hop to the agent's interface that the gateway and DNS
    #: addresses route to (their packets reach the agent as NEXTHOP traps after a flow)
    pkt0_nh: int = 0
    #: the L2 flood (multicast composite) next hop of ff:ff:ff:ff:ff:ff: the VRF's local
    #: VMs; through it the datapath answers broadcast ARP requests by proxy
    flood_nh: int = 0
    #: with VXLAN: the VRF-translate next hop every local VNI points at (the inner frame
    #: is bridged in this VRF: to the VRRP MAC, so routed to the VM)
    vxlan_nh: int = 0
    #: the network's VXLAN id (configured, else :func:`vni_for`); in the VXLAN table
    #: with ``vxlan_nh``
    vni: int = 0
    #: the virtual network's uuid (empty for a gateway's routing instance)
    vn_id: str = ""
    # VRF-wide route key -> reference count (gateway/DNS/subnet routes shared by ports)
    shared: dict[Key, int] = field(default_factory=dict)


@dataclass
class _PortIds:
    vif: int
    l3_nh: int
    l2_nh: int
    label: int
    vrf: str
    #: the MPLS label of the L2 next hop (bridged traffic from other nodes)
    l2_label: int
    keys: list[Key]
    shared: list[tuple[Key, dict[str, Any]]]
    route: LocalRoute


@dataclass(frozen=True)
class Adopted:
    """Ids found in the datapath for a port's TAP at start-up (``--datapath=external``)."""

    vif: int
    vrf_id: int
    l3_nh: int
    l2_nh: int | None
    label: int | None
    rcv_nh: int | None = None
    resolve_nh: int | None = None
    l2_label: int | None = None


@implementer(IPortObserver, IRouteProgrammer, IGatewayProgrammer)
class DatapathModel:
    """Desired ksync objects for the local ports; observers are told which keys changed."""

    _log = Logger()

    def __init__(self, *, fabric_ip: str = "0.0.0.0", fabric_vif: int = 0,
                 fabric_name: str = "fabric0",
                 mtu: int = DEFAULT_MTU, max_vifs: int = C.VR_DEF_INTERFACES,
                 max_nhs: int = C.VR_DEF_NEXTHOPS, max_labels: int = C.VR_DEF_LABELS,
                 max_vrfs: int = C.VR_DEF_VRFS,
                 os_index: Callable[[str], int] | None = None,
                 if_mac: Callable[[str], bytes | None] | None = None) -> None:
        """``os_index`` and ``if_mac`` look up a host interface's index and MAC; the
        service injects :func:`host_if_index` and :func:`host_if_mac`. Without
        ``if_mac`` the model reads nothing from the host: the fabric vif gets
        ``VROUTER_MAC``."""
        self.fabric_ip = fabric_ip
        self.fabric_vif = fabric_vif
        self.fabric_name = fabric_name
        self.mtu = mtu
        self.vifs = IdAllocator("interface index", FIRST_VM_VIF, max_vifs)
        self.nhs = IdAllocator("next-hop id", 1, max_nhs)
        self.labels = IdAllocator("MPLS label", FIRST_LABEL, max_labels)
        self.vrf_ids = IdAllocator("VRF id", 1, max_vrfs)
        self.mirror_ids = IdAllocator("mirror index", 0, C.VR_DEF_MIRROR_ENTRIES - 1)
        #: analyzer name -> (mirror index, next hop, (address, UDP port))
        self._mirrors: dict[str, tuple[int, int, tuple[str, int]]] = {}
        #: (address, UDP port) -> (mirror index, next hop) found in the datapath at start
        self._adopted_mirrors: dict[tuple[str, int], tuple[int, int]] = {}
        self.desired: dict[Key, tuple[str, dict[str, Any]]] = {}
        self._vrfs: dict[str, _Vrf] = {}
        self._ports: dict[str, _PortIds] = {}
        self._tunnels: dict[tuple[str, str], tuple[int, int]] = {}  # (dip, encap) -> nh, refs
        #: remote node fabric address -> its fabric MAC, as resolved by ARP on the fabric
        #: (the destination of the tunnel next hops' Ethernet rewrite; zeros until known)
        self.fabric_macs: dict[str, bytes] = {}
        #: the receive next hop of this node's fabric address in VRF 0 (decapsulation)
        self.fabric_rcv_nh = 0
        #: (dip, encap) -> tunnel next-hop id found in the datapath at start-up: the
        #: first route through that tunnel takes the id again, so the flows the datapath
        #: kept (their RPF next hop) stay valid across an agent restart
        self._adopted_tunnels: dict[tuple[str, str], int] = {}
        self._remote: dict[tuple[str, str, int], tuple[list[Key], tuple[str, str]]] = {}
        self._remote_count: dict[str, int] = {}  # VRF name -> routes in self._remote
        self._adopted: dict[str, Adopted] = {}
        self._gateways: dict[str, tuple[str, int, int, list[Key]]] = {}
        self._os_index = os_index or host_if_index
        self._if_mac = if_mac or _no_mac
        #: VXLAN in use (``--encap`` lists it): each port's label is also a VNI, and
        #: tunnels to other nodes in VXLAN carry routed packets as EVPN type-5 frames
        self.vxlan = False
        self.listeners: list[Callable[[Iterable[Key]], None]] = []
        self.controller: IControllerLink | None = None
        self._batch_depth = 0
        self._batched_keys: list[Key] = []
        #: vn-id -> IPAM subnets from controller config (``prefix``, ``plen``, ``gateway``,
        #: ``dns``); used for a port whose REST data carries no ``plen``
        self.subnet_source: Callable[[str], list[dict[str, Any]]] | None = None
        #: VMI (port) uuid -> controller config of the interface (``mac``, ``ips``); fills
        #: what a port's REST data lacks: its addresses, and the MAC of a ``POST /vm`` port
        #: (whose REST MAC is only derived from its uuid)
        self.interface_source: Callable[[str], dict[str, Any] | None] | None = None
        #: vn-id -> the network's configured VXLAN id (REST network data or controller
        #: config), None for the one derived from its name (:func:`vni_for`)
        self.vni_source: Callable[[str], int | None] | None = None
        self._port_of: dict[str, Port] = {}  # port id -> the port as REST gave it
        self._programmed: dict[str, Port] = {}  # port id -> the port as programmed
        self._base()

    # plumbing --------------------------------------------------------------------------

    def _base(self) -> None:
        """The fabric interface (vif 0, which tunnel next hops leave by) and the agent's own
        interface (pkt0, vif 2, which receive next hops point at).  A vif 0 the datapath
        already has is left as it is (see ``ksync_sync``)."""
        self._set((VIF, self.fabric_vif), "vr_interface_req", {
            "vifr_idx": self.fabric_vif, "vifr_type": C.VIF_TYPE_PHYSICAL,
            "vifr_name": self.fabric_name, "vifr_transport": C.VIF_TRANSPORT_ETH,
            "vifr_vrf": 0, "vifr_mac": list(self._if_mac(self.fabric_name) or VROUTER_MAC),
            "vifr_mtu": self.mtu, "vifr_flags": C.VIF_FLAG_L3_ENABLED | C.VIF_FLAG_L2_ENABLED,
            "vifr_ip": host_u32(self.fabric_ip), "vifr_os_idx": self._os_index(self.fabric_name),
        })
        self._set((VIF, AGENT_VIF), "vr_interface_req", {
            "vifr_idx": AGENT_VIF, "vifr_type": C.VIF_TYPE_AGENT, "vifr_name": "pkt0",
            "vifr_transport": C.VIF_TRANSPORT_SOCKET, "vifr_vrf": 0,
            "vifr_mac": list(VROUTER_MAC), "vifr_mtu": self.mtu, "vifr_flags": 0,
        })
        if self.fabric_ip not in ("", "0.0.0.0"):
            self._fabric_receive()

    def _fabric_receive(self) -> None:
        """VRF 0: this node's fabric address is a receive next hop, so tunnel packets sent
        to it are decapsulated (the label or VNI then picks the VM), and the datapath
        answers ARP for it on the fabric (proxy flag: there is no host interface here to
        answer, the fabric vif's MAC is the answer)."""
        self.fabric_rcv_nh = nh = self.nhs.alloc()
        self._set((NH, nh), "vr_nexthop_req", {
            "nhr_id": nh, "nhr_type": C.NH_RCV, "nhr_family": C.AF_INET, "nhr_vrf": 0,
            "nhr_encap_oif_id": [AGENT_VIF], "nhr_flags": C.NH_FLAG_VALID})
        k = _inet_key(0, self.fabric_ip, 32)
        self._set(k, "vr_route_req", _route_fields(k, nh, 0, C.VR_RT_ARP_PROXY_FLAG, None))

    def fabric_mac(self) -> bytes:
        """The fabric interface's MAC (vif 0), source of everything sent on the fabric."""
        return bytes(self.desired[(VIF, self.fabric_vif)][1]["vifr_mac"])

    def tunnel_destinations(self) -> set[str]:
        """Fabric addresses of the remote nodes some tunnel next hop leads to (the ARP
        resolver keeps their MACs)."""
        return {dip for dip, _encap in self._tunnels}

    def set_fabric_mac(self, address: str, mac: bytes | None) -> None:
        """The fabric MAC of remote node ``address`` (None: forgotten): every tunnel next
        hop to it is rewritten with that Ethernet destination."""
        if mac is None:
            if self.fabric_macs.pop(address, None) is None:
                return
        else:
            if len(mac) != 6:
                raise ValueError(f"fabric MAC of {address} is not 6 bytes")
            if self.fabric_macs.get(address) == mac:
                return
            self.fabric_macs[address] = mac
        keys: list[Key] = []
        encap = list(self._tunnel_encap(address))
        for (dip, _encap), (nh, _refs) in self._tunnels.items():
            if dip == address:
                # a new fields dict: the synchroniser compares it with what it applied
                name, fields = self.desired[(NH, nh)]
                self.desired[(NH, nh)] = (name, {**fields, "nhr_encap": encap})
                keys.append((NH, nh))
        if keys:
            self._notify(keys)

    def _tunnel_encap(self, dip: str) -> bytes:
        """Ethernet rewrite of a tunnel to ``dip``: its resolved MAC (zeros until then),
        from the fabric MAC."""
        return self.fabric_macs.get(dip, bytes(6)) + self.fabric_mac() + b"\x08\x00"

    def _set(self, key: Key, name: str, fields: dict[str, Any]) -> None:
        self.desired[key] = (name, fields)

    def _notify(self, keys: Iterable[Key]) -> None:
        if self._batch_depth:
            self._batched_keys.extend(keys)  # listeners take sets: repeats are harmless
            return
        ks = list(keys)
        for listener in self.listeners:
            listener(ks)

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Changes made inside reach the listeners once, at the end (nested: at the end of
        the outermost), so the synchroniser plans and bunches them together: a burst of
        routes from the controller becomes 16 requests per ksync message, not one."""
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
            if not self._batch_depth and self._batched_keys:
                keys, self._batched_keys = self._batched_keys, []
                self._notify(keys)

    def set_limits(self, *, interfaces: int, nexthops: int, labels: int, vrfs: int) -> None:
        """Table sizes reported by the datapath (``vrouter_ops``) bound the allocators;
        ids already handed out are kept."""
        for alloc, hi in ((self.vifs, interfaces), (self.nhs, nexthops),
                          (self.labels, labels), (self.vrf_ids, vrfs)):
            if hi > alloc.lo:
                alloc.hi = max(hi, max(alloc.used, default=alloc.lo) + 1)
                if alloc._next >= alloc.hi:
                    alloc._next = alloc.lo

    def adopt(self, system_name: str, ids: Adopted) -> None:
        """Remember ids found in the datapath for a TAP so its port keeps them."""
        self._adopted[system_name] = ids

    def adopt_tunnel(self, dip: str, encap: str, nh_id: int, mac: bytes) -> None:
        """A tunnel next hop found in the datapath at start-up: its id is kept for the
        routes learnt again, and its resolved MAC is used until ARP refreshes it."""
        if self.nhs.reserve(nh_id):  # now, before a VRF or port could be given it
            self._adopted_tunnels[(dip, encap)] = nh_id
        if len(mac) == 6 and any(mac):
            self.fabric_macs.setdefault(dip, bytes(mac))

    def vrf_id_of(self, vn_id: str) -> int | None:
        """The VRF id of a virtual network, if it has local ports."""
        v = self._vrfs.get(vrf_name_for(vn_id))
        return v.vrf_id if v else None

    # VRFs ------------------------------------------------------------------------------

    def _vrf(self, name: str, adopted: Adopted | None, vn_id: str = "") -> _Vrf:
        v = self._vrfs.get(name)
        if v is not None:
            return v
        vrf_id = None
        if adopted is not None and self.vrf_ids.reserve(adopted.vrf_id):
            vrf_id = adopted.vrf_id
        if vrf_id is None:
            vrf_id = self.vrf_ids.alloc()
        rcv = self._take_nh(adopted.rcv_nh if adopted else None)
        res = self._take_nh(adopted.resolve_nh if adopted else None)
        v = _Vrf(name, vrf_id, rcv, res, l2rcv_nh=self._take_nh(None),
                 pkt0_nh=self._take_nh(None), flood_nh=self._flood_id(vrf_id),
                 vni=self._vni(name, vn_id), vn_id=vn_id)
        self._vrfs[name] = v
        self._set_flood(v)
        if self.vxlan and v.vni:
            v.vxlan_nh = self._take_nh(None)
            self._set((NH, v.vxlan_nh), "vr_nexthop_req", {
                "nhr_id": v.vxlan_nh, "nhr_type": C.NH_VRF_TRANSLATE,
                "nhr_family": C.AF_BRIDGE, "nhr_vrf": vrf_id, "nhr_flags": C.NH_FLAG_VALID})
            self._set((VXLAN, v.vni), "vr_vxlan_req",
                      {"vxlanr_vnid": v.vni, "vxlanr_nhid": v.vxlan_nh})
        self._set((NH, v.pkt0_nh), "vr_nexthop_req", {
            "nhr_id": v.pkt0_nh, "nhr_type": C.NH_ENCAP, "nhr_family": C.AF_INET,
            "nhr_vrf": vrf_id, "nhr_encap_oif_id": [AGENT_VIF],
            "nhr_encap": list(VROUTER_MAC + VROUTER_MAC + b"\x08\x00"),
            "nhr_flags": C.NH_FLAG_VALID | C.NH_FLAG_POLICY_ENABLED})
        self._set((NH, v.l2rcv_nh), "vr_nexthop_req", {
            "nhr_id": v.l2rcv_nh, "nhr_type": C.NH_L2_RCV, "nhr_family": C.AF_BRIDGE,
            "nhr_vrf": vrf_id, "nhr_flags": C.NH_FLAG_VALID})
        self._set(_vrrp_key(vrf_id), "vr_route_req", {
            "rtr_vrf_id": vrf_id, "rtr_family": C.AF_BRIDGE, "rtr_mac": list(VROUTER_MAC),
            "rtr_nh_id": v.l2rcv_nh, "rtr_label": 0, "rtr_label_flags": 0,
            "rtr_prefix": [], "rtr_prefix_len": 0})
        self._set((NH, rcv), "vr_nexthop_req", {
            "nhr_id": rcv, "nhr_type": C.NH_RCV, "nhr_family": C.AF_INET, "nhr_vrf": vrf_id,
            "nhr_encap_oif_id": [AGENT_VIF], "nhr_flags": C.NH_FLAG_VALID})
        self._set((NH, res), "vr_nexthop_req", {
            "nhr_id": res, "nhr_type": C.NH_RESOLVE, "nhr_family": C.AF_INET,
            "nhr_vrf": vrf_id, "nhr_flags": C.NH_FLAG_VALID})
        return v

    def _wanted_vni(self, vrf_name: str, vn_id: str) -> int:
        """The configured VNI of network ``vn_id``, else the one derived from the name."""
        configured = None
        if vn_id and self.vni_source is not None:
            try:
                configured = self.vni_source(vn_id)
            except Exception as e:  # noqa: BLE001 - bad config source: derived VNI, logged
                self._log.warn("VNI of {vn} unusable: {e}", vn=vn_id, e=e)
        return configured if configured else vni_for(vrf_name)

    def _vni(self, vrf_name: str, vn_id: str = "") -> int:
        """The network's VNI, 0 (no VXLAN for it) when another local network has it."""
        vni = self._wanted_vni(vrf_name, vn_id)
        clash = next((o.name for o in self._vrfs.values()
                      if o.vni == vni and o.name != vrf_name), None)
        if clash is not None:
            self._log.error("VNI {vni} of {vrf} is {other}'s too: no VXLAN for {vrf}",
                            vni=vni, vrf=vrf_name, other=clash)
            return 0
        return vni

    def _flood_id(self, vrf_id: int) -> int:
        """The flood next hop's id: from the top of the id space, so that it sorts after
        the members it lists (requests go out in id order) and is the same after a
        restart."""
        want = self.nhs.hi - vrf_id
        return want if self.nhs.reserve(want) else self.nhs.alloc()

    def _set_flood(self, v: _Vrf) -> list[Key]:
        """(Re)write the VRF's flood next hop with its current local VMs."""
        members = sorted(self._ports[p].l2_nh for p in v.ports if p in self._ports)
        self._set((NH, v.flood_nh), "vr_nexthop_req", {
            "nhr_id": v.flood_nh, "nhr_type": C.NH_COMPOSITE, "nhr_family": C.AF_BRIDGE,
            "nhr_vrf": v.vrf_id, "nhr_flags": C.NH_FLAG_VALID | C.NH_FLAG_MCAST,
            "nhr_nh_list": members, "nhr_label_list": [0] * len(members)})
        self._set(_bcast_key(v.vrf_id), "vr_route_req", {
            "rtr_vrf_id": v.vrf_id, "rtr_family": C.AF_BRIDGE, "rtr_mac": list(_BCAST),
            "rtr_nh_id": v.flood_nh, "rtr_label": 0, "rtr_label_flags": 0,
            "rtr_prefix": [], "rtr_prefix_len": 0})
        return [(NH, v.flood_nh)]

    def _take_nh(self, want: int | None) -> int:
        if want is not None and self.nhs.reserve(want):
            return want
        return self.nhs.alloc()

    def _drop_vrf(self, v: _Vrf) -> list[Key]:
        del self._vrfs[v.name]
        keys = _vrf_base_keys(v)
        for k in keys:
            self.desired.pop(k, None)
        self.nhs.free(v.rcv_nh)
        self.nhs.free(v.resolve_nh)
        self.nhs.free(v.l2rcv_nh)
        self.nhs.free(v.pkt0_nh)
        self.nhs.free(v.flood_nh)
        if v.vxlan_nh:
            self.nhs.free(v.vxlan_nh)
        self.vrf_ids.free(v.vrf_id)
        return keys

    # IPortObserver ---------------------------------------------------------------------

    def portAdded(self, port: Port) -> None:
        if port.id in self._ports:
            self.portDeleted(port)
        rest, port = port, self._with_config(port)
        adopted = self._adopted.pop(port.system_name, None)
        name = vrf_name_for(port.vn_id)
        new_vrf = name not in self._vrfs
        v = self._vrf(name, adopted, port.vn_id)
        try:
            vif, l3, l2, label, l2_label = self._take_ids(adopted)
        except ResourceExhausted:
            if new_vrf and not v.ports:
                self._drop_vrf(v)
            raise
        mac = parse_mac(port.mac_address)
        keys: list[Key] = []
        vif_fields: dict[str, Any] = {
            "vifr_idx": vif, "vifr_type": C.VIF_TYPE_VIRTUAL, "vifr_name": port.system_name,
            "vifr_transport": C.VIF_TRANSPORT_VIRTUAL, "vifr_vrf": v.vrf_id,
            "vifr_mcast_vrf": v.vrf_id, "vifr_mac": list(VROUTER_MAC), "vifr_mtu": self.mtu,
            "vifr_flags": VM_VIF_FLAGS, "vifr_nh_id": l3,
            "vifr_os_idx": self._os_index(port.system_name),
            "vifr_ip": host_u32(port.ip_address) if port.ip_address else 0,
        }
        if port.ip6_address:
            vifr_ip6_u, vifr_ip6_l = host_u64_pair(port.ip6_address)
            vif_fields.update(vifr_ip6_u=vifr_ip6_u, vifr_ip6_l=vifr_ip6_l)
        self._set((VIF, vif), "vr_interface_req", vif_fields)
        keys.append((VIF, vif))
        self._set((NH, l3), "vr_nexthop_req", {
            "nhr_id": l3, "nhr_type": C.NH_ENCAP, "nhr_family": C.AF_INET, "nhr_vrf": v.vrf_id,
            "nhr_encap_oif_id": [vif], "nhr_encap": list(mac + VROUTER_MAC + b"\x08\x00"),
            "nhr_flags": C.NH_FLAG_VALID | C.NH_FLAG_POLICY_ENABLED})
        self._set((NH, l2), "vr_nexthop_req", {
            "nhr_id": l2, "nhr_type": C.NH_ENCAP, "nhr_family": C.AF_BRIDGE,
            "nhr_vrf": v.vrf_id, "nhr_encap_oif_id": [vif], "nhr_encap": [],
            "nhr_flags": C.NH_FLAG_VALID})
        keys += [(NH, l3), (NH, l2)]
        # the L3 label to the policy-enabled L3 next hop (inet routes), the L2 label to the
        # bridge next hop (EVPN routes); with VXLAN the network's VNI replaces the latter
        self._set((MPLS, label), "vr_mpls_req", {"mr_label": label, "mr_nhid": l3})
        self._set((MPLS, l2_label), "vr_mpls_req", {"mr_label": l2_label, "mr_nhid": l2})
        keys += [(MPLS, label), (MPLS, l2_label)]
        # the route carries the VM's MAC: the datapath answers ARP for it by proxy
        route_flags = C.VR_RT_LABEL_VALID_FLAG | C.VR_RT_ARP_PROXY_FLAG
        for address, plen in ((port.ip_address, 32), (port.ip6_address, 128)):
            if address:
                k = _inet_key(v.vrf_id, address, plen)
                self._set(k, "vr_route_req", _route_fields(k, l3, label, route_flags, mac))
                keys.append(k)
        bk: Key = (ROUTE, C.AF_BRIDGE, v.vrf_id, mac)
        self._set(bk, "vr_route_req", {
            "rtr_vrf_id": v.vrf_id, "rtr_family": C.AF_BRIDGE, "rtr_mac": list(mac),
            "rtr_nh_id": l2, "rtr_label": l2_label,
            "rtr_label_flags": C.VR_BE_LABEL_VALID_FLAG, "rtr_prefix": [], "rtr_prefix_len": 0})
        keys.append(bk)
        shared = self._shared_routes(port, v)
        for sk, fields in shared:
            if v.shared.get(sk, 0) == 0:
                self._set(sk, "vr_route_req", fields)
                keys.append(sk)
            v.shared[sk] = v.shared.get(sk, 0) + 1
        v.ports.add(port.id)
        route = LocalRoute(port_id=port.id, vm_id=port.instance_id, vn_id=port.vn_id,
                           vrf_name=name, mac=port.mac_address, ip4=port.ip_address,
                           ip6=port.ip6_address, label=label, nexthop=self.fabric_ip,
                           l2_label=l2_label, vni=v.vni)
        self._ports[port.id] = _PortIds(vif, l3, l2, label, name, l2_label, keys, shared,
                                        route)
        self._port_of[port.id] = rest
        self._programmed[port.id] = port
        changed = keys + self._set_flood(v)  # the VRF's, not the port's
        if new_vrf:
            changed = _vrf_base_keys(v) + changed
        self._notify(changed)
        if self.controller is not None:
            self.controller.localRouteAdded(route)

    def _take_ids(self, adopted: Adopted | None) -> tuple[int, int, int, int, int]:
        """A new port's vif, L3 and L2 next hops, L3 and L2 labels (the adopted ones when
        free); all or none."""
        taken: list[tuple[IdAllocator, int]] = []

        def take(alloc: IdAllocator, want: int | None) -> int:
            i = want if want is not None and alloc.reserve(want) else alloc.alloc()
            taken.append((alloc, i))
            return i

        try:
            if adopted is None:
                return (take(self.vifs, None), take(self.nhs, None), take(self.nhs, None),
                        take(self.labels, None), take(self.labels, None))
            return (take(self.vifs, adopted.vif), take(self.nhs, adopted.l3_nh),
                    take(self.nhs, adopted.l2_nh), take(self.labels, adopted.label),
                    take(self.labels, adopted.l2_label))
        except ResourceExhausted:
            for alloc, i in taken:
                alloc.free(i)
            raise

    def _with_config(self, port: Port) -> Port:
        """``port`` with what controller config adds where its REST data lacks it: an
        IPv4 / IPv6 address (the interface's instance IPs) when it has none of that
        family, and the configured MAC when its MAC is the one derived from its uuid (a
        ``POST /vm`` port).  Unusable config values are logged and left out."""
        source = self.interface_source
        if source is None:
            return port
        try:
            info = source(port.id)
        except Exception as e:  # noqa: BLE001 - bad config source: port kept, logged
            self._log.warn("config of interface {uuid} unusable: {e}", uuid=port.id, e=e)
            return port
        if not info:
            return port
        changes: dict[str, Any] = {}
        for ip in info.get("ips") or ():
            try:
                addr = ipaddress.ip_address(str(ip))
            except ValueError:
                self._log.warn("interface {uuid}: instance IP {ip!r} from config ignored",
                               uuid=port.id, ip=ip)
                continue
            if addr.version == 4 and port.ip_address is None:
                changes.setdefault("ip_address", str(addr))
            elif addr.version == 6 and port.ip6_address is None:
                changes.setdefault("ip6_address", str(addr))
        mac = str(info.get("mac") or "")
        if mac and port.mac_address.lower() == mac_for_vmi(port.id).lower():
            try:
                changes["mac_address"] = ":".join(f"{b:02x}" for b in parse_mac(mac))
            except ValueError as e:
                self._log.warn("interface {uuid}: MAC from config ignored: {e}",
                               uuid=port.id, e=e)
        return replace(port, **changes) if changes else port

    def refresh_interfaces(self) -> None:
        """Controller config changed: a port whose config-derived addresses or MAC
        changed is programmed again, its old routes withdrawn and its new ones published.
        New addresses keep the port's ids (vif, next hops, label, VRF); a new MAC makes a
        new vif, as the datapath does not change the MAC of an existing one."""
        changed = []
        for pid, rest in self._port_of.items():
            new, old = self._with_config(rest), self._programmed.get(pid)
            if new != old:
                changed.append((rest, old is not None and new.mac_address == old.mac_address))
        if not changed:
            return
        with self.batched():
            for rest, keep_ids in changed:
                ids = self._ports[rest.id]
                v = self._vrfs[ids.vrf]
                # the VRF keeps its id either way (-1: no id wanted, a fresh one is taken)
                self._adopted[rest.system_name] = Adopted(
                    vif=ids.vif if keep_ids else -1, vrf_id=v.vrf_id,
                    l3_nh=ids.l3_nh if keep_ids else -1,
                    l2_nh=ids.l2_nh if keep_ids else None,
                    label=ids.label if keep_ids else None,
                    l2_label=ids.l2_label if keep_ids else None,
                    rcv_nh=v.rcv_nh, resolve_nh=v.resolve_nh)
                try:
                    self.portAdded(rest)
                except (ValueError, ResourceExhausted) as e:
                    self._adopted.pop(rest.system_name, None)
                    self._log.error("port {uuid} not reprogrammed after a config change: "
                                    "{e}", uuid=rest.id, e=e)

    def refresh_config(self) -> None:
        """Controller config changed: interfaces first, then IPAM subnets and VNIs, one
        batch."""
        with self.batched():
            self.refresh_interfaces()
            self.refresh_subnets()
            self.refresh_vnis()

    def refresh_vnis(self) -> None:
        """A network's configured VNI changed: its VXLAN-table entry moves to the new VNI
        and its ports' routes are published again with it."""
        keys: list[Key] = []
        moved: list[_Vrf] = []
        for v in list(self._vrfs.values()):
            if not v.vn_id:
                continue
            v_old = v.vni
            v.vni = 0  # not a clash with itself
            new = self._vni(v.name, v.vn_id)
            v.vni = v_old
            if new == v_old:
                continue
            self._log.info("VNI of {vrf}: {old} -> {new}", vrf=v.name, old=v_old, new=new)
            if v.vxlan_nh and v_old:
                self.desired.pop((VXLAN, v_old), None)
                keys.append((VXLAN, v_old))
            v.vni = new
            if self.vxlan and new:
                if not v.vxlan_nh:
                    v.vxlan_nh = self._take_nh(None)
                    self._set((NH, v.vxlan_nh), "vr_nexthop_req", {
                        "nhr_id": v.vxlan_nh, "nhr_type": C.NH_VRF_TRANSLATE,
                        "nhr_family": C.AF_BRIDGE, "nhr_vrf": v.vrf_id,
                        "nhr_flags": C.NH_FLAG_VALID})
                    keys.append((NH, v.vxlan_nh))
                self._set((VXLAN, new), "vr_vxlan_req",
                          {"vxlanr_vnid": new, "vxlanr_nhid": v.vxlan_nh})
                keys.append((VXLAN, new))
            moved.append(v)
        if keys:
            self._notify(keys)
        for v in moved:
            for pid in sorted(v.ports):
                ids = self._ports.get(pid)
                if ids is None:
                    continue
                ids.route = replace(ids.route, vni=v.vni)
                if self.controller is not None:
                    self.controller.localRouteAdded(ids.route)

    def _subnet_of(self, port: Port) -> tuple[int | None, str | None, str | None]:
        """(plen, gateway, dns) of a port: its own REST data, else the IPAM subnet of its
        network that holds its address (controller config), else nothing."""
        if port.plen is not None or self.subnet_source is None or not port.ip_address:
            return port.plen, port.gateway, port.dns_server
        try:
            subnets = self.subnet_source(port.vn_id)
            ip = ipaddress.IPv4Address(port.ip_address)
            for sub in subnets:
                net = ipaddress.IPv4Network(f"{sub['prefix']}/{sub['plen']}", strict=False)
                if ip in net:
                    return (net.prefixlen, str(sub.get("gateway") or "") or None,
                            str(sub.get("dns") or "") or None)
        except (ValueError, KeyError, TypeError) as e:
            self._log.warn("IPAM subnets of {vn} unusable: {e}", vn=port.vn_id, e=e)
        return port.plen, port.gateway, port.dns_server

    def refresh_subnets(self) -> None:
        """Controller config changed: re-derive every port's gateway, DNS and subnet
        routes (reference counted per VRF) without touching its ids."""
        keys: list[Key] = []
        for pid, ids in self._ports.items():
            port = self._programmed.get(pid)
            v = self._vrfs.get(ids.vrf)
            if port is None or v is None:
                continue
            new = self._shared_routes(port, v)
            if [k for k, _ in new] == [k for k, _ in ids.shared]:
                continue
            for sk, fields in new:
                if v.shared.get(sk, 0) == 0:
                    self._set(sk, "vr_route_req", fields)
                    keys.append(sk)
                v.shared[sk] = v.shared.get(sk, 0) + 1
            self._release_shared(v, ids.shared, keys)
            ids.shared = new
        if keys:
            self._notify(keys)

    # The names these methods had before the naming rule (docs/contributing.md, "Names");
    # kept because docs/agent.md documented them.
    tunnelDestinations = tunnel_destinations
    setFabricMac = set_fabric_mac
    refreshConfig = refresh_config
    refreshSubnets = refresh_subnets

    def _release_shared(
        self, v: _Vrf, shared: list[tuple[Key, dict[str, Any]]], keys: list[Key]
    ) -> None:
        """Drop one port's references to its VRF's shared routes; the last one removes a
        route (its key goes to ``keys`` for the synchroniser)."""
        for sk, _fields in shared:
            n = v.shared.get(sk, 0) - 1
            if n <= 0:
                v.shared.pop(sk, None)
                self.desired.pop(sk, None)
                keys.append(sk)
            else:
                v.shared[sk] = n

    def _shared_routes(self, port: Port, v: _Vrf) -> list[tuple[Key, dict[str, Any]]]:
        out: list[tuple[Key, dict[str, Any]]] = []
        flags = C.VR_RT_ARP_PROXY_FLAG
        plen, gateway, dns = self._subnet_of(port)
        for addr in sorted({gateway, dns} - {None, "0.0.0.0"}):  # type: ignore[type-var]
            assert addr is not None
            k = _inet_key(v.vrf_id, addr, 32)
            out.append((k, _route_fields(k, v.pkt0_nh, 0, flags, None)))
        # the IPv6 gateway and DNS addresses likewise, and the agent's link-local address
        # (the source of its router advertisements, a VM's default router): the datapath
        # answers neighbour solicitations for them with the VRRP MAC
        six = {port.ip6_gateway, port.ip6_dns_server} - {None}
        if port.ip6_address and port.ip6_plen is not None:
            six.add(AGENT_LINK_LOCAL)
        for addr in sorted(six):  # type: ignore[type-var]
            assert addr is not None
            k = _inet_key(v.vrf_id, addr, 128)
            out.append((k, _route_fields(k, v.pkt0_nh, 0, flags, None)))
        if port.ip_address and plen is not None and plen <= 30:
            net = ipaddress.IPv4Network(f"{port.ip_address}/{plen}", strict=False)
            k = _inet_key(v.vrf_id, str(net.network_address), net.prefixlen)
            out.append((k, _route_fields(k, v.resolve_nh, 0, C.VR_RT_ARP_FLOOD_FLAG, None)))
        return out

    def portDeleted(self, port: Port) -> None:
        ids = self._ports.pop(port.id, None)
        self._port_of.pop(port.id, None)
        self._programmed.pop(port.id, None)
        if ids is None:
            return
        keys = list(ids.keys)
        for k in keys:
            self.desired.pop(k, None)
        v = self._vrfs[ids.vrf]
        v.ports.discard(port.id)
        if v.ports:
            keys += self._set_flood(v)
        self._release_shared(v, ids.shared, keys)
        self.vifs.free(ids.vif)
        self.nhs.free(ids.l3_nh)
        self.nhs.free(ids.l2_nh)
        self.labels.free(ids.label)
        self.labels.free(ids.l2_label)
        if not v.ports and not self._remote_in(v):
            keys += self._drop_vrf(v)
        self._notify(keys)
        if self.controller is not None:
            self.controller.localRouteDeleted(ids.route)

    def _remote_in(self, v: _Vrf) -> bool:
        """Routes learnt from the controller still use the VRF (a count, not a scan)."""
        return bool(self._remote_count.get(v.name))

    def host_mac(self) -> str:
        """The host interface's MAC (the fabric device's, as the vhost interface takes it;
        the vRouter MAC when there is no such device), for the controller link."""
        mac = self._if_mac(self.fabric_name) or VROUTER_MAC
        return ":".join("%02x" % b for b in mac)

    # mirrors -----------------------------------------------------------------------------

    def set_mirrors(self, analyzers: dict[str, tuple[str, int]]) -> None:
        """Keep one datapath mirror entry per analyzer (name -> (address, UDP port)), as
        the real agent's ``MirrorTable``: a tunnel next hop in plain UDP from this node's
        fabric address to the analyzer (its Ethernet rewrite resolved by ARP like the other
        tunnels') and a ``vr_mirror_req`` with the dynamic flag (the copy carries the
        mirror metadata). Entries of analyzers no longer named are deleted."""
        keys: list[Key] = []
        for name, (index, nh, dest) in list(self._mirrors.items()):
            if analyzers.get(name) == dest:
                continue
            del self._mirrors[name]
            self._tunnels.pop((dest[0], f"mirror:{dest[1]}"), None)
            for key in ((MIRROR, index), (NH, nh)):
                self.desired.pop(key, None)
                keys.append(key)
            self.mirror_ids.free(index)
            self.nhs.free(nh)
        adopted, self._adopted_mirrors = self._adopted_mirrors, {}
        for name, (ip, port) in sorted(analyzers.items()):
            if name in self._mirrors:
                continue
            ids = adopted.pop((ip, port), None) or self._new_mirror_ids(name)
            if ids is None:
                continue
            index, nh = ids
            self._set((NH, nh), "vr_nexthop_req", {
                "nhr_id": nh, "nhr_type": C.NH_TUNNEL, "nhr_family": C.AF_INET, "nhr_vrf": 0,
                "nhr_encap_oif_id": [self.fabric_vif], "nhr_encap": list(self._tunnel_encap(ip)),
                "nhr_tun_sip": host_u32(self.fabric_ip), "nhr_tun_dip": host_u32(ip),
                "nhr_tun_sport": _wire_port(MIRROR_SPORT), "nhr_tun_dport": _wire_port(port),
                "nhr_flags": C.NH_FLAG_VALID | C.NH_FLAG_TUNNEL_UDP})
            self._set((MIRROR, index), "vr_mirror_req", {
                "mirr_index": index, "mirr_nhid": nh, "mirr_flags": C.VR_MIRROR_FLAG_DYNAMIC,
                "mirr_vni": 0})
            self._mirrors[name] = (index, nh, (ip, port))
            self._tunnels[(ip, f"mirror:{port}")] = (nh, 1)
            keys += [(NH, nh), (MIRROR, index)]
        for index, nh in adopted.values():  # left by the previous agent, named no more
            self.mirror_ids.free(index)
            self.nhs.free(nh)
            keys += [(MIRROR, index), (NH, nh)]
        if keys:
            self._notify(keys)

    def _new_mirror_ids(self, name: str) -> tuple[int, int] | None:
        try:
            index = self.mirror_ids.alloc()
        except ResourceExhausted:
            self._log.error("no mirror index left for analyzer {name}", name=name)
            return None
        try:
            return index, self.nhs.alloc()
        except ResourceExhausted:
            self.mirror_ids.free(index)
            self._log.error("no next-hop id left for analyzer {name}", name=name)
            return None

    def adopt_mirror(self, index: int, nh_id: int, dip: str, port: int, mac: bytes) -> None:
        """An analyzer's mirror entry found in the datapath at start-up: the next
        :meth:`set_mirrors` naming the same address and port takes its ids again (so the
        flows kept through a restart still name the right index); one no policy names
        any more is deleted then."""
        if self.mirror_ids.reserve(index):
            if self.nhs.reserve(nh_id):
                self._adopted_mirrors[(dip, port)] = (index, nh_id)
            else:
                self.mirror_ids.free(index)
        if len(mac) == 6 and any(mac):
            self.fabric_macs.setdefault(dip, bytes(mac))

    def mirror_index(self, name: str) -> int | None:
        """The datapath mirror index of analyzer ``name`` (None: it has none)."""
        found = self._mirrors.get(name)
        return found[0] if found is not None else None

    def port_ids(self, uuid: str) -> dict[str, int] | None:
        """The ids a port got (vif, l3_nh, l2_nh, label, vrf), for tests and GET extras."""
        ids = self._ports.get(uuid)
        if ids is None:
            return None
        v = self._vrfs[ids.vrf]
        return {"vif": ids.vif, "l3_nh": ids.l3_nh, "l2_nh": ids.l2_nh, "label": ids.label,
                "l2_label": ids.l2_label, "vni": v.vni, "vrf": v.vrf_id}

    def port_on_vif(self, vif: int) -> tuple[Port, int] | None:
        """The port (as programmed) behind VM vif ``vif`` and its VRF id, for the packet
        services that get a vif index with each trapped packet."""
        for uuid, ids in self._ports.items():
            if ids.vif == vif:
                return self._programmed[uuid], self._vrfs[ids.vrf].vrf_id
        return None

    def ports_in_vrf(self, vrf_id: int) -> list[Port]:
        """The ports (as programmed) of the network behind VRF ``vrf_id``."""
        return [self._programmed[uuid] for uuid, ids in self._ports.items()
                if self._vrfs[ids.vrf].vrf_id == vrf_id]

    # IGatewayProgrammer ----------------------------------------------------------------

    def gatewayAdded(self, gateway: Gateway) -> None:
        """A vgw: a gateway vif in the routing instance's VRF, an interface next hop, the
        gateway's ``routes`` in that VRF and its ``subnets`` in the fabric VRF 0, both
        through the vgw (traffic between the overlay and the host's kernel)."""
        if gateway.interface in self._gateways:
            self.gatewayDeleted(gateway.interface)
        new_vrf = gateway.routing_instance not in self._vrfs
        v = self._vrf(gateway.routing_instance, None)
        try:
            vif = self.vifs.alloc()
        except ResourceExhausted:
            if new_vrf:
                self._drop_vrf(v)
            raise
        try:
            nh = self.nhs.alloc()
        except ResourceExhausted:
            self.vifs.free(vif)
            if new_vrf:
                self._drop_vrf(v)
            raise
        keys: list[Key] = _vrf_base_keys(v) if new_vrf else []
        self._set((VIF, vif), "vr_interface_req", {
            "vifr_idx": vif, "vifr_type": C.VIF_TYPE_GATEWAY, "vifr_name": gateway.interface,
            "vifr_transport": C.VIF_TRANSPORT_VIRTUAL, "vifr_vrf": v.vrf_id,
            "vifr_mcast_vrf": v.vrf_id, "vifr_mac": list(VROUTER_MAC), "vifr_mtu": self.mtu,
            "vifr_flags": C.VIF_FLAG_L3_ENABLED, "vifr_nh_id": nh,
            "vifr_os_idx": self._os_index(gateway.interface)})
        self._set((NH, nh), "vr_nexthop_req", {
            "nhr_id": nh, "nhr_type": C.NH_ENCAP, "nhr_family": C.AF_INET, "nhr_vrf": v.vrf_id,
            "nhr_encap_oif_id": [vif], "nhr_encap": list(VROUTER_MAC + VROUTER_MAC + b"\x08\x00"),
            "nhr_flags": C.NH_FLAG_VALID})
        keys += [(VIF, vif), (NH, nh)]
        route_keys: list[Key] = []
        for vrf_id, prefixes in ((v.vrf_id, gateway.routes), (0, gateway.subnets)):
            for addr, plen in prefixes:
                k = _inet_key(vrf_id, addr, plen)
                if k in self.desired:
                    continue  # never take over a route someone else installed
                self._set(k, "vr_route_req", _route_fields(k, nh, 0, 0, None))
                route_keys.append(k)
        self._gateways[gateway.interface] = (v.name, vif, nh, route_keys)
        v.ports.add("gateway:" + gateway.interface)
        self._notify(keys + route_keys)

    def gatewayDeleted(self, interface: str) -> None:
        entry = self._gateways.pop(interface, None)
        if entry is None:
            return
        vrf_name, vif, nh, route_keys = entry
        keys: list[Key] = [*route_keys, (NH, nh), (VIF, vif)]
        for k in keys:
            self.desired.pop(k, None)
        self.vifs.free(vif)
        self.nhs.free(nh)
        v = self._vrfs[vrf_name]
        v.ports.discard("gateway:" + interface)
        if not v.ports and not self._remote_in(v):
            keys += self._drop_vrf(v)
        self._notify(keys)

    # IRouteProgrammer ------------------------------------------------------------------

    def vrfNames(self) -> list[str]:
        return sorted(self._vrfs)

    def addRemoteRoute(self, vrf_name: str, prefix: str, plen: int, nexthop: str, label: int,
                       encap: str = "udp", mac: str | None = None, *,
                       l2_label: int | None = None) -> None:
        # Called once per route learnt from the controller (ten thousand in a burst):
        # plain dict and tuple work, no helper objects.
        v = self._vrfs.get(vrf_name)
        if v is None:
            raise KeyError(f"unknown routing instance {vrf_name!r}")
        flag = _ENCAP_FLAGS.get(encap)
        if flag is None:
            raise ValueError(f"encap {encap!r} is not udp, gre or vxlan")
        if not 0 <= label < 1 << 24 or (l2_label is not None and not 0 <= l2_label < 1 << 24):
            raise ValueError(f"label {label}/{l2_label} is not a 20/24-bit label")
        fam, packed, text = parse_prefix(prefix, plen)
        dip = _ipv4_int(nexthop)
        rmac = parse_mac(mac) if mac else None
        rkey = (vrf_name, text, plen)
        if rkey in self._remote:
            self.deleteRemoteRoute(vrf_name, prefix, plen)
        tkey = (nexthop, encap)
        desired = self.desired
        tunnel = self._tunnels.get(tkey)
        keys: list[Key]
        if tunnel is None:
            adopted_nh = self._adopted_tunnels.pop(tkey, None)
            nh = adopted_nh if adopted_nh is not None else self.nhs.alloc()
            desired[(NH, nh)] = ("vr_nexthop_req", {
                "nhr_id": nh, "nhr_type": C.NH_TUNNEL, "nhr_family": C.AF_INET, "nhr_vrf": 0,
                "nhr_encap_oif_id": [self.fabric_vif],
                "nhr_encap": list(self._tunnel_encap(nexthop)),
                "nhr_tun_sip": host_u32(self.fabric_ip), "nhr_tun_dip": dip,
                "nhr_flags": C.NH_FLAG_VALID | flag,
                # VXLAN carries Ethernet: a routed packet goes in as an EVPN type-5 frame
                # to the VRRP MAC, which the far node's VRF routes again
                **({"nhr_rw_dst_mac": list(VROUTER_MAC)} if encap == "vxlan" else {})})
            keys = [(NH, nh)]
            self._tunnels[tkey] = (nh, 1)
        else:
            nh = tunnel[0]
            keys = []
            self._tunnels[tkey] = (nh, tunnel[1] + 1)
        vrf_id = v.vrf_id
        rk: Key = (ROUTE, fam, vrf_id, packed, plen)
        # A remote VM is reached routed: its label is an L3 label (the far node pops it
        # onto the VM's L3 next hop), so the datapath answers ARP for it with the vif's
        # (VRRP) MAC, the VM sends to its gateway MAC and the packet is routed into the
        # tunnel. No stitched MAC: that would answer with the remote VM's MAC and bridge.
        desired[rk] = ("vr_route_req", {
            "rtr_vrf_id": vrf_id, "rtr_family": fam, "rtr_prefix": list(packed),
            "rtr_prefix_len": plen, "rtr_nh_id": nh, "rtr_label": label,
            "rtr_label_flags": C.VR_RT_LABEL_VALID_FLAG | C.VR_RT_ARP_PROXY_FLAG,
            "rtr_mac": []})
        keys.append(rk)
        if rmac is not None:
            bk: Key = (ROUTE, C.AF_BRIDGE, vrf_id, rmac)
            desired[bk] = ("vr_route_req", {
                "rtr_vrf_id": vrf_id, "rtr_family": C.AF_BRIDGE, "rtr_mac": list(rmac),
                "rtr_nh_id": nh, "rtr_label": label if l2_label is None else l2_label,
                "rtr_label_flags": C.VR_BE_LABEL_VALID_FLAG, "rtr_prefix": [],
                "rtr_prefix_len": 0})
            keys.append(bk)
            self._remote[rkey] = ([rk, bk], tkey)
        else:
            self._remote[rkey] = ([rk], tkey)
        counts = self._remote_count
        counts[vrf_name] = counts.get(vrf_name, 0) + 1
        if self._batch_depth:
            self._batched_keys.extend(keys)
        else:
            self._notify(keys)

    def deleteRemoteRoute(self, vrf_name: str, prefix: str, plen: int) -> None:
        try:
            _fam, _packed, text = parse_prefix(prefix, plen)
        except ValueError:
            return
        entry = self._remote.pop((vrf_name, text, plen), None)
        if entry is None:
            return
        left = self._remote_count.get(vrf_name, 1) - 1
        if left > 0:
            self._remote_count[vrf_name] = left
        else:
            self._remote_count.pop(vrf_name, None)
        route_keys, tkey = entry
        keys = list(route_keys)
        for k in route_keys:
            self.desired.pop(k, None)
        nh, refs = self._tunnels[tkey]
        if refs <= 1:
            del self._tunnels[tkey]
            self.desired.pop((NH, nh), None)
            self.nhs.free(nh)
            keys.append((NH, nh))
        else:
            self._tunnels[tkey] = (nh, refs - 1)
        v = self._vrfs.get(vrf_name)
        if v is not None and not v.ports and not self._remote_in(v):
            keys += self._drop_vrf(v)
        self._notify(keys)


#: Tunnel next-hop flag of each encapsulation name.
_ENCAP_FLAGS = {"udp": C.NH_FLAG_TUNNEL_UDP_MPLS, "gre": C.NH_FLAG_TUNNEL_GRE,
                "vxlan": C.NH_FLAG_TUNNEL_VXLAN | C.NH_FLAG_L3_VXLAN}


def parse_prefix(prefix: str, plen: int) -> tuple[int, bytes, str]:
    """``(family, network bytes, network text)`` of ``prefix/plen``, host bits cleared.

    The controller's routes arrive by the ten thousand: ``inet_pton`` and int arithmetic
    instead of ``ipaddress`` objects.  Raises ValueError like ``ip_network``.
    """
    if type(plen) is not int:
        plen = int(plen)
    try:
        raw = socket.inet_pton(socket.AF_INET, prefix)
        fam, af, bits = C.AF_INET, socket.AF_INET, 32
    except (OSError, TypeError):
        try:
            raw = socket.inet_pton(socket.AF_INET6, prefix)
        except (OSError, TypeError):
            raise ValueError(f"{prefix!r} is not an IPv4 or IPv6 address") from None
        fam, af, bits = C.AF_INET6, socket.AF_INET6, 128
    if not 0 <= plen <= bits:
        raise ValueError(f"prefix length {plen} out of range for {prefix!r}")
    if plen < bits:
        shift = bits - plen
        raw = ((int.from_bytes(raw, "big") >> shift) << shift).to_bytes(bits // 8, "big")
        return fam, raw, socket.inet_ntop(af, raw)
    return fam, raw, prefix if fam == C.AF_INET else socket.inet_ntop(af, raw)


_DIPS: dict[str, int] = {}


def _wire_port(port: int) -> int:
    """A port as the vRouter's messages carry it (``htons`` held in a signed i16)."""
    value = int.from_bytes(port.to_bytes(2, "big"), sys.byteorder)
    return value - 0x10000 if value >= 0x8000 else value


def _ipv4_int(addr: str) -> int:
    """``host_u32`` of a tunnel destination; remote nodes are few, so it is remembered."""
    v = _DIPS.get(addr)
    if v is None:
        try:
            v = int.from_bytes(socket.inet_pton(socket.AF_INET, addr), sys.byteorder)
        except (OSError, TypeError):
            raise ValueError(f"next hop {addr!r} is not an IPv4 address") from None
        if len(_DIPS) < 4096:
            _DIPS[addr] = v
    return v


_BCAST = b"\xff" * 6
#: the agent's IPv6 link-local address, source of its router advertisements
AGENT_LINK_LOCAL = "fe80::5e00:100"


def _bcast_key(vrf: int) -> Key:
    return (ROUTE, C.AF_BRIDGE, vrf, _BCAST)


def vni_for(vrf_name: str) -> int:
    """A network's VXLAN id when no controller gives one: the same on every node (both
    ends of a tunnel must agree without talking), from a hash of the routing instance's
    name (which holds the network's uuid), in 1..2**24-2 (0 and 0xFFFFFF left out)."""
    digest = hashlib.sha256(vrf_name.encode("utf-8")).digest()
    return 1 + int.from_bytes(digest[:4], "big") % ((1 << 24) - 2)


def _vrrp_key(vrf: int) -> Key:
    return (ROUTE, C.AF_BRIDGE, vrf, VROUTER_MAC)


def _vrf_base_keys(v: _Vrf) -> list[Key]:
    """What every VRF has: receive, resolve, L2-receive and agent next hops, and the VRRP
    MAC's bridge entry."""
    keys: list[Key] = [(NH, v.rcv_nh), (NH, v.resolve_nh), (NH, v.l2rcv_nh), (NH, v.pkt0_nh),
                       (NH, v.flood_nh), _vrrp_key(v.vrf_id), _bcast_key(v.vrf_id)]
    if v.vxlan_nh:
        keys += [(NH, v.vxlan_nh), (VXLAN, v.vni)]
    return keys


def _inet_key(vrf: int, addr: str, plen: int) -> Key:
    ip = ipaddress.ip_address(addr)
    fam = C.AF_INET if ip.version == 4 else C.AF_INET6
    return (ROUTE, fam, vrf, ip.packed, plen)


def _route_fields(key: Key, nh: int, label: int, flags: int,
                  mac: bytes | None) -> dict[str, Any]:
    _, fam, vrf, packed, plen = key
    return {"rtr_vrf_id": vrf, "rtr_family": fam, "rtr_prefix": list(packed),
            "rtr_prefix_len": plen, "rtr_nh_id": nh, "rtr_label": label,
            "rtr_label_flags": flags, "rtr_mac": list(mac) if mac else []}


def _no_mac(name: str) -> bytes | None:
    return None


def host_if_mac(name: str) -> bytes | None:
    """The MAC of host interface ``name`` (``/sys/class/net``), or None."""
    try:
        with open(f"/sys/class/net/{name}/address") as f:
            return bytes.fromhex(f.read().strip().replace(":", ""))
    except (OSError, ValueError):
        return None


def host_if_index(name: str) -> int:
    """The ifindex of host interface ``name``, or 0 when there is none."""
    import socket

    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0

"""The packet pipeline: one received frame in; transmits, traps and drops out (sans-IO).

It follows the vRouter's forwarding functions (``dp-core/vr_interface.c``,
``vr_datapath.c``, ``vr_bridge.c``, ``vr_proto_ip.c``, ``vr_nexthop.c``, ``vr_mpls.c``,
``vr_vxlan.c``, ``vr_flow.c``, ``vr_mirror.c``) over the tables of
:class:`vrtwist.datapath.dispatcher.Datapath`: per-vif rx, the flow stage, the bridge
stage (an L2_RCV next hop makes the packet routed), ``vr_forward``, every next-hop
type, fabric decapsulation, ARP proxy, mirroring, counters and drop reasons. Nothing
here does I/O: frames leave through :class:`IFrameOutput`, traps through
:class:`IPacketTrap`, so the same code runs under the reactor, in tests and in
benchmarks. Per packet there is one small ``Packet`` object; frames that only pass
through are sent without a copy, routed ones are copied once into a ``bytearray``.
"""

from __future__ import annotations

import struct
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from vrtwist.datapath import constants as C
from vrtwist.datapath import pipeline_defs as D
from vrtwist.datapath.dispatcher import BridgeRoutesInMemory, Datapath
from vrtwist.datapath.droplog import DropRecord
from vrtwist.datapath.interfaces import IFrameOutput, IPacketPipeline, IPacketTrap
from vrtwist.datapath.routes import RouteEntry
from vrtwist.datapath.tables import Interface, NextHop
from vrtwist.packet.checksum import checksum, checksum_update16
from vrtwist.shmem.flowtable import FlowTableFull, FlowVerdict
from vrtwist.shmem.interfaces import IFlowDatapath
from vrtwist.shmem.jhash import jhash, jhash_words5

__all__ = ["Pipeline", "Packet"]

Frame = bytes | bytearray | memoryview
BridgeHit = tuple[int, int, int, int]  # index, nh id, label, label flags

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_IP4_HDR = struct.Struct("!BBHHHBBH4s4s")
_UDP_HDR = struct.Struct("!HHHH")
_VXLAN_HDR = struct.Struct("!II")
_FLOW_KEY4 = struct.Struct("<BBH4sI8s")
_W2 = struct.Struct("<2I")
_AF_INET = C.AF_INET
_BCAST = b"\xff" * 6
_ZERO4 = bytes(4)
_GRE_MPLS = b"\x00\x00\x88\x47"
_VXLAN_I = 0x08000000
_TUNNEL_KINDS = (
    C.NH_FLAG_TUNNEL_GRE | C.NH_FLAG_TUNNEL_UDP_MPLS | C.NH_FLAG_TUNNEL_VXLAN | C.NH_FLAG_TUNNEL_UDP
)
_VHOST_TYPES = (C.VIF_TYPE_HOST, C.VIF_TYPE_GATEWAY, C.VIF_TYPE_XEN_LL_HOST)
# vr_flow entry flags (KS 5.4) the pipeline acts on
_FE_ACTIVE = 0x0001
_FE_EVICT_CANDIDATE = 0x0400
_FE_MIRROR = 0x2000
_FE_VRFT = 0x4000
_ACTION_DROP, _ACTION_HOLD, _ACTION_FORWARD, _ACTION_NAT = 0, 1, 2, 3
_TCP_FIN, _TCP_SYN, _TCP_RST = 0x0001, 0x0008, 0x0080


class Packet:
    """``struct vr_packet`` plus ``struct vr_forwarding_md``: the per-packet state.

    ``buf`` is the whole frame buffer; ``start`` is where the received frame begins (its
    Ethernet header), ``off`` the data pointer, ``l3`` the network header.
    """

    __slots__ = (
        "buf", "start", "off", "l3", "vif", "type", "flags", "ttl", "nh",
        "dvrf", "label", "vlan", "to_me", "flow_index", "outer_src", "udp_src_port",
        "ecmp_nh_index",
    )  # fmt: skip

    def __init__(self, buf: Frame, vif: Interface, start: int = 0) -> None:
        self.buf: Any = buf
        self.start = start
        self.off = start
        self.l3 = start
        self.vif = vif
        self.type = D.VP_TYPE_NULL
        self.flags = 0
        self.ttl = 64
        self.nh: NextHop | None = None
        # forwarding metadata, vr_init_forwarding_md defaults
        self.dvrf = vif.vrf
        self.label = -1
        self.vlan = D.VLAN_ID_INVALID
        self.to_me = False
        self.flow_index = -1
        self.outer_src = b""
        self.udp_src_port = 0
        self.ecmp_nh_index = -1

    def clone(self) -> Packet:
        """A copy with its own buffer (a mirror or trap copy)."""
        p = Packet.__new__(Packet)
        for name in Packet.__slots__:
            setattr(p, name, getattr(self, name))
        p.buf = bytearray(self.buf)
        return p

    def writable(self) -> bytearray:
        """The buffer as a bytearray, copied once when it was a read-only frame."""
        buf = self.buf
        if type(buf) is not bytearray:
            buf = self.buf = bytearray(buf)
        return buf


@implementer(IPacketPipeline)
class Pipeline:
    """The vRouter's forwarding path over one :class:`Datapath`'s tables."""

    def __init__(
        self,
        datapath: Datapath,
        output: IFrameOutput,
        trap: IPacketTrap,
        *,
        flows: IFlowDatapath | None = None,
        now: Callable[[], float] = time.monotonic,
        vlan_tci: int | None = None,
        vtest_vlan: bool = False,
        hash_seed: int = D.DEFAULT_HASH_SEED,
        core: int = 0,
    ) -> None:
        self.datapath = datapath
        self.tables = datapath.tables
        self.output = output
        self.trapper = trap
        self.flows = flows
        self.now = now
        #: ``--vlan_tci``: frames sent on the physical vif get this 802.1Q tag
        self.vlan_tci = vlan_tci
        #: ``--vtest_vlan``: every vif's tx is tagged with ``vlan_tci``
        self.vtest_vlan = vtest_vlan
        self.hash_seed = hash_seed
        self.core = core
        self._ip_id = 0
        #: flow index -> held packets (at most FLOW_QUEUE_ENTRIES), replayed on FLOW_SET
        self.held: dict[int, list[Packet]] = {}
        #: flow index -> (last-used time, packets seen): what the agent's ageing reads
        self.flow_last_used: dict[int, float] = {}
        #: per-VRF next-hop counters (vr_vrf_stats): (vrf, name) -> count
        self.vrf_stats: defaultdict[tuple[int, str], int] = defaultdict(int)
        #: inner 5-tuple + VRF -> UDP source port (the jhash is the costly part)
        self._port_cache: dict[tuple[int, int, int, int, int], int] = {}
        if flows is not None:
            flows.set_listeners.append(self.flow_set)
        self._nh_handlers: dict[int, Callable[[Packet, NextHop], None]] = {
            C.NH_DISCARD: self._nh_discard,
            C.NH_RESOLVE: self._nh_resolve,
            C.NH_RCV: self._nh_rcv,
            C.NH_L2_RCV: self._nh_l2_rcv,
            C.NH_VRF_TRANSLATE: self._nh_vrf_translate,
            C.NH_ENCAP: self._nh_encap,
            C.NH_TUNNEL: self._nh_tunnel,
            C.NH_COMPOSITE: self._nh_composite,
        }

    # -- entry ---------------------------------------------------------------------

    def receive(self, vif_index: int, frame: Frame) -> None:
        vif = self.tables.interfaces.get(vif_index)
        if vif is None:
            self.tables.count_drop(D.DROP_COUNTER[D.DROP_INVALID_IF])
            return
        pkt = Packet(frame, vif)
        vtype = vif.type
        counters = vif.counters
        counters["ipackets"] += 1
        counters["ibytes"] += len(frame)
        if vtype == C.VIF_TYPE_VIRTUAL:
            self._vm_rx(pkt, vif)
        elif vtype == C.VIF_TYPE_PHYSICAL:
            self._eth_rx(pkt, vif)
        elif vtype in _VHOST_TYPES:
            self._vhost_rx(pkt, vif)
        elif vtype == C.VIF_TYPE_AGENT:
            self._agent_rx(pkt, vif)
        elif vtype == C.VIF_TYPE_VIRTUAL_VLAN:
            self._vlan_rx(pkt, vif)
        else:
            self._drop(pkt, D.DROP_INVALID_IF)

    def _vm_rx(self, pkt: Packet, vif: Interface) -> None:
        if vif.flags & C.VIF_FLAG_MIRROR_RX:
            self._port_mirror(pkt, vif)
        vrf = vif.vrf
        if vif.flags & C.VIF_FLAG_SERVICE_IF:
            if not self._classify(pkt):
                return self._input_error(pkt)
            assign = vif.vrf_assign.get(pkt.vlan) if pkt.vlan < 1024 else None
            if assign is not None:
                vrf = assign[0]
            pkt.vlan = D.VLAN_ID_INVALID
        self._virtual_input(pkt, vrf, D.VLAN_ID_INVALID)

    def _vlan_rx(self, pkt: Packet, vif: Interface) -> None:
        """A sub-interface: strip one 802.1Q tag, then as a VM vif in the sub-vif's VRF."""
        buf = pkt.buf
        if len(buf) < 18 or buf[12:14] != b"\x81\x00":
            return self._input_error(pkt, D.DROP_PULL)
        pkt.buf = bytes(buf[:12]) + bytes(buf[16:])
        self._virtual_input(pkt, vif.vrf, D.VLAN_ID_INVALID)

    def _vhost_rx(self, pkt: Packet, vif: Interface) -> None:
        pkt.dvrf = vif.vrf
        if vif.flags & C.VIF_FLAG_XCONNECT:
            return self._xconnect(pkt)
        if vif.flags & C.VIF_FLAG_MIRROR_RX:
            self._port_mirror(pkt, vif)
        self._fabric_input(pkt)

    def _eth_rx(self, pkt: Packet, vif: Interface) -> None:
        if vif.flags & C.VIF_FLAG_MIRROR_RX:
            self._port_mirror(pkt, vif)
        if vif.flags & C.VIF_FLAG_XCONNECT:
            pkt.flags |= D.VP_FLAG_TO_ME
        self._fabric_input(pkt)

    def _agent_rx(self, pkt: Packet, vif: Interface) -> None:
        """pkt0: strip Ethernet + agent_hdr; ROUTE re-injects, SWITCH transmits (KS 4)."""
        buf = pkt.buf
        if len(buf) < 14 + 30 + 14:
            return self._input_error(pkt, D.DROP_INVALID_PACKET)
        ifindex, cmd = struct.unpack_from("!HxxH", buf, 14)
        vrf = _U16.unpack_from(buf, 16)[0]
        inner = memoryview(buf)[44:]
        target = self.tables.interfaces.get(ifindex)
        if cmd == 1:  # AGENT_CMD_ROUTE
            p = Packet(inner, target if target is not None else vif)
            self._virtual_input(p, vrf, D.VLAN_ID_INVALID)
        elif cmd == 0:  # AGENT_CMD_SWITCH
            if target is None:
                return self._drop(pkt, D.DROP_INVALID_IF)
            p = Packet(inner, vif)
            p.type = D.VP_TYPE_AGENT
            p.dvrf = vrf
            self._vif_tx(p, target, inner)
        else:
            self._drop(pkt, D.DROP_INVALID_PACKET)

    def _input_error(self, pkt: Packet, reason: int = D.DROP_INTERFACE_DROP) -> None:
        pkt.vif.counters["ierrors"] += 1
        self._drop(pkt, reason)

    # -- classification --------------------------------------------------------------

    def _classify(self, pkt: Packet) -> bool:
        """``vr_pkt_type``: multicast flag, 802.1Q tags skipped, type from the EtherType."""
        buf = pkt.buf
        off = pkt.off
        end = len(buf)
        if end - off < 14:
            return False
        if buf[off] & 1:
            pkt.flags |= D.VP_FLAG_MULTICAST
        pos = off + 12
        etype = (buf[pos] << 8) | buf[pos + 1]
        if etype == 0x88E7:
            pkt.type = D.VP_TYPE_PBB
            pkt.l3 = pos + 2
            return True
        while etype == 0x8100:
            if end - pos < 6:
                return False
            if pkt.vlan == D.VLAN_ID_INVALID:
                pkt.vlan = ((buf[pos + 2] << 8) | buf[pos + 3]) & 0xFFF
            pos += 4
            etype = (buf[pos] << 8) | buf[pos + 1]
        pkt.l3 = pos + 2
        if etype == 0x0800:
            pkt.type = D.VP_TYPE_IP
        elif etype == 0x86DD:
            pkt.type = D.VP_TYPE_IP6
        elif etype == 0x0806:
            pkt.type = D.VP_TYPE_ARP
        else:
            pkt.type = D.VP_TYPE_UNKNOWN
        return True

    def _virtual_input(self, pkt: Packet, vrf: int, vlan: int) -> None:
        """``vr_virtual_input``: flow stage, then always the bridge stage."""
        pkt.vlan = vlan
        pkt.dvrf = vrf
        if not self._classify(pkt):
            return self._input_error(pkt)
        if (
            pkt.flags & D.VP_FLAG_MULTICAST
            and pkt.vif.flags & C.VIF_FLAG_SERVICE_IF
            and pkt.type != D.VP_TYPE_ARP
        ):
            return self._input_error(pkt)
        if pkt.type == D.VP_TYPE_IP and not self._flow_forward(pkt):
            return
        self._bridge_input(pkt)

    def _fabric_input(self, pkt: Packet) -> None:
        """``vr_fabric_input``: IPv4 is routed in the fabric VRF, ARP answered, rest to host."""
        pkt.dvrf = pkt.vif.vrf
        if not self._classify(pkt):
            return self._input_error(pkt)
        ptype = pkt.type
        if ptype == D.VP_TYPE_IP6 or (pkt.flags & D.VP_FLAG_MULTICAST and ptype != D.VP_TYPE_ARP):
            return self._xconnect(pkt)
        if ptype == D.VP_TYPE_IP:
            pkt.off = pkt.l3
            return self._ip_input(pkt)
        if ptype == D.VP_TYPE_ARP and self._arp_input(pkt):
            return
        self._xconnect(pkt)

    def _xconnect(self, pkt: Packet) -> None:
        """``vif_xconnect``: the frame as received to the other half of physical/vhost."""
        vif = pkt.vif
        peer = self._bridge_vif(vif)
        if peer is None:
            return self._drop(pkt, D.DROP_INVALID_IF)
        self._vif_tx(pkt, peer, memoryview(pkt.buf)[pkt.start :])

    def _bridge_vif(self, vif: Interface) -> Interface | None:
        want = (C.VIF_TYPE_PHYSICAL,) if vif.type in _VHOST_TYPES else (C.VIF_TYPE_HOST,)
        if vif.type not in _VHOST_TYPES and vif.type != C.VIF_TYPE_PHYSICAL:
            return None
        for other in self.tables.interfaces.values():
            if other.type in want:
                return other
        return None

    # -- bridge ----------------------------------------------------------------------

    def bridge_lookup(self, vrf: int, mac: bytes) -> BridgeHit | None:
        """(index, nh id, label, label flags) of the bridge entry for (vrf, mac)."""
        bridge = self.datapath.bridge
        if isinstance(bridge, BridgeRoutesInMemory):
            found = bridge.entries.get((vrf, mac))
            if found is None:
                return None
            f = found[1]
            return found[0], f["rtr_nh_id"], f["rtr_label"], f["rtr_label_flags"]
        table = getattr(bridge, "bridge", None)
        if table is None:
            return None
        hit: BridgeHit | None = table.route(vrf, mac)
        return hit

    def _bridge_count(self, index: int) -> None:
        table = getattr(self.datapath.bridge, "bridge", None)
        if table is not None:
            table.add_packets(index)

    def _bridge_input(self, pkt: Packet) -> None:
        """``vr_bridge_input``: bridge by destination MAC; L2_RCV makes it routed."""
        if pkt.to_me:
            return self._l3_input(pkt)
        vif = pkt.vif
        buf = pkt.buf
        off = pkt.off
        from_vm = vif.type == C.VIF_TYPE_VIRTUAL
        multicast = pkt.flags & D.VP_FLAG_MULTICAST
        if (
            from_vm
            and multicast
            and pkt.type == D.VP_TYPE_IP
            and vif.flags & C.VIF_FLAG_DHCP_ENABLED
            and self._dhcp_client(pkt)
        ):
            return self._trap(pkt, D.TRAP_L3_PROTOCOLS)
        if (
            from_vm
            and pkt.type == D.VP_TYPE_ARP
            and (not multicast or vif.flags & C.VIF_FLAG_MAC_PROXY)
        ):
            if self._arp_input(pkt):
                return
        if multicast:
            if vif.mcast_vrf != 65535:
                pkt.dvrf = vif.mcast_vrf
            mac = _BCAST
        else:
            mac = bytes(buf[off : off + 6])
        hit = self.bridge_lookup(pkt.dvrf, mac)
        nh = self.tables.nexthops.get(hit[1]) if hit is not None else None
        if nh is None or nh.type == C.NH_DISCARD:
            if multicast or not self._may_flood(pkt):
                return self._drop(pkt, D.DROP_L2_NO_ROUTE)
            hit = self.bridge_lookup(pkt.dvrf, _BCAST)
            nh = self.tables.nexthops.get(hit[1]) if hit is not None else None
            if nh is None:
                return self._drop(pkt, D.DROP_L2_NO_ROUTE)
            pkt.flags |= D.VP_FLAG_MULTICAST
            self._vrf_count(pkt.dvrf, "uuc_floods")
        assert hit is not None
        self._bridge_count(hit[0])
        if hit[3] & C.VR_BE_LABEL_VALID_FLAG:
            pkt.label = hit[2]
        if (
            vif.type == C.VIF_TYPE_PHYSICAL
            and not multicast
            and pkt.type in (D.VP_TYPE_IP, D.VP_TYPE_IP6)
            and nh.type == C.NH_TUNNEL
            and not vif.flags & C.VIF_FLAG_FAB_GW_MODE
        ):
            return self._drop(pkt, D.DROP_INVALID_SOURCE)
        self._nh_output(pkt, nh)

    @staticmethod
    def _dhcp_client(pkt: Packet) -> bool:
        """An unfragmented IPv4 UDP packet from port 68: a DHCP client's request."""
        buf = pkt.buf
        l3 = pkt.l3
        if len(buf) - l3 < 20 or buf[l3 + 9] != 17 or (buf[l3 + 6] & 0x3F) | buf[l3 + 7]:
            return False
        l4 = l3 + (buf[l3] & 0x0F) * 4
        return len(buf) - l4 >= 2 and buf[l4] == 0 and buf[l4 + 1] == 68

    def _may_flood(self, pkt: Packet) -> bool:
        if pkt.vif.flags & C.VIF_FLAG_UNKNOWN_UC_FLOOD:
            return True
        nh = pkt.nh
        return nh is not None and bool(nh.flags & C.NH_FLAG_UNKNOWN_UC_FLOOD)

    # -- layer 3 ---------------------------------------------------------------------

    def _l3_input(self, pkt: Packet) -> None:
        """``vr_l3_input``: the L2 header pulled, IPv4 to ``vr_ip_input``."""
        pkt.off = pkt.l3
        if pkt.type == D.VP_TYPE_IP:
            return self._ip_input(pkt)
        if pkt.type == D.VP_TYPE_IP6:
            return self._forward(pkt)
        if pkt.type == D.VP_TYPE_ARP:
            pkt.off = pkt.start
            if self._arp_input(pkt):
                return
        self._drop(pkt, D.DROP_INVALID_PROTOCOL)

    def _ip_input(self, pkt: Packet) -> None:
        """``vr_ip_input``: header checks, flow stage, then ``vr_forward``."""
        buf = pkt.buf
        l3 = pkt.l3
        if len(buf) - l3 < 20 or buf[l3] & 0x0F < 5 or buf[l3] >> 4 != 4:
            return self._drop(pkt, D.DROP_INVALID_PROTOCOL)
        if pkt.flags & D.VP_FLAG_TO_ME:
            return self._ip_rcv(pkt, None)
        if not self._flow_forward(pkt):
            return
        self._forward(pkt)

    def _route(self, family: int, vrf: int, address: int) -> RouteEntry | None:
        table = self.datapath.routes.vrfs.get((family, vrf))
        return table.lookup(address) if table is not None else None

    def _forward(self, pkt: Packet) -> None:
        """``vr_forward``: LPM in fmd.dvrf, route label, IPv4 TTL decrement, ``nh_output``."""
        buf = pkt.buf
        l3 = pkt.l3
        if pkt.type == D.VP_TYPE_IP:
            if len(buf) - l3 < 20:
                return self._drop(pkt, D.DROP_INVALID_PROTOCOL)
            ttl = buf[l3 + 8]
            if ttl == 0:
                return self._drop(pkt, D.DROP_TTL_EXCEEDED)
            entry = self._route(_AF_INET, pkt.dvrf, _U32.unpack_from(buf, l3 + 16)[0])
        elif pkt.type == D.VP_TYPE_IP6:
            if len(buf) - l3 < 40:
                return self._drop(pkt, D.DROP_INVALID_PROTOCOL)
            ttl = buf[l3 + 7]
            dst = int.from_bytes(buf[l3 + 24 : l3 + 40], "big")
            entry = self._route(C.AF_INET6, pkt.dvrf, dst)
        else:
            return self._drop(pkt, D.DROP_INVALID_PROTOCOL)
        if entry is None:
            nh = self.tables.nexthops.get(C.NH_DISCARD_ID)
            if nh is None:
                return self._drop(pkt, D.DROP_DISCARD)
        else:
            nh = entry.nh
            if entry.label_flags & C.VR_RT_LABEL_VALID_FLAG:
                pkt.label = entry.label
        if pkt.type == D.VP_TYPE_IP:
            gateway = (
                nh.type == C.NH_ENCAP and nh.oif is not None and nh.oif.type == C.VIF_TYPE_AGENT
            )
            if (nh.type == C.NH_VRF_TRANSLATE and nh.family == _AF_INET) or gateway:
                pkt.ttl = ttl
            else:
                b = pkt.writable()
                b[l3 + 8] = ttl - 1
                old = (ttl << 8) | b[l3 + 9]
                csum = (b[l3 + 10] << 8) | b[l3 + 11]
                _U16.pack_into(b, l3 + 10, checksum_update16(csum, old, old - 0x100))
                pkt.ttl = ttl - 1
        else:
            pkt.ttl = ttl
        self._nh_output(pkt, nh)

    # -- next hops -------------------------------------------------------------------

    def _nh_output(self, pkt: Packet, nh: NextHop) -> None:
        """``nh_output``: zero-TTL trap, validity, NH-forced flow lookup, dispatch."""
        if pkt.ttl == 0:
            return self._trap(pkt, D.TRAP_ZERO_TTL)
        pkt.nh = nh
        if not nh.flags & C.NH_FLAG_VALID:
            return self._drop(pkt, D.DROP_INVALID_NH)
        if (
            pkt.type in (D.VP_TYPE_IP, D.VP_TYPE_IP6)
            and not pkt.flags & D.VP_FLAG_FLOW_SET
            and nh.flags & (C.NH_FLAG_POLICY_ENABLED | C.NH_FLAG_FLOW_LOOKUP)
        ):
            pkt.flags |= D.VP_FLAG_FLOW_GET
            if not self._flow_forward(pkt):
                return
            if pkt.nh is not nh and pkt.nh is not None:
                return self._nh_output(pkt, pkt.nh)
        handler = self._nh_handlers.get(nh.type)
        if handler is None:
            return self._drop(pkt, D.DROP_INVALID_NH)
        handler(pkt, nh)

    def _vrf_count(self, vrf: int, name: str) -> None:
        self.vrf_stats[(vrf, name)] += 1

    def _nh_discard(self, pkt: Packet, nh: NextHop) -> None:
        self._vrf_count(pkt.dvrf, "discards")
        self._drop(pkt, D.DROP_DISCARD)

    def _nh_resolve(self, pkt: Packet, nh: NextHop) -> None:
        self._vrf_count(pkt.dvrf, "resolves")
        if pkt.vif.type in _VHOST_TYPES or pkt.vif.type == C.VIF_TYPE_PHYSICAL:
            peer = self._bridge_vif(pkt.vif)
            if peer is not None:
                self._vif_tx(pkt, peer, bytes(pkt.buf[pkt.start :]))
        self._trap(pkt, D.TRAP_RESOLVE)

    def _nh_l2_rcv(self, pkt: Packet, nh: NextHop) -> None:
        """``nh_l2_rcv``: the frame is for the router: route it (fmd_to_me)."""
        self._vrf_count(pkt.dvrf, "l2_receives")
        pkt.to_me = True
        self._l3_input(pkt)

    def _nh_vrf_translate(self, pkt: Packet, nh: NextHop) -> None:
        self._vrf_count(pkt.dvrf, "vrf_translates")
        pkt.dvrf = nh.vrf
        if nh.family == _AF_INET:
            return self._forward(pkt)
        pkt.off = pkt.start if pkt.off != pkt.start and pkt.type != D.VP_TYPE_IP else pkt.off
        self._bridge_input(pkt)

    def _nh_encap(self, pkt: Packet, nh: NextHop) -> None:
        oif = nh.oif
        if oif is None:
            return self._drop(pkt, D.DROP_INVALID_NH)
        if nh.family == C.AF_BRIDGE:
            self._vrf_count(pkt.dvrf, "l2_encaps")
            return self._vif_tx(pkt, oif, self._data(pkt))
        buf = pkt.buf
        off = pkt.off
        if nh.flags & C.NH_FLAG_MCAST:
            if pkt.type != D.VP_TYPE_IP:
                return self._drop(pkt, D.DROP_INVALID_PROTOCOL)
            group = buf[pkt.l3 + 17 : pkt.l3 + 20]
            head = b"\x01\x00\x5e" + bytes((group[0] & 0x7F,)) + bytes(group[1:3])
            frame = head + oif.mac + b"\x08\x00" + bytes(buf[off:])
            return self._vif_tx(pkt, oif, frame)
        version = buf[off] >> 4 if len(buf) > off else 4
        etype = b"\x86\xdd" if version == 6 else b"\x08\x00"
        self._vrf_count(pkt.dvrf, "encaps")
        frame = nh.encap[:-2] + etype + bytes(buf[off:])
        if pkt.flags & 0x100:  # VP_FLAG_DIAG
            return self._trap(pkt, D.TRAP_DIAG, param=oif.idx)
        self._vif_tx(pkt, oif, frame)

    @staticmethod
    def _data(pkt: Packet) -> Frame:
        buf = pkt.buf
        off = pkt.off
        if off == 0:
            return buf
        return memoryview(buf)[off:]

    # -- composite -------------------------------------------------------------------

    def _nh_composite(self, pkt: Packet, nh: NextHop) -> None:
        if nh.flags & (C.NH_FLAG_COMPOSITE_ECMP | C.NH_FLAG_COMPOSITE_LU_ECMP):
            return self._ecmp(pkt, nh)
        members = [(c, label) for c, label in nh.components if c is not None]
        ingress = pkt.vif
        sent = False
        for member, label in members:
            if member.type == C.NH_COMPOSITE:
                self._nh_composite(self._replica(pkt, label), member)
                sent = True
                continue
            if member.type == C.NH_ENCAP and member.oif is ingress:
                continue  # never back out of the vif it came in on
            self._nh_output(self._replica(pkt, label), member)
            sent = True
        self._vrf_count(pkt.dvrf, "l2_mcast_composites")
        self._drop(pkt, D.DROP_CLONED_ORIGINAL if sent else D.DROP_DISCARD)

    @staticmethod
    def _replica(pkt: Packet, label: int) -> Packet:
        p = pkt.clone()
        p.buf = pkt.buf  # members only prepend headers: they share the received bytes
        if label >= 0:
            p.label = label
        return p

    def _ecmp(self, pkt: Packet, nh: NextHop) -> None:
        count = len(nh.components)
        if not count:
            return self._drop(pkt, D.DROP_INVALID_NH)
        index = pkt.ecmp_nh_index
        if not 0 <= index < count:
            index = self._ecmp_hash(pkt) % count
        member, label = nh.components[index]
        if member is None:
            active = [(c, lb) for c, lb in nh.components if c is not None]
            if not active:
                return self._drop(pkt, D.DROP_INVALID_NH)
            member, label = active[self._ecmp_hash(pkt) % len(active)]
        if not nh.flags & C.NH_FLAG_COMPOSITE_LU_ECMP and label >= 0:
            pkt.label = label
        self._vrf_count(pkt.dvrf, "ecmp_composites")
        self._nh_output(pkt, member)

    def _ecmp_hash(self, pkt: Packet) -> int:
        key = self._flow_key(pkt)
        if key is None:
            buf = pkt.buf
            return jhash(bytes(buf[pkt.start : pkt.start + 14])) + pkt.dvrf
        return jhash(key)

    # -- tunnels ---------------------------------------------------------------------

    def _next_ip_id(self) -> int:
        """``vr_generate_unique_ip_id``: 1, 2, ... 65535, 1, ... (0 skipped)."""
        ident = (self._ip_id + 1) & 0xFFFF
        if ident == 0:
            ident = 1
        self._ip_id = ident
        return ident

    def udp_src_port(self, pkt: Packet) -> int:
        """``dpdk_get_udp_src_port``: a jhash of the inner 5-tuple mapped to 49152-65535."""
        buf = pkt.buf
        seed = self.hash_seed
        if pkt.type == D.VP_TYPE_IP:
            l3 = pkt.l3
            sip, dip = struct.unpack_from("<II", buf, l3 + 12)
            sport = dport = 0
            proto = buf[l3 + 9]
            l4 = l3 + (buf[l3] & 0x0F) * 4
            frag = _U16.unpack_from(buf, l3 + 6)[0] & 0x1FFF
            if proto in (6, 17) and not frag and len(buf) - l4 >= 4:
                sport, dport = struct.unpack_from("<HH", buf, l4)
            key = (sip, dip, pkt.dvrf, sport, dport)
            port = self._port_cache.get(key)
            if port is not None:
                return port
            # rte_jhash(key, 20, seed): the seed enters the first three words' state
            h = jhash_words5(
                (sip + seed) & 0xFFFFFFFF,
                (dip + seed) & 0xFFFFFFFF,
                (pkt.dvrf + seed) & 0xFFFFFFFF,
                sport,
                dport,
            )
            port = ((h * 16383) >> 32) + 49152
            cache = self._port_cache
            if len(cache) >= 65536:
                cache.clear()
            cache[key] = port
            return port
        # any other type: vr_hash of 14 bytes at the data pointer, then of (hash, vrf)
        h = jhash(bytes(buf[pkt.off : pkt.off + 14]), seed)
        h = jhash(_W2.pack(h, pkt.dvrf & 0xFFFFFFFF), seed)
        return ((h * 16383) >> 32) + 49152

    def _nh_tunnel(self, pkt: Packet, nh: NextHop) -> None:
        oif = nh.oif
        flags = nh.flags
        if not flags & _TUNNEL_KINDS or oif is None:
            return self._drop(pkt, D.DROP_INVALID_NH)
        if nh.family != _AF_INET:
            return self._drop(pkt, D.DROP_INVALID_NH)
        if pkt.label < 0 and not flags & C.NH_FLAG_TUNNEL_UDP:
            # the vRouter re-runs vr_forward for MPLS tunnels (label lost after a hold);
            # held packets here keep their label, so a missing one is a bad route
            return self._drop(pkt, D.DROP_INVALID_LABEL)
        dip = nh.tun_dip.to_bytes(4, "little")
        if pkt.outer_src and pkt.outer_src == dip:
            return self._drop(pkt, D.DROP_PKT_LOOP)
        sip = nh.tun_sip.to_bytes(4, "little")
        buf = pkt.buf
        if flags & C.NH_FLAG_TUNNEL_VXLAN:
            overhead = 36
            payload: Frame = self._data(pkt)
            if flags & C.NH_FLAG_L3_VXLAN and pkt.off != pkt.start:
                payload = nh.rw_dst_mac + oif.mac + bytes(buf[pkt.start + 12 :])
        else:
            overhead = 32 if flags & C.NH_FLAG_TUNNEL_UDP_MPLS else 28
            if flags & C.NH_FLAG_L2_CONTROL_DATA and pkt.off == pkt.start:
                overhead += 4
            payload = self._data(pkt)
        plen = len(payload)
        mtu = self._mtu(oif)
        fragment = False
        if mtu and plen + overhead > mtu:
            if self._df(pkt):
                if pkt.flags & D.VP_FLAG_MULTICAST:
                    return self._drop(pkt, D.DROP_MCAST_DF_BIT)
                param = mtu - (overhead + (pkt.l3 - pkt.off if pkt.l3 > pkt.off else 0))
                return self._trap(pkt, D.TRAP_HANDLE_DF, param=param, param_1=pkt.flow_index)
            fragment = pkt.type == D.VP_TYPE_IP
        if flags & C.NH_FLAG_TUNNEL_GRE:
            self._vrf_count(pkt.dvrf, "gre_mpls_tunnels")
            mid = _GRE_MPLS + self._mpls_word(pkt, nh)
            proto = 47
            if pkt.type == D.VP_TYPE_IP:
                ident = _U16.unpack_from(buf, pkt.l3 + 4)[0]
            else:
                ident = self._next_ip_id()
        else:
            if flags & C.NH_FLAG_TUNNEL_VXLAN:
                self._vrf_count(pkt.dvrf, "vxlan_tunnels")
                tail = _VXLAN_HDR.pack(_VXLAN_I, (pkt.label & 0xFFFFFF) << 8)
                dport, default_sport = D.VXLAN_PORT, 52000
            elif flags & C.NH_FLAG_TUNNEL_UDP_MPLS:
                self._vrf_count(pkt.dvrf, "udp_mpls_tunnels")
                tail = self._mpls_word(pkt, nh)
                dport, default_sport = D.MPLS_OVER_UDP_DST_PORT, 51000
            else:
                self._vrf_count(pkt.dvrf, "udp_tunnels")
                tail = b""
                dport, default_sport = nh.tun_dport & 0xFFFF, nh.tun_sport & 0xFFFF
            sport = pkt.udp_src_port or self.udp_src_port(pkt) or default_sport
            mid = _UDP_HDR.pack(sport, dport, 8 + len(tail) + plen, 0) + tail
            proto = 17
            ident = self._next_ip_id()
        if fragment:
            return self._tunnel_fragments(pkt, nh, oif, sip, dip, proto, mid, payload, mtu)
        frame = nh.encap + _ip4(20 + len(mid) + plen, ident, proto, sip, dip) + mid + bytes(payload)
        self._vif_tx(pkt, oif, frame)

    def _mpls_word(self, pkt: Packet, nh: NextHop) -> bytes:
        ttl = pkt.ttl or 64
        word = _U32.pack(((pkt.label & 0xFFFFF) << 12) | 0x100 | (ttl & 0xFF))
        if nh.flags & C.NH_FLAG_L2_CONTROL_DATA and pkt.off == pkt.start:
            word += _ZERO4
        if nh.flags & C.NH_FLAG_TUNNEL_MPLS_O_MPLS:
            word = _U32.pack(((nh.transport_label & 0xFFFFF) << 12) | (ttl & 0xFF)) + word
        return word

    def _df(self, pkt: Packet) -> bool:
        if pkt.type == D.VP_TYPE_IP6:
            return True
        if pkt.type != D.VP_TYPE_IP:
            return False
        return bool(pkt.buf[pkt.l3 + 6] & 0x40)

    @staticmethod
    def _mtu(vif: Interface) -> int:
        if vif.type == C.VIF_TYPE_PHYSICAL and vif.mtu:
            return vif.mtu - 14
        return vif.mtu

    def _tunnel_fragments(
        self,
        pkt: Packet,
        nh: NextHop,
        oif: Interface,
        sip: bytes,
        dip: bytes,
        proto: int,
        mid: bytes,
        payload: Frame,
        mtu: int,
    ) -> None:
        """``dpdk_fragment_packet``: fragment the inner IPv4 packet, copy outer headers."""
        data = bytes(payload)
        inner_at = pkt.l3 - pkt.off  # inner Ethernet kept in front of each fragment
        prefix_inner = data[:inner_at]
        ip = data[inner_at:]
        ihl = (ip[0] & 0x0F) * 4
        hdr = bytearray(ip[:ihl])
        body = ip[ihl : _U16.unpack_from(ip, 2)[0]]
        outer_len = len(nh.encap) + 20 + len(mid) + len(prefix_inner)
        step = (mtu - outer_len - ihl) // 8 * 8
        if step <= 0:
            return self._drop(pkt, D.DROP_FRAGMENTS)
        base_off = _U16.unpack_from(hdr, 6)[0]
        more = base_off & 0x2000
        base = base_off & 0x1FFF
        ident = _U16.unpack_from(hdr, 4)[0]
        pos = 0
        while pos < len(body):
            chunk = body[pos : pos + step]
            last = pos + len(chunk) >= len(body)
            h = bytearray(hdr)
            _U16.pack_into(h, 2, ihl + len(chunk))
            _U16.pack_into(h, 6, (base + pos // 8) | (more if last else 0x2000))
            h[10:12] = b"\x00\x00"
            _U16.pack_into(h, 10, checksum(h))
            inner = prefix_inner + bytes(h) + chunk
            head = bytearray(mid)
            if proto == 17:
                _U16.pack_into(head, 4, len(mid) + len(inner))
            outer = _ip4(20 + len(mid) + len(inner), ident, proto, sip, dip)
            self._vif_tx(pkt, oif, nh.encap + outer + bytes(head) + inner)
            pos += len(chunk)

    # -- fabric receive and decapsulation ----------------------------------------------

    def _nh_rcv(self, pkt: Packet, nh: NextHop) -> None:
        self._vrf_count(pkt.dvrf, "receives")
        if pkt.type != D.VP_TYPE_IP:
            return self._drop(pkt, D.DROP_INVALID_PROTOCOL)
        self._ip_rcv(pkt, nh)

    def _ip_rcv(self, pkt: Packet, nh: NextHop | None) -> None:
        """``vr_ip_rcv``: tunnels are decapsulated, everything else goes to the host."""
        buf = pkt.buf
        l3 = pkt.l3
        l4 = l3 + (buf[l3] & 0x0F) * 4
        proto = buf[l3 + 9]
        frag = _U16.unpack_from(buf, l3 + 6)[0] & 0x3FFF
        if not frag and proto == 47 and len(buf) - l4 >= 4:
            gflags, gproto = struct.unpack_from("!HH", buf, l4)
            if not gflags & ~0xA000 and gproto == 0x8847:
                hlen = 4 + 4 * bool(gflags & 0x8000) + 4 * bool(gflags & 0x2000)
                return self._mpls_input(pkt, l4 + hlen)
        elif not frag and proto == 17 and len(buf) - l4 >= 8:
            dport = _U16.unpack_from(buf, l4 + 2)[0]
            if dport in D.MPLS_OVER_UDP_PORTS:
                return self._mpls_input(pkt, l4 + 8)
            if dport == D.VXLAN_PORT:
                return self._vxlan_input(pkt, l4 + 8)
        self._to_host(pkt, nh)

    def _to_host(self, pkt: Packet, nh: NextHop | None) -> None:
        vif = nh.oif if nh is not None and nh.oif is not None else None
        if vif is None:
            vif = self._bridge_vif(pkt.vif)
        if vif is None:
            vif = next(
                (v for v in self.tables.interfaces.values() if v.type == C.VIF_TYPE_HOST), None
            )
        if vif is None:
            return self._drop(pkt, D.DROP_TRAP_NO_IF)
        if pkt.start == pkt.l3:
            frame: Frame = vif.mac + vif.mac + b"\x08\x00" + bytes(pkt.buf[pkt.l3 :])
        else:
            frame = memoryview(pkt.buf)[pkt.start :]
        self._vif_tx(pkt, vif, frame)

    def _mpls_input(self, pkt: Packet, at: int) -> None:
        """``vr_mpls_input``: pop the label, its NH decides L3 (AF_INET) or L2 (AF_BRIDGE)."""
        buf = pkt.buf
        if len(buf) - at < 4:
            return self._drop(pkt, D.DROP_PULL)
        word = _U32.unpack_from(buf, at)[0]
        if word >> 12 == 0xFFFFF and not word & 0x100:
            at += 4
            if len(buf) - at < 4:
                return self._drop(pkt, D.DROP_PULL)
            word = _U32.unpack_from(buf, at)[0]
        label = word >> 12
        if label >= self.tables.config.mpls_labels:
            return self._drop(pkt, D.DROP_INVALID_LABEL)
        ttl = (word & 0xFF) - 1
        if ttl <= 0:
            return self._drop(pkt, D.DROP_TTL_EXCEEDED)
        pkt.outer_src = bytes(buf[pkt.l3 + 12 : pkt.l3 + 16])
        pkt.label = label
        pkt.ttl = ttl
        nh = self.tables.mpls.get(label)
        if nh is None:
            return self._drop(pkt, D.DROP_INVALID_LABEL)
        at += 4
        if nh.family == _AF_INET:
            if len(buf) <= at or buf[at] >> 4 not in (4, 6):
                return self._drop(pkt, D.DROP_INVALID_PROTOCOL)
            pkt.type = D.VP_TYPE_IP if buf[at] >> 4 == 4 else D.VP_TYPE_IP6
            pkt.start = pkt.off = pkt.l3 = at
        elif nh.family == C.AF_BRIDGE:
            if nh.flags & C.NH_FLAG_L2_CONTROL_DATA or (
                nh.type == C.NH_COMPOSITE and label >= 1024
            ):
                if buf[at : at + 4] != _ZERO4:
                    return self._drop(pkt, D.DROP_INVALID_PACKET)
                at += 4
            pkt.start = pkt.off = at
            pkt.vlan = D.VLAN_ID_INVALID
            if not self._classify(pkt):
                return self._drop(pkt, D.DROP_INVALID_PACKET)
        else:
            return self._drop(pkt, D.DROP_INVALID_NH)
        self._decap_vrf(pkt, nh)
        pkt.flags &= ~D.VP_FLAG_MULTICAST
        pkt.vlan = D.VLAN_ID_INVALID
        self._nh_output(pkt, nh)

    @staticmethod
    def _decap_vrf(pkt: Packet, nh: NextHop) -> None:
        if nh.vrf >= 0 and nh.type != C.NH_ENCAP:
            pkt.dvrf = nh.vrf
        elif nh.oif is not None:
            pkt.dvrf = nh.oif.vrf

    def _vxlan_input(self, pkt: Packet, at: int) -> None:
        """``vr_vxlan_input``: the VNI's next hop gets the inner Ethernet frame."""
        buf = pkt.buf
        if len(buf) - at < 8:
            return self._drop(pkt, D.DROP_PULL)
        w0, w1 = _VXLAN_HDR.unpack_from(buf, at)
        pkt.outer_src = bytes(buf[pkt.l3 + 12 : pkt.l3 + 16])
        if not w0 & _VXLAN_I:
            return self._drop(pkt, D.DROP_INVALID_VNID)
        vni = w1 >> 8
        nh = self.tables.vxlan.get(vni)
        if nh is None:
            return self._drop(pkt, D.DROP_INVALID_VNID)
        pkt.label = vni
        pkt.start = pkt.off = at + 8
        pkt.vlan = D.VLAN_ID_INVALID
        pkt.flags = 0
        if not self._classify(pkt):
            return self._drop(pkt, D.DROP_INVALID_PACKET)
        self._decap_vrf(pkt, nh)
        pkt.flags &= ~D.VP_FLAG_MULTICAST
        if w0 & 0x01000000:
            return self._trap(pkt, D.TRAP_ROUTER_ALERT)
        self._nh_output(pkt, nh)

    # -- ARP -------------------------------------------------------------------------

    def _arp_input(self, pkt: Packet) -> bool:
        """``vr_arp_input``: True when the ARP was consumed (answered, trapped, dropped)."""
        buf = pkt.buf
        at = pkt.l3
        if len(buf) - at < 28:
            self._drop(pkt, D.DROP_INVALID_ARP)
            return True
        htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", buf, at)
        if (htype == 1 and ptype == 0x0800 and (hlen != 6 or plen != 4)) or op not in (1, 2):
            self._drop(pkt, D.DROP_INVALID_ARP)
            return True
        sha = bytes(buf[at + 8 : at + 14])
        spa = bytes(buf[at + 14 : at + 18])
        tpa = bytes(buf[at + 24 : at + 28])
        vif = pkt.vif
        if op == 2:
            return self._arp_reply(pkt, vif)
        grat = spa == _ZERO4 or spa == tpa
        vtype = vif.type
        if vtype in _VHOST_TYPES:
            if grat:
                self._xconnect(pkt)
                return True
            if tpa[:2] == b"\xa9\xfe" or vtype == C.VIF_TYPE_GATEWAY:
                self._arp_proxy(pkt, sha, spa, tpa, vif.mac)
                return True
        if pkt.vlan != D.VLAN_ID_INVALID:
            return False  # flood
        if grat and vtype == C.VIF_TYPE_PHYSICAL:
            return False
        if grat and vif.flags & C.VIF_FLAG_MAC_PROXY:
            self._drop(pkt, D.DROP_INVALID_ARP)
            return True
        entry = self._route(_AF_INET, pkt.dvrf, int.from_bytes(tpa, "big"))
        rflags = entry.label_flags if entry is not None else 0
        if grat:
            if rflags & C.VR_RT_ARP_TRAP_FLAG:
                self._trap(pkt.clone(), D.TRAP_ARP)
            return False
        if vif.flags & C.VIF_FLAG_MAC_PROXY or rflags & 0x2:  # VR_RT_ARP_PROXY_FLAG
            mac = self._proxy_mac(pkt, vif, entry)
            if mac is None:
                self._drop(pkt, D.DROP_INVALID_ARP)
                return True
            if mac == b"":
                return self._arp_flood(pkt)
            self._vrf_count(pkt.dvrf, "arp_virtual_proxy")
            self._arp_proxy(pkt, sha, spa, tpa, mac)
            return True
        self._vrf_count(pkt.dvrf, "arp_virtual_flood")
        if vtype in _VHOST_TYPES or (vtype == C.VIF_TYPE_PHYSICAL and pkt.label < 0):
            self._xconnect(pkt)
            return True
        return self._arp_flood(pkt)

    def _arp_flood(self, pkt: Packet) -> bool:
        if pkt.vif.flags & C.VIF_FLAG_SERVICE_IF:
            self._drop(pkt, D.DROP_INVALID_ARP)
            return True
        return False

    def _proxy_mac(self, pkt: Packet, vif: Interface, entry: RouteEntry | None) -> bytes | None:
        """``vr_get_proxy_mac``: the MAC to answer with; b"" floods, None drops."""
        if vif.flags & C.VIF_FLAG_MAC_PROXY:
            return vif.mac
        mac = vif.mac
        stitched = False
        if entry is not None and entry.mac:
            hit = self.bridge_lookup(pkt.dvrf, entry.mac)
            if hit is not None:
                mac, stitched = entry.mac, True
        nh = entry.nh if entry is not None else None
        gateway = (
            nh is not None
            and nh.type == C.NH_ENCAP
            and nh.oif is not None
            and (nh.oif.type == C.VIF_TYPE_AGENT)
        )
        if vif.flags & C.VIF_FLAG_NO_ARP_PROXY and not gateway:
            return None
        flood = entry is not None and entry.label_flags & 0x8  # VR_RT_ARP_FLOOD_FLAG
        if not stitched and flood:
            return b""
        return mac

    def _arp_proxy(self, pkt: Packet, sha: bytes, spa: bytes, tpa: bytes, mac: bytes) -> None:
        """``vr_arp_proxy``: the reply built over the request (padding kept)."""
        buf = pkt.buf
        arp = bytes(buf[pkt.l3 :])
        body = b"\x00\x01\x08\x00\x06\x04\x00\x02" + mac + tpa + sha + spa + arp[28:]
        reply = sha + mac + b"\x08\x06" + body
        out = Packet(reply, pkt.vif)
        out.dvrf = pkt.dvrf
        out.flags = D.VP_FLAG_FLOW_SET
        self._classify(out)
        self._mac_reply_send(out)

    def _mac_reply_send(self, pkt: Packet) -> None:
        vif = pkt.vif
        if (
            vif.type in _VHOST_TYPES
            or (vif.type == C.VIF_TYPE_PHYSICAL and pkt.dvrf == 0)
            or vif.flags & (C.VIF_FLAG_NO_ARP_PROXY | C.VIF_FLAG_MAC_PROXY)
        ):
            return self._vif_tx(pkt, vif, pkt.buf)
        hit = self.bridge_lookup(pkt.dvrf, bytes(pkt.buf[0:6]))
        nh = self.tables.nexthops.get(hit[1]) if hit is not None else None
        if nh is None or not nh.flags & C.NH_FLAG_VALID:
            return self._drop(pkt, D.DROP_INVALID_NH)
        if hit is not None and hit[3] & C.VR_BE_LABEL_VALID_FLAG:
            pkt.label = hit[2]
        if vif.type == C.VIF_TYPE_VIRTUAL and nh.oif is not vif:
            return self._vif_tx(pkt, vif, pkt.buf)
        self._nh_output(pkt, nh)

    def _arp_reply(self, pkt: Packet, vif: Interface) -> bool:
        """``vr_handle_arp_reply``."""
        if vif.type in _VHOST_TYPES or vif.flags & C.VIF_FLAG_XCONNECT:
            self._xconnect(pkt)
            return True
        if vif.type == C.VIF_TYPE_VIRTUAL:
            if pkt.to_me:
                self._trap(pkt, D.TRAP_ARP)
                return True
            if pkt.flags & D.VP_FLAG_MULTICAST:
                self._trap(pkt.clone(), D.TRAP_ARP)
            return False
        if vif.type == C.VIF_TYPE_PHYSICAL:
            if pkt.label >= 0 or pkt.dvrf != vif.vrf:
                return False
            self._xconnect(pkt.clone())
            self._trap(pkt, D.TRAP_ARP)
            return True
        self._drop(pkt, D.DROP_INVALID_IF)
        return True

    # -- flows -----------------------------------------------------------------------

    def _flow_key(self, pkt: Packet) -> bytes | None:
        """The 20-byte IPv4 flow key (KS 5.5), or None when the packet makes no flow."""
        buf = pkt.buf
        l3 = pkt.l3
        if len(buf) - l3 < 20:
            return None
        proto = buf[l3 + 9]
        l4 = l3 + (buf[l3] & 0x0F) * 4
        frag = ((buf[l3 + 6] & 0x1F) << 8) | buf[l3 + 7]
        ports = _ZERO4
        if not frag:
            if proto == 6 or proto == 17 or proto == 132:
                if len(buf) - l4 >= 4:
                    ports = bytes(buf[l4 : l4 + 4])
            elif proto == 1 and len(buf) - l4 >= 8:
                itype = buf[l4]
                if itype in (0, 8, 13, 14, 17, 18):  # echo, timestamp, mask: id as sport
                    ports = bytes(buf[l4 + 4 : l4 + 6]) + b"\x00\x00"
                else:
                    ports = b"\x00\x00" + bytes((itype, 0))
        vif = pkt.vif
        nh_id = vif.nh_id
        if vif.type == C.VIF_TYPE_PHYSICAL and pkt.nh is not None:
            nh_id = pkt.nh.id
        return _FLOW_KEY4.pack(_AF_INET, proto, 0, ports, nh_id, bytes(buf[l3 + 12 : l3 + 20]))

    def _flow_forward(self, pkt: Packet) -> bool:
        """``vr_flow_forward``: False when the flow consumed the packet (held, dropped)."""
        flags = pkt.flags
        if flags & (D.VP_FLAG_MULTICAST | D.VP_FLAG_FLOW_SET) or self.flows is None:
            return True
        vif = pkt.vif
        if pkt.vlan != D.VLAN_ID_INVALID and not vif.flags & C.VIF_FLAG_SERVICE_IF:
            return True
        if not (flags & D.VP_FLAG_FLOW_GET or vif.flags & C.VIF_FLAG_POLICY_ENABLED):
            return True
        if pkt.type != D.VP_TYPE_IP:
            return True
        buf = pkt.buf
        l3 = pkt.l3
        if len(buf) - l3 < 20:
            return True
        if buf[l3 + 16] & 0xF0 == 0xE0 or buf[l3 + 16 : l3 + 20] == b"\xff\xff\xff\xff":
            return True
        if vif.type == C.VIF_TYPE_PHYSICAL and not pkt.outer_src:
            proto = buf[l3 + 9]
            if proto == 47:
                return True
            if proto == 17:
                l4 = l3 + (buf[l3] & 0x0F) * 4
                if len(buf) - l4 >= 4 and _U16.unpack_from(buf, l4 + 2)[0] in (6635, 51234, 4789):
                    return True
        key = self._flow_key(pkt)
        if key is None:
            return True
        pkt.flags |= D.VP_FLAG_FLOW_SET
        flows = self.flows
        index = flows.lookup(key)
        if index < 0:
            return self._flow_miss(pkt, key)
        v: FlowVerdict = flows.verdict(index)
        if v.flags & _FE_EVICT_CANDIDATE:
            self._drop(pkt, D.DROP_FLOW_EVICT)
            return False
        pkt.flow_index = index
        if v.ecmp_nh_index >= 0:
            pkt.ecmp_nh_index = v.ecmp_nh_index
        pkt.udp_src_port = v.udp_src_port
        flows.add_stats(index, len(buf) - pkt.off, 1)
        self.flow_last_used[index] = self.now()
        if buf[l3 + 9] == 6:
            self._tcp_track(pkt, index)
        if v.action == _ACTION_HOLD:
            return self._enqueue(pkt, index)
        return self._flow_action(pkt, v)

    def _tcp_track(self, pkt: Packet, index: int) -> None:
        buf = pkt.buf
        l4 = pkt.l3 + (buf[pkt.l3] & 0x0F) * 4
        if len(buf) - l4 < 14 or self.flows is None:
            return
        tflags = buf[l4 + 13]
        bits = 0
        if tflags & 0x02:
            bits |= _TCP_SYN
        if tflags & 0x01:
            bits |= _TCP_FIN
        if tflags & 0x04:
            bits |= _TCP_RST
        if bits:
            self.flows.set_tcp_flags(index, bits)

    def _flow_action(self, pkt: Packet, v: FlowVerdict) -> bool:
        """``vr_flow_action``: RPF, VRF translate, mirror, then the action."""
        tables = self.tables
        src_nh = tables.nexthops.get(v.src_nh_index)
        if src_nh is None:
            self._drop(pkt, D.DROP_INVALID_NH)
            return False
        if not self._validate_src(pkt, src_nh):
            self._drop(pkt, D.DROP_INVALID_SOURCE)
            return False
        pkt.dvrf = v.vrf
        if v.flags & _FE_VRFT:
            pkt.dvrf = v.dvrf
            pkt.to_me = True
        if v.flags & _FE_MIRROR:
            if v.mirror_id < D.MAX_MIRROR:
                self._mirror(pkt, v.mirror_id)
            if v.sec_mirror_id < D.MAX_MIRROR:
                self._mirror(pkt, v.sec_mirror_id)
        action = v.action
        if action == _ACTION_DROP:
            self._drop(pkt, D.DROP_FLOW_ACTION_DROP)
            return False
        if action == _ACTION_NAT:
            if not self._nat(pkt, v):
                return False
        elif action != _ACTION_FORWARD:
            self._drop(pkt, D.DROP_FLOW_ACTION_INVALID)
            return False
        if v.ttl and pkt.type == D.VP_TYPE_IP:
            b = pkt.writable()
            l3 = pkt.l3
            old = (b[l3 + 8] << 8) | b[l3 + 9]
            b[l3 + 8] = v.ttl
            csum = (b[l3 + 10] << 8) | b[l3 + 11]
            _U16.pack_into(b, l3 + 10, checksum_update16(csum, old, (v.ttl << 8) | b[l3 + 9]))
        return True

    def _validate_src(self, pkt: Packet, nh: NextHop) -> bool:
        if nh.type == C.NH_ENCAP:
            return nh.oif is pkt.vif
        if nh.type == C.NH_TUNNEL:
            return pkt.outer_src == struct.pack("<I", nh.tun_dip)
        if nh.type == C.NH_COMPOSITE:
            return any(c is not None and self._validate_src(pkt, c) for c, _ in nh.components)
        return True

    def _nat(self, pkt: Packet, v: FlowVerdict) -> bool:
        """``vr_inet_flow_nat``: addresses and ports from the reverse flow's key."""
        flows = self.flows
        if v.rflow < 0 or flows is None:
            self._drop(pkt, D.DROP_FLOW_NAT_NO_RFLOW)
            return False
        table = getattr(flows, "entry", None)
        if table is None:
            self._drop(pkt, D.DROP_FLOW_NAT_NO_RFLOW)
            return False
        r = table(v.rflow)
        if not r.flags & _FE_ACTIVE:
            self._drop(pkt, D.DROP_FLOW_NAT_NO_RFLOW)
            return False
        b = pkt.writable()
        l3 = pkt.l3
        l4 = l3 + (b[l3] & 0x0F) * 4
        proto = b[l3 + 9]
        rsip = bytes(int(x) for x in r.sip.split("."))
        rdip = bytes(int(x) for x in r.dip.split("."))
        changes: list[tuple[int, bytes]] = []
        if v.flags & 0x0002:  # SNAT: source := reverse destination
            changes.append((l3 + 12, rdip))
        if v.flags & 0x0008:  # DNAT: destination := reverse source
            changes.append((l3 + 16, rsip))
        ports: list[tuple[int, bytes]] = []
        if proto in (6, 17):
            if v.flags & 0x0004:  # SPAT
                ports.append((l4, r.dport.to_bytes(2, "big")))
            if v.flags & 0x0010:  # DPAT
                ports.append((l4 + 2, r.sport.to_bytes(2, "big")))
        l4_csum = l4 + (16 if proto == 6 else 6)
        has_l4_csum = proto == 6 or (proto == 17 and b[l4_csum : l4_csum + 2] != b"\x00\x00")
        for at, new in changes + ports:
            for i in (0, 2)[: len(new) // 2]:
                old = _U16.unpack_from(b, at + i)[0]
                nw = _U16.unpack_from(new, i)[0]
                if at < l4:
                    c = _U16.unpack_from(b, l3 + 10)[0]
                    _U16.pack_into(b, l3 + 10, checksum_update16(c, old, nw))
                if has_l4_csum and len(b) >= l4_csum + 2:
                    c = _U16.unpack_from(b, l4_csum)[0]
                    _U16.pack_into(b, l4_csum, checksum_update16(c, old, nw))
                _U16.pack_into(b, at + i, nw)
        return True

    def _flow_miss(self, pkt: Packet, key: bytes) -> bool:
        nh = pkt.nh
        if nh is not None and nh.flags & (C.NH_FLAG_RELAXED_POLICY | C.NH_FLAG_FLOW_LOOKUP):
            return True
        buf = pkt.buf
        if ((buf[pkt.l3 + 6] & 0x1F) << 8) | buf[pkt.l3 + 7]:
            self._drop(pkt, D.DROP_FLOW_UNUSABLE)
            return False
        if pkt.vif.flags & C.VIF_FLAG_DROP_NEW_FLOWS:
            self._drop(pkt, D.DROP_NEW_FLOWS)
            return False
        assert self.flows is not None
        src_info = pkt.vif.idx if not pkt.outer_src else struct.unpack("<I", pkt.outer_src)[0]
        try:
            index, _gen = self.flows.hold_on_miss(key, pkt.dvrf, src_info)
        except FlowTableFull:
            self._drop(pkt, D.DROP_FLOW_TABLE_FULL)
            return False
        pkt.flow_index = index
        nbytes = len(buf) - pkt.off
        held = self._enqueue(pkt, index)  # the trap carries the new entry's zero counters
        self.flows.add_stats(index, nbytes, 1)
        self.flow_last_used[index] = self.now()
        return held

    def _enqueue(self, pkt: Packet, index: int) -> bool:
        """``vr_enqueue_flow``: 3 packets held; the first one's clone trapped to the agent."""
        queue = self.held.get(index)
        if queue is None:
            queue = self.held[index] = []
        if len(queue) >= D.FLOW_QUEUE_ENTRIES:
            self._drop(pkt, D.DROP_FLOW_QUEUE_LIMIT_EXCEEDED)
            return False
        pkt.buf = bytes(pkt.buf)  # the caller may reuse its buffer
        queue.append(pkt)
        if len(queue) == 1:
            flows = self.flows
            assert flows is not None
            new = flows.take_new_flow(index)
            v = flows.verdict(index)
            nbytes, npackets = flows.stats(index)
            oflow = ((nbytes >> 32) & 0xFFFF) << 16 | ((npackets >> 32) & 0xFF)
            copy = pkt.clone()
            copy.dvrf = v.vrf
            self._trap(
                copy,
                D.TRAP_FLOW_MISS if new else D.TRAP_FLOW_ACTION_HOLD,
                param=index,
                param_1=pkt.nh.id if pkt.nh is not None else pkt.vif.nh_id,
                stats=(nbytes & 0xFFFFFFFF, npackets & 0xFFFFFFFF, oflow, v.gen_id),
            )
        return False

    def flow_set(self, index: int) -> None:
        """The agent set flow ``index``: replay or drop what it held (``vr_flow_work``)."""
        queue = self.held.get(index)
        if not queue or self.flows is None:
            return
        v = self.flows.verdict(index)
        if v.flags & _FE_ACTIVE and v.action == _ACTION_HOLD:
            return
        del self.held[index]
        for pkt in queue:
            if not v.flags & _FE_ACTIVE:
                self._drop(pkt, D.DROP_FLOW_ACTION_DROP)
                continue
            if not self._flow_action(pkt, v):
                continue
            self._reinject(pkt)

    def _reinject(self, pkt: Packet) -> None:
        """``vr_reinject_packet``: continue where the flow stage stopped it."""
        nh = pkt.nh
        if nh is not None and nh.type != C.NH_L2_RCV:
            return self._nh_output(pkt, nh)
        vtype = pkt.vif.type
        if vtype in _VHOST_TYPES or (vtype == C.VIF_TYPE_PHYSICAL and pkt.label < 0):
            pkt.off = pkt.l3
            return self._ip_input(pkt)
        if pkt.to_me and nh is not None:
            return self._l3_input(pkt)
        pkt.off = pkt.start
        self._bridge_input(pkt)

    # -- mirroring -------------------------------------------------------------------

    def _port_mirror(self, pkt: Packet, vif: Interface) -> None:
        self._mirror(pkt, vif.mir_id)

    def _mirror(self, pkt: Packet, mirror_id: int) -> None:
        """``vr_mirror``: a clone to the mirror's next hop, before the original continues."""
        if pkt.flags & D.VP_FLAG_FROM_DP:
            return
        found = self.tables.mirrors.get(mirror_id)
        if found is None:
            return
        nh, fields = found
        if not nh.flags & C.NH_FLAG_VALID:
            return
        copy = pkt.clone()
        copy.flags = D.VP_FLAG_FROM_DP | D.VP_FLAG_FLOW_SET
        if pkt.vif.type != C.VIF_TYPE_PHYSICAL:
            copy.off = copy.start
        if fields.get("mirr_flags", 0) & D.MIRROR_FLAG_DYNAMIC:
            meta = b"\xff\x00"
            copy.buf = bytes(copy.buf[: copy.off]) + meta + bytes(copy.buf[copy.off :])
            copy.l3 += len(meta)
        else:
            copy.label = fields.get("mirr_vni", 0)
        if nh.vrf >= 0:
            copy.dvrf = nh.vrf
        copy.flow_index = -1
        copy.outer_src = b""
        self._nh_output(copy, nh)

    # -- transmit, trap, drop --------------------------------------------------------

    def _vif_tx(self, pkt: Packet, vif: Interface, frame: Frame) -> None:
        """``vif_tx``: per-type tx, counters, mirror, ``--vlan_tci`` tagging, the port."""
        vtype = vif.type
        if vtype == C.VIF_TYPE_AGENT:
            # agent_tx: what is routed to the agent's interface reaches it as a NEXTHOP trap
            counters = vif.counters
            counters["opackets"] += 1
            counters["obytes"] += len(frame)
            return self._trap(pkt, D.TRAP_NEXTHOP, frame=frame)
        if vtype in _VHOST_TYPES:
            frame = _strip_tags(frame)
            if pkt.vif.type == C.VIF_TYPE_VIRTUAL and vif.mac:
                frame = vif.mac + bytes(frame[6:])
        elif vtype == C.VIF_TYPE_VIRTUAL_VLAN and vif.parent is not None:
            tag = b"\x81\x00" + _U16.pack(vif.ovlan_id & 0xFFF)
            frame = bytes(frame[:12]) + tag + bytes(frame[12:])
            counters = vif.counters
            counters["opackets"] += 1
            counters["obytes"] += len(frame)
            vif = vif.parent
            return self._port_tx(pkt, vif, frame)
        counters = vif.counters
        counters["opackets"] += 1
        counters["obytes"] += len(frame)
        if vif.flags & C.VIF_FLAG_MIRROR_TX and not pkt.flags & D.VP_FLAG_FROM_DP:
            m = Packet(frame, pkt.vif)
            m.flags = pkt.flags
            self._mirror(m, vif.mir_id)
        self._port_tx(pkt, vif, frame)

    def _port_tx(self, pkt: Packet, vif: Interface, frame: Frame) -> None:
        tci = self.vlan_tci
        if tci is not None and (self.vtest_vlan or vif.type == C.VIF_TYPE_PHYSICAL):
            frame = bytes(frame[:12]) + b"\x81\x00" + _U16.pack(tci & 0xFFFF) + bytes(frame[12:])
        if not self.output.transmit(vif.idx, frame):
            vif.counters["oerrors"] += 1
            self._drop(pkt, D.DROP_INTERFACE_TX_DISCARD, vif)

    def _trap(
        self,
        pkt: Packet,
        code: int,
        *,
        param: int = 0,
        param_1: int = 0,
        stats: tuple[int, int, int, int] = (0, 0, 0, 0),
        frame: Frame | None = None,
    ) -> None:
        """Hand the packet (from its frame start, or ``frame``) to the agent (``agent_send``)."""
        frame = bytes(pkt.buf[pkt.start :]) if frame is None else bytes(frame)
        if code in (D.TRAP_HANDLE_DF, D.TRAP_ZERO_TTL) and len(frame) > D.AGENT_MIN_PACKET_LEN:
            frame = frame[: D.AGENT_MIN_PACKET_LEN]
        if not self.trapper.trap(pkt.vif.idx, pkt.dvrf, code, param, param_1, stats, frame):
            self._drop(pkt, D.DROP_TRAP_NO_IF)

    def _drop(self, pkt: Packet, reason: int, vif: Interface | None = None) -> None:
        """Free with a reason: drop stats (global and the packet's vif) and the drop log."""
        where = vif if vif is not None else pkt.vif
        self.tables.count_drop(D.DROP_COUNTER[reason], where)
        ops = self.datapath.ops
        if not (ops["vo_pkt_droplog_en"] and ops["vo_pkt_droplog_buf_en"]):
            return
        buf = pkt.buf
        l3 = pkt.l3
        src = dst = b""
        sport = dport = 0
        if pkt.type == D.VP_TYPE_IP and len(buf) - l3 >= 20:
            src = bytes(buf[l3 + 12 : l3 + 16])
            dst = bytes(buf[l3 + 16 : l3 + 20])
            l4 = l3 + (buf[l3] & 0x0F) * 4
            if buf[l3 + 9] in (6, 17) and len(buf) - l4 >= 4:
                sport, dport = struct.unpack_from("!HH", buf, l4)
        elif pkt.type == D.VP_TYPE_IP6 and len(buf) - l3 >= 40:
            src = bytes(buf[l3 + 8 : l3 + 24])
            dst = bytes(buf[l3 + 24 : l3 + 40])
        minimal = bool(ops["vo_pkt_droplog_min_en"])
        self.datapath.drop_log.record(
            self.core,
            DropRecord(
                timestamp=int(time.time()),
                vp_type=0 if minimal else pkt.type,
                drop_reason=reason + 1,
                vif_idx=0 if minimal else where.idx,
                nh_id=0 if minimal or pkt.nh is None else pkt.nh.id,
                src=src,
                dst=dst,
                sport=sport,
                dport=dport,
                pkt_len=0 if minimal else min(len(buf) - pkt.start, 0xFFFF),
                pkt_header=b"" if minimal else bytes(buf[l3 : l3 + 100]),
            ),
        )


def _ip4(length: int, ident: int, proto: int, sip: bytes, dip: bytes) -> bytes:
    """An outer IPv4 header: TOS 0, DF clear, TTL 64, valid checksum."""
    hdr = _IP4_HDR.pack(0x45, 0, length, ident, 0, 64, proto, 0, sip, dip)
    return hdr[:10] + _U16.pack(checksum(hdr)) + hdr[12:]


def _strip_tags(frame: Frame) -> Frame:
    if len(frame) < 18 or frame[12:14] != b"\x81\x00":
        return frame
    out = bytes(frame[:12])
    pos = 12
    while len(frame) - pos >= 4 and frame[pos : pos + 2] == b"\x81\x00":
        pos += 4
    return out + bytes(frame[pos:])

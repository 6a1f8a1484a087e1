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
from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from vrtwist.datapath import constants as C
from vrtwist.datapath import offload
from vrtwist.datapath import pipeline_defs as D
from vrtwist.datapath.dispatcher import Datapath
from vrtwist.datapath.interfaces import (
    IFrameOutput,
    IOffloadPipeline,
    IPacketTrap,
    IPipelineTimers,
)
from vrtwist.datapath.offload import Gso
from vrtwist.datapath.pipeline_arp import ArpStage
from vrtwist.datapath.pipeline_core import (
    AF_INET,
    BCAST,
    U16,
    U32,
    VHOST_TYPES,
    Frame,
    Packet,
)
from vrtwist.datapath.pipeline_flows import FlowStage
from vrtwist.datapath.pipeline_tunnels import TunnelStage
from vrtwist.datapath.tables import Interface, NextHop
from vrtwist.packet.checksum import checksum, checksum_update16
from vrtwist.shmem.interfaces import IFlowDatapath
from vrtwist.shmem.jhash import jhash

__all__ = ["Packet", "Pipeline"]
ZERO_MAC = bytes(6)
#: what the fast path's table gives for a header it has not seen yet
_UNSEEN: Any = object()
#: decisions the bridged fast path keeps (cleared whole when full)
FAST_ENTRIES = 4096
#: vif flags under which a VM's frame takes more than the bridged fast path's steps
_FAST_VIF_FLAGS = (
    C.VIF_FLAG_MIRROR_RX | C.VIF_FLAG_SERVICE_IF | C.VIF_FLAG_POLICY_ENABLED | C.VIF_FLAG_MAC_LEARN
)
#: vif flags under which a VM's frame takes ``_vm_rx``'s steps before ``_virtual_input``
_VM_RX_FLAGS = C.VIF_FLAG_MIRROR_RX | C.VIF_FLAG_SERVICE_IF
#: (rx vif, tx vif, next hop, bridge index, bridge counter, VRF counter key, TCP slow)
FastEntry = tuple[
    Interface, Interface, NextHop, int, Callable[[int], None] | None, tuple[int, str], bool
]


class VmInput:
    """The fast path's entry for a unicast, untagged IP header from a VM vif without
    mirror or service flags: what ``_receive`` up to the flow stage would find out."""

    __slots__ = ("ptype", "vif")

    def __init__(self, vif: Interface, ptype: int) -> None:
        self.vif = vif
        self.ptype = ptype


@implementer(IOffloadPipeline, IPipelineTimers)
class Pipeline(FlowStage, TunnelStage, ArpStage):
    """The vRouter's forwarding path over one :class:`Datapath`'s tables."""

    def __init__(
        self,
        datapath: Datapath,
        output: IFrameOutput,
        trap: IPacketTrap,
        *,
        fast_path: bool = True,
        **options: Any,
    ) -> None:
        """``options`` are :class:`PipelineCore`'s (``flows``, ``now``, ``vlan_tci``, ...);
        ``fast_path=False`` takes every frame through the stages (the tests compare)."""
        super().__init__(datapath, output, trap, **options)
        self.fast_path = fast_path
        flows = self.flows
        if flows is not None:
            flows.set_listeners.append(self.flow_set)
        datapath.reset_hooks.append(self.reset)
        #: (rx vif, Ethernet header) -> the bridged fast path's decision, or None
        self._fast: dict[tuple[int, bytes], FastEntry | VmInput | None] = {}
        self._fast_gen = -1
        self._nh_handlers: dict[int, Callable[[Packet, NextHop], None]] = {
            C.NH_DISCARD: self._nh_discard,
            C.NH_RESOLVE: self._nh_resolve,
            C.NH_RCV: self._nh_rcv,
            C.NH_L2_RCV: self._nh_l2_rcv,
            C.NH_VRF_TRANSLATE: self._nh_vrf_translate,
            C.NH_ENCAP: self._nh_encap,
            C.NH_TUNNEL: self._nh_tunnel_offload,
            C.NH_COMPOSITE: self._nh_composite,
        }

    def reset(self) -> None:
        """``vrouter_ops`` RESET: held packets and per-flow data go with the tables."""
        self.held.clear()
        self.flow_last_used.clear()
        self._port_cache.clear()
        self.vrf_stats.clear()
        self.frag_table.clear()
        self.frag_assembler.clear()
        self.frag_release.clear()

    def sweep(self, now: float) -> None:
        """The fragment timers (``vr_fragment.c``'s table and assembler scanners), so
        what waits goes after its two seconds even when no fragment passes: table
        entries are forgotten, fragments still awaiting their first are dropped
        ``vds_frag_err``."""
        self.frag_table.expire(now)
        for held in self.frag_assembler.expire(now):
            self._drop(held, D.DROP_FRAGMENTS)

    def receive(self, vif_index: int, frame: Frame, gso: Gso | None = None) -> None:
        if type(frame) is bytes and self.fast_path:
            gen = self.datapath.generation
            fast = self._fast
            if self._fast_gen != gen:
                fast.clear()
                self._fast_gen = gen
            key = (vif_index, frame[:14])
            hit = fast.get(key, _UNSEEN)
            if hit is None:  # does not qualify: the stages, without a second lookup
                return self._receive(vif_index, frame, gso)
            if hit is not _UNSEEN:
                if type(hit) is VmInput:
                    return self._vm_input(hit, frame, gso)
                if not (hit[6] and len(frame) > 23 and frame[23] == 6):
                    return self._fast_forward(hit, frame, gso)
            self._receive(vif_index, frame, gso)
            if hit is _UNSEEN:  # first of its kind
                if len(fast) >= FAST_ENTRIES:
                    fast.clear()
                fast[key] = self._fast_entry(vif_index, key[1])
            return None
        return self._receive(vif_index, frame, gso)

    # -- the bridged fast path -----------------------------------------------------
    def _fast_entry(self, vif_index: int, head: bytes) -> FastEntry | VmInput | None:
        """The decision the bridge stage takes for a unicast IP frame from a plain VM vif
        to a plain vif through an L2 ENCAP next hop, or None where it takes more.

        Each condition below is one the slow path tests; where all hold, that path
        only counts (vif rx, bridge entry, VRF ``l2_encaps``, vif tx) and transmits the
        frame as received, whatever follows the Ethernet header. The entry is valid
        while ``datapath.generation`` is unchanged (any ksync request but a flow's, MAC
        learning).
        Where the bridge stage takes more but the frame is still a unicast IP frame of
        a VM vif without mirror or service flags, a :class:`VmInput` skips the steps
        before the flow stage.
        """
        vif = self.tables.interfaces.get(vif_index)
        if (
            vif is None
            or vif.type != C.VIF_TYPE_VIRTUAL
            or vif.flags & _VM_RX_FLAGS
            or len(head) < 14
            or head[0] & 1
            or head[12:14] not in (b"\x08\x00", b"\x86\xdd")
        ):
            return None
        bridged = self._fast_bridged(vif, head)
        if bridged is not None:
            return bridged
        return VmInput(vif, D.VP_TYPE_IP if head[12] == 0x08 else D.VP_TYPE_IP6)

    def _fast_bridged(self, vif: Interface, head: bytes) -> FastEntry | None:
        """``_fast_entry``'s bridged decision for a unicast IP frame of a VM vif."""
        if vif.flags & _FAST_VIF_FLAGS or self.vlan_tci is not None:
            return None
        hit = self.bridge_lookup(vif.vrf, head[:6])
        nh = self.tables.nexthops.get(hit[1]) if hit is not None else None
        if (
            hit is None
            or nh is None
            or nh.type != C.NH_ENCAP
            or nh.family != C.AF_BRIDGE
            or not nh.flags & C.NH_FLAG_VALID
            or nh.flags & (C.NH_FLAG_POLICY_ENABLED | C.NH_FLAG_FLOW_LOOKUP)
            or self._nh_handlers.get(C.NH_ENCAP) != self._nh_encap
        ):
            return None
        oif = nh.oif
        if (
            oif is None
            or oif.type not in (C.VIF_TYPE_VIRTUAL, C.VIF_TYPE_PHYSICAL)
            or oif.flags & C.VIF_FLAG_MIRROR_TX
        ):
            return None
        table = getattr(self.datapath.bridge, "bridge", None)
        count = table.add_packets if table is not None else None
        # the TCP MSS clamp looks into TCP frames: those take the slow path
        mss = head[12] == 0x08 and bool(self.datapath.ops.get("vo_from_vm_mss_adj"))
        return vif, oif, nh, hit[0], count, (vif.vrf, "l2_encaps"), mss

    def _fast_forward(self, entry: FastEntry, frame: bytes, gso: Gso | None) -> None:
        """What the slow path does for a frame ``_fast_entry`` said yes to."""
        vif, oif, nh, index, count, vrf_key, _mss = entry
        n = len(frame)
        counters = vif.counters
        counters["ipackets"] += 1
        counters["ibytes"] += n
        if count is not None:
            count(index)
        self.vrf_stats[vrf_key] += 1
        counters = oif.counters
        counters["opackets"] += 1
        counters["obytes"] += n
        if gso is None:
            if self.output.transmit(oif.idx, frame):
                return
        else:
            out = self.offload_output
            if out is None or not out.accepts_offload(oif.idx):
                return self._port_tx_offload(self._fast_packet(vif, nh, frame), oif, frame, gso)
            if out.transmit_offload(oif.idx, frame, offload.vnet_for(gso, len(frame))):
                return
        counters["oerrors"] += 1
        self._drop(self._fast_packet(vif, nh, frame), D.DROP_INTERFACE_TX_DISCARD, oif)

    def _vm_input(self, entry: VmInput, frame: bytes, gso: Gso | None) -> None:
        """What ``_receive`` does for a frame ``_fast_entry`` found a :class:`VmInput`
        for: rx counted, the packet classified as its header was, then the flow stage
        and the bridge stage as ``_virtual_input`` takes them (in the vif's VRF, no VLAN,
        which a new packet has already)."""
        vif = entry.vif
        pkt = Packet(frame, vif)
        pkt.gso = gso
        counters = vif.counters
        counters["ipackets"] += 1
        counters["ibytes"] += len(frame)
        pkt.type = entry.ptype
        pkt.l3 = 14
        if self._flow_forward(pkt):
            self._bridge_input(pkt)
        if self.frag_release:
            self.release_fragments()

    def _fast_packet(self, vif: Interface, nh: NextHop, frame: bytes) -> Packet:
        """The packet as the slow path has it at the tx step (for the drop log)."""
        pkt = Packet(frame, vif)
        self._classify(pkt)
        pkt.nh = nh
        return pkt

    def _receive(self, vif_index: int, frame: Frame, gso: Gso | None) -> None:
        vif = self.tables.interfaces.get(vif_index)
        if vif is None:
            self.tables.count_drop(D.DROP_COUNTER[D.DROP_INVALID_IF])
            return
        vtype = vif.type
        if (
            (vtype == C.VIF_TYPE_VIRTUAL or vtype == C.VIF_TYPE_PHYSICAL)
            and len(frame) >= 18
            and frame[12] == 0x81
            and frame[13] == 0
        ):
            sub = self._sub_vif(vif, ((frame[14] << 8) | frame[15]) & 0xFFF)
            if sub is not None:  # the sub-interface counts it, not the parent
                vif, vtype = sub, C.VIF_TYPE_VIRTUAL_VLAN
        pkt = Packet(frame, vif)
        pkt.gso = gso
        counters = vif.counters
        counters["ipackets"] += 1
        counters["ibytes"] += len(frame)
        if vtype == C.VIF_TYPE_VIRTUAL:
            if vif.flags & _VM_RX_FLAGS:
                self._vm_rx(pkt, vif)
            else:  # what ``_vm_rx`` does for a plain VM vif, without its call
                self._virtual_input(pkt, vif.vrf, D.VLAN_ID_INVALID)
        elif vtype == C.VIF_TYPE_PHYSICAL:
            self._eth_rx(pkt, vif)
        elif vtype in VHOST_TYPES:
            self._vhost_rx(pkt, vif)
        elif vtype == C.VIF_TYPE_AGENT:
            self._agent_rx(pkt, vif)
        elif vtype == C.VIF_TYPE_VIRTUAL_VLAN:
            self._vlan_rx(pkt, vif)
        else:
            self._drop(pkt, D.DROP_INVALID_IF)
        if self.frag_release:
            self.release_fragments()

    def _sub_vif(self, parent: Interface, vlan: int) -> Interface | None:
        """The VIRTUAL_VLAN sub-interface of ``parent`` for ``vlan`` (``vif_sub_interfaces``)."""
        for vif in self.tables.interfaces.values():
            if vif.parent is parent and vif.vlan_id == vlan and vif.type == C.VIF_TYPE_VIRTUAL_VLAN:
                return vif
        return None

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
        if pkt.gso is not None and (vif.flags & C.VIF_FLAG_MIRROR_RX or not self._tunnel_gro(pkt)):
            # from the fabric: what is decapsulated loses the headers the offload
            # points into, so its frames are finished first (but a tunnel's run of
            # TCP segments, merged into one super-frame that decapsulates whole)
            for seg in self._segments(pkt):
                self._eth_rx(seg, vif)
            return None
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
        vrf = U16.unpack_from(buf, 16)[0]
        inner = memoryview(buf)[44:]
        target = self.tables.interfaces.get(ifindex)
        if cmd == 1:  # AGENT_CMD_ROUTE
            p = Packet(inner, target if target is not None else vif)
            if buf[20:24] == b"\x00\x00\x00\x01" and buf[24:28] == b"\x00\x00\x00\x01":
                p.flags |= D.VP_FLAG_DIAG
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
        if (pkt.type == D.VP_TYPE_IP or pkt.type == D.VP_TYPE_IP6) and not self._flow_forward(pkt):
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

    def _bridge_input(self, pkt: Packet) -> None:
        """``vr_bridge_input``: bridge by destination MAC; L2_RCV makes it routed."""
        if pkt.to_me:
            return self._l3_input(pkt)
        vif = pkt.vif
        if vif.flags & C.VIF_FLAG_MAC_LEARN or (
            pkt.nh is not None and pkt.nh.flags & C.NH_FLAG_MAC_LEARN
        ):
            self._bridge_learn(pkt)
        buf = pkt.buf
        off = pkt.off
        from_vm = vif.type == C.VIF_TYPE_VIRTUAL
        multicast = pkt.flags & D.VP_FLAG_MULTICAST
        if (
            from_vm
            and (multicast or pkt.type == D.VP_TYPE_ARP)
            and self._vm_bridge_control(pkt, vif, multicast)
        ):
            return
        if multicast:
            if vif.mcast_vrf != 65535:
                pkt.dvrf = vif.mcast_vrf
            mac = BCAST
        else:
            mac = bytes(buf[off : off + 6])
        hit = self.bridge_lookup(pkt.dvrf, mac)
        nh = self.tables.nexthops.get(hit[1]) if hit is not None else None
        if nh is None or nh.type == C.NH_DISCARD:
            if multicast or not self._may_flood(pkt):
                return self._drop(pkt, D.DROP_L2_NO_ROUTE)
            hit = self.bridge_lookup(pkt.dvrf, BCAST)
            nh = self.tables.nexthops.get(hit[1]) if hit is not None else None
            if nh is None:
                return self._drop(pkt, D.DROP_L2_NO_ROUTE)
            pkt.flags |= D.VP_FLAG_MULTICAST
            self._vrf_count(pkt.dvrf, "uuc_floods")
        assert hit is not None
        self._bridge_count(hit[0])
        if hit[3] & C.VR_BE_LABEL_VALID_FLAG:
            pkt.label = hit[2]
        if from_vm and pkt.type == D.VP_TYPE_IP and self.datapath.ops.get("vo_from_vm_mss_adj"):
            self._mss_adjust(pkt, 40 if nh.type == C.NH_L2_RCV else 62)
        if (
            vif.type == C.VIF_TYPE_PHYSICAL
            and not multicast
            and pkt.type in (D.VP_TYPE_IP, D.VP_TYPE_IP6)
            and nh.type == C.NH_TUNNEL
            and not vif.flags & C.VIF_FLAG_FAB_GW_MODE
        ):
            return self._drop(pkt, D.DROP_INVALID_SOURCE)
        self._nh_output(pkt, nh)

    def _vm_bridge_control(self, pkt: Packet, vif: Interface, multicast: int) -> bool:
        """Step 2 of ``vr_bridge_input`` for a VM's ARP and multicast: True if consumed.

        Unicast ARP (any ARP with MAC_PROXY) is answered, a DHCP client's broadcast is
        trapped, and with MAC_PROXY a multicast neighbour solicitation is answered.
        """
        ptype = pkt.type
        if ptype == D.VP_TYPE_ARP:
            return (not multicast or bool(vif.flags & C.VIF_FLAG_MAC_PROXY)) and self._arp_input(
                pkt
            )
        if ptype == D.VP_TYPE_IP:
            if self._dhcp_client(pkt):
                self._trap(pkt, D.TRAP_L3_PROTOCOLS)
                return True
            return False
        return (
            ptype == D.VP_TYPE_IP6
            and bool(vif.flags & C.VIF_FLAG_MAC_PROXY)
            and self._neighbor_input(pkt)
        )

    def _bridge_learn(self, pkt: Packet) -> None:
        """``vr_bridge_learn``: an unknown source MAC gets an entry pointing at the
        broadcast entry's next hop (MAC_NEW) and is trapped MAC_LEARN; a known one that
        fails its source check is flagged MAC_MOVED and trapped MAC_MOVE. The frame itself
        goes on either way. The table's size bounds what a storm of source MACs can take,
        the per-vif trap budget what it can send to the agent."""
        buf = pkt.buf
        at = pkt.off + 6
        smac = bytes(buf[at : at + 6])
        if smac[0] & 1 or smac == ZERO_MAC:
            return
        vrf = pkt.dvrf
        hit = self.bridge_lookup(vrf, smac)
        bridge = self.datapath.bridge
        if hit is None:
            flood = self.bridge_lookup(vrf, BCAST)
            if flood is None:
                return
            index = bridge.learn(vrf, smac, flood[1])
            self.datapath.generation += 1
            if index >= 0:
                self._trap(pkt, D.TRAP_MAC_LEARN, param=index)
            return
        if hit[3] & (C.VR_BE_MAC_NEW_FLAG | C.VR_BE_MAC_MOVED_FLAG):
            return  # the agent has been told already
        nh = self.tables.nexthops.get(hit[1])
        if nh is None or self._validate_src(pkt, nh):
            return
        bridge.mark_moved(vrf, smac)
        self.datapath.generation += 1
        self._trap(pkt, D.TRAP_MAC_MOVE, param=hit[0])

    def _mss_adjust(self, pkt: Packet, overlay: int) -> None:
        """TCP MSS clamp of a SYN from a VM (the DPDK vRouter's ``vr_mss_adjust``).

        Only with a physical vif: the MSS option is lowered to what fits the fabric MTU
        after the overlay headers; the TCP checksum is updated incrementally.
        """
        buf = pkt.buf
        l3 = pkt.l3
        if len(buf) - l3 < 40 or buf[l3 + 9] != 6 or (buf[l3 + 6] & 0x1F) | buf[l3 + 7]:
            return
        ihl = (buf[l3] & 0x0F) * 4
        l4 = l3 + ihl
        if len(buf) - l4 < 20 or not buf[l4 + 13] & 0x02:
            return
        if buf[l4 + 12] < 0x60 and pkt.gso is None:
            return  # no TCP options: no MSS to clamp (and no checksum to settle)
        phys = self._physical_vif()
        if phys is None or not self._settle(pkt):
            return
        buf = pkt.buf
        l3 = pkt.l3
        l4 = l3 + ihl
        limit = self._mtu(phys) - overlay - ihl - 20
        end = min(len(buf), l4 + (buf[l4 + 12] >> 4) * 4)
        at = l4 + 20
        while at < end:
            kind = buf[at]
            if kind == 0:
                return
            if kind == 1:
                at += 1
                continue
            if at + 1 >= end or buf[at + 1] < 2:
                return
            if kind == 2 and buf[at + 1] == 4 and at + 4 <= end:
                mss = U16.unpack_from(buf, at + 2)[0]
                if mss > limit > 0:
                    b = pkt.writable()
                    U16.pack_into(b, at + 2, limit)
                    if (at - l4) % 2 == 0:
                        csum = U16.unpack_from(b, l4 + 16)[0]
                        U16.pack_into(b, l4 + 16, checksum_update16(csum, mss, limit))
                    else:  # an odd-aligned option: recompute over the pseudo header
                        tlen = U16.unpack_from(b, l3 + 2)[0] - ihl
                        b[l4 + 16 : l4 + 18] = b"\x00\x00"
                        pseudo = bytes(b[l3 + 12 : l3 + 20]) + bytes((0, 6)) + U16.pack(tlen)
                        U16.pack_into(b, l4 + 16, checksum(pseudo + bytes(b[l4 : l4 + tlen])))
                return
            at += buf[at + 1]

    def _physical_vif(self) -> Interface | None:
        for vif in self.tables.interfaces.values():
            if vif.type == C.VIF_TYPE_PHYSICAL:
                return vif
        return None

    @staticmethod
    def _dhcp_client(pkt: Packet) -> bool:
        """A DHCP client packet (UDP source port 68) from a vif with DHCP_ENABLED."""
        if not pkt.vif.flags & C.VIF_FLAG_DHCP_ENABLED:
            return False
        buf: Frame = pkt.buf
        l3 = pkt.l3
        if len(buf) - l3 < 28 or buf[l3 + 9] != 17:
            return False
        l4 = l3 + (buf[l3] & 0x0F) * 4
        return len(buf) - l4 >= 2 and buf[l4] == 0 and buf[l4 + 1] == 68

    def _may_flood(self, pkt: Packet) -> bool:
        if pkt.vif.flags & C.VIF_FLAG_UNKNOWN_UC_FLOOD:
            return True
        nh = pkt.nh
        return nh is not None and bool(nh.flags & C.NH_FLAG_UNKNOWN_UC_FLOOD)

    def _l3_input(self, pkt: Packet) -> None:
        """``vr_l3_input``: the L2 header pulled, IPv4 to ``vr_ip_input``."""
        pkt.off = pkt.l3
        if pkt.type == D.VP_TYPE_IP:
            return self._ip_input(pkt)
        if pkt.type == D.VP_TYPE_IP6:
            if pkt.buf[pkt.l3 + 6 : pkt.l3 + 7] == b"\x3a" and self._neighbor_input(pkt):
                return  # a solicitation to the router's MAC answered by proxy
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
        flags = pkt.flags
        if flags & D.VP_FLAG_TO_ME:
            return self._ip_rcv(pkt, None)
        # a packet the flow stage has passed (FLOW_SET) goes on without asking it again
        if not flags & D.VP_FLAG_FLOW_SET and not self._flow_forward(pkt):
            return
        self._forward(pkt)

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
            table = self.datapath.routes.vrfs.get((AF_INET, pkt.dvrf))  # ``_route`` inline
            entry = table.lookup(U32.unpack_from(buf, l3 + 16)[0]) if table is not None else None
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
            if (nh.type == C.NH_VRF_TRANSLATE and nh.family == AF_INET) or gateway:
                pkt.ttl = ttl
            else:
                if type(buf) is not bytearray:  # ``pkt.writable()`` inline
                    buf = pkt.buf = bytearray(buf)
                buf[l3 + 8] = ttl - 1
                # RFC 1624 for the TTL/protocol word less 0x100: ~old + new is 0xFEFF
                # whatever the word, and one fold is enough for the sum below
                s = ((buf[l3 + 10] << 8) | buf[l3 + 11]) ^ 0xFFFF
                s += 0xFEFF
                U16.pack_into(buf, l3 + 10, ((s & 0xFFFF) + (s >> 16)) ^ 0xFFFF)
                pkt.ttl = ttl - 1
        else:
            pkt.ttl = ttl
        self._nh_output(pkt, nh)

    def _nh_output(self, pkt: Packet, nh: NextHop) -> None:
        """``nh_output``: zero-TTL trap, validity, NH-forced flow lookup, dispatch."""
        if pkt.ttl == 0:
            return self._trap(pkt, D.TRAP_ZERO_TTL)
        pkt.nh = nh
        if not nh.flags & C.NH_FLAG_VALID:
            return self._drop(pkt, D.DROP_INVALID_NH)
        if (
            not pkt.flags & D.VP_FLAG_FLOW_SET  # first: a released packet has it
            and nh.flags & (C.NH_FLAG_POLICY_ENABLED | C.NH_FLAG_FLOW_LOOKUP)
            and pkt.type in (D.VP_TYPE_IP, D.VP_TYPE_IP6)
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

    def _nh_discard(self, pkt: Packet, nh: NextHop) -> None:
        self._vrf_count(pkt.dvrf, "discards")
        self._drop(pkt, D.DROP_DISCARD)

    def _nh_resolve(self, pkt: Packet, nh: NextHop) -> None:
        self._vrf_count(pkt.dvrf, "resolves")
        if pkt.vif.type in VHOST_TYPES or pkt.vif.type == C.VIF_TYPE_PHYSICAL:
            peer = self._bridge_vif(pkt.vif)
            if peer is not None:
                self._vif_tx(pkt, peer, bytes(pkt.buf[pkt.start :]))
        self._trap(pkt, D.TRAP_RESOLVE)

    def _nh_l2_rcv(self, pkt: Packet, nh: NextHop) -> None:
        """``nh_l2_rcv``: the frame is for the router: route it (fmd_to_me)."""
        self.vrf_stats[(pkt.dvrf, "l2_receives")] += 1
        pkt.to_me = True
        if pkt.type == D.VP_TYPE_IP:  # ``_l3_input``'s first step, without its call
            pkt.off = pkt.l3
            return self._ip_input(pkt)
        self._l3_input(pkt)

    def _nh_vrf_translate(self, pkt: Packet, nh: NextHop) -> None:
        self._vrf_count(pkt.dvrf, "vrf_translates")
        pkt.dvrf = nh.vrf
        if nh.family == AF_INET:
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
        self.vrf_stats[(pkt.dvrf, "encaps")] += 1
        frame = nh.encap[:-2] + etype + buf[off:]  # bytes: the encap is bytes
        if pkt.flags & D.VP_FLAG_DIAG:
            return self._trap(pkt, D.TRAP_DIAG, param=oif.idx)
        self._vif_tx(pkt, oif, frame)

    def _nh_composite(self, pkt: Packet, nh: NextHop) -> None:
        if nh.flags & (C.NH_FLAG_COMPOSITE_ECMP | C.NH_FLAG_COMPOSITE_LU_ECMP):
            return self._ecmp(pkt, nh)
        if (
            nh.flags & C.NH_FLAG_MCAST
            and pkt.vif.type == C.VIF_TYPE_VIRTUAL
            and self._mcast_control(pkt)
        ):
            return  # nh_handle_mcast_control_pkt: answered by proxy or given to the agent
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

    def _mcast_control(self, pkt: Packet) -> bool:
        """A VM's ARP or IPv6 control packet in the multicast next hop: True if consumed."""
        if pkt.type == D.VP_TYPE_ARP:
            return self._arp_input(pkt)
        return pkt.type == D.VP_TYPE_IP6 and self._ip6_mcast_control(pkt)

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
            index = self._ecmp_select(pkt, nh, count)
            if index < 0:
                return self._drop(pkt, D.DROP_INVALID_NH)
        member, label = nh.components[index]
        if member is None:  # the flow's member went away: an active one instead
            active = [(c, lb) for c, lb in nh.components if c is not None]
            if not active:
                return self._drop(pkt, D.DROP_INVALID_NH)
            member, label = active[self._ecmp_hash(pkt) % len(active)]
        if not nh.flags & C.NH_FLAG_COMPOSITE_LU_ECMP and label >= 0:
            pkt.label = label
        self._vrf_count(pkt.dvrf, "ecmp_composites")
        self._nh_output(pkt, member)

    def _ecmp_select(self, pkt: Packet, nh: NextHop, count: int) -> int:
        """``nh_composite_ecmp_select_nh`` without a usable index from the flow.

        A flow's packets first try the member its reverse flow came in on, then the
        hash; an empty slot falls back to the active members. The choice is written
        into the flow entry (``fe_ecmp_nh_index``) so later packets skip all this.
        """
        components = nh.components
        flows = self.flows
        flow_index = pkt.flow_index
        index = -1
        if flow_index >= 0 and flows is not None:
            index = self._ecmp_reverse_member(flows, flow_index, components)
        if index < 0:
            index = self._ecmp_hash(pkt) % count
            if components[index][0] is None:
                active = [i for i, (c, _lb) in enumerate(components) if c is not None]
                if not active:
                    return -1
                index = active[self._ecmp_hash(pkt) % len(active)]
        if flow_index >= 0 and flows is not None:
            flows.set_ecmp_index(flow_index, index)
            pkt.ecmp_nh_index = index
        return index

    @staticmethod
    def _ecmp_reverse_member(
        flows: IFlowDatapath, flow_index: int, components: list[tuple[NextHop | None, int]]
    ) -> int:
        """The member leading back to where the reverse flow's packets came from, or -1."""
        rflow = flows.verdict(flow_index).rflow
        if rflow < 0 or rflow == flow_index:
            return -1
        src = flows.src_info(rflow)
        if src < 0:
            return -1
        for i, (member, _label) in enumerate(components):
            if member is None:
                continue
            if member.type == C.NH_TUNNEL and member.tun_dip & 0xFFFFFFFF == src:
                return i
            if member.type == C.NH_ENCAP and member.oif is not None and member.oif.idx == src:
                return i
        return -1

    def _ecmp_hash(self, pkt: Packet) -> int:
        key = self._flow_key(pkt)
        if key is None:
            buf = pkt.buf
            return jhash(bytes(buf[pkt.start : pkt.start + 14])) + pkt.dvrf
        return jhash(key)

"""The packet pipeline's shared state and primitives: the packet, counters, tx, traps, drops.

:class:`PipelineCore` holds what every stage needs (tables, output, trap, flow table,
counters) and the primitives every stage calls: classification, bridge and route
lookups, ``vif_tx``, ``agent_send`` and the drop accounting. The stages
(``pipeline_flows``, ``pipeline_tunnels``, ``pipeline_arp``) and
:class:`vrtwist.datapath.pipeline.Pipeline` build on it; a stage calls another stage's
entry points through the declarations at the end of the class.
"""

from __future__ import annotations

import struct
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from vrtwist.datapath import constants as C
from vrtwist.datapath import offload
from vrtwist.datapath import pipeline_defs as D
from vrtwist.datapath.dispatcher import BridgeRoutesInMemory, Datapath
from vrtwist.datapath.droplog import DropRecord
from vrtwist.datapath.interfaces import IFrameOutput, IOffloadOutput, IPacketTrap
from vrtwist.datapath.offload import Gso
from vrtwist.datapath.pipeline_frag import FragKey, FragmentAssembler, FragmentTable
from vrtwist.datapath.routes import RouteEntry
from vrtwist.datapath.tables import Interface, NextHop
from vrtwist.packet.checksum import checksum
from vrtwist.shmem.interfaces import IFlowDatapath

__all__ = ["Packet", "PipelineCore"]

Frame = bytes | bytearray | memoryview
BridgeHit = tuple[int, int, int, int]  # index, nh id, label, label flags

U16 = struct.Struct("!H")
U32 = struct.Struct("!I")
IP4_HDR = struct.Struct("!BBHHHBBH4s4s")
UDP_HDR = struct.Struct("!HHHH")
VXLAN_HDR = struct.Struct("!II")
FLOW_KEY4 = struct.Struct("<BBH4sI8s")
W2 = struct.Struct("<2I")
AF_INET = C.AF_INET
BCAST = b"\xff" * 6
ZERO4 = bytes(4)
GRE_MPLS = b"\x00\x00\x88\x47"
VXLAN_I = 0x08000000
TUNNEL_KINDS = (
    C.NH_FLAG_TUNNEL_GRE | C.NH_FLAG_TUNNEL_UDP_MPLS | C.NH_FLAG_TUNNEL_VXLAN | C.NH_FLAG_TUNNEL_UDP
)
VHOST_TYPES = (C.VIF_TYPE_HOST, C.VIF_TYPE_GATEWAY, C.VIF_TYPE_XEN_LL_HOST)
# vr_flow entry flags (KS 5.4) the pipeline acts on
FE_ACTIVE = 0x0001
FE_EVICT_CANDIDATE = 0x0400
FE_MIRROR = 0x2000
FE_VRFT = 0x4000
ACTION_DROP, ACTION_HOLD, ACTION_FORWARD, ACTION_NAT = 0, 1, 2, 3
TCP_FIN, TCP_SYN, TCP_RST = 0x0001, 0x0008, 0x0080


class Packet:
    """``struct vr_packet`` plus ``struct vr_forwarding_md``: the per-packet state.

    ``buf`` is the whole frame buffer; ``start`` is where the received frame begins (its
    Ethernet header), ``off`` the data pointer, ``l3`` the network header.
    """

    __slots__ = (
        "buf",
        "dvrf",
        "ecmp_nh_index",
        "flags",
        "flow_index",
        "gso",
        "l3",
        "label",
        "nh",
        "off",
        "outer_src",
        "start",
        "to_me",
        "ttl",
        "type",
        "udp_src_port",
        "vif",
        "vlan",
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
        #: offload state still to finish (:data:`vrtwist.datapath.offload.Gso`), or None
        self.gso: Gso | None = None

    def clone(self) -> Packet:
        """A copy with its own buffer (a mirror or trap copy)."""
        p = Packet.__new__(Packet)
        for name in Packet.__slots__:
            setattr(p, name, getattr(self, name))
        p.buf = bytearray(self.buf)
        return p

    def sibling(self, buf: Frame) -> Packet:
        """A copy of the metadata around another buffer ``buf`` (no offload state)."""
        p = Packet.__new__(Packet)
        for name in Packet.__slots__:
            setattr(p, name, getattr(self, name))
        p.buf = buf
        p.gso = None
        return p

    def writable(self) -> bytearray:
        """The buffer as a bytearray, copied once when it was a read-only frame."""
        buf = self.buf
        if type(buf) is not bytearray:
            buf = self.buf = bytearray(buf)
        return buf


class PipelineCore:
    """State and primitives shared by the pipeline stages."""

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
        #: the output again when its ports may take offloaded frames (else None)
        self.offload_output: IOffloadOutput | None = (
            output if IOffloadOutput.providedBy(output) else None
        )
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
        #: IPv4 fragments: ports by (VRF, addresses, IP id), and those awaiting their first
        self.frag_table = FragmentTable()
        self.frag_assembler: FragmentAssembler[Packet] = FragmentAssembler()
        #: keys whose first fragment has just been seen (released after it went on)
        self.frag_release: list[FragKey] = []

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

    def _xconnect(self, pkt: Packet) -> None:
        """``vif_xconnect``: the frame as received to the other half of physical/vhost."""
        vif = pkt.vif
        peer = self._bridge_vif(vif)
        if peer is None:
            return self._drop(pkt, D.DROP_INVALID_IF)
        self._vif_tx(pkt, peer, memoryview(pkt.buf)[pkt.start :])

    def _bridge_vif(self, vif: Interface) -> Interface | None:
        want = (C.VIF_TYPE_PHYSICAL,) if vif.type in VHOST_TYPES else (C.VIF_TYPE_HOST,)
        if vif.type not in VHOST_TYPES and vif.type != C.VIF_TYPE_PHYSICAL:
            return None
        for other in self.tables.interfaces.values():
            if other.type in want:
                return other
        return None

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

    def _route(self, family: int, vrf: int, address: int) -> RouteEntry | None:
        table = self.datapath.routes.vrfs.get((family, vrf))
        return table.lookup(address) if table is not None else None

    def _vrf_count(self, vrf: int, name: str) -> None:
        self.vrf_stats[(vrf, name)] += 1

    @staticmethod
    def _data(pkt: Packet) -> Frame:
        buf: Frame = pkt.buf
        off = pkt.off
        if off == 0:
            return buf
        return memoryview(buf)[off:]

    def _input_error(self, pkt: Packet, reason: int = D.DROP_INTERFACE_DROP) -> None:
        pkt.vif.counters["ierrors"] += 1
        self._drop(pkt, reason)

    def _vif_tx(self, pkt: Packet, vif: Interface, frame: Frame) -> None:
        """``vif_tx``: per-type tx, counters, mirror, ``--vlan_tci`` tagging, the port."""
        vtype = vif.type
        if vtype == C.VIF_TYPE_AGENT:
            # agent_tx: what is routed to the agent's interface reaches it as a NEXTHOP trap
            counters = vif.counters
            counters["opackets"] += 1
            counters["obytes"] += len(frame)
            return self._trap(pkt, D.TRAP_NEXTHOP, frame=frame)
        if vtype in VHOST_TYPES:
            frame = strip_tags(frame)
            if pkt.vif.type == C.VIF_TYPE_VIRTUAL and vif.mac:
                frame = vif.mac + bytes(frame[6:])
        elif vtype == C.VIF_TYPE_VIRTUAL_VLAN and vif.parent is not None:
            tag = b"\x81\x00" + U16.pack(vif.ovlan_id & 0xFFF)
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
        if self.vlan_tci is not None or pkt.gso is not None:
            return self._port_tx(pkt, vif, frame)
        if not self.output.transmit(vif.idx, frame):  # ``_port_tx`` inline: no tag, no offload
            counters["oerrors"] += 1
            self._drop(pkt, D.DROP_INTERFACE_TX_DISCARD, vif)

    def _port_tx(self, pkt: Packet, vif: Interface, frame: Frame) -> None:
        tci = self.vlan_tci
        if tci is not None and (self.vtest_vlan or vif.type == C.VIF_TYPE_PHYSICAL):
            frame = bytes(frame[:12]) + b"\x81\x00" + U16.pack(tci & 0xFFFF) + bytes(frame[12:])
        gso = pkt.gso
        if gso is not None:
            return self._port_tx_offload(pkt, vif, frame, gso)
        if not self.output.transmit(vif.idx, frame):
            vif.counters["oerrors"] += 1
            self._drop(pkt, D.DROP_INTERFACE_TX_DISCARD, vif)

    def _port_tx_offload(self, pkt: Packet, vif: Interface, frame: Frame, gso: Gso) -> None:
        """A frame with offload state: whole to a port that takes it, else finished here."""
        out = self.offload_output
        if out is not None and out.accepts_offload(vif.idx):
            sent = out.transmit_offload(vif.idx, frame, offload.vnet_for(gso, len(frame)))
        else:
            try:
                frames = offload.finish_carried(frame, gso)
            except offload.OffloadError:
                return self._drop(pkt, D.DROP_INVALID_PACKET, vif)
            transmit = self.output.transmit
            index = vif.idx
            sent = all([transmit(index, f) for f in frames])
        if not sent:
            vif.counters["oerrors"] += 1
            self._drop(pkt, D.DROP_INTERFACE_TX_DISCARD, vif)

    def _segments(self, pkt: Packet) -> list[Packet]:
        """The wire packets a packet with offload state stands for (checksums finished).

        Each has its own buffer from the frame start and no offload state; the
        forwarding metadata is shared. Used where a frame cannot leave whole: a tunnel
        encapsulation, a trap to the agent, a header rewrite of the transport layer.
        """
        gso = pkt.gso
        assert gso is not None
        start = pkt.start
        frame = memoryview(pkt.buf)[start:] if start else pkt.buf
        try:
            frames = offload.finish_carried(frame, gso)
        except offload.OffloadError:
            pkt.gso = None
            self._drop(pkt, D.DROP_INVALID_PACKET)
            return []
        out = []
        for f in frames:
            p = pkt.sibling(f if type(f) is bytearray else bytearray(f))
            p.start = 0
            p.off = pkt.off - start
            p.l3 = pkt.l3 - start
            out.append(p)
        return out

    def _settle(self, pkt: Packet) -> bool:
        """Finish a partial checksum in place (no GSO); False for a GSO super-frame."""
        gso = pkt.gso
        if gso is None:
            return True
        if gso[1] != offload.GSO_NONE:
            return False
        segs = self._segments(pkt)
        if not segs:
            return False
        pkt.buf, pkt.start, pkt.off, pkt.l3, pkt.gso = segs[0].buf, 0, segs[0].off, segs[0].l3, None
        return True

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
        if pkt.gso is not None:
            return self._trap_offload(pkt, code, param, param_1, stats, frame)
        frame = bytes(pkt.buf[pkt.start :]) if frame is None else bytes(frame)
        if code in (D.TRAP_HANDLE_DF, D.TRAP_ZERO_TTL) and len(frame) > D.AGENT_MIN_PACKET_LEN:
            frame = frame[: D.AGENT_MIN_PACKET_LEN]
        if not self.trapper.trap(pkt.vif.idx, pkt.dvrf, code, param, param_1, stats, frame):
            self._drop(pkt, D.DROP_TRAP_NO_IF)

    def _trap_offload(
        self,
        pkt: Packet,
        code: int,
        param: int,
        param_1: int,
        stats: tuple[int, int, int, int],
        frame: Frame | None,
    ) -> None:
        """The agent gets wire frames: each segment trapped (a flow trap: the first)."""
        if frame is not None:  # a trap of a rewritten frame: it ends like the packet
            gso = pkt.gso
            assert gso is not None
            try:
                frames = offload.finish_carried(frame, gso)
            except offload.OffloadError:
                return self._drop(pkt, D.DROP_INVALID_PACKET)
            segs: list[tuple[Packet, Frame | None]] = [(pkt.sibling(pkt.buf), f) for f in frames]
        else:
            segs = [(p, None) for p in self._segments(pkt)]
        if code in (D.TRAP_FLOW_MISS, D.TRAP_FLOW_ACTION_HOLD):
            segs = segs[:1]
        for p, one in segs:
            self._trap(p, code, param=param, param_1=param_1, stats=stats, frame=one)

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

    # -- entry points of the other stages (defined by the stage that owns them) -------

    def _arp_input(self, pkt: Packet) -> bool:
        raise NotImplementedError

    def _bridge_input(self, pkt: Packet) -> None:
        raise NotImplementedError

    def _flow_forward(self, pkt: Packet) -> bool:
        raise NotImplementedError

    def _flow_key(self, pkt: Packet) -> bytes | None:
        raise NotImplementedError

    def _forward(self, pkt: Packet) -> None:
        raise NotImplementedError

    def _ip_input(self, pkt: Packet) -> None:
        raise NotImplementedError

    def _ip_rcv(self, pkt: Packet, nh: NextHop | None) -> None:
        raise NotImplementedError

    def _l3_input(self, pkt: Packet) -> None:
        raise NotImplementedError

    def _mirror(self, pkt: Packet, mirror_id: int) -> None:
        raise NotImplementedError

    def _nh_output(self, pkt: Packet, nh: NextHop) -> None:
        raise NotImplementedError

    def _neighbor_input(self, pkt: Packet) -> bool:
        raise NotImplementedError

    def _validate_src(self, pkt: Packet, nh: NextHop) -> bool:
        raise NotImplementedError

    def _reinject(self, pkt: Packet) -> None:
        raise NotImplementedError

    def _fragment_ports(self, pkt: Packet, l4: int, proto: int, lookup: bool) -> bytes | None:
        raise NotImplementedError

    def _flow_key_ports(self, pkt: Packet, l4: int, proto: int) -> bytes:
        """Key ports of an IPv4 fragment as the fragment table knows them (read only)."""
        return self._fragment_ports(pkt, l4, proto, False) or bytes(4)


def ip4_header(length: int, ident: int, proto: int, sip: bytes, dip: bytes) -> bytes:
    """An outer IPv4 header: TOS 0, DF clear, TTL 64, valid checksum."""
    hdr = IP4_HDR.pack(0x45, 0, length, ident, 0, 64, proto, 0, sip, dip)
    return hdr[:10] + U16.pack(checksum(hdr)) + hdr[12:]


def strip_tags(frame: Frame) -> Frame:
    if len(frame) < 18 or frame[12:14] != b"\x81\x00":
        return frame
    out = bytes(frame[:12])
    pos = 12
    while len(frame) - pos >= 4 and frame[pos : pos + 2] == b"\x81\x00":
        pos += 4
    return out + bytes(frame[pos:])

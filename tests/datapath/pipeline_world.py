"""A datapath, a shared-memory flow table, recording port/agent doubles and a pipeline.

The doubles implement the real seams (checked with ``verifyObject`` in the tests); the
tables are programmed through ``Datapath.handle`` with Sandesh requests, as the agent
and the vtest driver program them.
"""

from __future__ import annotations

import struct
from typing import Any

from zope.interface import implementer

from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import Datapath, make
from vrtwist.datapath.interfaces import IFrameOutput, IPacketTrap
from vrtwist.datapath.pipeline import Pipeline
from vrtwist.packet.headers import (
    ETH_P_IP,
    UDP,
    Ethernet,
    IPv4,
)
from vrtwist.shmem import layout as L
from vrtwist.shmem.bridgetable import BridgeTable
from vrtwist.shmem.flowtable import FlowTable
from vrtwist.shmem.requests import BridgeRoutes, FlowRequests


@implementer(IFrameOutput)
class RecordingOutput:
    """Keeps every transmitted frame as (vif, bytes); ``refuse`` makes a vif's queue full."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.refuse: set[int] = set()

    def transmit(self, vif_index: int, frame: bytes | bytearray | memoryview) -> bool:
        if vif_index in self.refuse:
            return False
        self.frames.append((vif_index, bytes(frame)))
        return True

    def on(self, vif_index: int) -> list[bytes]:
        return [f for i, f in self.frames if i == vif_index]


@implementer(IPacketTrap)
class RecordingTrap:
    """Keeps every trap's arguments; ``accept`` False plays "no agent attached"."""

    def __init__(self) -> None:
        self.traps: list[tuple[int, int, int, int, int, tuple[int, int, int, int], bytes]] = []
        self.accept = True

    def trap(
        self,
        vif_index: int,
        vrf: int,
        code: int,
        param: int,
        param_1: int,
        stats: tuple[int, int, int, int],
        frame: bytes,
    ) -> bool:
        if not self.accept:
            return False
        self.traps.append((vif_index, vrf, code, param, param_1, stats, bytes(frame)))
        return True


def ip_int(dotted: str) -> int:
    """An address as the vRouter's host-order i32 of the network bytes (nhr_tun_sip)."""
    return struct.unpack("<i", bytes(int(x) for x in dotted.split(".")))[0]


def ip_bytes(dotted: str) -> bytes:
    return bytes(int(x) for x in dotted.split("."))


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def udp_frame(
    dst: str = "de:ad:be:ef:00:01",
    src: str = "de:ad:be:ef:00:02",
    sip: str = "1.1.1.1",
    dip: str = "2.2.2.2",
    sport: int = 7936,
    dport: int = 7936,
    payload: bytes = b"kokotinykokotiny" * 5,
    ttl: int = 64,
    ident: int = 1,
    frag: int = 0,
    proto: int = 17,
) -> bytes:
    """Ethernet + IPv4 + UDP built with the packet codecs (the vtest frame by default)."""
    udp = UDP(sport, dport, 8 + len(payload), 0x79A7).pack() + payload
    ip = IPv4(ip_bytes(sip), ip_bytes(dip), proto, 20 + len(udp), ident, ttl, frag=frag)
    return Ethernet(mac(dst), mac(src), ETH_P_IP).pack() + ip.pack() + udp


class World:
    """One forwarding extension in memory."""

    def __init__(
        self,
        *,
        shmem_bridge: bool = True,
        flow_entries: int = 1024,
        flow_oentries: int = 1024,
        **options: Any,
    ) -> None:
        self.dp = Datapath()
        size = (flow_entries + flow_oentries) * L.FLOW_ENTRY_SIZE
        self.flows = FlowTable(bytearray(size), flow_entries, flow_oentries)
        self.dp.register("vr_flow_req", FlowRequests(self.flows))
        if shmem_bridge:
            bridge = BridgeTable(bytearray((1024 + 1024) * L.BRIDGE_ENTRY_SIZE), 1024, 1024)
            self.bridge: BridgeTable | None = bridge
            self.dp.register_bridge(BridgeRoutes(bridge, self.dp))
        else:
            self.bridge = None
        self.out = RecordingOutput()
        self.trap = RecordingTrap()
        self.pipeline = Pipeline(self.dp, self.out, self.trap, flows=self.flows, **options)

    def request(self, name: str, **fields: Any) -> Any:
        reply = self.dp.handle(make(name, {"h_op": C.OP_ADD, **fields}))
        code = int(reply[0][0].resp_code)
        if code < 0:
            raise AssertionError(f"{name} {fields} failed with {code}")
        return reply

    def vif(
        self,
        idx: int,
        vtype: int = C.VIF_TYPE_VIRTUAL,
        *,
        mac_: str = "00:00:5e:00:01:00",
        vrf: int = 0,
        flags: int = 0,
        mtu: int = 1514,
        nh_id: int = 0,
        **more: Any,
    ) -> None:
        self.request(
            "vr_interface_req",
            vifr_idx=idx,
            vifr_type=vtype,
            vifr_name=f"pp{idx}",
            vifr_mac=mac(mac_),
            vifr_vrf=vrf,
            vifr_flags=flags,
            vifr_mtu=mtu,
            vifr_nh_id=nh_id,
            vifr_mcast_vrf=65535,
            **more,
        )

    def nh(self, nh_id: int, nh_type: int, *, flags: int = C.NH_FLAG_VALID, **more: Any) -> None:
        more.setdefault("nhr_family", C.AF_INET)
        self.request("vr_nexthop_req", nhr_id=nh_id, nhr_type=nh_type, nhr_flags=flags, **more)

    def encap_nh(self, nh_id: int, oif: int, family: int = C.AF_BRIDGE, **more: Any) -> None:
        encap = mac("de:ad:be:ef:00:51") + mac("de:ad:be:ef:00:52") + b"\x08\x00"
        self.nh(nh_id, C.NH_ENCAP, nhr_family=family, nhr_encap_oif_id=[oif], nhr_encap=encap, **more)

    def tunnel_nh(
        self,
        nh_id: int,
        oif: int,
        kind: int,
        sip: str = "1.1.2.2",
        dip: str = "2.2.1.1",
        **more: Any,
    ) -> None:
        encap = mac("de:ad:be:ef:00:01") + mac("de:ad:be:ef:00:02") + b"\x08\x00"
        self.nh(
            nh_id,
            C.NH_TUNNEL,
            flags=C.NH_FLAG_VALID | kind | more.pop("extra_flags", 0),
            nhr_encap_oif_id=[oif],
            nhr_encap=encap,
            nhr_tun_sip=ip_int(sip),
            nhr_tun_dip=ip_int(dip),
            **more,
        )

    def route(
        self, prefix: str, plen: int, nh_id: int, *, label: int = -1, vrf: int = 0, **more: Any
    ) -> None:
        self.request(
            "vr_route_req",
            rtr_family=C.AF_INET,
            rtr_vrf_id=vrf,
            rtr_prefix=ip_bytes(prefix),
            rtr_prefix_len=plen,
            rtr_nh_id=nh_id,
            rtr_label=max(label, 0),
            rtr_label_flags=more.pop("label_flags", 0)
            | (C.VR_RT_LABEL_VALID_FLAG if label >= 0 else 0),
            **more,
        )

    def bridge_route(self, mac_: str, nh_id: int, *, vrf: int = 0, label: int = -1) -> None:
        self.request(
            "vr_route_req",
            rtr_family=C.AF_BRIDGE,
            rtr_vrf_id=vrf,
            rtr_mac=mac(mac_),
            rtr_nh_id=nh_id,
            rtr_label=max(label, 0),
            rtr_label_flags=C.VR_BE_LABEL_VALID_FLAG if label >= 0 else 0,
        )

    def flow(self, **fields: Any) -> Any:
        base = {
            "fr_op": 0,
            "fr_index": -1,
            "fr_family": C.AF_INET,
            "fr_flags": L.FLAG_ACTIVE,
            "fr_flow_proto": 17,
            "fr_flow_sport": 31,
            "fr_flow_dport": 31,
            "fr_flow_sip_l": ip_int("1.1.1.1") & 0xFFFFFFFF,
            "fr_flow_dip_l": ip_int("2.2.2.2") & 0xFFFFFFFF,
            "fr_action": L.ACTION_FORWARD,
            "fr_ecmp_nh_index": -1,
        }
        base.update(fields)
        reply = self.dp.handle(make("vr_flow_req", base))
        return reply[0][1]

    def drops(self) -> dict[str, int]:
        return {k: v for k, v in self.dp.tables.drop_stats.items() if v}

    def counters(self, idx: int) -> dict[str, int]:
        c = self.dp.tables.interfaces[idx].counters
        return {k: c[k] for k in ("ipackets", "ibytes", "opackets", "obytes", "ierrors", "oerrors")}

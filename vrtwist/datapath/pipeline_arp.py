"""ARP answered by the datapath (``vr_arp_input``, ``vr_get_proxy_mac``, ``vr_arp_proxy``).

Requests are proxied, flooded, cross-connected or dropped as the vRouter decides;
replies are trapped or cross-connected.
"""

from __future__ import annotations

import struct

from vrtwist.datapath import constants as C
from vrtwist.datapath import pipeline_defs as D
from vrtwist.datapath.pipeline_core import (
    AF_INET,
    VHOST_TYPES,
    ZERO4,
    Packet,
    PipelineCore,
)
from vrtwist.datapath.routes import RouteEntry
from vrtwist.datapath.tables import Interface

__all__ = ["ArpStage"]


class ArpStage(PipelineCore):
    """ARP answered by the datapath (``vr_arp_input``, ``vr_get_proxy_mac``, ``vr_arp_proxy``)."""

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
        grat = spa == ZERO4 or spa == tpa
        vtype = vif.type
        if vtype in VHOST_TYPES:
            if grat:
                self._xconnect(pkt)
                return True
            if tpa[:2] == b"\xa9\xfe" or vtype == C.VIF_TYPE_GATEWAY:
                self._arp_proxy(pkt, sha, spa, tpa, vif.mac)
                return True
        if pkt.vlan != D.VLAN_ID_INVALID:
            return False  # flood
        underlay = vtype == C.VIF_TYPE_PHYSICAL and pkt.label < 0
        if grat and underlay:  # TRAP_X: a copy to the host, the original to the agent
            self._xconnect(pkt.clone())
            self._trap(pkt, D.TRAP_ARP)
            return True
        if grat and vtype == C.VIF_TYPE_PHYSICAL:
            return False
        if grat and vif.flags & C.VIF_FLAG_MAC_PROXY:
            self._drop(pkt, D.DROP_INVALID_ARP)
            return True
        entry = self._route(AF_INET, pkt.dvrf, int.from_bytes(tpa, "big"))
        rflags = entry.label_flags if entry is not None else 0
        if grat:
            if rflags & C.VR_RT_ARP_TRAP_FLAG:
                self._trap(pkt.clone(), D.TRAP_ARP)
            return False
        if vif.flags & C.VIF_FLAG_MAC_PROXY or rflags & 0x2:  # VR_RT_ARP_PROXY_FLAG
            mac = self._proxy_mac(pkt, vif, entry)
            if mac is None and (vtype in VHOST_TYPES or underlay):
                self._xconnect(pkt)  # the host's and the underlay's ARP is never dropped
                return True
            if mac is None:
                self._drop(pkt, D.DROP_INVALID_ARP)
                return True
            if mac == b"":
                return self._arp_flood(pkt)
            self._vrf_count(pkt.dvrf, "arp_virtual_proxy")
            self._arp_proxy(pkt, sha, spa, tpa, mac)
            return True
        self._vrf_count(pkt.dvrf, "arp_virtual_flood")
        if vtype in VHOST_TYPES or underlay:
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
            vif.type in VHOST_TYPES
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
        if vif.type in VHOST_TYPES or vif.flags & C.VIF_FLAG_XCONNECT:
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

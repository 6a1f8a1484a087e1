"""ARP and IPv6 neighbour discovery answered by the datapath.

ARP (``vr_arp_input``, ``vr_get_proxy_mac``, ``vr_arp_proxy``): requests are proxied,
flooded, cross-connected or dropped as the vRouter decides; replies are trapped or
cross-connected. Neighbour discovery (``dp-core/vr_proto_ip6.c``): a solicitation is
answered from the inet6 route of its target (``vr_neighbor_input``,
``vr_neighbor_proxy``); in the multicast next hop router solicitations and DHCPv6 go to
the agent and advertisements are trapped as well as flooded.
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
from vrtwist.packet.checksum import checksum

__all__ = ["ArpStage"]

_ICMP6 = 58
_ND_RS, _ND_NS, _ND_NA = 133, 135, 136
_DHCP6_SERVER_PORT = 547
_ZERO16 = bytes(16)
_ETH_IP6 = b"\x86\xdd"


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
        if op == 2:
            return self._arp_reply(pkt, pkt.vif)
        sha = bytes(buf[at + 8 : at + 14])
        spa = bytes(buf[at + 14 : at + 18])
        tpa = bytes(buf[at + 24 : at + 28])
        return self._arp_request(pkt, sha, spa, tpa)

    def _arp_request(self, pkt: Packet, sha: bytes, spa: bytes, tpa: bytes) -> bool:
        """``vif_mac_request`` and ``vr_handle_arp_request`` for a request."""
        vif = pkt.vif
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
        if grat:
            return self._grat_arp(pkt, vif, underlay, tpa)
        entry = self._route(AF_INET, pkt.dvrf, int.from_bytes(tpa, "big"))
        rflags = entry.label_flags if entry is not None else 0
        if vif.flags & C.VIF_FLAG_MAC_PROXY or rflags & 0x2:  # VR_RT_ARP_PROXY_FLAG
            mac, _stitched = self._proxy_mac(pkt, vif, entry)
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

    def _grat_arp(self, pkt: Packet, vif: Interface, underlay: bool, tpa: bytes) -> bool:
        """A gratuitous request (not from vhost, not VLAN-tagged)."""
        if underlay:  # TRAP_X: a copy to the host, the original to the agent
            self._xconnect(pkt.clone())
            self._trap(pkt, D.TRAP_ARP)
            return True
        if vif.type == C.VIF_TYPE_PHYSICAL:
            return False
        if vif.flags & C.VIF_FLAG_MAC_PROXY:
            self._drop(pkt, D.DROP_INVALID_ARP)
            return True
        entry = self._route(AF_INET, pkt.dvrf, int.from_bytes(tpa, "big"))
        if entry is not None and entry.label_flags & C.VR_RT_ARP_TRAP_FLAG:
            self._trap(pkt.clone(), D.TRAP_ARP)  # MIRROR: a copy trapped, the original flooded
        return False

    def _arp_flood(self, pkt: Packet) -> bool:
        if pkt.vif.flags & C.VIF_FLAG_SERVICE_IF:
            self._drop(pkt, D.DROP_INVALID_ARP)
            return True
        return False

    def _proxy_mac(
        self, pkt: Packet, vif: Interface, entry: RouteEntry | None
    ) -> tuple[bytes | None, bool]:
        """``vr_get_proxy_mac``: (the MAC to answer with, stitched); b"" floods, None drops.

        Stitched means the answer is the route's bridge MAC rather than our own.
        """
        if vif.flags & C.VIF_FLAG_MAC_PROXY:
            return vif.mac, False
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
            return None, False
        flood = entry is not None and entry.label_flags & 0x8  # VR_RT_ARP_FLOOD_FLAG
        if not stitched and flood:
            return b"", False
        return mac, stitched

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

    # -- IPv6 neighbour discovery (dp-core/vr_proto_ip6.c) ---------------------------

    def _neighbor_input(self, pkt: Packet) -> bool:
        """``vr_neighbor_input``: True when a neighbour solicitation was consumed.

        Only a solicitation (ICMPv6 135 right after the IPv6 header) is looked at;
        duplicate address detection (unspecified source) and everything the route does
        not let us proxy are left to bridging (flooded).
        """
        buf = pkt.buf
        l3 = pkt.l3
        icmp = l3 + 40
        if len(buf) - icmp < 24 or buf[l3 + 6] != _ICMP6 or buf[icmp] != _ND_NS:
            return False
        if buf[l3 + 8 : l3 + 24] == _ZERO16 or pkt.vlan != D.VLAN_ID_INVALID:
            return False
        vif = pkt.vif
        target = int.from_bytes(buf[icmp + 8 : icmp + 24], "big")
        entry = self._route(C.AF_INET6, pkt.dvrf, target)
        rflags = entry.label_flags if entry is not None else 0
        if not (vif.flags & C.VIF_FLAG_MAC_PROXY or rflags & 0x2):  # VR_RT_ARP_PROXY_FLAG
            return False
        mac, stitched = self._proxy_mac(pkt, vif, entry)
        if mac is None:
            self._drop(pkt, D.DROP_INVALID_ARP)
            return True
        if mac == b"" or len(buf) - icmp < 32:  # flood, or no link-layer option to answer
            return self._arp_flood(pkt)
        self._vrf_count(pkt.dvrf, "arp_virtual_stitch" if stitched else "arp_virtual_proxy")
        self._neighbor_proxy(pkt, mac, router=not stitched)
        return True

    def _neighbor_proxy(self, pkt: Packet, mac: bytes, *, router: bool) -> None:
        """``vr_neighbor_proxy``: the advertisement built over the solicitation.

        Addresses swapped (the target answers the soliciting source), type 136 with
        Solicited (and Router when the answer is our own MAC), the option rewritten to
        the target link-layer address; hop limit, payload length and trailing bytes kept,
        checksum recomputed.
        """
        buf = pkt.buf
        l3 = pkt.l3
        icmp = l3 + 40
        dst_mac = bytes(buf[icmp + 26 : icmp + 32])  # the solicitation's source LLA
        ip6 = bytearray(buf[l3:])
        src = bytes(ip6[8:24])
        ip6[8:24] = ip6[48:64]  # source := the solicited target
        ip6[24:40] = src
        ip6[40] = _ND_NA
        ip6[42:48] = bytes((0, 0, 0xC0 if router else 0x40, 0, 0, 0))
        ip6[64:72] = b"\x02\x01" + mac
        plen = min((ip6[4] << 8) | ip6[5], len(ip6) - 40)
        pseudo = bytes(ip6[8:40]) + plen.to_bytes(4, "big") + bytes((0, 0, 0, _ICMP6))
        csum = checksum(pseudo + bytes(ip6[40 : 40 + plen]))
        ip6[42] = csum >> 8
        ip6[43] = csum & 0xFF
        out = Packet(dst_mac + mac + _ETH_IP6 + bytes(ip6), pkt.vif)
        out.dvrf = pkt.dvrf
        out.flags = D.VP_FLAG_FLOW_SET
        self._classify(out)
        self._mac_reply_send(out)

    def _ip6_mcast_control(self, pkt: Packet) -> bool:
        """``vr_ip6_well_known_packet`` in the multicast next hop: True when consumed.

        For ff02::/16: router solicitations and DHCPv6 to the agent (DHCPv6 also
        flooded when the sender's bridge entry has FLOOD_DHCP), advertisements to the
        agent and flooded, solicitations answered or flooded.
        """
        buf = pkt.buf
        l3 = pkt.l3
        if len(buf) - l3 < 48 or buf[l3 + 24] != 0xFF or buf[l3 + 25] != 0x02:
            return False
        nxt = buf[l3 + 6]
        if nxt == _ICMP6:
            itype = buf[l3 + 40]
            if itype == _ND_RS:
                self._trap(pkt, D.TRAP_L3_PROTOCOLS)
                return True
            if itype == _ND_NA:
                self._trap(pkt, D.TRAP_L3_PROTOCOLS)
                return False
            return itype == _ND_NS and self._neighbor_input(pkt)
        if nxt != 17 or (buf[l3 + 42] << 8) | buf[l3 + 43] != _DHCP6_SERVER_PORT:
            return False
        smac = bytes(buf[pkt.start + 6 : pkt.start + 12])
        hit = self.bridge_lookup(pkt.dvrf, smac)
        self._trap(pkt, D.TRAP_L3_PROTOCOLS)
        return hit is None or not hit[3] & C.VR_BE_FLOOD_DHCP_FLAG

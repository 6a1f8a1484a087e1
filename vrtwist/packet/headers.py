"""Header codecs: Ethernet/802.1Q, ARP, IPv4, IPv6, UDP, TCP, ICMP/ICMPv6, MPLS, GRE, VXLAN.

Each header is an immutable ``NamedTuple`` with ``parse(buf, off=0)`` (a classmethod
that checks lengths and raises :class:`PacketError`) and ``pack()``; fixed lengths are
the ``*_HLEN`` constants. ``parse`` never copies the payload: callers continue at
``off + header length``.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from vrtwist.packet.checksum import checksum

Buffer = bytes | bytearray | memoryview

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_IPV6 = 0x86DD
ETH_P_MPLS = 0x8847
ETH_P_PBB = 0x88E7
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_GRE = 47
IPPROTO_ICMPV6 = 58

IPV4_DF = 0x4000
IPV4_MF = 0x2000
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
GRE_C = 0x8000
GRE_K = 0x2000
GRE_S = 0x1000
VXLAN_I_FLAG = 0x08000000
#: fixed header lengths
ETH_HLEN, ARP_LEN, IPV4_HLEN, IPV6_HLEN, UDP_HLEN, TCP_HLEN = 14, 28, 20, 40, 8, 20
ICMP_HLEN, MPLS_LEN, GRE_HLEN, VXLAN_HLEN = 8, 4, 4, 8

_ETH = struct.Struct("!6s6sH")
_VLAN = struct.Struct("!HH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_TCP = struct.Struct("!HHIIBBHHH")
_ICMP = struct.Struct("!BBHI")
_U32 = struct.Struct("!I")
_GRE = struct.Struct("!HH")
_VXLAN = struct.Struct("!II")


class PacketError(ValueError):
    """A header is truncated or malformed; the message says which and where."""


def _need(buf: Buffer, off: int, n: int, what: str) -> None:
    if off < 0 or len(buf) - off < n:
        raise PacketError(f"{what}: need {n} bytes at offset {off}, have {max(0, len(buf) - off)}")


class Ethernet(NamedTuple):
    """An Ethernet header with any 802.1Q tags (outermost first) as TCI values."""

    dst: bytes
    src: bytes
    ethertype: int
    vlans: tuple[int, ...] = ()

    @property
    def length(self) -> int:
        return 14 + 4 * len(self.vlans)

    @classmethod
    def parse(cls, buf: Buffer, off: int = 0) -> Ethernet:
        """Parse the header and every 0x8100 tag (as ``vr_pkt_type`` skips them)."""
        _need(buf, off, 14, "ethernet")
        dst, src, etype = _ETH.unpack_from(buf, off)
        vlans: list[int] = []
        pos = off + 14
        while etype == ETH_P_8021Q:
            _need(buf, pos, 4, "802.1Q tag")
            tci, etype = _VLAN.unpack_from(buf, pos)
            vlans.append(tci)
            pos += 4
        return cls(bytes(dst), bytes(src), etype, tuple(vlans))

    def pack(self) -> bytes:
        if len(self.dst) != 6 or len(self.src) != 6:
            raise PacketError("ethernet: MAC addresses are 6 bytes")
        out = bytearray(self.dst + self.src)
        for tci in self.vlans:
            out += _VLAN.pack(ETH_P_8021Q, tci)
        out += self.ethertype.to_bytes(2, "big")
        return bytes(out)


def vlan_insert(frame: Buffer, tci: int) -> bytes:
    """The frame with an 802.1Q tag (TPID 0x8100) inserted after the MAC addresses."""
    _need(frame, 0, 12, "ethernet")
    return bytes(frame[:12]) + _VLAN.pack(ETH_P_8021Q, tci & 0xFFFF) + bytes(frame[12:])


class ARP(NamedTuple):
    """An Ethernet/IPv4 ARP packet (``struct vr_arp``, 28 bytes)."""

    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes
    htype: int = 1
    ptype: int = ETH_P_IP

    @classmethod
    def parse(cls, buf: Buffer, off: int = 0) -> ARP:
        """Accept only what ``vr_arp_input`` accepts: Ethernet/IPv4, op 1 or 2."""
        _need(buf, off, 28, "arp")
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf, off)
        if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
            raise PacketError(f"arp: not Ethernet/IPv4 (htype {htype} ptype {ptype:#x})")
        if op not in (1, 2):
            raise PacketError(f"arp: op {op} is neither request nor reply")
        return cls(op, bytes(sha), bytes(spa), bytes(tha), bytes(tpa), htype, ptype)

    def pack(self) -> bytes:
        return _ARP.pack(
            self.htype, self.ptype, 6, 4, self.op, self.sha, self.spa, self.tha, self.tpa
        )


class IPv4(NamedTuple):
    """An IPv4 header; ``options`` are the bytes beyond the first 20."""

    src: bytes
    dst: bytes
    proto: int
    total_length: int
    ident: int = 0
    ttl: int = 64
    tos: int = 0
    frag: int = 0  # flags (3 bits) and fragment offset, as on the wire
    csum: int = 0
    options: bytes = b""

    @property
    def header_length(self) -> int:
        return 20 + len(self.options)

    @property
    def is_fragment(self) -> bool:
        return bool(self.frag & 0x3FFF)

    @classmethod
    def parse(cls, buf: Buffer, off: int = 0) -> IPv4:
        _need(buf, off, 20, "ipv4")
        vihl, tos, tlen, ident, frag, ttl, proto, csum, src, dst = _IP4.unpack_from(buf, off)
        if vihl >> 4 != 4:
            raise PacketError(f"ipv4: version {vihl >> 4}")
        hlen = (vihl & 15) * 4
        if hlen < 20:
            raise PacketError(f"ipv4: header length {hlen} < 20")
        _need(buf, off, hlen, "ipv4 options")
        if tlen < hlen:
            raise PacketError(f"ipv4: total length {tlen} < header length {hlen}")
        options = bytes(buf[off + 20 : off + hlen])
        return cls(bytes(src), bytes(dst), proto, tlen, ident, ttl, tos, frag, csum, options)

    def pack(self, with_checksum: bool = True) -> bytes:
        """The header; the checksum is computed unless ``with_checksum`` is False."""
        if len(self.options) % 4:
            raise PacketError("ipv4: options must be a multiple of 4 bytes")
        vihl = 0x40 | (5 + len(self.options) // 4)
        hdr = _IP4.pack(
            vihl, self.tos, self.total_length, self.ident, self.frag, self.ttl, self.proto,
            0, self.src, self.dst,
        ) + self.options  # fmt: skip
        csum = checksum(hdr) if with_checksum else self.csum
        return hdr[:10] + csum.to_bytes(2, "big") + hdr[12:]

    def pseudo_sum(self, length: int) -> int:
        """Partial (unfolded, not inverted) sum of the pseudo header for UDP/TCP."""
        return _sum16(self.src + self.dst) + self.proto + length


def _sum16(data: bytes) -> int:
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def header_checksum_ok(buf: Buffer, off: int, hlen: int = 20) -> bool:
    """True when the IPv4 header at ``off`` has a valid checksum."""
    _need(buf, off, hlen, "ipv4")
    return checksum(buf[off : off + hlen]) == 0


class IPv6(NamedTuple):
    """The fixed IPv6 header (extension headers are payload here)."""

    src: bytes
    dst: bytes
    next_header: int
    payload_length: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    @classmethod
    def parse(cls, buf: Buffer, off: int = 0) -> IPv6:
        _need(buf, off, 40, "ipv6")
        vtf, plen, nxt, hops, src, dst = _IP6.unpack_from(buf, off)
        if vtf >> 28 != 6:
            raise PacketError(f"ipv6: version {vtf >> 28}")
        return cls(bytes(src), bytes(dst), nxt, plen, hops, (vtf >> 20) & 0xFF, vtf & 0xFFFFF)

    def pack(self) -> bytes:
        vtf = (6 << 28) | ((self.traffic_class & 0xFF) << 20) | (self.flow_label & 0xFFFFF)
        return _IP6.pack(
            vtf, self.payload_length, self.next_header, self.hop_limit, self.src, self.dst
        )

    def pseudo_sum(self, length: int) -> int:
        return _sum16(self.src + self.dst) + length + self.next_header


class UDP(NamedTuple):
    sport: int
    dport: int
    length: int
    csum: int = 0

    @classmethod
    def parse(cls, buf: Buffer, off: int = 0) -> UDP:
        _need(buf, off, 8, "udp")
        sport, dport, length, csum = _UDP.unpack_from(buf, off)
        if length < 8:
            raise PacketError(f"udp: length {length} < 8")
        return cls(sport, dport, length, csum)

    def pack(self) -> bytes:
        return _UDP.pack(self.sport, self.dport, self.length, self.csum)


def parse_udp4(frame: Buffer) -> tuple[IPv4, UDP, memoryview]:
    """The IPv4 and UDP headers and the payload of an Ethernet frame carrying an
    unfragmented IPv4 UDP datagram, the payload cut to the shortest of the frame, the UDP
    length and the IP length (what the agent's DHCP server and DNS proxy read)."""
    eth = Ethernet.parse(frame)
    if eth.ethertype != ETH_P_IP:
        raise PacketError("not IPv4")
    ip = IPv4.parse(frame, eth.length)
    if ip.proto != IPPROTO_UDP or ip.is_fragment:
        raise PacketError("not an unfragmented UDP packet")
    l4 = eth.length + ip.header_length
    udp = UDP.parse(frame, l4)
    end = min(len(frame), l4 + udp.length, eth.length + ip.total_length)
    return ip, udp, memoryview(frame)[l4 + 8 : end]


class TCP(NamedTuple):
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int = 65535
    csum: int = 0
    urgent: int = 0
    options: bytes = b""

    @property
    def header_length(self) -> int:
        return 20 + len(self.options)

    @classmethod
    def parse(cls, buf: Buffer, off: int = 0) -> TCP:
        _need(buf, off, 20, "tcp")
        sport, dport, seq, ack, doff, flags, win, csum, urg = _TCP.unpack_from(buf, off)
        hlen = (doff >> 4) * 4
        if hlen < 20:
            raise PacketError(f"tcp: data offset {hlen} < 20")
        _need(buf, off, hlen, "tcp options")
        flags |= (doff & 1) << 8
        return cls(sport, dport, seq, ack, flags, win, csum, urg, bytes(buf[off + 20 : off + hlen]))

    def pack(self) -> bytes:
        if len(self.options) % 4:
            raise PacketError("tcp: options must be a multiple of 4 bytes")
        doff = ((5 + len(self.options) // 4) << 4) | ((self.flags >> 8) & 1)
        return (
            _TCP.pack(
                self.sport, self.dport, self.seq, self.ack, doff, self.flags & 0xFF,
                self.window, self.csum, self.urgent,
            )
            + self.options
        )  # fmt: skip


class ICMP(NamedTuple):
    """ICMP or ICMPv6 header; ``rest`` is the 4-byte type-specific word."""

    type: int
    code: int
    csum: int = 0
    rest: int = 0

    @classmethod
    def parse(cls, buf: Buffer, off: int = 0) -> ICMP:
        _need(buf, off, 8, "icmp")
        return cls(*_ICMP.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _ICMP.pack(self.type, self.code, self.csum, self.rest)

    @property
    def ident(self) -> int:
        return self.rest >> 16


class MPLS(NamedTuple):
    """One label stack entry."""

    label: int
    ttl: int = 64
    bottom: bool = True
    exp: int = 0

    @classmethod
    def parse(cls, buf: Buffer, off: int = 0) -> MPLS:
        _need(buf, off, 4, "mpls")
        (w,) = _U32.unpack_from(buf, off)
        return cls(w >> 12, w & 0xFF, bool(w & 0x100), (w >> 9) & 7)

    def pack(self) -> bytes:
        if not 0 <= self.label < 1 << 20:
            raise PacketError(f"mpls: label {self.label} out of range")
        return _U32.pack(
            (self.label << 12) | ((self.exp & 7) << 9) | (0x100 if self.bottom else 0)
            | (self.ttl & 0xFF)
        )  # fmt: skip


class GRE(NamedTuple):
    """GRE header; checksum/key/sequence fields present as the C/K/S bits say."""

    protocol: int
    flags: int = 0  # the first 16-bit word (C 0x8000, K 0x2000, S 0x1000, version)
    key: int | None = None
    csum: int | None = None
    seq: int | None = None

    @property
    def length(self) -> int:
        return 4 + 4 * sum(bool(self.flags & b) for b in (GRE_C, GRE_K, GRE_S))

    @classmethod
    def parse(cls, buf: Buffer, off: int = 0) -> GRE:
        _need(buf, off, 4, "gre")
        flags, proto = _GRE.unpack_from(buf, off)
        if flags & 7:
            raise PacketError(f"gre: version {flags & 7}")
        pos = off + 4
        csum = key = seq = None
        if flags & GRE_C:
            _need(buf, pos, 4, "gre checksum")
            csum = _U32.unpack_from(buf, pos)[0] >> 16
            pos += 4
        if flags & GRE_K:
            _need(buf, pos, 4, "gre key")
            key = _U32.unpack_from(buf, pos)[0]
            pos += 4
        if flags & GRE_S:
            _need(buf, pos, 4, "gre sequence")
            seq = _U32.unpack_from(buf, pos)[0]
        return cls(proto, flags, key, csum, seq)

    def pack(self) -> bytes:
        out = _GRE.pack(self.flags, self.protocol)
        if self.flags & GRE_C:
            out += _U32.pack((self.csum or 0) << 16)
        if self.flags & GRE_K:
            out += _U32.pack(self.key or 0)
        if self.flags & GRE_S:
            out += _U32.pack(self.seq or 0)
        return out


class VXLAN(NamedTuple):
    vni: int
    flags: int = 0x08000000  # word 0: I flag

    @classmethod
    def parse(cls, buf: Buffer, off: int = 0) -> VXLAN:
        _need(buf, off, 8, "vxlan")
        w0, w1 = _VXLAN.unpack_from(buf, off)
        return cls(w1 >> 8, w0)

    def pack(self) -> bytes:
        if not 0 <= self.vni < 1 << 24:
            raise PacketError(f"vxlan: VNI {self.vni} out of range")
        return _VXLAN.pack(self.flags, self.vni << 8)


def l4_checksum(ip: IPv4 | IPv6, segment: Buffer) -> int:
    """UDP/TCP/ICMPv6 checksum of ``segment`` (its checksum field zeroed) under ``ip``."""
    return checksum(segment, ip.pseudo_sum(len(segment)))

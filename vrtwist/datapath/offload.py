"""Finishing what a sender left to "hardware": partial checksums and TCP GSO (sans-IO).

A veth or a TAP with offloads hands over frames as the Linux stack built them: a TCP or
UDP checksum still to be completed (``VIRTIO_NET_HDR_F_NEEDS_CSUM``) and, with TSO/GSO,
one super-frame of up to 64 KiB that stands for many wire-sized segments. The port layer
reads them with their ``virtio_net_hdr`` (``PACKET_VNET_HDR``) and calls :func:`finish`
so that the pipeline only ever sees frames as they would appear on a wire. No I/O here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = [
    "VNET_HDR",
    "VNET_HDR_LEN",
    "Gso",
    "OffloadError",
    "Payload",
    "carried",
    "checksum",
    "finish",
    "finish_carried",
    "merge_tcp_chunks",
    "segment_tcp",
    "segment_udp",
    "tcp_segment_parts",
    "vnet_for",
]

#: ``struct virtio_net_hdr`` (host byte order): flags, gso_type, hdr_len, gso_size,
#: csum_start, csum_offset
VNET_HDR = struct.Struct("=BBHHHH")
VNET_HDR_LEN = VNET_HDR.size
F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5
GSO_ECN = 0x80

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_LEN_ID = struct.Struct("!HH")  # IPv4 total length and ID
#: a segment's payload as :func:`tcp_segment_parts` gives it
Payload = bytes | bytearray | memoryview

_VLAN_TPIDS = (0x8100, 0x88A8)
_TCP_FIN, _TCP_SYN, _TCP_RST, _TCP_PSH, _TCP_URG, _TCP_CWR = 0x01, 0x02, 0x04, 0x08, 0x20, 0x80


#: offload state carried with a frame through the pipeline: the ``virtio_net_hdr``
#: fields with ``hdr_len`` and ``csum_start`` counted back from the frame's *end*
#: (flags, gso_type, hdr_len from end, gso_size, csum_start from end, csum_offset).
#: Headers in front of the transport header may be pushed, popped or rewritten on
#: the way (an 802.1Q tag, a routed frame's new Ethernet header) without touching it.
Gso = tuple[int, int, int, int, int, int]


class OffloadError(ValueError):
    """A frame whose offload request cannot be honoured (unknown GSO type, bad offsets)."""


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 sum of ``data`` (network order), folded and not inverted.

    As 2**16 = 1 (mod 0xffff), the ones' complement sum of the 16-bit words is the whole
    buffer read as one big-endian integer modulo 0xffff: one C-speed ``int.from_bytes``
    and one division instead of a Python-level loop. A non-zero sum is kept in
    1..0xffff (ones' complement has no other zero for it).
    """
    number = int.from_bytes(data, "big")
    if len(data) & 1:
        number <<= 8
    total = (number + initial) % 0xFFFF
    if total == 0 and (number or initial):
        total = 0xFFFF
    return total


def _store_csum(frame: bytearray, at: int, folded: int, udp: bool) -> None:
    value = ~folded & 0xFFFF
    if udp and value == 0:
        value = 0xFFFF
    _U16.pack_into(frame, at, value)


def _l3_offset(frame: bytes | bytearray) -> tuple[int, int]:
    """(network header offset, EtherType) past any 802.1Q/802.1ad tags."""
    offset = 12
    ethertype = _U16.unpack_from(frame, offset)[0]
    while ethertype in _VLAN_TPIDS:
        offset += 4
        ethertype = _U16.unpack_from(frame, offset)[0]
    return offset + 2, ethertype


def _pseudo(frame: bytes | bytearray, l3: int, v6: bool, proto: int, length: int) -> int:
    if v6:
        head = bytes(frame[l3 + 8 : l3 + 40]) + _U32.pack(length) + b"\x00\x00\x00" + bytes([proto])
    else:
        head = bytes(frame[l3 + 12 : l3 + 20]) + bytes([0, proto]) + _U16.pack(length)
    return checksum(head)


def segment_tcp(frame: bytes | bytearray, l4: int, gso_size: int) -> Iterator[bytearray]:
    """Cut one TCP super-frame into wire segments of ``gso_size`` payload bytes each.

    Every segment gets the headers of the original with IPv4 total length, ID (+1 per
    segment) and header checksum, or the IPv6 payload length, fixed; TCP sequence
    numbers advanced; FIN/PSH only on the last segment and CWR only on the first; and a
    full TCP checksum (what ``tcp_gso_segment`` + checksum help do in the kernel).
    """
    l3, ethertype = _l3_offset(frame)
    if ethertype not in (0x0800, 0x86DD):
        raise OffloadError(f"TCP GSO over EtherType {ethertype:#06x}")
    for head, data in tcp_segment_parts(frame, 0, l3, l4, gso_size):
        seg = bytearray(head)
        seg += data
        yield seg


def tcp_segment_parts(
    frame: bytes | bytearray, start: int, l3: int, l4: int, gso_size: int
) -> list[tuple[bytes, Payload]]:
    """:func:`segment_tcp` without joining: each segment's headers (from ``start``,
    fixed and checksummed) and its payload (a slice of ``frame``), for a caller that
    puts more in front of each (a tunnel encapsulation) and joins once."""
    if gso_size <= 0:
        raise OffloadError("GSO size 0")
    if l3 + 20 > len(frame) or frame[l3] >> 4 not in (4, 6):
        raise OffloadError("TCP GSO of a packet that is not IP")
    v6 = frame[l3] >> 4 == 6
    if l4 + 20 > len(frame) or l4 < l3 + 20 or start > l3:
        raise OffloadError("TCP header outside the frame")
    thl = (frame[l4 + 12] >> 4) * 4
    end = l4 + thl
    if thl < 20 or end > len(frame):
        raise OffloadError("TCP header outside the frame")
    hdr = bytearray(frame[start:end])
    a3, a4 = l3 - start, l4 - start
    seq = _U32.unpack_from(frame, l4 + 4)[0]
    flags = frame[l4 + 13]
    # the headers' sums with what changes per segment zeroed, completed per segment
    hdr[a4 + 4 : a4 + 8] = bytes(4)
    hdr[a4 + 13] = 0
    hdr[a4 + 16 : a4 + 18] = b"\x00\x00"
    if v6:
        ip_id = ihl = ip_base = 0
        tcp_base = checksum(frame[l3 + 8 : l3 + 40]) + 6 + checksum(memoryview(hdr)[a4:])
    else:
        ip_id = _U16.unpack_from(frame, l3 + 4)[0]
        ihl = (frame[l3] & 0x0F) * 4
        hdr[a3 + 2 : a3 + 6] = bytes(4)
        hdr[a3 + 10 : a3 + 12] = b"\x00\x00"
        ip_base = checksum(memoryview(hdr)[a3 : a3 + ihl])
        tcp_base = checksum(frame[l3 + 12 : l3 + 20]) + 6 + checksum(memoryview(hdr)[a4:])
    payload = memoryview(frame)[end:]
    count = max(1, -(-len(payload) // gso_size))
    if not v6 and ihl == 20:
        sums = (ip_base, tcp_base)
        return _ip4_segments(hdr, a3, frame, end, gso_size, count, sums, seq, flags, ip_id)
    out: list[tuple[bytes, Payload]] = []
    pack16, pack32, lens = _U16.pack_into, _U32.pack_into, _LEN_ID.pack_into
    from_bytes = int.from_bytes
    for i in range(count):
        data = payload[i * gso_size : (i + 1) * gso_size]
        h = bytearray(hdr)
        seg_flags = flags
        if i != count - 1:
            seg_flags &= ~(_TCP_FIN | _TCP_PSH)
        if i:
            seg_flags &= ~_TCP_CWR
        h[a4 + 13] = seg_flags
        seg_seq = (seq + i * gso_size) & 0xFFFFFFFF
        pack32(h, a4 + 4, seg_seq)
        tcp_len = thl + len(data)
        if v6:
            pack16(h, a3 + 4, tcp_len)
        else:
            seg_id = (ip_id + i) & 0xFFFF
            lens(h, a3 + 2, ihl + tcp_len, seg_id)
            pack16(h, a3 + 10, ~((ip_base + ihl + tcp_len + seg_id) % 0xFFFF) & 0xFFFF)
        number = from_bytes(data, "big")
        if len(data) & 1:
            number <<= 8
        total = (number + tcp_base + tcp_len + (seg_seq >> 16) + (seg_seq & 0xFFFF) + seg_flags) % 0xFFFF
        pack16(h, a4 + 16, ~total & 0xFFFF if total else 0)
        out.append((bytes(h), data))
    return out


#: an IPv4 header without options and the first 20 bytes of a TCP header, with what
#: comes before (an inner Ethernet header) and after (TCP options): one pack per segment
_IP4_TCP: dict[tuple[int, int], struct.Struct] = {}


def _ip4_tcp(before: int, after: int) -> struct.Struct:
    packer = _IP4_TCP.get((before, after))
    if packer is None:
        packer = _IP4_TCP[before, after] = struct.Struct(
            f"!{before}s2sHH2s2sH8s4sI4ssB2sH2s{after}s"
        )
    return packer


def _ip4_segments(
    hdr: bytearray,
    a3: int,
    frame: bytes | bytearray,
    end: int,
    gso_size: int,
    count: int,
    sums: tuple[int, int],
    seq: int,
    flags: int,
    ip_id: int,
) -> list[tuple[bytes, Payload]]:
    """:func:`tcp_segment_parts` for IPv4 without options: each segment's headers
    packed at once (the hot path of a TCP stream into a tunnel); the segments between
    the first and the last, all alike but for sequence number, ID and checksums, in a
    tight loop. Payloads are sliced from ``frame`` itself: ``int.from_bytes`` reads a
    ``bytes`` slice faster than a view, and the copy is as cheap as the view."""
    ip_base, tcp_base = sums
    prefix = bytes(hdr[:a3])
    options = bytes(hdr[a3 + 40 :])
    thl = 20 + len(options)
    vt, frag, ttl_proto, addrs, ports, ack, doff, window, urgent = (
        bytes(hdr[a3 : a3 + 2]), bytes(hdr[a3 + 6 : a3 + 8]), bytes(hdr[a3 + 8 : a3 + 10]),
        bytes(hdr[a3 + 12 : a3 + 20]), bytes(hdr[a3 + 20 : a3 + 24]),
        bytes(hdr[a3 + 28 : a3 + 32]), bytes(hdr[a3 + 32 : a3 + 33]),
        bytes(hdr[a3 + 34 : a3 + 36]), bytes(hdr[a3 + 38 : a3 + 40]),
    )  # fmt: skip
    pack = _ip4_tcp(len(prefix), len(options)).pack
    from_bytes = int.from_bytes

    def one(i: int, seg_flags: int) -> tuple[bytes, Payload]:
        at = end + i * gso_size
        data = frame[at : at + gso_size]
        seg_seq = (seq + i * gso_size) & 0xFFFFFFFF
        tcp_len = thl + len(data)
        seg_id = (ip_id + i) & 0xFFFF
        ip_sum = ~((ip_base + 20 + tcp_len + seg_id) % 0xFFFF) & 0xFFFF
        number = from_bytes(data, "big")
        if len(data) & 1:
            number <<= 8
        total = (number % 0xFFFF + tcp_base + tcp_len + (seg_seq >> 16) + (seg_seq & 0xFFFF)
                 + seg_flags) % 0xFFFF  # fmt: skip
        return pack(prefix, vt, 20 + tcp_len, seg_id, frag, ttl_proto, ip_sum, addrs, ports,
                    seg_seq, ack, doff, seg_flags, window, ~total & 0xFFFF if total else 0,
                    urgent, options), data  # fmt: skip

    if count == 1:
        return [one(0, flags)]
    out = [one(0, flags & ~(_TCP_FIN | _TCP_PSH))]
    mid_flags = flags & ~(_TCP_FIN | _TCP_PSH | _TCP_CWR)
    tcp_len = thl + gso_size
    ip_const = ip_base + 20 + tcp_len
    tcp_const = tcp_base + tcp_len + mid_flags
    odd = gso_size & 1
    append = out.append
    for i in range(1, count - 1):
        at = end + i * gso_size
        data = frame[at : at + gso_size]
        seg_seq = (seq + i * gso_size) & 0xFFFFFFFF
        seg_id = (ip_id + i) & 0xFFFF
        number = from_bytes(data, "big") << 8 if odd else from_bytes(data, "big")
        total = (number % 0xFFFF + tcp_const + (seg_seq >> 16) + (seg_seq & 0xFFFF)) % 0xFFFF
        append((pack(prefix, vt, tcp_len + 20, seg_id, frag, ttl_proto,
                     ~((ip_const + seg_id) % 0xFFFF) & 0xFFFF, addrs, ports, seg_seq, ack,
                     doff, mid_flags, window, ~total & 0xFFFF if total else 0, urgent,
                     options), data))  # fmt: skip
    append(one(count - 1, flags & ~_TCP_CWR))
    return out


def segment_udp(frame: bytes | bytearray, l4: int, gso_size: int) -> Iterator[bytearray]:
    """Cut one UDP GSO super-frame (``VIRTIO_NET_HDR_GSO_UDP_L4``) into datagrams of
    ``gso_size`` payload bytes each, as ``__udp_gso_segment`` does
    (``torvalds/linux:net/ipv4/udp_offload.c``): the headers copied,
    IPv4 total length, ID (+1 per datagram) and header checksum or the IPv6 payload
    length fixed, UDP length and a full UDP checksum per datagram."""
    if gso_size <= 0:
        raise OffloadError("GSO size 0")
    l3, ethertype = _l3_offset(frame)
    v6 = ethertype == 0x86DD
    if not v6 and ethertype != 0x0800:
        raise OffloadError(f"UDP GSO over EtherType {ethertype:#06x}")
    if l4 + 8 > len(frame) or l4 < l3 + 20:
        raise OffloadError("UDP header outside the frame")
    if frame[l3 + 6 if v6 else l3 + 9] != 17:
        raise OffloadError("UDP GSO of a packet that is not UDP")
    headers = bytes(frame[: l4 + 8])
    payload = memoryview(frame)[l4 + 8 :]
    ip_id = 0 if v6 else _U16.unpack_from(frame, l3 + 4)[0]
    for i in range(max(1, -(-len(payload) // gso_size))):
        seg = bytearray(headers)
        seg += payload[i * gso_size : (i + 1) * gso_size]
        if v6:
            _U16.pack_into(seg, l3 + 4, len(seg) - l3 - 40)
        else:
            _U16.pack_into(seg, l3 + 2, len(seg) - l3)
            _U16.pack_into(seg, l3 + 4, (ip_id + i) & 0xFFFF)
            ihl = (seg[l3] & 0x0F) * 4
            seg[l3 + 10 : l3 + 12] = b"\x00\x00"
            _store_csum(seg, l3 + 10, checksum(memoryview(seg)[l3 : l3 + ihl]), False)
        udp_len = len(seg) - l4
        _U16.pack_into(seg, l4 + 4, udp_len)
        seg[l4 + 6 : l4 + 8] = b"\x00\x00"
        folded = checksum(memoryview(seg)[l4:], _pseudo(seg, l3, v6, 17, udp_len))
        _store_csum(seg, l4 + 6, folded, True)
        yield seg


def finish(
    frame: bytes | bytearray, vnet: bytes | bytearray | memoryview
) -> list[bytes | bytearray]:
    """The wire frames ``frame`` stands for, given the ``virtio_net_hdr`` it came with.

    Without offload flags that is ``[frame]`` unchanged (no copy); a partial checksum is
    completed; a TCP GSO super-frame is segmented. Raises :class:`OffloadError` for a GSO
    type this code does not segment (UDP fragmentation offload).
    """
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(vnet)
    kind = gso_type & ~GSO_ECN
    if kind in (GSO_TCPV4, GSO_TCPV6):
        return list(segment_tcp(frame, csum_start, gso_size))
    if kind == GSO_UDP_L4:
        return list(segment_udp(frame, csum_start, gso_size))
    if kind != GSO_NONE:
        raise OffloadError(f"GSO type {gso_type} is not segmented here")
    if not flags & F_NEEDS_CSUM:
        return [frame]
    at = csum_start + csum_offset
    if csum_start >= len(frame) or at + 2 > len(frame):
        raise OffloadError("checksum offsets outside the frame")
    out = bytearray(frame)
    folded = checksum(memoryview(out)[csum_start:])
    # csum_offset 6 is UDP's checksum field, 16 TCP's: only UDP maps 0 to 0xffff
    _store_csum(out, at, folded, csum_offset == 6)
    return [out]


_CARRIED = (GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4)


def carried(vnet: bytes | bytearray | memoryview, length: int) -> Gso | None:
    """The offload state to carry with a frame of ``length`` bytes read with ``vnet``.

    None when there is nothing to finish, or when the request is not one that this code
    could finish later (then :func:`finish` at the port tells what is wrong with it).
    """
    flags, gso_type, hdr_len, gso_size, start, off = VNET_HDR.unpack_from(vnet)
    kind = gso_type & ~GSO_ECN
    if kind == GSO_NONE and not flags & F_NEEDS_CSUM:
        return None
    if kind not in _CARRIED or start + off + 2 > length or not start:
        return None
    if kind != GSO_NONE and (not gso_size or not flags & F_NEEDS_CSUM):
        return None
    return (flags, gso_type, length - hdr_len if hdr_len else 0, gso_size, length - start, off)


def vnet_for(gso: Gso, length: int) -> bytes:
    """The ``virtio_net_hdr`` for the carried ``gso`` state of a frame now ``length`` long."""
    flags, gso_type, hdr_tail, gso_size, start_tail, off = gso
    hdr_len = length - hdr_tail if hdr_tail else 0
    return VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, length - start_tail, off)


def finish_carried(frame: bytes | bytearray | memoryview, gso: Gso) -> list[bytes | bytearray]:
    """:func:`finish` for a frame that carried ``gso`` through the pipeline."""
    data = frame if not isinstance(frame, memoryview) else frame.tobytes()
    return finish(data, vnet_for(gso, len(data)))


def merge_tcp_chunks(
    frame: bytes | bytearray, hdr_len: int, gso_size: int, inner_at: int
) -> tuple[bytes, Gso] | None:
    """A tunnel's UDP GSO super-frame as one frame that carries a TCP GSO super-frame.

    ``frame[hdr_len:]`` is cut into chunks of ``gso_size`` bytes (the datagrams the
    sender's UDP segmentation offload stands for), each a tunnel header and an inner
    IPv4 TCP segment whose IP header starts ``inner_at`` bytes into the chunk. When the
    chunks are one in-order run of one TCP connection (same tunnel header and inner
    addresses, ports, options; consecutive sequence numbers; equal payloads but the
    last; PSH/FIN only on the last), the result is the outer headers, the first chunk's
    headers and every chunk's payload: what a receive offload (GRO) hands on, with the
    offload state (:data:`Gso`, TCPV4, partial checksum) to finish it or write it whole.
    None when they are not; the caller then segments. The inner checksums are not
    verified: a GSO frame comes from a local sender that vouches for them, as Linux
    trusts ``CHECKSUM_PARTIAL``.
    """
    layout = _chunk_layout(frame, hdr_len, gso_size, inner_at)
    if layout is None:
        return None
    thl, head, mss, count, last = layout
    flags = _run_flags(frame, hdr_len, gso_size, inner_at, layout)
    if flags is None:
        return None
    ip0 = hdr_len + inner_at
    flags0 = frame[ip0 + 33]
    view = memoryview(frame)
    start = hdr_len + head
    parts: list[bytes | bytearray | memoryview] = [b""]
    parts += [view[c : c + mss] for c in range(start, start + (count - 1) * gso_size, gso_size)]
    parts.append(view[start + (count - 1) * gso_size :])
    payload = mss * (count - 1) + last
    hdr = bytearray(frame[:start])
    hdr[ip0 + 33] = flags0 | (flags & (_TCP_FIN | _TCP_PSH))
    _U16.pack_into(hdr, ip0 + 2, 20 + thl + payload)
    hdr[ip0 + 10 : ip0 + 12] = b"\x00\x00"
    _store_csum(hdr, ip0 + 10, checksum(memoryview(hdr)[ip0 : ip0 + 20]), False)
    # the partial checksum a CHECKSUM_PARTIAL TCP header holds: the pseudo-header's sum
    _U16.pack_into(hdr, ip0 + 36, _pseudo(hdr, ip0, False, 6, thl + payload))
    _outer_lengths(hdr, len(frame) - (count - 1) * head)
    parts[0] = hdr
    merged = b"".join(parts)
    length = len(merged)
    ecn = GSO_ECN if flags0 & _TCP_CWR else 0
    if count == 1:
        return merged, (F_NEEDS_CSUM, GSO_NONE, 0, 0, length - ip0 - 20, 16)
    gso = (F_NEEDS_CSUM, GSO_TCPV4 | ecn, length - start, mss, length - ip0 - 20, 16)
    return merged, gso


#: (TCP header length, a chunk's header length, payload per chunk, chunks, last payload)
_Layout = tuple[int, int, int, int, int]


def _chunk_layout(
    frame: bytes | bytearray, hdr_len: int, gso_size: int, inner_at: int
) -> _Layout | None:
    """How ``frame``'s chunks would cut, from the first one's IPv4 and TCP headers."""
    total = len(frame) - hdr_len
    ip0 = hdr_len + inner_at
    if total <= 0 or hdr_len < 0 or inner_at < 0 or len(frame) < ip0 + 40:
        return None
    if frame[ip0] != 0x45 or frame[ip0 + 9] != 6 or frame[ip0 + 6] & 0x3F or frame[ip0 + 7]:
        return None  # IPv4 without options, TCP, not a fragment
    thl = (frame[ip0 + 32] >> 4) * 4
    head = inner_at + 20 + thl
    mss = gso_size - head
    if thl < 20 or mss <= 0 or total <= head:
        return None
    count = -(-total // gso_size)
    last = total - (count - 1) * gso_size - head
    if last <= 0 or frame[ip0 + 33] & (_TCP_SYN | _TCP_RST | _TCP_URG):
        return None
    return thl, head, mss, count, last


def _run_flags(
    frame: bytes | bytearray, hdr_len: int, gso_size: int, inner_at: int, layout: _Layout
) -> int | None:
    """The last chunk's TCP flags when the chunks are one in-order run, else None."""
    _thl, head, mss, count, last = layout
    u16, u32 = _U16.unpack_from, _U32.unpack_from
    ip0 = hdr_len + inner_at
    seq0 = u32(frame, ip0 + 24)[0]
    flags0 = frame[ip0 + 33]
    end_flags = _TCP_FIN | _TCP_PSH

    def key(c: int) -> tuple[bytes | bytearray, ...]:
        ip = c + inner_at  # all but lengths, IP ID, checksums, sequence and flags
        return (frame[c : ip + 2], frame[ip + 6 : ip + 10], frame[ip + 12 : ip + 24],
                frame[ip + 28 : ip + 33], frame[ip + 34 : ip + 36], frame[ip + 38 : c + head])  # fmt: skip

    want = key(hdr_len)
    flags = flags0
    for i in range(count):
        c = hdr_len + i * gso_size
        ip = c + inner_at
        if u16(frame, ip + 2)[0] != head - inner_at + (mss if i < count - 1 else last):
            return None
        if i:
            flags = frame[ip + 33]
            if (
                u32(frame, ip + 24)[0] != (seq0 + i * mss) & 0xFFFFFFFF
                or (flags ^ flags0) & ~(end_flags | _TCP_CWR)
                or flags & _TCP_CWR
                or key(c) != want
            ):
                return None
        if flags & end_flags and i < count - 1:
            return None
    return flags


def _outer_lengths(hdr: bytearray, length: int) -> None:
    """The outer IPv4 and UDP lengths (and IP checksum) of a merged frame ``length`` long."""
    l3, ethertype = _l3_offset(hdr)
    if ethertype != 0x0800:
        return
    ihl = (hdr[l3] & 0x0F) * 4
    _U16.pack_into(hdr, l3 + 2, length - l3)
    hdr[l3 + 10 : l3 + 12] = b"\x00\x00"
    _store_csum(hdr, l3 + 10, checksum(memoryview(hdr)[l3 : l3 + ihl]), False)
    if hdr[l3 + 9] == 17:  # its checksum would cover the chunks merged away: none
        _U16.pack_into(hdr, l3 + ihl + 4, length - l3 - ihl)
        hdr[l3 + ihl + 6 : l3 + ihl + 8] = b"\x00\x00"

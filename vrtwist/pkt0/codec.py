"""Sans-IO codec of the pkt0 frame: outer Ethernet, ``struct agent_hdr``, the inner frame.

pkt0 is the packet channel between the vRouter datapath and its agent. Every packet on it,
in either direction, is one frame laid out as the vRouter's ``include/vr_defs.h`` declares:

``| outer Ethernet 14 B | agent_hdr 30 B (network order) | inner frame from its L2 header |``

The datapath's traps carry, in the outer Ethernet header, the agent vif's MAC as source and
destination; the agent's commands carry 00:00:00:00:00:01 -> 00:00:00:00:00:02, which the
datapath ignores. The agent only reads the first five header fields of a command and leaves
the rest uninitialised, so a decoder of commands must ignore ``param_2`` .. ``param_5``.

No Twisted, no sockets: bytes in, records out, so the datapath, the agent, the tests and the
benchmarks share it. Decoding returns a ``memoryview`` of the inner frame (no copy).
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

__all__ = [
    "AGENT_DST_MAC",
    "AGENT_HDR",
    "AGENT_HDR_LEN",
    "AGENT_SRC_MAC",
    "ETHERTYPE_PKT0",
    "HEADER_LEN",
    "AgentHeader",
    "Pkt0Error",
    "decode",
    "encode_command",
    "encode_trap",
    "encode_trap_fields",
    "trap_header",
]

#: ``struct agent_hdr``: ifindex, vrf, cmd (u16), cmd_param .. cmd_param_4 (u32),
#: cmd_param_5 (u8), 3 bytes of padding; packed, network byte order.
AGENT_HDR: Final = struct.Struct("!HHHIIIIIB3x")
AGENT_HDR_LEN: Final = AGENT_HDR.size
assert AGENT_HDR_LEN == 30

_ETH: Final = struct.Struct("!6s6sH")
#: outer Ethernet + agent_hdr: the agent drops anything not longer than this
HEADER_LEN: Final = _ETH.size + AGENT_HDR_LEN
assert HEADER_LEN == 44

#: the outer EtherType in both directions (``vrouter_set_rewrite``, ``EncodeAgentHdr``)
ETHERTYPE_PKT0: Final = 0x0800
#: the outer addresses the agent writes on its commands
AGENT_SRC_MAC: Final = b"\x00\x00\x00\x00\x00\x01"
AGENT_DST_MAC: Final = b"\x00\x00\x00\x00\x00\x02"

_U32: Final = 0xFFFFFFFF


class Pkt0Error(ValueError):
    """A pkt0 frame that cannot be what it claims (too short, bad field)."""


class AgentHeader(NamedTuple):
    """The fields of ``struct agent_hdr`` as host integers."""

    ifindex: int
    vrf: int
    cmd: int
    param: int = 0
    param_1: int = 0
    param_2: int = 0
    param_3: int = 0
    param_4: int = 0
    param_5: int = 0


_unpack_header: Final = AGENT_HDR.unpack_from
_new_header: Final = tuple.__new__


def decode(frame: bytes | bytearray | memoryview) -> tuple[AgentHeader, memoryview]:
    """Split one pkt0 frame into its header and the inner frame (a view, not a copy).

    The real agent refuses a frame of 44 bytes or less (nothing after the headers); so
    does this decoder, in both directions.
    """
    view = memoryview(frame)
    if type(frame) is not bytes and (view.ndim != 1 or view.itemsize != 1):
        view = view.cast("B")
    if len(view) <= HEADER_LEN:
        raise Pkt0Error(f"pkt0 frame of {len(view)} bytes: need more than {HEADER_LEN}")
    # the record straight from the unpacked fields (nine, always): ``_make`` would check
    # their number in a Python call on every trap
    return _new_header(AgentHeader, _unpack_header(view, _ETH.size)), view[HEADER_LEN:]


def _u32(name: str, value: int) -> int:
    if value < 0:
        value &= _U32  # the agent's -1 defaults are 0xFFFFFFFF on the wire
    if value > _U32:
        raise Pkt0Error(f"{name} {value} does not fit in 32 bits")
    return value


def _pack(outer_dst: bytes, outer_src: bytes, hdr: AgentHeader, inner: bytes | memoryview) -> bytes:
    if not 0 <= hdr.ifindex <= 0xFFFF or not 0 <= hdr.vrf <= 0xFFFF or not 0 <= hdr.cmd <= 0xFFFF:
        raise Pkt0Error(f"ifindex/vrf/cmd out of 16 bits: {hdr.ifindex}/{hdr.vrf}/{hdr.cmd}")
    if not 0 <= hdr.param_5 <= 0xFF:
        raise Pkt0Error(f"param_5 {hdr.param_5} out of 8 bits")
    if len(inner) == 0:
        raise Pkt0Error("pkt0 frame without an inner frame")
    head = _ETH.pack(outer_dst, outer_src, ETHERTYPE_PKT0) + AGENT_HDR.pack(
        hdr.ifindex,
        hdr.vrf,
        hdr.cmd,
        _u32("param", hdr.param),
        _u32("param_1", hdr.param_1),
        _u32("param_2", hdr.param_2),
        _u32("param_3", hdr.param_3),
        _u32("param_4", hdr.param_4),
        hdr.param_5,
    )
    return head + bytes(inner)


def encode_trap(agent_mac: bytes, hdr: AgentHeader, inner: bytes | memoryview) -> bytes:
    """A datapath-to-agent frame: outer Ethernet from and to the agent vif's MAC."""
    if len(agent_mac) != 6:
        raise Pkt0Error(f"agent vif MAC of {len(agent_mac)} bytes")
    return _pack(agent_mac, agent_mac, hdr, inner)


#: outer Ethernet and agent_hdr of a trap in one pack (what :func:`encode_trap` writes)
_TRAP_HEAD: Final = struct.Struct("!6s6sH" + AGENT_HDR.format[1:])


def encode_trap_fields(
    agent_mac: bytes,
    ifindex: int,
    vrf: int,
    code: int,
    param: int,
    param_1: int,
    stats: tuple[int, int, int, int],
    inner: bytes,
) -> bytes:
    """:func:`encode_trap` of :func:`trap_header`'s header, byte for byte, without the
    header record: one pack and one concatenation per trap on the datapath's miss path."""
    nbytes, npackets, oflow, gen = stats
    try:
        head = _TRAP_HEAD.pack(agent_mac, agent_mac, ETHERTYPE_PKT0, ifindex, vrf, code,
                               param & _U32 if param < 0 else param,
                               param_1 & _U32 if param_1 < 0 else param_1,
                               nbytes, npackets, oflow, gen & 0xFF)
    except struct.error as e:
        raise Pkt0Error(f"trap header field out of range: {e}") from None
    if len(agent_mac) != 6 or not inner:
        raise Pkt0Error("agent vif MAC must be 6 bytes and the trapped frame not empty")
    return head + inner


def encode_command(
    ifindex: int,
    vrf: int,
    cmd: int,
    inner: bytes | memoryview,
    param: int = 0,
    param_1: int = 0,
) -> bytes:
    """An agent-to-datapath frame as the agent's ``EncodeAgentHdr`` writes it.

    The fields the agent leaves uninitialised are written as zeros here.
    """
    return _pack(
        AGENT_DST_MAC, AGENT_SRC_MAC, AgentHeader(ifindex, vrf, cmd, param, param_1), inner
    )


def trap_header(
    ifindex: int,
    vrf: int,
    code: int,
    param: int = 0,
    param_1: int = 0,
    stats: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> AgentHeader:
    """The header ``agent_send`` fills for a trap; ``stats`` is (bytes, packets, oflow, gen)."""
    nbytes, npackets, oflow, gen = stats
    return AgentHeader(ifindex, vrf, code, param, param_1, nbytes, npackets, oflow, gen & 0xFF)

"""DHCPv4 messages (RFC 2131/2132): the BOOTP header and the options, both directions.

A cold path (a few messages per VM per lease), so both the fixed 236-byte BOOTP layout
and the option TLVs are declared with ``construct``: the layout reads as the RFC's table.
Every option length is checked against what is left. One error class, :class:`DhcpError`.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from construct import (
    Bytes,
    Const,
    ConstructError,
    GreedyBytes,
    Int8ub,
    Int16ub,
    Int32ub,
    Pass,
    Prefixed,
    Struct,
    Switch,
    this,
)

__all__ = [
    "BOOTP_LEN",
    "MAGIC",
    "MSG",
    "OPT",
    "DhcpError",
    "DhcpMessage",
    "build",
    "encode_options",
    "parse",
]

#: RFC 2132 option codes used here
OPT: Final = {
    "pad": 0,
    "subnet_mask": 1,
    "router": 3,
    "dns": 6,
    "host_name": 12,
    "domain_name": 15,
    "broadcast": 28,
    "mtu": 26,
    "requested_ip": 50,
    "lease_time": 51,
    "message_type": 53,
    "server_id": 54,
    "parameter_list": 55,
    "message": 56,
    "client_id": 61,
    "relay_agent": 82,
    "classless_routes": 121,
    "end": 255,
}

#: DHCP message types (option 53)
MSG: Final = {
    "discover": 1,
    "offer": 2,
    "request": 3,
    "decline": 4,
    "ack": 5,
    "nak": 6,
    "release": 7,
    "inform": 8,
}

MAGIC: Final = b"\x63\x82\x53\x63"
BOOTP_LEN: Final = 236
BROADCAST_FLAG: Final = 0x8000

_BOOTP = Struct(
    "op" / Int8ub,
    "htype" / Int8ub,
    "hlen" / Int8ub,
    "hops" / Int8ub,
    "xid" / Int32ub,
    "secs" / Int16ub,
    "flags" / Int16ub,
    "ciaddr" / Bytes(4),
    "yiaddr" / Bytes(4),
    "siaddr" / Bytes(4),
    "giaddr" / Bytes(4),
    "chaddr" / Bytes(16),
    "sname" / Bytes(64),
    "file" / Bytes(128),
).compile()
assert _BOOTP.sizeof() == BOOTP_LEN
_COOKIE = Const(MAGIC)
#: One option: PAD (0) and END (255) are a lone code byte; every other code is followed
#: by a length byte and that many value bytes (RFC 2132 section 2).
_OPTION = Struct(
    "code" / Int8ub,
    "value" / Switch(this.code, {0: Pass, 255: Pass}, default=Prefixed(Int8ub, GreedyBytes)),
).compile()
_U32 = Int32ub.compile()


class DhcpError(ValueError):
    """A DHCP message that is too short, has no magic cookie or a broken option."""


class DhcpMessage(NamedTuple):
    """One DHCP message; ``options`` maps code to raw value in the order received."""

    op: int
    xid: int
    secs: int
    flags: int
    ciaddr: bytes
    yiaddr: bytes
    siaddr: bytes
    giaddr: bytes
    chaddr: bytes
    options: dict[int, bytes]
    htype: int = 1
    hlen: int = 6
    hops: int = 0

    @property
    def message_type(self) -> int | None:
        value = self.options.get(OPT["message_type"])
        return value[0] if value and len(value) == 1 else None

    @property
    def mac(self) -> bytes:
        return self.chaddr[:6]


def _options(data: bytes | memoryview) -> dict[int, bytes]:
    opts: dict[int, bytes] = {}
    raw = bytes(data)
    i, n = 0, len(raw)
    while i < n:
        code = raw[i]
        if code not in (0, 255):
            if i + 1 >= n:
                raise DhcpError(f"option {code} at offset {i} has no length byte")
            if i + 2 + raw[i + 1] > n:
                raise DhcpError(f"option {code} of {raw[i + 1]} bytes runs past the message")
        opt = _OPTION.parse(raw[i:])
        if code == 255:
            return opts
        if opt.value is None:  # PAD
            i += 1
            continue
        # RFC 3396: a repeated option is concatenated
        opts[code] = opts.get(code, b"") + opt.value
        i += 2 + len(opt.value)
    return opts  # no END option: tolerated, as most servers do


def parse(payload: bytes | memoryview) -> DhcpMessage:
    """Parse a UDP payload as DHCP; raises :class:`DhcpError` on anything malformed."""
    view = memoryview(payload)
    if len(view) < BOOTP_LEN + 4:
        raise DhcpError(f"DHCP message of {len(view)} bytes: need {BOOTP_LEN + 4}")
    try:
        h = _BOOTP.parse(bytes(view[:BOOTP_LEN]))
        _COOKIE.parse(bytes(view[BOOTP_LEN : BOOTP_LEN + 4]))
    except ConstructError as e:
        raise DhcpError(f"no DHCP magic cookie: {e}") from None
    if h.hlen > 16:
        raise DhcpError(f"hardware address length {h.hlen}")
    return DhcpMessage(
        op=h.op,
        xid=h.xid,
        secs=h.secs,
        flags=h.flags,
        ciaddr=h.ciaddr,
        yiaddr=h.yiaddr,
        siaddr=h.siaddr,
        giaddr=h.giaddr,
        chaddr=h.chaddr,
        options=_options(view[BOOTP_LEN + 4 :]),
        htype=h.htype,
        hlen=h.hlen,
        hops=h.hops,
    )


def encode_options(options: list[tuple[int, bytes]]) -> bytes:
    """Options in the order given, then END (values over 255 bytes are split, RFC 3396)."""
    out = bytearray()
    for code, value in options:
        if not 0 < code < 255:
            raise DhcpError(f"option code {code}")
        chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [b""]
        for chunk in chunks:
            out += _OPTION.build(dict(code=code, value=bytes(chunk)))
    out += _OPTION.build(dict(code=255, value=None))
    return bytes(out)


def build(msg: DhcpMessage, options: list[tuple[int, bytes]]) -> bytes:
    """The UDP payload of ``msg`` with ``options`` (``msg.options`` is not used)."""
    for name in ("ciaddr", "yiaddr", "siaddr", "giaddr"):
        if len(getattr(msg, name)) != 4:
            raise DhcpError(f"{name} must be 4 bytes")
    chaddr = msg.chaddr.ljust(16, b"\x00")
    if len(chaddr) != 16:
        raise DhcpError("chaddr longer than 16 bytes")
    head: bytes = _BOOTP.build(
        dict(
            op=msg.op,
            htype=msg.htype,
            hlen=msg.hlen,
            hops=msg.hops,
            xid=msg.xid,
            secs=msg.secs,
            flags=msg.flags,
            ciaddr=msg.ciaddr,
            yiaddr=msg.yiaddr,
            siaddr=msg.siaddr,
            giaddr=msg.giaddr,
            chaddr=chaddr,
            sname=bytes(64),
            file=bytes(128),
        )
    )
    return head + MAGIC + encode_options(options)


def u32(value: int) -> bytes:
    """A 4-byte big-endian option value (lease time)."""
    result: bytes = _U32.build(value & 0xFFFFFFFF)
    return result

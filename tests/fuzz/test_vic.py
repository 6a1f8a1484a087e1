"""VMware serial-port concentrator input: the TELNET parser, the option-232 (VMware
extension) messages it carries, and the guestinfo values the appliance reads back.

Contracts: :class:`TelnetParser` raises only :class:`TelnetProtocolError` and gives the
same events however the stream is cut; option-232 parsing raises only
:class:`ExtensionError`; guestinfo decoding raises only :class:`GuestInfoError`.
"""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import strategies as st

from tests.fuzz._harness import chunked, fuzz_case, mutated, target
from vrtwist.vic import vmware_ext as ext
from vrtwist.vic.guestinfo import GuestInfoError, decodeIPNet, encodeIPNet
from vrtwist.vic.telnet import (
    DO,
    VMWARE_EXT,
    WILL,
    TelnetParser,
    TelnetProtocolError,
    encodeData,
    encodeNegotiation,
    encodeSubnegotiation,
)

TELNET = [
    encodeData(b"login: \xff\xff root\r\n"),
    encodeNegotiation(WILL, VMWARE_EXT),
    encodeNegotiation(DO, 0),
    ext.command(ext.DO_PROXY, b"Stelnet://vspc:13370?port=serial0"),
    ext.command(ext.VM_VC_UUID, b"01 23 45 67 89 ab cd ef-fe dc ba 98 76 54 32 10"),
    ext.command(ext.VMOTION_BEGIN, b"\x00\x01\x02\x03"),
    encodeSubnegotiation(24, b"\x00VT100"),
    b"\xff\xf1\xff\xf6",  # NOP, AYT
]
TELNET.append(b"".join(TELNET))


def _merged(events: list[Any]) -> list[Any]:
    out: list[Any] = []
    for ev in events:
        if isinstance(ev, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += ev
        elif not (isinstance(ev, bytes) and not ev):
            out.append(ev)
    return out


def _feed(reads: list[bytes]) -> tuple[list[Any], int | None]:
    p = TelnetParser()
    events: list[Any] = []
    for chunk in reads:
        try:
            events.extend(p.feed(chunk))
        except TelnetProtocolError as e:
            events.extend(e.events)
            return _merged(events), e.offset
    return _merged(events), None


@target("vic", chunked(mutated(TELNET, 4096)))
def telnet(reads: list[bytes]) -> None:
    whole = _feed([b"".join(reads)])
    cut = _feed(reads)
    if whole[1] is None and cut[1] is None:
        # bytes still pending at the end may be split differently; whole events must match
        assert cut[0] == whole[0], "events depend on how the stream was cut"
    else:
        assert cut[1] == whole[1], "the error offset depends on how the stream was cut"


@target("vic", mutated([t[3:-2] for t in TELNET[3:6]] + [b"Ctelnet://x", b"S*"], 512),
        (ext.ExtensionError,))  # fmt: skip
def vmware_extension(payload: bytes) -> None:
    cmd, params = ext.split(payload)
    if cmd == ext.DO_PROXY:
        req = ext.parseDoProxy(params)
        assert req.direction in ("C", "S")
    elif cmd in (ext.VM_VC_UUID, ext.VM_BIOS_UUID, ext.VM_LOCATION_UUID):
        assert len(ext.normaliseUUID(params)) == 36


_NETS = [encodeIPNet(n) for n in ("10.0.0.5/24", "fe80::1/64", "192.168.1.1/32", "0.0.0.0/0")]
_B64 = st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode())
_TEXT = st.one_of(_B64, st.text(max_size=40), st.sampled_from([n[0] for n in _NETS]))


@target("vic", st.one_of(st.sampled_from(_NETS), st.tuples(_TEXT, _TEXT)), (GuestInfoError,))
def guestinfo_ipnet(pair: tuple[str, str]) -> None:
    net = decodeIPNet(*pair)
    assert encodeIPNet(net) is not None  # what was decoded can be published again


Fuzz = fuzz_case("vic")

"""vpnkit multiplexer: the handshake, the frame decoder, whole-buffer parsing, UDP records
and the ``-port`` specs of the host and forwarder.

Contracts: the handshake raises only :class:`HandshakeError`; the frame decoder never
raises from ``feed`` (it records a :class:`FrameError` and stops) and gives the same
frames however the link bytes were cut; UDP records raise only :class:`UDPRecordError`.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import strategies as st

from tests.fuzz._harness import chunked, fuzz_case, mutated, target
from vrtwist.vpnkit.frames import (
    BadOpen,
    Close,
    Data,
    DataHeader,
    Destination,
    FrameDecoder,
    FrameError,
    HandshakeDecoder,
    HandshakeError,
    Open,
    Payload,
    Shutdown,
    UDPDecoder,
    UDPRecordError,
    Window,
    encode_frame,
    encode_handshake,
    encode_udp_record,
    parse_frames,
)
from vrtwist.vpnkit.host import Port, PortError

FRAMES = [
    encode_frame(Open(1, Destination.tcp("127.0.0.1", 80))),
    encode_frame(Open(2, Destination.udp("::1", 53))),
    encode_frame(Open(3, Destination.unix("/var/run/docker.sock"))),
    encode_frame(Close(1)),
    encode_frame(Shutdown(2)),
    encode_frame(Window(3, 1 << 40)),
    encode_frame(Data(1, b"hello")),
    encode_frame(Data(2, b"")),
]
SEEDS = [*FRAMES, b"".join(FRAMES), encode_handshake(b"{}") + b"".join(FRAMES)]
UDP = [
    encode_udp_record(b"dns?"),
    encode_udp_record(b"x" * 40, ipaddress.ip_address("10.0.0.1"), 53),
    encode_udp_record(b"", ipaddress.ip_address("fe80::1"), 5353, "eth0"),
]
UDP.append(b"".join(UDP))


def _events(dec: FrameDecoder, reads: list[bytes]) -> list[Any]:
    """Decoded events with payload pieces merged, so differently cut streams compare."""
    out: list[Any] = []
    for chunk in reads:
        for ev in dec.feed(chunk):
            if isinstance(ev, Payload):
                if out and isinstance(out[-1], Payload) and out[-1].id == ev.id:
                    out[-1] = Payload(ev.id, bytes(out[-1].data) + bytes(ev.data))
                else:
                    out.append(Payload(ev.id, bytes(ev.data)))
            else:
                assert isinstance(ev, (Open, Close, Shutdown, Window, DataHeader)) or (
                    type(ev).__name__ == "BadOpen"
                ), ev
                out.append(ev)
    return out


@target("vpnkit", chunked(mutated([encode_handshake(b""), encode_handshake(b"x" * 300), *SEEDS])),
        (HandshakeError,))  # fmt: skip
def handshake(reads: list[bytes]) -> None:
    dec = HandshakeDecoder()
    for chunk in reads:
        if dec.feed(chunk) is not None:
            return


@target("vpnkit", chunked(mutated(SEEDS, 8192)))
def frame_decoder(reads: list[bytes]) -> None:
    whole = FrameDecoder()
    expected = _events(whole, [b"".join(reads)])
    cut = FrameDecoder()
    got = _events(cut, reads)
    assert got == expected, "events depend on how the link bytes were cut"
    assert (whole.error is None) == (cut.error is None)
    if whole.error is not None:
        assert cut.error is not None and cut.error.offset == whole.error.offset
        assert cut.feed(b"\x00" * 16) == []  # a dead link stays dead


@target("vpnkit", mutated(SEEDS, 8192), (FrameError,))
def parse_all(data: bytes) -> None:
    for f in parse_frames(data):
        if not isinstance(f, BadOpen):
            assert parse_frames(encode_frame(f)) == [f], "%r does not survive re-encoding" % f


@target("vpnkit", chunked(mutated(UDP)), (UDPRecordError,))
def udp_records(reads: list[bytes]) -> None:
    dec = UDPDecoder()
    for chunk in reads:
        for rec in dec.feed(chunk):
            assert len(rec.payload) <= 0xFFFF
        assert dec.buffered <= 0xFFFF + len(chunk)


_SPECS = ["tcp:0.0.0.0:80:127.0.0.1:8080", "udp:[::]:53:[::1]:5353", "unix:/a.sock:/b.sock",
          "tcp:80:8080", "tcp:[fe80::1%eth0]:1:[::]:2"]  # fmt: skip


@target("vpnkit", st.one_of(st.sampled_from(_SPECS), st.text(max_size=80),
                            mutated([s.encode() for s in _SPECS], 200).map(
                                lambda b: b.decode("utf-8", "replace"))),
        (PortError,))  # fmt: skip
def port_spec(spec: str) -> None:
    Port.parse(spec)


Fuzz = fuzz_case("vpnkit")

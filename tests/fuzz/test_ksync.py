"""ksync netlink framing: the frame reader, the message parser, the client's reply
correlator and the server session, on any byte stream cut into any reads.

Contracts: :class:`FrameReader` returns frames or raises :class:`NetlinkFrameError`, and
cutting the stream differently never changes the frames; the client core raises only
:class:`KsyncProtocolError`; the server session never raises: it answers each whole
request or drops the connection.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from tests.fuzz._harness import chunked, fuzz_case, mutated, target
from vrtwist.datapath.dispatcher import Datapath
from vrtwist.ksync.clientcore import ClientCore, KsyncProtocolError
from vrtwist.ksync.netlink import (
    HEADERS_LEN,
    FrameReader,
    NetlinkFrameError,
    build_request,
    build_response,
    parse_message,
)
from vrtwist.ksync.server import KsyncServerProtocol
from vrtwist.sandesh import SPECS_BY_NAME, encode, schema

_REQ = [encode(SPECS_BY_NAME[n].cls()) for n in
        ("vr_interface_req", "vr_nexthop_req", "vr_route_req", "vrouter_ops", "vr_flow_req")]  # fmt: skip
_RESP = encode(schema.vr_response(resp_code=0)) + encode(SPECS_BY_NAME["vr_interface_req"].cls())
REQUESTS = [build_request(p, seq) for seq, p in enumerate(_REQ, 1)]
REPLIES = [build_response(_RESP, parse_message(r), 0) for r in REQUESTS]
SEEDS = REQUESTS + REPLIES + [b"".join(REQUESTS), b"".join(REPLIES), REQUESTS[0][:HEADERS_LEN]]
STREAMS = chunked(mutated(SEEDS, 4096))


@target("ksync", STREAMS, (NetlinkFrameError,))
def frame_reader(reads: list[bytes]) -> None:
    whole = FrameReader()
    try:
        expected = whole.feed(b"".join(reads))
        failed = False
    except NetlinkFrameError:
        failed = True
    r = FrameReader()
    got: list[bytes] = []
    for chunk in reads:
        got.extend(r.feed(chunk))
        assert r.buffered <= 65536 + len(chunk)
    if failed:
        raise AssertionError("a stream the reader refused whole was accepted in pieces")
    assert got == expected, "frames depend on how the stream was cut"
    for frame in got:
        try:
            parse_message(frame)
        except NetlinkFrameError:
            pass


@target("ksync", STREAMS, (KsyncProtocolError,))
def client_core(reads: list[bytes]) -> None:
    core = ClientCore()
    for _ in range(6):
        core.build([SPECS_BY_NAME["vr_interface_req"].cls()])
    for chunk in reads:
        for _seq, results in core.feed(chunk):
            assert results, "a completed request with no result"


@target("ksync", STREAMS)
def server_session(reads: list[bytes]) -> None:
    proto = KsyncServerProtocol(Datapath())
    transport = StringTransport()
    proto.makeConnection(transport)
    for chunk in reads:
        proto.dataReceived(chunk)
    out = transport.value()
    if out and not transport.disconnecting:
        # every reply the session wrote is itself well framed
        frames = FrameReader().feed(out)
        assert sum(map(len, frames)) == len(out)
    proto.connectionLost()


Fuzz = fuzz_case("ksync")

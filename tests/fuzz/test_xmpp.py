"""XMPP between agent and control node: the stanza splitter, the stream header and the
stanza parser (the fast path for hot stanzas and the general expat path).

Contracts: the splitter raises only :class:`FramingError` and gives the same units
however the stream is cut; ``parse_stream_header`` raises only :class:`FramingError`;
``parse_stanza`` raises only :class:`StanzaError`, and when the fast path answers, the
general parser gives the same record.
"""

from __future__ import annotations

from typing import Any

from tests.fuzz._harness import chunked, fuzz_case, mutated, target
from vrtwist.xmpp.framing import (
    FramingError,
    StanzaBytes,
    StanzaSplitter,
    build_stream_open,
    build_stream_response,
    parse_stream_header,
)
from vrtwist.xmpp.stanzas import (
    AFI_INET,
    AFI_INET6,
    AFI_L2VPN,
    SAFI_ENET,
    SAFI_UNICAST,
    ConfigNode,
    NextHop,
    RouteEntry,
    StanzaError,
    build_config,
    build_eor_iq_pair,
    build_eor_message,
    build_features,
    build_retract,
    build_route_publish,
    build_route_update,
    build_subscribe,
    build_unsubscribe,
    parse_fast,
    parse_stanza,
    parse_stanza_full,
)

AGENT = "agent-1"
NH = NextHop("10.1.1.1", 17, ("gre", "udp"), virtual_network="default-domain:p:vn", tags=(1, 2))
V4 = RouteEntry(AFI_INET, SAFI_UNICAST, "10.0.0.3/32", (NH,), security_groups=(8000001,))
V6 = RouteEntry(AFI_INET6, SAFI_UNICAST, "fd00::3/128", (NH,))
EVPN = RouteEntry(AFI_L2VPN, SAFI_ENET, "10.0.0.3/32", (NH._replace(mac="02:00:00:00:00:03"),),
                  mac="02:00:00:00:00:03", ethernet_tag=5)  # fmt: skip
STANZAS = [
    build_subscribe(AGENT, "default-domain:p:vn:vn", 3),
    build_subscribe(AGENT, "virtual-router:default-global-system-config:" + AGENT, None, "config"),
    build_unsubscribe(AGENT, "default-domain:p:vn:vn"),
    build_eor_message("control", AGENT),
    build_features(),
    build_config(AGENT, [ConfigNode("virtual-network", "d:p:vn", {"id": 4, "x": {"y": "z"}})]),
    build_route_update("control", AGENT, "1/1/d:p:vn:vn", [V4]),
    build_route_update("control", AGENT, "25/242/d:p:vn:vn", [EVPN]),
    build_retract("control", AGENT, "2/1/d:p:vn:vn", ["fd00::3/128"]),
]
# each half of a publish + collection pair, and the end-of-RIB pair
for pair in (build_route_publish(AGENT, "d:p:vn:vn", e, True, 3) for e in (V4, V6, EVPN)):
    cut = pair.index(b"</iq>") + 5
    STANZAS += [pair[:cut], pair[cut:]]
STANZAS.append(build_route_publish(AGENT, "d:p:vn:vn", V4, False, 4))
STANZAS.append(build_eor_iq_pair(AGENT))
HEADERS = [build_stream_open(AGENT), build_stream_response("control", AGENT)]
STREAM = [HEADERS[0] + b"".join(STANZAS) + b" \n</stream:stream>", *HEADERS, *STANZAS]


def _units(reads: list[bytes]) -> tuple[list[Any], int | None]:
    s = StanzaSplitter(max_stanza=1 << 16)
    out: list[Any] = []
    for chunk in reads:
        try:
            out.extend(s.feed(chunk))
        except FramingError as e:
            return out, e.offset
    # keepalives are a timing hint: how many depends on the reads
    return [u for u in out if type(u).__name__ != "Keepalive"], None


@target("xmpp", chunked(mutated(STREAM, 8192)))
def splitter(reads: list[bytes]) -> None:
    whole = _units([b"".join(reads)])
    cut = _units(reads)
    if whole[1] is None:
        assert cut == whole, "units depend on how the stream was cut"
    else:
        assert cut[1] is not None, "a stream refused whole was accepted in pieces"


@target("xmpp", mutated(HEADERS, 1024), (FramingError,))
def stream_header(raw: bytes) -> None:
    h = parse_stream_header(raw)
    assert isinstance(h.from_, str) and isinstance(h.to, str)


@target("xmpp", mutated(STANZAS, 8192), (StanzaError,))
def stanza(data: bytes) -> None:
    parse_stanza(data)


@target("xmpp", mutated(STANZAS, 8192))
def fast_agrees_with_full(data: bytes) -> None:
    fast = parse_fast(data)
    if fast is None:
        return
    try:
        full = parse_stanza_full(data)
    except StanzaError as e:
        raise AssertionError("the fast path accepted what the full parser refuses: %s" % e)
    assert fast == full, "fast path %r != full parser %r" % (fast, full)


@target("xmpp", chunked(mutated(STREAM, 8192)), (FramingError, StanzaError))
def stream_to_records(reads: list[bytes]) -> None:
    """The session's whole receive path: split, then parse every stanza."""
    s = StanzaSplitter(max_stanza=1 << 16)
    for chunk in reads:
        for unit in s.feed(chunk):
            if isinstance(unit, StanzaBytes):
                parse_stanza(unit.data)


Fuzz = fuzz_case("xmpp")

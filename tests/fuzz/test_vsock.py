"""PROXY protocol v2 headers, as the vsock relay reads them before any payload.

Contract: ``decode`` returns None (incomplete), ``(header, used)``, or raises
:class:`ProxyProtocolError`; a complete header's prefixes are all "incomplete", never an
error, so reading it in pieces works; what decodes encodes again.
"""

from __future__ import annotations

from tests.fuzz._harness import fuzz_case, mutated, target
from vrtwist.vsock.proxyv2 import (
    AF_INET,
    AF_INET6,
    AF_UNIX,
    CMD_LOCAL,
    ProxyHeader,
    ProxyProtocolError,
    decode,
    encode,
)

SEEDS = [
    encode(ProxyHeader(command=CMD_LOCAL)),
    encode(ProxyHeader(family=AF_INET, source=("10.0.0.1", 1234), destination=("10.0.0.2", 80))),
    encode(ProxyHeader(family=AF_INET6, source=("::1", 1), destination=("fe80::2", 65535))),
    encode(ProxyHeader(family=AF_UNIX, source="/tmp/a", destination="/run/b")),
    encode(ProxyHeader(vsock=True, source=(3, 1024), destination=(2, 2375))),
    encode(ProxyHeader(family=AF_INET, source=("1.2.3.4", 5), destination=("6.7.8.9", 10),
                       tlvs={0x01: b"h2", 0x30: b"ns"})),
]  # fmt: skip


@target("vsock", mutated([s + b"GET / HTTP/1.0\r\n" for s in SEEDS], 2048), (ProxyProtocolError,))
def proxy_v2(data: bytes) -> None:
    got = decode(data)
    if got is None:
        return
    header, used = got
    assert 16 <= used <= len(data)
    for k in (0, 1, 12, 15, 16, used - 1):
        if 0 <= k < used:
            assert decode(data[:k]) is None, "a prefix of a good header was refused"
    try:
        encode(header)
    except ProxyProtocolError:
        pass  # e.g. mixed IP versions cannot be re-sent; refusing is the documented answer


Fuzz = fuzz_case("vsock")

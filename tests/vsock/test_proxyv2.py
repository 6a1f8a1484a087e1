"""PROXY v2 header codec: every family, the vsock TLV, incomplete and bad input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.vsock import proxyv2 as P


class CodecTests(SynchronousTestCase):
    def test_tcp4_matches_the_published_layout(self) -> None:
        h = P.ProxyHeader(family=P.AF_INET, source=("10.0.0.1", 1234), destination=("10.0.0.2", 80))
        wire = P.encode(h)
        self.assertEqual(
            wire,
            P.SIGNATURE
            + bytes([0x21, 0x11, 0x00, 12])
            + bytes([10, 0, 0, 1, 10, 0, 0, 2])
            + (1234).to_bytes(2, "big")
            + (80).to_bytes(2, "big"),
        )
        self.assertEqual(P.decode(wire + b"payload"), (h, len(wire)))

    def test_tcp6_unix_local_vsock(self) -> None:
        cases = [
            P.ProxyHeader(family=P.AF_INET6, source=("::1", 1), destination=("fe80::2", 2)),
            P.ProxyHeader(family=P.AF_UNIX, source="/run/a.sock", destination="/run/b.sock"),
            P.ProxyHeader(command=P.CMD_LOCAL),
            P.ProxyHeader(source=(3, 1025), destination=(2, 1024), vsock=True),
            P.ProxyHeader(
                family=P.AF_INET,
                source=("1.2.3.4", 5),
                destination=("5.6.7.8", 9),
                tlvs={0xE1: b"id"},
            ),
        ]
        for h in cases:
            got = P.decode(P.encode(h))
            assert got is not None
            self.assertEqual(got[0], h)
        vs = P.decode(P.encode(cases[3]))
        assert vs is not None
        self.assertEqual(vs[0].source_cid, 3)

    def test_incomplete_returns_none(self) -> None:
        wire = P.encode(P.ProxyHeader(source=(3, 1), destination=(2, 2), vsock=True))
        for i in range(len(wire)):
            self.assertIsNone(P.decode(wire[:i]))

    def test_errors(self) -> None:
        good = P.encode(
            P.ProxyHeader(family=P.AF_INET, source=("1.1.1.1", 1), destination=("2.2.2.2", 2))
        )
        self.assertRaises(P.ProxyProtocolError, P.decode, b"GET / HTTP/1.1\r\n")
        self.assertRaises(P.ProxyProtocolError, P.decode, good[:12] + b"\x11" + good[13:])
        self.assertRaises(P.ProxyProtocolError, P.decode, good[:12] + b"\x25" + good[13:])
        self.assertRaises(P.ProxyProtocolError, P.decode, good[:13] + b"\x51" + good[14:])
        short = good[:14] + (4).to_bytes(2, "big") + good[16:20]
        self.assertRaises(P.ProxyProtocolError, P.decode, short)
        huge = good[:14] + (5000).to_bytes(2, "big")
        self.assertRaises(P.ProxyProtocolError, P.decode, huge)
        badtlv = P.SIGNATURE + bytes([0x21, 0x00, 0, 3]) + bytes([0xE8, 0, 9])
        self.assertRaises(P.ProxyProtocolError, P.decode, badtlv)
        wrongvs = P.SIGNATURE + bytes([0x21, 0x00, 0, 5]) + bytes([0xE8, 0, 2, 1, 2])
        self.assertRaises(P.ProxyProtocolError, P.decode, wrongvs)

    @settings(max_examples=100, deadline=None)
    @given(
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.dictionaries(st.integers(0xE0, 0xE7), st.binary(max_size=40), max_size=3),
    )
    def test_vsock_round_trip(
        self, sc: int, sp: int, dc: int, dp: int, tlvs: dict[int, bytes]
    ) -> None:
        h = P.ProxyHeader(source=(sc, sp), destination=(dc, dp), vsock=True, tlvs=tlvs)
        got = P.decode(P.encode(h))
        assert got is not None
        self.assertEqual(got[0], h)

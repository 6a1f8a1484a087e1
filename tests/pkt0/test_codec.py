"""The pkt0 frame codec, byte for byte against the layout of ``struct agent_hdr``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.pkt0 import constants as K
from vrtwist.pkt0.codec import (
    AGENT_HDR,
    HEADER_LEN,
    AgentHeader,
    Pkt0Error,
    decode,
    encode_command,
    encode_trap,
    encode_trap_fields,
    trap_header,
)

AGENT_MAC = bytes.fromhex("00005e000100")
#: a 42-byte ARP request as a VM sends it (the inner frame of the vectors below)
ARP = bytes.fromhex(
    "ffffffffffff 020000000003 0806 0001 0800 06 04 0001 020000000003 0a010103"
    "000000000000 0a010101"
)


class GoldenTests(SynchronousTestCase):
    def test_flow_miss_header(self) -> None:
        """FLOW_MISS on vif 3, vrf 1, flow 1000, nh 12, zero stats: the header's 30 bytes."""
        hdr = trap_header(3, 1, K.AGENT_TRAP_FLOW_MISS, 1000, 12)
        frame = encode_trap(AGENT_MAC, hdr, ARP)
        self.assertEqual(
            frame[14:44],
            bytes.fromhex(
                "0003 0001 0006 000003e8 0000000c 00000000 00000000 00000000 00 000000"
            ),
        )

    def test_trap_outer_ethernet(self) -> None:
        """Traps go from and to the agent vif's MAC with EtherType 0x0800."""
        frame = encode_trap(AGENT_MAC, trap_header(5, 2, K.AGENT_TRAP_ARP), ARP)
        self.assertEqual(frame[:14], AGENT_MAC + AGENT_MAC + b"\x08\x00")
        self.assertEqual(frame[44:], ARP)
        self.assertEqual(len(frame), 44 + len(ARP))

    @given(
        st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
        st.integers(-1, 0xFFFFFFFF), st.integers(-1, 0xFFFFFFFF),
        st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF),
                  st.integers(0, 0xFFFFFFFF), st.integers(0, 0x1FF)),
    )
    def test_fast_trap_is_the_same_bytes(
        self, ifindex: int, vrf: int, code: int, param: int, param_1: int,
        stats: tuple[int, int, int, int],
    ) -> None:
        """The datapath's one-pack trap encoder writes what encode_trap(trap_header) does."""
        self.assertEqual(
            encode_trap_fields(AGENT_MAC, ifindex, vrf, code, param, param_1, stats, ARP),
            encode_trap(AGENT_MAC, trap_header(ifindex, vrf, code, param, param_1, stats), ARP),
        )

    def test_fast_trap_refuses_what_does_not_fit(self) -> None:
        """Out-of-range fields, a short MAC or an empty frame are a Pkt0Error, not a
        struct error or a truncated field."""
        stats = (0, 0, 0, 0)
        with self.assertRaises(Pkt0Error):
            encode_trap_fields(AGENT_MAC, 0x10000, 0, 6, 0, 0, stats, ARP)
        with self.assertRaises(Pkt0Error):
            encode_trap_fields(AGENT_MAC, 3, 0, 6, 1 << 32, 0, stats, ARP)
        with self.assertRaises(Pkt0Error):
            encode_trap_fields(AGENT_MAC[:5], 3, 0, 6, 0, 0, stats, ARP)
        with self.assertRaises(Pkt0Error):
            encode_trap_fields(AGENT_MAC, 3, 0, 6, 0, 0, stats, b"")
        self.assertEqual(len(encode_trap_fields(AGENT_MAC, 3, 0, 6, 0, 0, stats, ARP)),
                         HEADER_LEN + len(ARP))

    def test_command_as_the_agent_writes_it(self) -> None:
        """A SWITCH command: 00..01 -> 00..02, params 0 (the agent's short form)."""
        frame = encode_command(7, 3, K.AGENT_CMD_SWITCH, ARP)
        self.assertEqual(
            frame[:44],
            bytes.fromhex(
                "000000000002 000000000001 0800"
                "0007 0003 0000 00000000 00000000 00000000 00000000 00000000 00 000000"
            ),
        )

    def test_minus_one_params(self) -> None:
        """The agent's -1 defaults are 0xffffffff on the wire and decode as such."""
        frame = encode_command(1, 0, K.AGENT_CMD_ROUTE, ARP, param=-1, param_1=-1)
        hdr, _ = decode(frame)
        self.assertEqual((hdr.param, hdr.param_1), (0xFFFFFFFF, 0xFFFFFFFF))

    def test_stats_and_gen(self) -> None:
        """param_2..5 carry bytes, packets, the overflow word and the generation."""
        hdr = trap_header(3, 1, K.AGENT_TRAP_FLOW_ACTION_HOLD, 9, 12, (122, 1, 0x00020001, 7))
        back, inner = decode(encode_trap(AGENT_MAC, hdr, ARP))
        self.assertEqual(back, hdr)
        self.assertEqual(back.param_4, 0x00020001)
        self.assertEqual(back.param_5, 7)
        self.assertEqual(bytes(inner), ARP)

    def test_decode_is_a_view(self) -> None:
        """The inner frame is a view into the caller's buffer, not a copy."""
        buf = bytearray(encode_trap(AGENT_MAC, trap_header(1, 0, K.AGENT_TRAP_ARP), ARP))
        _, inner = decode(buf)
        buf[44] = 0x11
        self.assertEqual(inner[0], 0x11)

    def test_trap_names(self) -> None:
        """Every code has a name, and 19 (TF's MAC-IP learning) is known."""
        self.assertEqual(K.TRAP_NAMES[K.AGENT_TRAP_FLOW_MISS], "flow_miss")
        self.assertEqual(K.TRAP_NAMES[K.AGENT_CMD_ROUTE], "route")
        self.assertEqual(len(K.TRAP_NAMES), K.MAX_AGENT_HDR_COMMANDS)


class BadInputTests(SynchronousTestCase):
    def test_too_short(self) -> None:
        """44 bytes or less is refused, as the agent's ``len > 44`` check does."""
        frame = encode_trap(AGENT_MAC, trap_header(1, 0, K.AGENT_TRAP_ARP), ARP)
        for n in (0, 1, 14, 43, 44):
            with self.assertRaises(Pkt0Error):
                decode(frame[:n])
        hdr, inner = decode(frame[:45])
        self.assertEqual(len(inner), 1)
        self.assertEqual(hdr.cmd, K.AGENT_TRAP_ARP)

    def test_field_ranges(self) -> None:
        """Fields that do not fit their width are refused with the field named."""
        with self.assertRaisesRegex(Pkt0Error, "16 bits"):
            encode_command(0x10000, 0, 0, ARP)
        with self.assertRaisesRegex(Pkt0Error, "param_1"):
            encode_command(1, 0, 0, ARP, param_1=1 << 32)
        with self.assertRaisesRegex(Pkt0Error, "param_5"):
            encode_trap(AGENT_MAC, AgentHeader(1, 0, 2, param_5=256), ARP)
        with self.assertRaisesRegex(Pkt0Error, "MAC"):
            encode_trap(b"\x00" * 5, trap_header(1, 0, 2), ARP)
        with self.assertRaisesRegex(Pkt0Error, "inner"):
            encode_command(1, 0, 0, b"")

    def test_struct_size(self) -> None:
        """The packed header is 30 bytes and the two headers 44."""
        self.assertEqual(AGENT_HDR.size, 30)
        self.assertEqual(HEADER_LEN, 44)


u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


class RoundTripTests(SynchronousTestCase):
    @given(
        st.tuples(u16, u16, u16, u32, u32, u32, u32, u32, st.integers(0, 255)),
        st.binary(min_size=1, max_size=300),
        st.binary(min_size=6, max_size=6),
    )
    def test_trap_round_trip(
        self, fields: tuple[int, ...], inner: bytes, mac: bytes
    ) -> None:
        """Any header and inner frame survive encode then decode unchanged."""
        hdr = AgentHeader(*fields)
        back, view = decode(encode_trap(mac, hdr, inner))
        self.assertEqual(back, hdr)
        self.assertEqual(bytes(view), inner)

    @given(st.binary(max_size=120))
    def test_decode_never_raises_other_errors(self, data: bytes) -> None:
        """Arbitrary bytes decode or raise Pkt0Error, nothing else."""
        try:
            hdr, inner = decode(data)
        except Pkt0Error:
            self.assertLessEqual(len(data), HEADER_LEN)
        else:
            self.assertEqual(len(inner), len(data) - HEADER_LEN)
            self.assertIsInstance(hdr, AgentHeader)

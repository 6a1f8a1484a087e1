"""Byte-exact and error-path tests of the Sandesh codec (spec section 1)."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.sandesh import (
    ADD,
    GET,
    RESPONSE,
    SPECS_BY_NAME,
    SandeshDecodeError,
    SandeshEncodeError,
    decode,
    decode_one,
    encode,
    encode_many,
    schema,
)

MPLS_HEX = (
    "00 00 00 0b 76 72 5f 6d 70 6c 73 5f 72 65 71"
    " 08 00 01 00 00 00 00"
    " 08 00 02 00 00 00 04"
    " 06 00 03 00 00"
    " 08 00 04 00 00 00 15"
    " 08 00 05 00 00 00 00"
    " 00"
)
RESPONSE_HEX = (
    "00 00 00 0b 76 72 5f 72 65 73 70 6f 6e 73 65 08 00 01 00 00 00 04 08 00 02 00 00 00 00 00"
)


def _hdr(t: int, fid: int) -> bytes:
    return struct.pack(">Bh", t, fid)


def _name(n: str) -> bytes:
    return struct.pack(">i", len(n)) + n.encode()


class WorkedExampleTests(SynchronousTestCase):
    """The spec's worked examples (1.8), byte for byte, both directions."""

    def test_mpls_req(self) -> None:
        msg = schema.vr_mpls_req(h_op=ADD, mr_label=4, mr_rid=0, mr_nhid=21, mr_marker=0)
        data = encode(msg)
        self.assertEqual(len(data), 49)
        self.assertEqual(data, bytes.fromhex(MPLS_HEX))
        self.assertEqual(decode(data), [msg])

    def test_response(self) -> None:
        msg = schema.vr_response(h_op=RESPONSE, resp_code=0)
        data = encode(msg)
        self.assertEqual(data, bytes.fromhex(RESPONSE_HEX))
        self.assertEqual(len(data), 30)
        self.assertEqual(decode(data), [msg])

    def test_get_reply_payload(self) -> None:
        """GET mpls 4: vr_response then the object, 79 bytes, in one buffer (spec 3.3)."""
        resp = schema.vr_response(h_op=RESPONSE, resp_code=0)
        obj = schema.vr_mpls_req(h_op=ADD, mr_label=4, mr_nhid=21)
        data = encode_many([resp, obj])
        self.assertEqual(len(data), 79)
        self.assertEqual(decode(data + b"\x00"), [resp, obj])


class EncodeTests(SynchronousTestCase):
    def test_declaration_order_and_type_codes(self) -> None:
        """Every field is written, in declaration order, with the spec's wire type code."""
        for name, spec in SPECS_BY_NAME.items():
            data = encode(spec.cls())
            o = 4 + len(name)
            self.assertEqual(data[4:o], name.encode())
            for f in spec.fields:
                t, fid = struct.unpack_from(">Bh", data, o)
                self.assertEqual((t, fid), (f.wire, f.fid), (name, f.name))
                o += 3
                if f.wire == 15:
                    self.assertEqual(data[o], f.elem, (name, f.name))
                    self.assertEqual(data[o + 1 : o + 5], b"\0\0\0\0")
                    o += 5
                elif f.wire == 11:
                    o += 4
                else:
                    o += {3: 1, 6: 2, 19: 2, 8: 4, 20: 4, 10: 8, 9: 8}[f.wire]
            self.assertEqual(data[o:], b"\x00", name)

    def test_unsigned_codes(self) -> None:
        """u16 is code 19, u32 20, u64 9, list 15 with the element code."""
        msg = schema.vr_flow_req(
            fr_flow_sport=0xFFFF, fr_mir_sip=0xFFFFFFFF, fr_flow_sip_u=2**64 - 1
        )
        data = encode(msg)
        self.assertIn(_hdr(19, 12) + b"\xff\xff", data)
        self.assertIn(_hdr(20, 19) + b"\xff" * 4, data)
        self.assertIn(_hdr(9, 8) + b"\xff" * 8, data)
        hp = schema.vr_hugepage_config(vhp_mem=[1], vhp_psize=[2])
        data = encode(hp)
        self.assertIn(_hdr(15, 2) + bytes([9]) + struct.pack(">iQ", 1, 1), data)
        self.assertIn(_hdr(15, 3) + bytes([20]) + struct.pack(">iI", 1, 2), data)

    def test_either_signedness_accepted(self) -> None:
        """A u32 may be given as a negative i32, an i16 as an unsigned 16-bit value."""
        a = encode(schema.vr_interface_req(vifr_ip=-1, vifr_mir_id=0xFFFF, vifr_mac=[255, -1]))
        b = encode(schema.vr_interface_req(vifr_ip=0xFFFFFFFF, vifr_mir_id=-1, vifr_mac=[255, 255]))
        self.assertEqual(a, b)
        d = decode(a)[0]
        self.assertEqual((d.vifr_ip, d.vifr_mir_id, d.vifr_mac), (0xFFFFFFFF, -1, [255, 255]))

    def test_none_and_bytes(self) -> None:
        """None encodes as zero/empty; bytes are accepted for strings and byte lists."""
        msg = schema.vr_interface_req(vifr_name=None, vifr_mac=b"\x01\x02", vifr_idx=None)
        want = schema.vr_interface_req(vifr_name="", vifr_mac=[1, 2], vifr_idx=0)
        self.assertEqual(encode(msg), encode(want))
        self.assertEqual(
            encode(schema.vr_interface_req(vifr_name=b"tap0")),
            encode(schema.vr_interface_req(vifr_name="tap0")),
        )

    def test_bad_values(self) -> None:
        for kw in (
            {"vifr_idx": 2**32},
            {"vifr_idx": -(2**31) - 1},
            {"vifr_idx": "3"},
            {"vifr_mac": [256]},
            {"vifr_mac": 3},
            {"vifr_name": 3},
            {"vifr_queue_ierrors_to_lcore": ["x"]},
        ):
            with self.assertRaises(SandeshEncodeError, msg=repr(kw)) as cm:
                encode(schema.vr_interface_req(**kw))
            self.assertIn(next(iter(kw)), str(cm.exception))

    def test_not_a_message(self) -> None:
        self.assertRaises(SandeshEncodeError, encode, object())
        self.assertRaises(SandeshEncodeError, encode, schema.sandesh_hdr())


class DecodeRulesTests(SynchronousTestCase):
    """The C decoder's tolerance rules (spec 1.5, 1.6)."""

    def test_any_order_unknown_and_mismatched_fields(self) -> None:
        data = (
            _name("vr_mpls_req")
            + _hdr(8, 4)
            + struct.pack(">i", 21)  # mr_nhid first
            + _hdr(8, 99)
            + struct.pack(">i", 7)  # unknown id: skipped
            + _hdr(11, 98)
            + struct.pack(">i", 3)
            + b"abc"  # unknown string
            + _hdr(15, 97)
            + bytes([8])
            + struct.pack(">iii", 2, 1, 2)  # unknown list
            + _hdr(12, 96)
            + _hdr(8, 1)
            + struct.pack(">i", 1)
            + b"\x00"  # unknown struct
            + _hdr(10, 2)
            + struct.pack(">q", 4)  # mr_label with the wrong type: skipped
            + _hdr(8, 1)
            + struct.pack(">i", GET)
            + b"\x00"
        )
        (msg,) = decode(data)
        self.assertEqual(msg, schema.vr_mpls_req(h_op=GET, mr_nhid=21))
        self.assertEqual(msg.mr_label, 0)

    def test_missing_fields_zero_filled(self) -> None:
        (msg,) = decode(_name("vr_interface_req") + b"\x00")
        self.assertEqual(msg.vifr_name, "")
        self.assertEqual(msg.vifr_mac, [])
        self.assertEqual(msg.vifr_ip6_u, 0)
        self.assertEqual(msg, schema.vr_interface_req())

    def test_list_element_type_ignored(self) -> None:
        """The generated list reader trusts the schema, not the element type byte."""
        data = (
            _name("vr_route_req")
            + _hdr(15, 4)
            + bytes([8])
            + struct.pack(">i", 2)
            + b"\x0a\x01\x00"
        )
        (msg,) = decode(data)
        self.assertEqual(msg.rtr_prefix, [10, 1])

    def test_nonpositive_string_length(self) -> None:
        for n in (0, -5):
            data = _name("vr_interface_req") + _hdr(11, 10) + struct.pack(">i", n) + b"\x00"
            self.assertEqual(decode(data)[0].vifr_name, "")

    def test_several_messages_and_padding(self) -> None:
        a = encode(schema.vr_response(h_op=RESPONSE, resp_code=-2))
        b = encode(schema.vr_vxlan_req(vxlanr_vnid=5))
        for pad in range(4):
            got = decode(a + b + b"\x00" * pad)
            self.assertEqual([type(m).__name__ for m in got], ["vr_response", "vr_vxlan_req"])
        self.assertRaises(SandeshDecodeError, decode, a + b + b"\x00", pad=0)
        self.assertEqual(decode(b""), [])

    def test_memoryview_and_bytearray(self) -> None:
        data = bytes.fromhex(MPLS_HEX)
        self.assertEqual(decode(memoryview(data)), decode(bytearray(data)))

    def test_decode_one_offsets(self) -> None:
        a = bytes.fromhex(RESPONSE_HEX)
        b = bytes.fromhex(MPLS_HEX)
        m, o = decode_one(a + b, 0)
        self.assertEqual(o, 30)
        m, o = decode_one(a + b, o)
        self.assertEqual((m.mr_nhid, o), (21, 79))


class DecodeErrorTests(SynchronousTestCase):
    """Malformed input raises SandeshDecodeError at the right offset, never anything else."""

    def assertDecodeError(self, data: bytes, offset: int, text: str = "") -> SandeshDecodeError:
        with self.assertRaises(SandeshDecodeError) as cm:
            decode(data)
        self.assertEqual(cm.exception.offset, offset, str(cm.exception))
        self.assertIn(text, str(cm.exception))
        return cm.exception

    def test_name_length_invalid(self) -> None:
        self.assertDecodeError(struct.pack(">i", 0) + b"\x00" * 4, 0, "Length INVALID")
        self.assertDecodeError(struct.pack(">i", -1) + b"\x00" * 4, 0, "Length INVALID")
        self.assertDecodeError(struct.pack(">i", 0x7FFFFFFF) + b"x" * 8, 0, "too long")

    def test_unknown_name(self) -> None:
        self.assertDecodeError(_name("vr_nothing") + b"\x00", 4, "unknown sandesh")

    def test_truncated_name(self) -> None:
        self.assertDecodeError(struct.pack(">i", 11) + b"vr_mp", 4, "truncated")

    def test_second_message_error_offset(self) -> None:
        a = bytes.fromhex(RESPONSE_HEX)
        self.assertDecodeError(a + _name("vr_mpls_req") + _hdr(8, 1), 30 + 4 + 11 + 3)

    def test_huge_declared_lengths(self) -> None:
        """Lengths far beyond the buffer fail at once, without allocating them."""
        base = _name("vr_interface_req")
        self.assertDecodeError(base + _hdr(11, 10) + struct.pack(">i", 0x7FFFFFFF) + b"ab", 20 + 7)
        self.assertDecodeError(
            base + _hdr(15, 38) + bytes([3]) + struct.pack(">i", 0x7FFFFFFF), 20 + 8
        )
        self.assertDecodeError(
            base + _hdr(15, 19) + bytes([10]) + struct.pack(">i", 0x10000000), 20 + 8
        )
        self.assertDecodeError(
            base + _hdr(15, 99) + bytes([10]) + struct.pack(">i", 0x7FFFFFFF), 20 + 8
        )
        self.assertDecodeError(
            base + _hdr(15, 99) + bytes([12]) + struct.pack(">i", 0x7FFFFFFF), 20 + 8
        )

    def test_negative_list_size(self) -> None:
        base = _name("vr_interface_req")
        self.assertDecodeError(
            base + _hdr(15, 38) + bytes([3]) + struct.pack(">i", -1) + b"\x00", 20 + 4, "negative"
        )

    def test_unknown_wire_type(self) -> None:
        base = _name("vr_mpls_req")
        self.assertDecodeError(base + _hdr(77, 1) + b"\x00" * 8, 15, "unknown wire type")

    def test_deep_nesting(self) -> None:
        base = _name("vr_mpls_req")
        data = base + (_hdr(12, 50)) * 40 + b"\x00" * 41
        self.assertDecodeError(data, 15 + 3 * 18, "nesting")

    def test_trailing_garbage(self) -> None:
        a = bytes.fromhex(RESPONSE_HEX)
        self.assertDecodeError(a + b"\x00\x01", 30, "trailing")
        self.assertDecodeError(a + b"\x00\x00\x00\x05", 34, "truncated")

    def test_every_truncation_fails_cleanly(self) -> None:
        """Each proper prefix of valid messages (longer than 3 bytes) raises the codec error."""
        msgs = [
            schema.vr_mpls_req(h_op=ADD, mr_label=4, mr_nhid=21),
            schema.vr_interface_req(
                vifr_name="tap0",
                vifr_mac=[1, 2, 3, 4, 5, 6],
                vifr_queue_ierrors_to_lcore=[1, 2],
                vifr_hw_queues=[3],
            ),
            schema.vr_route_req(rtr_prefix=[10, 0, 0, 0], rtr_prefix_len=8),
            schema.vr_flow_req(fr_pcap_meta_data=[1, 2, 3]),
            schema.vrouter_ops(vo_build_info="{}", vo_log_type_enable=[1, 2]),
        ]
        for msg in msgs:
            data = encode(msg)
            for n in range(4, len(data)):
                with self.assertRaises(
                    SandeshDecodeError, msg="%s[:%d]" % (type(msg).__name__, n)
                ) as cm:
                    decode(data[:n], pad=0)
                self.assertLessEqual(cm.exception.offset, n)
            for n in range(1, 4):
                self.assertRaises(SandeshDecodeError, decode, data[:n], pad=0)


class ShapePathTests(SynchronousTestCase):
    """The learned per-shape decoder must never accept what the general path would not."""

    def _learn(self, msg: object) -> bytes:
        data = encode(msg)
        for _ in range(4):
            self.assertEqual(decode(data), [msg])
        return data

    def test_element_type_byte_mismatch_falls_back(self) -> None:
        msg = schema.vr_route_req(
            rtr_prefix=[10, 0, 0, 1], rtr_prefix_len=32, rtr_mac=[1, 2, 3, 4, 5, 6]
        )
        data = bytearray(self._learn(msg))
        pos = data.index(_hdr(15, 4)) + 3
        self.assertEqual(data[pos], 3)
        data[pos] = 8  # element type says i32; the C reader trusts the schema (byte)
        self.assertEqual(decode(bytes(data)), [msg])

    def test_same_size_different_layout(self) -> None:
        """A message with the learned size but another field id is decoded by the walker."""
        msg = schema.vr_mpls_req(h_op=ADD, mr_label=4, mr_nhid=21)
        data = bytearray(self._learn(msg))
        pos = data.index(_hdr(8, 4))
        data[pos : pos + 3] = _hdr(8, 44)  # unknown id: skipped, mr_nhid stays 0
        self.assertEqual(decode(bytes(data)), [schema.vr_mpls_req(h_op=ADD, mr_label=4)])

    def test_truncated_after_learning(self) -> None:
        data = self._learn(schema.vr_interface_req(vifr_name="tap1", vifr_mac=[1, 2, 3, 4, 5, 6]))
        for n in (len(data) - 1, len(data) // 2, 30):
            with self.assertRaises(SandeshDecodeError):
                decode(data[:n], pad=0)

    def test_alternating_shapes(self) -> None:
        a = schema.vr_interface_req(h_op=GET, vifr_idx=1)
        b = schema.vr_interface_req(
            vifr_idx=1, vifr_name="tap-long-name", vifr_mac=[1, 2, 3, 4, 5, 6]
        )
        da, db = encode(a), encode(b)
        for _ in range(5):
            self.assertEqual(decode(da + db), [a, b])

    def test_decoded_objects_are_independent(self) -> None:
        """Objects decoded from the same bytes (memo, shapes) never share lists."""
        data = self._learn(schema.vr_route_req(rtr_prefix=[10, 0, 0, 0]))
        x, y = decode(data)[0], decode(data)[0]
        x.rtr_prefix.append(1)
        x.rtr_marker.append(2)
        self.assertEqual((y.rtr_prefix, y.rtr_marker), ([10, 0, 0, 0], []))
        r = encode(schema.vr_response(h_op=RESPONSE, resp_code=7))
        p, q = decode(r)[0], decode(r)[0]
        p.resp_code = 1
        self.assertEqual(q.resp_code, 7)
        self.assertEqual(decode(r)[0].resp_code, 7)

    def test_many_shapes_stay_correct(self) -> None:
        """Past the compiled-shape limit, the general path keeps decoding correctly."""
        for n in range(80):
            msg = schema.vr_interface_req(vifr_idx=n, vifr_name="x" * n)
            data = encode(msg)
            for _ in range(3):
                self.assertEqual(decode(data), [msg])


class WholeBufferPathTests(SynchronousTestCase):
    """Single-message buffers are matched by length; two layouts of one size must not mix."""

    def test_same_size_types_alternate(self) -> None:
        a = schema.vr_response(h_op=RESPONSE, resp_code=5)
        da = encode(a)
        b = schema.vr_mpls_req(h_op=ADD, mr_label=4, mr_nhid=21)
        db = encode(b)
        # Two shapes of one type with the same total size share one length slot.
        c = schema.vr_route_req(rtr_prefix=[10, 0, 0, 0], rtr_mac=[])
        d = schema.vr_route_req(rtr_prefix=[], rtr_mac=[1, 2, 3, 4])
        dc, dd = encode(c), encode(d)
        self.assertEqual(len(dc), len(dd))
        for _ in range(4):
            self.assertEqual(decode(dc), [c])
            self.assertEqual(decode(dd), [d])
            self.assertEqual(decode(da), [a])
            self.assertEqual(decode(db), [b])

    def test_whole_path_rejects_other_name(self) -> None:
        """A learned size with another message's name goes to the checked path."""
        a = schema.vr_response(h_op=RESPONSE, resp_code=5)
        da = encode(a)
        for _ in range(3):
            decode(da)
        bad = da[:4] + b"vr_respXnse" + da[15:]
        with self.assertRaises(SandeshDecodeError):
            decode(bad)

"""Flow table: byte layout read back independently, placement, FLOW_SET semantics and errors."""

from __future__ import annotations

import errno
import socket
import struct

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from vrtwist.shmem import layout as L
from vrtwist.shmem.flowtable import FlowTable
from vrtwist.shmem.interfaces import IFlowDatapath, IFlowTable
from vrtwist.shmem.jhash import jhash


def wire_ip(a: str) -> int:
    return int.from_bytes(socket.inet_aton(a), "little")


def wire_port(p: int) -> int:
    return socket.htons(p)


def req(
    sip: str = "10.0.0.1",
    dip: str = "10.0.0.2",
    sport: int = 1000,
    dport: int = 80,
    proto: int = 6,
    nh: int = 7,
    index: int = -1,
    action: int = L.ACTION_FORWARD,
    flags: int = L.FLAG_ACTIVE,
    gen: int = 0,
    **extra: int,
) -> dict[str, int]:
    r = {
        "fr_op": 0,
        "fr_index": index,
        "fr_action": action,
        "fr_flags": flags,
        "fr_family": 2,
        "fr_flow_sip_l": wire_ip(sip),
        "fr_flow_dip_l": wire_ip(dip),
        "fr_flow_proto": proto,
        "fr_flow_sport": wire_port(sport),
        "fr_flow_dport": wire_port(dport),
        "fr_flow_nh_id": nh,
        "fr_gen_id": gen,
        "fr_flow_vrf": 3,
    }
    r.update(extra)
    return r


def spec_key(sip: str, dip: str, sport: int, dport: int, proto: int, nh: int) -> bytes:
    """struct vr_inet_flow written from the spec's table (5.5), independently of the code."""
    return (
        bytes([2, proto, 0, 0])
        + struct.pack("!HH", sport, dport)
        + struct.pack("<I", nh)
        + socket.inet_aton(sip)
        + socket.inet_aton(dip)
    )


class SpecReader:
    """An independent reader of vr_flow_entry built from the offsets in spec 5.3-5.5."""

    def __init__(self, buf: bytes | bytearray) -> None:
        self.buf = bytes(buf)

    def field(self, index: int, off: int, fmt: str) -> int:
        return struct.unpack_from("<" + fmt, self.buf, index * 256 + off)[0]

    def entry(self, i: int) -> dict[str, object]:
        b = self.buf[i * 256 : (i + 1) * 256]
        return {
            "hentry_index": struct.unpack_from("<I", b, 8)[0],
            "bucket_index": struct.unpack_from("<I", b, 12)[0],
            "next_index": struct.unpack_from("<I", b, 16)[0],
            "hentry_flags": b[20],
            "family": b[24],
            "proto": b[25],
            "sport": struct.unpack_from("!H", b, 28)[0],
            "dport": struct.unpack_from("!H", b, 30)[0],
            "nh_id": struct.unpack_from("<I", b, 32)[0],
            "sip": socket.inet_ntoa(b[36:40]),
            "dip": socket.inet_ntoa(b[40:44]),
            "keylen": b[68],
            "gen": b[69],
            "rflow": struct.unpack_from("<i", b, 84)[0],
            "flags": struct.unpack_from("<H", b, 88)[0],
            "action": struct.unpack_from("<H", b, 92)[0],
            "vrf": struct.unpack_from("<H", b, 94)[0],
            "bytes": struct.unpack_from("<I", b, 104)[0],
            "packets": struct.unpack_from("<I", b, 108)[0],
            "bytes_oflow": struct.unpack_from("<H", b, 112)[0],
            "packets_oflow": b[114],
            "type": b[117],
        }


def make_table(entries: int = 64, oentries: int = 16) -> tuple[bytearray, FlowTable]:
    buf = bytearray((entries + oentries) * 256)
    return buf, FlowTable(buf, entries, oentries, path="/x/flow.shmem")


class Layout(SynchronousTestCase):
    def test_interfaces(self) -> None:
        _, t = make_table()
        verifyObject(IFlowTable, t)
        verifyObject(IFlowDatapath, t)

    def test_formatted_like_vr_htable_create(self) -> None:
        buf, _t = make_table(8, 4)
        r = SpecReader(buf)
        for i in range(12):
            e = r.entry(i)
            self.assertEqual(e["hentry_index"], i)
            self.assertEqual(e["next_index"], 0xFFFFFFFF)
            self.assertEqual(e["hentry_flags"], 8 if i >= 8 else 0)

    def test_entry_read_back_with_spec_offsets(self) -> None:
        buf, t = make_table()
        res = t.flow_set(req(sip="192.168.1.10", dip="8.8.8.8", sport=51000, dport=443, nh=21))
        self.assertEqual(res.errno, 0)
        e = SpecReader(buf).entry(res.index)
        self.assertEqual(e["hentry_index"], res.index)
        self.assertEqual(e["hentry_flags"], 1)
        self.assertEqual(
            (e["sip"], e["dip"], e["sport"], e["dport"]), ("192.168.1.10", "8.8.8.8", 51000, 443)
        )
        self.assertEqual((e["family"], e["proto"], e["nh_id"], e["keylen"]), (2, 6, 21, 20))
        self.assertEqual((e["flags"], e["action"], e["vrf"], e["type"]), (1, 2, 3, 2))
        self.assertEqual((e["gen"], e["rflow"]), (res.gen_id, -1))
        self.assertEqual(
            bytes(buf[res.index * 256 + 24 : res.index * 256 + 44]),
            spec_key("192.168.1.10", "8.8.8.8", 51000, 443, 6, 21),
        )

    def test_placement_follows_jhash_bucket(self) -> None:
        buf, t = make_table(64, 16)
        for port in range(1, 40):
            res = t.flow_set(req(sport=port))
            key = spec_key("10.0.0.1", "10.0.0.2", port, 80, 6, 7)
            bucket = (jhash(key) % 64) & ~3
            if res.index < 64:
                self.assertTrue(bucket <= res.index < bucket + 4, (port, res.index, bucket))
            else:
                e = SpecReader(buf).entry(res.index)
                self.assertEqual(e["bucket_index"], bucket + 3)

    def test_overflow_chain_off_fourth_entry(self) -> None:
        # one bucket only: every key lands in entries 0..3, then the overflow chain
        buf, t = make_table(4, 8)
        idx = [t.flow_set(req(sport=p)).index for p in range(1, 8)]
        self.assertEqual(sorted(idx[:4]), [0, 1, 2, 3])
        # free list hands out overflow entries lowest first, each linked at the head
        self.assertEqual(idx[4:], [4, 5, 6])
        r = SpecReader(buf)
        self.assertEqual(r.entry(3)["next_index"], 6)
        self.assertEqual(r.entry(6)["next_index"], 5)
        self.assertEqual(r.entry(5)["next_index"], 4)
        self.assertEqual(r.entry(4)["next_index"], 0xFFFFFFFF)
        for o in (4, 5, 6):
            self.assertEqual(r.entry(o)["bucket_index"], 3)
        # deleting the middle overflow entry unlinks it and frees it
        e5 = t.entry(5)
        res = t.flow_set(req(sport=e5.sport, index=5, gen=e5.gen_id, flags=0))
        self.assertEqual(res.errno, 0)
        r = SpecReader(buf)
        self.assertEqual(r.entry(6)["next_index"], 4)
        self.assertEqual(r.entry(5)["hentry_flags"], L.HENTRY_FLAG_IN_FREE_LIST)
        self.assertEqual(r.entry(5)["flags"], 0)
        # and it is reused first (LIFO free list), with a new generation
        again = t.flow_set(req(sport=100))
        self.assertEqual(again.index, 5)
        self.assertEqual(again.gen_id, (e5.gen_id + 1) & 0xFF)

    def test_full_table_gives_enospc_and_loses_nothing(self) -> None:
        buf, t = make_table(4, 4)
        made = {}
        for p in range(1, 9):
            res = t.flow_set(req(sport=p))
            self.assertEqual(res.errno, 0)
            made[p] = res.index
        before = bytes(buf)
        res = t.flow_set(req(sport=99))
        self.assertEqual(res.errno, -errno.ENOSPC)
        self.assertEqual(bytes(buf), before)
        for p, i in made.items():
            key = spec_key("10.0.0.1", "10.0.0.2", p, 80, 6, 7)
            self.assertEqual(t.lookup(key), i)
            self.assertEqual(SpecReader(buf).entry(i)["sport"], p)
        self.assertEqual(t.used_entries, 8)
        self.assertEqual(t.table_data()["ftable_used_entries"], 8)


class FlowSet(SynchronousTestCase):
    def setUp(self) -> None:
        self.buf, self.t = make_table()

    def test_gen_mismatch_ebadf(self) -> None:
        r = self.t.flow_set(req())
        bad = self.t.flow_set(req(index=r.index, gen=r.gen_id + 1, action=L.ACTION_DROP))
        self.assertEqual(bad.errno, -errno.EBADF)
        self.assertEqual(self.t.entry(r.index).action, L.ACTION_FORWARD)

    def test_key_mismatch_efault(self) -> None:
        r = self.t.flow_set(req())
        bad = self.t.flow_set(req(index=r.index, gen=r.gen_id, dport=81))
        self.assertEqual(bad.errno, -errno.EFAULT)

    def test_index_not_active_enoent(self) -> None:
        self.assertEqual(self.t.flow_set(req(index=5)).errno, -errno.ENOENT)
        self.assertEqual(self.t.flow_set(req(index=5, flags=0)).errno, -errno.ENOENT)
        self.assertEqual(self.t.flow_set(req(index=10**6)).errno, -errno.ENOENT)

    def test_duplicate_key_eexist_reports_existing(self) -> None:
        r = self.t.flow_set(req())
        dup = self.t.flow_set(req())
        self.assertEqual(dup.errno, -errno.EEXIST)
        self.assertEqual((dup.index, dup.gen_id), (r.index, r.gen_id))

    def test_bad_action_and_op_einval(self) -> None:
        self.assertEqual(self.t.flow_set(req(action=9)).errno, -errno.EINVAL)
        self.assertEqual(self.t.flow_set(dict(req(), fr_op=1)).errno, -errno.EINVAL)
        self.assertEqual(self.t.flow_set(dict(req(), fr_family=99)).errno, -errno.EINVAL)
        self.assertEqual(len(self.t), 0)

    def test_vrft_and_mirror_and_rflow_validation(self) -> None:
        self.assertEqual(
            self.t.flow_set(req(flags=L.FLAG_ACTIVE | L.FLAG_VRFT, fr_flow_dvrf=5000)).errno,
            -errno.EINVAL,
        )
        self.assertEqual(
            self.t.flow_set(
                req(flags=L.FLAG_ACTIVE | L.FLAG_MIRROR, fr_mir_id=300, fr_sec_mir_id=300)
            ).errno,
            -errno.EINVAL,
        )
        self.assertEqual(
            self.t.flow_set(req(flags=L.FLAG_ACTIVE | L.RFLOW_VALID, fr_rindex=3)).errno,
            -errno.EINVAL,
        )

    def test_forward_reverse_pair_and_update_and_delete(self) -> None:
        f = self.t.flow_set(req(action=L.ACTION_HOLD))
        self.assertEqual(self.t.entry(f.index).action, L.ACTION_HOLD)
        rv = self.t.flow_set(
            req(
                sip="10.0.0.2",
                dip="10.0.0.1",
                sport=80,
                dport=1000,
                flags=L.FLAG_ACTIVE | L.RFLOW_VALID,
                fr_rindex=f.index,
            )
        )
        self.assertEqual(rv.errno, 0)
        up = self.t.flow_set(
            req(
                index=f.index, gen=f.gen_id, flags=L.FLAG_ACTIVE | L.RFLOW_VALID, fr_rindex=rv.index
            )
        )
        self.assertEqual(up.errno, 0)
        ef, er = self.t.entry(f.index), self.t.entry(rv.index)
        self.assertEqual((ef.rflow, er.rflow), (rv.index, f.index))
        self.assertTrue(ef.flags & L.RFLOW_VALID)
        data = self.t.table_data()
        self.assertEqual(
            (data["ftable_added"], data["ftable_processed"], data["ftable_created"]), (2, 1, 1)
        )
        d = self.t.flow_set(req(index=f.index, gen=f.gen_id, flags=0, action=L.ACTION_DROP))
        self.assertEqual(d.errno, 0)
        self.assertEqual(d.flags, L.RESP_FLAG_DELETED)
        self.assertEqual(self.t.entry(f.index).flags, 0)
        self.assertEqual(self.t.lookup(spec_key("10.0.0.1", "10.0.0.2", 1000, 80, 6, 7)), -1)
        self.assertEqual(self.t.table_data()["ftable_deleted"], 1)

    def test_rflow_by_key(self) -> None:
        f = self.t.flow_set(req())
        rv = self.t.flow_set(
            req(
                sip="10.0.0.2",
                dip="10.0.0.1",
                sport=80,
                dport=1000,
                flags=L.FLAG_ACTIVE | L.RFLOW_VALID,
                fr_rflow_sip_l=wire_ip("10.0.0.1"),
                fr_rflow_dip_l=wire_ip("10.0.0.2"),
                fr_rflow_sport=wire_port(1000),
                fr_rflow_dport=wire_port(80),
                fr_rflow_nh_id=7,
            )
        )
        self.assertEqual(self.t.entry(rv.index).rflow, f.index)

    def test_dp_bits_kept_on_update(self) -> None:
        f = self.t.flow_set(req())
        off = f.index * 256 + 88
        struct.pack_into("<H", self.buf, off, L.FLAG_ACTIVE | L.FLAG_EVICT_CANDIDATE)
        up = self.t.flow_set(
            req(
                index=f.index,
                gen=f.gen_id,
                action=L.ACTION_DROP,
                flags=L.FLAG_ACTIVE | L.FLAG_EVICTED,
            )
        )
        self.assertEqual(up.errno, 0)
        self.assertEqual(self.t.entry(f.index).flags, L.FLAG_ACTIVE | L.FLAG_EVICT_CANDIDATE)

    def test_hold_on_miss_then_agent_completes(self) -> None:
        key = spec_key("1.1.1.1", "2.2.2.2", 5, 6, 17, 3)
        idx, gen = self.t.hold_on_miss(key, vrf=3)
        e = self.t.entry(idx)
        self.assertEqual((e.action, e.flags), (L.ACTION_HOLD, L.FLAG_ACTIVE | L.FLAG_NEW_FLOW))
        r = req(sip="1.1.1.1", dip="2.2.2.2", sport=5, dport=6, proto=17, nh=3, index=idx, gen=gen)
        self.assertEqual(self.t.flow_set(r).errno, -errno.EBUSY)
        self.assertTrue(self.t.take_new_flow(idx))
        self.assertEqual(self.t.flow_set(r).errno, 0)
        self.assertEqual(self.t.entry(idx).action, L.ACTION_FORWARD)
        self.assertEqual(self.t.lookup(key), idx)

    def test_hold_on_miss_counts_the_packet_that_missed(self) -> None:
        """The counters a HOLD entry is made with are those ``add_stats`` would give it,
        overflow fields included; an existing entry gets them added; NEW_FLOW is taken
        once, by a one-byte write that leaves the other flags."""
        t = self.t
        key = spec_key("1.1.1.1", "2.2.2.2", 5, 6, 17, 3)
        idx, _gen = t.hold_on_miss(key, 3, 7, 54, 1)
        self.assertEqual(t.stats(idx), (54, 1))
        self.assertEqual(t.verdict(idx).src_info, 7)
        self.assertEqual(t.hold_on_miss(key, 3, 7, 60, 1)[0], idx)  # existing: added
        self.assertEqual(t.stats(idx), (114, 2))
        big = spec_key("1.1.1.1", "2.2.2.2", 9, 6, 17, 3)
        other, _gen = t.hold_on_miss(big, 3, 7, (1 << 32) + 5, (1 << 32) + 2)
        self.assertEqual(t.stats(other), ((1 << 32) + 5, (1 << 32) + 2))
        self.assertEqual(t.entry(other).flags, L.FLAG_ACTIVE | L.FLAG_NEW_FLOW)
        self.assertTrue(t.take_new_flow(other))
        self.assertEqual(t.entry(other).flags, L.FLAG_ACTIVE)
        self.assertFalse(t.take_new_flow(other))
        self.assertFalse(t.take_new_flow(-1))
        self.assertFalse(t.take_new_flow(t.ht.total))

    def test_hold_on_miss_full_and_bad_key(self) -> None:
        buf, t = make_table(4, 0)
        keys = [spec_key("1.1.1.1", "2.2.2.2", p, 6, 17, 3) for p in range(5)]
        made = [t.hold_on_miss(k) for k in keys[:4]]
        before = bytes(buf)
        from vrtwist.shmem.flowtable import FlowTableFull

        self.assertRaises(FlowTableFull, t.hold_on_miss, keys[4])
        self.assertRaises(ValueError, t.hold_on_miss, b"short")
        self.assertEqual(bytes(buf), before)
        self.assertEqual([t.lookup(k) for k in keys[:4]], [i for i, _ in made])
        self.assertEqual(t.hold_on_miss(keys[0]), made[0])  # an existing key is returned as is

    def test_stats_overflow_fields(self) -> None:
        f = self.t.flow_set(req())
        self.t.add_stats(f.index, 0xFFFFFFFF, 0xFFFFFFFF)
        self.t.add_stats(f.index, 2, 2)
        e = SpecReader(self.buf).entry(f.index)
        self.assertEqual(
            (e["bytes"], e["bytes_oflow"], e["packets"], e["packets_oflow"]), (1, 1, 1, 1)
        )
        self.assertEqual(self.t.stats(f.index), (0x100000001, 0x100000001))

    def test_force_evict_only_dead_tcp(self) -> None:
        f = self.t.flow_set(req())
        ev = dict(req(index=f.index, gen=f.gen_id), fr_extflags=L.EXT_FLAG_FORCE_EVICT)
        self.assertEqual(self.t.flow_set(ev).errno, -errno.EINVAL)
        self.t.set_tcp_flags(f.index, L.TCP_DEAD)
        self.assertEqual(self.t.flow_set(ev).errno, 0)
        e = self.t.entry(f.index)
        self.assertEqual(e.flags & (L.FLAG_ACTIVE | L.FLAG_EVICTED), L.FLAG_ACTIVE | L.FLAG_EVICTED)
        self.assertFalse(e.hentry_flags & L.HENTRY_FLAG_VALID)
        # the slot is free: the same key creates a new flow in the same bucket
        again = self.t.flow_set(req())
        self.assertEqual(again.errno, 0)
        self.assertFalse(self.t.entry(again.index).flags & L.FLAG_EVICTED)

    def test_mark_evict_waits_for_dead_reverse(self) -> None:
        f = self.t.flow_set(req())
        rv = self.t.flow_set(
            req(
                sip="10.0.0.2",
                dip="10.0.0.1",
                sport=80,
                dport=1000,
                flags=L.FLAG_ACTIVE | L.RFLOW_VALID,
                fr_rindex=f.index,
            )
        )
        self.t.flow_set(
            req(
                index=f.index, gen=f.gen_id, flags=L.FLAG_ACTIVE | L.RFLOW_VALID, fr_rindex=rv.index
            )
        )
        self.assertFalse(self.t.mark_evict(f.index))
        self.t.set_tcp_flags(rv.index, L.TCP_DEAD)
        self.assertTrue(self.t.mark_evict(f.index))
        self.assertTrue(self.t.entry(f.index).flags & L.FLAG_EVICTED)
        self.assertTrue(self.t.entry(rv.index).flags & L.FLAG_EVICTED)
        self.assertEqual(len(self.t), 0)

    def test_ipv6_key(self) -> None:
        sip = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        dip = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
        r = {
            "fr_op": 0,
            "fr_index": -1,
            "fr_action": 2,
            "fr_flags": 1,
            "fr_family": 10,
            "fr_flow_sip_u": int.from_bytes(sip[:8], "little"),
            "fr_flow_sip_l": int.from_bytes(sip[8:], "little"),
            "fr_flow_dip_u": int.from_bytes(dip[:8], "little"),
            "fr_flow_dip_l": int.from_bytes(dip[8:], "little"),
            "fr_flow_proto": 17,
            "fr_flow_sport": wire_port(53),
            "fr_flow_dport": wire_port(5353),
            "fr_flow_nh_id": 4,
        }
        res = self.t.flow_set(r)
        self.assertEqual(res.errno, 0)
        e = self.t.entry(res.index)
        self.assertEqual(
            (e.sip, e.dip, e.sport, e.dport, e.key_len, e.type),
            ("2001:db8::1", "2001:db8::2", 53, 5353, 44, 3),
        )
        raw = bytes(self.buf[res.index * 256 + 24 : res.index * 256 + 68])
        self.assertEqual(raw[12:28] + raw[28:44], sip + dip)

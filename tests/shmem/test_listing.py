"""The text formats of flow -l and the bridge dump, and --match parsing."""

from __future__ import annotations

import io
import os
import shutil
import socket
import tempfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.shmem import layout as L
from vrtwist.shmem.entries import BridgeEntry, FlowEntry, parse_flow_entry
from vrtwist.shmem.flowtable import FlowTable
from vrtwist.shmem.htable import create_file
from vrtwist.shmem.listing import (
    FlowTableView,
    MatchError,
    format_bridge_entry,
    format_flow,
    parse_match,
    write_flow_table,
)


def entry(**kw: object) -> FlowEntry:
    base = dict(
        index=12,
        hentry_index=12,
        bucket_index=0,
        next_index=0xFFFFFFFF,
        hentry_flags=1,
        ttl=0,
        qos_id=0,
        family=2,
        proto=6,
        sport=1000,
        dport=80,
        nh_id=7,
        sip="10.0.0.1",
        dip="10.0.0.2",
        key_len=20,
        gen_id=1,
        tcp_flags=L.TCP_SYN | L.TCP_ESTABLISHED,
        tcp_seq=0,
        rflow=340,
        flags=L.FLAG_ACTIVE | L.RFLOW_VALID,
        flags1=0,
        action=L.ACTION_FORWARD,
        vrf=3,
        dvrf=0,
        mirror_id=255,
        sec_mirror_id=255,
        src_nh_index=0,
        bytes=0,
        packets=0,
        bytes_oflow=0,
        packets_oflow=0,
        ecmp_nh_index=-1,
        drop_reason=0,
        type=2,
        udp_src_port=55000,
        src_info=0,
    )
    base.update(kw)
    return FlowEntry(**base)  # type: ignore[arg-type]


class FlowFormat(SynchronousTestCase):
    def test_forward_tcp_block(self) -> None:
        # worked by hand from flow.c's printf calls: the 70-column counter wraps
        # after " Stats:", and " TTL" is never counted
        expect = (
            "       12<=>340          10.0.0.1:1000"
            + " " * 33
            + "    "
            + "  6 (3)\n"
            + " " * 25
            + "10.0.0.2:80   \n"
            + "(Gen: 1, K(nh):7, Action:F, Flags:, TCP:SE, QOS:0, S(nh):0,  Stats:0/0, \n"
            + " SPort 55000, TTL 0, Sinfo 0.0.0.0)"
        )
        self.assertEqual(format_flow(entry()), expect)

    def test_drop_nat_vrft_ecmp(self) -> None:
        e = entry(
            rflow=-1,
            proto=17,
            action=L.ACTION_DROP,
            drop_reason=0x15,
            flags=L.FLAG_ACTIVE | L.FLAG_VRFT | L.FLAG_EVICT_CANDIDATE,
            dvrf=9,
            ecmp_nh_index=2,
            src_info=0x0100000A,
        )
        text = format_flow(e)
        self.assertTrue(text.startswith("       12" + " " * 12 + "    10.0.0.1:1000"))
        self.assertIn(" 17 (3->9)\n", text)
        self.assertIn("Action:D(Policy), Flags:Ec, E:2, QOS:0", text)
        self.assertTrue(text.endswith("Sinfo 10.0.0.1)"))
        nat = format_flow(
            entry(action=L.ACTION_NAT, flags=L.FLAG_ACTIVE | L.FLAG_SNAT | L.FLAG_DPAT)
        )
        self.assertIn("Action:N(SPd), ", nat)

    def test_ipv6_columns(self) -> None:
        e = entry(type=3, family=10, sip="2001:db8::1", dip="2001:db8::2", rflow=-1)
        lines = format_flow(e).split("\n")
        self.assertEqual(lines[0][25 : 25 + 21], "2001:db8::1:1000     ")
        self.assertEqual(lines[1], " " * 25 + "2001:db8::2:80       ")

    def test_parse_round_trip_of_written_entry(self) -> None:
        buf = bytearray(80 * 256)
        t = FlowTable(buf, 64, 16)
        r = t.flow_set(
            {
                "fr_op": 0,
                "fr_index": -1,
                "fr_action": 2,
                "fr_flags": 1,
                "fr_family": 2,
                "fr_flow_sip_l": int.from_bytes(socket.inet_aton("1.2.3.4"), "little"),
                "fr_flow_dip_l": int.from_bytes(socket.inet_aton("5.6.7.8"), "little"),
                "fr_flow_proto": 6,
                "fr_flow_sport": socket.htons(1),
                "fr_flow_dport": socket.htons(2),
                "fr_flow_nh_id": 3,
            }
        )
        e = parse_flow_entry(buf[r.index * 256 : r.index * 256 + 256], r.index)
        self.assertEqual(
            (e.sip, e.dip, e.sport, e.dport, e.nh_id, e.action), ("1.2.3.4", "5.6.7.8", 1, 2, 3, 2)
        )


class Listing(SynchronousTestCase):
    def test_whole_listing_with_overflow_chain(self) -> None:
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "flow.shmem")
        m = create_file(path, 12 * 256)
        self.addCleanup(m.close)
        t = FlowTable(m, 4, 8, path=path)
        for p in range(1, 7):
            t.flow_set(
                {
                    "fr_op": 0,
                    "fr_index": -1,
                    "fr_action": 2,
                    "fr_flags": 1,
                    "fr_family": 2,
                    "fr_flow_sip_l": 1,
                    "fr_flow_dip_l": 2,
                    "fr_flow_proto": 17,
                    "fr_flow_sport": socket.htons(p),
                    "fr_flow_nh_id": 1,
                }
            )
        view = FlowTableView(path)
        self.addCleanup(view.close)
        out = io.StringIO()
        self.assertEqual(write_flow_table(out, view, t.table_data()), 6)
        text = out.getvalue()
        self.assertTrue(text.startswith("Flow table(size 3072, entries 12)\n\n"))
        self.assertIn(
            "Entries: Created 0 Added 6 Deleted 0 Changed 0Processed 0 Used Overflow entries 2\n",
            text,
        )
        self.assertIn("(Created Flows/CPU: 0)(oflows 0)\n\n", text)
        # entry 3 is the 4th of the only bucket: its chain lists overflow 5 then 4
        self.assertIn("Sinfo 0.0.0.0)\n     Oflow entries:\n\t 5 4\n\n", text)
        only = io.StringIO()
        self.assertEqual(write_flow_table(only, view, t.table_data(), parse_match("1.0.0.0:3")), 1)
        self.assertIn("Listing flows matching ([1.0.0.0]:3)\n\n", only.getvalue())


class Match(SynchronousTestCase):
    def test_parse(self) -> None:
        m = parse_match("10.204.217.10:56910,169.254.0.3:22 & vrf 0 & proto tcp")
        self.assertEqual(
            (m.family, m.ends, m.vrf, m.proto),
            (2, [("10.204.217.10", 56910), ("169.254.0.3", 22)], 0, 6),
        )
        m6 = parse_match("[fe80::225:90ff:fec3:afa]:22")
        self.assertEqual((m6.family, m6.ends), (10, [("fe80::225:90ff:fec3:afa", 22)]))
        self.assertEqual(parse_match("1.1.1.1").ends, [("1.1.1.1", -1)])
        self.assertEqual(parse_match("proto icmp6").proto, 58)

    def test_errors(self) -> None:
        for bad in (
            "1.1.1.1 & proto gre",
            "[fe80::1:22",
            "1.1.1.1,fe80::1",
            "1.1.1.1,2.2.2.2,3.3.3.3",
            "999.1.1.1:2",
            "1.1.1.1:x",
            "vrf x",
        ):
            self.assertRaises(MatchError, parse_match, bad)

    def test_matches_either_direction(self) -> None:
        m = parse_match("10.0.0.2:80")
        self.assertTrue(m.matches(entry()))
        self.assertFalse(parse_match("10.0.0.2:81").matches(entry()))
        self.assertTrue(parse_match("10.0.0.1:1000,10.0.0.2:80").matches(entry()))
        self.assertTrue(parse_match("10.0.0.2:80,10.0.0.1:1000").matches(entry()))
        self.assertFalse(parse_match("10.0.0.1:1000,10.0.0.3:80").matches(entry()))
        self.assertFalse(parse_match("10.0.0.1 & vrf 4").matches(entry()))


class BridgeFormat(SynchronousTestCase):
    def test_row(self) -> None:
        e = BridgeEntry(
            17,
            17,
            0,
            0xFFFFFFFF,
            1,
            bytes([0, 0x5E, 0, 1, 0, 0xA]),
            2,
            5,
            100,
            12,
            L.BE_VALID | L.BE_LABEL_VALID | L.BE_FLOOD_DHCP,
        )
        self.assertEqual(
            format_bridge_entry(e),
            "17          0:5e:0:1:0:a               LDf"
            + " " * 11
            + "       100"
            + " " * 6
            + "     12"
            + " " * 4
            + "           5\n",
        )
        no_label = BridgeEntry(3, 3, 0, 0, 1, bytes(6), 0, 0, 0, -1, L.BE_VALID)
        self.assertIn("         -", format_bridge_entry(no_label))


class Evicted(SynchronousTestCase):
    def test_show_evicted(self) -> None:
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "flow.shmem")
        m = create_file(path, 80 * 256)
        self.addCleanup(m.close)
        t = FlowTable(m, 64, 16, path=path)
        req = {
            "fr_index": -1,
            "fr_action": 2,
            "fr_flags": 1,
            "fr_family": 2,
            "fr_flow_proto": 6,
            "fr_flow_sip_l": 1,
            "fr_flow_dip_l": 2,
            "fr_flow_sport": socket.htons(7),
            "fr_flow_nh_id": 1,
        }
        r = t.flow_set(req)
        keep = t.flow_set(dict(req, fr_flow_sport=socket.htons(8)))
        t.set_tcp_flags(r.index, L.TCP_DEAD)
        ev = t.flow_set(
            dict(req, fr_index=r.index, fr_gen_id=r.gen_id, fr_extflags=L.EXT_FLAG_FORCE_EVICT)
        )
        self.assertEqual(ev.errno, 0)
        view = FlowTableView(path)
        self.addCleanup(view.close)
        out = io.StringIO()
        self.assertEqual(write_flow_table(out, view, t.table_data()), 1)
        self.assertIn("%9d" % keep.index, out.getvalue())
        out = io.StringIO()
        self.assertEqual(write_flow_table(out, view, t.table_data(), show_evicted=True), 2)
        self.assertIn("Action:D(Unknown), Flags:E, TCP:", out.getvalue())


class _CountingList(list[Any]):
    """A list that counts index reads: the walk's operation count."""

    reads = 0

    def __getitem__(self, i: Any) -> Any:
        _CountingList.reads += 1
        return super().__getitem__(i)


class _CountingView(FlowTableView):
    def next_indices(self) -> list[int]:
        return _CountingList(super().next_indices())


class LongChains(SynchronousTestCase):
    """``flow -l`` over one long overflow chain is linear, and a looped chain ends."""

    def table(self, n: int, links: dict[int, int], active: list[int]) -> str:
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "flow.shmem")
        m = create_file(path, n * L.FLOW_ENTRY_SIZE)
        words = memoryview(m).cast("I")
        for i in range(n):
            words[(i * L.FLOW_ENTRY_SIZE + L.OFF_HENTRY_NEXT_INDEX) // 4] = links.get(
                i, L.INVALID_INDEX
            )
        words.release()
        raw = bytearray(L.FLOW_ENTRY_SIZE)
        for i in active:
            off = i * L.FLOW_ENTRY_SIZE
            raw[:] = m[off : off + L.FLOW_ENTRY_SIZE]
            raw[L.OFF_FE_FLAGS] = L.FLAG_ACTIVE
            m[off : off + L.FLOW_ENTRY_SIZE] = bytes(raw)
        m.flush()
        m.close()
        return path

    def listing(self, path: str) -> tuple[str, int, int]:
        view = _CountingView(path)
        self.addCleanup(view.close)
        data = {
            k: 0
            for k in (
                "ftable_created", "ftable_added", "ftable_deleted", "ftable_changed",
                "ftable_processed", "ftable_oflow_entries", "ftable_hold_oflows",
            )
        }  # fmt: skip
        out = io.StringIO()
        _CountingList.reads = 0
        count = write_flow_table(out, view, data)
        return out.getvalue(), count, _CountingList.reads

    def test_long_chain_is_linear(self) -> None:
        from vrtwist.shmem.listing import CHAIN_SHOWN

        n = 32768
        # entry 0 heads a chain through every other entry; 0 and 7 are active flows
        path = self.table(n, {i: i + 1 for i in range(n - 1)}, [0, 7])
        text, count, reads = self.listing(path)
        self.assertEqual(count, 2)  # both flows still listed
        # each entry is read a bounded number of times: the head's one full walk plus
        # at most CHAIN_SHOWN steps after each member, never the rest of the chain
        self.assertLessEqual(reads, n * (CHAIN_SHOWN + 3))
        # the head lists the whole chain once, in order
        head = text.index("Oflow entries:")
        numbers = text[head : text.index("\n\n", head)].split()[2:]
        self.assertEqual(numbers, [str(i) for i in range(1, n)])
        # and the output stays linear in the table, not quadratic in the chain
        self.assertLess(len(text), n * CHAIN_SHOWN * 8)

    def test_short_chains_print_as_the_real_tool(self) -> None:
        # 3 -> 5 -> 4: the head lists both, 5 lists 4 (as utils/flow.c does)
        path = self.table(12, {3: 5, 5: 4}, [3, 4, 5])
        text, count, _ = self.listing(path)
        self.assertEqual(count, 3)
        self.assertIn("Oflow entries:\n\t 5 4\n\n", text)
        self.assertIn("Oflow entries:\n\t 4\n\n", text)
        self.assertNotIn("...", text)

    def test_corrupt_chain_loop_terminates(self) -> None:
        from vrtwist.shmem.listing import CHAIN_SHOWN

        n = 4096
        # a pure loop (no head) of every entry, plus a head entering a second loop
        links = {i: (i + 1) % 2048 for i in range(2048)}
        links.update({2048: 2049, 2049: 2050, 2050: 2049})
        path = self.table(n, links, [1, 2048])
        text, count, reads = self.listing(path)
        self.assertEqual(count, 2)
        self.assertLessEqual(reads, n * (CHAIN_SHOWN + 3))
        self.assertIn("Oflow entries:\n\t 2049 2050 ...\n\n", text)

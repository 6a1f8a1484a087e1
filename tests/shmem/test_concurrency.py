"""A reader process mapping flow.shmem read-only never sees a torn entry while the owner
adds and deletes 100,000 flows."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.shmem import layout as L
from vrtwist.shmem.flowtable import FlowTable
from vrtwist.shmem.htable import create_file

# The reader knows only the spec: offsets, ACTIVE at 88, gen at 69.  Every flow the
# owner writes satisfies nh_id == sport * 65536 + dport and vrf == sport % 4096 and
# sip/dip derived from sport; a torn copy would break one of these.
READER = textwrap.dedent(
    r"""
    import mmap, os, socket, struct, sys
    path, n = sys.argv[1], int(sys.argv[2])
    fd = os.open(path, os.O_RDONLY)
    m = mmap.mmap(fd, n * 256, mmap.MAP_SHARED, mmap.PROT_READ)
    print("ready", flush=True)
    seen = torn = 0
    stop = os.path.join(os.path.dirname(path), "stop")
    while not os.path.exists(stop):
        for i in range(n):
            off = i * 256
            f1 = struct.unpack_from("<H", m, off + 88)[0]
            if not f1 & 1:
                continue
            g1 = m[off + 69]
            raw = m[off:off + 256]
            f2 = struct.unpack_from("<H", m, off + 88)[0]
            g2 = m[off + 69]
            if f1 != f2 or g1 != g2 or struct.unpack_from("<H", raw, 88)[0] != f1 or raw[69] != g1:
                continue  # changed under us: a careful reader retries or skips
            sport, dport = struct.unpack_from("!HH", raw, 28)
            nh = struct.unpack_from("<I", raw, 32)[0]
            sip = socket.inet_ntoa(raw[36:40])
            vrf = struct.unpack_from("<H", raw, 94)[0]
            ok = (raw[24] == 2 and raw[25] == 17 and raw[68] == 20
                  and nh == sport * 65536 + dport and vrf == sport % 4096
                  and sip == "10.%d.%d.1" % (sport >> 8, sport & 255)
                  and struct.unpack_from("<I", raw, 8)[0] == i
                  and raw[117] == 2)
            seen += 1
            if not ok:
                torn += 1
    print(seen, torn, flush=True)
    """
)


def wire_ip(a: str) -> int:
    return int.from_bytes(socket.inet_aton(a), "little")


class TornEntries(SynchronousTestCase):
    def test_reader_never_sees_torn_entry(self) -> None:
        d = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(d, ignore_errors=True))
        entries, oentries = 4096, 1024
        path = os.path.join(d, "flow.shmem")
        m = create_file(path, (entries + oentries) * L.FLOW_ENTRY_SIZE)
        self.addCleanup(m.close)
        table = FlowTable(m, entries, oentries, path=path)
        proc = subprocess.Popen(
            [sys.executable, "-c", READER, path, str(entries + oentries)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(proc.kill)
        assert proc.stdout is not None
        self.assertEqual(proc.stdout.readline().strip(), "ready")
        live: list[tuple[int, int, int]] = []
        added = deleted = 0
        total = 100_000
        for n in range(total):
            sport, dport = (n % 60000) + 1, (n // 60000) + 1
            r = table.flow_set(
                {
                    "fr_op": 0,
                    "fr_index": -1,
                    "fr_action": 2,
                    "fr_flags": 1,
                    "fr_family": 2,
                    "fr_flow_sip_l": wire_ip("10.%d.%d.1" % (sport >> 8, sport & 255)),
                    "fr_flow_dip_l": wire_ip("10.9.9.9"),
                    "fr_flow_proto": 17,
                    "fr_flow_sport": socket.htons(sport),
                    "fr_flow_dport": socket.htons(dport),
                    "fr_flow_nh_id": sport * 65536 + dport,
                    "fr_flow_vrf": sport % 4096,
                }
            )
            self.assertEqual(r.errno, 0)
            added += 1
            live.append((r.index, r.gen_id, n))
            if len(live) > 2000:
                idx, gen, k = live.pop(0)
                sp, dp = (k % 60000) + 1, (k // 60000) + 1
                dr = table.flow_set(
                    {
                        "fr_op": 0,
                        "fr_index": idx,
                        "fr_action": 0,
                        "fr_flags": 0,
                        "fr_family": 2,
                        "fr_flow_sip_l": wire_ip("10.%d.%d.1" % (sp >> 8, sp & 255)),
                        "fr_flow_dip_l": wire_ip("10.9.9.9"),
                        "fr_flow_proto": 17,
                        "fr_flow_sport": socket.htons(sp),
                        "fr_flow_dport": socket.htons(dp),
                        "fr_flow_nh_id": sp * 65536 + dp,
                        "fr_gen_id": gen,
                    }
                )
                self.assertEqual(dr.errno, 0)
                deleted += 1
        with open(os.path.join(d, "stop"), "w"):
            pass
        out, _ = proc.communicate(timeout=60)
        seen, torn = (int(x) for x in out.split())
        self.assertEqual(torn, 0)
        self.assertGreater(seen, 0)
        self.assertEqual((added, deleted, len(table)), (total, total - 2000, 2000))

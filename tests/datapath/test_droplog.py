"""The packet drop log: per-core rings, paging over ksync, and ``dropstats --log``'s format."""

from __future__ import annotations

import contextlib
import io
import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.cli import dropstats
from vrtwist.datapath import constants as C
from vrtwist.datapath.dispatcher import Datapath, make
from vrtwist.datapath.droplog import (
    PAGE,
    RECORD,
    DropLog,
    DropLogError,
    DropRecord,
    unpack_records,
)
from vrtwist.datapath.tables import DatapathConfig
from vrtwist.sandesh import decode, encode

DROP = DropRecord(
    timestamp=1_700_000_000, vp_type=2, drop_reason=11, vif_idx=3, nh_id=21,
    src=socket.inet_aton("10.1.1.3"), dst=socket.inet_aton("10.1.1.4"), sport=5000,
    dport=53, pkt_len=4, pkt_header=b"\x45\x00\x00\x54",
)  # fmt: skip


class RingTests(SynchronousTestCase):
    def test_layout_is_the_c_struct(self) -> None:
        self.assertEqual(RECORD.size, 168)
        raw = DROP.pack()
        self.assertEqual(raw[8], 2)  # vp_type
        self.assertEqual(raw[10:12], (11).to_bytes(2, "little"))  # drop_reason
        self.assertEqual(raw[20:24], socket.inet_aton("10.1.1.3"))  # src, network order
        self.assertEqual(raw[52:54], (5000).to_bytes(2, "little"))  # sport
        self.assertEqual(raw[66:70], b"\x45\x00\x00\x54")  # pkt_header
        (back,) = unpack_records(raw)
        self.assertEqual(back.pack(), raw)
        self.assertEqual((back.src[:4], back.sport, back.pkt_header[:4]),
                         (DROP.src, 5000, DROP.pkt_header))  # fmt: skip

    def test_ring_overwrites_oldest_and_pages(self) -> None:
        log = DropLog(cores=2, bufsz=25)
        for i in range(27):
            log.record(1, DropRecord(timestamp=i + 1))
        first = list(unpack_records(log.page(1, 0)))
        self.assertEqual(len(first), PAGE)
        # 27 drops in a ring of 25: slots 0 and 1 hold the 26th and 27th
        self.assertEqual([r.timestamp for r in first[:3]], [26, 27, 3])
        rest = list(unpack_records(log.page(1, 20)))
        self.assertEqual([r.timestamp for r in rest], [21, 22, 23, 24, 25])
        self.assertEqual(log.page(1, 25), b"")
        self.assertEqual({r.timestamp for r in unpack_records(log.page(0, 0))}, {0})
        log.clear()
        self.assertEqual({r.timestamp for r in unpack_records(log.page(1, 0))}, {0})

    def test_partial_record_is_refused(self) -> None:
        self.assertRaises(DropLogError, list, unpack_records(DROP.pack()[:-1]))


class OverKsyncTests(SynchronousTestCase):
    def get(self, dp: Datapath, core: int, index: int) -> list[Any]:
        reply = dp.handle(make("vr_pkt_drop_log_req", {"h_op": C.OP_GET, "vdl_core": core,
                                                        "vdl_log_idx": index}))  # fmt: skip
        return decode(b"".join(encode(m) for m in reply[0]))

    def test_get_pages_and_errors(self) -> None:
        dp = Datapath(DatapathConfig(cores=2))
        dp.drop_log.record(1, DROP)
        resp, log = self.get(dp, 2, 0)
        self.assertEqual(resp.resp_code, 0)
        self.assertEqual((log.vdl_max_num_cores, log.vdl_pkt_droplog_max_bufsz), (2, 200))
        self.assertEqual((log.vdl_pkt_droplog_en, log.vdl_pkt_droplog_sysctl_en), (1, 1))
        records = list(unpack_records(bytes(b & 0xFF for b in log.vdl_pkt_droplog_arr)))
        self.assertEqual(records[0].pack(), DROP.pack())
        self.assertEqual(len(records), PAGE)
        (bad,) = self.get(dp, 3, 0)
        self.assertEqual(bad.resp_code, -22)
        # vrouter_ops RESET empties the log, and nothing else about the reply changes
        dp.handle(make("vrouter_ops", {"h_op": C.OP_RESET}))
        _, log = self.get(dp, 2, 0)
        self.assertEqual(log.vdl_pkt_droplog_arr[:8], [0] * 8)

    def test_format_of_one_entry(self) -> None:
        text = dropstats.format_drop_record(7, DROP)
        self.assertTrue(text.startswith("sl no: 7  Epoch Time: 1700000000 Local Time: "))
        self.assertIn(
            " Packet Type: 2  Drop reason: VP_DROP_FLOW_ACTION_DROP  Vif idx: 3  Nexthop id: 21"
            "  Src IP: 10.1.1.3  Dst IP: 10.1.1.4  Source port: 5000  Dest port: 53  file: NULL"
            "  line no: 0  Packet Length: 4  Packet Data: 45  00  00  54  \n\n",
            text,
        )

    def test_cli_disabled_log(self) -> None:
        dp = Datapath()
        dp.ops["vo_pkt_droplog_en"] = 0

        class Channel:
            def request(self, msg: Any) -> Any:
                reply = dp.handle(msg)[0]

                class R:
                    objects = reply[1:]

                return R()

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(dropstats._drop_log(Channel(), 0), 0)
        self.assertIn("Packet Drop Log sysctl is not enabled or misconfigured", out.getvalue())

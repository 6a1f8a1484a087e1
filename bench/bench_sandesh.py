"""Sandesh codec benchmark: vrtwist's codec vs thriftpy2's Cython binary protocol.

For vr_route_req, vr_interface_req, vr_flow_req and vr_response, measure encode+decode
round trips per second of

* vrtwist.sandesh (encode -> bytes -> decode), and
* thriftpy2 TCyBinaryProtocol on TCyMemoryBuffer writing and reading the very same
  thriftpy2 struct (an equivalent struct: same fields, same order; plain Thrift wire
  format, so no name prefix and signed types for u16/u32/u64),

side by side in one run, and print the ratio. The two alternate in slices of about 20 ms
(so both see the same load on a shared machine), timed in CPU time of this thread; rates
and the ratio are medians over the slices.

Every round trip takes the next message of a pool of 1024 (``--pool``) with varied field
values: each field the sample sets gets a random value in the range both codecs accept
(cybin writes Thrift's signed types, so unsigned fields stay below 2**(bits-1) and bytes
below 0x80), strings random characters of the sample's length, lists random elements
with the sample's length; fields the sample leaves zero stay zero, as in real requests.
Both codecs see the same messages in the same order. Nothing is cached between round
trips except what the codec learns about layouts.

    python bench/bench_sandesh.py [--seconds 3] [--rounds 400] [--split]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from thriftpy2.protocol.cybin import TCyBinaryProtocol  # type: ignore[attr-defined]
from thriftpy2.transport.memory import TCyMemoryBuffer  # type: ignore[attr-defined]

from vrtwist.sandesh import (
    ADD,
    FLOW_SET,
    RESPONSE,
    SPECS_BY_NAME,
    decode,
    encode,
    ip_to_u64_pair,
    ipv4_to_int,
    mac_to_list,
    port_to_int,
    schema,
)
from vrtwist.sandesh.constants import AF_INET, VIF_TYPE_VIRTUAL


def samples() -> dict[str, Any]:
    sip_u, sip_l = ip_to_u64_pair("10.1.1.3")
    dip_u, dip_l = ip_to_u64_pair("10.1.2.4")
    return {
        "vr_route_req": schema.vr_route_req(
            h_op=ADD,
            rtr_vrf_id=2,
            rtr_family=AF_INET,
            rtr_prefix=[10, 1, 1, 0],
            rtr_prefix_len=24,
            rtr_label_flags=1,
            rtr_label=27,
            rtr_nh_id=12,
            rtr_marker=[],
            rtr_mac=mac_to_list("02:00:00:00:00:01"),
            rtr_replace_plen=16,
        ),
        "vr_interface_req": schema.vr_interface_req(
            h_op=ADD,
            vifr_type=VIF_TYPE_VIRTUAL,
            vifr_flags=0x1C1,
            vifr_vrf=2,
            vifr_idx=5,
            vifr_os_idx=17,
            vifr_mtu=1514,
            vifr_name="tapd4c7a6b2-1f",
            vifr_ibytes=123456789,
            vifr_ipackets=98765,
            vifr_obytes=23456789,
            vifr_opackets=8765,
            vifr_mac=mac_to_list("02:54:47:26:32:1f"),  # < 0x80: cybin bytes are signed
            vifr_ip=ipv4_to_int("10.1.1.3") & 0x7FFFFFFF,  # keep it positive for cybin's i32
            vifr_nh_id=21,
            vifr_queue_ierrors_to_lcore=[0, 0],
            vifr_hw_queues=[0, 1],
            vifr_fat_flow_protocol_port=[6 << 16 | 80],
        ),
        "vr_flow_req": schema.vr_flow_req(
            fr_op=FLOW_SET,
            fr_index=-1,
            fr_action=2,
            fr_flags=0x1001,
            fr_rindex=4242,
            fr_family=AF_INET,
            fr_flow_sip_u=sip_u,
            fr_flow_sip_l=sip_l,
            fr_flow_dip_u=dip_u,
            fr_flow_dip_l=dip_l,
            fr_flow_sport=port_to_int(33000) & 0x7FFF,
            fr_flow_dport=port_to_int(80) & 0x7FFF,
            fr_flow_proto=6,
            fr_flow_vrf=2,
            fr_flow_dvrf=2,
            fr_flow_nh_id=21,
            fr_src_nh_index=21,
            fr_gen_id=3,
            fr_rflow_sip_l=dip_l,
            fr_rflow_dip_l=sip_l,
            fr_rflow_nh_id=12,
            fr_rflow_sport=port_to_int(80) & 0x7FFF,
            fr_rflow_dport=port_to_int(33000) & 0x7FFF,
            fr_ttl=64,
        ),
        "vr_response": schema.vr_response(h_op=RESPONSE, resp_code=-2),
    }


#: Largest value of each Sandesh integer type that both codecs accept (cybin: signed).
_HI = {3: 0x7F, 6: 0x7FFF, 19: 0x7FFF, 8: 0x7FFFFFFF, 20: 0x7FFFFFFF, 10: 2**63 - 1, 9: 2**63 - 1}
_LO = {6: -0x8000, 8: -0x80000000, 10: -(2**63)}
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"


def varied(sample: Any, n: int, rnd: random.Random) -> list[Any]:
    """``n`` messages shaped like ``sample`` (same string/list lengths), values varied."""
    spec = SPECS_BY_NAME[type(sample).__name__]
    out = []
    for _ in range(n):
        kw: dict[str, Any] = {}
        for f in spec.fields:
            v = getattr(sample, f.name)
            if f.wire == 11:
                kw[f.name] = "".join(rnd.choice(_CHARS) for _ in v)
            elif f.wire == 15:
                kw[f.name] = [rnd.randint(_LO.get(f.elem, 0), _HI[f.elem]) for _ in v]
            elif v:
                kw[f.name] = rnd.randint(_LO.get(f.wire, 0), _HI[f.wire])
        out.append(spec.cls(**kw))
    return out


def pools(size: int) -> dict[str, list[Any]]:
    rnd = random.Random(2)
    return {name: varied(msg, size, rnd) for name, msg in samples().items()}


def ours(msgs: list[Any]) -> Callable[[], Any]:
    it = itertools.cycle(msgs)

    def rt() -> Any:
        return decode(encode(next(it)))

    return rt


def cybin(msgs: list[Any]) -> Callable[[], Any]:
    it = itertools.cycle(msgs)
    cls = type(msgs[0])
    new = object.__new__

    def rt() -> Any:
        wbuf = TCyMemoryBuffer()
        TCyBinaryProtocol(wbuf).write_struct(next(it))
        rbuf = TCyMemoryBuffer(wbuf.getvalue())
        obj = new(cls)
        TCyBinaryProtocol(rbuf).read_struct(obj)
        return obj

    return rt


def ours_encode(msgs: list[Any]) -> Callable[[], Any]:
    it = itertools.cycle(msgs)
    return lambda: encode(next(it))


def cybin_encode(msgs: list[Any]) -> Callable[[], Any]:
    it = itertools.cycle(msgs)

    def enc() -> bytes:
        buf = TCyMemoryBuffer()
        TCyBinaryProtocol(buf).write_struct(next(it))
        return buf.getvalue()  # type: ignore[no-any-return]

    return enc


def ours_decode(msgs: list[Any]) -> Callable[[], Any]:
    it = itertools.cycle([encode(m) for m in msgs])
    return lambda: decode(next(it))


def cybin_decode(msgs: list[Any]) -> Callable[[], Any]:
    datas = []
    for m in msgs:
        w = TCyMemoryBuffer()
        TCyBinaryProtocol(w).write_struct(m)
        datas.append(w.getvalue())
    it = itertools.cycle(datas)
    cls = type(msgs[0])
    new = object.__new__

    def dec() -> Any:
        obj = new(cls)
        TCyBinaryProtocol(TCyMemoryBuffer(next(it))).read_struct(obj)
        return obj

    return dec


def timed(fn: Callable[[], Any], n: int) -> float:
    """CPU seconds this thread spent on n calls (wall time would count other tenants' load)."""
    t0 = time.thread_time()
    for _ in range(n):
        fn()
    return time.thread_time() - t0


def compare(
    fa: Callable[[], Any], fb: Callable[[], Any], seconds: float, rounds: int
) -> tuple[float, float, float]:
    """Rates of fa and fb and their ratio, measured in alternating short slices.

    The machine is shared, so load changes from one second to the next; alternating
    slices of about 20 ms each make both sides see the same load. Returns the median
    rate of each and the median of the per-slice-pair ratios.
    """
    n = 50
    while timed(fa, n) < 0.02:
        n *= 2
    ra: list[float] = []
    rb: list[float] = []
    ratios: list[float] = []
    deadline = time.perf_counter() + seconds
    for i in range(rounds):
        if i >= 5 and time.perf_counter() > deadline:
            break
        ta = timed(fa, n)
        tb = timed(fb, n)
        ra.append(n / ta)
        rb.append(n / tb)
        ratios.append(tb / ta)
    return statistics.median(ra), statistics.median(rb), statistics.median(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="time per message type")
    ap.add_argument("--rounds", type=int, default=400, help="max slice pairs per message type")
    ap.add_argument("--pool", type=int, default=1024, help="distinct messages per type")
    ap.add_argument("--split", action="store_true", help="also time encode and decode apart")
    args = ap.parse_args()

    # Sanity: both round trips reproduce every message. Checked on separate copies:
    # comparing reads the instance __dict__, which makes CPython 3.11 store that object's
    # attributes in a real dict from then on (slower attribute reads); the timed messages
    # stay as freshly constructed ones, which is how callers build requests.
    for name, msgs in pools(args.pool).items():
        round_a, round_b = ours(msgs), cybin(msgs)
        for msg in msgs:
            assert round_a() == [msg], name
            back = round_b()
            assert all(getattr(back, k) == v for k, v in vars(msg).items()), name
        assert len({encode(m) for m in msgs}) > len(msgs) // 2, name  # really varied
    timed_pools = pools(args.pool)

    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    print("%-18s %6s %14s %14s %7s" % ("message", "bytes", "vrtwist rt/s", "cybin rt/s", "ratio"))
    ratios = []
    for name, msgs in timed_pools.items():
        ra, rb, ratio = compare(ours(msgs), cybin(msgs), args.seconds, args.rounds)
        ratios.append(ratio)
        print("%-18s %6d %14.0f %14.0f %6.2fx" % (name, len(encode(msgs[0])), ra, rb, ratio))
    print("geometric mean ratio: %.2fx" % statistics.geometric_mean(ratios))
    if args.split:
        print(
            "%-18s %10s %10s %7s %10s %10s %7s"
            % ("", "enc us", "cybin", "ratio", "dec us", "cybin", "ratio")
        )
        for name, msgs in timed_pools.items():
            ea, eb, er = compare(
                ours_encode(msgs), cybin_encode(msgs), args.seconds / 2, args.rounds
            )
            da, db, dr = compare(
                ours_decode(msgs), cybin_decode(msgs), args.seconds / 2, args.rounds
            )
            print(
                "%-18s %10.2f %10.2f %6.2fx %10.2f %10.2f %6.2fx"
                % (name, 1e6 / ea, 1e6 / eb, er, 1e6 / da, 1e6 / db, dr)
            )
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()

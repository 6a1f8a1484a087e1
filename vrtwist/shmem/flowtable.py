"""The flow table in ``flow.shmem``: owner side (forwarding extension).

``FlowTable`` keeps the real layout (spec 5.2-5.6) in a shared mapping and
implements ``vr_flow_req`` FLOW_SET with the semantics and error codes of
``dp-core/vr_flow.c`` (``vr_flow_set``), plus the in-process datapath API the
packet pipeline uses (lookup by key, HOLD on miss, statistics, eviction).

Publication discipline (stricter than the real vRouter, which sets ACTIVE
before it copies the key): an entry's fields are written while ``fe_flags``
has ACTIVE clear, and ``fe_flags`` is written last; a delete or eviction
clears ACTIVE first.  The generation id changes on every reuse of a slot.
"""

from __future__ import annotations

import errno
import operator
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from zope.interface import implementer

from vrtwist.sandesh import SPECS_BY_NAME
from vrtwist.shmem import layout as L
from vrtwist.shmem.entries import FlowEntry, parse_flow_entry
from vrtwist.shmem.htable import Buffer, HashTable, TableOwner
from vrtwist.shmem.interfaces import IFlowDatapath, IFlowTable
from vrtwist.shmem.jhash import jhash_words5

__all__ = [
    "FlowSetResult",
    "FlowTable",
    "FlowTableFull",
    "FlowVerdict",
    "fields_of",
    "key_from_request",
    "rkey_from_request",
]

_U16 = L.U16
_U32 = L.U32
_I32 = L.I32
_A = L.FLOW_PART_A
_B = L.FLOW_PART_B
_STATS = L.FLOW_STATS
_BODY = L.FLOW_BODY
_I8 = struct.Struct("<b")
#: fe_ecmp_nh_index and fe_src_info, as placed in FLOW_PART_B
_OFF_ECMP = L.OFF_FE_PART_B + struct.calcsize("<HHHHBBIIIHB")
_OFF_SRC_INFO = L.OFF_FE_PART_B + struct.calcsize("<HHHHBBIIIHBbBBH")
# what follows the hashed bytes in the 45-byte key: zero padding, then vr_flow_keylen
_KEY_TAIL = {
    n: bytes(L.FLOW_KEY_SIZE - 1 - n) + bytes((n,)) for n in (L.FLOW_KEY4_LEN, L.FLOW_KEY6_LEN)
}
_NO_MIRROR = 0xFF  # VR_MAX_MIRROR_INDICES: "no mirror" in fe_mirror_id
# FLOW_SET fast path: ACTIVE set and none of VRFT, MIRROR, RFLOW_VALID
_FAST_NEED = L.FLAG_ACTIVE | L.FLAG_VRFT | L.FLAG_MIRROR | L.RFLOW_VALID
_ACTION_SET = frozenset(L.ACTIONS)
_PAIR_ACTIONS = frozenset(a for a in L.ACTIONS if a != L.ACTION_HOLD)
# flags a new entry takes from the request: not the datapath's own, never NEW_FLOW
_KEEP_REQ_FLAGS = ~L.DP_FLAGS & ~L.FLAG_NEW_FLOW & 0xFFFF
_KEY4 = struct.Struct("<BBHHHIII").pack  # FLOW_KEY4 with the addresses as words
_TAIL4 = _KEY_TAIL[L.FLOW_KEY4_LEN]
_BODY_PACK = _BODY.pack_into
_HASH5 = jhash_words5
#: The fields of the forward key, in one C call.
_KEY_FIELDS = operator.itemgetter(
    "fr_family",
    "fr_flow_proto",
    "fr_flow_sport",
    "fr_flow_dport",
    "fr_flow_nh_id",
    "fr_flow_sip_l",
    "fr_flow_dip_l",
)
#: The fields every FLOW_SET copies into its entry (see ``FlowTable._entry_values``).
_REQ_VALUES = operator.itemgetter(
    "fr_ttl",
    "fr_qos_id",
    "fr_flags1",
    "fr_flow_vrf",
    "fr_src_nh_index",
    "fr_ecmp_nh_index",
    "fr_drop_reason",
    "fr_extflags",
)
#: The fields of the agent's pair requests (``flow_request``'s), in one C call.
_PAIR_FIELDS = operator.itemgetter(
    "fr_op",
    "fr_index",
    "fr_gen_id",
    "fr_action",
    "fr_flags",
    "fr_ecmp_nh_index",
    "fr_family",
    "fr_flow_proto",
    "fr_flow_sport",
    "fr_flow_dport",
    "fr_flow_nh_id",
    "fr_flow_sip_l",
    "fr_flow_dip_l",
    "fr_flow_vrf",
    "fr_src_nh_index",
    "fr_rindex",
    "fr_drop_reason",
)
_PAIR_LEN = 17
#: The values ``FlowTable.flow_sets_values`` takes: the pair's, then the fields its
#: requests leave 0.
LINKED_FIELDS = (
    "fr_op", "fr_index", "fr_gen_id", "fr_action", "fr_flags", "fr_ecmp_nh_index",
    "fr_family", "fr_flow_proto", "fr_flow_sport", "fr_flow_dport", "fr_flow_nh_id",
    "fr_flow_sip_l", "fr_flow_dip_l", "fr_flow_vrf", "fr_src_nh_index", "fr_rindex",
    "fr_drop_reason", "fr_ttl", "fr_qos_id", "fr_flags1", "fr_extflags",
)  # fmt: skip
assert _PAIR_FIELDS(dict(zip(LINKED_FIELDS, range(21), strict=True))) == tuple(range(17))
#: FLOW_BODY from fe_rflow to fe_src_nh_index (offset 84 of an entry)
_LINKS_PACK = struct.Struct("<iHHHHHBBI").pack_into
assert struct.calcsize("<Bh45sBHQIi") + L.OFF_FE_BODY == 88 and L.OFF_FE_RFLOW == 84
#: the single linked requests' fast path (``FlowTable._linked``); off only in tests
_LINKED_FAST = True
_PAIR_FLAGS = L.FLAG_ACTIVE | L.RFLOW_VALID
#: a live entry with any of these is refused (-EBUSY) or being deleted (-EINVAL)
_PAIR_BUSY = L.FLAG_MODIFIED | L.FLAG_EVICTED | L.FLAG_NEW_FLOW | L.FLAG_DELETE_MARKED
#: FLAG_NEW_FLOW within the high byte of fe_flags
_NEW_FLOW_HIGH = L.FLAG_NEW_FLOW >> 8
_MUDP_START = L.MUDP_PORT_RANGE_START
_MUDP_RANGE = L.MUDP_PORT_RANGE_END - L.MUDP_PORT_RANGE_START


class FlowVerdict(NamedTuple):
    """The fields of a flow entry the packet pipeline acts on."""

    flags: int
    action: int
    vrf: int
    dvrf: int
    mirror_id: int
    sec_mirror_id: int
    src_nh_index: int
    ecmp_nh_index: int
    udp_src_port: int
    ttl: int
    gen_id: int
    rflow: int
    src_info: int


_new_tuple = tuple.__new__
#: what ``FlowTable.verdict`` reads in one unpack from fe_rflow (84) to fe_src_info (124):
#: rflow, flags, (flags1), action, vrf, dvrf, mirror, sec_mirror, src_nh, (counters),
#: ecmp, (drop_reason, type), udp_src_port, src_info
_VERDICT = struct.Struct("<iH2xHHHBBI11xb2xHI")


class FlowTableFull(Exception):
    """No free main or overflow entry for the key's bucket (the vRouter's -ENOSPC)."""


@dataclass(slots=True)
class FlowSetResult:
    """Outcome of one FLOW_SET: ``errno`` is 0 or a negative errno; the rest is vr_flow_response."""

    errno: int
    index: int
    gen_id: int = 0
    flags: int = 0
    bytes: int = 0
    packets: int = 0
    stats_oflow: int = 0

    def response_fields(self, op: int = 0) -> dict[str, int]:
        """The fields of the ``vr_flow_response`` to send back."""
        return {
            "fresp_op": op,
            "fresp_rid": 0,
            "fresp_flags": self.flags,
            "fresp_index": self.index & 0xFFFFFFFF,
            "fresp_bytes": self.bytes,
            "fresp_packets": self.packets,
            "fresp_stats_oflow": self.stats_oflow,
            "fresp_gen_id": self.gen_id,
        }


def _signed32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _key(
    family: int,
    proto: int,
    sport_w: int,
    dport_w: int,
    nh: int,
    sip_u: int,
    sip_l: int,
    dip_u: int,
    dip_l: int,
) -> tuple[bytes, int] | None:
    if family == L.AF_INET:
        return (
            L.FLOW_KEY4.pack(
                family,
                proto & 0xFF,
                0,
                sport_w & 0xFFFF,
                dport_w & 0xFFFF,
                nh & 0xFFFFFFFF,
                (sip_l & 0xFFFFFFFF).to_bytes(4, "little"),
                (dip_l & 0xFFFFFFFF).to_bytes(4, "little"),
            ),
            L.VP_TYPE_IP,
        )
    if family == L.AF_INET6:
        return (
            L.FLOW_KEY6.pack(
                family,
                proto & 0xFF,
                0,
                sport_w & 0xFFFF,
                dport_w & 0xFFFF,
                nh & 0xFFFFFFFF,
                (sip_u & (2**64 - 1)).to_bytes(8, "little")
                + (sip_l & (2**64 - 1)).to_bytes(8, "little"),
                (dip_u & (2**64 - 1)).to_bytes(8, "little")
                + (dip_l & (2**64 - 1)).to_bytes(8, "little"),
            ),
            L.VP_TYPE_IP6,
        )
    return None


_REQ_DEFAULTS: dict[str, Any] = {f.name: 0 for f in SPECS_BY_NAME["vr_flow_req"].fields}
_REQ_DEFAULTS["fr_index"] = -1
_REQ_DEFAULTS["fr_rindex"] = -1


def fields_of(req: Any) -> dict[str, Any]:
    """Every vr_flow_req field of a decoded Sandesh object or a mapping, as a dict.

    A decoded object's own ``__dict__`` is used as is when it is complete (the codec
    zero-fills missing fields); anything else is laid over the defaults (0, and -1 for
    the two indices), with None read as the default.
    """
    d = getattr(req, "__dict__", None)
    if d is not None and len(d) >= len(_REQ_DEFAULTS) and None not in d.values():
        result: dict[str, Any] = d
        return result
    src = req if isinstance(req, Mapping) else (d or {})
    out = dict(_REQ_DEFAULTS)
    for k, v in src.items():
        if v is not None:
            out[k] = v
    return out


def key_from_request(req: Any) -> tuple[bytes, int] | None:
    """Hashed key bytes and entry type of a vr_flow_req's forward key (None: bad family)."""
    return _key_of(fields_of(req))


def _key_of(d: dict[str, Any]) -> tuple[bytes, int] | None:
    return _key(
        d["fr_family"],
        d["fr_flow_proto"],
        d["fr_flow_sport"],
        d["fr_flow_dport"],
        d["fr_flow_nh_id"],
        d["fr_flow_sip_u"],
        d["fr_flow_sip_l"],
        d["fr_flow_dip_u"],
        d["fr_flow_dip_l"],
    )


def rkey_from_request(req: Any) -> tuple[bytes, int] | None:
    """Key of the reverse flow described by the ``fr_rflow_*`` fields."""
    return _rkey_of(fields_of(req))


def _rkey_of(d: dict[str, Any]) -> tuple[bytes, int] | None:
    return _key(
        d["fr_family"],
        d["fr_flow_proto"],
        d["fr_rflow_sport"],
        d["fr_rflow_dport"],
        d["fr_rflow_nh_id"],
        d["fr_rflow_sip_u"],
        d["fr_rflow_sip_l"],
        d["fr_rflow_dip_u"],
        d["fr_rflow_dip_l"],
    )


@dataclass
class FlowCounters:
    """``vr_flow_table_info``: the counters ``vr_flow_table_data`` reports."""

    added: int = 0
    deleted: int = 0
    changed: int = 0
    action_count: int = 0  # "processed": HOLD entries given a verdict
    hold_oflows: int = 0
    hold_count: list[int] = field(default_factory=lambda: [0])


@implementer(IFlowTable, IFlowDatapath)
class FlowTable(TableOwner):
    """Owner of the flow table mapping (one writer: the reactor thread)."""

    def __init__(
        self,
        buf: Buffer,
        entries: int = L.DEFAULT_FLOW_ENTRIES,
        oentries: int | None = None,
        *,
        initialise: bool = True,
        path: str = "",
        max_vrfs: int = L.DEFAULT_MAX_VRFS,
        max_mirrors: int = L.DEFAULT_MAX_MIRRORS,
        cpus: int = 1,
    ) -> None:
        entries = L.round_entries(entries)
        if oentries is None:
            oentries = L.default_overflow(entries)
        self.ht = HashTable(buf, entries, oentries, L.FLOW_ENTRY_SIZE, initialise=initialise)
        self.buf = buf
        self.path = path
        self.max_vrfs = max_vrfs
        self.max_mirrors = max_mirrors
        self.cpus = max(1, min(cpus, L.FLOW_MAX_CPUS))
        self.counters = FlowCounters(hold_count=[0] * self.cpus)
        self._index: dict[bytes, int] = {}
        self._hashrnd = int.from_bytes(os.urandom(4), "little")
        #: called with the index after every successful FLOW_SET (hold-queue replay)
        self.set_listeners: list[Callable[[int], None]] = []

    # -- reading -----------------------------------------------------------------
    def entry(self, index: int) -> FlowEntry:
        """Parsed copy of entry ``index`` (any state)."""
        if not 0 <= index < self.ht.total:
            raise IndexError("flow index %d out of range 0..%d" % (index, self.ht.total - 1))
        off = index * L.FLOW_ENTRY_SIZE
        return parse_flow_entry(self.buf[off : off + L.FLOW_ENTRY_SIZE], index)

    def _valid(self, index: int) -> bool:
        return 0 <= index < self.ht.total and bool(
            self.buf[index * L.FLOW_ENTRY_SIZE + L.OFF_HENTRY_FLAGS] & L.HENTRY_FLAG_VALID
        )

    def _flags(self, index: int) -> int:
        result: int = _U16.unpack_from(self.buf, index * L.FLOW_ENTRY_SIZE + L.OFF_FE_FLAGS)[0]
        return result

    def _set_flags(self, index: int, flags: int) -> None:
        _U16.pack_into(self.buf, index * L.FLOW_ENTRY_SIZE + L.OFF_FE_FLAGS, flags & 0xFFFF)

    # -- datapath API ------------------------------------------------------------
    def lookup(self, key: bytes) -> int:
        """Index of the live flow with hashed key ``key``, or -1."""
        return self._index.get(key, -1)

    def hold_on_miss(
        self, key: bytes, vrf: int = 0, src_info: int = 0, nbytes: int = 0, npackets: int = 0
    ) -> tuple[int, int]:
        """Create a HOLD entry for a packet that missed (ACTIVE|NEW_FLOW); return (index, gen).

        ``nbytes``/``npackets`` are added to its counters (the packet that missed): a new
        entry is written with them, which saves the pipeline an ``add_stats`` per miss.
        Raises FlowTableFull.  An existing entry for the key is returned as is.
        """
        buf = self.buf
        index = self._index
        idx = index.get(key, -1)
        if idx >= 0:
            if nbytes or npackets:
                self.add_stats(idx, nbytes, npackets)
            return idx, buf[idx * 256 + 69]
        tail = _KEY_TAIL.get(len(key))
        if tail is None:
            raise ValueError("a flow key is 20 (IPv4) or 44 (IPv6) bytes, not %d" % len(key))
        got = self.ht.allocate(key)
        if got is None:
            raise FlowTableFull(
                "no free entry in the bucket of this key and no overflow entry left"
            )
        off = got * 256  # L.FLOW_ENTRY_SIZE; 88 = OFF_FE_FLAGS, 69 = OFF_FE_GEN_ID, 21 = body
        if buf[off + 88] or buf[off + 89]:
            _U16.pack_into(buf, off + 88, 0)  # a reused (evicted) slot: unpublish first
        gen = (buf[off + 69] + 1) & 0xFF
        klen = len(key)
        _BODY.pack_into(
            buf,
            off + 21,
            0,
            0,
            key + tail,
            gen,
            0,
            0,
            0,
            -1,
            0,
            0,
            L.ACTION_HOLD,
            vrf,
            0,
            _NO_MIRROR,
            _NO_MIRROR,
            0,
            nbytes & 0xFFFFFFFF,
            npackets & 0xFFFFFFFF,
            (nbytes >> 32) & 0xFFFF,
            (npackets >> 32) & 0xFF,
            -1,
            0,
            L.VP_TYPE_IP6 if klen == 44 else L.VP_TYPE_IP,
            0,
            src_info,
            0,
        )
        index[key] = got
        hold = self.counters.hold_count
        if hold[0] >= 0xFFFFFFFF:
            self.counters.hold_oflows += 1
            hold[0] = 0
        hold[0] += 1
        # published last
        _U16.pack_into(buf, off + 88, L.FLAG_ACTIVE | L.FLAG_NEW_FLOW)
        return got, gen

    def take_new_flow(self, index: int) -> bool:
        """Clear NEW_FLOW when the first packet is trapped; True if it was a new flow."""
        # one byte of fe_flags (little-endian: NEW_FLOW is bit 1 of the high byte), read
        # and written in place: this is on every miss
        if not 0 <= index < self.ht.total:
            return False
        buf = self.buf
        off = index * 256  # L.FLOW_ENTRY_SIZE; 20 = OFF_HENTRY_FLAGS, 89 = OFF_FE_FLAGS + 1
        high = buf[off + 89]
        if not (buf[off + 20] & 1 and high & _NEW_FLOW_HIGH):
            return False
        buf[off + 89] = high & ~_NEW_FLOW_HIGH
        return True

    def add_stats(self, index: int, nbytes: int, npackets: int = 1) -> None:
        """Account packets to a flow; 32-bit counters carry into the overflow fields."""
        off = index * L.FLOW_ENTRY_SIZE + L.OFF_FE_STATS
        b, p, bo, po = _STATS.unpack_from(self.buf, off)
        tb = ((bo << 32) | b) + nbytes
        tp = ((po << 32) | p) + npackets
        _STATS.pack_into(
            self.buf, off, tb & 0xFFFFFFFF, tp & 0xFFFFFFFF, (tb >> 32) & 0xFFFF, (tp >> 32) & 0xFF
        )

    def verdict(self, index: int) -> FlowVerdict:
        """What the pipeline needs of a live entry, read in two unpacks (the hit path)."""
        off = index * 256  # L.FLOW_ENTRY_SIZE
        buf = self.buf
        rflow, flags, action, vrf, dvrf, mirror, sec_mirror, src_nh, ecmp, port, src = (
            _VERDICT.unpack_from(buf, off + 84)
        )
        # tuple.__new__ straight: the NamedTuple's own __new__ is a Python function
        return _new_tuple(FlowVerdict, (
            flags, action, vrf, dvrf, mirror, sec_mirror, src_nh, ecmp, port,
            buf[off + 21], buf[off + 69], rflow, src,
        ))  # fmt: skip

    def stats(self, index: int) -> tuple[int, int]:
        """(bytes, packets) of entry ``index`` including the overflow bits."""
        b, p, bo, po = _STATS.unpack_from(self.buf, index * L.FLOW_ENTRY_SIZE + L.OFF_FE_STATS)
        return (bo << 32) | b, (po << 32) | p

    def set_tcp_flags(self, index: int, tcp_flags: int) -> None:
        """OR TCP state bits into ``fe_tcp_flags`` (the datapath's TCP tracking)."""
        off = index * L.FLOW_ENTRY_SIZE + L.OFF_FE_TCP_FLAGS
        _U16.pack_into(self.buf, off, (_U16.unpack_from(self.buf, off)[0] | tcp_flags) & 0xFFFF)

    def tcp_state(self, index: int) -> tuple[int, int]:
        """(fe_tcp_flags, fe_tcp_seq) of a flow: what ``vr_flow_tcp_digest`` reads."""
        off = index * L.FLOW_ENTRY_SIZE
        return _U16.unpack_from(self.buf, off + L.OFF_FE_TCP_FLAGS)[0], _U32.unpack_from(
            self.buf, off + 80
        )[0]

    def set_tcp_state(self, index: int, tcp_flags: int, seq: int) -> None:
        """Write fe_tcp_flags and fe_tcp_seq (the datapath's TCP tracking)."""
        off = index * L.FLOW_ENTRY_SIZE
        _U16.pack_into(self.buf, off + L.OFF_FE_TCP_FLAGS, tcp_flags & 0xFFFF)
        _U32.pack_into(self.buf, off + 80, seq & 0xFFFFFFFF)

    def mark_evict(self, index: int) -> bool:
        """Evict a closed flow and its reverse, as ``vr_flow_mark_evict`` does; True if evicted.

        The forward flow is evicted once its reverse is dead too (or absent);
        a HOLD reverse is never evicted.
        """
        if not self._valid(index):
            return False
        flags = self._flags(index)
        if not flags & L.FLAG_ACTIVE or flags & (
            L.FLAG_MODIFIED | L.FLAG_EVICTED | L.FLAG_NEW_FLOW
        ):
            return False
        e = self.entry(index)
        r = e.rflow
        if r >= 0 and self._valid(r):
            re = self.entry(r)
            if not re.tcp_flags & L.TCP_DEAD or re.action == L.ACTION_HOLD:
                return False
            if re.rflow not in (index, -1):
                return False
            if re.flags & (L.FLAG_MODIFIED | L.FLAG_EVICTED | L.FLAG_NEW_FLOW):
                return False
            self._evict(r)
        self._evict(index)
        return True

    def src_info(self, index: int) -> int:
        """``fe_src_info``: the vif index (VM) or outer source address (fabric) of the flow."""
        if not self._valid(index):
            return -1
        result: int = _U32.unpack_from(self.buf, index * L.FLOW_ENTRY_SIZE + _OFF_SRC_INFO)[0]
        return result

    def set_src_info(self, index: int, src_info: int) -> None:
        """Write ``fe_src_info`` of a live entry: where its latest packet came from."""
        _U32.pack_into(self.buf, index * L.FLOW_ENTRY_SIZE + _OFF_SRC_INFO, src_info & 0xFFFFFFFF)

    def set_ecmp_index(self, index: int, ecmp: int) -> None:
        """Store the ECMP member the datapath chose (``fe_ecmp_nh_index``, what ``flow -l`` shows)."""
        if self._valid(index):
            _I8.pack_into(self.buf, index * L.FLOW_ENTRY_SIZE + _OFF_ECMP, ecmp)

    # -- ksync: vr_flow_req FLOW_SET -------------------------------------------
    #
    # Two ways through, sharing every step: the agent's common request (a new flow with
    # no index and none of VRFT, MIRROR or RFLOW_VALID) goes straight to ``_create``,
    # which cannot fail ``_check`` and writes the entry in one pack; everything else
    # takes ``_set``, ``vr_flow_set``'s full sequence.  Both take the new flow's key and
    # slot with ``_claim`` and read the request (and the source port) with
    # ``_entry_values``.

    def flow_set(self, req: Any) -> FlowSetResult:
        """Apply one vr_flow_req (decoded object or mapping); returns the errno, never raises.

        Every successful set is reported to ``set_listeners`` (the packet pipeline replays
        the packets it holds for that flow, as ``vr_flow_work`` does).
        """
        d = fields_of(req)
        index = _signed32(d["fr_index"])
        rflags = d["fr_flags"] & 0xFFFF
        res: FlowSetResult | None = None
        if (
            index < 0
            and not d["fr_op"]
            and rflags & _FAST_NEED == 1
            and not d["fr_extflags"] & 1  # EXT_FLAG_FORCE_EVICT
            and d["fr_action"] & 0xFFFF in _ACTION_SET
        ):
            res = self._create(d, rflags, index)
        elif rflags == _PAIR_FLAGS and _LINKED_FAST:
            res = self._linked(d, index)
        if res is None:
            res = self._set(d, index, rflags)
        if res.errno == 0 and self.set_listeners:
            for listener in self.set_listeners:
                listener(res.index)
        return res

    def flow_set_pair(
        self, rev: Mapping[str, int], fwd: Mapping[str, int]
    ) -> tuple[FlowSetResult, FlowSetResult] | None:
        """The agent's flow pair in one call, for an embedded datapath: the reverse flow
        (``fr_index`` -1, linked to the trapped HOLD entry) and then the forward flow at
        that entry, linked to the reverse's new index.

        The entries, counters and listener calls are those of ``flow_set(rev)`` followed
        by ``flow_set(fwd)`` with ``fwd``'s ``fr_rindex`` set to the reverse's index; the
        two requests' full field sets are never built and the forward entry is checked
        once. Only the common case is taken here: two requests of exactly the fields
        ``flow_request`` makes, IPv4, ACTIVE|RFLOW_VALID, no HOLD action, the trapped
        entry live, idle and of the request's generation and key, the reverse key new and
        a slot free for it. Anything else returns None with nothing written (the caller
        sends the two requests, which say what is wrong)."""
        if len(rev) != _PAIR_LEN or len(fwd) != _PAIR_LEN:
            return None
        try:
            r = _PAIR_FIELDS(rev)
            f = _PAIR_FIELDS(fwd)
        except KeyError:
            return None
        done = self.flow_set_pair_values(r, f)
        if done is None:
            return None
        return FlowSetResult(0, done[0], done[1]), FlowSetResult(0, f[1], done[2])

    def flow_set_pair_values(
        self, r: tuple[int, ...], f: tuple[int, ...]
    ) -> tuple[int, int, int] | None:
        """:meth:`flow_set_pair` of the two requests' values, each the 17 fields of
        ``flow_request`` in its order (``fr_op`` .. ``fr_drop_reason``), so the agent
        need not build the mappings: (the reverse's index, its gen id, the forward's gen
        id), or None with nothing written."""
        index = f[1]
        if (
            r[0] or f[0] or r[1] != -1 or r[15] != index or not 0 <= index < self.ht.total
            or r[4] != _PAIR_FLAGS or f[4] != _PAIR_FLAGS or r[6] != 2 or f[6] != 2
            or r[3] not in _PAIR_ACTIONS or f[3] not in _PAIR_ACTIONS
        ):  # fmt: skip
            return None
        old_flags = self._pair_entry(index, f)
        if old_flags < 0:
            return None
        rdone = self._pair_reverse(r, index)
        if rdone is None:
            return None
        rindex = rdone[0]
        listeners = self.set_listeners
        for listener in listeners:
            listener(rindex)
        gen = self._pair_forward(f, index, rindex, old_flags)
        for listener in listeners:
            listener(index)
        return rindex, rdone[1], gen

    def _linked(self, d: dict[str, Any], index: int) -> FlowSetResult | None:
        """One flow of the agent's pair on its own (as it comes over ksync): ACTIVE and
        RFLOW_VALID, linked to a live index, nothing else set. A new flow (no index)
        is written as ``flow_set_pair``'s reverse, a live entry as its forward; None for
        anything else (``_set`` then does it, or says what is wrong)."""
        ttl, qos, flags1, _, _, _, _, ext = _REQ_VALUES(d)
        if ttl or qos or flags1 or ext:
            return None
        done = self._linked_pair(_PAIR_FIELDS(d), index)
        return None if done is None else FlowSetResult(0, done[0], done[1])

    def flow_sets_values(
        self,
        getters: Sequence[Callable[[tuple[int, ...]], tuple[int, ...]]],
        width: int,
        values: tuple[int, ...],
        start: int,
        out: list[tuple[int, int]],
        taken: Callable[[], None] | None = None,
    ) -> int:
        """``flow_set`` of requests given as their values, ``width`` each from offset
        ``start`` of ``values`` (``getters[k]`` takes request ``k``'s from ``values``
        in ``LINKED_FIELDS``'s order), while each is one of the agent's pair
        (``_linked``): each one's index and generation appended to ``out``, ``taken``
        called and then the listeners told. Stops at the first other request, with
        nothing written or told for it (``flow_set`` it whole); returns its offset,
        ``len(values)`` after the last. For the ksync server, which then needs no
        object per request."""
        listeners = self.set_listeners
        linked = self._linked_pair
        end = len(values)
        o = start
        while o < end:
            f = getters[o // width](values)
            if (
                f[4] & 0xFFFF != _PAIR_FLAGS or f[17] or f[18] or f[19] or f[20]
                or not _LINKED_FAST
            ):  # fmt: skip
                return o
            done = linked(f, f[1])
            if done is None:
                return o
            out.append(done)
            if taken is not None:
                taken()
            for listener in listeners:
                listener(done[0])
            o += width
        return o

    def _linked_pair(self, f: tuple[int, ...], index: int) -> tuple[int, int] | None:
        """``_linked`` of the request's pair values (``_PAIR_FIELDS``'s order) and index
        (read as a signed 32-bit one): the entry's index and generation, or None with
        nothing written."""
        rindex = f[15] & 0xFFFFFFFF  # as _signed32 reads it, a negative one >= total
        if (
            f[0] or f[6] != 2 or f[3] not in _PAIR_ACTIONS or rindex >= self.ht.total
            or not self.buf[rindex * 256 + L.OFF_HENTRY_FLAGS] & L.HENTRY_FLAG_VALID
        ):  # fmt: skip
            return None
        index &= 0xFFFFFFFF
        if index & 0x80000000:  # negative: a new flow
            return self._pair_reverse(f, rindex)
        if index >= self.ht.total:
            return None
        old_flags = self._pair_entry(index, f)
        if old_flags < 0:
            return None
        return index, self._pair_forward(f, index, rindex, old_flags)

    def _pair_entry(self, index: int, f: tuple[int, ...]) -> int:
        """The trapped entry's flags when the forward request may be written over it as
        it is (live, idle, IPv4, its generation and key); -1 otherwise."""
        buf = self.buf
        off = index * 256  # FLOW_ENTRY_SIZE; 88 = flags, 69 = gen, 24 = key
        flags = buf[off + 88] | buf[off + 89] << 8
        key = _KEY4(2, f[7] & 0xFF, 0, f[8] & 0xFFFF, f[9] & 0xFFFF, f[10] & 0xFFFFFFFF,
                    f[11] & 0xFFFFFFFF, f[12] & 0xFFFFFFFF)  # fmt: skip
        if (
            not buf[off + L.OFF_HENTRY_FLAGS] & L.HENTRY_FLAG_VALID
            or flags & _PAIR_BUSY
            or buf[off + L.OFF_FE_TYPE] != L.VP_TYPE_IP
            or f[2] & 0xFF != buf[off + 69]
            or buf[off + 24 : off + 44] != key
        ):
            return -1
        return flags

    def _pair_reverse(self, r: tuple[int, ...], index: int) -> tuple[int, int] | None:
        """The reverse flow as a new entry linked to ``index`` (``_claim`` then
        ``_create_linked``): its index and gen id; None, with nothing written, if its key
        exists or no slot is free."""
        buf = self.buf
        proto, sport, dport = r[7] & 0xFF, r[8] & 0xFFFF, r[9] & 0xFFFF
        nh, sip, dip = r[10] & 0xFFFFFFFF, r[11] & 0xFFFFFFFF, r[12] & 0xFFFFFFFF
        key = _KEY4(2, proto, 0, sport, dport, nh, sip, dip)
        if key in self._index:
            return None
        rindex = self.ht.allocate(key, _HASH5(2 | proto << 8, sport | dport << 16, nh, sip, dip))
        if rindex is None:
            return None
        roff = rindex * 256
        if buf[roff + 88] or buf[roff + 89]:
            _U16.pack_into(buf, roff + 88, 0)  # reused (evicted) slot: unpublish first
        self._index[key] = rindex
        self.counters.added += 1
        gen = (buf[roff + 69] + 1) & 0xFF
        key45 = key + _TAIL4
        vrf = r[13] & 0xFFFF
        action = r[3]
        toff = index * 256 + L.OFF_FE_TCP_FLAGS
        rt = buf[toff] | buf[toff + 1] << 8
        _BODY_PACK(
            buf, roff + 21, 0, 0, key45, gen, _REVERSE_TCP[rt & _REVERSE_BITS], 0, 0, index, 0, 0,
            action, vrf,
            0, _NO_MIRROR, _NO_MIRROR, r[14] & 0xFFFFFFFF, 0, 0, 0, 0, _ecmp8(r[5]),
            r[16] & 0xFF if action == 0 else 0, 2, self._udp_port(vrf, key45, 2), 0, 0,
        )  # fmt: skip
        _U16.pack_into(buf, roff + 88, _PAIR_FLAGS)  # published last
        return rindex, gen

    def _pair_forward(self, f: tuple[int, ...], index: int, rindex: int, old_flags: int) -> int:
        """The trapped entry given the forward request's verdict (``_set`` then
        ``_apply``); returns its generation. Only the fields the verdict changes are
        written (what a full body write would leave): TTL and QoS, then the reverse
        index to the source next hop in one pack, the ECMP index, drop reason and tunnel
        source port where the request sets them, and ``fe_flags`` last."""
        buf = self.buf
        off = index * 256  # FLOW_ENTRY_SIZE; the offsets below are FLOW_BODY's fields
        if buf[off + 92] == L.ACTION_HOLD and not buf[off + 93]:
            self.counters.action_count += 1
        else:
            self.counters.changed += 1
        action = f[3]
        vrf = f[13] & 0xFFFF
        buf[off + 21 : off + 24] = b"\x00\x00\x00"  # ttl, qos
        # rflow, flags (as they are), flags1, action, vrf, dvrf (kept), mirrors, src nh
        _LINKS_PACK(buf, off + 84, rindex, buf[off + 88] | buf[off + 89] << 8, 0, action, vrf,
                    buf[off + 96] | buf[off + 97] << 8, _NO_MIRROR, _NO_MIRROR,
                    f[14] & 0xFFFFFFFF)  # fmt: skip
        if buf[off + 115] == 0xFF:  # fe_ecmp_nh_index -1
            buf[off + 115] = f[5] & 0xFF
        if action == 0:
            buf[off + 116] = f[16] & 0xFF
        if not (buf[off + 118] or buf[off + 119]):
            _U16.pack_into(buf, off + 118,
                           self._udp_port(vrf, bytes(buf[off + 24 : off + 69]), buf[off + 117]))
        _U16.pack_into(buf, off + 88, ((old_flags & L.DP_FLAGS) | _PAIR_FLAGS) & ~L.FLAG_NEW_FLOW)
        gen: int = buf[off + 69]
        return gen

    def _create(self, d: dict[str, Any], rflags: int, req_index: int) -> FlowSetResult:
        """A new flow without VRFT, MIRROR or RFLOW_VALID: what ``_set`` would do, in one
        body write (``_check`` cannot fail for such a request; nothing links to it)."""
        res, key45, etype = self._claim(d, req_index)
        if res.errno:
            return res
        action = d["fr_action"] & 0xFFFF
        if action == 1:  # ACTION_HOLD
            self._count_hold()
        ttl, qos, flags1, vrf, src_nh, ecmp, drop, udp = self._entry_values(d, key45, etype, 0)
        off = res.index * 256  # FLOW_ENTRY_SIZE; 88 = OFF_FE_FLAGS, 21 = body
        _BODY_PACK(
            self.buf, off + 21, ttl, qos, key45, res.gen_id, 0, 0, 0, -1, 0, flags1, action,
            vrf, 0, _NO_MIRROR, _NO_MIRROR, src_nh, 0, 0, 0, 0, ecmp,
            drop if action == 0 else 0, etype, udp, 0, 0,
        )  # fmt: skip
        # published last
        _U16.pack_into(self.buf, off + 88, rflags & _KEEP_REQ_FLAGS)
        return res

    def _set(self, d: dict[str, Any], index: int, rflags: int) -> FlowSetResult:
        """``vr_flow_set``: checks in its order, then delete, update or create."""
        if d["fr_op"] != 0:
            return FlowSetResult(-errno.EINVAL, index)
        if d["fr_extflags"] & L.EXT_FLAG_FORCE_EVICT:
            return FlowSetResult(self._force_evict(index), index)
        valid = index >= 0 and self._valid(index)
        if valid and self._flags(index) & (L.FLAG_MODIFIED | L.FLAG_EVICTED | L.FLAG_NEW_FLOW):
            return FlowSetResult(-errno.EBUSY, index)
        err, rindex = self._check(d, index if valid else -1, index, rflags)
        if err:
            return FlowSetResult(err, index)
        action = d["fr_action"] & 0xFFFF
        if valid:
            self._count_change(index, action, rflags)
        if not rflags & L.FLAG_ACTIVE:
            return self._delete_request(index) if valid else FlowSetResult(-errno.ENOENT, index)
        if action not in L.ACTIONS:
            return FlowSetResult(-errno.EINVAL, index)
        if valid:
            body = list(_BODY.unpack_from(self.buf, index * L.FLOW_ENTRY_SIZE + L.OFF_FE_BODY))
            self._apply(index, d, rflags, action, rindex, False, body[8], body)
            return FlowSetResult(0, index, body[3])
        return self._create_linked(d, index, rflags, action, rindex)

    def _create_linked(
        self, d: dict[str, Any], index: int, rflags: int, action: int, rindex: int
    ) -> FlowSetResult:
        """A new flow through the general path (VRFT, MIRROR or a reverse flow)."""
        res, key45, etype = self._claim(d, index)
        if res.errno:
            return res
        # body: ttl qos key45 gen tcp hold seq rflow flags flags1 action vrf dvrf mir smir
        #       src_nh bytes packets boflow poflow ecmp drop type udp_sport src_info mme
        body: list[Any] = [
            0, 0, key45, res.gen_id, 0, 0, 0, -1, 0, 0, L.ACTION_DROP, 0, 0, _NO_MIRROR,
            _NO_MIRROR, 0, 0, 0, 0, 0, -1, 0, etype, 0, 0, 0,
        ]  # fmt: skip
        self._apply(res.index, d, rflags, action, rindex, True, 0, body)
        return res

    def _claim(self, d: dict[str, Any], req_index: int) -> tuple[FlowSetResult, bytes, int]:
        """The slot of a new flow, with the 45 key bytes and entry type it stores.

        -EINVAL (bad family), -EEXIST (with the live flow's index and gen id) or -ENOSPC;
        else the new index and gen id, the slot unpublished and the key indexed.  IPv4 keys
        (the agent's usual case) are packed and hashed from their words.
        """
        family, proto, sport, dport, nh, sip, dip = _KEY_FIELDS(d)
        if family == 2:  # AF_INET
            proto &= 0xFF
            sport &= 0xFFFF
            dport &= 0xFFFF
            nh &= 0xFFFFFFFF
            sip &= 0xFFFFFFFF
            dip &= 0xFFFFFFFF
            key = _KEY4(2, proto, 0, sport, dport, nh, sip, dip)
            key45, etype = key + _TAIL4, 2
            # the key's five little-endian words, hashed without re-reading the bytes
            hashed = _HASH5(2 | proto << 8, sport | dport << 16, nh, sip, dip)
        else:
            kt = _key_of(d)
            if kt is None:
                return FlowSetResult(-errno.EINVAL, req_index), b"", 0
            key, etype = kt
            key45, hashed = key + _KEY_TAIL[len(key)], -1
        buf = self.buf
        existing = self._index.get(key, -1)
        if existing >= 0:
            return FlowSetResult(-errno.EEXIST, existing, buf[existing * 256 + 69]), key45, etype
        index = self.ht.allocate(key, hashed)
        if index is None:
            return FlowSetResult(-errno.ENOSPC, req_index), key45, etype
        off = index * 256  # FLOW_ENTRY_SIZE; 88 = OFF_FE_FLAGS, 69 = OFF_FE_GEN_ID
        if buf[off + 88] or buf[off + 89]:
            _U16.pack_into(buf, off + 88, 0)  # reused (evicted) slot: unpublish first
        self._index[key] = index
        self.counters.added += 1
        return FlowSetResult(0, index, (buf[off + 69] + 1) & 0xFF), key45, etype

    def _count_change(self, index: int, action: int, rflags: int) -> None:
        """A set of a live entry: a HOLD given its verdict is "processed", else "changed"."""
        off = index * L.FLOW_ENTRY_SIZE + L.OFF_FE_ACTION
        cur_action = _U16.unpack_from(self.buf, off)[0]
        if cur_action == L.ACTION_HOLD and (action != cur_action or not rflags & L.FLAG_ACTIVE):
            self.counters.action_count += 1
        else:
            self.counters.changed += 1

    def _delete_request(self, index: int) -> FlowSetResult:
        self.counters.deleted += 1
        gen = self.buf[index * L.FLOW_ENTRY_SIZE + L.OFF_FE_GEN_ID]
        self.delete(index)
        return FlowSetResult(0, index, gen, L.RESP_FLAG_DELETED)

    def _check(
        self, d: dict[str, Any], fe_index: int, index: int, rflags: int
    ) -> tuple[int, int]:
        """``vr_flow_set_req_is_invalid``: (0 or the negative errno, the reverse flow's index)."""
        if fe_index >= 0:
            err = self._check_entry(d, fe_index)
            if err:
                return err, -1
        elif rflags & L.FLAG_ACTIVE and index >= 0:
            return -errno.ENOENT, -1
        if rflags & L.FLAG_VRFT and (d["fr_flow_dvrf"] & 0xFFFF) >= self.max_vrfs:
            return -errno.EINVAL, -1
        if rflags & L.FLAG_MIRROR and (d["fr_mir_id"] & 0xFFFF) >= self.max_mirrors and (
            d["fr_sec_mir_id"] & 0xFFFF
        ) >= self.max_mirrors:
            return -errno.EINVAL, -1
        rindex = _signed32(d["fr_rindex"])
        if not rflags & L.RFLOW_VALID:
            return 0, rindex
        if rindex != -1:
            return (0 if self._valid(rindex) else -errno.EINVAL), rindex
        kt = _rkey_of(d)
        found = self._index.get(kt[0], -1) if kt else -1
        return (0 if found >= 0 else -errno.EINVAL), found

    def _check_entry(self, d: dict[str, Any], fe_index: int) -> int:
        """The checks of a request naming a live entry: not being deleted, same gen, same key."""
        buf = self.buf
        eoff = fe_index * L.FLOW_ENTRY_SIZE
        if _U16.unpack_from(buf, eoff + L.OFF_FE_FLAGS)[0] & L.FLAG_DELETE_MARKED:
            return -errno.EINVAL
        if buf[eoff + L.OFF_FE_TYPE] not in (L.VP_TYPE_IP, L.VP_TYPE_IP6):
            return 0
        if d["fr_gen_id"] & 0xFF != buf[eoff + L.OFF_FE_GEN_ID]:
            return -errno.EBADF
        kt = _key_of(d)
        if kt is None:
            return -errno.EFAULT
        off = eoff + L.OFF_FE_KEY
        if bytes(buf[off : off + len(kt[0])]) != kt[0]:
            return -errno.EFAULT
        return 0

    def _apply(
        self,
        index: int,
        d: dict[str, Any],
        rflags: int,
        action: int,
        rindex: int,
        new_flow: bool,
        old_flags: int,
        body: list[Any],
    ) -> None:
        """Write the request's fields into ``body`` (fields 21..132), then publish flags."""
        ttl, qos, flags1, vrf, src_nh, ecmp, drop, udp = self._entry_values(
            d, body[2], body[22], body[23]
        )
        self._apply_links(body, d, rflags, rindex, new_flow)
        body[11] = vrf
        if body[20] == -1:
            body[20] = ecmp
        body[15] = src_nh
        body[1] = qos
        if action == L.ACTION_HOLD and body[10] != L.ACTION_HOLD:
            self._count_hold()
        body[10] = action
        body[0] = ttl
        if action == L.ACTION_DROP:
            body[21] = drop
        body[9] = flags1
        body[23] = udp
        body[8] = old_flags  # unchanged inside the body write
        off = index * L.FLOW_ENTRY_SIZE
        _BODY.pack_into(self.buf, off + L.OFF_FE_BODY, *body)
        # published (or re-published) last
        flags = ((old_flags & L.DP_FLAGS) | (rflags & ~L.DP_FLAGS)) & ~L.FLAG_NEW_FLOW & 0xFFFF
        _U16.pack_into(self.buf, off + L.OFF_FE_FLAGS, flags)

    def _apply_links(
        self, body: list[Any], d: dict[str, Any], rflags: int, rindex: int, new_flow: bool
    ) -> None:
        """The mirrors, the reverse flow (and the TCP bits a new flow takes from it) and
        the destination VRF of a request, into ``body``."""
        if rflags & L.FLAG_MIRROR:
            body[13] = d["fr_mir_id"] & 0xFF
            body[14] = d["fr_sec_mir_id"] & 0xFF
        else:
            body[13] = body[14] = _NO_MIRROR
        rflow = rindex if rflags & L.RFLOW_VALID else -1
        body[7] = rflow
        if rflags & L.FLAG_VRFT:
            body[12] = d["fr_flow_dvrf"] & 0xFFFF
        if new_flow and rflags & L.RFLOW_VALID and self._valid(rflow):
            rt = _U16.unpack_from(self.buf, rflow * L.FLOW_ENTRY_SIZE + L.OFF_FE_TCP_FLAGS)[0]
            body[4] |= _reverse_tcp(rt)

    def _entry_values(
        self, d: dict[str, Any], key45: bytes, etype: int, port: int
    ) -> tuple[int, int, int, int, int, int, int, int]:
        """What a FLOW_SET writes into an entry, as the entry stores it: (ttl, qos, flags1,
        vrf, src_nh, ecmp, drop_reason, udp source port).

        ``port`` is the entry's source port, kept if set; else it is derived from the flow
        tuple as ``vr_flow_udp_src_port`` does: the vRouter hashes (vrf, ports, addresses)
        with a random seed, and Python's keyed hash (random per process) plays the seed's
        part.  EXT_FLAG_MOCK_SRC_UDP asks for the fixed test port instead.
        """
        ttl, qos, flags1, vrf, src_nh, ecmp, drop, ext = _REQ_VALUES(d)
        qos &= 0xFFFF
        vrf &= 0xFFFF
        if ext & 2:  # EXT_FLAG_MOCK_SRC_UDP
            port = L.MOCK_SRC_UDP_PORT
        elif not port:
            port = self._udp_port(vrf, key45, etype)
        return (
            ttl & 0xFF,
            qos - 0x10000 if qos & 0x8000 else qos,
            flags1 & 0xFFFF,
            vrf,
            src_nh & 0xFFFFFFFF,
            _ecmp8(ecmp),
            drop & 0xFF,
            port,
        )

    def _udp_port(self, vrf: int, key45: bytes, etype: int) -> int:
        """The entry's tunnel source port from the flow tuple (``vr_flow_udp_src_port``)."""
        span = 32 if etype == 3 else 8  # both addresses: 16 bytes each for VP_TYPE_IP6
        h = hash((vrf, key45[4:8], key45[12 : 12 + span], self._hashrnd)) & 0xFFFFFFFF
        return _MUDP_START + ((h * _MUDP_RANGE) >> 32)

    def _count_hold(self) -> None:
        c = self.counters
        if c.hold_count[0] + 1 > 0xFFFFFFFF:
            c.hold_oflows += 1
            c.hold_count[0] = 0
        c.hold_count[0] += 1

    # -- entry lifecycle ---------------------------------------------------------
    def delete(self, index: int) -> None:
        """Remove a flow: clear ACTIVE first, reset the fields, free the slot."""
        off = index * L.FLOW_ENTRY_SIZE
        buf = self.buf
        _U16.pack_into(buf, off + L.OFF_FE_FLAGS, 0)
        klen = buf[off + L.OFF_FE_KEYLEN]
        key = bytes(buf[off + L.OFF_FE_KEY : off + L.OFF_FE_KEY + klen])
        if self._index.get(key) == index:
            del self._index[key]
        self._reset_fields(off, keep_stats=False)
        self.ht.release(index)

    def _reset_fields(self, off: int, keep_stats: bool) -> None:
        buf = self.buf
        (_ttl, qos, key45, gen, _tcp_flags, _hold, tcp_seq, _rflow) = _A.unpack_from(
            buf, off + L.OFF_FE_PART_A
        )
        (
            flags1,
            _action,
            vrf,
            dvrf,
            _mir,
            _smir,
            _src_nh,
            nb,
            npk,
            bo,
            po,
            _ecmp,
            drop,
            etype,
            _udp_sport,
            _src_info,
            mme,
        ) = _B.unpack_from(buf, off + L.OFF_FE_PART_B)
        key45 = key45[:-1] + b"\x00"
        _A.pack_into(buf, off + L.OFF_FE_PART_A, 0, qos, key45, gen, 0, 0, tcp_seq, -1)
        if not keep_stats:
            nb = npk = bo = po = 0
            etype = L.VP_TYPE_NULL
        _B.pack_into(
            buf,
            off + L.OFF_FE_PART_B,
            flags1 & ~(L.FLAG1_HBS_LEFT | L.FLAG1_HBS_RIGHT),
            L.ACTION_DROP,
            vrf,
            dvrf,
            _NO_MIRROR,
            _NO_MIRROR,
            0,
            nb,
            npk,
            bo,
            po,
            -1,
            drop,
            etype,
            0,
            0,
            mme,
        )

    def _evict(self, index: int) -> None:
        """Evict: ACTIVE off, fields reset (key kept, stats kept), slot freed, then ACTIVE|EVICTED."""
        off = index * L.FLOW_ENTRY_SIZE
        flags = self._flags(index)
        _U16.pack_into(self.buf, off + L.OFF_FE_FLAGS, 0)
        klen = self.buf[off + L.OFF_FE_KEYLEN]
        key = bytes(self.buf[off + L.OFF_FE_KEY : off + L.OFF_FE_KEY + klen])
        if self._index.get(key) == index:
            del self._index[key]
        self._reset_fields(off, keep_stats=True)
        self.ht.release(index)
        kept = flags & (L.FLAG_ACTIVE | L.FLAG_NEW_FLOW | L.FLAG_DELETE_MARKED)
        _U16.pack_into(self.buf, off + L.OFF_FE_FLAGS, kept | L.FLAG_ACTIVE | L.FLAG_EVICTED)

    def _force_evict(self, index: int) -> int:
        """``vr_flow_force_evict``: only an active, dead TCP flow; -EINVAL otherwise."""
        if not self._valid(index):
            return -errno.EINVAL
        e = self.entry(index)
        if e.proto != L.IPPROTO_TCP or not e.tcp_flags & L.TCP_DEAD or not e.flags & L.FLAG_ACTIVE:
            return -errno.EINVAL
        self._evict(index)
        return 0

    # -- vr_flow_table_data ------------------------------------------------------
    def table_data(self, op: int = 2) -> dict[str, Any]:
        """Fields of the ``vr_flow_table_data`` reply."""
        c = self.counters
        created = sum(c.hold_count)
        return {
            "ftable_op": op,
            "ftable_rid": 0,
            "ftable_size": self.size,
            "ftable_dev": 0,
            "ftable_file_path": self.path,
            "ftable_used_entries": self.used_entries,
            "ftable_processed": c.action_count,
            "ftable_deleted": c.deleted,
            "ftable_added": c.added,
            "ftable_created": created,
            "ftable_changed": c.changed,
            "ftable_hold_oflows": c.hold_oflows,
            "ftable_cpus": self.cpus,
            "ftable_oflow_entries": self.used_oflow_entries,
            "ftable_hold_stat": list(c.hold_count),
            "ftable_burst_free_tokens": 0,
            "ftable_hold_entries": max(0, created - c.action_count),
        }


def _ecmp8(v: int) -> int:
    """A request's ECMP index as the entry's signed byte stores it."""
    v &= 0xFF
    return v - 256 if v >= 128 else v


def _signed16(v: int) -> int:
    v &= 0xFFFF
    return v - 0x10000 if v & 0x8000 else v


def _reverse_tcp(rt: int) -> int:
    """TCP bits a new flow inherits from its reverse (``vr_flow_tcp_rflow_set``)."""
    f = 0
    if rt & L.TCP_SYN:
        f |= L.TCP_SYN_R
    if rt & L.TCP_RST:
        f |= L.TCP_RST
    if rt & L.TCP_DEAD:
        f |= L.TCP_DEAD
    if rt & L.TCP_FIN:
        f |= L.TCP_FIN_R
    if rt & L.TCP_ESTABLISHED:
        f |= L.TCP_ESTABLISHED | L.TCP_ESTABLISHED_R
    return f


#: the TCP bits ``_reverse_tcp`` reads, and its answer for each combination of them
_REVERSE_BITS = L.TCP_SYN | L.TCP_RST | L.TCP_DEAD | L.TCP_FIN | L.TCP_ESTABLISHED
_REVERSE_TCP = {
    m: _reverse_tcp(m) for m in range(_REVERSE_BITS + 1) if m & _REVERSE_BITS == m
}

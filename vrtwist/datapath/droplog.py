"""The packet drop log: a ring of recent drops per forwarding core (``vr_pkt_droplog.h``).

The vRouter keeps, per core, the last ``vr_pkt_droplog_bufsz`` dropped packets as packed
``vr_pkt_drop_log_t`` records and hands them out 20 at a time
(``VR_PKT_DROPLOG_MAX_ALLOW_BUFSZ``) in ``vr_pkt_drop_log_req.vdl_pkt_droplog_arr``;
``dropstats --log`` pages through them. Sans-IO: records in, bytes out, and back.

Record layout (x86-64, natural alignment, 168 bytes): ``time_t timestamp`` @0,
``u8 vp_type`` @8, ``u16 drop_reason`` @10, ``u16 vif_idx`` @12, ``u32 nh_id`` @16,
``src`` @20 and ``dst`` @36 (16-byte unions, IPv4 in the first 4 bytes, network order),
``u16 sport`` @52, ``u16 dport`` @54 (host order), ``drop_loc {enum file; u32 line}`` @56,
``u16 pkt_len`` @64, ``u8 pkt_header[100]`` @66.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

#: one ``vr_pkt_drop_log_t``
RECORD = struct.Struct("<qBxHHxxI16s16sHHiIH100s2x")
#: records per vr_pkt_drop_log_req reply
PAGE = 20
#: ``VR_PKT_DROP_LOG_MAX``: default ring size per core
DEFAULT_BUFSZ = 200
#: bytes of the packet kept in a record
HEADER_BYTES = 100

#: ``DROP_RSN_MAP``: drop reason index -> name, as ``dropstats --log`` prints it
_REASON_NAMES = (
    "INVALID VP_DROP_DISCARD VP_DROP_PULL VP_DROP_INVALID_IF VP_DROP_INVALID_ARP "
    "VP_DROP_TRAP_NO_IF VP_DROP_NOWHERE_TO_GO VP_DROP_FLOW_QUEUE_LIMIT_EXCEEDED "
    "VP_DROP_FLOW_NO_MEMORY VP_DROP_FLOW_INVALID_PROTOCOL VP_DROP_FLOW_NAT_NO_RFLOW "
    "VP_DROP_FLOW_ACTION_DROP VP_DROP_FLOW_ACTION_INVALID VP_DROP_FLOW_UNUSABLE "
    "VP_DROP_FLOW_TABLE_FULL VP_DROP_INTERFACE_TX_DISCARD VP_DROP_INTERFACE_DROP "
    "VP_DROP_DUPLICATED VP_DROP_PUSH VP_DROP_TTL_EXCEEDED VP_DROP_INVALID_NH "
    "VP_DROP_INVALID_LABEL VP_DROP_INVALID_PROTOCOL VP_DROP_INTERFACE_RX_DISCARD "
    "VP_DROP_INVALID_MCAST_SOURCE VP_DROP_HEAD_ALLOC_FAIL VP_DROP_PCOW_FAIL "
    "VP_DROP_MCAST_DF_BIT VP_DROP_MCAST_CLONE_FAIL VP_DROP_NO_MEMORY VP_DROP_REWRITE_FAIL "
    "VP_DROP_MISC VP_DROP_INVALID_PACKET VP_DROP_CKSUM_ERR VP_DROP_NO_FMD "
    "VP_DROP_CLONED_ORIGINAL VP_DROP_INVALID_VNID VP_DROP_FRAGMENTS VP_DROP_INVALID_SOURCE "
    "VP_DROP_L2_NO_ROUTE VP_DROP_FRAGMENT_QUEUE_FAIL VP_DROP_VLAN_FWD_TX "
    "VP_DROP_VLAN_FWD_ENQ VP_DROP_NEW_FLOWS VP_DROP_FLOW_EVICT VP_DROP_TRAP_ORIGINAL "
    "VP_DROP_LEAF_TO_LEAF VP_DROP_BMAC_ISID_MISMATCH VP_DROP_PKT_LOOP VP_DROP_NO_CRYPT_PATH "
    "VP_DROP_NO_FRAG_ENTRY VP_DROP_ICMP_ERROR VP_DROP_CLONE_FAIL VP_DROP_MAX"
)
DROP_REASONS: tuple[str, ...] = tuple(_REASON_NAMES.split())


class DropLogError(ValueError):
    """A drop-log array whose length is not a whole number of records."""


@dataclass(frozen=True)
class DropRecord:
    """One dropped packet as the log keeps it."""

    timestamp: int = 0
    vp_type: int = 0
    drop_reason: int = 0
    vif_idx: int = 0
    nh_id: int = 0
    src: bytes = b""
    dst: bytes = b""
    sport: int = 0
    dport: int = 0
    file: int = 0
    line: int = 0
    pkt_len: int = 0
    pkt_header: bytes = b""

    def pack(self) -> bytes:
        return RECORD.pack(
            self.timestamp, self.vp_type, self.drop_reason, self.vif_idx, self.nh_id,
            self.src[:16], self.dst[:16], self.sport, self.dport, self.file, self.line,
            self.pkt_len, self.pkt_header[:HEADER_BYTES],
        )  # fmt: skip


_EMPTY = DropRecord().pack()


def unpack_records(data: bytes) -> Iterator[DropRecord]:
    """The records of a ``vdl_pkt_droplog_arr``; raises DropLogError on a partial record."""
    if len(data) % RECORD.size:
        raise DropLogError(
            "drop log array of %d bytes is not a multiple of %d" % (len(data), RECORD.size)
        )
    for fields in RECORD.iter_unpack(data):
        yield DropRecord(*fields)


class DropLog:
    """Per-core rings of the most recent drops (the owner writes, GET reads)."""

    def __init__(self, cores: int, bufsz: int = DEFAULT_BUFSZ) -> None:
        self.cores = max(1, cores)
        self.bufsz = max(1, bufsz)
        self.clear()

    def clear(self) -> None:
        self._rings = [bytearray(_EMPTY * self.bufsz) for _ in range(self.cores)]
        self._next = [0] * self.cores

    def record(self, core: int, entry: DropRecord) -> None:
        """Log one drop on ``core`` (0-based), overwriting the oldest when full."""
        ring = self._rings[core % self.cores]
        slot = self._next[core % self.cores]
        ring[slot * RECORD.size : (slot + 1) * RECORD.size] = entry.pack()
        self._next[core % self.cores] = (slot + 1) % self.bufsz

    def page(self, core: int, index: int) -> bytes:
        """Records ``index`` .. ``index + 19`` of one core, packed; empty past the end."""
        if not 0 <= index < self.bufsz:
            return b""
        end = min(self.bufsz, index + PAGE)
        return bytes(self._rings[core % self.cores][index * RECORD.size : end * RECORD.size])

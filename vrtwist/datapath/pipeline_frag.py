"""IPv4 fragments and flows: the fragment table and the assembler queue (sans-IO state).

Only the first fragment of an IPv4 packet carries the transport header, so the flow
key's ports of the others come from a fragment table the first one fills, keyed by
(VRF, source and destination address, IP id) as in ``dp-core/vr_fragment.c``. A
fragment that arrives before its first one waits in the assembler (the DPDK vRouter's
``vr_dpdk_fragment_assembler.c``) until the first one has been seen, then goes through
the flow stage again. Both forget what has not been used for two seconds. Time is
given by the caller; nothing here does I/O. No packet is reassembled: fragments are
forwarded as fragments.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = [
    "ASSEMBLER_FRAGMENTS",
    "ASSEMBLER_KEYS",
    "FRAG_TABLE_ENTRIES",
    "FRAG_TIMEOUT",
    "FragKey",
    "FragmentAssembler",
    "FragmentEntry",
    "FragmentTable",
]

#: (VRF, source + destination address bytes, IP id)
FragKey = tuple[int, bytes, int]
#: ``FRAG_TABLE_ENTRIES`` x ``FRAG_TABLE_BUCKETS`` + ``FRAG_OTABLE_ENTRIES``
FRAG_TABLE_ENTRIES = 1024 * 4 + 512
#: seconds an entry (table or assembler) lives after its last use
FRAG_TIMEOUT = 2.0
#: packets whose first fragment is awaited (``VR_MAX_FRAGMENTS_PER_ASSEMBLER_QUEUE``)
ASSEMBLER_KEYS = 256
#: fragments waiting in all (``VR_MAX_FRAGMENTS_PER_CPU_QUEUE``)
ASSEMBLER_FRAGMENTS = 256

T = TypeVar("T")


class FragmentEntry:
    """One packet's ports and how much of it has been seen (``struct vr_fragment``)."""

    __slots__ = ("expected", "ports", "received", "time")

    def __init__(self, ports: bytes, received: int, now: float) -> None:
        self.ports = ports
        self.time = now
        self.expected = 0
        self.received = received


class FragmentTable:
    """Ports of fragmented packets by :data:`FragKey`, bounded, oldest forgotten first."""

    def __init__(self, capacity: int = FRAG_TABLE_ENTRIES, timeout: float = FRAG_TIMEOUT) -> None:
        if capacity <= 0 or timeout <= 0:
            raise ValueError("fragment table capacity and timeout must be positive")
        self.capacity = capacity
        self.timeout = timeout
        self._entries: OrderedDict[FragKey, FragmentEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: FragKey, ports: bytes, payload: int, now: float) -> bool:
        """The first fragment's ports (``vr_fragment_add``); False when the table is full."""
        self.expire(now)
        entries = self._entries
        if key in entries:
            return True
        if len(entries) >= self.capacity:
            return False
        entries[key] = FragmentEntry(ports, payload, now)
        return True

    def get(self, key: FragKey, now: float) -> FragmentEntry | None:
        """The entry for a later fragment, its timer restarted (``vr_fragment_get``)."""
        self.expire(now)
        entry = self._entries.get(key)
        if entry is not None:
            entry.time = now
            self._entries.move_to_end(key)
        return entry

    def peek(self, key: FragKey) -> bytes | None:
        """The ports without touching the entry (hashes that only read them)."""
        entry = self._entries.get(key)
        return entry.ports if entry is not None else None

    def account(self, key: FragKey, entry: FragmentEntry, end: int, last: bool, size: int) -> None:
        """Count ``size`` payload bytes ending at ``end``; the entry goes once all are in."""
        entry.received += size
        if last:
            entry.expected = end
        if entry.expected and entry.received >= entry.expected:
            self._entries.pop(key, None)

    def expire(self, now: float) -> int:
        """Forget entries unused for ``timeout`` seconds; how many went."""
        entries = self._entries
        limit = now - self.timeout
        gone = 0
        while entries:
            key, entry = next(iter(entries.items()))
            if entry.time > limit:
                break
            del entries[key]
            gone += 1
        return gone

    def clear(self) -> None:
        self._entries.clear()


class FragmentAssembler(Generic[T]):
    """Fragments waiting for their first fragment, bounded in packets and in fragments.

    ``hold`` answers which limit refused a fragment: ``"fragments"`` (every slot taken),
    ``"queue"`` (too many packets awaited), or ``""`` when it was taken.
    """

    def __init__(
        self,
        max_keys: int = ASSEMBLER_KEYS,
        max_fragments: int = ASSEMBLER_FRAGMENTS,
        timeout: float = FRAG_TIMEOUT,
    ) -> None:
        if max_keys <= 0 or max_fragments <= 0 or timeout <= 0:
            raise ValueError("assembler limits and timeout must be positive")
        self.max_keys = max_keys
        self.max_fragments = max_fragments
        self.timeout = timeout
        self._queues: OrderedDict[FragKey, tuple[float, list[T]]] = OrderedDict()
        self._held = 0

    def __len__(self) -> int:
        return self._held

    def __contains__(self, key: object) -> bool:
        return key in self._queues

    def hold(self, key: FragKey, item: T, now: float) -> str:
        if self._held >= self.max_fragments:
            return "fragments"
        queues = self._queues
        found = queues.pop(key, None)
        if found is None:
            if len(queues) >= self.max_keys:
                return "queue"
            items: list[T] = []
        else:
            items = found[1]
        items.append(item)
        queues[key] = (now, items)  # re-inserted last: the newest is expired last
        self._held += 1
        return ""

    def release(self, key: FragKey) -> list[T]:
        """The fragments of ``key``, in arrival order, now that their first one is here."""
        found = self._queues.pop(key, None)
        if found is None:
            return []
        self._held -= len(found[1])
        return found[1]

    def expire(self, now: float) -> list[T]:
        """Fragments whose packet saw nothing for ``timeout`` seconds (to be dropped)."""
        queues = self._queues
        if not queues:
            return []
        limit = now - self.timeout
        out: list[T] = []
        while queues:
            key, (when, items) = next(iter(queues.items()))
            if when > limit:
                break
            del queues[key]
            out.extend(items)
        self._held -= len(out)
        return out

    def clear(self) -> list[T]:
        out = [item for _when, items in self._queues.values() for item in items]
        self._queues.clear()
        self._held = 0
        return out

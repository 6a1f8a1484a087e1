"""The vRouter's ``vr_htable`` over a shared buffer: buckets of four, an overflow chain.

Owner side only (the forwarding extension).  The layout it writes is the one
``dp-core/vr_htable.c`` leaves in memory, so any reader that walks buckets and
``hentry_next_index`` chains (or scans linearly, as the utilities do) sees the
same table a real vRouter would have produced for the same inserts.
"""

from __future__ import annotations

import array
import mmap
import struct
from collections.abc import Iterator

from vrtwist.access import SocketAccess, create_private
from vrtwist.shmem import layout as L
from vrtwist.shmem.jhash import jhash, jhash_words5

__all__ = ["HashTable", "create_file", "map_file"]

Buffer = mmap.mmap | bytearray
#: an IPv4 flow key's five little-endian words (``jhash_flow4`` without its call)
_W5 = struct.Struct("<5I").unpack


class HashTable:
    """Index space ``0..entries-1`` (main) then ``entries..entries+oentries-1`` (overflow).

    The free list of overflow entries lives in Python (a stack, head last): the
    real one is a list of kernel pointers that no reader can use either.
    """

    def __init__(
        self,
        buf: Buffer,
        entries: int,
        oentries: int,
        entry_size: int,
        *,
        initialise: bool = True,
    ) -> None:
        if entries <= 0 or entries % L.HENTRIES_PER_BUCKET:
            raise ValueError("entries must be a positive multiple of 4, got %d" % entries)
        if oentries < 0:
            raise ValueError("oentries must be >= 0")
        need = (entries + oentries) * entry_size
        if len(buf) < need:
            raise ValueError("buffer of %d bytes is smaller than the table (%d)" % (len(buf), need))
        self.buf = buf
        self.entries = entries
        self.oentries = oentries
        self.total = entries + oentries
        self.entry_size = entry_size
        self.used_main = 0
        self.used_oflow = 0
        # stack: pop() gives the head of the free list (lowest index first, as at start)
        self._free = array.array("I", range(entries + oentries - 1, entries - 1, -1))
        if initialise:
            self._format()

    def _format(self) -> None:
        """Write hentry_index / next_index / IN_FREE_LIST as ``__vr_htable_create`` does."""
        words = memoryview(self.buf).cast("B")[: self.total * self.entry_size].cast("I")
        stride = self.entry_size // 4
        words[L.OFF_HENTRY_INDEX // 4 :: stride] = array.array("I", range(self.total))
        words[L.OFF_HENTRY_NEXT_INDEX // 4 :: stride] = (
            array.array("I", [L.INVALID_INDEX]) * self.total
        )
        words.release()
        if self.oentries:
            raw = memoryview(self.buf).cast("B")
            start = self.entries * self.entry_size + L.OFF_HENTRY_FLAGS
            end = self.total * self.entry_size
            raw[start : end : self.entry_size] = bytes([L.HENTRY_FLAG_IN_FREE_LIST]) * self.oentries
            raw.release()

    # -- helpers ---------------------------------------------------------------
    def bucket(self, key: bytes) -> int:
        """First main index of the bucket ``key`` hashes to."""
        return (jhash(key) % self.entries) & ~(L.HENTRIES_PER_BUCKET - 1)

    def offset(self, index: int) -> int:
        return index * self.entry_size

    def hentry_flags(self, index: int) -> int:
        return self.buf[index * self.entry_size + L.OFF_HENTRY_FLAGS]

    def is_valid(self, index: int) -> bool:
        return 0 <= index < self.total and bool(
            self.buf[index * self.entry_size + L.OFF_HENTRY_FLAGS] & L.HENTRY_FLAG_VALID
        )

    def next_index(self, index: int) -> int:
        nxt: int = L.U32.unpack_from(self.buf, index * self.entry_size + L.OFF_HENTRY_NEXT_INDEX)[0]
        return nxt

    def chain(self, index: int) -> Iterator[int]:
        """Overflow indices hanging off ``index`` (normally the 4th entry of a bucket)."""
        nxt = self.next_index(index)
        seen = 0
        while nxt != L.INVALID_INDEX and seen <= self.oentries:
            yield nxt
            nxt = self.next_index(nxt)
            seen += 1

    # -- allocation ------------------------------------------------------------
    def allocate(self, key: bytes, hashed: int = -1) -> int | None:
        """Take a free slot for ``key`` as ``vr_htable_find_free_hentry`` does, or None if full.

        ``hashed``: ``jhash(key)`` when the caller has it already (FLOW_SET hashes the
        IPv4 key from its words); the key is then not hashed again.
        """
        buf = self.buf
        size = self.entry_size
        if hashed < 0:
            hashed = jhash_words5(*_W5(key)) if len(key) == 20 else jhash(key)
        b = (hashed % self.entries) & ~3
        off = b * size + L.OFF_HENTRY_FLAGS
        for ind in range(b, b + 4):
            if not buf[off] & L.HENTRY_FLAG_VALID:
                buf[off] = L.HENTRY_FLAG_VALID
                L.U32.pack_into(buf, off - 8, L.INVALID_INDEX)  # hentry_bucket_index
                self.used_main += 1
                return ind
            off += size
        if not self._free:
            return None
        head = b + 3
        o = self._free.pop()
        ooff = o * size
        old_next = L.U32.unpack_from(buf, head * size + L.OFF_HENTRY_NEXT_INDEX)[0]
        L.U32.pack_into(buf, ooff + L.OFF_HENTRY_BUCKET, head)
        L.U32.pack_into(buf, ooff + L.OFF_HENTRY_NEXT_INDEX, old_next)
        buf[ooff + L.OFF_HENTRY_FLAGS] = L.HENTRY_FLAG_VALID
        # link at the head of the chain only once the new entry is complete
        L.U32.pack_into(buf, head * size + L.OFF_HENTRY_NEXT_INDEX, o)
        self.used_oflow += 1
        return o

    def release(self, index: int) -> None:
        """Invalidate ``index``; an overflow entry is unlinked and returned to the free list."""
        buf = self.buf
        size = self.entry_size
        foff = index * size + L.OFF_HENTRY_FLAGS
        if not buf[foff] & L.HENTRY_FLAG_VALID:
            return
        buf[foff] &= ~L.HENTRY_FLAG_VALID & 0xFF
        if index < self.entries:
            self.used_main -= 1
            return
        head = L.U32.unpack_from(buf, index * size + L.OFF_HENTRY_BUCKET)[0]
        my_next = L.U32.unpack_from(buf, index * size + L.OFF_HENTRY_NEXT_INDEX)[0]
        prev = head
        guard = 0
        while prev != L.INVALID_INDEX and guard <= self.oentries + 1:
            nxt = L.U32.unpack_from(buf, prev * size + L.OFF_HENTRY_NEXT_INDEX)[0]
            if nxt == index:
                L.U32.pack_into(buf, prev * size + L.OFF_HENTRY_NEXT_INDEX, my_next)
                break
            prev = nxt
            guard += 1
        L.U32.pack_into(buf, index * size + L.OFF_HENTRY_BUCKET, L.INVALID_INDEX)
        L.U32.pack_into(buf, index * size + L.OFF_HENTRY_NEXT_INDEX, L.INVALID_INDEX)
        buf[foff] = L.HENTRY_FLAG_IN_FREE_LIST
        self._free.append(index)
        self.used_oflow -= 1

    @property
    def free_overflow(self) -> int:
        return len(self._free)


def create_file(path: str, size: int, access: SocketAccess | None = None) -> mmap.mmap:
    """Create (or replace) ``path``, size it and zero it, and map it shared read-write.

    This is what the DPDK vRouter does with ``--no-huge`` for ``flow.shmem`` and
    ``bridge.shmem``: every start begins with an empty table.  Flows and addresses are
    not every local user's to read: the file is 0600 (0640 with ``access``'s group)
    whatever the umask.  It is built as a fresh temporary file renamed over ``path``, so
    a reader that opened an older, looser file keeps only that old one.
    """
    import os

    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = create_private(tmp, access)
    try:
        os.ftruncate(fd, size)
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        os.replace(tmp, path)
        return m
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)


def map_file(path: str, size: int | None = None, *, writable: bool = False) -> mmap.mmap:
    """Map an existing table file (read-only by default, as the utilities do)."""
    import os

    fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        if size is None:
            size = os.fstat(fd).st_size
        if size <= 0:
            raise ValueError("%s is empty" % path)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
    finally:
        os.close(fd)


class TableOwner:
    """What the flow and bridge table owners share: a :class:`HashTable` over their
    block, a key -> index dict, and the sizes reported in ``vrouter_ops`` and
    ``vr_*_table_data``."""

    ht: HashTable
    _index: dict[bytes, int]

    @property
    def entries(self) -> int:
        return self.ht.entries

    @property
    def oentries(self) -> int:
        return self.ht.oentries

    @property
    def size(self) -> int:
        """Bytes of main + overflow table (``ftable_size`` / ``btable_size``)."""
        return self.ht.total * self.ht.entry_size

    @property
    def used_entries(self) -> int:
        return self.ht.used_main + self.ht.used_oflow

    @property
    def used_oflow_entries(self) -> int:
        return self.ht.used_oflow

    def __len__(self) -> int:
        return len(self._index)

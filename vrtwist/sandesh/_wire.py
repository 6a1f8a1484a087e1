"""What the Sandesh encoder, decoder and code generator share: errors, limits, structs.

A leaf of the codec's private modules (:mod:`._encode`, :mod:`._decode`,
:mod:`._codegen` import it; it imports none of them).  The public names are
re-exported by :mod:`vrtwist.sandesh._codec` and :mod:`vrtwist.sandesh`.
"""

from __future__ import annotations

import struct

#: Longest sandesh name accepted on decode (the longest in vr.sandesh is 20).
MAX_NAME_LEN = 128
#: Deepest struct/list nesting the skipper follows before giving up.
MAX_NESTING = 16


class SandeshDecodeError(ValueError):
    """Input is not valid Sandesh; ``offset`` is where in the buffer the problem is."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__("%s (at offset %d)" % (message, offset))
        self.reason = message
        self.offset = offset


class SandeshEncodeError(ValueError):
    """A message cannot be encoded: unknown type, or a field value of the wrong type/range."""


_I32 = struct.Struct(">i")
_I16 = struct.Struct(">h")
_FIELD_HDR = struct.Struct(">Bh")
_LIST_HDR = struct.Struct(">Bi")

#: Shapes (tuples of string/list lengths) remembered per message type.
_SHAPE_CACHE_MAX = 256

# ---------------------------------------------------------------------------------------------
# Structs for lists of n elements, cached for small n.

_LIST_CACHE_MAX = 512
_list_structs: dict[tuple[str, int], struct.Struct] = {}


def _list_struct(fmt: str, n: int) -> struct.Struct:
    key = (fmt, n)
    s = _list_structs.get(key)
    if s is None:
        s = struct.Struct(">%d%s" % (n, fmt))
        if n <= _LIST_CACHE_MAX:
            _list_structs[key] = s
    return s

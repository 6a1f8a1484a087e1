"""The agent's FLOW_SET and the datapath's answer to it at their known layouts, sans-IO.

The agent writes every FLOW_SET as the Sandesh encoder lays out a ``vr_flow_req``: every
field present, in order, the one list empty; the datapath answers each with a
``vr_response`` and a ``vr_flow_response``, every field present too. Those bytes are
the ksync hot path of flow setup (two FLOW_SETs per flow pair), so both ends read them
without the general decoder: the bytes between the values (message names, field
headers, the empty list, the stop bytes) of all the messages of one netlink message are
compared in one big-integer operation, and the values taken in one ``struct`` unpack.
The layout (where each integer field sits, how wide and signed it is, and the bytes
between) is read from the codec's own output at import and checked against the codec's
decoder there; when it does not fit, everything takes the decoder. Bytes that differ
anywhere between the values are not of this layout and take the general decoder too, so
a utility's request, a padded payload or an unusual answer is read as before.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from vrtwist.sandesh import (
    RESPONSE,
    SPECS_BY_NAME,
    SandeshDecodeError,
    SandeshEncodeError,
    decode,
    encode,
)

__all__ = [
    "ANSWER_LAYOUT",
    "REQUEST_LAYOUT",
    "FlowSetValues",
    "Layout",
    "decode_flow_sets",
    "flow_answer",
    "flow_answers",
    "scalar_layout",
]

_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}


class Layout(NamedTuple):
    """One fixed layout of one or more Sandesh messages.

    ``struct`` unpacks, alternately, the constant bytes before each integer field and
    the field's value, then the constant bytes after the last one (what they must be:
    ``gaps``); ``names`` are the integer fields in the order they come.
    """

    struct: struct.Struct
    gaps: tuple[bytes, ...]
    names: tuple[str, ...]
    #: each field's width in bytes, negative for a signed one
    widths: tuple[int, ...]

    @property
    def size(self) -> int:
        return self.struct.size


def _scalars(message: str) -> list[str]:
    """Names of the integer fields of ``message`` (not its strings and lists)."""
    spec = SPECS_BY_NAME[message]
    blank = decode(encode(spec.cls()))[0]
    return [f.name for f in spec.fields if isinstance(getattr(blank, f.name), int)]


def scalar_layout(
    build: Callable[[dict[str, int]], bytes], messages: Sequence[str]
) -> Layout | None:
    """The layout of ``build(values)``: messages ``messages`` concatenated, each with its
    integer fields set from ``values`` (0 when absent). Each field's place, width and
    sign are found by setting it to -1 alone; None when a field does not show up as one
    run of 1, 2, 4 or 8 bytes, or fields overlap (then the codec must be used)."""
    blank = build({})
    places: list[tuple[int, int, str, bool]] = []
    for message in messages:
        for name in _scalars(message):
            marked = build({name: -1})
            diff = [i for i in range(min(len(blank), len(marked))) if blank[i] != marked[i]]
            if len(marked) != len(blank) or len(diff) not in _CODES or (
                diff != list(range(diff[0], diff[0] + len(diff)))
            ):
                return None
            signed = _decoded(marked, name) == -1
            places.append((diff[0], len(diff), name, signed))
    places.sort()
    fmt = ">"
    gaps: list[bytes] = []
    at = 0
    for offset, width, _, signed in places:
        if offset < at:
            return None
        fmt += "%ds%s" % (offset - at, _CODES[width] if signed else _CODES[width].upper())
        gaps.append(blank[at:offset])
        at = offset + width
    fmt += "%ds" % (len(blank) - at)
    gaps.append(blank[at:])
    return Layout(struct.Struct(fmt), tuple(gaps), tuple(p[2] for p in places),
                  tuple(-p[1] if p[3] else p[1] for p in places))


def _decoded(data: bytes, name: str) -> Any:
    """The value of field ``name`` in the first decoded message that has it."""
    for m in decode(data):
        if hasattr(m, name):
            return getattr(m, name)
    raise KeyError(name)


def _sample(layout: Layout, salt: int) -> dict[str, int]:
    """A value in every field, each different, the top bit set in every other one."""
    out = {}
    for i, (name, width) in enumerate(zip(layout.names, layout.widths, strict=True)):
        bits = 8 * abs(width)
        v = (0xA5C3E1F0D2B49687 * (i + salt)) & ((1 << bits) - 1)
        v |= (i & 1) << (bits - 1)
        out[name] = v - (1 << bits) if width < 0 and v >> (bits - 1) else v
    return out


# -- the agent's FLOW_SET ---------------------------------------------------------------

_FLOW_REQ = SPECS_BY_NAME["vr_flow_req"].cls


def _build_request(values: dict[str, int]) -> bytes:
    return encode(_FLOW_REQ(**values))


def _request_maker(layout: Layout) -> Callable[[tuple[int, ...]], Any]:
    """``values -> vr_flow_req``: the object the codec's decoder makes from the scalar
    fields' values (in the layout's order), every field set in declaration order
    (strings and lists empty, as the layout's constant bytes say)."""
    place = {name: i for i, name in enumerate(layout.names)}
    fields = SPECS_BY_NAME["vr_flow_req"].fields
    lines = []
    run: list[str] = []
    at = 0
    for f in (*fields, None):
        if f is not None and f.name in place and place[f.name] == at + len(run):
            run.append("ob.%s" % f.name)
            continue
        if run:  # consecutive fields: one tuple assignment
            lines.append("    (%s,) = v[%d:%d]\n" % (", ".join(run), at, at + len(run)))
            at += len(run)
            run = []
        if f is None:
            break
        if f.name in place:
            if place[f.name] != at:
                raise ValueError("vr_flow_req fields out of order")
            run.append("ob.%s" % f.name)
            continue
        empty = _decoded(_build_request({}), f.name)
        lines.append("    ob.%s = %s\n" % (f.name, "[]" if isinstance(empty, list) else "''"))
    source = "def make(v):\n    ob = _new(_cls)\n%s    return ob\n" % "".join(lines)
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": _FLOW_REQ}
    exec(source, namespace)  # generated from the codec's layout, as the codec's own are
    make: Callable[[tuple[int, ...]], Any] = namespace["make"]
    return make


def _request_layout() -> tuple[Layout, Callable[[tuple[Any, ...]], Any]] | None:
    layout = scalar_layout(_build_request, ["vr_flow_req"])
    if layout is None:
        return None
    try:
        make = _request_maker(layout)
    except ValueError:
        return None
    for salt in (1, 7):
        try:
            values = _sample(layout, salt)
            data = _build_request(values)
            t = layout.struct.unpack(data)
            if t[::2] != layout.gaps:
                return None
            ours = make(t[1::2])
            theirs = decode(data)[0]
        except (SandeshEncodeError, SandeshDecodeError, struct.error):
            return None
        if list(vars(ours).items()) != list(vars(theirs).items()):
            return None
    return layout, make


_REQUEST = _request_layout()
#: The agent's FLOW_SET, or None when the codec's output does not fit one struct.
REQUEST_LAYOUT: Layout | None = _REQUEST[0] if _REQUEST is not None else None


class _Bunch(NamedTuple):
    """``count`` messages of one layout back to back: the bytes between the values as one
    big integer (``mask`` selects them, ``expect`` is what they must be), the values
    kept in one unpack."""

    mask: int
    expect: int
    unpack: Callable[[bytes], tuple[int, ...]]


def _bunch(layout: Layout, count: int, keep: frozenset[str] | None = None) -> _Bunch:
    """The bunch of ``count`` messages of ``layout``, unpacking the fields in ``keep``
    (all when None), in the layout's order."""
    codes = [c for c in layout.struct.format[1:] if c.isalpha() and c != "s"]
    mask = bytearray()
    expect = bytearray()
    fmt = ""
    for gap, width, name, code in zip(layout.gaps, layout.widths, layout.names, codes,
                                      strict=False):
        mask += b"\xff" * len(gap) + bytes(abs(width))
        expect += gap + bytes(abs(width))
        fmt += "%dx%s" % (len(gap), code if keep is None or name in keep else "%dx" % abs(width))
    mask += b"\xff" * len(layout.gaps[-1])
    expect += layout.gaps[-1]
    fmt += "%dx" % len(layout.gaps[-1])
    return _Bunch(int.from_bytes(bytes(mask) * count, "big"),
                  int.from_bytes(bytes(expect) * count, "big"),
                  struct.Struct(">" + fmt * count).unpack)


_BUNCHES: dict[int, _Bunch] = {}


def _read(payload: bytes, size: int, bunches: dict[int, _Bunch], layout: Layout,
          keep: frozenset[str] | None) -> tuple[int, ...] | None:
    """The kept values of every request of ``payload`` (``size`` bytes each), in order;
    None when it is not wholly FLOW_SETs of the agent's layout."""
    count = len(payload) // size
    if not count or len(payload) != count * size:
        return None
    return _matched(payload, count, bunches, layout, keep)


def _matched(payload: bytes, count: int, bunches: dict[int, _Bunch], layout: Layout,
             keep: frozenset[str] | None) -> tuple[int, ...] | None:
    """The kept values of ``payload`` read as ``count`` records of ``layout``, every
    constant byte between them checked in one comparison; None when one differs. The
    bunch of each count is made once (at most 256 kept)."""
    b = bunches.get(count)
    if b is None:
        b = _bunch(layout, count, keep)
        if len(bunches) < 256:
            bunches[count] = b
    if int.from_bytes(payload, "big") & b.mask != b.expect:
        return None
    return b.unpack(payload)


def decode_flow_sets(payload: bytes) -> list[Any] | None:
    """The FLOW_SETs of one bunched request, as ``decode`` would give them; None when
    ``payload`` is not wholly FLOW_SETs of the agent's layout (then decode it)."""
    if _REQUEST is None:
        return None
    layout, make = _REQUEST
    v = _read(payload, layout.struct.size, _BUNCHES, layout, None)
    if v is None:
        return None
    n = len(layout.names)
    return [make(v[o : o + n]) for o in range(0, len(v), n)]


class FlowSetValues:
    """Some integer fields of each of the agent's bunched FLOW_SETs, without an object
    per request: what a table that applies the common requests from their values reads.

    ``names`` are the fields read, in the order their values come (the layout's);
    ``read`` gives them for every request of a payload, ``width`` values each, and
    ``request`` the whole object of one of them, for the general way.
    """

    def __init__(self, keep: Sequence[str]) -> None:
        if _REQUEST is None:
            raise ValueError("the codec's FLOW_SET does not fit one struct")
        layout = _REQUEST[0]
        unknown = set(keep) - set(layout.names)
        if unknown:
            raise ValueError("not integer fields of vr_flow_req: %s" % sorted(unknown))
        self._keep = frozenset(keep)
        self.names: tuple[str, ...] = tuple(n for n in layout.names if n in self._keep)
        self.width = len(self.names)
        self._bunches: dict[int, _Bunch] = {}

    def read(self, payload: bytes) -> tuple[int, ...] | None:
        """The values of every request of ``payload``, ``width`` per request; None when
        it is not wholly FLOW_SETs of the agent's layout (then decode it)."""
        assert _REQUEST is not None
        layout = _REQUEST[0]
        return _read(payload, layout.struct.size, self._bunches, layout, self._keep)

    def request(self, payload: bytes, i: int) -> Any:
        """Request ``i`` of a payload ``read`` accepted, as ``decode`` gives it."""
        assert _REQUEST is not None
        layout, make = _REQUEST
        return make(layout.struct.unpack_from(payload, i * layout.struct.size)[1::2])


# -- the datapath's answer ------------------------------------------------------------------

_RESPONSE = SPECS_BY_NAME["vr_response"].cls
_FLOW_RESPONSE = SPECS_BY_NAME["vr_flow_response"].cls
_RESPONSE_FIELDS = frozenset(_scalars("vr_response"))


def _build_answer(values: dict[str, int]) -> bytes:
    head = {k: v for k, v in values.items() if k in _RESPONSE_FIELDS}
    tail = {k: v for k, v in values.items() if k not in _RESPONSE_FIELDS}
    head.setdefault("h_op", RESPONSE)
    return encode(_RESPONSE(**head)) + encode(_FLOW_RESPONSE(**tail))


def _answer_layout() -> tuple[Layout, int, int, int] | None:
    layout = scalar_layout(_build_answer, ["vr_response", "vr_flow_response"])
    if layout is None:
        return None
    names = layout.names
    try:
        where = tuple(2 * names.index(n) + 1 for n in ("resp_code", "fresp_index", "fresp_gen_id"))
    except ValueError:
        return None
    if list(where) != sorted(where):  # flow_answers reads them in this order
        return None
    for values in ({"resp_code": -22, "fresp_index": 0xFFFFFFFF, "fresp_gen_id": 0xFF},
                   _sample(layout, 3)):  # fmt: skip
        try:
            data = _build_answer(values)
            t = layout.struct.unpack(data)
            resp, fresp = decode(data)
        except (SandeshEncodeError, SandeshDecodeError, struct.error, ValueError):
            return None
        if t[::2] != layout.gaps or (t[where[0]], t[where[1]], t[where[2]]) != (
            resp.resp_code, fresp.fresp_index, fresp.fresp_gen_id
        ):
            return None
    return layout, where[0], where[1], where[2]


_ANSWER = _answer_layout()
#: One answer to a FLOW_SET (vr_response then vr_flow_response), or None.
ANSWER_LAYOUT: Layout | None = _ANSWER[0] if _ANSWER is not None else None


_ANSWER_BUNCHES: dict[int, _Bunch] = {}
_ANSWER_KEEP = frozenset(("resp_code", "fresp_index", "fresp_gen_id"))


def flow_answers(payload: bytes, count: int) -> list[tuple[int, int, int]] | None:
    """``(resp_code, fresp_index, fresp_gen_id)`` of each of ``count`` answers in
    ``payload``, a non-negative code read as 0 (the channel's reading); None when the
    payload is not exactly ``count`` answers of the datapath's layout."""
    if _ANSWER is None:
        return None
    layout = _ANSWER[0]
    if len(payload) != count * layout.struct.size or not count:
        return None
    v = _matched(payload, count, _ANSWER_BUNCHES, layout, _ANSWER_KEEP)
    if v is None:
        return None
    return [(c if c < 0 else 0, i, g) for c, i, g in zip(v[::3], v[1::3], v[2::3], strict=True)]


def _answer_packer() -> Callable[[int, int], bytes] | None:
    """``(index, gen_id) -> bytes``: the answer to a FLOW_SET that succeeded (resp_code
    0, every other field 0 but the index and generation), byte for byte the codec's;
    None when the layout does not allow it (then encode the answer)."""
    if _ANSWER is None:
        return None
    layout = _ANSWER[0]
    offsets: dict[str, int] = {}
    at = 0
    for gap, width, name in zip(layout.gaps, layout.widths, layout.names, strict=False):
        at += len(gap)
        offsets[name] = at
        at += abs(width)
    ix, gx = offsets["fresp_index"], offsets["fresp_gen_id"]
    if (abs(layout.widths[layout.names.index("fresp_index")]) != 4
            or abs(layout.widths[layout.names.index("fresp_gen_id")]) != 1 or gx < ix + 4):
        return None
    blank = _build_answer({})
    s = struct.Struct(">%dsI%dsB%ds" % (ix, gx - ix - 4, len(blank) - gx - 1))
    head, mid, tail = blank[:ix], blank[ix + 4 : gx], blank[gx + 1 :]
    pack = s.pack

    def answer(index: int, gen: int) -> bytes:
        return pack(head, index, mid, gen, tail)

    for index, gen in ((0, 0), (0xFFFFFFFF, 0xFF), (0x89ABCDEF, 0xA5)):
        try:
            ok = answer(index, gen) == _build_answer(
                {"fresp_index": index, "fresp_gen_id": gen})
        except (SandeshEncodeError, struct.error):
            return None
        if not ok:
            return None
    return answer


#: The answer to a FLOW_SET that succeeded, from the entry's index and generation, or
#: None when the codec's answer does not fit (then encode it).
flow_answer: Callable[[int, int], bytes] | None = _answer_packer()

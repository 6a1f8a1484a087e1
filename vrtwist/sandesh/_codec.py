"""Sandesh binary encoder and decoder (spec section 1), sans-IO.

Three decoding paths, all producing identical results:

* per shape (the string/list lengths of a message type, learned when seen twice): a
  mask check proving the layout, one ``unpack_from``, one tuple assignment into the
  object's attributes;
* per type: one precompiled ``struct.Struct`` per run of fixed-size fields (headers
  included and checked), for fields in declaration order, which every real encoder emits;
* a generic field walker that follows the C decoder's rules (any order, unknown ids
  and mismatched wire types skipped, missing fields zero-filled) and reports precise
  errors. The faster paths hand over to it whenever anything looks unusual.

Encoding packs a whole message with one cached Struct per shape; unusual values go to a
generic encoder that normalises them or names the bad field. All generated code comes
from the schema (vr.thrift) and is compiled on first use of each type.

Every length read from the wire is checked against the bytes actually present before
it is used, so hostile input can neither over-read nor make us allocate more than a
small multiple of its own size. The thriftpy2 Cython decoder is never used.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

from vrtwist.sandesh._schema import (
    SCALAR_FORMAT,
    SCALAR_SIZE,
    SPECS_BY_CLASS,
    SPECS_BY_NAME,
    T_BOOL,
    T_BYTE,
    T_DOUBLE,
    T_I16,
    T_I32,
    T_I64,
    T_IPADDR,
    T_IPV4,
    T_LIST,
    T_MAP,
    T_SET,
    T_STOP,
    T_STRING,
    T_STRUCT,
    T_U16,
    T_U32,
    T_U64,
    T_UUID,
    T_XML,
    FieldSpec,
    MessageSpec,
)

__all__ = [
    "SandeshDecodeError",
    "SandeshEncodeError",
    "encode",
    "encode_many",
    "decode",
    "decode_one",
    "MAX_NAME_LEN",
    "MAX_NESTING",
]

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

_BITS = {T_BYTE: 8, T_I16: 16, T_U16: 16, T_I32: 32, T_U32: 32, T_I64: 64, T_U64: 64}
_SIGNED = {
    T_BYTE: False,
    T_I16: True,
    T_U16: False,
    T_I32: True,
    T_U32: False,
    T_I64: True,
    T_U64: False,
}

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


# ---------------------------------------------------------------------------------------------
# Generic (slow, exact) encoder.


def _norm_int(f: FieldSpec, code: int, v: Any) -> int:
    """Accept either signedness of the declared width; return the value for the format."""
    if v is None:
        return 0
    if not isinstance(v, int):
        raise SandeshEncodeError(
            "field %s: expected an integer, got %r" % (f.name, type(v).__name__)
        )
    bits = _BITS[code]
    if not -(1 << (bits - 1)) <= v < (1 << bits):
        raise SandeshEncodeError("field %s: %d does not fit in %s" % (f.name, v, f.type_name))
    if _SIGNED[code]:
        if v >= 1 << (bits - 1):
            v -= 1 << bits
    elif v < 0:
        v += 1 << bits
    return int(v)


def _string_bytes(f: FieldSpec, v: Any) -> bytes:
    if v is None:
        return b""
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape")
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise SandeshEncodeError("field %s: expected a string, got %r" % (f.name, type(v).__name__))


def _encode_field_slow(f: FieldSpec, v: Any, out: list[bytes]) -> None:
    if f.wire == T_STRING:
        b = _string_bytes(f, v)
        if len(b) > 0x7FFFFFFF:
            raise SandeshEncodeError("field %s: string too long" % f.name)
        out.append(_FIELD_HDR.pack(T_STRING, f.fid) + _I32.pack(len(b)) + b)
    elif f.wire == T_LIST:
        if v is None:
            items: list[Any] = []
        elif isinstance(v, (bytes, bytearray, memoryview)):
            items = list(bytes(v))
        elif isinstance(v, (list, tuple)):
            items = list(v)
        else:
            raise SandeshEncodeError(
                "field %s: expected a list, got %r" % (f.name, type(v).__name__)
            )
        vals = [_norm_int(f, f.elem, x) for x in items]
        fmt = SCALAR_FORMAT[f.elem]
        out.append(
            _FIELD_HDR.pack(T_LIST, f.fid)
            + _LIST_HDR.pack(f.elem, len(vals))
            + _list_struct(fmt, len(vals)).pack(*vals)
        )
    else:
        out.append(
            _FIELD_HDR.pack(f.wire, f.fid)
            + struct.pack(">" + SCALAR_FORMAT[f.wire], _norm_int(f, f.wire, v))
        )


def _encode_slow(spec: MessageSpec, msg: Any) -> bytes:
    name = spec.name.encode()
    out = [_I32.pack(len(name)), name]
    for f in spec.fields:
        try:
            v = getattr(msg, f.name)
        except AttributeError:
            v = None
        _encode_field_slow(f, v, out)
    out.append(b"\x00")
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# Code generation of the fast paths.


def _segments(spec: MessageSpec) -> list[tuple[list[FieldSpec], FieldSpec | None]]:
    """Split the fields into runs of fixed-size fields, each closed by one variable field."""
    segs: list[tuple[list[FieldSpec], FieldSpec | None]] = []
    run: list[FieldSpec] = []
    for f in spec.fields:
        if f.wire in (T_STRING, T_LIST):
            segs.append((run, f))
            run = []
        else:
            run.append(f)
    segs.append((run, None))
    return segs


def _var_fields(spec: MessageSpec) -> list[FieldSpec]:
    return [f for f in spec.fields if f.wire in (T_STRING, T_LIST)]


#: Most arguments per generated ``pack`` call: CPython compiles calls with more than 30
#: positional arguments into a list build plus ``CALL_FUNCTION_EX``, which costs more than
#: a second call.
_ENCODE_CHUNK = 30


def _gen_encoder(spec: MessageSpec) -> Callable[[Any], bytes]:
    """Encoder packing a message with one ``struct.Struct`` call per 30 arguments.

    The constant bytes (name, each field header) are bytes literals in the generated code,
    passed as ``s`` items, so each field costs one constant and one value. The header of a
    string or list includes its length, so it comes from the shape entry: a message's
    *shape* (its string byte lengths and list element counts) selects cached Structs and
    those headers. ``list<byte>`` values go in as ``bytes(v)`` (which also range-checks
    them), other lists element by element with ``*``. Values the fast path cannot take
    as they are (``None``, the other signedness, wrong types) make it raise, and the
    generic encoder takes over, normalising or naming the field.
    """
    name = spec.name.encode()
    ns: dict[str, Any] = {"_bytes": bytes}
    lines = ["def enc(o):"]
    # (argument expression, its format; or None and what it is: "h"ead/"v"alue, field index)
    items: list[tuple[str, str | None, str, int]] = []
    keys: list[str] = []
    hnames: list[str] = []
    pending = _I32.pack(len(name)) + name
    for k, f in enumerate(spec.fields):
        pending += _FIELD_HDR.pack(f.wire, f.fid)
        if f.wire == T_STRING:
            lines.append("    b%d = o.%s.encode('utf-8', 'surrogateescape')" % (k, f.name))
            keys.append("len(b%d)" % k)
            items.append(("h%d" % k, None, "h", k))
            items.append(("b%d" % k, None, "v", k))
            hnames.append("h%d" % k)
        elif f.wire == T_LIST:
            lines.append("    v%d = o.%s" % (k, f.name))
            keys.append("len(v%d)" % k)
            items.append(("h%d" % k, None, "h", k))
            items.append(("_bytes(v%d)" % k if f.elem == T_BYTE else "*v%d" % k, None, "v", k))
            hnames.append("h%d" % k)
        else:
            items.append((repr(pending), "%ds" % len(pending), "", k))
            items.append(("o.%s" % f.name, SCALAR_FORMAT[f.wire], "", k))
            pending = b""
            continue
        # The constant part of a var field's header is merged into its shape-dependent part.
        ns["P%d" % k] = pending
        pending = b""
    chunks = [items[i : i + _ENCODE_CHUNK] for i in range(0, len(items), _ENCODE_CHUNK)]
    var = [f for f in spec.fields if f.wire in (T_STRING, T_LIST)]
    var_index = [k for k, f in enumerate(spec.fields) if f.wire in (T_STRING, T_LIST)]

    def formats(lens: tuple[int, ...]) -> tuple[list[str], list[bytes]]:
        by_k = dict(zip(var_index, lens, strict=True))
        heads: list[bytes] = []
        fmts: list[str] = []
        for chunk in chunks:
            fmt = ">"
            for _, f, kind, k in chunk:
                if f is not None:
                    fmt += f
                    continue
                n = by_k[k]
                fs = spec.fields[k]
                if kind == "h":
                    h = ns["P%d" % k]
                    h += _I32.pack(n) if fs.wire == T_STRING else _LIST_HDR.pack(fs.elem, n)
                    heads.append(h)
                    fmt += "%ds" % len(h)
                elif fs.wire == T_STRING or fs.elem == T_BYTE:
                    fmt += "%ds" % n
                else:
                    fmt += "%d%s" % (n, SCALAR_FORMAT[fs.elem])
            fmts.append(fmt)
        fmts[-1] += "x"
        return fmts, heads

    def calls(packs: list[str]) -> str:
        parts = [
            "%s(%s)" % (p, ", ".join(item[0] for item in c))
            for p, c in zip(packs, chunks, strict=True)
        ]
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:
            return "%s + %s" % tuple(parts)
        return "b''.join((%s))" % ", ".join(parts)

    packs = ["_p%d" % i for i in range(len(chunks))]
    if not var:
        fmts, _ = formats(())
        for p, fmt in zip(packs, fmts, strict=True):
            ns[p] = struct.Struct(fmt).pack
        lines.append("    return %s" % calls(packs))
    else:
        cache: dict[tuple[int, ...], tuple[Any, ...]] = {}

        def shape(key: tuple[int, ...]) -> tuple[Any, ...]:
            if any(n < 0 for n in key):
                raise ValueError("negative length")
            fmts, heads = formats(key)
            entry = tuple(struct.Struct(fmt).pack for fmt in fmts) + tuple(heads)
            if len(cache) >= _SHAPE_CACHE_MAX:
                cache.clear()
            cache[key] = entry
            return entry

        ns["_cache"] = cache
        ns["_mk"] = shape
        lines.append("    k = (%s,)" % ", ".join(keys))
        lines.append("    %s, = _cache.get(k) or _mk(k)" % ", ".join(packs + hnames))
        lines.append("    return %s" % calls(packs))
    src = "\n".join(lines) + "\n"
    exec(compile(src, "<vrtwist.sandesh encode %s>" % spec.name, "exec"), ns)
    fn: Callable[[Any], bytes] = ns["enc"]
    return fn


def _gen_encoder_masked(spec: MessageSpec) -> Callable[[Any], bytes]:
    """Encoder for messages with lists of wider elements (passed with ``*``).

    Packing header bytes as arguments would push such calls past 30 arguments; here one
    Struct packs only the values and the constant bytes are OR-ed in as one big integer.

    A shape is the tuple of string byte lengths and list element counts. Per shape the
    codec caches a Struct that packs only the values (name, field headers, lengths and
    T_STOP are pad bytes; list elements are passed with ``*``, so the Struct range-checks
    them) and the integer form of those constant bytes, OR-ed in after packing. A message
    costs one ``pack`` and three big-integer operations however many fields it has; that
    measured faster than passing the headers as arguments. Messages without strings or
    lists pass their headers as arguments to one fixed Struct.
    """
    name = spec.name.encode()
    var = _var_fields(spec)
    ns: dict[str, Any] = {"_frombytes": int.from_bytes}
    lines = ["def enc(o):"]
    values: list[str] = []
    for f in spec.fields:
        if f.wire == T_STRING:
            lines.append("    b%d = o.%s.encode('utf-8', 'surrogateescape')" % (f.fid, f.name))
            values.append("b%d" % f.fid)
        elif f.wire == T_LIST:
            lines.append("    v%d = o.%s" % (f.fid, f.name))
            values.append("*v%d" % f.fid)
        else:
            values.append("o.%s" % f.name)
    if not var:
        fmt = ">i%ds" % len(name) + "".join("Bh" + SCALAR_FORMAT[f.wire] for f in spec.fields) + "x"
        args = [str(len(name)), "_NAME"]
        for f in spec.fields:
            args += [str(f.wire), str(f.fid), "o.%s" % f.name]
        ns["S"] = struct.Struct(fmt)
        ns["_NAME"] = name
        lines.append("    return S.pack(%s)" % ", ".join(args))
    else:
        cache: dict[tuple[int, ...], tuple[Any, int, int]] = {}

        def shape(key: tuple[int, ...]) -> tuple[Any, int, int]:
            fmt = ">%dx" % (4 + len(name))
            const = bytearray(_I32.pack(len(name)) + name)
            it = iter(key)
            for f in spec.fields:
                const += _FIELD_HDR.pack(f.wire, f.fid)
                if f.wire == T_STRING:
                    n = next(it)
                    const += _I32.pack(n) + bytes(n)
                    fmt += "7x%ds" % n
                elif f.wire == T_LIST:
                    n = next(it)
                    const += _LIST_HDR.pack(f.elem, n) + bytes(n * SCALAR_SIZE[f.elem])
                    fmt += "8x%d%s" % (n, SCALAR_FORMAT[f.elem])
                else:
                    const += bytes(SCALAR_SIZE[f.wire])
                    fmt += "3x" + SCALAR_FORMAT[f.wire]
            const += b"\x00"
            fmt += "x"
            s = struct.Struct(fmt)
            assert s.size == len(const)
            entry = (s.pack, int.from_bytes(const, "big"), s.size)
            if len(cache) >= _SHAPE_CACHE_MAX:
                cache.clear()
            cache[key] = entry
            return entry

        ns["_cache"] = cache
        ns["_mk"] = shape
        lines.append(
            "    k = (%s,)"
            % ", ".join(("len(b%d)" if f.wire == T_STRING else "len(v%d)") % f.fid for f in var)
        )
        lines.append("    p, c, n = _cache.get(k) or _mk(k)")
        lines.append(
            "    return (_frombytes(p(%s), 'big') | c).to_bytes(n, 'big')" % ", ".join(values)
        )
    src = "\n".join(lines) + "\n"
    exec(compile(src, "<vrtwist.sandesh encode %s>" % spec.name, "exec"), ns)
    fn: Callable[[Any], bytes] = ns["enc"]
    return fn


#: Shapes (tuples of string/list lengths) remembered per message type.
_SHAPE_CACHE_MAX = 256
#: Decoders compiled for a shape after it has been seen this many times.
_SHAPE_COMPILE_AFTER = 2
_SHAPES_COMPILED_MAX = 32
_RECENT_SHAPES = 3

_SegmentDecoder = Callable[[bytes, int, int], "tuple[Any, int, tuple[int, ...]] | None"]


def _gen_decoder(spec: MessageSpec) -> _SegmentDecoder:
    """Decoder for fields in declaration order, one Struct per run of fixed-size fields.

    Returns (object, offset after T_STOP, shape) or None to ask for the generic path.
    """
    ns: dict[str, Any] = {"_ls": _list_struct, "_new": object.__new__, "_cls": spec.cls}
    lines = ["def dec(buf, o, end):", "    ob = _new(_cls)"]
    lens: list[str] = []
    for k, (run, var) in enumerate(_segments(spec)):
        fmt = ">"
        types: list[int] = []
        ids: list[int] = []
        for f in run:
            fmt += "Bh" + SCALAR_FORMAT[f.wire]
            types.append(f.wire)
            ids.append(f.fid)
        if var is not None:
            fmt += "Bhi" if var.wire == T_STRING else "Bhxi"
            types.append(var.wire)
            ids.append(var.fid)
        if not types:
            continue
        s = struct.Struct(fmt)
        ns["S%d" % k] = s
        ns["TY%d" % k] = tuple(types)
        ns["ID%d" % k] = tuple(ids)
        lines.append("    t%d = S%d.unpack_from(buf, o)" % (k, k))
        lines.append("    if t%d[0::3] != TY%d or t%d[1::3] != ID%d: return None" % (k, k, k, k))
        lines.append("    o += %d" % s.size)
        # Unpack straight into the attributes (declaration order; inline values).
        targets = []
        for f in run:
            targets += ["_", "_", "ob.%s" % f.name]
        if var is None:
            lines.append("    (%s,) = t%d" % (", ".join(targets), k))
            continue
        n = "n%d" % var.fid
        v = "ob.%s" % var.name
        lens.append(n)
        targets += ["_", "_", n]
        lines.append("    (%s,) = t%d" % (", ".join(targets), k))
        if var.wire == T_STRING:
            lines.append("    if %s > 0:" % n)
            lines.append("        e = o + %s" % n)
            lines.append("        if e > end: return None")
            lines.append("        %s = buf[o:e].decode('utf-8', 'surrogateescape')" % v)
            lines.append("        o = e")
            lines.append("    else:")
            lines.append("        %s = ''" % v)
        elif var.elem == T_BYTE:
            lines.append("    e = o + %s" % n)
            lines.append("    if %s < 0 or e > end: return None" % n)
            lines.append("    %s = list(buf[o:e])" % v)
            lines.append("    o = e")
        else:
            size = SCALAR_SIZE[var.elem]
            lines.append("    if %s:" % n)
            lines.append("        e = o + %d * %s" % (size, n))
            lines.append("        if %s < 0 or e > end: return None" % n)
            lines.append(
                "        %s = list(_ls(%r, %s).unpack_from(buf, o))"
                % (v, SCALAR_FORMAT[var.elem], n)
            )
            lines.append("        o = e")
            lines.append("    else:")
            lines.append("        %s = []" % v)
    lines.append("    if o >= end or buf[o] != 0: return None")
    lines.append("    return ob, o + 1, (%s)" % "".join(x + ", " for x in lens))
    src = "\n".join(lines) + "\n"
    exec(compile(src, "<vrtwist.sandesh decode %s>" % spec.name, "exec"), ns)
    fn: _SegmentDecoder = ns["dec"]
    return fn


_ShapeDecoder = Callable[[bytes, int, int], "tuple[Any, int] | None"]
_WholeDecoder = Callable[[bytes], Any]


def _compile_shape(
    spec: MessageSpec, lens: tuple[int, ...]
) -> tuple[_ShapeDecoder, _WholeDecoder, int]:
    """Decoders for one shape of a message: a mask check, one unpack into the attributes.

    The mask covers the name, every field header, string/list length, list element type
    and the T_STOP byte, so one big-integer comparison proves the input has exactly this
    layout. The unpack yields one item per field (strings and lists as raw bytes) and is
    assigned straight to the new object's attributes in declaration order (``(ob.a, ob.b,
    ...) = t``: CPython stores those as inline values, about twice as fast as building a
    dict); then the few strings and lists are converted in place.

    Returns ``dec(buf, o, end) -> (obj, end of message) | None`` for a message starting at
    ``o``, ``whole(buf) -> obj | None`` for a buffer of exactly ``size`` bytes holding just
    this message (the caller checks the length), and ``size``.
    """
    name = spec.name.encode()
    fmt = ">%dx" % (4 + len(name))
    expect = bytearray()
    maskb = bytearray()
    fixups: list[str] = []
    it = iter(lens)

    def fixed(data: bytes) -> None:
        expect.extend(data)
        maskb.extend(b"\xff" * len(data))

    def free(n: int) -> None:
        expect.extend(bytes(n))
        maskb.extend(bytes(n))

    fixed(_I32.pack(len(name)) + name)
    for f in spec.fields:
        fixed(_FIELD_HDR.pack(f.wire, f.fid))
        a = "ob.%s" % f.name
        if f.wire == T_STRING:
            n = next(it)
            fixed(_I32.pack(n))
            free(n)
            fmt += "7x%ds" % n
            fixups.append(
                "%s = %s.decode('utf-8', 'surrogateescape')" % (a, a) if n else "%s = ''" % a
            )
        elif f.wire == T_LIST:
            n = next(it)
            fixed(_LIST_HDR.pack(f.elem, n))
            size = SCALAR_SIZE[f.elem]
            free(n * size)
            fmt += "8x%ds" % (n * size)
            if not n:
                fixups.append("%s = []" % a)
            elif f.elem == T_BYTE:
                fixups.append("%s = list(%s)" % (a, a))
            else:
                fixups.append(
                    "%s = list(_ls(%r, %d).unpack(%s))" % (a, SCALAR_FORMAT[f.elem], n, a)
                )
        else:
            free(SCALAR_SIZE[f.wire])
            fmt += "3x" + SCALAR_FORMAT[f.wire]
    fixed(b"\x00")
    fmt += "x"
    s = struct.Struct(fmt)
    assert s.size == len(expect)
    ns: dict[str, Any] = {
        "_new": object.__new__,
        "_cls": spec.cls,
        "_unpack_from": s.unpack_from,
        "_unpack": s.unpack,
        "_frombytes": int.from_bytes,
        "_ls": _list_struct,
        "MASK": int.from_bytes(maskb, "big"),
        "EXPECT": int.from_bytes(expect, "big"),
    }
    targets = ", ".join("ob.%s" % f.name for f in spec.fields)
    fix = "".join("    %s\n" % x for x in fixups)
    src = (
        "def dec(buf, o, end):\n"
        "    e = o + %d\n"
        "    if e > end or _frombytes(buf[o:e], 'big') & MASK != EXPECT: return None\n"
        "    ob = _new(_cls)\n"
        "    (%s,) = _unpack_from(buf, o)\n"
        "%s"
        "    return ob, e\n"
        "def whole(buf):\n"
        "    if _frombytes(buf, 'big') & MASK != EXPECT: return None\n"
        "    ob = _new(_cls)\n"
        "    (%s,) = _unpack(buf)\n"
        "%s"
        "    return ob\n" % (s.size, targets, fix, targets, fix)
    )
    exec(compile(src, "<vrtwist.sandesh shape %s>" % spec.name, "exec"), ns)
    return ns["dec"], ns["whole"], s.size


#: Buffer length -> the decoder of the most recently used compiled shape of that total
#: size. ``decode`` of a buffer holding exactly one message (a request, a bare vr_response)
#: tries it first: one dict lookup by length, one mask check, one unpack.
_WHOLE: dict[int, _WholeDecoder] = {}


class _TypeDecoder:
    """Everything needed to decode one message type, with its shape-learning state."""

    __slots__ = (
        "spec",
        "plen",
        "segments",
        "mru",
        "mru_whole",
        "recent",
        "shapes",
        "wholes",
        "seen",
    )

    def __init__(self, spec: MessageSpec) -> None:
        self.spec = spec
        self.plen = 4 + len(spec.name.encode())
        self.segments: _SegmentDecoder | None = None  # generated on first use
        #: The shape tried first (``dec`` of ``_compile_shape``) and its ``whole``.
        self.mru: _ShapeDecoder | None = None
        self.mru_whole: _WholeDecoder | None = None
        #: Other recently used shapes, tried before the segment path (a process that both
        #: sends requests and receives objects of one type alternates between shapes).
        self.recent: list[_ShapeDecoder] = []
        self.shapes: dict[tuple[int, ...], _ShapeDecoder] = {}
        #: ``dec`` -> (``whole``, size) of each compiled shape.
        self.wholes: dict[_ShapeDecoder, tuple[_WholeDecoder, int]] = {}
        self.seen: dict[tuple[int, ...], int] = {}

    def learn(self, lens: tuple[int, ...]) -> None:
        """Note a shape decoded by the segment path; compile it once it recurs."""
        sh = self.shapes.get(lens)
        if sh is None:
            count = self.seen.get(lens, 0) + 1
            if count < _SHAPE_COMPILE_AFTER or len(self.shapes) >= _SHAPES_COMPILED_MAX:
                if len(self.seen) >= _SHAPE_CACHE_MAX:
                    self.seen.clear()
                self.seen[lens] = count
                return
            if any(n < 0 for n in lens):
                return
            self.seen.pop(lens, None)
            sh, whole, size = _compile_shape(self.spec, lens)
            self.shapes[lens] = sh
            self.wholes[sh] = (whole, size)
        self.promote(sh)

    def promote(self, sh: _ShapeDecoder) -> None:
        """Make ``sh`` the first shape tried; keep the previous ones as second choices."""
        old = self.mru
        if old is sh:
            return
        if sh in self.recent:
            self.recent.remove(sh)
        if old is not None:
            self.recent.insert(0, old)
            del self.recent[_RECENT_SHAPES:]
        self.mru = sh
        whole, size = self.wholes[sh]
        self.mru_whole = whole
        _WHOLE[size] = whole


# ---------------------------------------------------------------------------------------------
# Generic (slow, exact) decoder.

_FIXED_SKIP = {
    T_BOOL: 1,
    T_BYTE: 1,
    T_I16: 2,
    T_U16: 2,
    T_I32: 4,
    T_U32: 4,
    T_IPV4: 4,
    T_I64: 8,
    T_U64: 8,
    T_DOUBLE: 8,
    T_UUID: 16,
}
_SKIPPABLE = frozenset(_FIXED_SKIP) | {T_STRING, T_XML, T_STRUCT, T_LIST, T_SET, T_MAP, T_IPADDR}
_AF_INET = 2
_AF_INET6 = 10


def _need(o: int, n: int, end: int, what: str) -> None:
    if n > end - o:
        raise SandeshDecodeError(
            "truncated %s: need %d bytes, %d left" % (what, n, max(end - o, 0)), o
        )


def _skip(t: int, buf: bytes, o: int, end: int, depth: int) -> int:
    """Return the offset after one value of wire type ``t`` (thrift_protocol.c skip rules)."""
    if depth > MAX_NESTING:
        raise SandeshDecodeError("nesting deeper than %d" % MAX_NESTING, o)
    size = _FIXED_SKIP.get(t)
    if size is not None:
        _need(o, size, end, "value of type %d" % t)
        return o + size
    if t in (T_STRING, T_XML):
        _need(o, 4, end, "string length")
        n = _I32.unpack_from(buf, o)[0]
        o += 4
        if n > 0:
            _need(o, n, end, "string")
            o += n
        return o
    if t == T_STRUCT:
        while True:
            _need(o, 1, end, "struct field type")
            ft = buf[o]
            if ft == T_STOP:
                return o + 1
            _need(o + 1, 2, end, "struct field id")
            o = _skip(ft, buf, o + 3, end, depth + 1)
    if t in (T_LIST, T_SET):
        _need(o, 5, end, "list header")
        et, n = _LIST_HDR.unpack_from(buf, o)
        if n < 0:
            raise SandeshDecodeError("negative list size %d" % n, o + 1)
        o += 5
        return _skip_n(et, n, buf, o, end, depth)
    if t == T_MAP:
        _need(o, 6, end, "map header")
        kt, vt = buf[o], buf[o + 1]
        n = _I32.unpack_from(buf, o + 2)[0]
        if n < 0:
            raise SandeshDecodeError("negative map size %d" % n, o + 2)
        o += 6
        ks, vs = _FIXED_SKIP.get(kt), _FIXED_SKIP.get(vt)
        if ks is not None and vs is not None:
            _need(o, n * (ks + vs), end, "map")
            return o + n * (ks + vs)
        for _ in range(n):
            o = _skip(kt, buf, o, end, depth + 1)
            o = _skip(vt, buf, o, end, depth + 1)
        return o
    if t == T_IPADDR:
        _need(o, 1, end, "ipaddr family")
        fam = buf[o]
        if fam == _AF_INET:
            _need(o + 1, 4, end, "ipaddr")
            return o + 5
        if fam == _AF_INET6:
            _need(o + 1, 16, end, "ipaddr")
            return o + 17
        raise SandeshDecodeError("unknown ipaddr family %d" % fam, o)
    raise SandeshDecodeError("unknown wire type %d" % t, o)


def _skip_n(et: int, n: int, buf: bytes, o: int, end: int, depth: int) -> int:
    size = _FIXED_SKIP.get(et)
    if size is not None:
        _need(o, n * size, end, "list of %d elements" % n)
        return o + n * size
    if n and et not in _SKIPPABLE:
        raise SandeshDecodeError("unknown list element type %d" % et, o - 5)
    # Every variable-size element takes at least one byte, so this loop is bounded by the input.
    for _ in range(n):
        o = _skip(et, buf, o, end, depth + 1)
    return o


#: Scalar wire codes read as a one-element list of a list field with this element code.
_SAME_WIDTH: dict[int, tuple[int, ...]] = {
    T_BYTE: (T_BYTE,),
    T_I16: (T_I16, T_U16),
    T_U16: (T_I16, T_U16),
    T_I32: (T_I32, T_U32),
    T_U32: (T_I32, T_U32),
    T_I64: (T_I64, T_U64),
    T_U64: (T_I64, T_U64),
}


def _zero_values(spec: MessageSpec) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for f in spec.fields:
        d[f.name] = [] if f.wire == T_LIST else ("" if f.wire == T_STRING else 0)
    return d


def _decode_fields_slow(spec: MessageSpec, buf: bytes, o: int, end: int) -> tuple[Any, int]:
    by_id = spec.by_id
    values = _zero_values(spec)
    while True:
        if o >= end:
            raise SandeshDecodeError("truncated %s: no T_STOP" % spec.name, o)
        t = buf[o]
        if t == T_STOP:
            o += 1
            break
        _need(o + 1, 2, end, "field header")
        fid = _I16.unpack_from(buf, o + 1)[0]
        start = o
        o += 3
        f = by_id.get(fid)
        if f is not None and f.wire == T_LIST and t != T_LIST and t in _SAME_WIDTH.get(f.elem, ()):
            # Old layout: a scalar where the newest vr.sandesh declares a list
            # (nhr_encap_oif_id, vifr_cross_connect_idx were i32 until 2020/2021).
            size = SCALAR_SIZE[t]
            _need(o, size, end, "%s" % f.name)
            values[f.name] = [struct.unpack_from(">" + SCALAR_FORMAT[f.elem], buf, o)[0]]
            o += size
            continue
        if f is None or f.wire != t:
            if t not in _SKIPPABLE:
                raise SandeshDecodeError("unknown wire type %d (field id %d)" % (t, fid), start)
            o = _skip(t, buf, o, end, 0)
            continue
        if t == T_STRING:
            _need(o, 4, end, "length of %s" % f.name)
            n = _I32.unpack_from(buf, o)[0]
            o += 4
            if n > 0:
                _need(o, n, end, "%s" % f.name)
                values[f.name] = buf[o : o + n].decode("utf-8", "surrogateescape")
                o += n
            else:
                values[f.name] = ""
        elif t == T_LIST:
            _need(o, 5, end, "list header of %s" % f.name)
            n = _I32.unpack_from(buf, o + 1)[0]  # element type byte ignored, as in C
            if n < 0:
                raise SandeshDecodeError("negative list size %d in %s" % (n, f.name), o + 1)
            o += 5
            size = SCALAR_SIZE[f.elem]
            _need(o, n * size, end, "%s (%d elements)" % (f.name, n))
            if f.elem == T_BYTE:
                values[f.name] = list(buf[o : o + n])
            else:
                values[f.name] = list(_list_struct(SCALAR_FORMAT[f.elem], n).unpack_from(buf, o))
            o += n * size
        else:
            size = SCALAR_SIZE[t]
            _need(o, size, end, "%s" % f.name)
            values[f.name] = struct.unpack_from(">" + SCALAR_FORMAT[t], buf, o)[0]
            o += size
        del start
    ob: Any = object.__new__(spec.cls)
    ob.__dict__ = values
    return ob, o


# ---------------------------------------------------------------------------------------------
# Tables and the public functions.

_ENCODERS: dict[type, tuple[Callable[[Any], bytes], MessageSpec]] = {}
_DECODERS: dict[bytes, _TypeDecoder] = {}
#: Keyed by the first 4 + N bytes of a message (i32 name length + name).
_BY_PREFIX: dict[bytes, _TypeDecoder] = {}

# Encoders and decoders are generated on first use of each type (start-up time matters for
# the command-line tools, which use two or three types).
for _spec in SPECS_BY_NAME.values():
    _td = _DECODERS[_spec.name.encode()] = _TypeDecoder(_spec)
    _BY_PREFIX[_I32.pack(len(_spec.name)) + _spec.name.encode()] = _td
del _spec, _td

_new = object.__new__

#: What a generated encoder raises on a value it cannot take as is (None, bytes, a value out
#: of the format's range, a wrong type): the generic encoder then normalises or reports.
_FAST_ERRORS = (struct.error, ValueError, TypeError, AttributeError, OverflowError)


def _new_encoder(msg: Any) -> tuple[Callable[[Any], bytes], MessageSpec]:
    spec = SPECS_BY_CLASS.get(msg.__class__)
    if spec is None:
        raise SandeshEncodeError("not a vr.sandesh message: %r" % type(msg).__name__)
    wide = any(f.wire == T_LIST and f.elem != T_BYTE for f in spec.fields)
    gen = _gen_encoder_masked if wide else _gen_encoder
    entry = _ENCODERS[spec.cls] = (gen(spec), spec)
    return entry


def encode(msg: Any) -> bytes:
    """Encode one vr.sandesh message: name, every field in declaration order, T_STOP.

    Integer fields accept either signedness of their width (so a ``u32`` address may be
    given as a negative ``i32`` and vice versa); ``None`` encodes as zero/empty.
    """
    try:
        fast, spec = _ENCODERS[msg.__class__]
    except KeyError:
        fast, spec = _new_encoder(msg)
    try:
        return fast(msg)
    except _FAST_ERRORS:
        return _encode_slow(spec, msg)


def encode_many(msgs: Iterable[Any]) -> bytes:
    """Encode several messages back to back, as one netlink attribute carries them."""
    return b"".join([encode(m) for m in msgs])


def _decode_name(buf: bytes, offset: int) -> tuple[_TypeDecoder, int]:
    """Read the name with full checks; used when the quick prefix lookup misses."""
    end = len(buf)
    if end - offset < 4:
        raise SandeshDecodeError("truncated sandesh name length", offset)
    n = _I32.unpack_from(buf, offset)[0]
    if n <= 0:
        raise SandeshDecodeError("Read sandesh begin: Length INVALID (%d)" % n, offset)
    if n > MAX_NAME_LEN:
        raise SandeshDecodeError("sandesh name length %d too long" % n, offset)
    o = offset + 4
    if n > end - o:
        raise SandeshDecodeError("truncated sandesh name", o)
    name = buf[o : o + n]
    td = _DECODERS.get(name)
    if td is None:
        raise SandeshDecodeError("unknown sandesh %r" % name.decode("ascii", "replace"), o)
    return td, o + n


def decode_one(buf: bytes, offset: int = 0) -> tuple[Any, int]:
    """Decode the message starting at ``offset``; return it and the offset after it."""
    end = len(buf)
    td = _BY_PREFIX.get(buf[offset : offset + 4 + buf[offset + 3]]) if end - offset >= 4 else None
    if td is None:
        td, o = _decode_name(buf, offset)
    else:
        o = offset + td.plen
    sh = td.mru
    if sh is not None:
        r0 = sh(buf, offset, end)
        if r0 is not None:
            return r0
        for other in td.recent:
            r0 = other(buf, offset, end)
            if r0 is not None:
                td.promote(other)
                return r0
    try:
        seg = td.segments
        if seg is None:
            seg = td.segments = _gen_decoder(td.spec)
        r = seg(buf, o, end)
    except (struct.error, IndexError):
        r = None
    if r is not None:
        td.learn(r[2])
        return r[0], r[1]
    return _decode_fields_slow(td.spec, buf, o, end)


def decode(buf: bytes | bytearray | memoryview, pad: int = 3) -> list[Any]:
    """Decode every message in ``buf``.

    Up to ``pad`` trailing zero bytes are accepted (netlink pads responses to 4 bytes;
    the Agent stops when 3 or fewer bytes remain). Use ``pad=0`` to require the buffer
    to be consumed exactly, as the vRouter does with requests. Raises
    ``SandeshDecodeError`` with the offset of the first problem.
    """
    data = buf if buf.__class__ is bytes else bytes(buf)
    end = len(data)
    # A buffer holding exactly one message of a recently seen layout.
    whole = _WHOLE.get(end)
    if whole is not None:
        ob = whole(data)
        if ob is not None:
            return [ob]
    out = []
    o = 0
    prefixes = _BY_PREFIX
    while o < end:
        left = end - o
        if left <= pad:
            if data.count(0, o) != left:
                raise SandeshDecodeError("non-zero trailing bytes", o)
            break
        td = prefixes.get(data[o : o + 4 + data[o + 3]]) if left >= 4 else None
        if td is not None:
            sh = td.mru
            if sh is not None:
                r = sh(data, o, end)
                if r is not None:
                    out.append(r[0])
                    o = r[1]
                    if o == end and len(out) == 1:
                        # Exactly one message of the type's usual shape: next time, whole.
                        _WHOLE[end] = td.mru_whole  # type: ignore[assignment]
                    continue
        msg, o = decode_one(data, o)
        out.append(msg)
    return out


def message_name(msg: Any) -> str:
    """The sandesh name of a message object (its thriftpy2 struct name)."""
    spec = SPECS_BY_CLASS.get(msg.__class__)
    if spec is None:
        raise SandeshEncodeError("not a vr.sandesh message: %r" % type(msg).__name__)
    return spec.name

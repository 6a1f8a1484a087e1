"""Code generation of the Sandesh codec's fast paths, from the schema (vr.thrift).

Each function here writes the source of one encoder or decoder for one message type
(or one *shape* of it: its string byte lengths and list element counts) and compiles it
once with ``exec``; :mod:`._encode` and :mod:`._decode` call them on first use of a type
or shape and keep what they return.  Nothing here reads or writes a message itself.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from vrtwist.sandesh._schema import (
    SCALAR_FORMAT,
    SCALAR_SIZE,
    T_BYTE,
    T_LIST,
    T_STRING,
    FieldSpec,
    MessageSpec,
)
from vrtwist.sandesh._wire import (
    _FIELD_HDR,
    _I32,
    _LIST_HDR,
    _SHAPE_CACHE_MAX,
    _list_struct,
)

_SegmentDecoder = Callable[[bytes, int, int], "tuple[Any, int, tuple[int, ...]] | None"]
_ShapeDecoder = Callable[[bytes, int, int], "tuple[Any, int] | None"]
_WholeDecoder = Callable[[bytes], Any]
#: One argument of a generated ``pack`` call: its expression and its format, or None and
#: what it is (``"h"``: a var field's header, ``"v"``: its value), and the field's index.
_Item = tuple[str, "str | None", str, int]


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


def _compile(src: str, what: str, spec: MessageSpec, ns: dict[str, Any]) -> None:
    """Run generated source in ``ns``; tracebacks name it ``<vrtwist.sandesh what name>``."""
    exec(compile(src, "<vrtwist.sandesh %s %s>" % (what, spec.name), "exec"), ns)


# ---------------------------------------------------------------------------------------------
# Encoders.

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
    ns: dict[str, Any] = {"_bytes": bytes}
    lines = ["def enc(o):"]
    items, keys, hnames = _encoder_items(spec, lines, ns)
    chunks = [items[i : i + _ENCODE_CHUNK] for i in range(0, len(items), _ENCODE_CHUNK)]
    var_index = [k for k, f in enumerate(spec.fields) if f.wire in (T_STRING, T_LIST)]
    packs = ["_p%d" % i for i in range(len(chunks))]
    if not var_index:
        fmts, _ = _chunk_formats(spec, chunks, var_index, ns, ())
        for p, fmt in zip(packs, fmts, strict=True):
            ns[p] = struct.Struct(fmt).pack
    else:
        cache: dict[tuple[int, ...], tuple[Any, ...]] = {}

        def shape(key: tuple[int, ...]) -> tuple[Any, ...]:
            if any(n < 0 for n in key):
                raise ValueError("negative length")
            fmts, heads = _chunk_formats(spec, chunks, var_index, ns, key)
            entry = tuple(struct.Struct(fmt).pack for fmt in fmts) + tuple(heads)
            if len(cache) >= _SHAPE_CACHE_MAX:
                cache.clear()
            cache[key] = entry
            return entry

        ns["_cache"] = cache
        ns["_mk"] = shape
        lines.append("    k = (%s,)" % ", ".join(keys))
        lines.append("    %s, = _cache.get(k) or _mk(k)" % ", ".join(packs + hnames))
    lines.append("    return %s" % _pack_calls(packs, chunks))
    _compile("\n".join(lines) + "\n", "encode", spec, ns)
    fn: Callable[[Any], bytes] = ns["enc"]
    return fn


def _encoder_items(
    spec: MessageSpec, lines: list[str], ns: dict[str, Any]
) -> tuple[list[_Item], list[str], list[str]]:
    """The pack arguments of every field, the shape key's parts and the header names.

    Appends to ``lines`` the statements that read strings and lists first, and puts in
    ``ns`` the constant bytes (``P<k>``) each var field's header starts with.
    """
    name = spec.name.encode()
    items: list[_Item] = []
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
    return items, keys, hnames


def _chunk_formats(
    spec: MessageSpec,
    chunks: list[list[_Item]],
    var_index: list[int],
    ns: dict[str, Any],
    lens: tuple[int, ...],
) -> tuple[list[str], list[bytes]]:
    """The Struct format of each pack call and the var fields' headers, for one shape."""
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


def _pack_calls(packs: list[str], chunks: list[list[_Item]]) -> str:
    """The expression joining the pack calls' results."""
    parts = [
        "%s(%s)" % (p, ", ".join(item[0] for item in c))
        for p, c in zip(packs, chunks, strict=True)
    ]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return "%s + %s" % tuple(parts)
    return "b''.join((%s))" % ", ".join(parts)


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
        lines.append(_masked_fixed(spec, name, ns))
    else:
        cache: dict[tuple[int, ...], tuple[Any, int, int]] = {}

        def shape(key: tuple[int, ...]) -> tuple[Any, int, int]:
            entry = _masked_shape(spec, name, key)
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
    _compile("\n".join(lines) + "\n", "encode", spec, ns)
    fn: Callable[[Any], bytes] = ns["enc"]
    return fn


def _masked_fixed(spec: MessageSpec, name: bytes, ns: dict[str, Any]) -> str:
    """The return statement of a message without strings or lists: one fixed Struct."""
    fmt = ">i%ds" % len(name) + "".join("Bh" + SCALAR_FORMAT[f.wire] for f in spec.fields) + "x"
    args = [str(len(name)), "_NAME"]
    for f in spec.fields:
        args += [str(f.wire), str(f.fid), "o.%s" % f.name]
    ns["S"] = struct.Struct(fmt)
    ns["_NAME"] = name
    return "    return S.pack(%s)" % ", ".join(args)


def _masked_shape(spec: MessageSpec, name: bytes, key: tuple[int, ...]) -> tuple[Any, int, int]:
    """For one shape: the values-only ``pack``, the constant bytes as an integer, the size."""
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
    return (s.pack, int.from_bytes(const, "big"), s.size)


# ---------------------------------------------------------------------------------------------
# Decoders.


def _gen_decoder(spec: MessageSpec) -> _SegmentDecoder:
    """Decoder for fields in declaration order, one Struct per run of fixed-size fields.

    Returns (object, offset after T_STOP, shape) or None to ask for the generic path.
    """
    ns: dict[str, Any] = {
        "_ls": _list_struct,
        "_new": object.__new__,
        "_cls": spec.cls,
    }
    lines = ["def dec(buf, o, end):", "    ob = _new(_cls)"]
    lens: list[str] = []
    for k, (run, var) in enumerate(_segments(spec)):
        lines += _segment_lines(k, run, var, ns, lens)
    lines.append("    if o >= end or buf[o] != 0: return None")
    lines.append("    return ob, o + 1, (%s)" % "".join(x + ", " for x in lens))
    _compile("\n".join(lines) + "\n", "decode", spec, ns)
    fn: _SegmentDecoder = ns["dec"]
    return fn


def _segment_lines(
    k: int, run: list[FieldSpec], var: FieldSpec | None, ns: dict[str, Any], lens: list[str]
) -> list[str]:
    """Statements decoding segment ``k``: its fixed fields, then its var field if any.

    Puts the segment's Struct and expected types and ids in ``ns``; appends the name of
    the var field's length to ``lens``.
    """
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
        return []
    s = struct.Struct(fmt)
    ns["S%d" % k] = s
    ns["TY%d" % k] = tuple(types)
    ns["ID%d" % k] = tuple(ids)
    lines = [
        "    t%d = S%d.unpack_from(buf, o)" % (k, k),
        "    if t%d[0::3] != TY%d or t%d[1::3] != ID%d: return None" % (k, k, k, k),
        "    o += %d" % s.size,
    ]
    # Unpack straight into the attributes (declaration order; inline values).
    targets = []
    for f in run:
        targets += ["_", "_", "ob.%s" % f.name]
    if var is None:
        lines.append("    (%s,) = t%d" % (", ".join(targets), k))
        return lines
    n = "n%d" % var.fid
    lens.append(n)
    targets += ["_", "_", n]
    lines.append("    (%s,) = t%d" % (", ".join(targets), k))
    return lines + _var_value_lines(var, n, "ob.%s" % var.name)


def _var_value_lines(var: FieldSpec, n: str, v: str) -> list[str]:
    """Statements reading a string or list of length ``n`` at ``o`` into ``v``."""
    if var.wire == T_STRING:
        return [
            "    if %s > 0:" % n,
            "        e = o + %s" % n,
            "        if e > end: return None",
            "        %s = buf[o:e].decode('utf-8', 'surrogateescape')" % v,
            "        o = e",
            "    else:",
            "        %s = ''" % v,
        ]
    if var.elem == T_BYTE:
        return [
            "    e = o + %s" % n,
            "    if %s < 0 or e > end: return None" % n,
            "    %s = list(buf[o:e])" % v,
            "    o = e",
        ]
    size = SCALAR_SIZE[var.elem]
    return [
        "    if %s:" % n,
        "        e = o + %d * %s" % (size, n),
        "        if %s < 0 or e > end: return None" % n,
        "        %s = list(_ls(%r, %s).unpack_from(buf, o))" % (v, SCALAR_FORMAT[var.elem], n),
        "        o = e",
        "    else:",
        "        %s = []" % v,
    ]


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
    s, expect, maskb, fixups = _shape_layout(spec, lens)
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
    _compile(src, "shape", spec, ns)
    return ns["dec"], ns["whole"], s.size


def _shape_layout(
    spec: MessageSpec, lens: tuple[int, ...]
) -> tuple[struct.Struct, bytearray, bytearray, list[str]]:
    """One shape's Struct, expected bytes and mask, and the statements converting the
    strings and lists the Struct yields as raw bytes."""
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
        if f.wire == T_STRING:
            n = next(it)
            fixed(_I32.pack(n))
            free(n)
            fmt += "7x%ds" % n
        elif f.wire == T_LIST:
            n = next(it)
            fixed(_LIST_HDR.pack(f.elem, n))
            free(n * SCALAR_SIZE[f.elem])
            fmt += "8x%ds" % (n * SCALAR_SIZE[f.elem])
        else:
            free(SCALAR_SIZE[f.wire])
            fmt += "3x" + SCALAR_FORMAT[f.wire]
            continue
        fixups.append(_shape_fixup(f, n))
    fixed(b"\x00")
    fmt += "x"
    s = struct.Struct(fmt)
    assert s.size == len(expect)
    return s, expect, maskb, fixups


def _shape_fixup(f: FieldSpec, n: int) -> str:
    """The statement turning a string or list field's raw bytes into its value."""
    a = "ob.%s" % f.name
    if f.wire == T_STRING:
        return "%s = %s.decode('utf-8', 'surrogateescape')" % (a, a) if n else "%s = ''" % a
    if not n:
        return "%s = []" % a
    if f.elem == T_BYTE:
        return "%s = list(%s)" % (a, a)
    return "%s = list(_ls(%r, %d).unpack(%s))" % (a, SCALAR_FORMAT[f.elem], n, a)

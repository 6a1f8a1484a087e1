"""Load ``vr.thrift`` through thriftpy2 and turn it into the tables the codec runs on.

The IDL is the single source of truth for field ids, names, declared types and
declaration order; nothing here is written per message.
"""

from __future__ import annotations

import keyword
import os
import types
from dataclasses import dataclass
from typing import Any

import thriftpy2
from thriftpy2.thrift import TType

__all__ = [
    "MESSAGE_NAMES",
    "SPECS_BY_CLASS",
    "SPECS_BY_NAME",
    "T_BOOL",
    "T_BYTE",
    "T_DOUBLE",
    "T_I16",
    "T_I32",
    "T_I64",
    "T_IPADDR",
    "T_IPV4",
    "T_LIST",
    "T_MAP",
    "T_SANDESH",
    "T_SET",
    "T_STOP",
    "T_STRING",
    "T_STRUCT",
    "T_U16",
    "T_U32",
    "T_U64",
    "T_UUID",
    "T_XML",
    "FieldSpec",
    "MessageSpec",
    "schema",
]

# Sandesh wire type codes (docs/protocols/ksync.md). Thrift codes plus the Sandesh extensions.
T_STOP = 0
T_BOOL = 2
T_BYTE = 3
T_DOUBLE = 4
T_I16 = 6
T_I32 = 8
T_U64 = 9
T_I64 = 10
T_STRING = 11
T_STRUCT = 12
T_MAP = 13
T_SET = 14
T_LIST = 15
T_SANDESH = 18
T_U16 = 19
T_U32 = 20
T_XML = 21
T_IPV4 = 22
T_UUID = 23
T_IPADDR = 24

#: struct format character, size and (min, max) accepted on encode for each scalar code.
#: Decoding yields the declared signedness; encoding also accepts the other signedness
#: of the same width, because address/port fields hold network-order bytes (docs/protocols/ksync.md).
SCALAR_FORMAT: dict[int, str] = {
    T_BYTE: "B",
    T_I16: "h",
    T_U16: "H",
    T_I32: "i",
    T_U32: "I",
    T_I64: "q",
    T_U64: "Q",
}
SCALAR_SIZE: dict[int, int] = {
    T_BYTE: 1,
    T_I16: 2,
    T_U16: 2,
    T_I32: 4,
    T_U32: 4,
    T_I64: 8,
    T_U64: 8,
}

_THRIFT_TO_SANDESH = {
    TType.BYTE: T_BYTE,
    TType.I16: T_I16,
    TType.I32: T_I32,
    TType.I64: T_I64,
    TType.STRING: T_STRING,
}
_UNSIGNED = {"u16": T_U16, "u32": T_U32, "u64": T_U64}
_SIGNED_WIDTH = {T_U16: T_I16, T_U32: T_I32, T_U64: T_I64}


@dataclass(frozen=True)
class FieldSpec:
    """One field of a buffer sandesh: id, name and Sandesh wire type.

    ``wire`` is the type code written in the field header; for lists ``elem`` is the
    element type code (otherwise 0). Enum fields have ``wire`` = i32 and ``enum`` set.
    """

    fid: int
    name: str
    wire: int
    elem: int = 0
    enum: str | None = None

    @property
    def type_name(self) -> str:
        """The Sandesh type as written in vr.sandesh (``u32``, ``list<byte>`` ...)."""
        if self.enum:
            return self.enum
        if self.wire == T_LIST:
            return "list<%s>" % _TYPE_NAMES[self.elem]
        return _TYPE_NAMES[self.wire]


_TYPE_NAMES = {
    T_BYTE: "byte",
    T_I16: "i16",
    T_U16: "u16",
    T_I32: "i32",
    T_U32: "u32",
    T_I64: "i64",
    T_U64: "u64",
    T_STRING: "string",
}


@dataclass(frozen=True)
class MessageSpec:
    """A buffer sandesh: its name, its thriftpy2 class and its fields in declaration order."""

    name: str
    cls: type
    fields: tuple[FieldSpec, ...]

    @property
    def by_id(self) -> dict[int, FieldSpec]:
        return {f.fid: f for f in self.fields}


def _field_spec(cls: type, fid: int, spec: tuple[Any, ...], enums: dict[type, str]) -> FieldSpec:
    ttype, name = spec[0], spec[1]
    annotations: dict[str, dict[str, str]] = getattr(cls, "__thrift_field_annotations__", {})
    tag = annotations.get(name, {}).get("sandesh_type")
    if ttype == TType.LIST:
        elem_ttype = spec[2]
        if isinstance(elem_ttype, tuple):
            raise ValueError("%s.%s: nested containers are not Sandesh" % (cls.__name__, name))
        elem = _THRIFT_TO_SANDESH.get(elem_ttype)
        if elem is None or elem == T_STRING:
            raise ValueError("%s.%s: unsupported list element type" % (cls.__name__, name))
        if tag is not None:
            inner = tag[5:-1] if tag.startswith("list<") and tag.endswith(">") else None
            if inner not in _UNSIGNED or _SIGNED_WIDTH[_UNSIGNED[inner]] != elem:
                raise ValueError("%s.%s: bad sandesh_type %r" % (cls.__name__, name, tag))
            elem = _UNSIGNED[inner]
        return FieldSpec(fid, name, T_LIST, elem)
    if ttype == TType.I32 and len(spec) > 2 and spec[2] in enums:
        return FieldSpec(fid, name, T_I32, enum=enums[spec[2]])
    wire = _THRIFT_TO_SANDESH.get(ttype)
    if wire is None:
        raise ValueError("%s.%s: unsupported type %r" % (cls.__name__, name, ttype))
    if tag is not None:
        if tag not in _UNSIGNED or _SIGNED_WIDTH[_UNSIGNED[tag]] != wire:
            raise ValueError("%s.%s: bad sandesh_type %r" % (cls.__name__, name, tag))
        wire = _UNSIGNED[tag]
    return FieldSpec(fid, name, wire)


def _make_init(spec: MessageSpec) -> Any:
    """An ``__init__`` whose defaults are the C decoder's zero values (0, "", fresh [])."""
    params = []
    body = []
    for f in spec.fields:
        if not f.name.isidentifier() or keyword.iskeyword(f.name):
            raise ValueError("bad field name %r" % f.name)
        if f.wire == T_LIST:
            params.append("%s=None" % f.name)
            body.append("    self.%s = [] if %s is None else %s" % (f.name, f.name, f.name))
        elif f.wire == T_STRING:
            params.append("%s=''" % f.name)
            body.append("    self.%s = %s" % (f.name, f.name))
        else:
            params.append("%s=0" % f.name)
            body.append("    self.%s = %s" % (f.name, f.name))
    src = "def __init__(self, %s):\n%s\n" % (", ".join(params), "\n".join(body) or "    pass")
    namespace: dict[str, Any] = {}
    exec(compile(src, "<vrtwist.sandesh %s.__init__>" % spec.name, "exec"), namespace)
    return namespace["__init__"]


def _load() -> tuple[types.ModuleType, dict[str, MessageSpec]]:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vr.thrift")
    module = thriftpy2.load(path, module_name="vr_thrift")
    enums = {module.sandesh_op: "sandesh_op", module.flow_op: "flow_op"}
    specs: dict[str, MessageSpec] = {}
    for name in sorted(vars(module)):
        obj = getattr(module, name)
        if not (isinstance(obj, type) and hasattr(obj, "thrift_spec")):
            continue
        cls: Any = obj
        if name == "sandesh_hdr" or not getattr(cls, "thrift_spec", None):
            continue
        if getattr(cls, "__module__", None) != module.__name__:
            continue
        linenos: dict[str, int] = cls.__thrift_field_linenos__
        fields = tuple(
            sorted(
                (_field_spec(cls, fid, s, enums) for fid, s in cls.thrift_spec.items()),
                key=lambda f: linenos[f.name],
            )
        )
        spec = MessageSpec(name, cls, fields)
        cls.__init__ = _make_init(spec)
        specs[name] = spec
    return module, specs


schema, SPECS_BY_NAME = _load()
#: message name (str) -> MessageSpec, and the class -> MessageSpec.
SPECS_BY_CLASS: dict[type, MessageSpec] = {s.cls: s for s in SPECS_BY_NAME.values()}
MESSAGE_NAMES: tuple[str, ...] = tuple(sorted(SPECS_BY_NAME))

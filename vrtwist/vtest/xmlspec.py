"""Read vRouter vtest XML files into Sandesh requests and expectations (sans-IO).

The format has no schema upstream; this follows what the vtest driver read
(``tungstenfabric/tf-vrouter:utils/vtest``, summarised in docs/protocols/vtest.md): the root's
children are ``test_name``, ``message``, ``packet`` and ``control``; a message holds
one request element named after a Sandesh struct, an optional ``<return>`` (default 0)
and an optional ``<expect>`` whose single child's name starts with a struct name.
Values: ``h_op``/``fr_op`` words or numbers; integers as C ``strtoul(x, 0, 0)`` cut to
the field's width; ``list<byte>`` as ``:``-separated hex bytes; other lists as
``:``-separated base-0 numbers (or pysandesh ``<list><element>`` form); strings as text.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from vrtwist import xmlsafe
from vrtwist.sandesh import SPECS_BY_NAME, FieldSpec, MessageSpec
from vrtwist.sandesh._schema import (
    T_BYTE,
    T_I16,
    T_I32,
    T_I64,
    T_LIST,
    T_STRING,
    T_U16,
    T_U32,
    T_U64,
)

__all__ = [
    "MAX_FLOW_COUNT",
    "MAX_MESSAGES",
    "VtestFile",
    "VtestFormatError",
    "VtestMessage",
    "VtestPacket",
    "field_value",
    "normalize",
    "parse_bytes",
    "parse_file",
]

_WIDTH = {T_BYTE: 8, T_I16: 16, T_U16: 16, T_I32: 32, T_U32: 32, T_I64: 64, T_U64: 64}
_SIGNED = {T_I16, T_I32, T_I64}
_OPS = {"add": 0, "get": 1, "delete": 2, "del": 2, "dump": 3, "response": 4, "reset": 5}
_FLOW_OPS = {"flow_set": 0, "flow_list": 1, "flow_table_get": 2}
#: the driver refuses XML larger than this; so do we (no unbounded parsing)
MAX_FILE_BYTES = 1 << 20
#: ``<control><flow_count>`` repeats each flow request; a few bytes of XML must not
#: ask for millions of requests, so the count is refused past the largest flow
#: table a vRouter is built with by default (512K entries)
MAX_FLOW_COUNT = 1 << 19
#: requests one file may expand to (after ``flow_count``): checked before any
#: request is built, so a refused file allocates nothing in proportion to its claim
MAX_MESSAGES = 1 << 20
#: deeper than any vtest file (they nest about four levels); refused by the parser
MAX_DEPTH = 32


class VtestFormatError(ValueError):
    """The file is not a vtest description we can run; says where."""


@dataclass
class VtestMessage:
    """One ``<message>``: the request, the expected resp_code, the expected fields."""

    index: int
    request: Any
    name: str
    op: str
    expect_return: int = 0
    expect_name: str | None = None
    expect_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class VtestPacket:
    """A ``<packet>`` block (the data-path half of a test)."""

    input_pcap: str
    expected_pcap: str
    tx_vif: str
    rx_vif: str


@dataclass
class VtestFile:
    path: str
    name: str
    messages: list[VtestMessage]
    packets: list[VtestPacket]


def _strtoul(text: str, where: str) -> int:
    s = text.strip()
    neg = s.startswith("-")
    if neg or s.startswith("+"):
        s = s[1:]
    try:
        if s.lower().startswith("0x"):
            value = int(s[2:], 16)
        elif len(s) > 1 and s.startswith("0"):
            value = int(s, 8)
        else:
            value = int(s, 10)
    except ValueError:
        raise VtestFormatError("%s: %r is not a number" % (where, text)) from None
    return -value if neg else value


def normalize(wire: int, value: int) -> int:
    """Cut ``value`` to the field's width, as the C struct member would hold it."""
    bits = _WIDTH.get(wire, 64)
    value &= (1 << bits) - 1
    if wire in _SIGNED and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def field_value(spec: FieldSpec, elem: ET.Element, where: str) -> Any:
    """The Python value for one field element, by the field's Sandesh type."""
    text = (elem.text or "").strip()
    if spec.enum is not None:
        words = _FLOW_OPS if spec.enum == "flow_op" else _OPS
        low = text.lower()
        for word, number in words.items():
            if (low and word.startswith(low)) or low == word:
                return number
        return normalize(T_I32, _strtoul(text, where))
    if spec.wire == T_STRING:
        return elem.text or ""
    if spec.wire == T_LIST:
        inner = elem.find("list")
        if inner is not None:
            tokens = [(e.text or "").strip() for e in inner.findall("element")]
            return [normalize(spec.elem, _strtoul(t, where)) for t in tokens]
        if not text:
            return []
        tokens = text.split(":")
        if spec.elem == T_BYTE:
            out = []
            for t in tokens:
                try:
                    out.append(int(t, 16) & 0xFF)
                except ValueError:
                    raise VtestFormatError("%s: %r is not a hex byte" % (where, t)) from None
            return out
        return [normalize(spec.elem, _strtoul(t, where)) for t in tokens]
    if spec.wire in _WIDTH:
        return normalize(spec.wire, _strtoul(text, where))
    raise VtestFormatError("%s: field type %s is not supported" % (where, spec.type_name))


def _fields(spec: MessageSpec, elem: ET.Element, where: str) -> dict[str, Any]:
    by_name = {f.name: f for f in spec.fields}
    values: dict[str, Any] = {}
    for child in elem:
        tag: object = child.tag  # a function, not a str, for comments
        if not isinstance(tag, str):
            continue
        f = by_name.get(tag)
        if f is None:
            continue  # unknown names are ignored, as the driver does
        values[f.name] = field_value(f, child, "%s/%s" % (where, child.tag))
    return values


def _struct_for(tag: str) -> MessageSpec | None:
    """The Sandesh struct whose name is the longest prefix of ``tag`` (expect blocks)."""
    best = None
    for name, spec in SPECS_BY_NAME.items():
        if tag.startswith(name) and (best is None or len(name) > len(best.name)):
            best = spec
    return best


def _message(index: int, elem: ET.Element, where: str) -> list[VtestMessage]:
    request_elems = [c for c in elem if isinstance(c.tag, str) and c.tag in SPECS_BY_NAME]
    if not request_elems:
        names = [c.tag for c in elem if isinstance(c.tag, str)]
        raise VtestFormatError("%s: no Sandesh request element (found %s)" % (where, names))
    ret_elem = elem.find("return")
    expect_return = 0
    if ret_elem is not None:
        expect_return = normalize(T_I32, _strtoul(ret_elem.text or "", where + "/return"))
    expect_name = None
    expect_fields: dict[str, Any] = {}
    exp = elem.find("expect")
    if exp is not None:
        children = [c for c in exp if isinstance(c.tag, str)]
        if len(children) != 1:
            raise VtestFormatError("%s/expect: needs exactly one struct element" % where)
        spec = _struct_for(children[0].tag)
        if spec is None:
            raise VtestFormatError(
                "%s/expect: %r names no Sandesh struct" % (where, children[0].tag)
            )
        expect_name = spec.name
        expect_fields = _fields(spec, children[0], where + "/expect")
    out = []
    for req_elem in request_elems:
        spec = SPECS_BY_NAME[req_elem.tag]
        values = _fields(spec, req_elem, "%s/%s" % (where, req_elem.tag))
        op_elem = req_elem.find("h_op")
        if op_elem is None:
            op_elem = req_elem.find("fr_op")
        op = (op_elem.text or "").strip() if op_elem is not None else "?"
        out.append(
            VtestMessage(
                index=index,
                request=spec.cls(**values),
                name=spec.name,
                op=op,
                expect_return=expect_return,
                expect_name=expect_name,
                expect_fields=expect_fields,
            )
        )
    return out


def _flow_count(text: str, where: str) -> int:
    """``flow_count`` as the driver reads it (0 means once), bounded before use."""
    value = _strtoul(text, where)
    if value < 0 or value > MAX_FLOW_COUNT:
        raise VtestFormatError(
            "%s: %s is out of range (0..%d)" % (where, text.strip()[:32], MAX_FLOW_COUNT)
        )
    return max(1, value)


def _child_text(elem: ET.Element, name: str) -> str:
    found = elem.find(name)
    if found is None:
        return ""
    if len(found):
        return (found[0].text or "").strip()
    return (found.text or "").strip()


def _add_messages(
    messages: list[VtestMessage], parsed: list[VtestMessage], flow_count: int, where: str
) -> None:
    """Append one <message>'s requests; a flow request repeats ``flow_count`` times, one
    source address further each time (as the real vtest's control/flow_count)."""
    for msg in parsed:
        repeat = flow_count if msg.name == "vr_flow_req" else 1
        if len(messages) + repeat > MAX_MESSAGES:
            raise VtestFormatError(
                "%s: expands to more than %d requests" % (where, MAX_MESSAGES)
            )
        if msg.name == "vr_flow_req" and flow_count > 1:
            for i in range(flow_count):
                clone = type(msg.request)(**vars(msg.request))
                clone.fr_flow_sip_l = normalize(T_U64, clone.fr_flow_sip_l + i)
                messages.append(
                    VtestMessage(
                        msg.index, clone, msg.name, msg.op, msg.expect_return,
                        msg.expect_name, msg.expect_fields,
                    )
                )  # fmt: skip
        else:
            messages.append(msg)


def parse_bytes(data: bytes, path: str = "<bytes>") -> VtestFile:
    """Parse a vtest description from bytes."""
    if len(data) > MAX_FILE_BYTES:
        raise VtestFormatError("%s: larger than %d bytes" % (path, MAX_FILE_BYTES))
    try:
        root = xmlsafe.parse(data, max_depth=MAX_DEPTH)
    except xmlsafe.XmlRefused as e:
        raise VtestFormatError("%s: DTDs and entities are not accepted (%s)" % (path, e)) from None
    except xmlsafe.XmlError as e:
        raise VtestFormatError("%s: %s" % (path, e)) from None
    name = ""
    messages: list[VtestMessage] = []
    packets: list[VtestPacket] = []
    flow_count = 1
    count = 0
    for child in root:
        tag: object = child.tag  # a function, not a str, for comments
        if not isinstance(tag, str):
            continue
        if child.tag == "test_name":
            name = (child.text or "").strip()
        elif child.tag == "message":
            count += 1
            where = "%s: message %d" % (path, count)
            _add_messages(messages, _message(count, child, where), flow_count, where)
        elif child.tag == "packet":
            packets.append(
                VtestPacket(
                    input_pcap=_child_text(child, "pcap_input_file"),
                    expected_pcap=_child_text(child, "pcap_expected_file"),
                    tx_vif=_child_text(child, "tx_interface"),
                    rx_vif=_child_text(child, "rx_interface"),
                )
            )
        elif child.tag == "control":
            fc = child.find("flow_count")
            if fc is not None:
                flow_count = _flow_count(fc.text or "1", path + ": control/flow_count")
        else:
            raise VtestFormatError("%s: unexpected element <%s>" % (path, child.tag))
    return VtestFile(path=path, name=name, messages=messages, packets=packets)


def parse_file(path: str) -> VtestFile:
    """Parse one vtest XML file."""
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise VtestFormatError("%s: larger than %d bytes" % (path, MAX_FILE_BYTES))
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise VtestFormatError("%s: %s" % (path, e.strerror or e)) from None
    return parse_bytes(data, path)

"""Sans-IO Sandesh binary codec for the vRouter's vr.sandesh schema.

``schema`` is the thriftpy2 module loaded from ``vr.thrift``: ``schema.vr_interface_req(
h_op=GET, vifr_idx=3)`` builds a message (unset fields are 0, "" or []). ``encode`` /
``encode_many`` turn messages into bytes; ``decode`` turns a buffer holding one or
more messages into a list of them, raising ``SandeshDecodeError`` (with ``.offset``)
on anything malformed. See docs/sandesh.md.
"""

from vrtwist.sandesh import constants
from vrtwist.sandesh._codec import (
    MAX_NAME_LEN,
    SandeshDecodeError,
    SandeshEncodeError,
    decode,
    decode_one,
    encode,
    encode_many,
    message_name,
)
from vrtwist.sandesh._schema import (
    MESSAGE_NAMES,
    SPECS_BY_CLASS,
    SPECS_BY_NAME,
    FieldSpec,
    MessageSpec,
    schema,
)
from vrtwist.sandesh.addr import (
    int_to_ipv4,
    int_to_port,
    ip_to_list,
    ip_to_u64_pair,
    ipv4_to_int,
    ipv6_to_u64_pair,
    list_to_ip,
    list_to_mac,
    mac_to_list,
    port_to_int,
    prefix_to_route,
    route_to_prefix,
    u64_pair_to_ip,
    u64_pair_to_ipv6,
)
from vrtwist.sandesh.constants import (
    ADD,
    DEL,
    DUMP,
    FLOW_LIST,
    FLOW_SET,
    FLOW_TABLE_GET,
    GET,
    RESET,
    RESPONSE,
    VR_MESSAGE_DUMP_INCOMPLETE,
    VR_MESSAGE_PAGE_SIZE,
)

__all__ = [
    "ADD",
    "DEL",
    "DUMP",
    "FLOW_LIST",
    "FLOW_SET",
    "FLOW_TABLE_GET",
    "GET",
    "MAX_NAME_LEN",
    "MESSAGE_NAMES",
    "RESET",
    "RESPONSE",
    "SPECS_BY_CLASS",
    "SPECS_BY_NAME",
    "VR_MESSAGE_DUMP_INCOMPLETE",
    "VR_MESSAGE_PAGE_SIZE",
    "FieldSpec",
    "MessageSpec",
    "SandeshDecodeError",
    "SandeshEncodeError",
    "constants",
    "decode",
    "decode_one",
    "encode",
    "encode_many",
    "int_to_ipv4",
    "int_to_port",
    "ip_to_list",
    "ip_to_u64_pair",
    "ipv4_to_int",
    "ipv6_to_u64_pair",
    "list_to_ip",
    "list_to_mac",
    "mac_to_list",
    "message_name",
    "port_to_int",
    "prefix_to_route",
    "route_to_prefix",
    "schema",
    "u64_pair_to_ip",
    "u64_pair_to_ipv6",
]

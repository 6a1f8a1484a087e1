"""vtest XML descriptions (the vRouter's own test format), as ``vrouter-vtest`` reads them.

Contract: ``parse_bytes`` returns a test or raises :class:`VtestFormatError`; every
request it returns encodes.
"""

from __future__ import annotations

from tests.fuzz._harness import fuzz_case, mutated, target
from vrtwist.sandesh import encode
from vrtwist.vtest.xmlspec import VtestFormatError, parse_bytes


def _doc(body: str) -> bytes:
    return ("<?xml version='1.0'?><test><test_name>t</test_name>%s</test>" % body).encode()


SEEDS = [
    _doc("<message><vr_nexthop_req><h_op>Add</h_op><nhr_id>0x15</nhr_id>"
         "<nhr_encap>de:ad:be:ef:00:02:de:ad:be:ef:00:01:08:00</nhr_encap>"
         "<nhr_nh_list>1:0x2:010</nhr_nh_list></vr_nexthop_req><return>0</return></message>"),
    _doc("<message><vr_interface_req><h_op>Add</h_op><vifr_idx>1</vifr_idx>"
         "<vifr_name>tap1</vifr_name><vifr_mac>00:01:02:03:04:05</vifr_mac>"
         "<vifr_ip>16843009</vifr_ip></vr_interface_req>"
         "<expect><vr_response><resp_code>0</resp_code></vr_response></expect></message>"),
    _doc("<control><flow_count>4</flow_count></control><message><vr_flow_req>"
         "<fr_op>flow_set</fr_op><fr_index>-1</fr_index><fr_flow_sport>-1</fr_flow_sport>"
         "</vr_flow_req><return>-22</return></message>"),
    _doc("<packet><pcap_input_file>in.pcap</pcap_input_file><tx_interface>1</tx_interface>"
         "</packet>"),
]  # fmt: skip


@target("vtest", mutated(SEEDS, 8192), (VtestFormatError,))
def xml_file(data: bytes) -> None:
    for msg in parse_bytes(data).messages:
        encode(msg.request)


Fuzz = fuzz_case("vtest")

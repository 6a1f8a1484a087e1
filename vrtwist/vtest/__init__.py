"""Runner for the real vRouter's vtest XML suite over ksync.

``parse_file`` reads one vtest XML file into a ``VtestFile``; ``run_file`` plays it against a
vRouter's ksync socket and says which message differed; ``PacketRig`` sends and captures the
test's packets. ``vrtwist-vtest`` is ``vrtwist.vtest.runner.main``.
"""

from __future__ import annotations

from vrtwist._exports import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads it so)

if TYPE_CHECKING:
    from vrtwist.vtest.packets import PacketRig, PacketUnavailable
    from vrtwist.vtest.pcap import PcapError, compare_frames, read_pcap
    from vrtwist.vtest.runner import FileResult, run_file, run_messages
    from vrtwist.vtest.xmlspec import (
        VtestFile,
        VtestFormatError,
        VtestMessage,
        VtestPacket,
        parse_bytes,
        parse_file,
    )

__all__ = [
    "FileResult",
    "PacketRig",
    "PacketUnavailable",
    "PcapError",
    "VtestFile",
    "VtestFormatError",
    "VtestMessage",
    "VtestPacket",
    "compare_frames",
    "parse_bytes",
    "parse_file",
    "read_pcap",
    "run_file",
    "run_messages",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "xmlspec": ("VtestFile", "VtestMessage", "VtestPacket", "VtestFormatError", "parse_file", "parse_bytes"),
    "runner": ("FileResult", "run_file", "run_messages"),
    "pcap": ("PcapError", "read_pcap", "compare_frames"),
    "packets": ("PacketRig", "PacketUnavailable"),
})

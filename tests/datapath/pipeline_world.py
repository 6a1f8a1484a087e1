"""The in-memory datapath fixtures, kept importable here for the tests that name this
module; they live in :mod:`vrtwist.datapath.testing`, shared with the benchmarks."""

from __future__ import annotations

from vrtwist.datapath.testing import (
    RecordingOutput,
    RecordingTrap,
    World,
    ip_bytes,
    ip_int,
    mac,
    udp_frame,
)

__all__ = ["RecordingOutput", "RecordingTrap", "World", "ip_bytes", "ip_int", "mac", "udp_frame"]

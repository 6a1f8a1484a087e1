"""Seams of the pkt0 channel that other packages implement or call."""

from __future__ import annotations

from zope.interface import Interface

__all__ = ["IPacketTrap"]


class IPacketTrap(Interface):
    """Where the datapath hands packets for the agent (pkt0 in the real vRouter).

    The fields are those of ``struct agent_hdr`` (vRouter to agent direction); the frame
    is the trapped packet from its own Ethernet header, already truncated as the real
    ``agent_send`` truncates it.
    """

    def trap(
        vif_index: int,
        vrf: int,
        code: int,
        param: int,
        param_1: int,
        stats: tuple[int, int, int, int],
        frame: bytes,
    ) -> bool:
        """Queue one trapped packet for the agent; False when it was dropped (full, no agent)."""

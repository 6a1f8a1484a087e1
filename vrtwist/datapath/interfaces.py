"""Seams of the forwarding extension.

The ksync server hands each decoded request to an :class:`IRequestHandler` chosen by
Sandesh message name; other packages (``vrtwist.shmem`` for flows and bridge routes)
plug their own handlers into the datapath through :class:`IDatapath`. Those three live
in ``vrtwist.ksync.interfaces``, below both packages, so that ``vrtwist.shmem`` needs
nothing of ``vrtwist.datapath``; they are re-exported here.
"""

from __future__ import annotations

from zope.interface import Interface

from vrtwist.ksync.interfaces import IBridgeRoutes, IDatapath, IRequestHandler
from vrtwist.pkt0.interfaces import IPacketTrap

__all__ = [
    "IBridgeRoutes",
    "IDatapath",
    "IFrameOutput",
    "IOffloadOutput",
    "IOffloadPipeline",
    "IPacketPipeline",
    "IPacketTrap",
    "IPipelineTimers",
    "IRequestHandler",
]


class IFrameOutput(Interface):
    """Where the packet pipeline sends frames: the port layer implements it.

    The pipeline is sans-IO; it calls ``transmit`` for every frame that leaves a vif and
    never touches a socket itself, so it runs the same under the reactor, in tests and in
    benchmarks.
    """

    def transmit(vif_index: int, frame: bytes | bytearray | memoryview) -> bool:
        """Send ``frame`` (from its Ethernet header) out of vif ``vif_index``.

        Returns False when the vif has no attached device or its queue is full; the
        pipeline then counts the drop (``vds_interface_tx_discard``) and ``oerrors``.
        """


class IPacketPipeline(Interface):
    """The forwarding pipeline: one received frame in, transmits/traps/drops out."""

    def receive(vif_index: int, frame: bytes | bytearray | memoryview) -> None:
        """Process one frame received on vif ``vif_index`` (an attached device's read)."""


class IPipelineTimers(Interface):
    """A pipeline with state that ages without traffic (fragments awaiting their first).

    The pipeline is sans-IO and keeps no timer: the service that owns it calls
    ``sweep`` periodically on the reactor's clock.
    """

    def sweep(now: float) -> None:
        """Apply the timeouts as of ``now``, a time of the clock the pipeline was given."""


class IOffloadOutput(IFrameOutput):
    """A frame output whose ports may take a frame with its offload state.

    A GSO super-frame that leaves through such a port is written once with its
    ``virtio_net_hdr`` (the device or the next stack segments it, in C); anything
    else is segmented by the pipeline first.
    """

    def accepts_offload(vif_index: int) -> bool:
        """True when vif ``vif_index``'s device takes frames with a ``virtio_net_hdr``."""

    def transmit_offload(vif_index: int, frame: bytes | bytearray | memoryview,
                         vnet: bytes) -> bool:  # fmt: skip
        """As ``transmit``, the frame written with the ``virtio_net_hdr`` ``vnet``."""


class IOffloadPipeline(IPacketPipeline):
    """A pipeline that takes frames with their offload state still to be finished."""

    def receive(vif_index: int, frame: bytes | bytearray | memoryview,
                gso: tuple[int, int, int, int, int, int] | None = None) -> None:  # fmt: skip
        """As :meth:`IPacketPipeline.receive`; ``gso`` is the carried offload state
        (:data:`vrtwist.datapath.offload.Gso`): a partial checksum or a TCP GSO
        super-frame that the egress port or the pipeline finishes."""

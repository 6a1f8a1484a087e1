"""The seams of the vpnkit package: channels, the multiplexer, acceptors, the forward table."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from zope.interface import Attribute, Interface


class IChannel(ITransport, IConsumer, IPushProducer):
    """One logical connection carried by a multiplexer, usable as a protocol's transport.

    As a consumer it pauses its registered producer when its send buffer reaches the
    window; as a producer it stops delivering to its protocol (and stops re-opening the
    peer's window) while paused, so a slow local reader stops the remote sender.
    """

    id = Attribute("32-bit channel id")
    destination = Attribute("Destination named in the Open frame")

    def accept(protocol: Any) -> None:
        """Take a channel the peer opened: connect ``protocol`` and send our Window."""

    def refuse(reason: str) -> None:
        """Decline a channel the peer opened: send Close and log ``reason``."""

    def loseWriteConnection() -> None:
        """Half-close: send Shutdown once the buffered bytes have been sent."""

    def abortConnection() -> None:
        """Drop buffered bytes and send Close at once."""

    def sendBufferFree() -> int:
        """Bytes that may still be written before the send buffer reaches its bound."""


class IChannelAcceptor(Interface):
    """What to do with channels the peer opens (the forwarder role)."""

    def channelOpened(channel: IChannel) -> None:
        """The peer opened ``channel``; call ``channel.accept`` or ``channel.refuse``."""


class IMultiplexer(Interface):
    """One physical link carrying many channels."""

    ready = Attribute("True once the peer's handshake arrived")
    stats = Attribute("MuxStats counters")

    def openChannel(destination: Any, protocol: Any) -> IChannel:
        """Open a channel to ``destination`` with ``protocol`` on our side."""

    def liveChannels() -> int:
        """Number of ids currently in the table (open or waiting for the peer's Close)."""

    def dump() -> str:
        """Human-readable state: counters, channel table, recent frames."""

    def loseLink(reason: str) -> None:
        """Close the physical link, closing every channel."""


class IForwardTable(Interface):
    """The exposed ports of the host side (the HTTP expose API's model)."""

    def expose(port: Any) -> Any:
        """Start listening for ``port``; Deferred firing with the Port as granted."""

    def unexpose(port: Any, closeConnections: bool = False) -> Any:
        """Stop listening for ``port`` (idempotent); Deferred."""

    def list() -> list[Any]:
        """The Ports currently exposed."""

    def dump() -> str:
        """State of the forwards and of the multiplexer link(s)."""

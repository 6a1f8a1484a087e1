"""Seams of the VIC channels: the vSPC port table and the guestinfo store."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IVMPortTable(Interface):
    """The vSPC's state: one serial port per (VC UUID, label), and pending vMotions.

    ESX connections call into it; it never does I/O itself except through the
    connection and backend objects handed to it.
    """

    def attach(uuid: str, label: str, connection: object) -> object:
        """Make ``connection`` the ESX side of the port ``(uuid, label)``; return the port."""

    def matchPeer(sequenceAndSecret: bytes, connection: object) -> object | None:
        """Find the port whose pending vMotion has exactly these bytes; None if none."""

    def ports() -> list[object]:
        """All ports, for the API."""

    def snapshot() -> list[dict[str, object]]:
        """JSON-ready description of every port."""


class IGuestInfoTransport(Interface):
    """Where guestinfo keys live: ``vmware-rpctool`` in a VM, a directory elsewhere."""

    name = Attribute("short name of the transport, for messages")

    def get(key: str) -> str | None:
        """The value of ``key``, or None when it is not set."""

    def set(key: str, value: str) -> None:
        """Set ``key`` to ``value``."""

"""Which destinations the forwarder may dial for a channel the peer opens.

The peer names the destination of every channel, and the forwarder dials it with its own
privileges: a channel to ``unix:<run-dir>/dpdk_netlink`` would reach the datapath's
socket, which refuses the local user who merely holds the data link.  So TCP and UDP
are dialled (that is what port forwarding is for), and unix paths only under directories
the operator lists (``--allow-unix-dir``).  A path is judged after resolving ``..`` and
symlinks, and the resolved path is what gets dialled, so a link inside an allowed
directory cannot lead out of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from vrtwist.vpnkit.frames import Destination, Proto

__all__ = ["DestinationPolicy", "DestinationRefused"]

#: Longest path quoted in a refusal (a log line stays bounded whatever the peer sends).
_MAX_QUOTED = 120


class DestinationRefused(ValueError):
    """The destination is not one the forwarder may dial; the text says why."""


def _quote(path: str) -> str:
    text = repr(path)
    return text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 3] + "..."


class DestinationPolicy:
    """TCP/UDP allowed unless turned off; unix paths only under ``unix_dirs``."""

    def __init__(
        self, unix_dirs: Iterable[str] = (), allow_tcp: bool = True, allow_udp: bool = True
    ) -> None:
        dirs = []
        for d in unix_dirs:
            if not os.path.isabs(d):
                raise ValueError(f"{d!r}: an allowed unix directory must be an absolute path")
            dirs.append(os.path.realpath(d))
        self.unix_dirs: tuple[str, ...] = tuple(dict.fromkeys(dirs))
        self.allow_tcp = allow_tcp
        self.allow_udp = allow_udp

    def check(self, dest: Destination) -> Destination:
        """The destination to dial (a unix path resolved), or :class:`DestinationRefused`."""
        if dest.proto == Proto.TCP:
            if not self.allow_tcp:
                raise DestinationRefused("tcp destinations are not allowed")
            return dest
        if dest.proto == Proto.UDP:
            if not self.allow_udp:
                raise DestinationRefused("udp destinations are not allowed")
            return dest
        if dest.proto != Proto.UNIX or dest.path is None:
            raise DestinationRefused("unknown destination kind")
        return Destination.unix(self._unix_path(dest.path))

    def _unix_path(self, path: str) -> str:
        if not self.unix_dirs:
            raise DestinationRefused(
                f"unix path {_quote(path)}: no --allow-unix-dir given, unix destinations"
                " are refused"
            )
        if "\0" in path or not os.path.isabs(path):
            raise DestinationRefused(f"unix path {_quote(path)}: must be an absolute file path")
        real = os.path.realpath(path)
        for d in self.unix_dirs:
            if real != d and os.path.commonpath((real, d)) == d:
                return real
        raise DestinationRefused(f"unix path {_quote(path)}: not under an allowed directory")

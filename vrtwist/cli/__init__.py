"""Command-line utilities that behave like their vRouter and vpnkit namesakes.

Each tool is a module with a ``main(argv)`` installed as a console script: ``vif``, ``nh``,
``rt``, ``mpls``, ``vxlan``, ``vrfstats``, ``dropstats``, ``vrouter``, ``mirror``, ``flow``
(``vrtwist.cli.<name>``), ``vrouter-port-control`` (``port_control``), ``vpnkit-expose``
(``vpnkit_expose``) and ``vic-guestinfo`` (``guestinfo``). The names here are what the tools
share and the classes a program may drive without a command line.
"""

from __future__ import annotations

from vrtwist._exports import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads it so)

if TYPE_CHECKING:
    from vrtwist.cli._common import DEFAULT_SOCK_DIR, EXIT_RESPONSE, EXIT_USAGE, UsageError
    from vrtwist.cli.flow import FlowTool
    from vrtwist.cli.port_control import PortControl, UsageFailure
    from vrtwist.cli.vpnkit_expose import APIClient, ExposeApiError

__all__ = [
    "DEFAULT_SOCK_DIR",
    "EXIT_RESPONSE",
    "EXIT_USAGE",
    "APIClient",
    "ExposeApiError",
    "FlowTool",
    "PortControl",
    "UsageError",
    "UsageFailure",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "_common": ("UsageError", "DEFAULT_SOCK_DIR", "EXIT_RESPONSE", "EXIT_USAGE"),
    "flow": ("FlowTool",),
    "port_control": ("PortControl", "UsageFailure"),
    "vpnkit_expose": ("APIClient", "ExposeApiError"),
})

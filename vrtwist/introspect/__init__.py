"""Observability of every daemon: Prometheus ``/metrics``, ``/health``, a JSON API of the
live state, the agent's introspect pages (``Snh_*`` XML) and a small live web page.

Metrics are read from the counters the daemons already keep, at scrape time, by custom
``prometheus_client`` collectors: nothing is added to the packet or flow hot paths.
``add_introspect`` gives a daemon its ``--introspect`` listener.
"""

from __future__ import annotations

from vrtwist._exports import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads it so)

if TYPE_CHECKING:
    from vrtwist.introspect.daemons import control_app, vpnkit_app, vsock_app, vspc_app
    from vrtwist.introspect.flows import FlowTableSource
    from vrtwist.introspect.listen import (
        IntrospectService,
        add_introspect,
        introspect_option,
        listen_introspect,
    )
    from vrtwist.introspect.web import (
        BadQuery,
        Health,
        IntrospectApp,
        IntrospectCollector,
        NotFoundError,
    )

__all__ = [
    "BadQuery",
    "FlowTableSource",
    "Health",
    "IntrospectApp",
    "IntrospectCollector",
    "IntrospectService",
    "NotFoundError",
    "add_introspect",
    "control_app",
    "introspect_option",
    "listen_introspect",
    "vpnkit_app",
    "vsock_app",
    "vspc_app",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "web": ("IntrospectApp", "IntrospectCollector", "Health", "BadQuery", "NotFoundError"),
    "listen": ("IntrospectService", "add_introspect", "listen_introspect", "introspect_option"),
    "flows": ("FlowTableSource",),
    "daemons": ("control_app", "vpnkit_app", "vspc_app", "vsock_app"),
})

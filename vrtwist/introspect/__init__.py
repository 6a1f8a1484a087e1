"""Observability of every daemon: Prometheus ``/metrics``, ``/health``, a JSON API of the
live state, the agent's introspect pages (``Snh_*`` XML) and a small live web page.

Metrics are read from the counters the daemons already keep, at scrape time, by custom
``prometheus_client`` collectors: nothing is added to the packet or flow hot paths.
"""

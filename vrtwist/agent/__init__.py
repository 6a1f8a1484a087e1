"""The vRouter agent: REST port API, persisted ports and the ksync sync."""

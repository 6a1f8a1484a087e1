"""Soak tests: real daemons under many concurrent sessions, checked for lost data and leaks."""

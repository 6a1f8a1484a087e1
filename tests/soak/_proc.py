"""What a soak test measures about a daemon: open fds and resident memory, from /proc."""

from __future__ import annotations

import os
import resource
import time

from twisted.trial.unittest import SkipTest

#: resident memory a daemon may keep after a soak, above what it had after the warm-up
#: round: allocator arenas and interned objects that CPython does not give back
RSS_SLACK = 48 << 20


def fds(pid: int) -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir("/proc/%d/fd" % pid))


def rss(pid: int) -> int:
    """Resident set size of ``pid``, bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS for %d" % pid)


def raise_fd_limit(need: int) -> None:
    """Raise this process's (and so its children's) fd limit to ``need``, or skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        if os.geteuid() != 0:
            raise SkipTest("needs %d file descriptors, the hard limit is %d" % (need, hard))
        hard = need
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def settle(pid: int, baseline: int, timeout: float = 15.0) -> int:
    """Wait for ``pid``'s fd count to come back to ``baseline``; return the last count."""
    deadline = time.monotonic() + timeout
    n = fds(pid)
    while n > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
        n = fds(pid)
    return n


def quiet_fds(pid: int, timeout: float = 10.0) -> int:
    """``pid``'s fd count once it has not changed for half a second (sessions just closed
    by a client are still open on the daemon's side until its reactor sees the EOF)."""
    deadline = time.monotonic() + timeout
    last, since = fds(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        n = fds(pid)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            break
    return last

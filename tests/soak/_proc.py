"""What a soak test measures about a daemon: open fds and resident memory, from /proc."""

from __future__ import annotations

import os
import resource
import time

from twisted.trial.unittest import SkipTest

from tests.polling import PollTimeout, wait_until

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
    """Wait for ``pid``'s fd count to come back to ``baseline``; return the last count
    (the caller asserts on it, so a leak shows as a number, not a timeout)."""
    try:
        wait_until(lambda: fds(pid) <= baseline, f"the fds of {pid} back to {baseline}",
                   timeout, 0.1)
    except PollTimeout:
        pass
    return fds(pid)


def quiet_fds(pid: int, timeout: float = 10.0) -> int:
    """``pid``'s fd count once it has not changed for half a second (sessions just closed
    by a client are still open on the daemon's side until its reactor sees the EOF)."""
    seen = [fds(pid), time.monotonic()]

    def quiet() -> bool:
        n = fds(pid)
        if n != seen[0]:
            seen[:] = [n, time.monotonic()]
            return False
        return time.monotonic() - seen[1] >= 0.5

    try:
        wait_until(quiet, f"the fds of {pid} to stay put", timeout, 0.1)
    except PollTimeout:
        pass
    return int(seen[0])

"""Process-wide tuning that only a daemon's start may apply.

Collector thresholds and allocator settings belong to the whole process. Building a
service (as tests and plugin checks do) must not change them, so the tap modules return
a :class:`DaemonService`, which applies them when twistd starts it and puts the
collector thresholds back when it stops.
"""

from __future__ import annotations

import atexit
import fcntl
import gc
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.python import usage
from twisted.python.failure import Failure

from vrtwist._twisted_compat import set_exit_signal
from vrtwist.logfields import Logger


class DaemonService(MultiService):
    """A ``MultiService`` that applies ``tunings`` on start and restores the collector.

    It also holds the daemon's :class:`RunDirLock`\\ s (:meth:`hold`) until every child
    has finished stopping.
    """

    def __init__(self, *tunings: Callable[[], object]) -> None:
        super().__init__()
        self._tunings = tunings
        self._savedThresholds: tuple[int, ...] | None = None
        self.locks: list[RunDirLock] = []

    def hold(self, lock: RunDirLock) -> None:
        """Release ``lock`` when this service has stopped (the process ending also does)."""
        self.locks.append(lock)

    def startService(self) -> None:
        self._savedThresholds = gc.get_threshold()
        for tune in self._tunings:
            tune()
        super().startService()

    def stopService(self) -> Deferred[object]:
        """Stop the children, then give the collector its thresholds back."""
        d: Deferred[object] = super().stopService()
        if self._savedThresholds is not None:
            gc.set_threshold(*self._savedThresholds)
            self._savedThresholds = None

        def release(result: object) -> object:
            while self.locks:
                self.locks.pop().release()
            return result

        d.addBoth(release)
        return d


class RunDirLock:
    """An exclusive ``flock`` on ``<run-dir>/<role>.lock``, taken before anything else there.

    A second ``twistd vrouter`` or ``vrouter-dp`` on the same run directory used to
    truncate the running one's ``flow.shmem`` and ``bridge.shmem`` before it found the
    ksync socket busy. The lock comes first, so the second one changes nothing.
    ``flock`` (not ``lockf``) because its lock belongs to the open file, which twistd's
    daemonising fork hands to the child, and the kernel drops it when the process dies,
    however it dies: a stale lock file is harmless. The file holds the owner's pid, for
    the refusal message only.
    """

    def __init__(self, run_dir: str, role: str, owner: str) -> None:
        self.path = os.path.join(run_dir, f"{role}.lock")
        self._fd: int | None = None
        try:
            os.makedirs(run_dir, mode=0o700, exist_ok=True)
        except FileExistsError:
            raise StartupError(f"run directory {run_dir} is not a directory") from None
        except OSError as e:
            raise StartupError(f"run directory {run_dir}: {describe(e)}") from None
        if not os.path.isdir(run_dir):
            raise StartupError(f"run directory {run_dir} is not a directory")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StartupError(f"run directory {run_dir} is not usable: {describe(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise StartupError(
                f"run directory {run_dir} is in use by another {owner}{who}; "
                f"nothing was changed") from None
        except OSError as e:
            os.close(fd)
            raise StartupError(f"cannot lock {self.path}: {describe(e)}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        self._fd = fd
        if not os.access(run_dir, os.W_OK):
            self.release()
            raise StartupError(f"run directory {run_dir} is not writable")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock (closing the file drops the lock); the file stays, as a stale one is harmless."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).split(b"\n", 1)[0]
        return int(text) if text.strip() else None
    except (OSError, ValueError):
        return None


#: Collector thresholds for the daemons (``twistd vrouter``, ``vrouter-control``, vpnkit).
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Fewer young collections in a daemon that allocates in bursts.

    With CPython's defaults (a collection every 700 net allocations, full ones as the heap
    grows) a burst of 10,000 routes spends about a quarter of its CPU walking live
    objects (``bench/bench_xmpp.py --mode components``), and a relay's short connections
    (a few dozen objects each) trigger one every few connections.  Cycles are still
    collected, only in larger steps.  Never lowers thresholds set by someone else.
    """
    if gc.get_threshold()[0] < GC_THRESHOLDS[0]:
        gc.set_threshold(*GC_THRESHOLDS)


def reactor_and_tunings(
    reactor: Any, *tunings: Callable[[], object]
) -> tuple[Any, tuple[Callable[[], object], ...]]:
    """The reactor a tap builds on, and the process tunings it may apply.

    No reactor given means a real twistd process: the global reactor, with ``tunings``.
    Tests pass their own reactor and keep their process as it is (no tunings).
    """
    if reactor is not None:
        return reactor, ()
    from twisted.internet import reactor as _reactor

    # twistd starts the services before the reactor installs its signal handlers
    return _reactor, (*tunings, lambda: _reactor.callWhenRunning(quiet_stop_signals, _reactor))


_log = Logger()
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def quiet_stop_signals(reactor: Any) -> bool:
    """Make SIGTERM and SIGINT stop ``reactor`` without logging inside the signal handler.

    Twisted's own handlers log "Received SIGTERM" from the handler itself. Its log
    observers take a lock built on ``threading._RLock``, the pure-Python lock, which is
    not safe against a signal arriving half-way through its ``acquire``: if the signal
    interrupts the main thread while it writes a log line, the handler's log call
    waits for a lock the interrupted frame will never release, and the daemon hangs
    instead of stopping (seen with ``twistd vsock-relay`` under test). These handlers
    only queue the stop (``callFromThread``, as Twisted's do) and log from the reactor.
    Only handlers the reactor installed are replaced; returns whether any were.
    """
    replaced = False
    for signum in _STOP_SIGNALS:
        current = signal.getsignal(signum)
        if getattr(current, "__self__", None) is not reactor:
            continue  # not the reactor's handler (none installed, or someone else's)
        signal.signal(signum, lambda n, frame: _queue_stop(reactor, n))
        replaced = True
    if replaced:
        _log.debug("stop signals handled outside the signal handler from now on")
    return replaced


def _queue_stop(reactor: Any, signum: int) -> None:
    # Signal context: no logging, no locks; a deque append and a waker write only.
    set_exit_signal(reactor, signum)  # twistd re-raises it at exit, as with Twisted's own
    reactor.callFromThread(_stop, reactor, signum)


def _stop(reactor: Any, signum: int) -> None:
    _log.info("Received {name}, shutting down.", name=signal.Signals(signum).name)
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass  # a second signal while already stopping


# -- start-up failures --------------------------------------------------------------------
#
# A daemon that cannot start must say why in one line and exit non-zero, never log a
# traceback and go on serving nothing.  Three moments, one mechanism:
#
# * options: bad values and endpoint strings raise ``usage.UsageError`` (twistd prints the
#   usage and that line, exit 1);
# * building the service (``makeService``: run-dir lock, run-dir unusable) and starting it
#   (``privilegedStartService``/``startService``: every listen of a stream endpoint, which
#   twistd does before its reactor runs) raise :class:`StartupError`.  twistd removes its
#   pid file and lets the exception out; the hook installed by :func:`daemon_maker` prints
#   it as one line and the interpreter exits 1.  Detached (without ``-n``), twistd hands
#   the same line to the waiting parent through its status pipe;
# * later, once the reactor runs (the agent's REST port opens after the datapath answered):
#   :func:`report_start_failure` finds the :class:`StartupGuard` above the service, which
#   logs the line, stops the reactor (every started service stops cleanly) and makes the
#   process exit 1 once twistd has finished (an ``atexit`` hook: twistd's ``run`` returns
#   nothing, so nothing else carries an exit status out of it).


class StartupError(Exception):
    """A daemon cannot start; ``str(error)`` is the one line its user sees."""


def describe(error: BaseException) -> str:
    """One line naming what failed, without a traceback."""
    if isinstance(error, StartupError):
        return str(error)
    if isinstance(error, CannotListenError):
        port = error.port.decode(errors="replace") if isinstance(error.port, bytes) else error.port
        where = f"{error.interface}:{port}" if error.interface else str(port)
        reason = error.socketError
        text = getattr(reason, "strerror", None) or str(reason)
        return f"cannot listen on {where}: {text}"
    if isinstance(error, OSError) and error.strerror:
        name = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{name}"
    return f"{type(error).__name__}: {error}"


def check_endpoint(description: str, option: str, *, client: bool = False) -> None:
    """Parse an endpoint string as ``makeService`` will; ``usage.UsageError`` if it is bad.

    For ``postOptions``: a typo (``tcp:notaport``) is an option error, reported with the
    usage, not a traceback out of ``makeService``.  Nothing is opened.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.python import usage

    try:
        (clientFromString if client else serverFromString)(reactor, description)
    except Exception as e:  # noqa: BLE001 - plugins' parsers raise anything: usage errors
        raise usage.UsageError(f"--{option} {description}: {_parse_error(e)}") from None


def _parse_error(error: BaseException) -> str:
    if isinstance(error, KeyError):
        return f"unknown endpoint type {error.args[0]!r}" if error.args else "unknown endpoint"
    return describe(error) if isinstance(error, OSError) else str(error) or type(error).__name__


class StartupGuard(MultiService):
    """The top of a twistd daemon's service tree: start-up failures end the process.

    Built by :func:`daemon_maker` around what the tap's ``makeService`` returned; tests
    that call ``makeService`` themselves get the bare tree and see the exceptions.

    Detached (twistd without ``-n``), the parent process waits for a status from the
    child and exits with it. A service in the tree with a ``ready`` Deferred (the agent:
    its REST port opens after the datapath answered) holds that status back until it
    fires, so a failure after the reactor started still reaches the parent as one line
    and exit 1 (``twistdConfig`` is twistd's own options, the parent of the plugin's).
    """

    def __init__(self, tapname: str, child: Any, reactor: Any = None,
                 twistdConfig: Any = None) -> None:
        super().__init__()
        self.tapname = tapname
        self._reactor = reactor
        self._config = twistdConfig
        self._statusPipe: int | None = None
        self.failed: str | None = None
        self.child = child
        child.setServiceParent(self)
        for svc in _walk(child):
            if isinstance(svc, StreamServerEndpointService):
                _name_listen_errors(svc)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            raise StartupError(describe(e)) from e

    def startService(self) -> None:
        try:
            super().startService()
        except Exception as e:
            raise StartupError(describe(e)) from e
        readies = [svc.ready for svc in _walk(self.child)
                   if isinstance(getattr(svc, "ready", None), Deferred)]
        pending = [d for d in readies if not d.called]
        if not pending or self._config is None:
            return
        try:
            pipe = self._config.get("statusPipe")
        except AttributeError:
            return
        if pipe is None:
            return
        del self._config["statusPipe"]  # twistd would report success now: we do, later
        self._statusPipe = pipe
        gathered = gatherResults(pending, consumeErrors=True)
        gathered.addCallbacks(lambda _: self._status(b"0"), lambda _: None)

    def _status(self, data: bytes) -> None:
        """Tell twistd's waiting parent how start-up went (once)."""
        pipe, self._statusPipe = self._statusPipe, None
        if pipe is None:
            return
        try:
            os.write(pipe, data[:100])
            os.close(pipe)
        except OSError:
            pass

    def fail(self, message: str, code: int = 1) -> None:
        """After the reactor started: log ``message``, stop, and exit with ``code``."""
        if self.failed is not None:
            return
        self.failed = message
        # the parent prints what follows "1 " (twistd's own format) and exits 1
        self._status(b"1 " + f"{self.tapname}: {message}".encode("ascii", "backslashreplace"))
        global _exit_code
        _exit_code = code
        _log.critical("{tap}: {message}", tap=self.tapname, message=message)
        _say(f"twistd {self.tapname}: {message}")
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor as reactor
        reactor.callWhenRunning(_stop_quietly, reactor)


def _name_listen_errors(svc: StreamServerEndpointService) -> None:
    """A failed listen of ``svc`` raises (not ``log.err``) a StartupError naming where."""
    svc._raiseSynchronously = True
    start = svc.privilegedStartService

    def privilegedStartService() -> None:
        try:
            start()
        except CannotListenError as e:
            raise StartupError(describe(e)) from e
        except Exception as e:  # e.g. the unix endpoint's lock file: its own error
            raise StartupError(f"cannot listen on {_where(svc.endpoint)}: "
                               f"{getattr(e, 'strerror', None) or e}") from e

    svc.privilegedStartService = privilegedStartService  # type: ignore[method-assign]


def _where(endpoint: Any) -> str:
    address = getattr(endpoint, "_address", None)  # Twisted's unix endpoints
    if address is None:
        address = getattr(endpoint, "path", None)  # vrtwist.unixlisten's
    if address is not None:
        return address.decode(errors="replace") if isinstance(address, bytes) else str(address)
    port = getattr(endpoint, "_port", None)
    if port is not None:
        interface = getattr(endpoint, "_interface", "") or ""
        return f"{interface}:{port}" if interface else f"port {port}"
    return repr(endpoint)


def _stop_quietly(reactor: Any) -> None:
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


def _walk(svc: Any) -> Any:
    yield svc
    if IServiceCollection.providedBy(svc):
        for child in svc:
            yield from _walk(child)


def report_start_failure(service: Any, error: BaseException | Failure) -> bool:
    """``service`` could not start after the reactor did: end the daemon it belongs to.

    Returns whether a :class:`StartupGuard` took it (under twistd); otherwise (tests, a
    service used as a library) the caller's own logging is all that happens.
    """
    value = error.value if isinstance(error, Failure) else error
    node = service
    while node is not None:
        if isinstance(node, StartupGuard):
            node.fail(describe(value) if value is not None else "start-up failed")
            return True
        node = getattr(node, "parent", None)
    return False


_exit_code: int | None = None
_hooked = False


def _say(line: str) -> None:
    """One line on the process's real standard error (twistd redirects ``sys.stderr``)."""
    err = sys.__stderr__
    if err is None:
        return
    try:
        err.write(line + "\n")
        err.flush()
    except (OSError, ValueError):
        pass  # detached: stderr is gone, the log and the status pipe carry it


def _install_hooks(tapname: str) -> None:
    global _hooked
    if _hooked:
        return
    _hooked = True
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if isinstance(value, StartupError):
            _say(f"twistd {tapname}: {value}")
            if sys.stderr is not sys.__stderr__:  # twistd's log took stderr: log it too
                _log.critical("{tap}: {message}", tap=tapname, message=str(value))
            return
        previous(kind, value, tb)

    sys.excepthook = hook
    atexit.register(_exit_with_code)


def usage_errors_exit_1(options: type[usage.Options]) -> type[usage.Options]:
    """``options`` whose usage errors end twistd with status 1 on every Twisted version.

    twistd prints the usage and the error either way, but releases before 24.10 then
    return normally, so the process exited 0 after refusing its options; the exit hook
    makes it 1 (twistd's own ``sys.exit(1)`` in newer releases gives the same status).
    """

    class Options(options):  # type: ignore[valid-type, misc]
        def parseOptions(self, options: Any = None) -> None:
            global _exit_code
            try:
                super().parseOptions(options)
            except usage.error:
                # only in a twistd process: a test parsing bad options must not change
                # the exit status of the test runner
                if _exit_code is None and os.path.basename(sys.argv[0]).startswith("twistd"):
                    _exit_code = 1
                    atexit.register(_exit_with_code)
                raise

    Options.__name__ = Options.__qualname__ = options.__name__
    Options.__module__ = options.__module__
    Options.__doc__ = options.__doc__
    return Options


def _exit_with_code() -> None:
    if _exit_code is None:
        return
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(_exit_code)


def daemon_maker(tapname: str, make: Callable[[Any], Any]) -> Callable[[Any], StartupGuard]:
    """What twistd calls as a plugin's ``makeService``: ``make`` under a :class:`StartupGuard`.

    Only twistd goes through here (``twisted/plugins/vrtwist_plugins.py``), so only a
    daemon process gets the exception hook and exit status of start-up failures.
    """

    def makeService(options: Any) -> StartupGuard:
        _install_hooks(tapname)
        try:
            service = make(options)
        except StartupError:
            raise
        except (OSError, CannotListenError) as e:
            raise StartupError(describe(e)) from e
        return StartupGuard(tapname, service, twistdConfig=getattr(options, "parent", None))

    return makeService

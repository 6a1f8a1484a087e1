"""Bounded log files for every vrtwist twistd daemon.

twistd's own log file (``UnixAppLogger``) is a ``twisted.python.logfile.LogFile`` that
rotates at 1 MB and keeps every rotated file: a peer that makes a daemon log fills the
disk.  For each vrtwist daemon the plugin wraps the tap's options (:func:`with_log_options`)
so that, where twistd would write to a file, it writes the same file through a
``LogFile`` that keeps ``--log-files`` rotated files of ``--log-size`` bytes.  It uses
twistd's ``--logger`` hook (a log observer factory the runner calls at start), set while
the options are parsed, so everything else stays twistd's: ``--logfile`` names the file
(``twistd.log`` by default), ``-n`` without ``--logfile`` or ``--logfile=-`` logs to
stdout, ``--syslog`` goes to syslog, an explicit ``--logger`` wins, SIGUSR1 rotates.
"""

from __future__ import annotations

import signal
from typing import Any, ClassVar

from twisted.logger import ILogObserver, textFileLogObserver
from twisted.python import usage
from twisted.python.logfile import LogFile

__all__ = [
    "DEFAULT_LOG_FILES",
    "DEFAULT_LOG_SIZE",
    "configured_observer",
    "install_rotating_log",
    "rotating_observer",
    "with_log_options",
]

#: A log file is rotated when it reaches this many bytes...
DEFAULT_LOG_SIZE = 10_000_000
#: ...and this many rotated files are kept (``twistd.log.1`` ... ``.5``); older ones go.
DEFAULT_LOG_FILES = 5


def rotating_observer(path: str, size: int, files: int) -> ILogObserver:
    """A text observer writing ``path``, rotated at ``size`` bytes, ``files`` kept."""
    log_file = LogFile.fromFullPath(path, rotateLength=size, maxRotatedFiles=files)
    # As twistd does for its own file: SIGUSR1 rotates, unless someone handles it already.
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(_signum: int, _frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return textFileLogObserver(log_file)


#: What :func:`configured_observer` opens: set by :func:`install_rotating_log` while
#: twistd parses its options (twistd's ``--logger`` is a name, called without arguments).
configured: tuple[str, int, int] | None = None


def configured_observer() -> ILogObserver:
    """The ``--logger`` factory twistd calls at start: the file the options named."""
    if configured is None:
        raise RuntimeError("vrtwist.logfiles.configured_observer used without a vrtwist daemon")
    return rotating_observer(*configured)


def install_rotating_log(server_options: Any, size: int, files: int) -> bool:
    """Make twistd log to a bounded set of files where it would log to a file.

    ``server_options`` are twistd's (the parent of a plugin's options).  Returns whether
    the rotating observer was installed (False: stdout, syslog or an explicit --logger).
    """
    global configured
    if server_options.get("logger") or server_options.get("syslog"):
        return False
    path = server_options.get("logfile") or ""
    if path == "-" or (server_options.get("nodaemon") and not path):
        return False
    configured = (path or "twistd.log", size, files)
    server_options["logger"] = f"{__name__}.configured_observer"
    return True


def _positive(what: str) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if value < 1:
            raise ValueError(f"{what} must be at least 1")
        return value

    return parse


def with_log_options(options: type[usage.Options]) -> type[usage.Options]:
    """``options`` plus ``--log-size``/``--log-files``, installing the bounded log file."""

    class Options(options):  # type: ignore[valid-type, misc]
        optParameters: ClassVar[list[list[Any]]] = [
            ["log-size", None, DEFAULT_LOG_SIZE, "rotate the log file at this many bytes",
             _positive("--log-size")],
            ["log-files", None, DEFAULT_LOG_FILES, "rotated log files kept",
             _positive("--log-files")],
        ]

        def postOptions(self) -> None:
            super().postOptions()
            parent = getattr(self, "parent", None)
            if parent is not None and "logfile" in parent:
                install_rotating_log(parent, self["log-size"], self["log-files"])

    Options.__name__ = Options.__qualname__ = options.__name__
    Options.__module__ = options.__module__
    Options.__doc__ = options.__doc__
    return Options

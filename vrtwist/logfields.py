"""Log events with bounded fields: a peer cannot make one log line megabytes long.

Many fields of vrtwist's log events are text a peer chose: XMPP node and JID names,
close reasons quoting a stanza, REST port names, vpnkit and vSPC peer strings.  Each is
cut to :data:`MAX_FIELD` characters with a marker saying how much was left out.
:class:`Logger` does it for every field of every event it emits (the daemons' modules use
it instead of ``twisted.logger.Logger``), so no call site can forget; :func:`bounded`
does it for a single value.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger as _TwistedLogger
from twisted.logger import LogLevel

__all__ = ["MAX_FIELD", "Logger", "bounded"]

#: Characters of one text field kept in a log event.
MAX_FIELD = 300


def bounded(value: Any, limit: int = MAX_FIELD) -> Any:
    """``value`` cut to ``limit`` characters (bytes) with a marker; other types as they are.

    ``"aaaa...aaa...[1048276 more characters]"``: the start stays readable, the length
    of what was cut is said.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return f"{value[:limit]}...[{len(value) - limit} more characters]"
    if isinstance(value, bytes | bytearray):
        if len(value) <= limit:
            return value
        return bytes(value[:limit]) + b"...[%d more bytes]" % (len(value) - limit)
    return value


class Logger(_TwistedLogger):
    """``twisted.logger.Logger`` whose events carry every text field :func:`bounded`."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        for key, value in kwargs.items():
            if isinstance(value, str | bytes | bytearray) and len(value) > MAX_FIELD:
                kwargs[key] = bounded(value)
        super().emit(level, format, **kwargs)

"""Sans-IO, binary-clean TELNET codec for the vSPC (no Twisted imports).

Why not ``twisted.conch.telnet``: it applies NVT newline rules on receive
(``CR LF`` -> ``LF``, ``CR NUL`` -> ``CR``) even in BINARY mode, and walks the
input byte by byte. A serial console carries SSH and arbitrary bytes, so this
parser only undoes IAC doubling and splits out commands. It scans with
``bytes.find``/``bytes.split`` on the single IAC byte (memchr loops): Python
code runs once per chunk for pure data and once per IAC only in chunks that
carry commands. (Two-byte searches such as ``replace(b"\xff\xff", ...)`` are
several times slower in CPython; measured in docs/vic.md.)

Events returned by :meth:`TelnetParser.feed`:

* ``bytes`` -- application data, already IAC-unescaped;
* :class:`Negotiation` -- ``IAC WILL/WONT/DO/DONT <option>``;
* :class:`Subnegotiation` -- ``IAC SB <option> <payload> IAC SE``, payload unescaped;
* :class:`Command` -- any other two-byte command (NOP, AYT, BRK, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

IAC = 255
DONT = 254
DO = 253
WONT = 252
WILL = 251
SB = 250
GA = 249
NOP = 241
SE = 240

BINARY = 0
ECHO = 1
SGA = 3
AUTHENTICATION = 37
COM_PORT = 44
VMWARE_EXT = 232

_IAC = b"\xff"
_IAC2 = b"\xff\xff"
_IAC_SE = b"\xff\xf0"

VERB_NAMES = {WILL: "WILL", WONT: "WONT", DO: "DO", DONT: "DONT"}

#: Default hard limit on one subnegotiation (IAC SB ... IAC SE), escaped size.
MAX_SUBNEGOTIATION = 4096

__all__ = [
    "Command",
    "Negotiation",
    "Subnegotiation",
    "TelnetParser",
    "TelnetProtocolError",
    "encodeData",
    "encodeNegotiation",
    "encodeSubnegotiation",
]


class TelnetProtocolError(ValueError):
    """The peer sent bytes that are not valid TELNET; ``offset`` counts from stream start."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at stream offset {offset}")
        self.offset = offset
        #: Events decoded from the same chunk before the bad bytes: nothing valid is lost.
        self.events: list[Event] = []


class Negotiation(NamedTuple):
    """``IAC <verb> <option>`` with verb one of WILL, WONT, DO, DONT."""

    verb: int
    option: int


class Subnegotiation(NamedTuple):
    """``IAC SB <option> <payload> IAC SE``; ``payload`` has IAC IAC undone."""

    option: int
    payload: bytes


class Command(NamedTuple):
    """Any other ``IAC <code>`` (NOP, BRK, AYT, ...)."""

    code: int


Event = bytes | Negotiation | Subnegotiation | Command


def encodeData(data: bytes) -> bytes:
    """Escape application data for the wire (double every 0xFF)."""
    return data.replace(_IAC, _IAC2)


def encodeNegotiation(verb: int, option: int) -> bytes:
    return bytes((IAC, verb, option))


def encodeSubnegotiation(option: int, payload: bytes) -> bytes:
    return bytes((IAC, SB, option)) + payload.replace(_IAC, _IAC2) + bytes((IAC, SE))


class TelnetParser:
    """Incremental TELNET decoder: feed any chunking, get the same events."""

    def __init__(self, maxSubnegotiation: int = MAX_SUBNEGOTIATION) -> None:
        self._pending = b""  # an incomplete command carried to the next feed
        self._consumed = 0  # stream offset of the start of the current chunk
        self._max = maxSubnegotiation

    @property
    def pending_bytes(self) -> int:
        """Bytes held back because a command is not complete yet."""
        return len(self._pending)

    def lookahead(self, data: bytes, wanted: Callable[[Event], bool]) -> int | None:
        """Length of the shortest prefix of ``data`` that completes a ``wanted`` command.

        ``data`` continues the stream this parser has seen; the parser itself is
        not changed. The vSPC runs this over bytes peeked from a paused socket to
        find an option-232 command behind held serial data, then consumes exactly
        that prefix. Only subnegotiations end in ``IAC SE``, so only prefixes
        ending there are tried. None: no such command (or bad bytes) in ``data``.
        """
        probe = TelnetParser(self._max)
        probe._pending = self._pending
        probe._consumed = self._consumed
        start = 0
        pos = data.find(_IAC_SE)
        while pos >= 0:
            end = pos + 2
            try:
                events = probe.feed(data[start:end])
            except TelnetProtocolError:
                return None
            if any(wanted(e) for e in events if not isinstance(e, bytes)):
                return end
            start = end
            pos = data.find(_IAC_SE, end)
        return None

    def feed(self, data: bytes) -> list[Event]:
        if self._pending:
            data = self._pending + data
            self._pending = b""
        elif _IAC not in data:
            self._consumed += len(data)
            return [data] if data else []
        else:
            # Pure data with doubled 0xFF only? Split on single IACs (memchr speed):
            # IACs pair up left to right exactly when every odd part is empty and
            # their count is even; then the even parts joined by one IAC are the data.
            parts = data.split(_IAC)
            if len(parts) & 1 and not any(parts[1::2]):
                self._consumed += len(data)
                return [_IAC.join(parts[0::2])]
        return self._slowFeed(data)

    def _slowFeed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        pieces: list[bytes] = []
        try:
            return self._scan(data, events, pieces)
        except TelnetProtocolError as e:
            if pieces:
                events.append(b"".join(pieces))
            e.events = events
            raise

    def _scan(self, data: bytes, events: list[Event], pieces: list[bytes]) -> list[Event]:
        n = len(data)
        pos = 0
        find = data.find
        while pos < n:
            i = find(_IAC, pos)
            if i < 0:
                pieces.append(data[pos:])
                pos = n
                break
            if i > pos:
                pieces.append(data[pos:i])
            if i + 1 >= n:
                pos = i
                break
            code = data[i + 1]
            if code == IAC:
                pieces.append(_IAC)
                pos = i + 2
                continue
            if pieces:
                events.append(b"".join(pieces))
                pieces.clear()
            if code in VERB_NAMES:
                if i + 2 >= n:
                    pos = i
                    break
                events.append(Negotiation(code, data[i + 2]))
                pos = i + 3
            elif code == SB:
                end = self._subnegotiation(data, i, events)
                if end < 0:
                    pos = i
                    break
                pos = end
            elif code == SE:
                raise TelnetProtocolError("IAC SE outside a subnegotiation", self._consumed + i)
            else:
                events.append(Command(code))
                pos = i + 2
        return self._finish(data, pos, events, pieces)

    def _finish(
        self, data: bytes, pos: int, events: list[Event], pieces: list[bytes]
    ) -> list[Event]:
        """End a scan at ``pos``: flush the data run, keep the incomplete tail."""
        if pieces:
            events.append(b"".join(pieces))
        if pos < len(data):
            self._pending = data[pos:]
            if len(self._pending) > self._max + 8:
                raise TelnetProtocolError(
                    f"subnegotiation longer than {self._max} bytes", self._consumed + pos
                )
        self._consumed += pos
        return events

    def _subnegotiation(self, data: bytes, start: int, events: list[Event]) -> int:
        """Parse ``IAC SB`` at ``start``; return the end offset, or -1 if incomplete."""
        n = len(data)
        if start + 2 >= n:
            return -1
        option = data[start + 2]
        pos = start + 3
        parts: list[bytes] = []
        while True:
            j = data.find(_IAC, pos)
            if j < 0 or j + 1 >= n:
                if (n - start) > self._max + 8:
                    raise TelnetProtocolError(
                        f"subnegotiation longer than {self._max} bytes",
                        self._consumed + start,
                    )
                return -1
            parts.append(data[pos:j])
            nxt = data[j + 1]
            if nxt == IAC:
                parts.append(_IAC)
                pos = j + 2
            elif nxt == SE:
                payload = b"".join(parts)
                if j + 2 - start > self._max + 8:
                    raise TelnetProtocolError(
                        f"subnegotiation longer than {self._max} bytes",
                        self._consumed + start,
                    )
                events.append(Subnegotiation(option, payload))
                return j + 2
            else:
                raise TelnetProtocolError(
                    f"IAC {nxt} inside a subnegotiation of option {option}",
                    self._consumed + j,
                )

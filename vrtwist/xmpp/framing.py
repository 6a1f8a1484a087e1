"""Sans-IO stream framing of the Contrail control-node XMPP dialect.

The real agent and control node do not run a streaming XML parser over the whole
stream: they find stanzas with a pattern on the opening tag and an explicit close tag,
then parse each stanza alone (``src/xmpp/xmpp_session.cc``).  This matters because the
control node puts an ``<?xml version="1.0"?>`` declaration in the middle of the stream,
in front of every config iq, which a streaming parser rejects.  This module frames the
same way, with a hard bound on the size of one stanza.

No Twisted imports: bytes in, events out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_STANZA",
    "KEEPALIVE",
    "STREAM_CLOSE",
    "STREAM_NS",
    "FramingError",
    "FramingEvent",
    "Keepalive",
    "StanzaBytes",
    "StanzaSplitter",
    "StreamEnd",
    "StreamHeader",
    "build_stream_open",
    "build_stream_response",
    "parse_stream_header",
]

#: The keepalive "whitespace stanza": UTF-8 of U+0200, sent every hold/3.
KEEPALIVE = b"\xc8\x80"
STREAM_CLOSE = b"</stream:stream>"
STREAM_NS = "http://etherx.jabber.org/streams"
CONTROL_NODE_JID = "network-control@contrailsystems.com"

#: One stanza (with its leading declaration) may not exceed this many bytes.  A control
#: node message carries a bounded number of items, so 1 MiB is generous.
DEFAULT_MAX_STANZA = 1 << 20

_MAX_HEADER = 4096

# Bytes the real framer skips between stanzas ("\s" plus the keepalive bytes).
_SKIP = b" \n\r\t\xc8\x80"

# Elements that can start a top-level unit, and how each one ends.
_OPEN_TAG = re.compile(
    rb"<(iq|message|stream:stream|/stream:stream|stream:features|starttls|proceed|failure)"
    rb"(?=[\s/>])"
)
# (opening bytes, close tag without its ">", tag) of the fast path in ``_next``
_FAST_UNITS = ((b"<iq ", b"</iq", b"iq"), (b"<message ", b"</message", b"message"))
_TAG_NAMES = {b"iq": "iq", b"message": "message"}
_NAME_CHARS = re.compile(rb"<[/A-Za-z:_-]*")
_HEADER_END = re.compile(rb"""http://etherx\.jabber\.org/streams["']\s*>""")
_ATTR = re.compile(r"""([A-Za-z_:][-A-Za-z0-9_:.]*)\s*=\s*(["'])(.*?)\2""", re.S)
_CLOSE_TAG = {
    b"iq": re.compile(rb"</iq\s*>"),
    b"message": re.compile(rb"</message\s*>"),
    b"stream:features": re.compile(rb"</stream:features\s*>"),
    b"starttls": re.compile(rb"/>|</starttls\s*>"),
    b"proceed": re.compile(rb"/>|</proceed\s*>"),
    b"failure": re.compile(rb"/>|</failure\s*>"),
}


class FramingError(ValueError):
    """The byte stream cannot be split into stanzas; the session must close."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at stream offset {offset})")
        self.offset = offset


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """``<stream:stream ...>`` opening (never closed); attributes as sent."""

    attributes: dict[str, str]
    raw: bytes

    @property
    def from_(self) -> str:
        return self.attributes.get("from", "")

    @property
    def to(self) -> str:
        return self.attributes.get("to", "")


@dataclass(slots=True, unsafe_hash=True)
class StanzaBytes:
    """One complete top-level element (``iq``, ``message``, features, ...), as bytes.

    Not frozen (one is built per stanza; a frozen dataclass costs 3x): treat as immutable.

    ``data`` may start with whitespace and an XML declaration, as the real framer
    keeps whatever precedes the opening tag.
    """

    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    """Only whitespace / ``C8 80`` bytes were seen: restarts the hold timer."""


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """``</stream:stream>`` from the peer."""


FramingEvent = StreamHeader | StanzaBytes | Keepalive | StreamEnd

_KEEPALIVE_EVENT = Keepalive()
_STREAM_END_EVENT = StreamEnd()


def build_stream_open(
    from_: str, to: str = CONTROL_NODE_JID, xmlns: str = ""
) -> bytes:
    """The agent's stream open, byte for byte as the real agent prints it.

    ``xmlns`` carries the subcluster name (normally empty), ``xmlns:stream`` comes last
    (the peer's framer requires it), and the template's ``/>`` became two spaces and ``>``.
    """
    return (
        f'<stream:stream from="{_attr(from_)}" to="{_attr(to)}" version="1.0" '
        f'xml:lang="en" xmlns="{_attr(xmlns)}" xmlns:stream="{STREAM_NS}"  >'
    ).encode()


def build_stream_response(from_: str, to: str) -> bytes:
    """The control node's answer to a stream open (``id`` is always ``++123``)."""
    return (
        f'<stream:stream from="{_attr(from_)}" to="{_attr(to)}" id="++123" version="1.0" '
        f'xml:lang="en" xmlns="jabber:client" xmlns:stream="{STREAM_NS}"  >'
    ).encode()


def parse_stream_header(raw: bytes) -> StreamHeader:
    """Read the attributes of a ``<stream:stream ...>`` header (no XML parser needed)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FramingError("stream header is not UTF-8", exc.start) from None
    start = text.find("<stream:stream")
    attributes = {m.group(1): m.group(3) for m in _ATTR.finditer(text, start)}
    for key, value in attributes.items():
        if "&" in value or "<" in value:
            attributes[key] = _unescape(value)
    return StreamHeader(attributes, raw)


def _attr(value: str) -> str:
    return (
        value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    )


def _unescape(value: str) -> str:
    return (
        value.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
        .replace("&apos;", "'").replace("&amp;", "&")
    )


class StanzaSplitter:
    """Split a received byte stream into stream headers, stanzas and keepalives.

    One buffer with a read offset; the consumed prefix is dropped only when it is large,
    so feeding many small chunks stays linear: every search resumes where the last one
    for the same unit stopped, and the declarations and comments in front of a stanza
    are walked once, however many pieces they arrive in (``scanned`` counts the bytes
    the searches examined, so a test can check that).  Anything that is not whitespace, an XML
    declaration, a comment or a known element start is a :class:`FramingError`, as is a
    unit (declaration + stanza) longer than ``max_stanza`` bytes.
    """

    def __init__(self, max_stanza: int = DEFAULT_MAX_STANZA) -> None:
        self.max_stanza = max_stanza
        self._buf = bytearray()
        self._off = 0
        self._consumed = 0  # stream offset of _buf[0], for error messages
        self._scan_from = 0  # where the close-tag search resumes for the pending unit
        self._walk = 0  # end of the declarations already walked in front of the pending unit
        #: Bytes examined by searches so far (linear in the bytes fed, however split).
        self.scanned = 0

    def feed(self, data: bytes) -> list[FramingEvent]:
        """Add ``data``; return every complete unit now available, in order."""
        buf = self._buf
        buf += data
        events: list[FramingEvent] = []
        end = len(buf)
        while True:
            # the hottest unit inline (an agent's publish, collection, subscribe iqs);
            # ``_next`` does the same, and everything else
            off = self._off
            if buf.startswith(b"<iq ", off):
                start = max(off, self._scan_from)
                at = buf.find(b"</iq", start)
                if at < 0:  # not all here yet: the next search starts near the end
                    self.scanned += end - start
                    self._scan_from = max(off, end - 3)
                    self._need_more(off, end)
                    break
                self.scanned += at - start
                if at < end - 4 and buf[at + 4] == 0x3E:  # ">"
                    events.append(self._unit(b"iq", off, at + 5))
                    continue
            event = self._next(buf)
            if event is None:
                break
            events.append(event)
        if self._off > 65536 and self._off * 2 > len(buf):
            del buf[: self._off]
            self._consumed += self._off
            self._scan_from -= self._off
            self._walk = max(0, self._walk - self._off)
            self._off = 0
        return events

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a unit."""
        return len(self._buf) - self._off

    def _error(self, message: str, at: int) -> FramingError:
        return FramingError(message, self._consumed + at)

    def _next(self, buf: bytearray) -> FramingEvent | None:
        off = self._off
        # Fast path for the hot stanzas: "<iq " / "<message " whose first close tag is
        # the plain "</iq>" / "</message>" (the first match of the general close pattern
        # too), found with one ``find`` (much faster than a regex search).  A unit split
        # over reads (a control node's message of 128 items is larger than one read)
        # resumes the search where the last one ended, so it is never rescanned.  A close
        # tag in another form ("</iq >") takes the general path.
        for f_open, f_close, f_tag in _FAST_UNITS:
            if buf.startswith(f_open, off):
                start = max(off, self._scan_from)
                at = buf.find(f_close, start)
                end = len(buf)
                if at < 0:
                    self.scanned += end - start
                    self._scan_from = max(off, end - len(f_close) + 1)
                    return self._need_more(off, end)
                self.scanned += at - start
                gt = at + len(f_close)
                if gt >= end:
                    self._scan_from = at
                    return self._need_more(off, end)
                if buf[gt] == 0x3E:  # ">"
                    return self._unit(f_tag, off, gt + 1)
                break
        return self._general(buf, off)

    def _general(self, buf: bytearray, off: int) -> FramingEvent | None:
        """Any unit the fast path did not take: keepalive, header, end, other elements."""
        end = len(buf)
        start = off
        while off < end and buf[off] in _SKIP:
            off += 1
        if off > start:
            # Whitespace before anything else: report a keepalive and consume it.
            self._off = off
            self._scan_from = off
            return _KEEPALIVE_EVENT
        unit_start = off
        off = self._prolog(buf, off, end)
        if off < 0:
            return self._need_more(unit_start, end)
        m = _OPEN_TAG.match(buf, off)
        if m is None:
            name = _NAME_CHARS.match(buf, off)
            partial = name.group(0) if name else b"<"
            if name is not None and name.end() == end and len(partial) < 20:
                return self._need_more(unit_start, end)
            raise self._error(f"unexpected element {partial[:40]!r}", off)
        tag = m.group(1)
        if tag == b"stream:stream":
            return self._stream_header(buf, m, unit_start, end)
        if tag == b"/stream:stream":
            close = buf.find(b">", m.end())
            if close < 0:
                return self._need_more(unit_start, end)
            self._off = self._scan_from = close + 1
            return _STREAM_END_EVENT
        return self._element(buf, m, tag, unit_start, end)

    def _prolog(self, buf: bytearray, off: int, end: int) -> int:
        """Skip the declarations and comments before an element: its "<", or -1 for more.

        They stay part of the unit.  Those walked already (the unit came in pieces) are
        not walked again, and the search for the end of an unfinished one resumes where
        it stopped.
        """
        if self._walk > off:
            off = self._walk
        while True:
            while off < end and buf[off] in _SKIP:
                off += 1
            self._walk = off
            if off >= end:
                return -1
            if buf[off] != 0x3C:  # "<"
                raise self._error(f"unexpected byte {buf[off]:#04x} outside a stanza", off)
            if off + 1 >= end:
                return -1
            nxt = buf[off + 1]
            if nxt == 0x3F:  # "<?"
                off = self._skip_to(buf, off, 2, b"?>", end)
            elif nxt == 0x21:  # "<!"
                if end - off < 4 and buf[off:end] == b"<!--"[: end - off]:
                    return -1
                if buf[off : off + 4] != b"<!--":
                    raise self._error("DTD or markup declaration outside a stanza", off)
                off = self._skip_to(buf, off, 4, b"-->", end)
            else:
                return off
            if off < 0:
                return -1

    def _skip_to(self, buf: bytearray, off: int, opener: int, closer: bytes, end: int) -> int:
        """The position after ``closer`` of the declaration/comment at ``off``, or -1."""
        start = max(off + opener, self._scan_from)
        close = buf.find(closer, start)
        if close < 0:
            self.scanned += end - start
            self._scan_from = max(off + opener, end - len(closer) + 1)
            return -1
        self.scanned += close - start
        return close + len(closer)

    def _stream_header(
        self, buf: bytearray, m: re.Match[bytes], unit_start: int, end: int
    ) -> FramingEvent | None:
        start = max(m.end(), self._scan_from)
        hm = _HEADER_END.search(buf, start)
        self.scanned += (hm.start() if hm is not None else end) - start
        if hm is None:
            if end - unit_start > _MAX_HEADER:
                raise self._error(
                    "stream header not ended by the xmlns:stream declaration", unit_start
                )
            self._scan_from = max(m.end(), end - 40)
            return self._need_more(unit_start, end)
        raw = bytes(buf[unit_start : hm.end()])
        self._off = self._scan_from = hm.end()
        return parse_stream_header(raw)

    def _element(
        self, buf: bytearray, m: re.Match[bytes], tag: bytes, unit_start: int, end: int
    ) -> FramingEvent | None:
        closer = _CLOSE_TAG[tag]
        if tag in (b"starttls", b"proceed", b"failure"):
            gt = buf.find(b">", m.end())
            if gt < 0:
                return self._need_more(unit_start, end)
            if buf[gt - 1] == 0x2F:  # self-closing "/>"
                return self._unit(tag, unit_start, gt + 1)
            closer = re.compile(b"</" + tag + rb"\s*>")
        start = max(m.end(), self._scan_from)
        cm = closer.search(buf, start)
        self.scanned += (cm.start() if cm is not None else end) - start
        if cm is None:
            # Resume the search near the end next time (the close tag may be split).
            self._scan_from = max(m.end(), end - 24)
            return self._need_more(unit_start, end)
        return self._unit(tag, unit_start, cm.end())

    def _unit(self, tag: bytes, start: int, stop: int) -> StanzaBytes:
        if stop - start > self.max_stanza:
            raise self._error(
                f"stanza of {stop - start} bytes exceeds the limit of {self.max_stanza}", start
            )
        self._off = self._scan_from = stop
        name = _TAG_NAMES.get(tag) or tag.decode("ascii")
        return StanzaBytes(name, bytes(self._buf[start:stop]))

    def _need_more(self, unit_start: int, end: int) -> FramingEvent | None:
        if end - unit_start > self.max_stanza:
            raise self._error(
                f"incomplete stanza exceeds the limit of {self.max_stanza} bytes", unit_start
            )
        # Whitespace already skipped is consumed now so it is not reported twice.
        if unit_start > self._off:
            self._scan_from = max(self._scan_from, unit_start)
            self._off = unit_start
        return None

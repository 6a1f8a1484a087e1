"""The one place vrtwist parses XML it did not write (XMPP stanzas, vtest files).

Built on expat (``pyexpat``) configured to refuse what makes untrusted XML dangerous:
any document type declaration (so no internal subset, no entity can be declared and
nothing can expand), entity and notation declarations, external entity references and
parameter entities.  The refusal is made by the parser itself, on the very bytes it
parses, not by a search of a string that is changed afterwards; a handler that refuses
stops expat at once.  Elements are built by the C ``TreeBuilder`` of ElementTree, which
expat feeds directly, so the cost stays close to ``xml.etree.ElementTree.fromstring``.

Nesting can be bounded too (``max_depth``): a document nested deeper than any real one
is refused here rather than left to exhaust the recursion of the code that walks it.

No Twisted imports.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import NoReturn
from xml.parsers import expat

__all__ = ["XmlError", "XmlRefused", "parse"]


class XmlError(ValueError):
    """The bytes are not well-formed XML, or not XML this module accepts."""


class XmlRefused(XmlError):
    """Well-formed XML that is refused: a DTD, an entity declaration or too deep."""


class _Refusal(Exception):
    """Raised inside an expat handler to stop the parse (re-raised as XmlRefused)."""


def _refuse(what: str) -> NoReturn:
    raise _Refusal(what)


def _doctype(*_args: object) -> None:
    _refuse("a document type declaration (DTD)")


def _entity_decl(*_args: object) -> None:
    _refuse("an entity declaration")


def _notation_decl(*_args: object) -> None:
    _refuse("a notation declaration")


def _external_entity(*_args: object) -> int:
    _refuse("an external entity reference")


def parse(
    data: bytes, *, encoding: str | None = None, max_depth: int | None = None
) -> ET.Element:
    """Parse one complete document into an element tree, refusing any DTD or entity.

    ``encoding`` is the one expat assumes over the document's declaration (XMPP is
    UTF-8), though a byte-order mark or UTF-16 layout still wins: the refusals are
    expat's, so they hold in any encoding.  Tags and attribute names are kept as written (no namespace processing:
    ``stream:features`` stays so, ``xmlns`` is an ordinary attribute).  Raises
    :class:`XmlRefused` for a DTD, an entity or notation declaration, an external entity
    or nesting deeper than ``max_depth`` (unbounded by default: the bound costs a Python
    call per element, so hot callers bound the walk of the tree instead), and
    :class:`XmlError` for anything not well formed.
    """
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(encoding)
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _doctype
    parser.EntityDeclHandler = _entity_decl
    parser.UnparsedEntityDeclHandler = _entity_decl
    parser.NotationDeclHandler = _notation_decl
    parser.ExternalEntityRefHandler = _external_entity
    parser.buffer_text = True
    parser.buffer_size = 65536
    parser.CharacterDataHandler = builder.data
    if max_depth is None:
        # expat calls the C builder directly: no Python frame per element
        parser.StartElementHandler = builder.start
        parser.EndElementHandler = builder.end
    else:
        limit = max_depth
        depth = 0
        start, end = builder.start, builder.end

        def start_element(tag: str, attrs: dict[str, str]) -> None:
            nonlocal depth
            depth += 1
            if depth > limit:
                _refuse(f"nesting deeper than {limit} elements")
            start(tag, attrs)

        def end_element(tag: str) -> None:
            nonlocal depth
            depth -= 1
            end(tag)

        parser.StartElementHandler = start_element
        parser.EndElementHandler = end_element
    try:
        parser.Parse(data, True)
    except _Refusal as exc:
        raise XmlRefused(f"refused: {exc}") from None
    except expat.ExpatError as exc:
        raise XmlError(f"not well-formed XML: {exc}") from None
    except (ValueError, UnicodeError, RecursionError, MemoryError) as exc:
        raise XmlError(f"not well-formed XML: {type(exc).__name__}") from None
    return builder.close()

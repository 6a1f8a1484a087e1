"""The introspect HTTP resource (Klein), shared by every daemon.

A daemon hands an :class:`IntrospectApp` its collector registry, a health check, the JSON
views of its state and, for the agent, the ``Snh_*`` XML pages; the app serves them with
bounded inputs (query strings are capped, listings are paged) and plain errors.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from twisted.web.iweb import IRequest

from vrtwist.logfields import Logger

#: Longest query string accepted (a page request needs a few numbers).
MAX_QUERY = 4096
#: Longest accepted value of one query parameter.
MAX_PARAM = 256
#: Files of the web page (served from the package; no build step, no CDN).
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


class BadQuery(ValueError):
    """A query parameter that cannot be used (400)."""


class NotFoundError(LookupError):
    """A JSON or XML view asked for something that does not exist (404)."""


Params = Mapping[str, str]


@dataclass
class Health:
    """``live``: the process answers; ``ready``: it does its job; ``reasons``: why not."""

    live: bool = True
    ready: bool = True
    reasons: list[str] = field(default_factory=list)


def int_param(params: Params, name: str, default: int, lo: int = 0, hi: int = 2**31) -> int:
    """A bounded integer query parameter, or :class:`BadQuery`."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name}: {raw[:40]!r} is not an integer") from None
    if not lo <= value <= hi:
        raise BadQuery(f"{name}: {value} is outside {lo}..{hi}")
    return value


class IntrospectApp:
    """``/metrics``, ``/health``, ``/api/<view>``, ``/Snh_<Req>``, ``/`` (the page)."""

    app = Klein()
    _log = Logger()

    def __init__(
        self,
        daemon: str,
        registry: CollectorRegistry,
        health: Callable[[], Health],
        views: Mapping[str, Callable[[Params], Any]] | None = None,
        xml_pages: Mapping[str, Callable[[Params], bytes]] | None = None,
        page: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.daemon = daemon
        self.registry = registry
        self.health = health
        self.views = dict(views or {})
        self.xml_pages = dict(xml_pages or {})
        self.page = page
        self.clock = clock
        #: requests answered per (path kind, status), for this server's own metrics
        self.served: dict[tuple[str, int], int] = {}

    def resource(self) -> Any:
        return self.app.resource()

    # -- helpers -------------------------------------------------------------------------

    def _count(self, kind: str, code: int) -> None:
        key = (kind, code)
        self.served[key] = self.served.get(key, 0) + 1

    def _params(self, request: IRequest) -> dict[str, str]:
        uri: bytes = request.uri
        q = uri.partition(b"?")[2]
        if len(q) > MAX_QUERY:
            raise BadQuery(f"query: {len(q)} bytes is longer than the {MAX_QUERY} byte limit")
        out: dict[str, str] = {}
        args: dict[bytes, list[bytes]] = request.args or {}
        for k, vs in args.items():
            v = vs[-1] if vs else b""
            if len(v) > MAX_PARAM:
                raise BadQuery(f"{k.decode('latin-1')[:40]}: value longer than {MAX_PARAM}")
            out[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
        return out

    def _json(self, request: IRequest, code: int, body: Any, kind: str) -> bytes:
        self._count(kind, code)
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body, separators=(",", ":"), default=_jsonable).encode()

    # -- routes --------------------------------------------------------------------------

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        """Prometheus text exposition of every registered collector."""
        self._count("metrics", 200)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)

    @app.route("/health", methods=["GET"])
    def get_health(self, request: IRequest) -> bytes:
        """200 when ready, 503 (with the reasons) when live but not ready."""
        try:
            h = self.health()
        except Exception as e:  # noqa: BLE001 - a broken check is "not ready", said plainly
            self._log.failure("health check failed")
            h = Health(live=True, ready=False, reasons=[f"health check failed: {e}"])
        body = {"daemon": self.daemon, "live": h.live, "ready": h.ready, "reasons": h.reasons}
        return self._json(request, 200 if h.ready else 503, body, "health")

    @app.route("/api", methods=["GET"])
    def api_index(self, request: IRequest) -> bytes:
        """The views this daemon serves."""
        return self._json(request, 200, {"daemon": self.daemon, "views": sorted(self.views),
                                         "xml": sorted("Snh_" + n for n in self.xml_pages)},
                          "api")

    @app.route("/api/<string:view>", methods=["GET"])
    def api_view(self, request: IRequest, view: str) -> bytes:
        """One JSON view of the live state (``?start=&limit=`` where it is a listing)."""
        fn = self.views.get(view)
        if fn is None:
            return self._json(request, 404, {"error": f"no view {view[:64]!r}",
                                             "views": sorted(self.views)}, "api")
        try:
            body = fn(self._params(request))
        except BadQuery as e:
            return self._json(request, 400, {"error": str(e)}, "api")
        except NotFoundError as e:
            return self._json(request, 404, {"error": str(e)}, "api")
        return self._json(request, 200, body, "api")

    @app.route("/<string:name>", methods=["GET"])
    def snh_or_file(self, request: IRequest, name: str) -> bytes:
        """``Snh_<Req>`` XML introspect pages and the page's own files."""
        if name.startswith("Snh_") and name[4:] in self.xml_pages:
            try:
                body = self.xml_pages[name[4:]](self._params(request))
            except BadQuery as e:
                return self._json(request, 400, {"error": str(e)}, "xml")
            self._count("xml", 200)
            request.setHeader(b"content-type", b"text/xml; charset=utf-8")
            return body
        if self.page and name in STATIC_FILES:
            return self._static(request, name)
        return self._json(request, 404, {"error": f"no such path /{name[:64]}"}, "other")

    @app.route("/", methods=["GET"])
    def index(self, request: IRequest) -> bytes:
        """The live page (or the list of views when the page is off)."""
        if not self.page:
            return self.api_index(request)
        return self._static(request, "index.html")

    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Any) -> bytes:
        from werkzeug.exceptions import MethodNotAllowed, NotFound

        if failure.check(NotFound):
            return self._json(request, 404, {"error": "no such path"}, "other")
        if failure.check(MethodNotAllowed):
            return self._json(request, 405, {"error": "method not allowed"}, "other")
        self._log.failure("introspect request failed", failure)
        return self._json(request, 500, {"error": "internal error"}, "other")

    def _static(self, request: IRequest, name: str) -> bytes:
        self._count("page", 200)
        request.setHeader(b"content-type", STATIC_FILES[name].encode())
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        # the page loads nothing but its own files: no inline script, no other origin
        request.setHeader(b"content-security-policy", b"default-src 'self'; "
                          b"img-src 'self' data:; frame-ancestors 'none'")
        return static_file(name)


_STATIC: dict[str, bytes] = {}


def static_file(name: str) -> bytes:
    """A file of the page, read once."""
    data = _STATIC.get(name)
    if data is None:
        data = resources.files("vrtwist.introspect").joinpath("static", name).read_bytes()
        _STATIC[name] = data
    return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


class IntrospectCollector(Collector):
    """The introspect server's own requests (so a scraper sees itself)."""

    def __init__(self, app: IntrospectApp) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        m = CounterMetricFamily("vrtwist_introspect_requests", "introspect requests answered",
                                labels=["kind", "code"])
        for (kind, code), n in sorted(self.app.served.items()):
            m.add_metric([kind, str(code)], n)
        yield m

"""The HTTP/JSON expose API of Go's ``go/pkg/vpnkit/http``, served with Klein.

Same paths, methods and Port JSON as Go, so Go's ``vpnkit-expose-port`` and
``vpnkit-list-ports`` can drive it.  Errors are HTTP 400 with ``{"message": "..."}``,
which Go's client turns into an ``ExposeError``.  ``?close=1`` on unexpose also closes
the forward's live connections (an addition; Go leaves them running).
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.internet import defer
from twisted.web.iweb import IRequest

from vrtwist.logfields import Logger
from vrtwist.safejson import JsonInputError, decode_json
from vrtwist.vpnkit.host import ExposeError, ForwardTable, Port, PortError

__all__ = ["ExposeAPI"]


def _json(request: IRequest, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode() + b"\n"


class ExposeAPI:
    """Klein resource over a :class:`ForwardTable`."""

    app = Klein()
    _log = Logger()

    def __init__(self, table: ForwardTable) -> None:
        self.table = table

    def resource(self) -> Any:
        return self.app.resource()

    def _port(self, request: IRequest, kinds: tuple[str, ...]) -> Port:
        raw = request.content.read() if request.content is not None else b""
        try:
            obj = decode_json(raw) if raw.strip() else None
        except JsonInputError as e:
            raise PortError(f"request body is not acceptable JSON: {e}") from None
        port = Port.from_json(obj)
        if port.proto not in kinds:
            if kinds == ("unix",):
                raise PortError("exposed pipes can only be unix")
            raise PortError("exposed ports can only be TCP or UDP")
        return port

    async def _expose(self, request: IRequest, kinds: tuple[str, ...]) -> bytes:
        try:
            port = self._port(request, kinds)
            granted = await self.table.expose(port)
        except (PortError, ExposeError) as e:
            self._log.info("expose failed: {err}", err=str(e))
            return _json(request, 400, {"message": str(e)})
        return _json(request, 200, granted.to_json())

    async def _unexpose(self, request: IRequest, kinds: tuple[str, ...]) -> bytes:
        try:
            port = self._port(request, kinds)
        except PortError as e:
            return _json(request, 400, {"message": str(e)})
        close = request.args.get(b"close", [b"0"])[0] in (b"1", b"true", b"yes")
        await self.table.unexpose(port, closeConnections=close)
        request.setResponseCode(200)
        return b""

    @app.route("/forwards/expose/port", methods=["PUT", "POST"])
    def expose_port(self, request: IRequest) -> Any:
        return defer.ensureDeferred(self._expose(request, ("tcp", "udp")))

    @app.route("/forwards/expose/pipe", methods=["PUT", "POST"])
    def expose_pipe(self, request: IRequest) -> Any:
        return defer.ensureDeferred(self._expose(request, ("unix",)))

    @app.route("/forwards/unexpose/port", methods=["DELETE", "POST"])
    def unexpose_port(self, request: IRequest) -> Any:
        return defer.ensureDeferred(self._unexpose(request, ("tcp", "udp")))

    @app.route("/forwards/unexpose/pipe", methods=["DELETE", "POST"])
    def unexpose_pipe(self, request: IRequest) -> Any:
        return defer.ensureDeferred(self._unexpose(request, ("unix",)))

    @app.route("/forwards/list", methods=["GET"])
    def list_ports(self, request: IRequest) -> bytes:
        return _json(request, 200, [p.to_json() for p in self.table.list()])

    @app.route("/forwards/dump", methods=["GET"])
    def dump(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self.table.dump().encode()

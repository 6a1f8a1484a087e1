"""The vSPC's HTTP/JSON view (Klein): VMs, their ESX peer, backend state, bytes, hand-offs."""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.web.server import Request

from vrtwist.vic.interfaces import IVMPortTable


class VSPCApi:
    """Read-only JSON over the port table; ``resource()`` plugs into a ``Site``."""

    app = Klein()

    def __init__(self, table: IVMPortTable) -> None:
        self.table = table

    @staticmethod
    def _json(request: Request, body: object, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"

    @app.route("/vms", methods=["GET"])
    def vms(self, request: Request) -> bytes:
        ports = self.table.snapshot()
        return self._json(
            request,
            {
                "vms": ports,
                "count": len(ports),
                "handoffs": sum(int(str(p["handoffs"])) for p in ports),
            },
        )

    @app.route("/vms/<string:uuid>", methods=["GET"])
    def vm(self, request: Request, uuid: str) -> bytes:
        found = [p for p in self.table.snapshot() if p["uuid"] == uuid.lower()]
        if not found:
            return self._json(request, {"error": f"no VM with VC UUID {uuid}"}, 404)
        return self._json(request, {"ports": found})

    @app.route("/health", methods=["GET"])
    def health(self, request: Request) -> bytes:
        return self._json(request, {"ok": True, "vms": len(self.table.snapshot())})

    def resource(self) -> Any:
        return self.app.resource()

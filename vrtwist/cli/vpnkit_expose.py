"""``vpnkit-expose``: expose, unexpose and list ports through the vpnkit HTTP/JSON API.

The client side of ``/forwards/*`` (what Go's ``vpnkit-expose-port`` and
``vpnkit-list-ports`` do), over any Twisted client endpoint, unix sockets included::

    vpnkit-expose --api unix:/run/vpnkit/api.sock expose tcp:127.0.0.1:8080:10.0.0.2:80
    vpnkit-expose --api tcp:127.0.0.1:8181 list
    vpnkit-expose --api ... unexpose --close tcp:127.0.0.1:8080:10.0.0.2:80
    vpnkit-expose --api ... expose -i tcp:0.0.0.0:0:10.0.0.2:80   # until Ctrl-C, then unexpose
    vpnkit-expose --api ... dump
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, ClassVar

from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString
from twisted.python import usage
from twisted.web.client import Agent

from vrtwist.vpnkit.host import Port, PortError

__all__ = ["APIClient", "ExposeApiError", "Options", "main"]

DEFAULT_API = os.environ.get("VPNKIT_API", "unix:/run/vpnkit/api.sock")


class ExposeApiError(Exception):
    """The API answered with an error (HTTP 400 ``{"message": ...}``) or was unreachable."""


class _EndpointFactory:
    def __init__(self, reactor: Any, endpoint: str) -> None:
        self.reactor = reactor
        self.endpoint = endpoint

    def endpointForURI(self, uri: Any) -> Any:
        return clientFromString(self.reactor, self.endpoint)


class APIClient:
    """Talks to the expose API at a Twisted client endpoint string."""

    def __init__(self, reactor: Any, endpoint: str) -> None:
        import treq.client

        self._http = treq.client.HTTPClient(
            Agent.usingEndpointFactory(reactor, _EndpointFactory(reactor, endpoint))
        )

    async def _call(self, method: str, path: str, body: Any = None) -> bytes:
        import treq

        data = json.dumps(body).encode() if body is not None else None
        try:
            resp = await self._http.request(method, "http://vpnkit" + path, data=data)
            content: bytes = await treq.content(resp)
        except Exception as e:  # noqa: BLE001 - any failure: one error to the user
            raise ExposeApiError(f"cannot reach the API: {e}") from None
        if resp.code != 200:
            try:
                msg = json.loads(content)["message"]
            except (ValueError, KeyError, TypeError):  # not JSON, or no message in it
                msg = content.decode("utf-8", "replace").strip() or f"HTTP {resp.code}"
            raise ExposeApiError(msg)
        return content

    def _kind(self, port: Port) -> str:
        return "pipe" if port.proto == "unix" else "port"

    async def expose(self, port: Port) -> Port:
        raw = await self._call("PUT", f"/forwards/expose/{self._kind(port)}", port.to_json())
        return Port.from_json(json.loads(raw)) if raw.strip() else port

    async def unexpose(self, port: Port, close: bool = False) -> None:
        q = "?close=1" if close else ""
        await self._call("DELETE", f"/forwards/unexpose/{self._kind(port)}{q}", port.to_json())

    async def list(self) -> list[Port]:
        return [Port.from_json(p) for p in json.loads(await self._call("GET", "/forwards/list"))]

    async def dump(self) -> str:
        return (await self._call("GET", "/forwards/dump")).decode("utf-8", "replace")


class _SpecOptions(usage.Options):
    def parseArgs(self, spec: str) -> None:  # type: ignore[override]
        try:
            self["port"] = Port.parse(spec)
        except PortError as e:
            raise usage.UsageError(str(e)) from None


class _ExposeOptions(_SpecOptions):
    synopsis = "[-i] proto:outip:outport:inip:inport | unix:outpath:inpath"
    optFlags: ClassVar[list[list[Any]]] = [["interactive", "i", "stay running; unexpose on Ctrl-C / SIGTERM"]]


class _UnexposeOptions(_SpecOptions):
    synopsis = "[--close] SPEC"
    optFlags: ClassVar[list[list[Any]]] = [["close", None, "also close the forward's live connections"]]


class _NoArgs(usage.Options):
    pass


class Options(usage.Options):
    synopsis = "vpnkit-expose [--api ENDPOINT] {expose,unexpose,list,dump} ..."
    optParameters: ClassVar[list[list[Any]]] = [
        ["api", "a", DEFAULT_API, "endpoint of the HTTP/JSON expose API (env VPNKIT_API)"]
    ]
    subCommands: ClassVar[list[list[Any]]] = [
        ["expose", None, _ExposeOptions, "expose a port (idempotent)"],
        ["unexpose", None, _UnexposeOptions, "stop exposing a port (idempotent)"],
        ["list", None, _NoArgs, "list exposed ports"],
        ["dump", None, _NoArgs, "print the multiplexer state dump and metrics"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("give a command: expose, unexpose, list or dump")


async def run(reactor: Any, opts: Options, out: Any = None) -> int:
    out = out if out is not None else sys.stdout
    client = APIClient(reactor, opts["api"])
    sub = opts.subOptions
    try:
        if opts.subCommand == "expose":
            granted = await client.expose(sub["port"])
            print(f"exposed {granted}", file=out)
            if sub["interactive"]:
                # Like Go's vpnkit-expose-port: the forward lives as long as we do.
                async def cleanup() -> None:
                    try:
                        await client.unexpose(granted)
                        print(f"unexposed {granted}", file=out)
                    except ExposeApiError as e:
                        print(f"vpnkit-expose: unexpose failed: {e}", file=sys.stderr)

                reactor.addSystemEventTrigger(
                    "before", "shutdown", lambda: defer.ensureDeferred(cleanup())
                )
                await defer.Deferred()  # until Ctrl-C / SIGTERM stops the reactor
        elif opts.subCommand == "unexpose":
            await client.unexpose(sub["port"], close=sub["close"])
            print(f"unexposed {sub['port']}", file=out)
        elif opts.subCommand == "list":
            for p in await client.list():
                line = str(p) + (f"  # {p.annotation}" if p.annotation else "")
                print(line, file=out)
        else:
            out.write(await client.dump())
    except ExposeApiError as e:
        print(f"vpnkit-expose: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    opts = Options()
    try:
        opts.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"{opts}\nvpnkit-expose: {e}", file=sys.stderr)
        raise SystemExit(2) from None

    async def _main(reactor: Any) -> None:
        code = await run(reactor, opts)
        if code:
            raise SystemExit(code)

    task.react(lambda r: defer.ensureDeferred(_main(r)))

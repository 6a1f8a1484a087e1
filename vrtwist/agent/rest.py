"""The agent's REST port API (``port_ipc``) as a Klein application.

Same paths, methods, JSON field names and success bodies as the real agent (docs/protocols/agent-rest.md), so
``vrouter-port-control``, os-vif and the CNI keep working.  Errors are better than the
original: 400 with ``{"error": "<field>: <problem>"}`` for a bad body, 404 for an unknown
uuid on GET, 500 when a port file cannot be written (never a silent 200), standard reason
phrases.  Uppercase uuids in paths and bodies are accepted and normalised.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web import server
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from vrtwist.agent.interfaces import IGatewayProgrammer
from vrtwist.agent.model import (
    PORT_TYPE_REMOTE,
    Gateway,
    Port,
    PortValidationError,
    ResourceExhausted,
    gateways_from_json,
    normalise_uuid,
    port_from_json,
    vm_port_from_json,
)
from vrtwist.agent.networks import (
    NetworkConfig,
    NetworkValidationError,
    network_from_json,
)
from vrtwist.agent.policy import (
    PolicyConfig,
    PolicyValidationError,
    network_policy_from_json,
    security_group_from_json,
    security_groups_from_json,
)
from vrtwist.agent.ports import PortNotFound, PortTable, WrongPortType
from vrtwist.agent.store import PortFileError
from vrtwist.logfields import Logger
from vrtwist.safejson import JsonInputError, check_text, decode_json

#: Largest request body accepted (a 1,000-port array is about 500 KB).
MAX_BODY = 8 * 1024 * 1024
#: Seconds a client whose body was refused may go on sending before it is cut off.
REFUSED_LINGER = 2.0


class RestApiError(Exception):
    """An HTTP error answer: status code and the ``error`` text."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _json(request: IRequest, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=UTF-8")
    data = (json.dumps(body, indent=4) if body else json.dumps(body)).encode()
    # as the real agent: a Content-Length, never a chunked body
    request.setHeader(b"content-length", b"%d" % len(data))
    return data


def _read_body(request: IRequest) -> Any:
    content = request.content
    if content is None:
        raise RestApiError(400, "body: empty, expected JSON")
    content.seek(0, 2)
    size = content.tell()
    if size > MAX_BODY:
        raise RestApiError(413, f"body: {size} bytes is larger than the {MAX_BODY} byte limit")
    content.seek(0)
    try:
        return decode_json(content.read())
    except JsonInputError as e:
        raise RestApiError(400, str(e)) from None


def _uuid(value: str, what: str = "uuid") -> str:
    norm = normalise_uuid(value)
    if norm is None:
        raise RestApiError(400, f"{what}: {value!r} is not a uuid")
    return norm


#: Whether a port's device is attached to the datapath: True/False, or a Deferred of it.
AttachmentProbe = Callable[[Port], "Deferred[bool] | bool"]


class PortApi:
    """REST resource over a :class:`PortTable`; ``PortApi(table).app.resource()`` serves it."""

    app = Klein()
    _log = Logger()

    def __init__(self, table: PortTable,
                 programmed: Callable[[], Deferred[None]] | None = None,
                 gateways: IGatewayProgrammer | None = None,
                 attachment: AttachmentProbe | None = None,
                 policy: PolicyConfig | None = None,
                 save_policy: Callable[[dict[str, Any]], None] | None = None,
                 networks: NetworkConfig | None = None,
                 save_networks: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.table = table
        #: the networks' DNS method, servers, virtual DNS and VNI (``/network``)
        self.networks = networks if networks is not None else NetworkConfig()
        self._save_networks = save_networks
        #: security groups and network policies (what a controller would send)
        self.policy = policy if policy is not None else PolicyConfig()
        self._save_policy = save_policy
        # GET adds "attached": a port is accepted before its TAP exists (Nova/os-vif plug
        # first, libvirt creates the TAP later) and the datapath attaches it when it appears
        # (by default: the table's view of the OS, the device exists)
        self._attachment = attachment or (lambda port: table.device_exists(port.system_name))
        self._gateway_sink = gateways
        self.gateways: dict[str, Gateway] = {}
        # waits (bounded) until the datapath has the changes made so far: a 200 for a port
        # then means "persisted and programmed", and busy callers are slowed down instead of
        # queueing unbounded work behind the datapath
        self._programmed = programmed

    def _call(self, request: IRequest, fn: Any, *args: Any) -> Deferred[bytes]:
        """Run a handler; map its exceptions to JSON error answers."""
        return Deferred.fromCoroutine(self._answer(request, fn, *args))

    async def _answer(self, request: IRequest, fn: Any, *args: Any) -> bytes:
        try:
            result = fn(*args)
            if isinstance(result, (Deferred, Coroutine)):
                result = await result
        except RestApiError as e:
            return _json(request, e.code, {"error": e.message})
        except (PortValidationError, PolicyValidationError, NetworkValidationError) as e:
            return _json(request, 400, {"error": str(e)})
        except PortFileError as e:
            self._log.error("port file error: {e}", e=e)
            return _json(request, 500, {"error": f"port file: {e.strerror or e}"})
        except ResourceExhausted as e:
            return _json(request, 503, {"error": str(e)})
        except PortNotFound as e:
            return _json(request, 404, {"error": f"port {e.args[0]} not found"})
        except WrongPortType as e:
            return _json(request, 400, {"error": str(e)})
        return _json(request, 200, result)

    # ports -----------------------------------------------------------------------------

    @app.route("/port", methods=["POST"])
    def post_port(self, request: IRequest) -> Any:
        """POST /port: one port object, or an array added all or nothing."""
        return self._call(request, self._post_port, request)

    async def _post_port(self, request: IRequest) -> dict[str, Any]:
        body = _read_body(request)
        if isinstance(body, list):
            ports: list[Port] = []
            problems: list[str] = []
            for i, item in enumerate(body):
                try:
                    ports.append(port_from_json(item))
                except PortValidationError as e:
                    problems.extend(f"[{i}].{p}" for p in e.problems)
            if problems:
                raise PortValidationError(problems)
            await self.table.add_many_async(ports)
        elif isinstance(body, dict):
            await self.table.add_many_async([port_from_json(body)])
        else:
            raise RestApiError(400, "body: expected a port object or an array of port objects")
        await self._wait_programmed()
        return {}

    async def _wait_programmed(self) -> None:
        if self._programmed is not None:
            await self._programmed()

    @app.route("/port/<string:uuid>", methods=["GET"])
    def get_port(self, request: IRequest, uuid: str) -> Any:
        """GET /port/<uuid>: the port as the real agent describes it, plus ``attached``."""
        async def get() -> dict[str, Any]:
            port = self.table.get(_uuid(uuid))
            if port is None:
                raise RestApiError(404, f"port {uuid.lower()} not found")
            out = port.to_oper_json()
            if port.type != PORT_TYPE_REMOTE:  # an ESXi port has no local device
                found = self._attachment(port)
                out["attached"] = bool(await found if isinstance(found, Deferred) else found)
            return out
        return self._call(request, get)

    @app.route("/port/<string:uuid>", methods=["DELETE"])
    def delete_port(self, request: IRequest, uuid: str) -> Any:
        """DELETE /port/<uuid>: 200 also for an unknown uuid, as the original."""
        async def delete() -> dict[str, Any]:
            await self.table.delete_async(_uuid(uuid))
            await self._wait_programmed()
            return {}
        return self._call(request, delete)

    @app.route("/syncports", methods=["POST"])
    def syncports(self, request: IRequest) -> Any:
        """POST /syncports: start a sync round (see PortTable.sync)."""
        def sync() -> dict[str, Any]:
            self.table.sync()
            return {}
        return self._call(request, sync)

    @app.route("/enable-port/<string:uuid>", methods=["PUT"])
    def enable_port(self, request: IRequest, uuid: str) -> Any:
        """PUT /enable-port/<uuid>: link up of an ESXi port."""
        return self._call(request, self._link, uuid, True)

    @app.route("/disable-port/<string:uuid>", methods=["PUT"])
    def disable_port(self, request: IRequest, uuid: str) -> Any:
        """PUT /disable-port/<uuid>: link down of an ESXi port."""
        return self._call(request, self._link, uuid, False)

    def _link(self, uuid: str, up: bool) -> dict[str, Any]:
        self.table.set_link_state(_uuid(uuid), up)
        return {}

    # gateway ---------------------------------------------------------------------------

    @app.route("/gateway", methods=["POST"])
    def post_gateway(self, request: IRequest) -> Any:
        """POST /gateway: add (or replace) simple gateways."""
        async def add() -> dict[str, Any]:
            new = gateways_from_json(_read_body(request))
            for gw in new:
                if self._gateway_sink is not None:
                    self._gateway_sink.gatewayAdded(gw)
                self.gateways[gw.interface] = gw
            await self._wait_programmed()
            return {}
        return self._call(request, add)

    @app.route("/gateway", methods=["DELETE"])
    def delete_gateway(self, request: IRequest) -> Any:
        """DELETE /gateway: remove simple gateways by interface name."""
        async def delete() -> dict[str, Any]:
            body = _read_body(request)
            if not isinstance(body, list):
                raise RestApiError(400, "body: expected a JSON array of {\"interface\": name}")
            names = []
            for i, item in enumerate(body):
                if not isinstance(item, dict) or not isinstance(item.get("interface"), str):
                    raise RestApiError(400, f"[{i}].interface: missing or not a string")
                names.append(item["interface"])
            for name in names:
                if self.gateways.pop(name, None) is not None and self._gateway_sink is not None:
                    self._gateway_sink.gatewayDeleted(name)
            await self._wait_programmed()
            return {}
        return self._call(request, delete)

    # vm + vn API (CNI / Mesos) ---------------------------------------------------------

    @app.route("/vm", methods=["POST"])
    def post_vm(self, request: IRequest) -> Any:
        """POST /vm: a CNI/Mesos port (vm + vn in one object)."""
        def add() -> dict[str, Any]:
            body = _read_body(request)
            if isinstance(body, list):
                raise RestApiError(400, "body: /vm takes one object, not an array")
            self.table.add_vm(vm_port_from_json(body))
            return {}
        return self._call(request, add)

    @app.route("/vm/<string:vm_uuid>", methods=["GET"])
    def get_vm(self, request: IRequest, vm_uuid: str) -> Any:
        """GET /vm/<vm-uuid>: every port of a VM."""
        return self._call(request, self._get_vm, vm_uuid, None)

    @app.route("/vm/<string:vm_uuid>/<string:vmi_uuid>", methods=["GET"])
    def get_vm_vmi(self, request: IRequest, vm_uuid: str, vmi_uuid: str) -> Any:
        """GET /vm/<vm-uuid>/<vmi-uuid>: one port of a VM."""
        return self._call(request, self._get_vm, vm_uuid, vmi_uuid)

    def _get_vm(self, vm_uuid: str, vmi_uuid: str | None) -> list[dict[str, Any]]:
        vm = _uuid(vm_uuid, "vm-uuid")
        vmi = _uuid(vmi_uuid, "vmi-uuid") if vmi_uuid is not None else None
        found = [p.to_oper_json() for p in self.table.ports_of_vm(vm)
                 if vmi is None or p.id == vmi]
        if not found:
            raise RestApiError(404, f"vm {vm} has no port" + (f" {vmi}" if vmi else "s"))
        return found

    @app.route("/vm/<string:vm_uuid>", methods=["DELETE"])
    def delete_vm(self, request: IRequest, vm_uuid: str) -> Any:
        """DELETE /vm/<vm-uuid>: every port of a VM, with its files."""
        def delete() -> dict[str, Any]:
            self.table.delete_vm(_uuid(vm_uuid, "vm-uuid"))
            return {}
        return self._call(request, delete)

    @app.route("/vm/<string:vm_uuid>/<string:vmi_uuid>", methods=["DELETE"])
    def delete_vm_vmi(self, request: IRequest, vm_uuid: str, vmi_uuid: str) -> Any:
        """DELETE /vm/<vm-uuid>/<vmi-uuid>: one port of a VM."""
        def delete() -> dict[str, Any]:
            self.table.delete_vm(_uuid(vm_uuid, "vm-uuid"), _uuid(vmi_uuid, "vmi-uuid"))
            return {}
        return self._call(request, delete)

    @app.route("/vm-cfg/<string:vm_name>", methods=["GET"])
    def vm_cfg(self, request: IRequest, vm_name: str) -> Any:
        """GET /vm-cfg/<vm-name>: the configuration of a VM's ports, by name."""
        def cfg() -> list[dict[str, Any]]:
            try:
                check_text(vm_name, "vm-name")
            except JsonInputError as e:
                raise RestApiError(400, str(e)) from None
            found = [{
                "id": p.id, "vm-uuid": p.instance_id, "vn-id": p.vn_id,
                "vn-name": vn_name(p.vn_id), "mac-address": p.mac_address,
                "sub-interface": False, "vlan-id": -1, "annotations": [],
            } for p in self.table.ports() if p.display_name == vm_name]
            if not found:
                raise RestApiError(404, f"vm {vm_name!r} has no ports")
            return found
        return self._call(request, cfg)

    # security groups and network policies ----------------------------------------------

    def _change_policy(self, change: Callable[[], Any]) -> dict[str, Any]:
        """Apply ``change`` and persist; if it cannot be persisted, undo it (nothing of a
        refused request stays, in memory or on disk)."""
        before = self.policy.to_json()
        change()
        if self._save_policy is not None:
            try:
                self._save_policy(self.policy.to_json())
            except PortFileError:
                self.policy.load_json(before)
                raise
        return {}

    @app.route("/security-groups", methods=["GET"])
    def list_groups(self, request: IRequest) -> Any:
        """GET /security-groups: every security group."""
        return self._call(request, lambda: [g.to_json() for g in self.policy.groups.values()])

    @app.route("/security-groups/<string:uuid>", methods=["GET"])
    def get_group(self, request: IRequest, uuid: str) -> Any:
        """GET /security-groups/<uuid>: one group and its rules."""
        def get() -> dict[str, Any]:
            g = self.policy.groups.get(_uuid(uuid))
            if g is None:
                raise RestApiError(404, f"security group {uuid.lower()} not found")
            return g.to_json()
        return self._call(request, get)

    @app.route("/security-groups/<string:uuid>", methods=["PUT"])
    def put_group(self, request: IRequest, uuid: str) -> Any:
        """PUT /security-groups/<uuid>: add or replace a group; its ports' flows are
        re-evaluated."""
        def put() -> dict[str, Any]:
            group = security_group_from_json(_uuid(uuid), _read_body(request))
            return self._change_policy(lambda: self.policy.set_group(group))
        return self._call(request, put)

    @app.route("/security-groups/<string:uuid>", methods=["DELETE"])
    def delete_group(self, request: IRequest, uuid: str) -> Any:
        """DELETE /security-groups/<uuid>: 409 while a port uses it, 404 when unknown."""
        def delete() -> dict[str, Any]:
            key = _uuid(uuid)
            if key not in self.policy.groups:
                raise RestApiError(404, f"security group {key} not found")
            users = sorted(p for p, gs in self.policy.port_groups.items() if key in gs)
            if users:
                raise RestApiError(409, f"security group {key} is used by port(s) "
                                    f"{', '.join(users)}")
            return self._change_policy(lambda: self.policy.delete_group(key))
        return self._call(request, delete)

    @app.route("/port/<string:uuid>/security-groups", methods=["GET"])
    def get_port_groups(self, request: IRequest, uuid: str) -> Any:
        """GET /port/<uuid>/security-groups: the port's group uuids (may be empty)."""
        return self._call(request, lambda: list(self.policy.port_groups.get(_uuid(uuid), ())))

    @app.route("/port/<string:uuid>/security-groups", methods=["PUT"])
    def put_port_groups(self, request: IRequest, uuid: str) -> Any:
        """PUT /port/<uuid>/security-groups: the port's groups (an empty list: none, every
        flow of the port allowed). The port need not exist yet (orchestrators may set
        its groups first); the groups must."""
        def put() -> dict[str, Any]:
            port = _uuid(uuid)
            groups = security_groups_from_json(_read_body(request))
            return self._change_policy(lambda: self.policy.set_port_groups(port, groups))
        return self._call(request, put)

    @app.route("/network-policies", methods=["GET"])
    def list_policies(self, request: IRequest) -> Any:
        """GET /network-policies: every network policy."""
        return self._call(request, lambda: [p.to_json() for p in self.policy.policies.values()])

    @app.route("/network-policies/<string:name>", methods=["GET"])
    def get_policy(self, request: IRequest, name: str) -> Any:
        """GET /network-policies/<name>: one policy, its networks and rules."""
        def get() -> dict[str, Any]:
            p = self.policy.policies.get(name)
            if p is None:
                raise RestApiError(404, f"network policy {name!r} not found")
            return p.to_json()
        return self._call(request, get)

    @app.route("/network-policies/<string:name>", methods=["PUT"])
    def put_policy(self, request: IRequest, name: str) -> Any:
        """PUT /network-policies/<name>: add or replace a policy and the networks it is
        attached to; flows are re-evaluated."""
        def put() -> dict[str, Any]:
            policy = network_policy_from_json(name, _read_body(request))
            return self._change_policy(lambda: self.policy.set_policy(policy))
        return self._call(request, put)

    @app.route("/network-policies/<string:name>", methods=["DELETE"])
    def delete_policy(self, request: IRequest, name: str) -> Any:
        """DELETE /network-policies/<name>: 404 when unknown."""
        def delete() -> dict[str, Any]:
            if name not in self.policy.policies:
                raise RestApiError(404, f"network policy {name!r} not found")
            return self._change_policy(lambda: self.policy.delete_policy(name))
        return self._call(request, delete)

    # networks --------------------------------------------------------------------------

    def _change_networks(self, change: Callable[[], Any]) -> dict[str, Any]:
        """Apply ``change`` and persist; undone when it cannot be persisted."""
        before = dict(self.networks.networks)
        change()
        if self._save_networks is not None:
            try:
                self._save_networks(self.networks.to_json())
            except PortFileError:
                self.networks.set_all(before)
                raise
        return {}

    @app.route("/networks", methods=["GET"])
    def list_networks(self, request: IRequest) -> Any:
        """GET /networks: the settings of every network given over REST."""
        return self._call(request, lambda: [n.to_json()
                                            for n in self.networks.networks.values()])

    @app.route("/network/<string:uuid>", methods=["GET"])
    def get_network(self, request: IRequest, uuid: str) -> Any:
        """GET /network/<vn-uuid>: one network's settings (404 when none were given)."""
        def get() -> dict[str, Any]:
            found = self.networks.get(_uuid(uuid, "vn-id"))
            if found is None:
                raise RestApiError(404, f"network {uuid.lower()} not found")
            return found.to_json()
        return self._call(request, get)

    @app.route("/network/<string:uuid>", methods=["PUT"])
    def put_network(self, request: IRequest, uuid: str) -> Any:
        """PUT /network/<vn-uuid>: add or replace a network's DNS method, servers, virtual
        DNS and VNI; ports of the network follow at once."""
        def put() -> dict[str, Any]:
            settings = network_from_json(_uuid(uuid, "vn-id"), _read_body(request))
            return self._change_networks(lambda: self.networks.set(settings))
        return self._call(request, put)

    @app.route("/network/<string:uuid>", methods=["DELETE"])
    def delete_network(self, request: IRequest, uuid: str) -> Any:
        """DELETE /network/<vn-uuid>: back to the controller's settings or the defaults;
        404 when none were given."""
        def delete() -> dict[str, Any]:
            key = _uuid(uuid, "vn-id")
            if self.networks.get(key) is None:
                raise RestApiError(404, f"network {key} not found")
            return self._change_networks(lambda: self.networks.delete(key))
        return self._call(request, delete)

    # errors ----------------------------------------------------------------------------

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Any) -> bytes:
        """No route matched: the original's "Unknown Request", with a real 404."""
        return _json(request, 404, {"error": "Unknown Request"})

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: IRequest, failure: Any) -> bytes:
        """A known path with another method."""
        return _json(request, 405, {"error": f"method {request.method.decode()} not allowed "
                                             "on this path"})


class BoundedRequest(server.Request):
    """A request whose body may not exceed MAX_BODY: refused with 413 as soon as the
    declared length (or the bytes received, for a chunked body) says so, before it is
    buffered, and the connection is closed."""

    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self._refuse(f"body: {length} bytes is larger than the {MAX_BODY} byte limit")
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse(f"body: larger than the {MAX_BODY} byte limit")
            return
        super().handleContentChunk(data)

    def _refuse(self, message: str) -> None:
        self._refused = True
        body = json.dumps({"error": message}).encode()
        transport = self.channel.transport if self.channel is not None else None
        if transport is None:
            return
        transport.write(b"HTTP/1.1 413 Request Entity Too Large\r\n"
                        b"Content-Type: application/json; charset=UTF-8\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                        % (len(body), body))
        # half-close: the client reads the 413 and our FIN instead of a reset caused by the
        # body it is still sending (read and dropped); cut it off if it keeps on sending
        half_close = getattr(transport, "loseWriteConnection", None)
        abort = getattr(transport, "abortConnection", None)
        call_later = getattr(self.channel, "callLater", None)
        if half_close is None or abort is None or call_later is None:
            transport.loseConnection()
            return
        half_close()
        call_later(REFUSED_LINGER, abort)


def vn_name(vn_id: str) -> str:
    """The virtual network's fq-name when no controller names it."""
    return f"default-domain:vrtwist:{vn_id}"

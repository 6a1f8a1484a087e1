"""The naming rule of docs/contributing.md ("Names"), checked on the code.

camelCase is for methods that implement or mirror an interface: a name declared by an
interface the class implements, defined by a base class (Twisted's ``Protocol``...), or
declared by any of Twisted's own interfaces (a transport's ``getHost``, a parser's
``parseStreamServer``). Every other public method is snake_case. ``LEFT`` lists the
classes that still break the rule, so a new break fails here and the list only shrinks.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface, implementedBy
from zope.interface.interface import InterfaceClass

import vrtwist

CAMEL = re.compile(r"^[a-z][a-z0-9]*[A-Z]")

#: Twisted modules whose interfaces a vrtwist class may mirror without declaring them.
TWISTED_INTERFACES = ("twisted.internet.interfaces", "twisted.application.service",
                      "twisted.web.iweb", "twisted.plugin", "twisted.application.internet")

#: Classes still breaking the rule (camelCase methods no interface asks for), by module.
LEFT: dict[str, set[str]] = {}


def _modules() -> list[ModuleType]:
    return [importlib.import_module(m.name)
            for m in pkgutil.walk_packages(vrtwist.__path__, "vrtwist.")]


def _twisted_names() -> set[str]:
    names: set[str] = set()
    for module in TWISTED_INTERFACES:
        for value in vars(importlib.import_module(module)).values():
            if isinstance(value, InterfaceClass) and value is not Interface:
                names.update(value.names(all=True))
    return names


def breaking(modules: list[ModuleType], twisted: set[str]) -> dict[str, dict[str, list[str]]]:
    """``{module: {class: [camelCase methods with no reason]}}``."""
    found: dict[str, dict[str, list[str]]] = {}
    for module in modules:
        for cname, cls in vars(module).items():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            declared = {n for i in implementedBy(cls).flattened() for n in i.names(all=True)}
            inherited = {n for base in cls.__mro__[1:] for n in vars(base)}
            bad = sorted(n for n, v in vars(cls).items()
                         if CAMEL.match(n) and (callable(v) or isinstance(v, property))
                         and n not in declared | inherited | twisted
                         and getattr(v, "__name__", n) == n)  # an alias keeps an old name
            if bad:
                found.setdefault(module.__name__, {})[cname] = bad
    return found


class NamingRuleTests(SynchronousTestCase):
    def test_no_new_camel_case(self) -> None:
        found = breaking(_modules(), _twisted_names())
        now = {module: set(classes) for module, classes in found.items()}
        self.assertEqual({m: c - LEFT.get(m, set()) for m, c in now.items()
                          if c - LEFT.get(m, set())}, {}, found)
        self.assertEqual({m: c - now.get(m, set()) for m, c in LEFT.items()
                          if c - now.get(m, set())}, {},
                         "fixed: take these out of LEFT")

    def test_the_check_sees_a_break(self) -> None:
        module = ModuleType("vrtwist.madeup")

        class Table:
            def dropVrf(self) -> None: ...
            def getHost(self) -> None: ...  # mirrors ITransport
            def snake_name(self) -> None: ...

        Table.__module__ = module.__name__
        module.Table = Table  # type: ignore[attr-defined]
        self.assertEqual(breaking([module], _twisted_names()),
                         {"vrtwist.madeup": {"Table": ["dropVrf"]}})

    def test_renamed_methods_keep_their_documented_names(self) -> None:
        from vrtwist.agent.dpstate import DatapathModel
        from vrtwist.xmpp.control import ControlNode

        self.assertIs(DatapathModel.setFabricMac, DatapathModel.set_fabric_mac)
        self.assertIs(DatapathModel.tunnelDestinations, DatapathModel.tunnel_destinations)
        self.assertIs(DatapathModel.refreshConfig, DatapathModel.refresh_config)
        self.assertIs(DatapathModel.refreshSubnets, DatapathModel.refresh_subnets)
        self.assertIs(ControlNode.sendConfig, ControlNode.send_config)
        from vrtwist.xmpp.agent_link import ConfigStore

        self.assertIs(ConfigStore.subnetsOf, ConfigStore.subnets_of)
        self.assertIs(ConfigStore.networkByUuid, ConfigStore.network_by_uuid)
        self.assertIs(ConfigStore.routingInstanceOf, ConfigStore.routing_instance_of)
        from vrtwist.vic.guestinfo import GuestInfo
        from vrtwist.xmpp.agent_link import ControllerLink

        self.assertIs(GuestInfo.assignedIP, GuestInfo.assigned_ip)
        self.assertIs(ControllerLink.holdEndOfRib, ControllerLink.hold_end_of_rib)
        self.assertIs(ControllerLink.localRoutesReady, ControllerLink.local_routes_ready)

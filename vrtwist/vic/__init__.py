"""VMware VIC guest channels: the vSPC serial relay and guestinfo.

``VSPCFactory`` accepts ESX hosts' proxied serial ports and hands each VM's port to the
appliance backend (``VMPortTable``); ``VSPCApi`` is its REST API; ``GuestInfo`` reads and
writes guestinfo keys. Test doubles are in ``vrtwist.vic.testing``.
"""

from __future__ import annotations

from vrtwist._exports import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads it so)

if TYPE_CHECKING:
    from vrtwist.vic.api import VSPCApi
    from vrtwist.vic.guestinfo import FileTransport, GuestInfo, GuestInfoError, RpcToolTransport
    from vrtwist.vic.interfaces import IGuestInfoTransport, IVMPortTable
    from vrtwist.vic.telnet import TelnetParser, TelnetProtocolError
    from vrtwist.vic.vmware_ext import ExtensionError, ProxyRequest
    from vrtwist.vic.vspc import SerialPort, VMPortTable, VSPCConfig, VSPCFactory

__all__ = [
    "ExtensionError",
    "FileTransport",
    "GuestInfo",
    "GuestInfoError",
    "IGuestInfoTransport",
    "IVMPortTable",
    "ProxyRequest",
    "RpcToolTransport",
    "SerialPort",
    "TelnetParser",
    "TelnetProtocolError",
    "VMPortTable",
    "VSPCApi",
    "VSPCConfig",
    "VSPCFactory",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "vspc": ("VSPCConfig", "VSPCFactory", "VMPortTable", "SerialPort"),
    "api": ("VSPCApi",),
    "guestinfo": ("GuestInfo", "GuestInfoError", "FileTransport", "RpcToolTransport"),
    "telnet": ("TelnetParser", "TelnetProtocolError"),
    "vmware_ext": ("ExtensionError", "ProxyRequest"),
    "interfaces": ("IVMPortTable", "IGuestInfoTransport"),
})

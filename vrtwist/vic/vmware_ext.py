"""VMWARE-TELNET-EXT (TELNET option 232) commands, sans-IO.

The wire form is ``IAC SB 232 <cmd> <params> IAC SE``; params are raw bytes
with no length field (docs/protocols/vic.md). Only the pieces that need care
live here: the command table, the subset we implement, DO-PROXY parsing and the
VC UUID normalisation that keys a VM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs

from vrtwist.vic.telnet import VMWARE_EXT, encodeSubnegotiation

KNOWN_SUBOPTIONS_1 = 0
KNOWN_SUBOPTIONS_2 = 1
UNKNOWN_SUBOPTION_RCVD_1 = 2
UNKNOWN_SUBOPTION_RCVD_2 = 3
VMOTION_BEGIN = 40
VMOTION_GOAHEAD = 41
VMOTION_NOTNOW = 43
VMOTION_PEER = 44
VMOTION_PEER_OK = 45
VMOTION_COMPLETE = 46
VMOTION_ABORT = 48
DO_PROXY = 70
WILL_PROXY = 71
WONT_PROXY = 73
VM_VC_UUID = 80
GET_VM_VC_UUID = 81
VM_NAME = 82
GET_VM_NAME = 83
VM_BIOS_UUID = 84
GET_VM_BIOS_UUID = 85
VM_LOCATION_UUID = 86
GET_VM_LOCATION_UUID = 87

NAMES = {
    0: "KNOWN-SUBOPTIONS-1",
    1: "KNOWN-SUBOPTIONS-2",
    2: "UNKNOWN-SUBOPTION-RCVD-1",
    3: "UNKNOWN-SUBOPTION-RCVD-2",
    40: "VMOTION-BEGIN",
    41: "VMOTION-GOAHEAD",
    43: "VMOTION-NOTNOW",
    44: "VMOTION-PEER",
    45: "VMOTION-PEER-OK",
    46: "VMOTION-COMPLETE",
    48: "VMOTION-ABORT",
    70: "DO-PROXY",
    71: "WILL-PROXY",
    73: "WONT-PROXY",
    80: "VM-VC-UUID",
    81: "GET-VM-VC-UUID",
    82: "VM-NAME",
    83: "GET-VM-NAME",
    84: "VM-BIOS-UUID",
    85: "GET-VM-BIOS-UUID",
    86: "VM-LOCATION-UUID",
    87: "GET-VM-LOCATION-UUID",
}

#: What this proxy implements, sent as KNOWN-SUBOPTIONS-2 (the list real vSPCs send).
IMPLEMENTED = bytes(
    [
        KNOWN_SUBOPTIONS_1,
        KNOWN_SUBOPTIONS_2,
        UNKNOWN_SUBOPTION_RCVD_1,
        UNKNOWN_SUBOPTION_RCVD_2,
        VMOTION_BEGIN,
        VMOTION_GOAHEAD,
        VMOTION_NOTNOW,
        VMOTION_PEER,
        VMOTION_PEER_OK,
        VMOTION_COMPLETE,
        VMOTION_ABORT,
        DO_PROXY,
        WILL_PROXY,
        WONT_PROXY,
        VM_VC_UUID,
        GET_VM_VC_UUID,
        VM_NAME,
        GET_VM_NAME,
    ]
)

#: Commands a VM may send us and we act on.
FROM_VM = frozenset(
    {
        KNOWN_SUBOPTIONS_1,
        UNKNOWN_SUBOPTION_RCVD_1,
        VMOTION_BEGIN,
        VMOTION_PEER,
        VMOTION_COMPLETE,
        VMOTION_ABORT,
        DO_PROXY,
        VM_VC_UUID,
        VM_NAME,
    }
)

_HEX = re.compile(r"[0-9a-fA-F]{32}")
_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ExtensionError(ValueError):
    """A malformed option-232 message (bad UUID, bad DO-PROXY, empty command)."""


def command(cmd: int, params: bytes = b"") -> bytes:
    """Wire bytes of one option-232 command (IAC doubled inside params)."""
    return encodeSubnegotiation(VMWARE_EXT, bytes((cmd,)) + params)


def split(payload: bytes) -> tuple[int, bytes]:
    """Split a subnegotiation payload of option 232 into (command, params)."""
    if not payload:
        raise ExtensionError("empty option-232 subnegotiation")
    return payload[0], payload[1:]


def normaliseUUID(raw: bytes) -> str:
    """``01 23 45 67 89 ab cd ef-fe dc ...`` -> ``01234567-89ab-cdef-fedc-...`` (lower case)."""
    text = raw.decode("ascii", "replace").replace(" ", "").replace("-", "").strip()
    if not _HEX.fullmatch(text):
        raise ExtensionError(f"VC UUID {raw!r} is not 32 hex digits")
    t = text.lower()
    return f"{t[0:8]}-{t[8:12]}-{t[12:16]}-{t[16:20]}-{t[20:32]}"


@dataclass(frozen=True)
class ProxyRequest:
    """A parsed DO-PROXY: direction ``C``/``S``, the service URI and its port label."""

    direction: str
    serviceURI: str
    label: str


def parseDoProxy(params: bytes) -> ProxyRequest:
    """Parse ``<dir><serviceURI>``; the ``?port=<label>`` query names the serial port."""
    if not params:
        raise ExtensionError("DO-PROXY without a direction")
    direction = chr(params[0])
    if direction not in ("C", "S"):
        raise ExtensionError(f"DO-PROXY direction {direction!r} is neither 'C' nor 'S'")
    try:
        uri = params[1:].decode("utf-8")
    except UnicodeDecodeError:
        raise ExtensionError(f"DO-PROXY service URI {params[1:]!r} is not UTF-8") from None
    label = ""
    if "?" in uri:
        query = uri.split("?", 1)[1]
        values = parse_qs(query).get("port", [])
        if values:
            label = values[0]
            if not _LABEL.fullmatch(label):
                raise ExtensionError(f"port label {label!r} must match [A-Za-z0-9._-]{{1,64}}")
    return ProxyRequest(direction, uri, label)


def serviceURIMatches(configured: str, uri: str) -> bool:
    """``*`` accepts any URI; otherwise the URI without its query must equal ``configured``."""
    if configured == "*":
        return True
    return uri.split("?", 1)[0] == configured

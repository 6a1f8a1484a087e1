"""vrtwist: the host channels of a virtual router, vpnkit and VIC, on Twisted."""

__version__ = "0.1.0"

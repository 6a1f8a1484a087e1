"""ARP the agent originates: gateway and DNS announcements to each VM on port add.

The agent never answers a VM's ARP request (the datapath does, from the route flags and
MACs the agent programs). What it sends are ARP *requests* announcing the gateway (and,
when different, the DNS/service address) to each VM: Ethernet to the VM's MAC from the
vif MAC, sender and target both the announced address, three times two seconds apart.
"""

from __future__ import annotations

from typing import Final

from vrtwist.packet.headers import ARP, ETH_P_ARP, Ethernet

__all__ = ["ANNOUNCE_COUNT", "ANNOUNCE_INTERVAL", "VRRP_MAC", "announcement"]

#: the MAC every VM vif carries and the datapath answers ARP with
VRRP_MAC: Final = bytes.fromhex("00005e000100")
#: the real agent's ``kGratRetries`` + 1 transmissions at its 2000 ms timer
ANNOUNCE_COUNT: Final = 3
ANNOUNCE_INTERVAL: Final = 2.0


def announcement(vm_mac: bytes, address: bytes, vif_mac: bytes = VRRP_MAC, vlan: int = -1) -> bytes:
    """One 42-byte (46 with a VLAN tag) announcement of ``address`` to the VM, unpadded."""
    vlans = (vlan & 0xFFF,) if vlan >= 0 else ()
    eth = Ethernet(vm_mac, vif_mac, ETH_P_ARP, vlans).pack()
    return eth + ARP(1, vif_mac, address, vif_mac, address).pack()

"""vpnkit's multiplexed port-forwarding protocol, forwarder and host sides."""

"""The ksync channel: netlink-framed Sandesh between agent/utilities and the datapath."""

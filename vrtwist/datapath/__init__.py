"""The forwarding extension: tables served over ksync, and later the packet path."""

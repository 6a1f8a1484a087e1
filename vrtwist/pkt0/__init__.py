"""The pkt0 packet channel between datapath and agent."""

"""The XMPP controller link (agent side) and a reflecting control node."""

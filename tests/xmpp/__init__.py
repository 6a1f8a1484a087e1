"""Tests for vrtwist.xmpp."""

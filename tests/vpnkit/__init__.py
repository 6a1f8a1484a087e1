"""Tests for vrtwist.vpnkit."""

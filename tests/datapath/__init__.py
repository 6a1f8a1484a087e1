"""Tests for vrtwist.datapath."""

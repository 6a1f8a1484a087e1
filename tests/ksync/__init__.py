"""Tests for vrtwist.ksync."""

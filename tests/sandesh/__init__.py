"""Tests for vrtwist.sandesh."""

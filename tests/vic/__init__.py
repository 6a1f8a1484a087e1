"""Tests for vrtwist.vic."""

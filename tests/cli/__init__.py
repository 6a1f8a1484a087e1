"""Tests for vrtwist.cli."""

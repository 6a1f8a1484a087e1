"""Tests for vrtwist.agent."""

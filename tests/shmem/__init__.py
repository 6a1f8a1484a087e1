"""Tests for vrtwist.shmem."""

"""vrtwist tests."""

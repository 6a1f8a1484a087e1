"""Runner for the real vRouter's vtest XML suite over ksync."""

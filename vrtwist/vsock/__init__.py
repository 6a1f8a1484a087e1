"""AF_VSOCK endpoints for Twisted and the vsock relay."""

"""Command-line utilities that behave like their vRouter and vpnkit namesakes."""

"""toolvault."""

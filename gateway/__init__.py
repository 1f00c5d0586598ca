"""logbroker gateway."""

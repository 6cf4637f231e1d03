"""Talking to OCI registries directly: references, auth, a resilient client, push and remote sources."""

"""Talking to OCI registries directly: references, auth and a resilient client. The registry source and
sink that use it live in ``sources/registry.py`` and ``sinks/registry.py``."""

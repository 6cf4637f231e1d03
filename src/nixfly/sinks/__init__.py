"""Image sinks: an OCI layout, a docker-archive (file or stdout), a registry (``nixfly.registry``)."""

"""nixfly: Nix closures → layered OCI images → any registry → Fly.io, with no Docker daemon."""

__version__ = "0.1.0"

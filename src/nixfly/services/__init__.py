"""Services: the work a command does, below the CLI and above the core packages (cli → services → core).

``ship.py``: an image built, published, its layer index updated and its SBOM attached — one request in,
one outcome out, for ``build``, ``push nixfly.toml`` and ``deploy --build`` alike."""

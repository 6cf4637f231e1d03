"""Building an image from a Nix closure: closure → layer plan → layers (tar, compress, cache) →
customisation → image (``pipeline.build_image``). ``spec`` is the image definition (nixfly.toml)."""

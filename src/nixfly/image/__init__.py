"""The image model (``model``), media types and digests. Every source produces an :class:`Image`; every
sink consumes one. This package imports nothing from the rest of nixfly but ``errors``."""

from nixfly.image.model import BlobLayer, Descriptor, Image, Layer, canonical_json, parse_manifest

__all__ = ["BlobLayer", "Descriptor", "Image", "Layer", "canonical_json", "parse_manifest"]

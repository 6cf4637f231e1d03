"""Images the way dockerTools makes them, for tests: the members streamLayeredImage writes, laid out from an
OCI layout, and the offline-Nix stand-in for streamLayeredImage (tests/data/nix/stream-image.nix); plus the
environment of a stock Nix install (no experimental features enabled anywhere)."""

from __future__ import annotations

import json
from pathlib import Path

from nixfly.sources import open_image
from nixfly.transports import LayoutLocation

STREAM_NIX = Path(__file__).resolve().parent.parent / "data" / "nix" / "stream-image.nix"


def parts_from_layout(layout: Path, dest: Path, tag: str = "t") -> Path:
    """The docker-archive members streamLayeredImage writes — <diff_id>/layer.tar, <config>.json,
    manifest.json — from an OCI layout, with "order" listing them layers first, manifest last."""
    img = open_image(LayoutLocation(layout, tag))
    dest.mkdir()
    order = []
    for lyr in img.layers:
        name = f"{lyr.diff_id[7:]}/layer.tar"
        (dest / name).parent.mkdir(exist_ok=True)
        with lyr.uncompressed() as f:
            (dest / name).write_bytes(f.read())
        order.append(name)
    cfg = f"{img.config_digest[7:]}.json"
    (dest / cfg).write_bytes(img.config_bytes)
    (dest / "manifest.json").write_text(json.dumps([{"Config": cfg, "RepoTags": ["testimg:x"], "Layers": order}]))
    (dest / "order").write_text("\n".join([*order, cfg, "manifest.json"]) + "\n")
    return dest


def stock_env(tmp: Path) -> dict[str, str]:
    """Nix as a fresh install has it: no experimental features anywhere (no nix.conf, NIX_CONFIG without)."""
    conf = tmp / "nix-conf"
    conf.mkdir(exist_ok=True)
    (conf / "nix.conf").write_text("")
    return {
        "NIX_CONF_DIR": str(conf),
        "XDG_CONFIG_HOME": str(tmp / "xdg-config"),
        "XDG_CACHE_HOME": str(tmp / "xdg-cache"),
        "NIX_CONFIG": "build-users-group =\nsandbox = false\nsubstituters =",
    }

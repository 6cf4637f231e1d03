"""Putting an image on top of a base image: an image mutation, so it returns a new :class:`Image`.

The base's layers come first, unchanged — the same blobs, referenced by digest, never recompressed; only
the name of a media type follows the manifest format (``…docker…tar.gzip`` ↔ ``…oci…tar+gzip`` describe the
same bytes). The config is the base's with ours laid over it:

- ``Env`` is merged per variable, ours winning;
- ``Entrypoint``, ``Cmd``, ``WorkingDir``, ``User``, ``StopSignal`` (and any other key) are inherited where
  ours are unset — except that setting an ``Entrypoint`` drops the base's ``Cmd``, as a Dockerfile's
  ``ENTRYPOINT`` does, so the base's default command never becomes our program's arguments;
- ``ExposedPorts``, ``Volumes`` and ``Labels`` keep the base's keys that ours do not set;
- ``rootfs.diff_ids`` and ``history`` are the base's followed by ours, with one empty-layer history entry
  that records the base by name and digest (also in the annotations ``org.opencontainers.image.base.*``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nixfly.errors import ImageError
from nixfly.image.convert import retyped
from nixfly.image.mediatypes import layer_type_for
from nixfly.image.model import Image, Layer, canonical_json

BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"

_INHERIT_UNLESS_SET = ("Entrypoint", "Cmd", "WorkingDir", "User", "StopSignal")
_MERGED_MAPS = ("ExposedPorts", "Volumes", "Labels")


@dataclass(frozen=True)
class BaseImage:
    """A resolved base: the image for one platform, the name it was asked for by and its manifest digest
    (what ``name@digest`` pins)."""

    image: Image
    name: str
    digest: str
    platform: str | None = None  # os/arch from the base's config, when it says

    @property
    def pinned(self) -> str:
        return f"{self.name.split('@', 1)[0]}@{self.digest}"


def _env_map(env: object) -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(env, list):
        for item in env:
            k, _, v = str(item).partition("=")
            out[k] = v
    return out


def merge_config(base: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """The ``config`` section of an image built on ``base`` (both are ``config`` sections)."""
    merged: dict[str, Any] = {k: v for k, v in base.items() if v is not None}
    if "Entrypoint" in ours:
        merged.pop("Cmd", None)
    for k, v in ours.items():
        if k == "Env":
            env = {**_env_map(base.get("Env")), **_env_map(v)}
            merged["Env"] = [f"{name}={value}" for name, value in env.items()]
        elif k in _MERGED_MAPS and isinstance(v, dict):
            inherited = base.get(k)
            merged[k] = {**(inherited if isinstance(inherited, dict) else {}), **v}
        else:
            merged[k] = v
    return merged


def _base_history(cfg: dict[str, Any], n_layers: int) -> list[dict[str, Any]]:
    """The base's history, or (when it does not account for every layer) one plain entry per layer."""
    hist = cfg.get("history")
    if (
        isinstance(hist, list)
        and all(isinstance(h, dict) for h in hist)
        and sum(1 for h in hist if not h.get("empty_layer")) == n_layers
    ):
        return [dict(h) for h in hist]
    created = cfg.get("created") or "1970-01-01T00:00:01Z"
    return [{"created": created, "created_by": "base image layer"} for _ in range(n_layers)]


def stack_on_base(base: BaseImage, ours: Image) -> Image:
    """``ours`` (its config describing only its own layers) on top of ``base``: a new image in ``ours``'s
    format whose layers are the base's then ours."""
    bcfg = base.image.config
    ocfg = ours.config
    n_base = len(base.image.layers)
    base_rootfs = bcfg.get("rootfs")
    diff_ids = base_rootfs.get("diff_ids") if isinstance(base_rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != n_base:
        raise ImageError(f"base image {base.name}: its config does not list one diff_id per layer")
    created = ocfg.get("created") or "1970-01-01T00:00:01Z"
    marker = {
        "created": created,
        "created_by": f"nixfly: FROM {base.pinned}",
        "comment": f"base image {base.name} resolved to {base.digest}",
        "empty_layer": True,
    }
    cfg = dict(ocfg)
    section = bcfg.get("config")
    base_section: dict[str, Any] = section if isinstance(section, dict) else {}
    cfg["config"] = merge_config(base_section, ocfg.get("config") or {})
    cfg["rootfs"] = {"type": "layers", "diff_ids": [*diff_ids, *ocfg["rootfs"]["diff_ids"]]}
    cfg["history"] = [*_base_history(bcfg, n_base), marker, *(ocfg.get("history") or [])]
    base_layers: tuple[Layer, ...] = tuple(
        retyped(lyr, layer_type_for(lyr.media_type, ours.format)) for lyr in base.image.layers
    )
    annotations = {**ours.annotations, BASE_NAME: base.name.split("@", 1)[0], BASE_DIGEST: base.digest}
    return Image(canonical_json(cfg), base_layers + ours.layers, ours.format, annotations)


def config_platform(config_bytes: bytes) -> str | None:
    """``os/architecture`` an image config declares, or None when it declares neither."""
    try:
        cfg = json.loads(config_bytes)
    except ValueError:
        return None
    if not isinstance(cfg, dict) or not cfg.get("os") or not cfg.get("architecture"):
        return None
    from nixfly.image.platform import goarch

    return f"{cfg['os']}/{goarch(str(cfg['architecture']))}"

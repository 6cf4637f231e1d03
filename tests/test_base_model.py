"""Base images and indexes in the image model, without a registry: config merge, stacking, reading /etc
through whiteouts, the blob-cache wrapper, the index's bytes, platform names, the passwd merge, the spec."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from nixfly.build.base import cache_backed, cache_backed_image, read_files, scan_base, store_paths_in
from nixfly.build.cache import BlobCache
from nixfly.build.customise import _user_entries
from nixfly.build.spec import ImageSpec, PlatformSpec, UserSpec, load_spec, validate_spec
from nixfly.errors import ConfigError, ImageError, UsageError
from nixfly.image import Image, canonical_json
from nixfly.image.base import BASE_DIGEST, BASE_NAME, BaseImage, merge_config, stack_on_base
from nixfly.image.convert import retyped
from nixfly.image.digest import CheckedReader
from nixfly.image.index import ImageIndex, PlatformImage, index_with_format
from nixfly.image.mediatypes import DOCKER_LAYER_GZIP, DOCKER_LIST, OCI_INDEX, OCI_LAYER, Compression
from nixfly.image.model import BlobOrigin, BytesLayer, LayerWrapper, LocalBlob, Mountable
from nixfly.image.platform import choose_platform, normalise_platform, platform_matches


def tar_layer(entries: dict[str, bytes | None]) -> BytesLayer:
    """An uncompressed layer: name → content (None: an empty directory entry)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in entries.items():
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    return BytesLayer(raw, digest, digest, OCI_LAYER, len(raw))


def image_of(*layers: BytesLayer, config: dict[str, object] | None = None) -> Image:
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "config": config or {},
        "rootfs": {"type": "layers", "diff_ids": [lyr.diff_id for lyr in layers]},
    }
    return Image(canonical_json(cfg), tuple(layers), "oci")


def test_merge_config_env_per_key_and_inheritance() -> None:
    base = {
        "Env": ["PATH=/usr/bin", "A=base", "B=base"],
        "Cmd": ["bash"],
        "WorkingDir": "/srv",
        "User": "daemon",
        "Labels": {"x": "1", "y": "base"},
        "ExposedPorts": {"80/tcp": {}},
        "Healthcheck": {"Test": ["CMD", "true"]},
    }
    m = merge_config(base, {"Env": ["B=ours", "C=ours"], "Labels": {"y": "ours"}, "ExposedPorts": {"8080/tcp": {}}})
    assert m["Env"] == ["PATH=/usr/bin", "A=base", "B=ours", "C=ours"]
    assert m["Cmd"] == ["bash"] and m["WorkingDir"] == "/srv" and m["User"] == "daemon"
    assert m["Labels"] == {"x": "1", "y": "ours"} and set(m["ExposedPorts"]) == {"80/tcp", "8080/tcp"}
    assert m["Healthcheck"] == {"Test": ["CMD", "true"]}
    # Our Entrypoint drops the base's Cmd (as a Dockerfile ENTRYPOINT does); our Cmd is kept.
    assert "Cmd" not in merge_config(base, {"Entrypoint": ["/app"]})
    assert merge_config(base, {"Entrypoint": ["/app"], "Cmd": ["x"]})["Cmd"] == ["x"]
    assert merge_config(base, {"User": "1000"})["User"] == "1000"


def test_stack_on_base_keeps_blobs_and_records_the_base() -> None:
    b1 = tar_layer({"etc/os-release": b"base\n"})
    ours = tar_layer({"app/x": b"x"})
    base_img = image_of(b1, config={"Env": ["PATH=/bin"], "Cmd": ["sh"]})
    base = BaseImage(base_img, "reg.example/base:1", base_img.manifest_digest())
    our_img = image_of(ours, config={"Entrypoint": ["/app/x"]})
    stacked = stack_on_base(base, our_img)
    assert [lyr.digest for lyr in stacked.layers] == [b1.digest, ours.digest]
    assert stacked.layers[0] is b1  # same media type: the very same layer object, nothing recompressed
    cfg = stacked.config
    assert cfg["rootfs"]["diff_ids"] == [b1.diff_id, ours.diff_id]
    hist = cfg["history"]
    assert [h.get("empty_layer", False) for h in hist] == [False, True]  # base (synthesised), FROM; ours had none
    assert base.digest in hist[1]["created_by"]
    assert stacked.annotations[BASE_NAME] == "reg.example/base:1" and stacked.annotations[BASE_DIGEST] == base.digest
    assert json.loads(stacked.manifest_bytes())["annotations"][BASE_DIGEST] == base.digest
    # A v2s2 image names the same blobs with Docker types.
    v2 = stack_on_base(base, Image(our_img.config_bytes, our_img.layers, "v2s2"))
    assert v2.layers[0].digest == b1.digest
    assert v2.layers[0].media_type == "application/vnd.docker.image.rootfs.diff.tar"
    # A base config that does not describe its layers is refused.
    bad = Image(canonical_json({"rootfs": {"diff_ids": []}}), (b1,), "oci")
    with pytest.raises(ImageError, match="one diff_id per layer"):
        stack_on_base(BaseImage(bad, "b", "sha256:" + "0" * 64), our_img)


def test_read_files_sees_the_merged_layers_through_whiteouts() -> None:
    l1 = tar_layer({"etc/passwd": b"root:x:0:0::/root:/bin/sh\n", "etc/group": b"root:x:0:\n", "etc/shadow": b"s"})
    l2 = tar_layer({"etc/.wh.shadow": b"", "etc/passwd": b"root:x:0:0::/root:/bin/sh\nbob:x:1:1::/:/bin/sh\n"})
    img = image_of(l1, l2)
    got = read_files(img, ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/nsswitch.conf"])
    assert got["/etc/passwd"] is not None and b"bob" in got["/etc/passwd"]
    assert got["/etc/group"] == b"root:x:0:\n"
    assert got["/etc/shadow"] is None and got["/etc/nsswitch.conf"] is None
    # An opaque /etc hides everything below it, but not what its own layer holds.
    l3 = tar_layer({"etc/.wh..wh..opq": b"", "etc/group": b"g:x:5:\n"})
    got = read_files(image_of(l1, l3), ["/etc/passwd", "/etc/group"])
    assert got == {"/etc/passwd": None, "/etc/group": b"g:x:5:\n"}
    # A whited-out /etc too.
    got = read_files(image_of(l1, tar_layer({".wh.etc": b""})), ["/etc/passwd"])
    assert got == {"/etc/passwd": None}


def test_a_base_is_read_once_for_its_store_paths_and_its_etc_files(tmp_path: Path) -> None:
    """A cold build with a base needs both the store paths its layers hold and its /etc files: each layer is
    read (decompressed, its diff_id hashed) once for both; a layer whose listing is cached is read only if
    the files still need it."""
    reads: list[str] = []

    class Counted(LayerWrapper):
        def uncompressed(self) -> Any:
            reads.append(self.digest)
            return self.inner.uncompressed()

    lower = tar_layer({"nix": None, "nix/store": None, "nix/store/aaa-x": None, "nix/store/aaa-x/f": b"1",
                       "etc/passwd": b"root:x:0:0::/root:/bin/sh\n", "etc/group": b"root:x:0:\n"})  # fmt: skip
    upper = tar_layer({"nix/store/bbb-y": None, "etc/.wh.group": b"", "etc/passwd": b"bob:x:1:1::/:/bin/sh\n"})
    img = image_of(lower, upper)
    counted = img.with_layers(tuple(Counted(lyr) for lyr in img.layers))
    cache = BlobCache(tmp_path / "cache")
    wanted = ["/etc/passwd", "/etc/group", "/etc/shadow"]
    got = scan_base(counted, "/nix/store", cache, wanted)
    assert sorted(reads) == sorted(lyr.digest for lyr in img.layers)  # each layer once, for both answers
    assert got.store_paths == store_paths_in(img, "/nix/store", BlobCache(tmp_path / "other"))
    assert got.store_paths == {"/nix/store/aaa-x", "/nix/store/bbb-y"}
    assert got.files == read_files(img, wanted)
    assert got.files == {"/etc/passwd": b"bob:x:1:1::/:/bin/sh\n", "/etc/group": None, "/etc/shadow": None}
    # Listings cached: only the layers the files still need are read, top down (here both: /etc/shadow is
    # decided only by the bottom layer, where it is absent).
    reads.clear()
    assert scan_base(counted, "/nix/store", cache, ["/etc/passwd"]).files == {"/etc/passwd": got.files["/etc/passwd"]}
    assert reads == [upper.digest]
    reads.clear()
    assert scan_base(counted, "/nix/store", cache).store_paths == got.store_paths and reads == []


def test_cache_backed_layer_fetches_once_and_never_commits_bad_bytes(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "c")
    layer = tar_layer({"a": b"a" * 5000})
    wrapped = cache_backed(layer, cache)
    assert not isinstance(wrapped, LocalBlob)
    with wrapped.compressed() as f:
        assert f.read(100)  # closed early: nothing is committed
    assert not cache.blob_path(layer.digest).exists()
    with wrapped.compressed() as f:
        # It checks its bytes itself (a CheckedReader): the layer stream and an upload trust it, hash once.
        assert isinstance(f, CheckedReader) and f.expected_digest == layer.digest and not f.verified
        assert f.read() == layer.data
        assert f.verified
    assert cache.blob_path(layer.digest).read_bytes() == layer.data
    assert not list(cache.tmp.iterdir())
    again = cache_backed(layer, cache)
    assert isinstance(again, LocalBlob) and again.blob_path == cache.blob_path(layer.digest)
    with again.uncompressed() as f:
        assert f.read() == layer.data

    # A source whose bytes do not match: the read fails and the cache gets nothing.
    lie = BytesLayer(b"x" * len(layer.data), "sha256:" + "1" * 64, "sha256:" + "1" * 64, OCI_LAYER)
    with pytest.raises(ImageError), cache_backed(lie, cache).compressed() as f:
        f.read()
    assert not cache.blob_path(lie.digest).exists()
    # A cached file that was tampered with is not trusted: the layer is read from its source again.
    p = cache.blob_path(layer.digest)
    p.chmod(0o644)
    p.write_bytes(b"y" * len(layer.data))
    assert not isinstance(cache_backed(layer, cache), LocalBlob)
    img = cache_backed_image(image_of(layer), cache)
    assert img.manifest_digest() == image_of(layer).manifest_digest()


class _Remote(LayerWrapper):
    @property
    def origin(self) -> BlobOrigin:
        return BlobOrigin("reg.example", "base")


def test_cached_registry_layer_stays_mountable_through_a_format_change(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "c")
    layer = tar_layer({"a": b"a"})
    cache.blob_path(layer.digest).write_bytes(layer.data)
    wrapped = cache_backed(_Remote(layer), cache)
    assert isinstance(wrapped, LocalBlob) and isinstance(wrapped, Mountable)
    docker = retyped(wrapped, "application/vnd.docker.image.rootfs.diff.tar")
    assert isinstance(docker, LocalBlob) and isinstance(docker, Mountable)
    assert docker.origin == BlobOrigin("reg.example", "base")


def test_index_bytes_formats_and_duplicates() -> None:
    a = image_of(tar_layer({"a": b"a"}))
    b = image_of(tar_layer({"b": b"b"}))
    idx = ImageIndex((PlatformImage("linux/amd64", a), PlatformImage("linux/arm64/v8", b)))
    raw = json.loads(idx.manifest_bytes())
    assert raw["mediaType"] == OCI_INDEX == idx.media_type
    assert [m["digest"] for m in raw["manifests"]] == [a.manifest_digest(), b.manifest_digest()]
    assert raw["manifests"][1]["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    v2 = index_with_format(idx, "v2s2")
    assert v2.media_type == DOCKER_LIST and v2.manifest_digest() != idx.manifest_digest()
    assert json.loads(v2.manifest_bytes())["manifests"][0]["digest"] == v2.entries[0].image.manifest_digest()
    with pytest.raises(UsageError, match="given twice"):
        ImageIndex((PlatformImage("linux/amd64", a), PlatformImage("linux/amd64", b)))


def test_platform_names_and_choice() -> None:
    assert normalise_platform("linux/x86_64") == "linux/amd64"
    assert normalise_platform("Linux/aarch64") == "linux/arm64"
    for bad in ("amd64", "linux/", "linux/amd64/v1/x", "linux/a b"):
        with pytest.raises(UsageError):
            normalise_platform(bad)
    assert platform_matches("linux/arm64/v8", "linux/arm64") and platform_matches("linux/arm64", "linux/arm64/v8")
    assert not platform_matches("linux/arm/v6", "linux/arm/v7") and not platform_matches(None, "linux/amd64")
    entries: list[dict[str, object]] = [
        {"digest": "att", "platform": {"os": "unknown", "architecture": "unknown"}},
        {"digest": "arm", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "amd", "platform": {"os": "linux", "architecture": "amd64"}},
    ]
    chosen = choose_platform(entries, "linux/arm64")
    assert chosen is not None and chosen["digest"] == "arm"
    assert choose_platform(entries, "linux/s390x") is None


def test_passwd_merge_keeps_the_base_users_and_ours_win_with_a_warning() -> None:
    base = {
        "/etc/passwd": b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/usr/sbin/nologin\n"
        b"app:x:999:999::/:/bin/sh\n",
        "/etc/group": b"root:x:0:\ndaemon:x:1:\nstaff:x:50:daemon\n",
        "/etc/shadow": b"root:*:1::::::\ndaemon:*:1::::::\n",
        "/etc/nsswitch.conf": b"passwd: files\n",
    }
    spec = ImageSpec(users=[UserSpec(name="app", uid=1000, groups=["staff"])])
    warnings: list[str] = []
    files = {e.path: e.data for e in _user_entries(spec, base, warnings) if e.kind == "file"}
    passwd = (files["/etc/passwd"] or b"").decode().splitlines()
    assert passwd[0] == "root:x:0:0:root:/root:/bin/bash"  # the base's root, not a default one
    assert "daemon:x:1:1::/:/usr/sbin/nologin" in passwd
    assert [p for p in passwd if p.startswith("app:")] == ["app:x:1000:1000::/var/empty:/bin/sh"]
    assert any(p.startswith("nobody:") for p in passwd)
    group = (files["/etc/group"] or b"").decode()
    assert "staff:x:50:app,daemon" in group and group.count("root:") == 1
    shadow = (files["/etc/shadow"] or b"").decode()
    assert "daemon:*:1::::::" in shadow and "app:!:1::::::" in shadow
    assert "/etc/nsswitch.conf" not in files  # the base's is kept
    assert warnings == ["/etc/passwd: user app of the base image is replaced by ours"]
    # Without a base: as before, our users and the defaults only.
    alone = {e.path: e.data for e in _user_entries(ImageSpec(), None, []) if e.kind == "file"}
    assert (alone["/etc/passwd"] or b"").decode().splitlines()[0] == "root:x:0:0::/root:/bin/sh"
    assert "/etc/nsswitch.conf" in alone


def test_spec_from_base_etc_and_platforms(tmp_path: Path) -> None:
    cfg = tmp_path / "nixfly.toml"
    cfg.write_text(
        '[image]\nfrom = "oci:base:v1"\nbase_etc = "replace"\n\n'
        '[[image.platforms]]\nplatform = "linux/arm64"\nroots = ["./result-arm"]\n'
    )
    spec = load_spec(cfg)
    assert spec.base_image == f"oci:{tmp_path}/base:v1" and spec.base_etc == "replace"
    assert spec.platforms == [PlatformSpec("linux/arm64", [str(tmp_path / "result-arm")], None)]
    assert validate_spec({"from": "docker://x/y:1"}).base_image == "docker://x/y:1"
    cfg.write_text('[image]\nbase_etc = "keep"\n')
    with pytest.raises(ConfigError, match=r"nixfly.toml:2: image.base_etc: must be one of"):
        load_spec(cfg)
    cfg.write_text('[image]\nbase_image = "x"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_spec(cfg)


def test_docker_gzip_type_is_known() -> None:
    # The base may come with Docker types; they stay valid layer types after a conversion to OCI.
    from nixfly.image.mediatypes import layer_type_for

    assert layer_type_for(DOCKER_LAYER_GZIP, "oci") == "application/vnd.oci.image.layer.v1.tar+gzip"


# -- a base of many layers, each with large /etc files, scanned under a memory cap ---------------------------

_BIG = 16 << 20  # the largest /etc file a base scan reads (base._MAX_ETC_FILE)
_BIG_NAMES = ("etc/passwd", "etc/group", "etc/shadow", "etc/nsswitch.conf")


class _GeneratedTar(io.RawIOBase):
    """An uncompressed tar stream made while it is read: each name in ``_BIG_NAMES`` holds ``_BIG`` bytes,
    a first line naming the layer followed by a filler shared by every layer (so the test itself holds one)."""

    def __init__(self, index: int, filler: memoryview) -> None:
        head = f"layer {index}\n".encode()
        parts: list[bytes | memoryview] = []
        for name in _BIG_NAMES:
            ti = tarfile.TarInfo(name)
            ti.size = _BIG
            parts += [ti.tobuf(format=tarfile.USTAR_FORMAT), head, filler[: _BIG - len(head)]]
        parts.append(bytes(1024))
        self._parts, self._at = parts, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._parts and self._at == len(self._parts[0]):
            self._parts.pop(0)
            self._at = 0
        if not self._parts:
            return 0
        part = self._parts[0]
        n = min(len(b), len(part) - self._at)
        b[:n] = part[self._at : self._at + n]
        self._at += n
        return n


class _GeneratedLayer:
    """A layer whose tar stream is a :class:`_GeneratedTar` (a third-party layer: nothing of ours wraps it)."""

    media_type = OCI_LAYER
    size = 1 << 30
    uncompressed_size: int | None = None
    compression: Compression = "none"

    def __init__(self, index: int, filler: memoryview) -> None:
        self.index, self.filler = index, filler
        self.digest = self.diff_id = "sha256:" + hashlib.sha256(f"generated layer {index}".encode()).hexdigest()

    def compressed(self) -> Any:
        raise AssertionError("a base scan reads the tar stream")

    def uncompressed(self) -> Any:
        return io.BufferedReader(_GeneratedTar(self.index, self.filler), 1 << 20)


def scan_many_big_layers(count: int, cache_dir: str) -> None:
    """Run in a child under a memory cap: scan a base of ``count`` generated layers, print the first line of
    each wanted file and the hash of its content."""
    filler = memoryview(b"f" * _BIG)
    layers = tuple(_GeneratedLayer(i, filler) for i in range(count))
    img = Image(canonical_json({"rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]}}), layers, "oci")
    files = scan_base(img, "/nix/store", BlobCache(Path(cache_dir)), [f"/{n}" for n in _BIG_NAMES]).files
    out = {k: [v.split(b"\n", 1)[0].decode(), hashlib.sha256(v).hexdigest(), len(v)] for k, v in files.items() if v}
    print(json.dumps(out))


def test_a_base_with_large_etc_files_in_many_layers_is_scanned_in_bounded_memory(tmp_path: Path) -> None:
    """Each of 24 layers holds 16 MiB /etc/passwd, group, shadow and nsswitch.conf: a scan keeping every
    layer's copy until it decides would need 1.5 GiB; the topmost copies are 64 MiB."""
    import os
    import resource
    import subprocess
    import sys

    cap = 1 << 30

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    code = f"from tests.test_base_model import scan_many_big_layers; scan_many_big_layers(24, {str(tmp_path)!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=Path(__file__).parent.parent,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}, preexec_fn=limit,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    top = b"layer 23\n" + b"f" * (_BIG - len(b"layer 23\n"))
    want = ["layer 23", hashlib.sha256(top).hexdigest(), _BIG]
    assert json.loads(r.stdout) == {f"/{n}": want for n in _BIG_NAMES}

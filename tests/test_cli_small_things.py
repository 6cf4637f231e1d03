"""Small things a new user hit: a pasted skopeo `--insecure-policy`, a negative `--wait-timeout`, layout tags
listed as `?`, and a flag's bad value reported under the nixfly.toml key it is merged into."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from nixfly.cli import INTERNAL_ERROR
from tests.support.cli import run_nixfly
from tests.support.registry import RunningRegistry


def _digest(location: str) -> str:
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", location], check=True,
                         capture_output=True).stdout  # fmt: skip
    import hashlib

    return "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.mark.slow
def test_skopeo_s_insecure_policy_is_accepted_and_ignored(
    tiny_oci_layout: Path, registry: RunningRegistry, tmp_path: Path
) -> None:
    src = f"oci:{tiny_oci_layout}:v1"
    want = _digest(src)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    # As pasted from `skopeo --insecure-policy copy …`, before and after the command name.
    r = run_nixfly("--insecure-policy", "copy", "--insecure-policy", src, f"oci:{tmp_path / 'copied'}:v1", env=env)
    assert r.code == 0, r.err
    assert _digest(f"oci:{tmp_path / 'copied'}:v1") == want
    r = run_nixfly("push", "--insecure-policy", "--tls-verify=false", src, f"{registry.host}/pasted:v1", env=env)
    assert r.code == 0, r.err
    assert r.out.strip() == f"{registry.host}/pasted@{want}"
    r = run_nixfly("pull", "--insecure-policy", "--tls-verify=false", f"{registry.host}/pasted:v1",
                   f"oci:{tmp_path / 'pulled'}:v1", env=env)  # fmt: skip
    assert r.code == 0, r.err
    assert _digest(f"oci:{tmp_path / 'pulled'}:v1") == want
    # Still hidden: nothing in the help suggests nixfly has a policy to skip.
    assert "insecure-policy" not in run_nixfly("copy", "--help").out


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["deploy", "--wait-timeout", "-1", "--image", "r/x@sha256:" + "a" * 64],
         "nixfly: --wait-timeout -1: a duration cannot be negative; give 0 or more seconds\n"),
        (["deploy", "--wait-timeout=-5s", "--image", "r/x@sha256:" + "a" * 64],
         "nixfly: --wait-timeout -5s: a duration cannot be negative; give 0 or more seconds\n"),
        (["rollback", "--wait-timeout", "nan"],
         "nixfly: --wait-timeout nan: give seconds (90) or a duration like 90s, 5m or 1m30s\n"),
        (["secrets", "set", "--wait-timeout", "-0.5", "A=b"],
         "nixfly: --wait-timeout -0.5: a duration cannot be negative; give 0 or more seconds\n"),
        (["secrets", "unset", "--wait-timeout", "1e400", "A"],
         "nixfly: --wait-timeout 1e400: too long, at most 31622400 seconds\n"),
    ],
)  # fmt: skip
def test_a_negative_or_senseless_wait_timeout_is_one_line(args: list[str], line: str, tmp_path: Path) -> None:
    r = run_nixfly(*args, "-c", str(tmp_path / "fly.toml"), env={"FLY_API_TOKEN": "x", "FLY_API_URL": "http://127.0.0.1:9"})
    assert (r.code, r.err, r.out) == (2, line, "")


def test_a_wait_timeout_as_flyctl_writes_it_is_accepted(tmp_path: Path) -> None:
    """`5m` (flyctl's spelling) and plain seconds pass the flag; the next problem is the missing fly.toml."""
    for value in ("5m", "1m30s", "90", "0"):
        r = run_nixfly("deploy", "--wait-timeout", value, "--image", "r/x@sha256:" + "a" * 64, "-c",
                       str(tmp_path / "fly.toml"))  # fmt: skip
        assert r.code == 2 and "wait-timeout" not in r.err and "fly.toml: no such file" in r.err, r.err


def _layout_with_odd_entries(src: Path, dest: Path) -> Path:
    """The umoci layout (tags v1, v2, v3) plus an untagged entry (as an attached SBOM is), one whose
    annotations are not an object, and one whose tag is not a string."""
    shutil.copytree(src, dest)
    index = json.loads((dest / "index.json").read_text())
    entry = dict(index["manifests"][0])
    index["manifests"] += [
        {k: v for k, v in entry.items() if k != "annotations"},
        {**entry, "annotations": "not an object"},
        {**entry, "annotations": {"org.opencontainers.image.ref.name": 7}},
    ]
    (dest / "index.json").write_text(json.dumps(index))
    return dest


@pytest.mark.slow  # umoci makes the layout
def test_a_missing_tag_lists_the_real_tags_only(tiny_oci_layout: Path, tmp_path: Path) -> None:
    layout = _layout_with_odd_entries(tiny_oci_layout, tmp_path / "layout")
    r = run_nixfly("inspect", f"oci:{layout}:nope", "--no-scan")
    assert r.code not in (0, INTERNAL_ERROR) and r.out == ""
    assert r.err == f"nixfly: oci:{layout}:nope: no image tagged 'nope' (tags: v1, v2, v3)\n"
    assert run_nixfly("inspect", f"oci:{layout}:v2", "--no-scan").code == 0  # the odd entries harm nothing else


@pytest.mark.parametrize(
    ("flags", "toml", "line"),
    [
        (["--max-layers", "500"], "", "--max-layers: must be between 1 and 127 (got 500)"),
        (["--max-layers", "0"], "[layers]\nmax_layers = 50\n", "--max-layers: must be between 1 and 127 (got 0)"),
        (["--level", "99"], "", '--level: gzip level must be 1 to 12 or "fast", got 99'),
        (["--port", "99999"], '[image]\nports = ["8080"]\n', "--port: port '99999' must look like 8080 or 8080/tcp"),
        (["--arch", "amd65"], "", "--arch: 'amd65' is not an OCI architecture"),
        (["--perm", "/x=1:2:999"], "", "--perm: mode '999' is not an octal number"),
        # From the file the key is the file's: file:line: key.
        ([], "[layers]\nmax_layers = 500\n", "nixfly.toml:2: layers.max_layers: must be between 1 and 127"),
        (["--port", "80"], '[image]\nports = ["99999"]\n', "nixfly.toml:2: image.ports.0: port '99999'"),
    ],
)  # fmt: skip
def test_a_bad_flag_value_is_reported_under_the_flag(flags: list[str], toml: str, line: str, tmp_path: Path) -> None:
    cfg = tmp_path / "nixfly.toml"
    cfg.write_text(toml)
    out = tmp_path / "out"
    r = run_nixfly("build", "/nix/store/00000000000000000000000000000000-x", *flags, "--config", str(cfg),
                   "-o", f"oci:{out}", env={"XDG_CACHE_HOME": str(tmp_path / "cache")})  # fmt: skip
    assert r.code == 2 and r.err.count("\n") == 1 and not out.exists(), r.err
    where = f"{cfg.parent}/" if line.startswith("nixfly.toml") else ""
    assert r.err.startswith(f"nixfly: {where}{line}"), r.err

"""One command line: one JSON style (snake_case), -q prints the one thing a script needs, no wrapped lines
when piped, shared registry flags, "did you mean" for nixfly.toml typos."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from nixfly.cli import main
from nixfly.sinks.layout import write_layout
from nixfly.sinks.registry import push_image
from nixfly.transports import LayoutLocation
from tests.support.cli import run_nixfly
from tests.support.registry import RunningRegistry
from tests.support.registry_images import make_image

_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def _keys(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def _snake(obj: Any) -> None:
    bad = sorted(k for k in _keys(obj) if not _SNAKE.match(k))
    assert not bad, f"keys not in snake_case: {bad}"


@pytest.mark.slow
def test_json_of_push_pull_copy_tags_is_snake_case(registry: RunningRegistry, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    img = make_image(tmp_path / "img")
    write_layout(img, LayoutLocation(tmp_path / "l", "t"))
    ref = f"{registry.host}/shape/app"
    outputs = []
    for args in (["push", f"oci:{tmp_path / 'l'}:t", f"{ref}:v1"], ["pull", f"{ref}:v1", f"oci:{tmp_path / 'p'}"],
                 ["copy", f"{ref}:v1", f"{ref}-copy:v1"], ["tags", ref]):  # fmt: skip
        assert main([*args, "--json"]) == 0, args
        outputs.append(json.loads(capsys.readouterr().out))
    for out in outputs:
        _snake(out)
    push, pull, copy, tags = outputs
    assert {"digest", "reference", "uploaded_bytes", "uploaded_blobs", "skipped_blobs", "mounted_blobs"} <= set(push)
    assert pull["digest"] == push["digest"] == copy["digest"] == tags["tags"][0]["digest"]
    assert copy["mounted_blobs"] == 3 and copy["uploaded_bytes"] == 0  # same registry: mounted, not sent


@pytest.mark.slow
def test_quiet_prints_the_one_thing(registry: RunningRegistry, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    ref = f"{registry.host}/quiet/app"
    digest = push_image(make_image(tmp_path / "a", busybox=False), [f"{ref}:v1", f"{ref}:v2"]).digest
    assert main(["tags", ref, "-q"]) == 0
    assert sorted(capsys.readouterr().out.split()) == ["v1", "v2"]
    write_layout(make_image(tmp_path / "a", busybox=False), LayoutLocation(tmp_path / "l", "t"))
    assert main(["push", f"oci:{tmp_path / 'l'}:t", f"{ref}:v3", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{ref}@{digest}\n" and captured.err == ""


def test_tags_has_no_transfer_options() -> None:
    r = run_nixfly("tags", "--help")
    assert r.code == 0 and "--parallel" not in r.out and "--retries" in r.out


@pytest.mark.slow
def test_piped_output_never_wraps(registry: RunningRegistry, tmp_path: Path) -> None:
    write_layout(make_image(tmp_path / "img", busybox=False), LayoutLocation(tmp_path / "l", "t"))
    long_ref = f"{registry.host}/{'very-long-repository-name/' * 4}app:v1"
    r = run_nixfly("push", f"oci:{tmp_path / 'l'}:t", long_ref, env={"COLUMNS": "40"})
    assert r.code == 0, r.err
    assert len(r.err.splitlines()) == 1 and long_ref in r.err  # the summary is one line, not split


def test_registry_flags_are_the_same_everywhere() -> None:
    for cmd in ("push", "pull", "copy", "tags", "inspect", "run"):
        r = run_nixfly(cmd, "--help")
        assert r.code == 0
        for flag in ("--creds", "--tls-verify", "--cert-dir"):
            assert flag in r.out, (cmd, flag)


def test_nixfly_toml_typo_says_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "nixfly.toml"
    toml.write_text('[image]\nroots = ["/nix/store/x"]\n\n[image.layers]\nmax_layrs = 10\n')
    code = main(["build", "--config", str(toml), "-o", f"oci:{tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "nixfly.toml:5" in err and "did you mean 'max_layers'" in err, err

"""What can be checked at build time is checked before anything is built or written (issue 10 items 16,
19, 20): bad --perm modes, undeclared users, unknown architectures, --jobs 0, an entrypoint or cmd
that is not in the image, a bad --push reference and an output location that cannot be written.
Each is one line and exit 2, and leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import run_nixfly
from tests.support.nixstore import TinyClosure


def _build(tc: TinyClosure, tmp_path: Path, *extra: str, out: str | None = None) -> tuple[int, str, str]:
    dest = out or f"oci:{tmp_path / 'out'}"
    r = run_nixfly("build", tc.app, "-o", dest, "--cache-dir", str(tmp_path / "c"), *extra)
    return r.code, r.out, r.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--perm", "/bin=0:0:9999"), "--perm: mode '9999' is not an octal number"),
        (("--user", "ghost"), "user 'ghost': 'ghost' is not declared in users (declared: nobody, root)"),
        (("--user", "root:ghosts"), "group 'ghosts' is not declared in groups"),
        (("--arch", "x/y"), "--arch: 'x/y' is not an OCI architecture"),
        (("--os", "plan10"), "--os: 'plan10' is not an OCI os"),
        (("--jobs", "0"), "Invalid value for '--jobs': 0 is not in the range x>=1"),
        (("--cmd", "/bin/webech"), "cmd '/bin/webech' is not in the image (no file /bin/webech)"),
        (("--entrypoint", "webech"), "entrypoint 'webech' is not in the image (searched PATH=/bin:/usr/bin"),
        (("--entrypoint", "/bin/hello/x"), "entrypoint '/bin/hello/x' is not in the image"),
        (("--push", "UPPER/case"), "UPPER/case"),
        (("--label", "k=\udcff"), "--label: is not UTF-8 text (an argument holds bytes that are not UTF-8)"),
    ],
    ids=["perm-mode", "user", "group", "arch", "os", "jobs", "cmd", "entrypoint-on-path", "file-as-dir", "push-ref",
         "label-not-utf8"],
)
def test_bad_input_is_one_line_before_anything_is_written(
    tiny_closure: TinyClosure, tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    code, out, err = _build(tiny_closure, tmp_path, *extra)
    assert code == 2 and out == "", err
    assert err.count("\n") <= 4 and "Traceback" not in err and "internal error" not in err, err
    assert message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_what_the_checks_accept_still_builds(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    # Numeric ids need no passwd entry; commands found on PATH, through the contents links or in the store.
    for i, extra in enumerate(
        [
            ("--user", "1234:5678", "--entrypoint", "hello", "--perm", "/bin=0:0:0755", "--arch", "arm64"),
            ("--cmd", f"{tiny_closure.app}/bin/hello", "--jobs", "1"),
            ("--entrypoint", "/bin/hello", "--user", "nobody:nogroup"),
        ]
    ):
        r = run_nixfly(
            "build", tiny_closure.app, "-o", f"oci:{tmp_path / f'o{i}'}", "--cache-dir", str(tmp_path / "c"),
            "--json", *extra,
        )  # fmt: skip
        assert r.code == 0, (extra, r.err)
        assert json.loads(r.out)["digest"].startswith("sha256:")


@pytest.mark.parametrize("kind", ["oci-on-a-file", "archive-in-a-missing-dir", "archive-on-a-dir"])
def test_unwritable_output_locations_are_refused_before_building(
    tiny_closure: TinyClosure, tmp_path: Path, kind: str
) -> None:
    f = tmp_path / "a-file"
    f.write_bytes(b"keep me")
    dest = {
        "oci-on-a-file": f"oci:{f}",
        "archive-in-a-missing-dir": f"docker-archive:{tmp_path / 'no' / 'such' / 'x.tar'}",
        "archive-on-a-dir": f"docker-archive:{tmp_path}",
    }[kind]
    code, out, err = _build(tiny_closure, tmp_path, out=dest)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert f.read_bytes() == b"keep me" and not (tmp_path / "c").exists()  # nothing built: no cache either

"""nixfly.toml: the image definition is validated with errors naming file:line, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfly.build.spec import load_spec
from nixfly.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[image]\nroots = ["x"]\n[[image.users]]\nname = "a"\nuid = -1\n',
            "n.toml:5: image.users.0.uid: must be at least 0 (got -1)",
        ),
        ('[image]\nports = ["80/sctp"]\n', "n.toml:2: image.ports.0: port '80/sctp' must look like 8080 or 8080/tcp"),
        (
            '[image.layers]\nalgorithm = "fancy"\n',
            "n.toml:2: image.layers.algorithm: must be one of 'popularity', 'auto' (got 'fancy')",
        ),
        (
            "[image.layers]\nmax_layers = 200\n",
            "n.toml:2: image.layers.max_layers: must be between 1 and 127 (got 200)",
        ),
        ("[image]\nenv = { A = 1 }\n", "image.env.A: must be a string (got int 1)"),
        (
            '[[image.dirs]]\npath = "/d"\nmode = "999"\n',
            "n.toml:3: image.dirs.0.mode: mode '999' is not an octal number",
        ),
        ('[image]\nusers = [{ name = "x" }]\n', "image.users.0.uid: is required"),
        ('roots = ["a"]\nentrypont = ["/bin/x"]\n', "n.toml:2: entrypont: unknown key"),
        ("[image\n", "invalid TOML"),
    ],
)
def test_bad_definitions_name_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "n.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_spec(p)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_good_definition_resolves_relative_paths_and_modes(tmp_path: Path) -> None:
    p = tmp_path / "n.toml"
    p.write_text(
        '[image]\nroots = ["./result", "/nix/store/x", ".#app"]\nports = ["8080"]\n'
        '[[image.dirs]]\npath = "/data"\nmode = "0750"\n[[image.files]]\nsrc = "static"\ndest = "/srv"\n'
    )
    s = load_spec(p)
    assert s.roots == [str(tmp_path / "result"), "/nix/store/x", ".#app"]
    assert s.ports == ["8080/tcp"]
    assert s.dirs[0].mode == 0o750
    assert s.files[0].src == str(tmp_path / "static")
    assert s.layers.algorithm == "auto" and s.layers.max_layers == 100


@pytest.mark.parametrize(
    ("line", "hint"),
    [("mode = 750", '"0750"'), ("mode = 0o750", '"0750"'), ("mode = 644", '"0644"'), ("mode = 493", '"0755"')],
)
@pytest.mark.parametrize("table", ["dirs", "perms"])
def test_integer_modes_are_refused_with_the_quoted_spelling(tmp_path: Path, table: str, line: str, hint: str) -> None:
    # `mode = 750` is the TOML integer 750, i.e. mode 01356 (sticky, world-writable): never taken silently.
    p = tmp_path / "n.toml"
    p.write_text(f'[image]\nroots = ["x"]\n[[image.{table}]]\npath = "/data"\n{line}\n')
    with pytest.raises(ConfigError) as e:
        load_spec(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:5: image.{table}.0.mode: must be a quoted octal string") and "\n" not in msg
    assert "decimal" in msg and (hint in msg or line.endswith("0o750"))


def test_deep_nesting_special_files_and_other_bytes_are_one_line(tmp_path: Path) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    cases = {
        "array": f"[image]\nroots = {deep}\n",
        "inline-table": "[image]\nx = " + "{a=" * 5_000 + "1" + "}" * 5_000 + "\n",
        "dotted-key": "[image]\n" + ".".join(["a"] * 5_000) + " = 1\n",
        "header": "[" + ".".join(["a"] * 5_000) + "]\n",
    }
    for name, text in cases.items():
        p = tmp_path / f"{name}.toml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=r"invalid TOML: nested more than 64 levels deep$"):
            load_spec(p)
    # A FIFO and /dev/zero as nixfly.toml: tests/test_hostile_files.py (in a child process, with a timeout).
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[image]\nroots = ["x"]\nenv = { NAME = "Jos\xe9" }\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml: not UTF-8 text \(byte 0xe9 at line 3, column 20\)$"):
        load_spec(latin1)
    big = tmp_path / "big.toml"
    with big.open("wb") as f:
        f.truncate(5 << 20)  # sparse: 5 MiB of zero bytes without writing them
    with pytest.raises(ConfigError, match=r"big.toml is larger than 4 MiB \(5 MiB\)$"):
        load_spec(big)

"""Start-up stays light: a command loads only what its path needs (start-up is most of a no-change
build or push). Each check runs nixfly in a fresh interpreter and lists the modules it ended with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.nixstore import TinyClosure
from tests.support.registry import RunningRegistry

# Run nixfly's entry point as the console script does, then write the names in sys.modules to $MODULES.
_RUN = """
import json, os, sys
from nixfly.cli import main
code = main(sys.argv[1:])
with open(os.environ["MODULES"], "w") as f:
    json.dump({"code": code, "modules": sorted(k for k, v in sys.modules.items() if v is not None)}, f)
"""

# Never on any of these paths: the Fly side, the binary-cache signatures, the SBOM libraries' models, tests' tools.
NEVER = ["pydantic", "cryptography", "cyclonedx", "jsonschema", "openapi_core", "beartype", "spdx_tools.spdx",
         "hypothesis", "yaml"]  # fmt: skip
# Progress bars and httpx's own command-line client (rich, pygments): only for a person at a terminal.
NO_TERMINAL = ["rich", "pygments", "httpx._main"]
# The HTTP stack and its retry policy: only when a registry is involved.
NETWORK = ["httpx", "httpcore", "h11", "tenacity", "ssl"]


def loaded(tmp_path: Path, *args: str) -> set[str]:
    out = tmp_path / "modules.json"
    env = {**os.environ, "MODULES": str(out)}
    proc = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert got["code"] == 0, proc.stderr
    return set(got["modules"])


def heavy(modules: set[str], names: list[str]) -> list[str]:
    """The names in ``names`` that are loaded, as a package or a module under it."""
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


@pytest.mark.parametrize("command", [["--help"], ["build", "--help"], ["run", "--help"]])
def test_help_loads_neither_the_network_stack_nor_the_heavy_libraries(tmp_path: Path, command: list[str]) -> None:
    mods = loaded(tmp_path, *command)
    assert heavy(mods, NEVER + NO_TERMINAL + NETWORK) == []
    if command == ["--help"]:  # the root group loads no command module at all
        assert heavy(mods, ["nixfly.build", "nixfly.image", "nixfly.registry", "zstandard", "isal"]) == []


def test_the_httpx_cli_is_skipped_and_httpx_still_works() -> None:
    # cli.main keeps httpx from importing its command-line client; if a new httpx stops tolerating
    # that (its `try: from ._main import main` fallback), this fails before any user sees it.
    code = (
        "import sys\nfrom nixfly.cli import _skip_httpx_cli\n_skip_httpx_cli()\nimport httpx\n"
        "assert callable(httpx.main) and httpx.Client(timeout=1).get\n"
        "print(sorted(m for m, v in sys.modules.items()\n"
        "             if v is not None and (m.split('.')[0] in ('rich', 'pygments') or m == 'httpx._main')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_build_to_a_layout_loads_no_network_stack(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    build = ["build", tiny_closure.app, "-o", f"oci:{tmp_path / 'out'}:v1", "--cache-dir", str(tmp_path / "c"), "-q"]
    loaded(tmp_path, *build)  # cold: renders the SBOM (spdx-tools), fills the cache
    mods = loaded(tmp_path, *build)  # warm: the no-change rebuild
    assert heavy(mods, NEVER + NO_TERMINAL + NETWORK) == []


@pytest.mark.slow
def test_pushes_load_no_terminal_ui_and_a_fresh_runner_renders_no_sbom(
    tiny_closure: TinyClosure, registry: RunningRegistry, tmp_path: Path
) -> None:
    layout, ref = f"oci:{tmp_path / 'out'}:v1", f"{registry.host}/app:v1"
    loaded(tmp_path, "build", tiny_closure.app, "-o", layout, "--push", ref, "--cache-dir", str(tmp_path / "c"), "-q")
    # An unchanged re-push of the layout (its SBOM is already attached).
    mods = loaded(tmp_path, "push", "-q", layout, ref)
    assert heavy(mods, NEVER + NO_TERMINAL) == []
    assert "httpx" in mods  # the check above is not vacuous: this path did talk to the registry
    # A fresh runner (empty cache): layers come from the registry's layer index and the SBOM with the
    # same render key is already attached, so spdx-tools' model is never loaded.
    fresh = ["build", tiny_closure.app, "--push", ref, "--cache-dir", str(tmp_path / "fresh"), "-q"]
    mods = loaded(tmp_path, *fresh)
    assert heavy(mods, NEVER + NO_TERMINAL) == []
    assert "nixfly.sinks.layer_index" in mods


_FLY_TOML = 'app = "demo"\nprimary_region = "ams"\n[http_service]\ninternal_port = {port}\n'
_LOAD_FLY_TOML = """
import json, sys
from nixfly.errors import ConfigError
from nixfly.fly.flytoml import load_fly_toml
out = {}
for path in sys.argv[1:]:
    try:
        out[path] = load_fly_toml(__import__("pathlib").Path(path)).app
    except ConfigError as e:
        out[path] = "error: " + str(e)
print(json.dumps({"results": out, "modules": sorted(m for m, v in sys.modules.items() if v is not None),
                  "none_entries": sorted(m for m, v in sys.modules.items() if v is None)}))
"""


def test_fly_toml_validation_loads_no_format_checkers_and_still_refuses_bad_types(tmp_path: Path) -> None:
    # `import jsonschema` would load rfc3987-syntax (seconds: it builds a lark grammar) and the other
    # format checkers, which fly.toml validation never uses; without them the schema still bites.
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(_FLY_TOML.format(port=8080))
    bad.write_text(_FLY_TOML.format(port='"eighty"'))
    proc = subprocess.run([sys.executable, "-c", _LOAD_FLY_TOML, str(good), str(bad)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["results"][str(good)] == "demo"
    assert got["results"][str(bad)].startswith(f"error: {bad}:4: http_service.internal_port"), got["results"]
    assert "jsonschema" in got["modules"]
    assert heavy(set(got["modules"]), ["rfc3987_syntax", "lark", "rfc3986_validator", "webcolors", "isoduration",
                                       "arrow", "fqdn", "jsonpointer", "uri_template", "rfc3339_validator"]) == []
    assert got["none_entries"] == []  # no blocking entry is left behind

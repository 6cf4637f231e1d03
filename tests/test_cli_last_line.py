"""The CLI's last line of defence: an exception that is not a NixflyError (a bug) becomes one line naming
its type and place, exit status 70, and a private crash file holding the traceback with credentials
redacted; ``--debug`` (or NIXFLY_DEBUG=1) prints the traceback instead."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from nixfly.cli import INTERNAL_ERROR, main
from nixfly.cli.app import cli

SECRET = "hunter2-very-secret"


@pytest.fixture
def buggy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A command with a bug, attached to the real root group for the test's duration."""

    @click.command("buggy")
    @click.option("--creds")
    def buggy_cmd(creds: str | None) -> None:
        {}["missing-" + (creds or "")]  # a KeyError whose message carries the credentials

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("NIXFLY_DEBUG", raising=False)
    monkeypatch.setenv("SOME_API_TOKEN", "tok-" + SECRET)
    cli.add_command(buggy_cmd)
    try:
        yield
    finally:
        cli.commands.pop("buggy", None)


def test_a_bug_is_one_line_and_a_private_crash_file(buggy: None, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["buggy", "--creds", f"me:{SECRET}"])
    out, err = capsys.readouterr()
    assert rc == INTERNAL_ERROR and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err and SECRET not in err, err
    m = re.fullmatch(
        r"nixfly: internal error: KeyError at tests/test_cli_last_line\.py:\d+ \(buggy_cmd\), please report "
        r"\(details in (\S+)\)\n",
        err.replace(str(Path(__file__).resolve().parent.parent) + "/", ""),
    )
    assert m, err
    crash = Path(m.group(1))
    assert stat.S_IMODE(crash.stat().st_mode) == 0o600 and crash.parent.name == "crashes"
    text = crash.read_text()
    assert "Traceback (most recent call last)" in text and "KeyError" in text and "buggy_cmd" in text
    assert SECRET not in text and "<redacted>" in text


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_prints_the_traceback(
    buggy: None, how: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if how == "env":
        monkeypatch.setenv("NIXFLY_DEBUG", "1")
    rc = main(["--debug", "buggy"] if how == "flag" else ["buggy"])
    err = capsys.readouterr().err
    assert rc == INTERNAL_ERROR
    assert err.startswith("Traceback (most recent call last)") and "KeyError: 'missing-'" in err
    assert err.splitlines()[-1].startswith("nixfly: internal error: KeyError at ")
    assert not (tmp_path / "state").exists()  # no crash file when the traceback was shown


def test_user_errors_are_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["inspect", "oci:/nonexistent/nixfly-test-layout"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and err.startswith("nixfly: ") and "internal error" not in err


def _run_bug_from(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Load a command whose bug is in the file at ``path``, run it, and return the one line printed."""
    import importlib.util

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("import click\n\n\n@click.command('bug-elsewhere')\ndef bug() -> None:\n    1 / 0\n")
    spec = importlib.util.spec_from_file_location("bug_elsewhere", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cli.add_command(module.bug)
    try:
        assert main(["bug-elsewhere"]) == INTERNAL_ERROR
    finally:
        cli.commands.pop("bug-elsewhere", None)
    return capsys.readouterr().err


def test_a_folder_named_nixfly_is_not_the_package(
    buggy: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`git clone …/nixfly` makes a checkout folder named like the package: the place is still named from
    the file's own folder, not from that name (it was `nixfly/tests/…` there, which no test expected)."""
    err = _run_bug_from(tmp_path / "nixfly" / "tests" / "bug_here.py", capsys)
    assert err.startswith("nixfly: internal error: ZeroDivisionError at tests/bug_here.py:6 (bug), "), err


def test_a_bug_in_the_package_is_named_from_the_package(buggy: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The innermost frame in nixfly's own code wins over the caller's, named `nixfly/<module path>`."""

    @click.command("buggy-inside")
    def inside() -> None:
        from nixfly.registry.reference import parse_reference

        parse_reference(None)  # type: ignore[arg-type]  # an AttributeError raised inside the package

    cli.add_command(inside)
    try:
        assert main(["buggy-inside"]) == INTERNAL_ERROR
    finally:
        cli.commands.pop("buggy-inside", None)
    err = capsys.readouterr().err
    assert re.match(
        r"nixfly: internal error: AttributeError at nixfly/registry/reference\.py:\d+ \(parse_reference\), ", err
    ), err

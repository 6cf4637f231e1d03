"""nixfly secrets set/list/unset against the validated stand-in: values are stored, never printed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from nixfly.cli import main
from nixfly.errors import UsageError
from nixfly.fly.deploy import SecretsVersionStore
from nixfly.fly.secrets import parse_assignments
from tests.support.flystandin import RunningStandin

SECRET = "pa55-W0rd-never-shown"


@pytest.fixture
def env(fly_env: RunningStandin, tmp_path: Path) -> Path:
    fly_env.create_app("demo")
    return tmp_path


def test_parse_assignments() -> None:
    assert parse_assignments(["A=1", "B=x=y"], "# comment\n\nC=3\n") == {"A": "1", "B": "x=y", "C": "3"}
    with pytest.raises(UsageError, match="#1 is not NAME=VALUE") as info:
        parse_assignments([SECRET])
    assert SECRET not in str(info.value)
    with pytest.raises(UsageError, match="given twice"):
        parse_assignments(["A=1", "A=2"])
    with pytest.raises(UsageError, match="not a valid environment variable name"):
        parse_assignments(["1BAD=x"])


def test_set_list_unset_never_print_values(
    fly_api: RunningStandin, env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["secrets", "set", "--app", "demo", f"DB_PASSWORD={SECRET}"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(f"API_KEY={SECRET}-2\n"))
    assert main(["secrets", "set", "--app", "demo"]) == 0
    assert {n: v[0] for n, v in fly_api.apps["demo"].secrets.items()} == {
        "DB_PASSWORD": SECRET,
        "API_KEY": f"{SECRET}-2",
    }
    assert main(["secrets", "list", "--app", "demo", "--json"]) == 0
    out = capsys.readouterr()
    listed = json.loads(out.out.strip().splitlines()[-1])
    assert [s["name"] for s in listed] == ["API_KEY", "DB_PASSWORD"]
    assert all(len(s["digest"]) == 16 for s in listed)
    assert SECRET not in out.out + out.err
    assert SecretsVersionStore(env / "state", "demo").get() == 2
    # Listing asked only for names: the spec's show_secrets flag was never sent.
    assert not any(k == "show_secrets" for r in fly_api.requests for k, _ in r.query)

    assert main(["secrets", "unset", "--app", "demo", "API_KEY"]) == 0
    assert list(fly_api.apps["demo"].secrets) == ["DB_PASSWORD"]
    assert SecretsVersionStore(env / "state", "demo").get() == 3
    delete = [r for r in fly_api.requests if r.method == "DELETE"]
    assert [r.path for r in delete] == ["/v1/apps/demo/secrets/API_KEY"]  # spec-strict delete by path
    assert SECRET not in capsys.readouterr().out


def test_unset_unknown_secret_is_one_line_error(
    fly_api: RunningStandin, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["secrets", "unset", "--app", "demo", "NOPE"]) == 2
    err = capsys.readouterr().err
    assert err == "nixfly: app demo has no secret named NOPE\n"


def test_malformed_assignment_is_refused_without_echo(
    fly_api: RunningStandin, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["secrets", "set", "--app", "demo", SECRET]) == 2
    err = capsys.readouterr().err
    assert SECRET not in err and err.startswith("nixfly: ") and err.count("\n") == 1
    assert fly_api.mutations() == []


def test_missing_token_is_a_clear_error(
    fly_api: RunningStandin, env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLY_API_TOKEN")
    monkeypatch.setenv("HOME", str(env / "home"))
    assert main(["secrets", "list", "--app", "demo"]) == 2
    assert "no Fly API token" in capsys.readouterr().err


def test_token_from_flag_not_leaked_on_refusal(
    fly_api: RunningStandin, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = "fm2_leaky-macaroon-token"
    assert main(["secrets", "list", "--app", "demo", "--access-token", bad]) == 1
    err = capsys.readouterr().err
    assert "401" in err and bad not in err

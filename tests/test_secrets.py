"""nixfly secrets set/list/unset against the validated stand-in: values are stored, never printed."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from nixfly.cli import main
from nixfly.errors import UsageError
from nixfly.fly.deploy import SecretsVersionStore
from nixfly.fly.secrets import parse_assignments
from tests.support.cli import NIXFLY
from tests.support.flystandin import RunningStandin
from tests.support.hostile_http import Answer, Scripted, Seen, serving

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


# ---------------------------------------------------------------------------------------------------
# values that cannot be secrets, and secrets in errors and crash files (redacted by value, not by name)

NON_UTF8 = b"DB_URL=postgres://u:\xff\xfe-s3cr3t-bytes@db/x"


def _cli(*args: str | bytes, env: dict[str, str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*NIXFLY, *args], input=stdin, capture_output=True, env={**os.environ, **env}, timeout=120)


@pytest.mark.parametrize("via", ["argument", "stdin"])
def test_non_utf8_value_is_one_line_before_any_request(
    fly_env: RunningStandin, env: Path, tmp_path: Path, via: str
) -> None:
    """The name matches none of the words a name-based redactor looks for; the value is still never shown,
    no crash file is written, and nothing reaches the API."""
    state = tmp_path / "xdg-state"
    e = {"XDG_STATE_HOME": str(state)}
    r = _cli("secrets", "set", "--app", "demo", NON_UTF8, env=e) if via == "argument" else \
        _cli("secrets", "set", "--app", "demo", env=e, stdin=NON_UTF8 + b"\n")  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr == b"nixfly: secret DB_URL: the value is not valid UTF-8 text\n"
    assert b"s3cr3t" not in r.stderr + r.stdout
    assert not (state / "nixfly" / "crashes").exists()
    assert fly_env.mutations() == []


def test_too_long_and_nul_values_are_refused_by_name(fly_api: RunningStandin, env: Path) -> None:
    with pytest.raises(UsageError, match=r"^secret BIG: NAME=VALUE is 131073 bytes, more than the 131072") as big:
        parse_assignments(["BIG=" + "v" * (131072 - 3)])
    with pytest.raises(UsageError, match=r"^secret NUL: the value holds a NUL byte") as nul:
        parse_assignments(["NUL=abc\0def-secret"])
    assert "vvvv" not in str(big.value) and "def-secret" not in str(nul.value)
    parse_assignments(["BIG=" + "v" * (131072 - 4)])  # exactly the limit is fine


@pytest.mark.parametrize("echo", ["json", "text"])
def test_an_api_error_echoing_the_request_never_shows_the_value(tmp_path: Path, echo: str) -> None:
    """A hostile or buggy API answers 400 with the request body in its error (as JSON, or as text that the
    client cuts at 200 characters in the middle of the value). The value's name is again none of the
    words a name-based redactor knows."""
    value = "Q7vXk2-pL9wZ-4mN8sR-" * 3

    def script(s: Seen) -> Answer:
        echoed = '{"values": {"DB_URL": ' + json.dumps(value) + "}}"
        if echo == "json":
            return Answer(400, {"Content-Type": "application/json"}, json.dumps({"error": f"bad request: {echoed}"}))
        return Answer(400, {"Content-Type": "text/plain"}, "x" * 170 + echoed)  # the cut at 200 falls in the value

    with serving(Scripted(script)) as api:
        r = _cli("secrets", "set", "--app", "demo", "--stage", f"DB_URL={value}",
                 env={"FLY_API_URL": api.url, "FLY_API_TOKEN": "fo1_test-token-for-echo", "HOME": str(tmp_path)})
    err = r.stderr.decode()
    assert r.returncode == 1 and err.startswith("nixfly: Fly API POST") and err.count("\n") == 1, err
    assert "<redact" in err  # (the cut at 200 characters may fall inside the marker)
    for i in range(len(value) - 6):  # not even a piece of it
        assert value[i : i + 6] not in err, err


def test_crash_file_redacts_every_value_given_whatever_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nixfly.cli import internal_error
    from nixfly.registry.auth import Credentials

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    password = "Reg1stry-pass-W0rd"
    Credentials("someone", password, "docker config")  # announced as a secret when it is made
    argv = ["secrets", "set", "--app", "demo", "DB_URL=argv-Only-value-91"]
    try:
        raise RuntimeError(f"a bug that quotes {password} and argv-Only-value-91")
    except RuntimeError as e:
        assert internal_error(e, argv) == 70
    (crash,) = (tmp_path / "nixfly" / "crashes").iterdir()
    text = crash.read_text()
    assert "RuntimeError" in text and "<redacted>" in text
    assert password not in text and "argv-Only-value-91" not in text


def test_a_secret_quoted_by_repr_is_redacted_in_the_crash_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception quotes what it got with repr(): a password holding both quote characters and a
    backslash shows escaped there (``it\\'s``), a spelling neither the raw nor the JSON form matches."""
    from nixfly.cli import internal_error
    from nixfly.registry.auth import Credentials

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    password = "it's a \"pass\\word\" 9"
    Credentials("someone", password, "docker config")
    try:
        raise RuntimeError(f"a bug that shows {password!r}")
    except RuntimeError as e:
        assert internal_error(e, ["push", "oci:x", "127.0.0.1:1/r:t"]) == 70
    (crash,) = (tmp_path / "nixfly" / "crashes").iterdir()
    text = crash.read_text()
    assert "RuntimeError: a bug that shows '<redacted>'" in text and repr(password)[1:-1] not in text


def test_json_output_and_registry_errors_redact_known_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    from nixfly.cli.common import emit_json
    from nixfly.errors import RegistryError, add_secret

    add_secret("tok-Issued-by-a-token-service")
    emit_json({"note": "echo tok-Issued-by-a-token-service"})
    assert "tok-Issued" not in capsys.readouterr().out
    assert "tok-Issued" not in str(RegistryError("registry x: said tok-Issued-by-a-token-service"))


def test_a_registry_that_echoes_the_password_in_its_error(tmp_path: Path) -> None:
    password = "Echoed-Regi5try-pw"

    def script(s: Seen) -> Answer:
        if "authorization" not in s.headers:
            return Answer(401, {"WWW-Authenticate": 'Basic realm="x"'})
        shown = base64.b64decode(s.headers["authorization"].split()[1]).decode()
        body = json.dumps({"errors": [{"code": "DENIED", "message": f"no push for {shown}"}]})
        return Answer(403, {"Content-Type": "application/json"}, body)

    with serving(Scripted(script)) as reg:
        r = _cli("tags", f"{reg.host}/r", "--tls-verify=false", "--creds", f"me:{password}",
                 env={"HOME": str(tmp_path)})  # fmt: skip
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and "DENIED" in err, err
    assert password not in err

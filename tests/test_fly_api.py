"""The Machines API client: auth headers, token redaction, 429 retries, both lease shapes, spec checks."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from nixfly.errors import ConfigError
from nixfly.fly.api import (
    AccessToken,
    FlyAPIError,
    LeaseConflict,
    MachinesAPI,
    resolve_api_url,
    resolve_token,
)
from tests.support.flystandin import RunningStandin

IMAGE = "registry.fly.io/demo@sha256:" + "ab" * 32


def _api(fly_api: RunningStandin, **kw: object) -> MachinesAPI:
    return MachinesAPI(AccessToken(fly_api.token), fly_api.url, sleep=lambda _s: None, **kw)  # type: ignore[arg-type]


def test_authorization_header_bearer_and_flyv1() -> None:
    assert AccessToken("abc123").authorization() == "Bearer abc123"
    assert AccessToken("fm2_aaa,fm2_bbb").authorization() == "FlyV1 fm2_aaa,fm2_bbb"
    assert AccessToken("fm1r_x").authorization() == "FlyV1 fm1r_x"
    assert AccessToken("FlyV1 fm1a_q").authorization() == "FlyV1 fm1a_q"


def test_token_never_in_repr_or_str() -> None:
    secret = "s3cr3t-token-value-123"
    tok = AccessToken(secret)
    api = MachinesAPI(tok, "http://127.0.0.1:9/v1")
    for text in (repr(tok), str(tok), repr(api), str(api)):
        assert secret not in text


def test_token_resolution_order(tmp_path: Path) -> None:
    (tmp_path / ".fly").mkdir()
    (tmp_path / ".fly" / "config.yml").write_text("access_token: from-config-file\n")
    env = {"FLY_API_TOKEN": "from-env"}
    assert resolve_token("from-flag", env=env, home=tmp_path).authorization() == "Bearer from-flag"
    assert resolve_token(None, env=env, home=tmp_path).authorization() == "Bearer from-env"
    assert resolve_token(None, env={}, home=tmp_path).authorization() == "Bearer from-config-file"
    with pytest.raises(ConfigError, match="no Fly API token"):
        resolve_token(None, env={}, home=tmp_path / "nowhere")


def test_api_url_resolution() -> None:
    assert resolve_api_url(None, env={}) == "https://api.machines.dev/v1"
    assert resolve_api_url(None, env={"FLY_API_URL": "http://127.0.0.1:1/v1/"}) == "http://127.0.0.1:1/v1"
    assert resolve_api_url("http://x:2/v1", env={"FLY_API_URL": "http://y/v1"}) == "http://x:2/v1"
    with pytest.raises(ConfigError):
        resolve_api_url("ftp://x", env={})


def test_429s_are_retried_and_counted(fly_api: RunningStandin) -> None:
    m = fly_api.seed_machine("demo", {"image": IMAGE})
    fly_api.inject_429(3, method="GET", path_contains="/machines")
    api = _api(fly_api)
    machines = api.list_machines("demo")
    assert [x.id for x in machines] == [m.id]
    assert api.retries == 3
    gets = [r for r in fly_api.requests if r.method == "GET" and r.path.endswith("/machines")]
    assert len(gets) == 4


def test_429_on_non_idempotent_create_is_retried_once_refused(fly_api: RunningStandin) -> None:
    # A 429 means the limiter refused the request unprocessed, so even a create may be retried.
    fly_api.create_app("demo")
    fly_api.inject_429(2, method="POST", path_contains="/machines")
    api = _api(fly_api)
    created = api.create_machine("demo", {"config": {"image": IMAGE}, "region": "ams"})
    assert [m.id for m in fly_api.machines("demo")] == [created.id]


def test_persistent_429_gives_one_line_error_without_token(fly_api: RunningStandin) -> None:
    fly_api.create_app("demo")
    fly_api.inject_429(10)
    api = _api(fly_api, max_attempts=3)
    with pytest.raises(FlyAPIError) as info:
        api.list_machines("demo")
    assert info.value.status == 429
    assert "\n" not in str(info.value) and fly_api.token not in str(info.value)
    assert len(fly_api.requests) == 3


def test_retry_after_is_honoured(fly_api: RunningStandin) -> None:
    fly_api.create_app("demo")
    fly_api.inject_429(1, retry_after="2")
    slept: list[float] = []
    api = MachinesAPI(AccessToken(fly_api.token), fly_api.url, sleep=slept.append)
    api.list_machines("demo")
    assert slept == [2.0]


@pytest.mark.parametrize("envelope", [False, True])
def test_lease_cycle_in_both_response_shapes(fly_api: RunningStandin, envelope: bool) -> None:
    fly_api.lease_envelope = envelope
    m = fly_api.seed_machine("demo", {"image": IMAGE})
    api = _api(fly_api)
    lease = api.acquire_lease("demo", m.id, ttl=30, description="test")
    assert lease.nonce and lease.nonce == fly_api.apps["demo"].machines[m.id].lease.nonce
    with pytest.raises(LeaseConflict):
        api.acquire_lease("demo", m.id, ttl=30, description="second")
    assert api.refresh_lease("demo", m.id, nonce=lease.nonce, ttl=60).nonce == lease.nonce
    raw = httpx.get(f"{fly_api.url}/apps/demo/machines/{m.id}/lease",
                    headers={"Authorization": f"Bearer {fly_api.token}"}).json()  # fmt: skip
    assert ("data" in raw) is envelope  # the shape the client just parsed really was that one
    api.release_lease("demo", m.id, nonce=lease.nonce)
    assert fly_api.apps["demo"].machines[m.id].lease is None


def test_wait_sends_repeated_state_and_returns_none_on_timeout(fly_api: RunningStandin) -> None:
    m = fly_api.seed_machine("demo", {"image": IMAGE}, state="stopped")
    api = _api(fly_api)
    assert api.wait_state("demo", m.id, ["started", "suspended"], timeout=1) is None
    assert api.wait_state("demo", m.id, ["stopped"], timeout=1) == "stopped"
    wait = next(r for r in fly_api.requests if r.path.endswith("/wait"))
    assert [v for k, v in wait.query if k == "state"] == ["started", "suspended"]


def test_body_on_stop_is_tolerated(fly_api: RunningStandin) -> None:
    m = fly_api.seed_machine("demo", {"image": IMAGE})
    api = _api(fly_api)
    nonce = api.acquire_lease("demo", m.id, ttl=30, description="t").nonce
    api.stop_machine("demo", m.id, nonce=nonce)  # the stand-in answers with a body the spec does not list
    assert api.get_machine("demo", m.id).state == "stopped"


def test_secrets_versions(fly_api: RunningStandin) -> None:
    fly_api.create_app("demo")
    api = _api(fly_api)
    assert api.update_secrets("demo", {"A": "1", "B": "2"}) == 1
    assert api.delete_secret("demo", "A") == 2
    names = [s["name"] for s in api.list_secrets("demo")]
    assert names == ["B"]
    assert all("value" not in s for s in api.list_secrets("demo"))


def test_standin_catches_requests_that_break_the_spec(fly_api: RunningStandin) -> None:
    """The stand-in can fail: a lease request with a string ttl is a recorded violation and a 400."""
    m = fly_api.seed_machine("demo", {"image": IMAGE})
    r = httpx.post(
        f"{fly_api.url}/apps/demo/machines/{m.id}/lease",
        json={"ttl": "thirty"},
        headers={"Authorization": f"Bearer {fly_api.token}"},
    )
    assert r.status_code == 400
    assert any("ttl" in v or "thirty" in v for v in fly_api.violations)
    r = httpx.post(
        f"{fly_api.url}/apps/demo/machines",
        json={"config": {"image": "demo:latest", "auto_destroy": "yes"}},
        headers={"Authorization": f"Bearer {fly_api.token}"},
    )
    assert r.status_code == 400
    fly_api.violations.clear()  # expected here; any other violation still fails the test at teardown


def test_wrong_token_is_refused_without_echo(fly_api: RunningStandin) -> None:
    fly_api.create_app("demo")
    api = MachinesAPI(AccessToken("wrong-token-xyz"), fly_api.url, sleep=lambda _s: None)
    with pytest.raises(FlyAPIError) as info:
        api.list_machines("demo")
    assert info.value.status == 401 and "wrong-token-xyz" not in str(info.value)


def test_one_token_lookup_for_the_api_and_the_fly_registry(tmp_path: Path) -> None:
    from nixfly.flytoken import find_fly_token
    from nixfly.registry.auth import resolve_credentials

    home = tmp_path / "home"
    (home / ".fly").mkdir(parents=True)
    (home / ".fly" / "config.yml").write_text("access_token: fm2_from-config-file\n")
    for env, want in [({}, "fm2_from-config-file"), ({"FLY_ACCESS_TOKEN": "fm2_older-name"}, "fm2_older-name"),
                      ({"FLY_API_TOKEN": "fm2_env", "FLY_ACCESS_TOKEN": "x"}, "fm2_env")]:  # fmt: skip
        found = find_fly_token(env, home)
        assert found is not None and found.value == want and want not in repr(found)
        assert resolve_token(None, env=env, home=home).authorization() == f"FlyV1 {want}"
        creds = resolve_credentials("registry.fly.io", env=env, home=home)
        assert creds is not None and creds.password == want
    (home / ".fly" / "config.yml").write_text("access_token: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config\.yml is not valid YAML"):
        resolve_token(None, env={}, home=home)


def test_an_app_name_that_is_not_utf8_is_one_line(fly_api: RunningStandin) -> None:
    # argv keeps undecodable bytes as surrogates; quoting them for the URL was an internal error (exit 70).
    from tests.support.cli import run_nixfly

    r = run_nixfly("status", "-a", "a\udcff", "--access-token", fly_api.token, "--api-url", fly_api.url)
    assert r.code == 1, r.err
    assert r.err.splitlines() == ["nixfly: app a\\udcff does not exist on Fly.io"]

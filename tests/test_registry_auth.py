"""Credential resolution (flags, env, Fly token, docker config + helpers) and challenge parsing; secrets redact."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from nixfly.errors import UsageError
from nixfly.registry.auth import Credentials, parse_creds, parse_www_authenticate, resolve_credentials


def test_challenge_parsing() -> None:
    ch = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    )
    assert ch is not None and ch.scheme == "bearer"
    assert dict(ch.params) == {"realm": "https://auth.example/token", "service": "registry.example",
                               "scope": "repository:a/b:pull,push"}  # fmt: skip
    basic = parse_www_authenticate('Basic realm="x y"')
    assert basic is not None and basic.scheme == "basic" and basic.params["realm"] == "x y"


def test_credentials_redact_and_parse_errors_hide_the_secret() -> None:
    c = parse_creds("user:pa:ss")
    assert (c.username, c.password) == ("user", "pa:ss")
    assert "pa:ss" not in repr(c) and "pa:ss" not in str(c)
    with pytest.raises(UsageError) as ei:
        parse_creds("justasecretvalue")
    assert "justasecretvalue" not in str(ei.value)


def test_resolution_order(tmp_path: Path) -> None:
    home = tmp_path
    (home / ".docker").mkdir()
    auth = base64.b64encode(b"cfguser:cfgpass").decode()
    (home / ".docker" / "config.json").write_text(
        json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": auth}, "ghcr.io": {"auth": auth}}})
    )
    env: dict[str, str] = {}
    hub = resolve_credentials("docker.io", env=env, home=home)
    assert hub is not None and (hub.username, hub.password) == ("cfguser", "cfgpass")
    assert resolve_credentials("quay.io", env=env, home=home) is None
    explicit = Credentials("a", "b")
    assert resolve_credentials("ghcr.io", explicit, env=env, home=home) is explicit
    env_creds = resolve_credentials(
        "ghcr.io", env={"NIXFLY_REGISTRY_USERNAME": "e", "NIXFLY_REGISTRY_PASSWORD": "p"}, home=home
    )
    assert env_creds is not None and env_creds.username == "e"


def test_fly_token_from_env_then_config(tmp_path: Path) -> None:
    fly = resolve_credentials("registry.fly.io", env={"FLY_API_TOKEN": "fo1_tok"}, home=tmp_path)
    assert fly is not None and (fly.username, fly.password, fly.source) == ("x", "fo1_tok", "FLY_API_TOKEN")
    assert resolve_credentials("registry.fly.io", env={}, home=tmp_path) is None
    (tmp_path / ".fly").mkdir()
    (tmp_path / ".fly" / "config.yml").write_text("access_token: fo1_from_file\n")
    cfg = resolve_credentials("registry.fly.io", env={}, home=tmp_path)
    assert cfg is not None and (cfg.username, cfg.password) == ("x", "fo1_from_file")
    # The Fly token is only ever offered to Fly's registry.
    assert resolve_credentials("ghcr.io", env={"FLY_API_TOKEN": "fo1_tok"}, home=tmp_path) is None


def test_creds_store_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-teststore"
    helper.write_text('#!/bin/sh\nread s\nprintf \'{"Username":"u-%s","Secret":"s3"}\' "$s"\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(json.dumps({"credsStore": "teststore"}))
    c = resolve_credentials("ghcr.io", env={}, home=tmp_path)
    assert c is not None and (c.username, c.password) == ("u-ghcr.io", "s3")
    (tmp_path / ".docker" / "config.json").write_text(json.dumps({"credsStore": "missing-helper"}))
    with pytest.raises(UsageError, match="docker-credential-missing-helper"):
        resolve_credentials("ghcr.io", env={}, home=tmp_path)

"""Push through Basic auth, TLS with a private CA and Bearer tokens; wrong credentials fail in one line
and no secret appears in any output, log or exception text."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nixfly.errors import RegistryError
from nixfly.registry.auth import Credentials
from nixfly.registry.client import RegistryClient, RegistryOptions
from nixfly.sinks.layout import write_layout
from nixfly.sinks.registry import push_image
from nixfly.sources.registry import open_remote_image
from nixfly.transports import LayoutLocation
from tests.support.registry import RunningRegistry
from tests.support.registry_images import make_image

pytestmark = pytest.mark.slow

NIXFLY = [sys.executable, "-m", "nixfly"]


def _layout(tmp_path: Path) -> Path:
    image = make_image(tmp_path / "img")
    write_layout(image, LayoutLocation(tmp_path / "layout", "v1"))
    return tmp_path / "layout"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "HOME": "/nonexistent-home", **(env or {})}
    return subprocess.run([*NIXFLY, *args], capture_output=True, text=True, env=full_env, timeout=120)


def _skopeo_digest(r: RunningRegistry, ref: str) -> str:
    out = subprocess.run(["skopeo", "inspect", *r.skopeo_args(), f"docker://{ref}"], check=True,
                         capture_output=True)  # fmt: skip
    digest: str = json.loads(out.stdout)["Digest"]
    return digest


def test_basic_auth_push_and_wrong_password(basic_registry: RunningRegistry, tmp_path: Path) -> None:
    r = basic_registry
    layout = _layout(tmp_path)
    ref = f"{r.host}/secure/app:v1"
    ok = _cli("push", f"oci:{layout}:v1", ref, "--dest-creds", f"{r.username}:{r.password}", "--json")
    assert ok.returncode == 0, ok.stderr
    digest = json.loads(ok.stdout)["digest"]
    assert _skopeo_digest(r, ref) == digest

    bad_secret = "definitely-Wrong-pw-9731"
    bad = _cli("push", f"oci:{layout}:v1", ref, "--creds", f"{r.username}:{bad_secret}")
    assert bad.returncode != 0
    assert bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith(f"nixfly: registry {r.host}: ")
    assert "--creds" in bad.stderr  # names where the rejected credentials came from
    for text in (bad.stdout, bad.stderr, ok.stdout, ok.stderr, r.log_text()):
        assert bad_secret not in text and str(r.password) not in text

    anon = _cli("push", f"oci:{layout}:v1", ref)
    assert anon.returncode != 0 and "authentication required" in anon.stderr


def test_credentials_from_env_and_docker_config(basic_registry: RunningRegistry, tmp_path: Path) -> None:
    r = basic_registry
    layout = _layout(tmp_path)
    env = {"NIXFLY_REGISTRY_USERNAME": str(r.username), "NIXFLY_REGISTRY_PASSWORD": str(r.password)}
    env_push = _cli("push", f"oci:{layout}:v1", f"{r.host}/env/app:v1", "-q", env=env)
    assert env_push.returncode == 0, env_push.stderr
    docker_dir = tmp_path / "docker"
    docker_dir.mkdir()
    auth = base64.b64encode(f"{r.username}:{r.password}".encode()).decode()
    (docker_dir / "config.json").write_text(json.dumps({"auths": {f"http://{r.host}/v2/": {"auth": auth}}}))
    cfg_push = _cli("push", f"oci:{layout}:v1", f"{r.host}/cfg/app:v1", "-q", env={"DOCKER_CONFIG": str(docker_dir)})
    assert cfg_push.returncode == 0, cfg_push.stderr
    assert cfg_push.stdout.strip().startswith(f"{r.host}/cfg/app@sha256:")


def test_credential_helper(basic_registry: RunningRegistry, tmp_path: Path) -> None:
    r = basic_registry
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-nixflytest"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        f'[ "$server" = "{r.host}" ] || exit 1\n'
        f"printf '%s' '{json.dumps({'ServerURL': r.host, 'Username': r.username, 'Secret': r.password})}'\n"
    )
    helper.chmod(0o755)
    docker_dir = tmp_path / "docker"
    docker_dir.mkdir()
    (docker_dir / "config.json").write_text(json.dumps({"credHelpers": {r.host: "nixflytest"}}))
    layout = _layout(tmp_path)
    env = {"DOCKER_CONFIG": str(docker_dir), "PATH": f"{bindir}:{os.environ['PATH']}"}
    res = _cli("push", f"oci:{layout}:v1", f"{r.host}/helper/app:v1", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert str(r.password) not in res.stdout + res.stderr


def test_tls_registry_needs_its_ca(tls_registry: RunningRegistry, tmp_path: Path) -> None:
    r = tls_registry
    assert r.cert_dir is not None
    layout = _layout(tmp_path)
    ref = f"{r.host}/tls/app:v1"
    untrusted = _cli("push", f"oci:{layout}:v1", ref)
    assert untrusted.returncode != 0
    assert untrusted.stderr.startswith(f"nixfly: registry {r.host}") and untrusted.stderr.count("\n") == 1
    ok = _cli("push", f"oci:{layout}:v1", ref, "--cert-dir", str(r.cert_dir), "--json")
    assert ok.returncode == 0, ok.stderr
    assert _skopeo_digest(r, ref) == json.loads(ok.stdout)["digest"]
    # --tls-verify=false talks TLS without checking the certificate.
    insecure = _cli("push", f"oci:{layout}:v1", ref, "--tls-verify=false", "--json")
    assert insecure.returncode == 0, insecure.stderr
    assert json.loads(insecure.stdout)["uploaded_blobs"] == 0


def test_bearer_token_push_pull_and_token_reuse(token_registry: RunningRegistry, tmp_path: Path) -> None:
    r = token_registry
    issuer = r.token_issuer
    assert issuer is not None
    image = make_image(tmp_path / "img")
    creds = Credentials(str(r.username), str(r.password))
    opts = RegistryOptions(credentials=creds)
    ref = f"{r.host}/tok/app:v1"
    result = push_image(image, [ref], options=opts)
    # One token per scope, cached across all (parallel) blob and manifest requests of the push.
    granted = [q for q in issuer.requests if q.granted]
    assert len(granted) == 1 and granted[0].scopes == ["repository:tok/app:pull,push"]
    assert _skopeo_digest(r, ref) == result.digest
    pulled = open_remote_image(ref, opts)
    assert pulled.manifest_digest() == result.digest
    write_layout(pulled, LayoutLocation(tmp_path / "pulled", "v1"))
    tokens = list(issuer.tokens)
    assert tokens
    bad = _cli("push", f"oci:{tmp_path / 'pulled'}:v1", ref, "--creds", f"{r.username}:wrong-token-pw")
    assert bad.returncode != 0
    assert bad.stderr.startswith(f"nixfly: registry {r.host}: token service refused the credentials")
    for t in [*tokens, str(r.password), "wrong-token-pw"]:
        assert t not in bad.stdout + bad.stderr + r.log_text()


def test_expired_token_is_refreshed(token_registry: RunningRegistry, tmp_path: Path) -> None:
    r = token_registry
    issuer = r.token_issuer
    assert issuer is not None
    opts = RegistryOptions(credentials=Credentials(str(r.username), str(r.password)))
    push_image(make_image(tmp_path / "a"), [f"{r.host}/tok/refresh:v1"], options=opts)
    before = len(issuer.tokens)
    # A token the registry will reject: signed correctly but already expired.
    issuer.expires_in = -120
    with RegistryClient(r.host, opts) as client:
        client.base_url()
        stale = issuer.issue(r.username, ["repository:tok/refresh:pull"])
        client.auth._tokens["repository:tok/refresh:pull"] = (stale, time.monotonic() + 1000)
        issuer.expires_in = 300
        assert client.list_tags("tok/refresh") == ["v1"]
    assert len(issuer.tokens) >= before + 2  # the stale one and the refreshed one


def test_errors_never_contain_the_secret(basic_registry: RunningRegistry, tmp_path: Path) -> None:
    secret = "Xy-very-secret-42"
    opts = RegistryOptions(credentials=Credentials("nobody", secret))
    with pytest.raises(RegistryError) as ei:
        push_image(make_image(tmp_path / "img"), [f"{basic_registry.host}/x/y:1"], options=opts)
    assert secret not in str(ei.value) and secret not in repr(ei.value)
    assert secret not in repr(opts) and secret not in str(opts.credentials)

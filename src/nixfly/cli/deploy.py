"""``nixfly deploy`` and ``nixfly secrets set|list|unset``: the Fly Machines side of nixfly."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from nixfly.cli.app import cli
from nixfly.errors import ConfigError, DeployError, UsageError
from nixfly.fly.api import MachinesAPI, NotFound, resolve_api_url, resolve_token
from nixfly.fly.deploy import (
    STRATEGIES,
    Deployer,
    DeploySettings,
    SecretsVersionStore,
    default_state_dir,
    desired_with_secrets,
    plan_deploy,
    require_digest_ref,
)
from nixfly.fly.secrets import list_secrets, parse_assignments, set_secrets, unset_secrets

_api_options = [
    click.option("--api-url", default=None, help="Machines API base URL (default $FLY_API_URL or Fly's)."),
    click.option("--access-token", default=None, help="Fly API token (default $FLY_API_TOKEN or ~/.fly)."),
]


def _with_api_options(f: Any) -> Any:
    for opt in reversed(_api_options):
        f = opt(f)
    return f


@dataclass(frozen=True)
class _Target:
    app: str
    api: MachinesAPI


def _connect(app: str, api_url: str | None, access_token: str | None) -> _Target:
    return _Target(app, MachinesAPI(resolve_token(access_token), resolve_api_url(api_url)))


def _progress(line: str) -> None:
    click.echo(f"==> {line}", err=True)


def _build_and_push(build_path: Path, repository: str, dry_run: bool) -> str:
    """Build the nixfly.toml and push it (deploy's one-step mode); the digest-pinned reference.

    With ``dry_run`` nothing is pushed: the reference is the digest the push would produce."""
    from nixfly.build.pipeline import build_image
    from nixfly.build.spec import load_spec
    from nixfly.image.convert import with_format
    from nixfly.registry.reference import parse_reference
    from nixfly.sinks import format_for, publish
    from nixfly.transports import RegistryLocation

    ref = parse_reference(repository)
    if ref.tag is not None or ref.digest is not None:
        raise UsageError(f"--push-to {repository}: give a repository without a tag; deploy tags it itself")
    _progress(f"building {build_path}")
    built = build_image(load_spec(build_path)).image
    fmt = format_for([RegistryLocation(ref.name)], built)
    digest = with_format(built, fmt).manifest_digest()
    if dry_run:
        return ref.pinned(digest)
    tag = f"{ref.name}:deployment-{digest.split(':', 1)[1][:12]}"
    _progress(f"pushing {tag}")
    _, written = publish(built, [RegistryLocation(tag)], fmt=fmt)
    return written[0].reference


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=Path("fly.toml"),
              show_default=True, help="The fly.toml to deploy.")  # fmt: skip
@click.option("--image", default=None, help="Digest-pinned image (NAME@sha256:...), e.g. from nixfly push.")
@click.option("--build", "build_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Build this nixfly.toml and push it first (default: ./nixfly.toml when no image is given).")
@click.option("--push-to", default=None, metavar="REPO",
              help="Where --build pushes (default registry.fly.io/APP); tagged deployment-<digest>.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=None, help="Override [deploy] strategy.")
@click.option("--app", "app_name", default=None, help="Override the app name from fly.toml.")
@click.option("--wait-timeout", type=float, default=None, help="Seconds to wait for each machine to be healthy.")
@click.option("--dry-run", is_flag=True, help="Print the plan (creates, updates with diffs, destroys); change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (or the JSON plan with --dry-run).")
@_with_api_options
def deploy(
    config_path: Path,
    image: str | None,
    build_path: Path | None,
    push_to: str | None,
    strategy: str | None,
    app_name: str | None,
    wait_timeout: float | None,
    dry_run: bool,
    as_json: bool,
    api_url: str | None,
    access_token: str | None,
) -> None:
    """Deploy a digest-pinned image to the app's Fly Machines with the fly.toml deploy strategy."""
    from nixfly.fly.flytoml import load_fly_toml
    from nixfly.fly.machineconfig import machine_config, mount_initial_size_gb, release_command_config

    if not config_path.is_file():
        raise ConfigError(f"{config_path}: no such file (pass --config PATH to your fly.toml)")
    cfg = load_fly_toml(config_path)
    app = app_name or cfg.app
    if image is None and build_path is None:
        image = cfg.build.image if cfg.build is not None else None
        if image is None and Path("nixfly.toml").is_file():
            build_path = Path("nixfly.toml")
    if image is None and build_path is not None:
        image = _build_and_push(build_path, push_to or f"registry.fly.io/{app}", dry_run)
    if image is None:
        raise UsageError("no image to deploy: pass --image NAME@sha256:... (from nixfly push) or --build nixfly.toml")
    image = require_digest_ref(image)
    state_dir = default_state_dir()
    target = _connect(app, api_url, access_token)
    with target.api as api:
        try:
            machines = api.list_machines(app)
        except NotFound:
            raise DeployError(
                f"app {app} does not exist on Fly.io; create it first (flyctl apps create {app})"
            ) from None
        guests: dict[str, Any] = {}
        for m in machines:
            if isinstance(m.config.get("guest"), dict):
                guests.setdefault(m.process_group, m.config["guest"])
        desired = {g: machine_config(cfg, g, image, current_guest=guests.get(g)) for g in cfg.process_groups()}
        secrets_version = SecretsVersionStore(state_dir, app).get()
        deploy_cfg = cfg.deploy
        argv = deploy_cfg.release_command_argv()
        settings = DeploySettings(
            app=app,
            strategy=strategy or deploy_cfg.strategy,  # type: ignore[arg-type]
            max_unavailable=deploy_cfg.max_unavailable,
            wait_timeout=wait_timeout if wait_timeout is not None else deploy_cfg.wait_timeout,
            release_command=tuple(argv) if argv else None,
            region=cfg.primary_region or "ams",
            min_secrets_version=secrets_version,
            release_config=release_command_config(cfg, image),
            volume_sizes=tuple((m.source, mount_initial_size_gb(m)) for m in cfg.mounts),
        )
        plan = plan_deploy(machines, desired_with_secrets(desired, secrets_version), settings)
        if dry_run:
            if as_json:
                click.echo(json.dumps({"dry_run": True, **plan.to_json()}, indent=2))
            else:
                for line in plan.render():
                    click.echo(line)
            return
        result = Deployer(api, plan, settings, state_dir=state_dir, progress=_progress).run()
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(
            f"deployed {result.image} to {app}: {len(result.created)} created, {len(result.updated)} updated, "
            f"{len(result.destroyed)} destroyed"
        )


@cli.group()
def secrets() -> None:
    """Manage the app's secrets (values are never printed)."""


def _app_from(app_name: str | None, config_path: Path) -> str:
    if app_name:
        return app_name
    if config_path.is_file():
        from nixfly.fly.flytoml import load_fly_toml

        return load_fly_toml(config_path).app
    raise UsageError("which app? pass --app NAME or run next to a fly.toml (--config PATH)")


_app_option = click.option("--app", "app_name", default=None, help="App name (default: from fly.toml).")
_config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=Path("fly.toml"), show_default=True
)


@secrets.command("set")
@click.argument("assignments", nargs=-1)
@_app_option
@_config_option
@_with_api_options
def secrets_set(
    assignments: tuple[str, ...], app_name: str | None, config_path: Path, api_url: str | None, access_token: str | None
) -> None:
    """Set secrets from NAME=VALUE arguments, or from NAME=VALUE lines on stdin (no arguments or "-")."""
    args = [a for a in assignments if a != "-"]
    stdin_text = sys.stdin.read() if (not args or "-" in assignments) else None
    values = parse_assignments(args, stdin_text)
    app = _app_from(app_name, config_path)
    target = _connect(app, api_url, access_token)
    with target.api as api:
        version = set_secrets(api, app, values, default_state_dir())
    click.echo(
        f"set {', '.join(sorted(values))} on {app} (secrets version {version}); "
        "nixfly deploy rolls the machines onto it"
    )


@secrets.command("unset")
@click.argument("names", nargs=-1, required=True)
@_app_option
@_config_option
@_with_api_options
def secrets_unset(
    names: tuple[str, ...], app_name: str | None, config_path: Path, api_url: str | None, access_token: str | None
) -> None:
    """Remove the named secrets."""
    app = _app_from(app_name, config_path)
    target = _connect(app, api_url, access_token)
    with target.api as api:
        version = unset_secrets(api, app, names, default_state_dir())
    click.echo(f"unset {', '.join(names)} on {app} (secrets version {version})")


@secrets.command("list")
@_app_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, digest, updated_at}.")
@_with_api_options
def secrets_list(
    app_name: str | None, config_path: Path, as_json: bool, api_url: str | None, access_token: str | None
) -> None:
    """List secret names and digests (never values)."""
    app = _app_from(app_name, config_path)
    target = _connect(app, api_url, access_token)
    with target.api as api:
        items = list_secrets(api, app)
    if as_json:
        click.echo(json.dumps([{"name": s.name, "digest": s.digest, "updated_at": s.updated_at} for s in items]))
        return
    for s in items:
        click.echo(f"{s.name}\t{s.digest}\t{s.updated_at}")

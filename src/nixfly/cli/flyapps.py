"""``nixfly apps create``, ``nixfly status``, ``nixfly releases`` and ``nixfly rollback``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from nixfly.cli.app import cli
from nixfly.cli.deploy import (
    _app_option,
    _config_option,
    app_from,
    deploy_options,
    print_outcome,
    progress,
    run_reporting_json,
    with_api_options,
)
from nixfly.fly.service import Connection, DeployRequest


@cli.group()
def apps() -> None:
    """Manage Fly apps through the Machines API."""


@apps.command("create")
@click.argument("name")
@click.option("-o", "--org", default="personal", show_default=True, help="Organization slug.")
@with_api_options
def apps_create(name: str, org: str, api_url: str | None, access_token: str | None, timeout: float) -> None:
    """Create the app NAME (POST /apps)."""
    from nixfly.fly.service import create_app

    create_app(Connection(api_url, access_token, timeout), name, org)
    click.echo(f"created app {name} in org {org}")


@cli.command()
@_app_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_api_options
def status(
    app_name: str | None,
    config_path: Path,
    as_json: bool,
    api_url: str | None,
    access_token: str | None,
    timeout: float,
) -> None:
    """Machines per process group: region, state, image, checks, secrets version, and whether each runs the
    last release."""
    from nixfly.fly.service import status as status_service

    app = app_from(app_name, config_path)
    st = status_service(Connection(api_url, access_token, timeout), app)
    if as_json:
        click.echo(json.dumps(st.to_json(), indent=2))
        return
    last = st.last_release
    click.echo(f"app {app}: " + (f"release v{last.version} {last.image} ({last.at})" if last else "no release yet"))
    if last is not None and st.machines:
        on = sum(m.matches_last_release for m in st.machines)
        click.echo(f"all {on} machines run the last release, v{last.version}" if on == len(st.machines) else
                   f"{on} of {len(st.machines)} machines run the last release, v{last.version}")  # fmt: skip
    if st.ips:
        click.echo("addresses: " + ", ".join(f"{i['ip']} ({i['type']})" for i in st.ips))
    else:
        click.echo("addresses: none (not reachable from the internet)")
    group = None
    for m in st.machines:
        if m.group != group:
            group = m.group
            click.echo(f"[{group}]")
        checks = ", ".join(f"{k}={v}" for k, v in sorted(m.checks.items())) or "no checks"
        mark = ("current" if m.matches_last_release else "NOT the last release") if last else ""
        secrets = f"secrets v{m.secrets_version}" if m.secrets_version else "no secrets version"
        click.echo(f"  {m.id}  {m.region}  {m.state}  {m.image}  {checks}  {secrets}  {mark}")


@cli.command()
@_app_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (newest first).")
@click.option("--diff", "with_diff", is_flag=True, help="Under each release, what it changed against the one before.")
@with_api_options
def releases(
    app_name: str | None, config_path: Path, as_json: bool, with_diff: bool, api_url: str | None,
    access_token: str | None, timeout: float,
) -> None:  # fmt: skip
    """Every deploy nixfly made to the app, newest first (kept in the machines' metadata)."""
    from nixfly.fly.service import list_releases

    app = app_from(app_name, config_path)
    items = list_releases(Connection(api_url, access_token, timeout), app)
    diffs = {}
    if with_diff:
        from nixfly.diff.releases import release_diffs

        diffs = {d.release.version: d for d in release_diffs(items)}
    if as_json:
        click.echo(json.dumps([{**r.to_json(), **({"diff": diffs[r.version].to_json() if r.version in diffs else None}
                                                  if with_diff else {})} for r in items], indent=2))  # fmt: skip
        return
    for r in items:
        click.echo(f"v{r.version}\t{r.at}\t{r.command}\t{r.strategy}\t{r.outcome}\t{r.image}")
        d = diffs.get(r.version)
        if d is not None:
            click.echo(f"  vs v{d.before.version}: " + (d.diff.summary() if d.diff else f"cannot tell ({d.error})"))


@cli.command()
@click.option("--to", "to", default=None, metavar="RELEASE|DIGEST",
              help="The release to go back to (v3, 3, sha256:..., NAME@sha256:...); default the previous.")  # fmt: skip
@deploy_options
def rollback(
    to: str | None, config_path: Path, app_name: str | None, strategy: str | None, wait_timeout: float | None,
    dry_run: bool, as_json: bool, allow_unknown_keys: bool, rollback_on_interrupt: bool, api_url: str | None,
    access_token: str | None, timeout: float,
) -> None:  # fmt: skip
    """Redeploy the previous (or the named) release with its strategy and fly.toml's checks."""
    from nixfly.fly.service import rollback as rollback_service

    req = DeployRequest(
        config_path=config_path, strategy=strategy, app=app_name, wait_timeout=wait_timeout, dry_run=dry_run,
        allow_unknown_keys=allow_unknown_keys, rollback_on_interrupt=rollback_on_interrupt,
        connection=Connection(api_url, access_token, timeout),
    )  # fmt: skip
    outcome = run_reporting_json(as_json, app_name, lambda: rollback_service(req, to, progress=progress))
    print_outcome(outcome, as_json, dry_run)

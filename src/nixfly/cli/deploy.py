"""``nixfly deploy`` and ``nixfly secrets set|list|unset``: flags in, the deploy service, lines out.

The deploy itself (image, guests, secrets, plan, strategies, release log) is :mod:`nixfly.fly.service`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from nixfly.cli.app import cli
from nixfly.cli.common import DURATION, parse_kv
from nixfly.errors import NixflyError, UsageError, redact
from nixfly.fly.plan import STRATEGIES
from nixfly.fly.secrets import list_secrets, parse_assignments, set_secrets, unset_secrets
from nixfly.fly.service import Connection, DeployOutcome, DeployRequest


def _timeout_check(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value <= 0:
        raise click.BadParameter("must be more than 0", ctx=ctx, param=param)
    return value


_api_options = [
    click.option("--api-url", default=None, help="Machines API base URL (default $FLY_API_URL or Fly's)."),
    click.option("-t", "--access-token", default=None, help="Fly API token (default $FLY_API_TOKEN or ~/.fly)."),
    click.option(
        "--timeout",
        type=DURATION,
        default="30s",
        show_default=True,
        callback=_timeout_check,
        help="How long one Fly API call may take, retries included (e.g. 90s, 2m).",
    ),
]
_app_option = click.option("-a", "--app", "app_name", default=None, help="App name (default: from fly.toml).")
_config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path), default=Path("fly.toml"), show_default=True,
    help="The app's fly.toml.",
)  # fmt: skip


def with_api_options(f: Any) -> Any:
    for opt in reversed(_api_options):
        f = opt(f)
    return f


def progress(line: str) -> None:
    click.echo(f"==> {redact(line)}", err=True)  # lines may quote what the API said: no secret of ours


def app_from(app_name: str | None, config_path: Path) -> str:
    """The app named by -a, else by the fly.toml at -c; UsageError without either."""
    if app_name:
        return app_name
    from nixfly.fsutil import is_regular_file  # never raises (a 20,000-character --config is not a file)

    if is_regular_file(config_path):
        from nixfly.fly.flytoml import load_fly_toml

        return load_fly_toml(config_path, allow_unknown_keys=True, warn=lambda _m: None).app_name()
    raise UsageError("which app? pass -a/--app NAME or run next to a fly.toml (-c/--config PATH)")


_SHARED_DEPLOY_OPTIONS = [
    _config_option,
    _app_option,
    click.option("--strategy", type=click.Choice(STRATEGIES), default=None, help="Override [deploy] strategy."),
    click.option("--wait-timeout", type=DURATION, default=None,
                 help="How long each machine may take to be healthy (300, 10m; default: fly.toml's)."),
    click.option("--dry-run", is_flag=True, help="Print the plan (every step, with diffs); change nothing."),
    click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (or the JSON plan with --dry-run)."),
    click.option("--allow-unknown-keys", is_flag=True, help="Warn about unknown fly.toml keys instead of failing."),
    click.option("--rollback-on-interrupt", is_flag=True, help="On Ctrl-C, restore the machines already updated."),
]


def deploy_options(f: Any) -> Any:
    """The options deploy and rollback share."""
    for opt in reversed(_SHARED_DEPLOY_OPTIONS):
        f = opt(f)
    return with_api_options(f)


def print_outcome(outcome: DeployOutcome, as_json: bool, dry_run: bool) -> None:
    if dry_run:
        changes = _image_changes(outcome)
        if as_json:
            click.echo(json.dumps({"dry_run": True, **outcome.plan.to_json(), "image_changes": changes}, indent=2))
        else:
            for line in outcome.plan.render():
                click.echo(line)
            for c in changes:
                click.echo(f"image change from {c['running']}: {c['summary'] or 'cannot tell (' + c['error'] + ')'}")
        return
    if as_json:
        click.echo(json.dumps(outcome.to_json(), indent=2))
    elif outcome.result is None:
        click.echo(f"no change: {outcome.app} already runs {outcome.image} ({len(outcome.plan.unchanged)} machines)")
    else:
        r = outcome.result
        release = f" (release v{outcome.release.version})" if outcome.release else ""
        click.echo(
            f"deployed {r.image} to {outcome.app}{release}: {len(r.created)} created, {len(r.updated)} updated, "
            f"{len(r.destroyed)} destroyed"
        )


def _image_changes(outcome: DeployOutcome) -> list[dict[str, Any]]:
    """What the deploy changes in Nix terms, per image the machines run now (see ``nixfly diff``)."""
    from nixfly.diff.releases import plan_diffs

    return [{"running": image, "summary": d.summary() if d else None, "diff": d.to_json() if d else None,
             "error": err} for image, d, err in plan_diffs(outcome.plan)]  # fmt: skip


def run_reporting_json(as_json: bool, app: str | None, work: Any) -> Any:
    """Run ``work()``; with --json a failure also prints ``{"error": ...}`` on stdout before the usual line."""
    try:
        return work()
    except NixflyError as e:
        if as_json:
            click.echo(json.dumps({"error": str(e), "app": app, "exit_code": e.exit_code}, indent=2))
        raise
    except KeyboardInterrupt:
        if as_json:
            click.echo(json.dumps({"error": "interrupted", "app": app, "exit_code": 130}, indent=2))
        raise


def build_and_push(
    build_path: Path, repository: str, dry_run: bool, progress: Callable[[str], None], *, label: str | None = None
) -> str:
    """Build the nixfly.toml and push it (deploy's one-step mode) as ``build --push`` would — layer index and
    SBOM included — under the tag ``label``, else deployment-<digest>; the digest-pinned reference.

    With ``dry_run`` nothing is pushed: the reference is the digest the push would produce."""
    from nixfly.build.spec import load_spec
    from nixfly.registry.reference import parse_reference
    from nixfly.services.ship import ShipRequest, ship
    from nixfly.transports import RegistryLocation

    ref = parse_reference(repository)
    if ref.tag is not None or ref.digest is not None:
        raise UsageError(f"--push-to {repository}: give a repository without a tag; deploy tags it itself")
    progress(f"building {build_path}" if dry_run else f"building {build_path} and pushing it to {ref.name}")
    dest = RegistryLocation(f"{ref.name}:{label}" if label else ref.name)
    outcome = ship(ShipRequest(load_spec(build_path), (dest,), digest_tag=None if label else "deployment-",
                               dry_run=dry_run))  # fmt: skip
    assert outcome.pinned is not None
    return outcome.pinned


@cli.command()
@click.option(
    "-i",
    "--image",
    default=None,
    help="Image to deploy: NAME@sha256:... (from nixfly push), or a tag, resolved to its digest once.",
)
@click.option(
    "--build",
    "build_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Build this nixfly.toml and push it first (default: ./nixfly.toml when no image is given).",
)
@click.option(
    "--push-to",
    default=None,
    metavar="REPO",
    help="Where --build pushes (default registry.fly.io/APP); tagged deployment-<digest>.",
)
@click.option(
    "--ha",
    type=click.BOOL,
    default=True,
    show_default=True,
    help="First deploy of a service: two machines per group (--ha=false for one).",
)
@click.option("--create-app", is_flag=True, help="Create the app (POST /apps) if it does not exist.")
@click.option("--org", default="personal", show_default=True, help="Organization for --create-app.")
@click.option("--lease-timeout", type=DURATION, default="13s", show_default=True,
              help="How long each machine lease lasts unless refreshed (flyctl's default).")  # fmt: skip
@click.option("--max-unavailable", type=float, default=None,
              help="Machines updated at once after the first: a count, or a fraction (0-1) of the group.")  # fmt: skip
@click.option("--detach", is_flag=True, help="Send the changes and return without waiting for machines to be healthy.")
@click.option("--regions", multiple=True, metavar="CODE[,CODE]", help="Deploy only to machines in these regions.")
@click.option("--only-machines", multiple=True, metavar="ID[,ID]", help="Deploy only to these machines.")
@click.option("--process-groups", multiple=True, metavar="NAME[,NAME]", help="Deploy only these process groups.")
@click.option("--skip-release-command", is_flag=True, help="Do not run [deploy] release_command.")
@click.option("-e", "--env", "env_pairs", multiple=True, metavar="KEY=VALUE", help="Set an env variable (over [env]).")
@click.option("--image-label", default=None, metavar="TAG",
              help="Tag for the image --build pushes (default deployment-<digest>).")  # fmt: skip
@click.option("--no-public-ips", is_flag=True, help="Allocate no public IP address on a first deploy.")
@click.option("--flycast", is_flag=True, help="On a first deploy, allocate a private (flycast) IPv6 instead.")
@click.option("--start-stopped", is_flag=True,
              help="Start and check machines that were stopped (default: update, leave stopped).")  # fmt: skip
@click.option("--smoke-checks/--no-smoke-checks", default=True, show_default=True,
              help="A machine without checks must run 10s without exiting before it counts as healthy.")  # fmt: skip
@click.option("--smoke-period", type=DURATION, default=None, help="How long a smoke check lasts (default 10s).")
@click.option("--creds", default=None, metavar="USER:PASS", help="Credentials for the image's registry.")
@click.option("--no-image-check", is_flag=True,
              help="Do not read the image from its registry first (a registry this host cannot reach).")  # fmt: skip
@click.option("--rehearse", is_flag=True,
              help="First run the image here as its machines would, with fly.toml's checks (nixfly run -c); "
              "deploy only if that passes.")  # fmt: skip
@deploy_options
def deploy(
    image: str | None, build_path: Path | None, push_to: str | None, ha: bool, create_app: bool, org: str,
    lease_timeout: float, max_unavailable: float | None, detach: bool, regions: tuple[str, ...],
    only_machines: tuple[str, ...], process_groups: tuple[str, ...], skip_release_command: bool,
    env_pairs: tuple[str, ...], image_label: str | None, no_public_ips: bool, flycast: bool, start_stopped: bool,
    smoke_checks: bool, smoke_period: float | None, creds: str | None, no_image_check: bool,
    config_path: Path, app_name: str | None, strategy: str | None, wait_timeout: float | None, dry_run: bool,
    as_json: bool, allow_unknown_keys: bool, rollback_on_interrupt: bool, api_url: str | None,
    access_token: str | None, timeout: float, rehearse: bool = False,
) -> None:  # fmt: skip
    """Deploy an image to the app's Fly Machines with the fly.toml deploy strategy."""
    import functools

    from nixfly.fly.service import deploy as deploy_service

    if max_unavailable is not None and (max_unavailable <= 0 or max_unavailable != max_unavailable):
        raise UsageError("--max-unavailable must be more than 0")
    if lease_timeout < 1:
        raise UsageError("--lease-timeout must be at least 1s")
    if no_public_ips and flycast:
        raise UsageError("--no-public-ips and --flycast contradict each other; pass one")
    env = list(parse_kv(env_pairs, "-e").items())
    registry = None
    if creds:
        from nixfly.registry.auth import parse_creds
        from nixfly.registry.options import RegistryOptions

        registry = RegistryOptions(credentials=parse_creds(creds, "--creds"))
    publish = functools.partial(build_and_push, label=image_label)
    if rehearse:
        from nixfly.cli.rehearse import rehearse_before_deploy

        rehearsed, publish = run_reporting_json(as_json, app_name, lambda: rehearse_before_deploy(
            config_path, image, build_path, publish, allow_unknown_keys))  # fmt: skip
        image = rehearsed or image

    req = DeployRequest(
        config_path=config_path, image=image, build_path=build_path, push_to=push_to, strategy=strategy,
        app=app_name, wait_timeout=wait_timeout, dry_run=dry_run, ha=ha, create_app=create_app, org=org,
        allow_unknown_keys=allow_unknown_keys, rollback_on_interrupt=rollback_on_interrupt,
        connection=Connection(api_url, access_token, timeout),
        publish=publish,
        lease_timeout=max(1, round(lease_timeout)), max_unavailable=max_unavailable, detach=detach,
        regions=_listed(regions), only_machines=_listed(only_machines), process_groups=_listed(process_groups),
        skip_release_command=skip_release_command, env=tuple(env),
        ips="none" if no_public_ips else "private" if flycast else "public", start_stopped=start_stopped,
        smoke_period=0.0 if not smoke_checks else smoke_period, registry=registry, check_image=not no_image_check,
    )  # fmt: skip
    outcome = run_reporting_json(as_json, app_name, lambda: deploy_service(req, progress=progress))
    print_outcome(outcome, as_json, dry_run)


def _listed(values: tuple[str, ...]) -> tuple[str, ...]:
    """Flag values given several times or comma-separated, as flyctl takes them."""
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


@cli.group()
def secrets() -> None:
    """Manage the app's secrets (values are never printed)."""


@secrets.command("set")
@click.argument("assignments", nargs=-1)
@_app_option
@_config_option
@click.option("--stage", is_flag=True, help="Only store the secrets; the next deploy rolls the machines.")
@click.option("--wait-timeout", type=DURATION, default=300.0, show_default=True,
              help="Seconds to wait for each restarted machine.")  # fmt: skip
@with_api_options
def secrets_set(
    assignments: tuple[str, ...], app_name: str | None, config_path: Path, stage: bool, wait_timeout: float,
    api_url: str | None, access_token: str | None, timeout: float,
) -> None:  # fmt: skip
    """Set secrets from NAME=VALUE arguments, or from NAME=VALUE lines on stdin (no arguments or "-"), then
    restart the machines onto them (one at a time, each leased) unless --stage."""
    from nixfly.fly.service import roll_secrets
    from nixfly.fly.state import default_state_dir

    args = [a for a in assignments if a != "-"]
    # As bytes: a value that is not UTF-8 is refused by name in one line, not a decoding crash.
    stdin_text = None
    if not args or "-" in assignments:
        raw = getattr(sys.stdin, "buffer", None)  # a text-only stdin (an embedding program's) is read as text
        stdin_text = raw.read().decode("utf-8", "surrogateescape") if raw is not None else sys.stdin.read()
    values = parse_assignments(args, stdin_text)
    app = app_from(app_name, config_path)
    with Connection(api_url, access_token, timeout).open() as api:
        version = set_secrets(api, app, values, default_state_dir())
        names = ", ".join(sorted(values))
        if stage:
            click.echo(f"set {names} on {app} (secrets version {version}); nixfly deploy rolls the machines onto it")
            return
        result = roll_secrets(api, app, version, wait_timeout=wait_timeout, progress=progress)
    rolled = len(result.updated) if result else 0
    click.echo(f"set {names} on {app} (secrets version {version}); restarted {rolled} machine(s) onto it")


@secrets.command("unset")
@click.argument("names", nargs=-1, required=True)
@_app_option
@_config_option
@click.option("--stage", is_flag=True, help="Only remove them; the next deploy rolls the machines.")
@click.option("--wait-timeout", type=DURATION, default=300.0, show_default=True,
              help="Seconds to wait for each restarted machine.")  # fmt: skip
@with_api_options
def secrets_unset(
    names: tuple[str, ...], app_name: str | None, config_path: Path, stage: bool, wait_timeout: float,
    api_url: str | None, access_token: str | None, timeout: float,
) -> None:  # fmt: skip
    """Remove the named secrets, then restart the machines without them unless --stage."""
    from nixfly.fly.service import roll_secrets
    from nixfly.fly.state import default_state_dir

    app = app_from(app_name, config_path)
    with Connection(api_url, access_token, timeout).open() as api:
        version = unset_secrets(api, app, names, default_state_dir())
        result = None if stage else roll_secrets(api, app, version, wait_timeout=wait_timeout, progress=progress)
    rolled = f"; restarted {len(result.updated)} machine(s)" if result else ""
    click.echo(f"unset {', '.join(names)} on {app} (secrets version {version}){rolled}")


@secrets.command("list")
@_app_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, digest, updated_at}.")
@with_api_options
def secrets_list(
    app_name: str | None,
    config_path: Path,
    as_json: bool,
    api_url: str | None,
    access_token: str | None,
    timeout: float,
) -> None:
    """List secret names and digests (never values)."""
    app = app_from(app_name, config_path)
    with Connection(api_url, access_token, timeout).open() as api:
        items = list_secrets(api, app)
    if as_json:
        click.echo(json.dumps([{"name": s.name, "digest": s.digest, "updated_at": s.updated_at} for s in items]))
        return
    for s in items:
        click.echo(f"{s.name}\t{s.digest}\t{s.updated_at}")

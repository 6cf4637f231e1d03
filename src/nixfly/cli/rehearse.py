"""The flags and output of a rehearsal (``nixfly run -c fly.toml IMAGE`` and ``nixfly deploy --rehearse``).

Not a command of its own: ``cli/run.py`` and ``cli/deploy.py`` hand their flags here. The work is
:mod:`nixfly.run.rehearse`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from nixfly.cli.common import DURATION, parse_kv
from nixfly.errors import UsageError
from nixfly.image import Image
from nixfly.transports import Location, RegistryLocation

REHEARSAL_OPTIONS = [
    click.option("-c", "--config", "fly_config", type=click.Path(path_type=Path), default=None,
                 help="Rehearse a Fly deploy: run IMAGE as this fly.toml's machines would run it, with its checks."),
    click.option("--build", "build_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
                 help="With -c: build this nixfly.toml (no push) and rehearse the result instead of IMAGE."),
    click.option("--group", "groups", multiple=True, metavar="NAME",
                 help="With -c: the process group to run (default: the one with the services)."),
    click.option("--all-groups", is_flag=True, help="With -c: run every process group, each in its own container."),
    click.option("--secret", "secret_args", multiple=True, metavar="NAME[=VALUE]",
                 help="With -c: a secret as the machines would have it (NAME alone: from this environment)."),
    click.option("--secrets-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                 help="With -c: secrets from a dotenv file (NAME=VALUE lines)."),
    click.option("--require-secrets", is_flag=True,
                 help="With -c: a secret the app needs but that was not given here is an error."),
    click.option("--for", "watch_for", type=DURATION, default=None, metavar="DURATION",
                 help="With -c: keep watching this long (e.g. 30s) before the verdict."),
    click.option("--wait-timeout", "rehearse_wait", type=DURATION, default=None, metavar="DURATION",
                 help="With -c: give up on the checks after this long (default: grace period + two intervals)."),
    click.option("--json", "as_json", is_flag=True, help="With -c: the verdict and every check's history as JSON."),
    click.option("--region", default=None, help="With -c: FLY_REGION (default: primary_region)."),
    click.option("--offline", is_flag=True,
                 help="With -c: do not ask Fly which secrets the app has (asked when a Fly token is found)."),
]  # fmt: skip


def rehearsal_options(f: Any) -> Any:
    for opt in reversed(REHEARSAL_OPTIONS):
        f = opt(f)
    return f


MAX_SECRETS_FILE = 1 << 20


def local_secrets(secret_args: tuple[str, ...], secrets_file: Path | None) -> dict[str, str]:
    """Secrets from --secrets-file, then --secret NAME=VALUE (NAME alone: from the environment)."""
    from nixfly.run.flyplan import parse_dotenv

    out: dict[str, str] = {}
    if secrets_file is not None:
        from nixfly.fsutil import read_text_file

        try:  # a regular file, never a FIFO (it would block) or /dev/zero (it never ends)
            text = read_text_file(secrets_file, MAX_SECRETS_FILE, f"--secrets-file {secrets_file}", UsageError)
        except OSError as e:
            raise UsageError(f"--secrets-file {secrets_file}: cannot read: {e.strerror}") from None
        out.update(parse_dotenv(text, str(secrets_file)))
    for item in secret_args:
        name, sep, value = item.partition("=")
        if not name or not name.replace("_", "a").isalnum():
            raise UsageError(f"--secret {name or '?'}: expected NAME=VALUE or NAME")
        if not sep:
            if name not in os.environ:
                raise UsageError(f"--secret {name}: no value given and ${name} is not set")
            value = os.environ[name]
        out[name] = value
    return out


def volume_dirs(volumes: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for v in volumes:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--volume {v!r}: with -c, give NAME=DIR (a [[mounts]] source and a local directory)")
        out[name] = Path(path)
    return out


def image_ref_for(loc: Location | None, image: Image) -> Callable[[str], str]:
    """The reference the machine configs name: a registry image pinned to the digest that ran; a local one
    as deploy --build would push it (registry.fly.io/APP, in the format that registry gets)."""

    def ref(app: str) -> str:
        if loc is not None and loc.ref is not None:
            return loc.ref.pinned(image.manifest_digest())
        from nixfly.image.convert import with_format
        from nixfly.sinks import format_for

        dest = RegistryLocation(f"registry.fly.io/{app}")
        return f"registry.fly.io/{app}@{with_format(image, format_for([dest], image)).manifest_digest()}"

    return ref


def _stderr(line: str) -> None:
    click.echo(line, err=True)


def _warn(line: str) -> None:
    _stderr(f"nixfly: warning: {line}")


def fly_secret_names(app: str) -> list[str]:
    """The names of the app's secrets on Fly (never values), when a Fly token is found; else none. A
    failure is a warning: the rehearsal then checks only the secrets fly.toml names."""
    from nixfly.errors import ConfigError, NixflyError
    from nixfly.fly.api import resolve_token
    from nixfly.fly.secrets import list_secrets
    from nixfly.fly.service import Connection

    try:
        resolve_token(None)
    except ConfigError:
        return []
    try:
        with Connection().open() as api:
            return [s.name for s in list_secrets(api, app)]
    except NixflyError as e:
        _warn(f"cannot list {app}'s secrets on Fly ({e}); only the secrets fly.toml names are checked")
        return []


def rehearse_build(image: str | None, *, build_path: Path, **flags: Any) -> int:
    """``nixfly run -c fly.toml --build nixfly.toml``: build (nothing is pushed), then rehearse the result."""
    from nixfly.build.spec import load_spec
    from nixfly.services.ship import build_only

    if image is not None:
        raise UsageError(f"give IMAGE or --build {build_path}, not both")
    _stderr(f"==> building {build_path}")
    return run_rehearsal(build_only(load_spec(build_path)).image, None, **flags)


def run_rehearsal(
    image: Image,
    loc: Location | None,
    *,
    fly_config: Path,
    groups: tuple[str, ...],
    all_groups: bool,
    secret_args: tuple[str, ...],
    secrets_file: Path | None,
    require_secrets: bool,
    watch_for: float | None,
    rehearse_wait: float | None,
    as_json: bool,
    region: str | None,
    offline: bool,
    volumes: tuple[str, ...],
    env: tuple[str, ...],
    runtime: str,
    cache_dir: Path | None,
) -> int:
    """Plan, rehearse, print; 0 when the rehearsal passed, 1 when it found a problem (named above)."""
    from nixfly.run.rehearse import RehearsalOptions, RehearsalRequest, plan_rehearsal, rehearse

    parse_kv(env, "-e")  # with -c, every -e is KEY=VALUE (the container gets them as given)
    if all_groups and groups:
        raise UsageError("--group and --all-groups: give one of them")
    req = RehearsalRequest(
        config_path=fly_config, image_ref=image_ref_for(loc, image), groups=groups, all_groups=all_groups,
        secrets=local_secrets(secret_args, secrets_file), require_secrets=require_secrets,
        volumes=volume_dirs(volumes), region=region, extra_env=env, environ=dict(os.environ),
        fly_secret_names=None if offline else fly_secret_names,
    )  # fmt: skip
    plans = plan_rehearsal(req, _warn)
    opts = RehearsalOptions(
        runtime=runtime, cache_dir=cache_dir, watch_for=watch_for or 0.0, wait_timeout=rehearse_wait,
        log=_stderr,
    )  # fmt: skip
    result = rehearse(image, plans, opts)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        for m in result.machines:
            addrs = ", ".join(x.address for x in m.listeners) or "nothing"
            click.echo(f"{m.group}: {len(m.exits)} exit(s), {m.restarts} restart(s); listening on {addrs}")
            for c in m.checks:
                last = c.history[-1].output if c.history else "never ran"
                click.echo(f"  check {c.spec.name}: {c.status} ({last})")
    problems = [p for m in result.machines for p in m.problems]
    for p in problems:
        _stderr(f"nixfly: {p}")
    if result.interrupted:
        _stderr("nixfly: rehearsal interrupted")
        return 130
    if problems:
        _stderr(f"nixfly: rehearsal failed: {len(problems)} problem(s); this deploy would not be healthy on Fly")
        return 1
    _stderr("nixfly: rehearsal passed")
    return 0


# ---------------------------------------------------------------------------------------------------------
# nixfly deploy --rehearse

Publish = Callable[[Path, str, bool, Callable[[str], None]], str]


def _rehearse_or_stop(
    image: Image, image_ref: Callable[[str], str], config_path: Path, allow_unknown_keys: bool
) -> None:
    """Rehearse every process group of the deploy; RehearsalError (after the findings) if any fails."""
    from nixfly.run.rehearse import RehearsalError, RehearsalOptions, RehearsalRequest, plan_rehearsal, rehearse

    req = RehearsalRequest(
        config_path=config_path, image_ref=image_ref, all_groups=True, environ=dict(os.environ),
        fly_secret_names=fly_secret_names, allow_unknown_keys=allow_unknown_keys,
    )  # fmt: skip
    result = rehearse(image, plan_rehearsal(req, _warn), RehearsalOptions(log=_stderr))
    problems = [p for m in result.machines for p in m.problems]
    for p in problems:
        _stderr(f"nixfly: {p}")
    if result.interrupted:
        raise KeyboardInterrupt
    if problems:
        raise RehearsalError(f"rehearsal failed: {len(problems)} problem(s); nothing was deployed")
    _stderr("==> rehearsal passed; deploying")


def rehearse_before_deploy(
    config_path: Path, image: str | None, build_path: Path | None, publish: Publish, allow_unknown_keys: bool
) -> tuple[str | None, Publish]:
    """``deploy --rehearse``: rehearse what deploy is about to deploy. An image given (or fly.toml's [build]
    image) is rehearsed now and the digest that passed is what gets deployed; a build is rehearsed between
    building and pushing. Returns the (image, publish) deploy continues with."""
    from nixfly.registry.options import RegistryOptions
    from nixfly.sources import open_image
    from nixfly.transports import parse_location

    if image is None and build_path is None:
        from nixfly.fly.service import load_config

        cfg = load_config(config_path, allow_unknown_keys=allow_unknown_keys)
        if cfg.build is not None and cfg.build.image:
            image = cfg.build.image
    if image is not None:
        loc = parse_location(image)
        if loc.ref is None:
            raise UsageError(f"--image {image}: deploy takes a registry reference")
        img = open_image(loc, RegistryOptions())
        ref = image_ref_for(loc, img)
        _rehearse_or_stop(img, ref, config_path, allow_unknown_keys)
        return ref(""), publish

    def rehearsed_publish(path: Path, repository: str, dry_run: bool, progress: Callable[[str], None]) -> str:
        from nixfly.build.spec import load_spec
        from nixfly.image.convert import with_format
        from nixfly.services.ship import build_only
        from nixfly.sinks import format_for

        progress(f"building {path} to rehearse it")
        built = build_only(load_spec(path)).image
        dest = RegistryLocation(repository)

        def ref(_app: str) -> str:
            return f"{repository}@{with_format(built, format_for([dest], built)).manifest_digest()}"

        _rehearse_or_stop(built, ref, config_path, allow_unknown_keys)
        return publish(path, repository, dry_run, progress)

    return None, rehearsed_publish

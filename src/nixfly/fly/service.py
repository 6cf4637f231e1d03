"""The deploy service: everything between "the user ran nixfly deploy" and the Deployer, so the CLI
only parses flags and prints.

:func:`deploy` reads fly.toml (refusing unknown keys before any request is sent), finds the image (built
and pushed, given, or ``[build] image``; a tag is resolved to its digest once), connects to the Machines
API, reads the app (machines, secrets, volumes, and on a first deploy its addresses: nothing is written to
learn anything), assembles one MachineConfig per process group (keeping each group's current guest when
fly.toml has no [[vm]]), plans, checks the image in its registry, and — unless it is a dry run or nothing
changed — carries the plan out under the app's deploy lock (one deploy per app at a time from one state
directory), the release riding in the metadata of every machine it creates or updates.
:func:`rollback`, :func:`status`, :func:`list_releases`, :func:`roll_secrets` and :func:`create_app` are
the other Fly commands' services.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixfly.errors import ConfigError, DeployError, UsageError
from nixfly.fly.api import (
    DEFAULT_TIMEOUT,
    JSON,
    Machine,
    MachinesAPI,
    NotFound,
    resolve_api_url,
    resolve_token,
)
from nixfly.fly.deploy import Deployer, DeployResult
from nixfly.fly.flytoml import FlyConfig, load_fly_toml
from nixfly.fly.normal import RELEASE_GROUP, request_form
from nixfly.fly.plan import (
    SECRETS_DIGEST_KEY,
    SECRETS_VERSION_KEY,
    Action,
    DeploySettings,
    Plan,
    Strategy,
    desired_with_secrets,
    ip_kind,
    plan_deploy,
    require_digest_ref,
    secrets_digest,
)
from nixfly.fly.releases import Release, app_releases, last_deployed, new_release, release_log_text, rollback_target
from nixfly.fly.resolve import is_pinned, resolve_tag
from nixfly.fly.state import SecretsVersionStore, app_lock, default_state_dir

if TYPE_CHECKING:
    from nixfly.registry.options import RegistryOptions

Progress = Callable[[str], None]


def _quiet(_line: str) -> None:
    pass


@dataclass(frozen=True)
class Connection:
    """Where the Machines API is, which token to use (flags; None means the environment's) and how long
    one API call may take, retries included (``--timeout``)."""

    api_url: str | None = None
    access_token: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def open(self) -> MachinesAPI:
        return MachinesAPI(resolve_token(self.access_token), resolve_api_url(self.api_url), timeout=self.timeout)


@dataclass(frozen=True)
class DeployRequest:
    config_path: Path = Path("fly.toml")
    image: str | None = None  # a digest-pinned reference, or a tag to resolve
    build_path: Path | None = None
    push_to: str | None = None
    strategy: str | None = None
    app: str | None = None
    wait_timeout: float | None = None
    dry_run: bool = False
    ha: bool = True
    create_app: bool = False
    org: str = "personal"
    allow_unknown_keys: bool = False
    rollback_on_interrupt: bool = False
    connection: Connection = field(default_factory=Connection)
    command: str = "deploy"  # what the release log says made this release ("deploy" or "rollback")
    lease_timeout: int | None = None  # seconds (default flyctl's 13)
    max_unavailable: float | None = None  # overrides [deploy] max_unavailable
    detach: bool = False
    regions: tuple[str, ...] = ()
    only_machines: tuple[str, ...] = ()
    process_groups: tuple[str, ...] = ()
    skip_release_command: bool = False
    env: tuple[tuple[str, str], ...] = ()  # -e KEY=VALUE, over [env]
    ips: str = "public"  # "public", "private" (flycast) or "none" (--no-public-ips)
    start_stopped: bool = False
    smoke_period: float | None = None
    registry: RegistryOptions | None = field(default=None, compare=False)  # --creds etc. for the image checks
    check_image: bool = True
    # Builds a nixfly.toml and pushes it to a repository, returning the digest-pinned reference (pushing
    # nothing on a dry run): given by the CLI, so fly/ never imports build/.
    publish: Callable[[Path, str, bool, Progress], str] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class DeployOutcome:
    app: str
    image: str
    plan: Plan
    result: DeployResult | None = None  # None for a dry run or when nothing changed
    release: Release | None = None
    resolved_from: str | None = None  # the tag the image was resolved from, if it was one

    def with_source(self, resolved_from: str | None) -> DeployOutcome:
        return replace(self, resolved_from=resolved_from)

    def to_json(self) -> JSON:
        if self.result is not None:
            out = self.result.to_json()
        else:
            out = {"app": self.app, "image": self.image, "strategy": self.plan.strategy, "created": [], "updated": [],
                   "destroyed": [], "volumes_created": [], "release_exit_code": None}  # fmt: skip
        out["no_change"] = self.result is None
        out["release"] = self.release.to_json() if self.release else None
        out["resolved_from"] = self.resolved_from
        return out


def load_config(config_path: Path, *, allow_unknown_keys: bool = False) -> FlyConfig:
    import os.path

    # os.path.exists never raises (a name too long is simply not there); a FIFO, a device or a directory
    # is then refused by load_fly_toml's read, which never blocks.
    if not os.path.exists(config_path):
        raise ConfigError(f"{config_path}: no such file (pass -c/--config PATH to your fly.toml)")
    return load_fly_toml(config_path, allow_unknown_keys=allow_unknown_keys)


def _image_for(req: DeployRequest, cfg: FlyConfig, app: str, progress: Progress) -> tuple[str, str | None, bool]:
    """The digest-pinned image to deploy, the tag it was resolved from (if any), and whether the registry
    can be asked about it (not for an image a dry run built and did not push)."""
    image, build_path = req.image, req.build_path
    if image is None and build_path is None:
        image = cfg.build.image if cfg.build is not None else None
        if image is None and Path("nixfly.toml").is_file():
            here = Path.cwd().resolve()
            if req.config_path.resolve().parent != here:
                # The nixfly.toml next to the user is not necessarily this app's: deploying it would put
                # one app's image on another app.
                raise UsageError(
                    f"{req.config_path} is not next to ./nixfly.toml: pass --build PATH or "
                    "--image NAME@sha256:... to say which image app " + app + " runs"
                )
            build_path = Path("nixfly.toml")
    if image is None and build_path is not None:
        if req.publish is None:
            raise UsageError(f"cannot build {build_path} here: pass --image NAME@sha256:...")
        image = req.publish(build_path, req.push_to or f"registry.fly.io/{app}", req.dry_run, progress)
        if req.dry_run:
            # Built but not pushed: there is nothing in the registry to check yet.
            return require_digest_ref(image), None, False
    if image is None:
        raise UsageError("no image to deploy: pass --image NAME@sha256:... (from nixfly push) or --build nixfly.toml")
    if is_pinned(image):
        return require_digest_ref(image), None, True
    pinned = require_digest_ref(resolve_tag(image, req.registry))
    progress(f"resolved {image} to {pinned}")
    return pinned, image, True


def current_guests(machines: Sequence[Machine]) -> dict[str, JSON]:
    """Each process group's current guest (its first machine's), kept where fly.toml has no [[vm]]."""
    guests: dict[str, JSON] = {}
    for m in sorted(machines, key=lambda m: m.id):
        if isinstance(m.config.get("guest"), dict):
            guests.setdefault(m.process_group, m.config["guest"])
    return guests


def desired_configs(cfg: FlyConfig, image: str, machines: Sequence[Machine]) -> dict[str, JSON]:
    """One MachineConfig per process group of ``cfg``, each keeping its group's current guest."""
    from nixfly.fly.machineconfig import machine_config

    guests = current_guests(machines)
    return {g: machine_config(cfg, g, image, current_guest=guests.get(g)) for g in cfg.process_groups()}


def secrets_state(
    api: MachinesAPI,
    app: str,
    machines: Sequence[Machine],
    *,
    state_dir: Path | None = None,
) -> tuple[int | None, str | None]:
    """(secrets version, digest of the secrets) the machines must run with; (None, None) without secrets.

    Nothing is written to learn them. The digest comes from the API's secret list (names and value
    digests). The version is the one a machine already running with that digest records, else the one
    ``nixfly secrets set`` on this host last got back, else none: then no ``min_secrets_version`` is sent
    and the machines get the app's current secrets, as flyctl does when it has no local record
    (internal/appsecrets). The digest still tells the plan that the secrets changed."""
    secrets = api.list_secrets(app)
    if not secrets:
        return None, None
    digest = secrets_digest(secrets)
    for m in machines:
        version = m.meta(SECRETS_VERSION_KEY)
        if m.meta(SECRETS_DIGEST_KEY) == digest and version is not None and version.isdigit():
            return int(version), digest
    local = SecretsVersionStore(state_dir or default_state_dir(), app).get()
    return local, digest


def settings_for(
    cfg: FlyConfig, app: str, image: str, req: DeployRequest, secrets_version: int | None,
    machines: Sequence[Machine] = (),
) -> DeploySettings:  # fmt: skip
    from nixfly.fly.machineconfig import release_command_config, volume_requests

    # The release command runs on the largest guest of the default group's machines (flyctl's
    # inferReleaseCommandGuest), and a missing volume is created as flyctl's first deploy creates it.
    default_group = cfg.default_process_group()
    app_guests = [m.config["guest"] for m in machines
                  if m.process_group == default_group and isinstance(m.config.get("guest"), dict)]  # fmt: skip
    volumes = volume_requests(cfg, image)

    deploy_cfg = cfg.deploy
    argv = None if req.skip_release_command else deploy_cfg.release_command_argv()
    strategy: Any = req.strategy or deploy_cfg.strategy
    extra: dict[str, Any] = {}
    if req.lease_timeout is not None:
        extra["lease_ttl"] = req.lease_timeout
    if req.smoke_period is not None:
        extra["smoke_period"] = req.smoke_period
    max_unavailable: float | int = deploy_cfg.max_unavailable
    if req.max_unavailable is not None:
        max_unavailable = int(req.max_unavailable) if req.max_unavailable > 1 else req.max_unavailable
    return DeploySettings(
        app=app,
        strategy=strategy,
        max_unavailable=max_unavailable,
        wait_timeout=req.wait_timeout if req.wait_timeout is not None else deploy_cfg.wait_timeout,
        release_command=tuple(argv) if argv else None,
        region=cfg.primary_region or "ams",
        min_secrets_version=secrets_version,
        release_config=release_command_config(cfg, image, app_guests=app_guests),
        volume_sizes=tuple((name, int(v["size_gb"])) for name, v in volumes.items()),
        volume_extra=tuple((name, {k: x for k, x in v.items() if k != "size_gb"}) for name, v in volumes.items()),
        ha=req.ha,
        rollback_on_interrupt=req.rollback_on_interrupt,
        start_stopped=req.start_stopped,
        only_machines=req.only_machines,
        process_groups=req.process_groups,
        regions=req.regions,
        detach=req.detach,
        ips=req.ips,
        org=req.org if req.create_app else None,
        **extra,
    )


def check_image(image: str, desired: dict[str, JSON], cfg: FlyConfig, req: DeployRequest, progress: Progress) -> None:
    """Before any write: the registry must have the image (by digest), each group must have something to
    run (the image's entrypoint or cmd, or a command from fly.toml), and a service's internal_port should
    be one the image exposes (a warning: images need not declare their ports)."""
    from nixfly.errors import RegistryError
    from nixfly.fly.resolve import ImageUnreadable, inspect_image

    try:
        facts = inspect_image(image, req.registry)
    except ImageUnreadable as e:  # unreachable or refused; a missing image is BadImage, said as it is
        raise RegistryError(f"{e} (--creds USER:PASS if it needs credentials; --no-image-check deploys without "
                            "reading it; nothing was changed)") from None  # fmt: skip
    for group, config in sorted(desired.items()):
        init = config.get("init") if isinstance(config.get("init"), dict) else {}
        assert isinstance(init, dict)
        if not (facts.entrypoint or facts.cmd or init.get("cmd") or init.get("entrypoint") or init.get("exec")):
            raise UsageError(
                f"image {image} has no entrypoint and no cmd, and fly.toml gives group {group} no command: "
                "the machine would have nothing to run (set [processes] or build with an entrypoint)"
            )
    if not facts.exposed_ports:
        return
    ports = sorted({int(svc["internal_port"]) for c in desired.values() for svc in c.get("services") or []
                    if isinstance(svc, dict) and isinstance(svc.get("internal_port"), int)})  # fmt: skip
    for port in ports:
        if port not in facts.exposed_ports:
            exposed = ", ".join(str(p) for p in facts.exposed_ports)
            progress(f"warning: internal_port {port} is not a port the image exposes ({exposed}); "
                     "the service will get no answer unless the app listens there")  # fmt: skip


def _with_env(desired: dict[str, JSON], env: Sequence[tuple[str, str]]) -> dict[str, JSON]:
    """``-e KEY=VALUE`` over fly.toml's [env], on every group (flyctl: determineAppConfigForMachines)."""
    for config in desired.values():
        for key, value in env:
            config.setdefault("env", {})[key] = value
    return desired


def deploy(req: DeployRequest, *, progress: Progress = _quiet, state_dir: Path | None = None) -> DeployOutcome:
    """Plan and (unless a dry run, or nothing changed) carry out a deploy; see the module docstring."""
    cfg = load_config(req.config_path, allow_unknown_keys=req.allow_unknown_keys)
    app = cfg.app_name(req.app)
    image, resolved_from, checkable = _image_for(req, cfg, app, progress)
    if not checkable:
        req = replace(req, check_image=False)
    state = state_dir or default_state_dir()
    with req.connection.open() as api:
        if req.dry_run:
            return _plan(api, cfg, app, image, req, progress, state)[0].with_source(resolved_from)
        # One deploy per app at a time from this state directory: a second one waits, then plans afresh.
        wait = (req.wait_timeout if req.wait_timeout is not None else cfg.deploy.wait_timeout) + 60
        with app_lock(state, app, timeout=wait, progress=progress):
            outcome, settings, release = _plan(api, cfg, app, image, req, progress, state)
            if outcome.plan.empty:
                progress(f"no change: {len(outcome.plan.unchanged)} machine(s) already run {image}")
                return outcome.with_source(resolved_from)
            if outcome.plan.create_app:
                api.create_app(app, req.org)
                progress(f"created app {app} in org {req.org}")
            return _carry_out(api, outcome.plan, settings, release, resolved_from, progress, state)


def _plan(
    api: MachinesAPI, cfg: FlyConfig, app: str, image: str, req: DeployRequest, progress: Progress, state: Path
) -> tuple[DeployOutcome, DeploySettings, Release]:
    """Read the app (nothing is written) and plan the deploy, with the release it records."""
    from nixfly.fly.plan import plan_ips

    create_app = False
    try:
        machines = api.list_machines(app)
    except NotFound:
        if not req.create_app:
            raise DeployError(
                f"app {app} does not exist on Fly.io; create it with `nixfly apps create {app}` "
                "or deploy with --create-app"
            ) from None
        machines, create_app = [], True
    if create_app:
        secrets_version, digest = None, None
    else:
        secrets_version, digest = secrets_state(api, app, machines, state_dir=state)
    settings = settings_for(cfg, app, image, req, secrets_version, machines)
    desired = desired_with_secrets(desired_configs(cfg, image, machines), secrets_version, digest)
    desired = _with_env(desired, req.env)
    volumes = api.list_volumes(app) if cfg.mounts and not create_app else []
    ips: tuple[str, ...] = ()
    notes: list[str] = []
    # A first deploy (no machine yet): flyctl's isFirstDeploy (internal/command/deploy/machines.go).
    first = not [m for m in machines if m.process_group != RELEASE_GROUP]
    if first and not settings.filtered:
        has_services = any(c.get("services") for c in desired.values())
        existing = api.list_ips(app) if has_services and not create_app and req.ips != "none" else []
        ips, note = plan_ips(desired, existing, req.ips)
        if note:
            notes.append(note)
    history = app_releases(machines)
    plan = plan_deploy(machines, desired, settings, volumes=volumes, ips=ips, create_app=create_app, notes=notes)
    if req.check_image and (req.dry_run or not plan.empty):
        check_image(image, desired, cfg, req, progress)  # before any write
    for n in notes:
        progress(n)
    release = new_release(history, image, settings.strategy, "deployed", req.command)
    settings = replace(settings, release_log=release_log_text(release, history))
    return DeployOutcome(app, image, plan), settings, release


def _carry_out(
    api: MachinesAPI,
    plan: Plan,
    settings: DeploySettings,
    release: Release,
    resolved_from: str | None,
    progress: Progress,
    state_dir: Path,
) -> DeployOutcome:
    """Run the plan. The release is recorded by the creates and updates themselves (their metadata), so a
    machine that runs this deploy's config always carries it; nothing is written after. ``release`` is the
    one planned, whose log the configs carry."""
    deployer = Deployer(api, plan, settings, state_dir=state_dir, progress=progress)
    result = deployer.run()
    if not (result.created or result.updated):  # nothing carries the release (only destroys, or addresses)
        return DeployOutcome(plan.app, plan.image, plan, result, None, resolved_from)
    progress(f"release v{release.version}: {plan.image} ({settings.strategy}) deployed")
    return DeployOutcome(plan.app, plan.image, plan, result, release, resolved_from)


# -- rollback, releases, status -------------------------------------------------------------------


def list_releases(connection: Connection, app: str) -> list[Release]:
    with connection.open() as api:
        try:
            return app_releases(api.list_machines(app))
        except NotFound:
            raise DeployError(f"app {app} does not exist on Fly.io") from None


def pick_release(releases: Sequence[Release], to: str | None) -> Release:
    """The release ``rollback --to`` names (``v3``, ``3``, a digest or a reference), or the newest
    deployed release before the current one whose image differs."""
    if to is not None:
        wanted = to.removeprefix("v")
        for r in releases:
            if (wanted.isdigit() and r.version == int(wanted)) or to in (r.image, r.digest):
                return r
        raise UsageError(f"no release {to!r} in the app's release log (see `nixfly releases`)")
    current = last_deployed(releases)
    if current is None:
        raise UsageError("the app has no finished release to roll back from (see `nixfly releases`)")
    target = rollback_target(releases, current)
    if target is None:
        raise UsageError(f"no earlier release with another image than v{current.version} to roll back to")
    return target


def rollback(req: DeployRequest, to: str | None, *, progress: Progress = _quiet,
             state_dir: Path | None = None) -> DeployOutcome:  # fmt: skip
    """Redeploy an earlier release (its image, with its strategy unless one is given) with fly.toml's checks."""
    cfg = load_config(req.config_path, allow_unknown_keys=req.allow_unknown_keys)
    app = cfg.app_name(req.app)
    target = pick_release(list_releases(req.connection, app), to)
    progress(f"rolling back to release v{target.version}: {target.image} ({target.strategy})")
    again = replace(req, image=target.image, build_path=None, strategy=req.strategy or target.strategy,
                    command="rollback", create_app=False)  # fmt: skip
    return deploy(again, progress=progress, state_dir=state_dir)


@dataclass(frozen=True)
class MachineStatus:
    id: str
    group: str
    region: str
    state: str
    image: str
    checks: dict[str, str]
    secrets_version: str | None
    matches_last_release: bool

    def to_json(self) -> JSON:
        return {"id": self.id, "group": self.group, "region": self.region, "state": self.state, "image": self.image,
                "checks": self.checks, "secrets_version": self.secrets_version,
                "matches_last_release": self.matches_last_release}  # fmt: skip


@dataclass(frozen=True)
class AppStatus:
    app: str
    machines: tuple[MachineStatus, ...]
    last_release: Release | None
    ips: tuple[JSON, ...] = ()  # the app's addresses: {"ip", "type"} (public v6/v4, shared v4, private)

    def to_json(self) -> JSON:
        return {"app": self.app, "last_release": self.last_release.to_json() if self.last_release else None,
                "ips": list(self.ips), "machines": [m.to_json() for m in self.machines]}  # fmt: skip


def status(connection: Connection, app: str) -> AppStatus:
    with connection.open() as api:
        try:
            machines = api.list_machines(app)
        except NotFound:
            raise DeployError(f"app {app} does not exist on Fly.io") from None
        ips = tuple({"ip": str(i.get("ip", "")), "type": ip_kind(i)} for i in api.list_ips(app))
    last = last_deployed(app_releases(machines))
    rows = []
    for m in sorted(machines, key=lambda m: (m.process_group, m.region, m.id)):
        if m.process_group == RELEASE_GROUP:
            continue
        checks = {str(c.get("name")): str(c.get("status")) for c in m.checks}
        matches = last is not None and m.image == last.image
        version = m.meta(SECRETS_VERSION_KEY)
        rows.append(MachineStatus(m.id, m.process_group, m.region, m.state, m.image, checks, version, matches))
    return AppStatus(app, tuple(rows), last, ips)


# -- apps and secrets -----------------------------------------------------------------------------


def create_app(connection: Connection, app: str, org: str) -> None:
    from nixfly.fly.init import check_app_name

    check_app_name(app)
    with connection.open() as api:
        if api.get_app(app) is not None:
            raise UsageError(f"app {app} already exists")
        api.create_app(app, org)


def roll_secrets(
    api: MachinesAPI,
    app: str,
    version: int,
    *,
    wait_timeout: float = 300.0,
    progress: Progress = _quiet,
    state_dir: Path | None = None,
) -> DeployResult | None:
    """Restart every machine of the app onto secrets ``version`` (after a set or an unset): a rolling
    update, a lease per machine, that changes only the secrets tags in each machine's own config. None
    when the app has no machines."""
    machines = [m for m in api.list_machines(app) if m.process_group != RELEASE_GROUP]
    if not machines:
        return None
    secrets = api.list_secrets(app)
    actions = []
    for m in sorted(machines, key=lambda m: m.id):
        new = request_form(copy.deepcopy(m.config))
        meta = new.setdefault("metadata", {})
        if secrets:  # tagged as a deploy would tag it (see secrets_state), so the next deploy has nothing to do
            meta.update({SECRETS_VERSION_KEY: str(version), SECRETS_DIGEST_KEY: secrets_digest(secrets)})
        else:
            meta.pop(SECRETS_VERSION_KEY, None)
            meta.pop(SECRETS_DIGEST_KEY, None)
        actions.append(Action("update", m.process_group, m.id, m.region, new=new, old=m.config))
    strategy: Strategy = "rolling"
    settings = DeploySettings(app=app, strategy=strategy, max_unavailable=1, wait_timeout=wait_timeout,
                              min_secrets_version=version)  # fmt: skip
    plan = Plan(app, machines[0].image, strategy, tuple(actions), ())
    return Deployer(api, plan, settings, state_dir=state_dir or default_state_dir(), progress=progress).run()

"""fly.toml → validated, frozen models.

:func:`load_fly_toml` reads a fly.toml with :mod:`tomllib`, smooths over the spellings flyctl accepts but
the published JSON schema does not (booleans for ``auto_stop_machines``, numbers in ``[env]``, a single
table where an array of tables is expected), validates the result against that schema and then against
our own stricter rules (:mod:`nixfly.fly.validation`), and returns a :class:`FlyConfig`
(:mod:`nixfly.fly.model`). Every problem becomes a one-line :class:`~nixfly.errors.ConfigError` that
names the file, the line and the key. Unknown keys are errors with a "did you mean" suggestion unless
``allow_unknown_keys`` is set, when they are warnings.

The names of :mod:`nixfly.fly.model` and :mod:`nixfly.fly.units` are re-exported here for callers that
only think of "the fly.toml module".
"""

from __future__ import annotations

import base64
import sys
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nixfly.errors import ConfigError
from nixfly.fly.model import (
    DEFAULT_PROCESS_GROUP,
    STOP_SIGNALS,
    STRATEGIES,
    Build,
    Concurrency,
    Deploy,
    Experimental,
    File,
    FlyConfig,
    HttpOptions,
    HttpService,
    Metrics,
    Mount,
    Port,
    ReleaseCommandVm,
    Restart,
    Service,
    ServiceCheck,
    Static,
    TopLevelCheck,
    Vm,
    autostop_string,
    env_value,
)
from nixfly.fly.units import (
    DEFAULT_VM_SIZE,
    VM_SIZES,
    go_duration_string,
    parse_go_duration,
    parse_memory_mb,
    parse_size_gb,
)
from nixfly.fly.validation import Warn, check_groups, check_unknown, is_private, schema_check, trim_loc, where
from nixfly.tomlpos import TomlPositions

__all__ = [
    "DEFAULT_PROCESS_GROUP", "DEFAULT_VM_SIZE", "STOP_SIGNALS", "STRATEGIES", "VM_SIZES", "Build", "Concurrency",
    "Deploy", "Experimental", "File", "FlyConfig", "HttpOptions", "HttpService", "Metrics", "Mount", "Port",
    "ReleaseCommandVm", "Restart", "Service", "ServiceCheck", "Static", "TopLevelCheck", "Vm", "Warn",
    "go_duration_string", "load_fly_toml", "parse_fly_toml", "parse_go_duration", "parse_memory_mb",
    "parse_size_gb",
]  # fmt: skip


def load_fly_toml(path: Path, *, warn: Warn | None = None, allow_unknown_keys: bool = False) -> FlyConfig:
    """Read, validate and return the fly.toml at ``path``.

    Raises ConfigError (one line: file, line, key, what is wrong) for unreadable files, invalid TOML,
    schema violations and our own checks (unknown strategy, bad VM sizes, two mounts for one process
    group, sections naming undefined process groups, unknown keys with a "did you mean" suggestion).
    With ``allow_unknown_keys`` unknown keys are passed to ``warn`` instead (default: a
    ``nixfly: warning:`` line on stderr) and otherwise ignored.
    ``[[files]]`` entries with ``local_path`` are read (relative to the file's directory) into
    ``raw_value`` so the config is self-contained.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; create one with `nixfly init`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    return parse_fly_toml(
        text, source=str(path), base_dir=path.parent, warn=warn, allow_unknown_keys=allow_unknown_keys
    )


def parse_fly_toml(
    text: str,
    *,
    source: str = "fly.toml",
    base_dir: Path | None = None,
    warn: Warn | None = None,
    allow_unknown_keys: bool = False,
) -> FlyConfig:
    """Like :func:`load_fly_toml` for text already in memory; ``source`` names it in messages."""
    emit: Warn = warn if warn is not None else _stderr_warning
    from nixfly.fsutil import NestingError, load_toml  # refuses 10,000-deep arrays with one line (issue 25)

    try:
        raw = load_toml(text)
    except (tomllib.TOMLDecodeError, NestingError) as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    lines = TomlPositions(text)
    data = _normalize(raw)
    schema_check(data, source, lines)
    try:
        cfg = FlyConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(x for x in err["loc"] if isinstance(x, str | int))
        loc = trim_loc(loc)
        msg = str(err["msg"]).removeprefix("Value error, ").replace("Input should be", "must be", 1)
        if err["type"] == "missing":
            msg = f"missing required key {loc[-1]!r}"
            loc = loc[:-1]
        elif err["type"] == "literal_error" and not is_private(loc):
            msg = f"{msg} (got {err['input']!r})"
        more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        raise ConfigError(where(source, lines, loc) + msg + more) from None
    check_unknown(cfg, source, lines, emit if allow_unknown_keys else None)
    check_groups(cfg, source, lines)
    if any(f.local_path for f in cfg.files):
        cfg = _inline_local_files(cfg, source, lines, base_dir or Path("."))
    return cfg


def _stderr_warning(message: str) -> None:
    sys.stderr.write(f"nixfly: warning: {message}\n")


# Keys that may be one table or an array of tables; we always hold a list.
_LISTY_TOP = ("services", "mounts", "statics", "metrics", "vm", "restart", "files")
_LISTY_SERVICE = ("ports", "tcp_checks", "http_checks")


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


def _normalize(raw: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the spellings flyctl accepts into the one the schema and our models check."""
    data = dict(raw)
    for key in _LISTY_TOP:
        if key in data:
            data[key] = _as_list(data[key])
    if isinstance(data.get("services"), list):
        services = []
        for svc in data["services"]:
            if isinstance(svc, dict):
                svc = dict(svc)
                for k in _LISTY_SERVICE:
                    if k in svc:
                        svc[k] = _as_list(svc[k])
                if isinstance(svc.get("auto_stop_machines"), bool):
                    svc["auto_stop_machines"] = autostop_string(svc["auto_stop_machines"])
            services.append(svc)
        data["services"] = services
    hs = data.get("http_service")
    if isinstance(hs, dict):
        hs = dict(hs)
        if "checks" in hs:
            hs["checks"] = _as_list(hs["checks"])
        if isinstance(hs.get("auto_stop_machines"), bool):
            hs["auto_stop_machines"] = autostop_string(hs["auto_stop_machines"])
        data["http_service"] = hs
    env = data.get("env")
    if isinstance(env, dict):
        data["env"] = {k: env_value(v) for k, v in env.items()}
    deploy = data.get("deploy")
    if isinstance(deploy, dict) and isinstance(deploy.get("wait_timeout"), int | float):
        wt = deploy["wait_timeout"]
        if not isinstance(wt, bool):
            # The schema only knows the string form; an integer means seconds.
            data["deploy"] = {**deploy, "wait_timeout": f"{wt}s"}
    return data


def _inline_local_files(cfg: FlyConfig, source: str, lines: TomlPositions, base_dir: Path) -> FlyConfig:
    files = []
    for i, f in enumerate(cfg.files):
        if f.local_path:
            p = base_dir / f.local_path
            try:
                content = p.read_bytes()
            except OSError as e:
                raise ConfigError(
                    f"{where(source, lines, ('files', i, 'local_path'))}cannot read {str(p)!r}: {e.strerror or e}"
                ) from None
            f = f.model_copy(update={"raw_value": base64.b64encode(content).decode("ascii")})
        files.append(f)
    return cfg.model_copy(update={"files": files})

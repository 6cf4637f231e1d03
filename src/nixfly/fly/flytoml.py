"""fly.toml → validated, frozen models, read the way flyctl reads it.

:func:`load_fly_toml` reads a fly.toml with :mod:`tomllib`, applies flyctl's upgrades of older spellings
(internal/appconfig/patches.go: ``processes = []`` and the name/command array, ``[mount]``, ``[[compute]]``,
ports and internal ports written as strings, ``"soft,hard"`` concurrency, check headers as a list,
``experimental.kill_timeout``/``metrics_*``, ``build_target``), matches keys case-insensitively as Go's
JSON decoder does, checks the types against the published JSON schema (relaxed where flyctl is looser)
and our models (:mod:`nixfly.fly.model`, whose keys are flyctl's), then the cross-section rules
(:mod:`nixfly.fly.validation`), and returns a :class:`FlyConfig`. Every problem becomes a one-line
:class:`~nixfly.errors.ConfigError` that names the file, the line and the key. A key that looks like a
typo of a known one is refused with a "did you mean" (a warning with ``allow_unknown_keys``); keys flyctl
itself ignores, and the Docker-build keys of [build], are reported once as having no effect.

The names of :mod:`nixfly.fly.model` and :mod:`nixfly.fly.units` are re-exported here for callers that
only think of "the fly.toml module".
"""

from __future__ import annotations

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
    TcpCheck,
    TopLevelCheck,
    Vm,
    autostop_string,
)
from nixfly.fly.units import (
    DEFAULT_GPU_VM_SIZE,
    DEFAULT_VM_SIZE,
    VM_SIZES,
    go_duration_string,
    parse_go_duration,
    parse_memory_mb,
    parse_size_gb,
)
from nixfly.fly.validation import (
    Warn,
    check_groups,
    check_unknown,
    fold_case,
    is_private,
    schema_check,
    trim_loc,
    where,
)
from nixfly.fsutil import CONFIG_FILE_MAX, read_regular, read_text_file
from nixfly.tomlpos import KeyPath, TomlPositions

# A [[files]] local_path is read whole and sent base64 in every create and update of a machine, and comes
# back in every machine list (read under limits.JSON_MAX, 16 MiB for all machines): a few MiB at most.
LOCAL_FILE_MAX = 4 << 20

__all__ = [
    "DEFAULT_GPU_VM_SIZE", "DEFAULT_PROCESS_GROUP", "DEFAULT_VM_SIZE", "STOP_SIGNALS", "STRATEGIES", "VM_SIZES",
    "Build", "Concurrency", "Deploy", "Experimental", "File", "FlyConfig", "HttpOptions", "HttpService", "Metrics",
    "Mount", "Port",
    "ReleaseCommandVm", "Restart", "Service", "ServiceCheck", "Static", "TcpCheck", "TopLevelCheck", "Vm", "Warn",
    "go_duration_string", "go_text", "load_fly_toml", "parse_fly_toml", "parse_go_duration", "parse_memory_mb",
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
    try:  # a regular file, bounded: never a FIFO without a writer (it would block) or /dev/zero
        text = read_text_file(path, CONFIG_FILE_MAX, str(path), ConfigError)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; create one with `nixfly init`") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
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
    lines = _Positions(text)
    upgrade = _Upgrade(source, lines)
    lines.origins = upgrade.origins
    data = _normalize(upgrade.run(raw))
    data = fold_case(data, FlyConfig)
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
    check_unknown(cfg, source, lines, emit, allow_unknown_keys=allow_unknown_keys)
    check_groups(cfg, source, lines, emit)
    if any(f.local_path for f in cfg.files):
        cfg = _inline_local_files(cfg, source, lines, base_dir or Path("."))
    return cfg


def _stderr_warning(message: str) -> None:
    sys.stderr.write(f"nixfly: warning: {message}\n")


# --------------------------------------------------------------------------------------------------------
# flyctl's upgrades of older spellings (internal/appconfig/patches.go): flyctl decodes fly.toml into a
# generic map, rewrites the forms older `fly launch` versions and docs wrote, and only then decodes the
# result into its config. The same rewrites, in the same order, in our own words.


class _Upgrade:
    """The rewrites, and where each rewritten section came from (so errors can still name its line)."""

    def __init__(self, source: str, lines: TomlPositions) -> None:
        self.source = source
        self.lines = lines
        self.origins: dict[KeyPath, KeyPath] = {}

    def fail(self, loc: KeyPath, message: str) -> ConfigError:
        return ConfigError(where(self.source, self.lines, loc) + message)

    def tables(self, value: Any, loc: KeyPath) -> list[dict[str, Any]]:
        """One table or an array of tables as a list (flyctl's ensureArrayOfMap)."""
        if isinstance(value, dict):
            return [dict(value)]
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            return [dict(v) for v in value]
        raise self.fail(loc, f"must be a table or an array of tables (got {_kind(value)})")

    def run(self, raw: dict[str, Any]) -> dict[str, Any]:
        data = dict(raw)
        for step in (self.env, self.services, self.processes, self.experimental, self.checks, self.compute,
                     self.mounts, self.metrics, self.build):  # fmt: skip
            step(data)
        return data

    def env(self, data: dict[str, Any]) -> None:
        # [env] values that are not strings become their text; [[env]] tables are merged.
        if "env" not in data:
            return
        raw = data["env"]
        parts = raw if isinstance(raw, list) and all(isinstance(x, dict) for x in raw) else [raw]
        env: dict[str, Any] = {}
        for part in parts:
            if not isinstance(part, dict):
                raise self.fail(("env",), f"must be a table (got {_kind(raw)})")
            env.update({k: go_text(v) if isinstance(v, bool | int | float) else v for k, v in part.items()})
        data["env"] = env

    def services(self, data: dict[str, Any]) -> None:
        if "services" not in data:
            return
        out = []
        for i, svc in enumerate(self.tables(data["services"], ("services",))):
            loc: KeyPath = ("services", i)
            if isinstance(svc.get("concurrency"), str):
                # The old "soft,hard" string.
                soft, sep, hard = svc["concurrency"].partition(",")
                if not sep or not soft.strip().isdigit() or not hard.strip().isdigit():
                    raise self.fail((*loc, "concurrency"), f"{svc['concurrency']!r} is not 'SOFT,HARD' limits")
                svc["concurrency"] = {"type": "requests", "hard_limit": int(hard), "soft_limit": int(soft)}
            elif "concurrency" in svc and not isinstance(svc["concurrency"], dict):
                raise self.fail(
                    (*loc, "concurrency"),
                    f"must be one table [services.concurrency] (got {_kind(svc['concurrency'])}); flyctl refuses "
                    "this too",
                )
            if "ports" in svc:
                ports = self.tables(svc["ports"], (*loc, "ports"))
                for j, port in enumerate(ports):
                    if "port" in port:
                        port["port"] = self.integer(port["port"], (*loc, "ports", j, "port"))
                svc["ports"] = ports
            for kind in ("tcp_checks", "http_checks"):
                if kind in svc:
                    tables = self.tables(svc[kind], (*loc, kind))
                    checks = [self.check(c, (*loc, kind, k)) for k, c in enumerate(tables)]
                    if checks:
                        svc[kind] = checks
                    else:
                        del svc[kind]
            if "internal_port" in svc:
                svc["internal_port"] = self.integer(svc["internal_port"], (*loc, "internal_port"))
            if svc:
                out.append(svc)
        data["services"] = out

    def integer(self, value: Any, loc: KeyPath) -> Any:
        # flyctl's castToInt: a port written as a string ("80") or a float is an integer.
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise self.fail(loc, f"must be an integer (got string {value!r})") from None
        if isinstance(value, float) and not isinstance(value, bool):
            return int(value)
        return value

    def check(self, check: dict[str, Any], loc: KeyPath) -> dict[str, Any]:
        if "headers" in check:
            raw = check["headers"]
            headers: dict[str, str] = {}
            if isinstance(raw, dict):
                headers = {k: go_text(v) for k, v in raw.items()}
            elif isinstance(raw, list) and all(isinstance(h, dict) for h in raw):
                for h in raw:  # the old [{name = ..., value = ...}] form
                    if "name" not in h:
                        raise self.fail((*loc, "headers"), "each header needs a 'name'")
                    headers[go_text(h["name"])] = go_text(h.get("value", ""))
            else:
                raise self.fail((*loc, "headers"), f"must be a table of header names (got {_kind(raw)})")
            if headers:
                check["headers"] = headers
            else:
                del check["headers"]
        return check

    def processes(self, data: dict[str, Any]) -> None:
        # An array is the old form: its tables' name/command pairs, and an empty or plain array means
        # "no [processes]" (older `fly launch` wrote `processes = []`).
        raw = data.get("processes")
        if raw is None or isinstance(raw, dict):
            return
        if not isinstance(raw, list):
            raise self.fail(("processes",), f"must be a table (got {_kind(raw)})")
        procs = {go_text(p["name"]): go_text(p.get("command", "")) for p in raw if isinstance(p, dict) and "name" in p}
        if procs:
            data["processes"] = procs
        else:
            del data["processes"]

    def experimental(self, data: dict[str, Any]) -> None:
        raw = data.get("experimental")
        if raw is None:
            return
        if not isinstance(raw, dict):
            raise self.fail(("experimental",), f"must be a table (got {_kind(raw)})")
        exp = dict(raw)
        # Older homes of kill_timeout and the metrics endpoint; the top-level ones win.
        if "kill_timeout" in exp:
            value = exp.pop("kill_timeout")
            if "kill_timeout" not in data:
                data["kill_timeout"] = value
                self.origins[("kill_timeout",)] = ("experimental", "kill_timeout")
        metrics = {k.removeprefix("metrics_"): exp.pop(k) for k in ("metrics_port", "metrics_path") if k in exp}
        if metrics and "metrics" not in data and "metric" not in data:
            data["metrics"] = metrics
            self.origins[("metrics", 0)] = ("experimental",)
        if exp:
            data["experimental"] = exp
        else:
            del data["experimental"]

    def checks(self, data: dict[str, Any]) -> None:
        raw = data.get("checks")
        if raw is None:
            return
        named: dict[str, Any] = {}
        if isinstance(raw, dict):
            named = dict(raw)
        elif isinstance(raw, list):  # [[checks]] tables with a name each
            for i, c in enumerate(raw):
                if not isinstance(c, dict) or not isinstance(c.get("name"), str):
                    raise self.fail(("checks", i), "each [[checks]] table needs a string 'name'")
                named[c["name"]] = {k: v for k, v in c.items() if k != "name"}
                self.origins[("checks", c["name"])] = ("checks", i)
        else:
            raise self.fail(("checks",), f"must be a table (got {_kind(raw)})")
        for name, check in named.items():
            if not isinstance(check, dict):
                raise self.fail(("checks", name), f"must be a table (got {_kind(check)})")
            named[name] = self.check(dict(check), ("checks", name))
        if named:
            data["checks"] = named
        else:
            del data["checks"]

    def compute(self, data: dict[str, Any]) -> None:
        vms = self._merge(data, ("compute", "computes", "vm"), "vm")
        for vm in vms:
            if "memory" in vm and not isinstance(vm["memory"], str):
                vm["memory"] = go_text(vm["memory"])
        if vms:
            data["vm"] = vms

    def mounts(self, data: dict[str, Any]) -> None:
        mounts = self._merge(data, ("mount", "mounts"), "mounts")
        for m in mounts:
            if "initial_size" in m and not isinstance(m["initial_size"], str):
                m["initial_size"] = go_text(m["initial_size"])
        if mounts:
            data["mounts"] = mounts

    def metrics(self, data: dict[str, Any]) -> None:
        metrics = self._merge(data, ("metric", "metrics"), "metrics")
        if metrics:
            data["metrics"] = metrics

    def _merge(self, data: dict[str, Any], keys: tuple[str, ...], into: str) -> list[dict[str, Any]]:
        """The tables under each of ``keys`` (one table or an array of tables each), in that order."""
        merged: list[dict[str, Any]] = []
        for key in keys:
            if key not in data:
                continue
            raw = data.pop(key)
            for i, table in enumerate(self.tables(raw, (key,))):
                self.origins[(into, len(merged))] = (key,) if isinstance(raw, dict) else (key, i)
                merged.append(table)
        return merged

    def build(self, data: dict[str, Any]) -> None:
        raw = data.get("build")
        if raw is None:
            return
        if not isinstance(raw, dict):
            raise self.fail(("build",), f"must be a table (got {_kind(raw)})")
        build = dict(raw)
        if "build_target" in build:  # flyctl renames it
            build["build-target"] = build.pop("build_target")
            self.origins[("build", "build-target")] = ("build", "build_target")
        data["build"] = build


def go_text(value: Any) -> str:
    """A TOML value as Go's ``fmt.Sprintf("%v")`` writes it, which is how flyctl turns values into text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return str(value)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array of tables" if value and all(isinstance(v, dict) for v in value) else "an array"
    return _TOML_KINDS.get(type(value), type(value).__name__)


_TOML_KINDS = {str: "a string", int: "an integer", float: "a float", bool: "a boolean"}


class _Positions(TomlPositions):
    """Line numbers for the upgraded document: a rewritten section is found where it was written."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.origins: dict[KeyPath, KeyPath] = {}

    def line_of(self, loc: KeyPath) -> int | None:
        for n in range(len(loc), 0, -1):
            origin = self.origins.get(tuple(loc[:n]))
            if origin is not None:
                return super().line_of((*origin, *loc[n:]))
        return super().line_of(loc)


def _normalize(raw: dict[str, Any]) -> dict[str, Any]:
    """What is left after flyctl's upgrades: single tables where nixfly holds lists, booleans for
    auto_stop_machines, integer wait timeouts (seconds)."""
    data = dict(raw)
    for key in ("statics", "restart", "files"):
        if isinstance(data.get(key), dict):
            data[key] = [data[key]]
    for svc in data.get("services") or []:
        if isinstance(svc, dict) and isinstance(svc.get("auto_stop_machines"), bool):
            svc["auto_stop_machines"] = autostop_string(svc["auto_stop_machines"])
    hs = data.get("http_service")
    if isinstance(hs, dict):
        hs = dict(hs)
        if isinstance(hs.get("checks"), dict):
            hs["checks"] = [hs["checks"]]
        if isinstance(hs.get("auto_stop_machines"), bool):
            hs["auto_stop_machines"] = autostop_string(hs["auto_stop_machines"])
        data["http_service"] = hs
    deploy = data.get("deploy")
    if isinstance(deploy, dict):
        deploy = dict(deploy)
        wt = deploy.get("wait_timeout")
        if isinstance(wt, int | float) and not isinstance(wt, bool):
            # The schema only knows the string form; an integer means seconds.
            deploy["wait_timeout"] = f"{wt}s"
        rvm = deploy.get("release_command_vm")
        if isinstance(rvm, dict) and isinstance(rvm.get("memory"), int | float) and not isinstance(rvm["memory"], bool):
            # flyctl casts [[vm]] memory only; an integer here is read the same way, not refused.
            deploy["release_command_vm"] = {**rvm, "memory": go_text(rvm["memory"])}
        data["deploy"] = deploy
    return data


def _inline_local_files(cfg: FlyConfig, source: str, lines: TomlPositions, base_dir: Path) -> FlyConfig:
    files = []
    for i, f in enumerate(cfg.files):
        if f.local_path:
            p = base_dir / f.local_path
            at = where(source, lines, ("files", i, "local_path"))
            try:  # a regular file, bounded, as fly.toml itself: a FIFO or a 10 GB file is one line
                content = read_regular(p, LOCAL_FILE_MAX, f"{at}{str(p)!r}", ConfigError)
            except OSError as e:
                raise ConfigError(f"{at}cannot read {str(p)!r}: {e.strerror or e}") from None
            f = f.with_local_content(content)
        files.append(f)
    return cfg.model_copy(update={"files": files})

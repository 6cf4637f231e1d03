"""fly.toml validation: the published JSON schema, unknown keys, and the rules that span sections.

Every problem is a one-line :class:`~nixfly.errors.ConfigError` naming the file, the line (from the
shared :class:`~nixfly.tomlpos.TomlPositions`) and the key path. Unknown keys are errors with a "did
you mean" suggestion; a caller that allows them gets a warning per key instead.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from importlib import resources
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

from pydantic import BaseModel

from nixfly.errors import ConfigError
from nixfly.fly.model import FlyConfig
from nixfly.tomlpos import KeyPath, TomlPositions

if TYPE_CHECKING:
    import jsonschema

Warn = Callable[[str], None]


# The format-checking libraries ``import jsonschema`` loads when it finds them (each under
# ``suppress(ImportError)`` in jsonschema/_format.py); idna is not listed: httpx needs it anyway.
_FORMAT_LIBS = ("rfc3987_syntax", "rfc3987", "rfc3986_validator", "rfc3339_validator", "fqdn", "webcolors",
                "jsonpointer", "uri_template", "isoduration")  # fmt: skip


def _draft7() -> type[jsonschema.Draft7Validator]:
    """jsonschema's Draft 7 validator, loaded without its optional format checkers when nothing has
    loaded jsonschema yet.

    ``import jsonschema`` imports every format-checking library it finds, and rfc3987-syntax (pulled in
    by cyclonedx-python-lib's json-validation extra) builds a lark grammar as it loads: about two
    seconds of every ``nixfly deploy`` here, the others a tenth more, while this validator checks no
    formats at all. jsonschema treats them all as optional, and a ``None`` entry in ``sys.modules`` is
    the import system's documented way to make an import fail, so they are skipped. The entries go
    again at once; should a jsonschema release stop tolerating them, jsonschema is imported again as
    it is. A process that loaded jsonschema already (the tests: openapi-core) is left as it was.
    """
    blocked = [] if "jsonschema" in sys.modules else [m for m in _FORMAT_LIBS if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None  # type: ignore[assignment]  # typeshed omits the None entry
    try:
        from jsonschema import Draft7Validator
    except ImportError:
        if not blocked:
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "jsonschema"]:
            del sys.modules[name]
        for m in blocked:
            del sys.modules[m]
        blocked = []
        from jsonschema import Draft7Validator
    finally:
        for m in blocked:
            if m in sys.modules and sys.modules[m] is None:
                del sys.modules[m]
    return Draft7Validator


def trim_loc(loc: KeyPath) -> KeyPath:
    # pydantic appends union-member and validator names (e.g. "int", "function-after[...]"); drop anything
    # after the first piece that is not a real key of the document.
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in ("int", "float", "str", "bool", "list")):
            break
        out.append(part)
    return tuple(out)


def is_private(loc: KeyPath) -> bool:
    return bool(loc) and loc[0] in ("env", "files")


@cache
def _schema() -> dict[str, Any]:
    text = resources.files("nixfly.fly").joinpath("schemas/fly-toml.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    props = schema["properties"]
    # We hold these sections as lists (see _normalize); checking against the array branch alone gives
    # errors that point inside the section instead of a vague "not valid under any of the given schemas".
    for key in ("services", "mounts", "statics", "metrics"):
        branches = props[key]["oneOf"]
        props[key] = next(b for b in branches if b.get("type") == "array")
    # The published enum has SIGSTOP (the Machines API refuses it) and lacks SIGHUP (which it accepts);
    # our model checks kill_signal against the API's own list instead.
    props["kill_signal"] = {"type": "string"}
    # The schema's default strategy ("canary") is not flyctl's ("rolling"); we never read defaults from it.
    # Where the schema is stricter than flyctl, flyctl decides: closed sections (unknown keys are our own
    # policy, see check_unknown), size/CPU/GPU lists shorter than fly-go's presets (units.VM_SIZES checks
    # sizes), handler names, machine_checks fields flyctl does not require, a non-empty buildpacks list.
    _relax(schema)
    for section in (props["vm"]["items"], props["deploy"]["properties"]["release_command_vm"]):
        for key in ("size", "cpus", "gpus", "gpu_kind"):
            section["properties"].get(key, {}).pop("enum", None)
    props["deploy"]["properties"]["wait_timeout"] = {"type": ["string", "number"]}
    return schema


def _relax(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("additionalProperties") is False:
            del node["additionalProperties"]
        props = node.get("properties")
        if isinstance(props, dict):
            handlers = props.get("handlers")
            if isinstance(handlers, dict) and isinstance(handlers.get("items"), dict):
                handlers["items"].pop("enum", None)
            if isinstance(props.get("buildpacks"), dict):
                props["buildpacks"].pop("minItems", None)
            checks = props.get("machine_checks")
            if isinstance(checks, dict) and isinstance(checks.get("items"), dict):
                checks["items"].pop("required", None)
                checks["items"].get("properties", {}).pop("kill_timeout", None)
        for v in node.values():
            _relax(v)
    elif isinstance(node, list):
        for v in node:
            _relax(v)


def schema_check(data: dict[str, Any], source: str, lines: TomlPositions) -> None:
    validator = _draft7()(_schema())
    errors = list(validator.iter_errors(data))
    if not errors:
        return
    described = [_describe_schema_error(e) for e in errors]
    described.sort(key=lambda d: (lines.line_of(d[0]) or 0, len(d[0])))
    loc, msg = described[0]
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    raise ConfigError(where(source, lines, loc) + msg + more)


_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true/false)",
    "array": "an array",
    "object": "a table",
}


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _show(value: Any, loc: KeyPath) -> str:
    if is_private(loc) or isinstance(value, dict | list):
        return _toml_type(value)
    return f"{_toml_type(value)} {value!r}"


def _describe_schema_error(e: jsonschema.ValidationError) -> tuple[KeyPath, str]:
    loc: KeyPath = tuple(e.absolute_path)
    kind = e.validator
    value: Any = e.validator_value
    schema: Any = e.schema
    if kind == "type":
        wanted = value if isinstance(value, list) else [value]
        names = " or ".join(_TYPE_NAMES.get(str(w), str(w)) for w in wanted)
        return loc, f"must be {names} (got {_show(e.instance, loc)})"
    if kind == "enum":
        choices = ", ".join(repr(c) for c in value)
        return loc, f"must be one of {choices} (got {_show(e.instance, loc)})"
    if kind in ("oneOf", "anyOf"):
        kinds = [s.get("type") for s in value if isinstance(s, dict)]
        names = " or ".join(_TYPE_NAMES.get(str(k), str(k)) for k in kinds if k)
        return loc, f"must be {names} (got {_show(e.instance, loc)})"
    if kind == "additionalProperties" and isinstance(e.instance, dict):
        allowed = list(schema.get("properties", {}))
        extra = [k for k in e.instance if k not in allowed]
        key = extra[0] if extra else "?"
        return (*loc, key), f"unknown key {key!r} in this section{did_you_mean(key, allowed)}"
    if kind == "required":
        missing = [k for k in value if isinstance(e.instance, dict) and k not in e.instance]
        return loc, f"missing required key {(missing or ['?'])[0]!r}"
    if kind == "pattern":
        return loc, f"{_show(e.instance, loc)} does not match the pattern {value!r}"
    if kind in ("minItems", "minLength"):
        return loc, "must not be empty"
    if kind == "uniqueItems":
        return loc, "has duplicate entries"
    return loc, e.message.splitlines()[0][:200]


def did_you_mean(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def dotted(loc: KeyPath) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part_s = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            out += ("." if out else "") + part_s
    return out or "(top level)"


def where(source: str, lines: TomlPositions, loc: KeyPath) -> str:
    line = lines.line_of(loc)
    at = f"{source}:{line}" if line else source
    return f"{at}: {dotted(loc)}: "


def _field_key(name: str, field: Any) -> str:
    return str(field.alias or name)


def _nested(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """("model" | "list" | "dict", the model class) when a field holds models, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    origin = get_origin(annotation)
    if origin in (list, tuple) and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return "list", args[0]
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return "dict", args[1]
    if origin in (Union, UnionType) and len(args) == 1:
        return _nested(args[0])
    return None


def fold_case(data: Any, model: type[BaseModel]) -> Any:
    """``data`` with each key that differs from a key of ``model`` only in case renamed to that key.

    flyctl decodes its config with Go's encoding/json, which matches struct fields case-insensitively:
    ``Internal_Port`` is ``internal_port`` to flyctl, so it is to us. Map-valued sections ([env],
    [processes], header tables) keep their keys as written.
    """
    if not isinstance(data, dict):
        return data
    fields = {_field_key(n, f): f for n, f in model.model_fields.items()}
    lower = {k.lower(): k for k in fields}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields and key.lower() in lower and lower[key.lower()] not in data:
            key = lower[key.lower()]
        field = fields.get(key)
        nested = _nested(field.annotation) if field is not None else None
        if nested is not None:
            kind, sub = nested
            if kind == "model":
                value = fold_case(value, sub)
            elif kind == "list" and isinstance(value, list):
                value = [fold_case(v, sub) for v in value]
            elif kind == "dict" and isinstance(value, dict):
                value = {k: fold_case(v, sub) for k, v in value.items()}
        out[key] = value
    return out


def unknown_keys(model: BaseModel, loc: KeyPath = ()) -> list[tuple[KeyPath, list[str]]]:
    """Keys our models (flyctl's config) do not know, with the keys that section does know."""
    known = [_field_key(name, f) for name, f in type(model).model_fields.items()]
    out: list[tuple[KeyPath, list[str]]] = [((*loc, key), known) for key in model.model_extra or {}]
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = _field_key(name, field)
        if isinstance(value, BaseModel):
            out += unknown_keys(value, (*loc, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    out += unknown_keys(item, (*loc, key, i))
        elif isinstance(value, dict):
            for k, item in value.items():
                if isinstance(item, BaseModel):
                    out += unknown_keys(item, (*loc, key, k))
    return out


# Keys real fly.toml files carry that flyctl's decoder drops, with what became of them. Their own entry,
# because some are close enough to a key flyctl knows to pass for a typo (max_machines_running).
IGNORED_BY_FLYCTL: dict[str, str] = {
    "experimental.allowed_public_ports": "Nomad-era (apps v1) keys",
    "experimental.private_network": "every machine is on the private network",
    "services.script_checks": "Nomad-era (apps v1) keys",
    "services.tcp_checks.restart_limit": "Nomad-era (apps v1) keys",
    "services.http_checks.restart_limit": "Nomad-era (apps v1) keys",
    "http_service.checks.restart_limit": "Nomad-era (apps v1) keys",
    "checks.*.restart_limit": "Nomad-era (apps v1) keys",
    "services.ports.protocol": "a port has no protocol of its own; the service's protocol applies",
    "http_service.max_machines_running": "not a fly.toml key; machine counts are set with fly scale count",
    "http_service.enable_ha": "not a fly.toml key; see deploy --ha",
    "redis": "not a fly.toml section",
    "scale": "not a fly.toml section; machine counts are set with fly scale count",
    "restart.max_retries": "flyctl's key is `retries`",
    "statics.processes": "flyctl serves [[statics]] from every process group",
    "checks.*.kind": "flyctl's [checks] have no kind",
    "http_checks": "not a top-level section; checks go in [[services.http_checks]] or [checks]",
}
# [build] keys for flyctl's own image build: nixfly deploys the image it is given.
DOCKER_BUILD_KEYS = ("dockerfile", "builder", "buildpacks", "args", "build-target", "ignorefile", "settings",
                     "builtin", "compression", "compression_level")  # fmt: skip


def _pattern(loc: KeyPath) -> str:
    """A key path without its array indices, and with [checks] names as ``*``."""
    parts: list[str] = [p for p in loc if isinstance(p, str)]
    if len(parts) > 2 and parts[0] == "checks":
        parts[1] = "*"
    return ".".join(parts)


def _typo_of(key: str, known: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(key.lower(), list(known), n=1, cutoff=0.8)
    return close[0] if close else None


def check_unknown(
    model: BaseModel, source: str, lines: TomlPositions, warn: Warn, *, allow_unknown_keys: bool = False
) -> None:
    """Say what becomes of the keys flyctl would not use.

    A key that looks like a typo of one this section knows (``[http_servce]``, ``stratgy``) is refused
    with a "did you mean" (it would silently deploy something else), or with ``allow_unknown_keys``
    reported and ignored. Keys flyctl's decoder drops (listed in :data:`IGNORED_BY_FLYCTL`, or resembling
    nothing flyctl knows) have no effect: one warning names them all. So does one line for the Docker-build
    keys of [build], and for [[files]] ``processes`` (flyctl writes every file on every group).
    """
    found = unknown_keys(model)
    found.sort(key=lambda item: lines.line_of(item[0]) or 0)
    typos: list[tuple[KeyPath, str]] = []
    ignored: list[tuple[KeyPath, str]] = []
    for loc, known in found:
        reason = IGNORED_BY_FLYCTL.get(_pattern(loc))
        guess = None if reason is not None else _typo_of(str(loc[-1]), known)
        if guess is not None:
            typos.append((loc, guess))
        else:
            ignored.append((loc, reason or ""))
    for loc, guess in typos:
        hint = f" (did you mean {guess!r}?)"
        if not allow_unknown_keys:
            more = f" (and {len(typos) - 1} more unknown keys)" if len(typos) > 1 else ""
            raise ConfigError(
                f"{where(source, lines, loc)}unknown key{hint}{more}; pass --allow-unknown-keys to deploy anyway"
            )
        warn(f"{where(source, lines, loc)}unknown key, ignored{hint}")
    if isinstance(model, FlyConfig):
        for i, f in enumerate(model.files):
            if f.processes:
                ignored.append((("files", i, "processes"), "flyctl writes every [[files]] entry on every group"))
    if ignored:
        reasons: dict[str, list[str]] = {}
        for loc, why in ignored:
            reasons.setdefault(why, []).append(_at(lines, loc))
        shown = "; ".join(", ".join(keys) + (f" ({why})" if why else "") for why, keys in reasons.items())
        warn(f"{source}: flyctl ignores these keys, so they have no effect: {shown}")
    build = model.build if isinstance(model, FlyConfig) else None
    unused = [k for k in DOCKER_BUILD_KEYS if build is not None and getattr(build, k.replace("-", "_")) is not None]
    if unused:
        keys = ", ".join(unused)
        warn(f"{source}: [build] {keys}: for flyctl's Docker build; nixfly deploys an image it is given, so not used")


def _at(lines: TomlPositions, loc: KeyPath) -> str:
    line = lines.line_of(loc)
    return f"{dotted(loc)} (line {line})" if line else dotted(loc)


def check_groups(cfg: FlyConfig, source: str, lines: TomlPositions, warn: Warn | None = None) -> None:
    """Cross-section rules flyctl enforces: sections name defined groups, services say which group they
    serve when there are several, at most one mount per group, no canary deploys with volumes; and no
    containers (flyctl's machine_config/compose), which nixfly does not deploy."""
    containers: list[KeyPath] = [("machine_config",), ("container",), ("experimental", "machine_config"),
                                 ("build", "compose")]  # fmt: skip
    for at in containers:
        section: Any = cfg
        for part in at:
            section = getattr(section, str(part), None) if section is not None else None
        if section:
            raise ConfigError(
                f"{where(source, lines, at)}flyctl's containers (machine_config, compose) are not supported by "
                "nixfly deploy: it runs one image per machine"
            )
    groups = cfg.process_groups()
    for name, cmd in cfg.processes.items():
        try:
            shlex.split(cmd)
        except ValueError as e:
            raise ConfigError(f"{where(source, lines, ('processes', name))}cannot split command: {e}") from None

    sections: list[tuple[KeyPath, Sequence[str] | None]] = []
    if cfg.http_service is not None:
        sections.append((("http_service",), cfg.http_service.processes))
    for key in ("services", "mounts", "vm", "restart", "files", "metrics"):
        for i, item in enumerate(getattr(cfg, key)):
            sections.append(((key, i), item.processes))
    for name, check in cfg.checks.items():
        sections.append((("checks", name), check.processes))
    for loc, procs in sections:
        for p in procs or ():
            if p not in groups:
                have = ", ".join(repr(g) for g in groups)
                problem = (f"{where(source, lines, (*loc, 'processes'))}process group {p!r} is not defined "
                           f"(groups: {have}){did_you_mean(p, groups)}")  # fmt: skip
                # flyctl refuses this for services and restart policies (validateServicesSection,
                # validateRestartPolicy); elsewhere the name just matches no group.
                if loc[0] in ("http_service", "services", "restart") or warn is None:
                    raise ConfigError(problem)
                warn(f"{problem}; that entry applies to none of them")
        if len(cfg.processes) > 1 and not procs and loc[0] in ("http_service", "services"):
            raise ConfigError(
                f"{where(source, lines, loc)}the app has {len(cfg.processes)} process groups; "
                "set `processes = [...]` to say which this service is for"
            )

    for group in groups:
        mine = [i for i, m in enumerate(cfg.mounts) if cfg.applies_to(m.processes, group)]
        if len(mine) > 1:
            raise ConfigError(
                f"{where(source, lines, ('mounts', mine[1]))}process group {group!r} has more than one "
                f"[[mounts]] (mounts[{mine[0]}] and mounts[{mine[1]}]); a machine can mount one volume"
            )
    if cfg.deploy.strategy == "canary" and cfg.mounts:
        raise ConfigError(
            f"{where(source, lines, ('deploy', 'strategy'))}the canary strategy cannot be used with "
            "[[mounts]] (volumes); use rolling or immediate"
        )

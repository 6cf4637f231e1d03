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
from typing import TYPE_CHECKING, Any

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
    return schema


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


def unknown_keys(model: BaseModel, loc: KeyPath = ()) -> list[tuple[KeyPath, list[str]]]:
    """Keys our models do not know, with the keys that section does know, in document order."""
    known = [f.alias or name for name, f in type(model).model_fields.items()]
    out: list[tuple[KeyPath, list[str]]] = [((*loc, key), known) for key in model.model_extra or {}]
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = field.alias or name
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


def check_unknown(model: BaseModel, source: str, lines: TomlPositions, warn: Warn | None) -> None:
    """Refuse keys nobody knows (a misspelt ``[http_servce]`` would otherwise deploy no services), naming
    the first with a "did you mean"; with ``warn`` (``--allow-unknown-keys``) report each and go on."""
    found = unknown_keys(model)
    found.sort(key=lambda item: lines.line_of(item[0]) or 0)
    for loc, known in found:
        hint = did_you_mean(str(loc[-1]), known)
        if warn is None:
            more = f" (and {len(found) - 1} more unknown keys)" if len(found) > 1 else ""
            raise ConfigError(
                f"{where(source, lines, loc)}unknown key{hint}{more}; pass --allow-unknown-keys to deploy anyway"
            )
        warn(f"{where(source, lines, loc)}unknown key, ignored{hint}")


def check_groups(cfg: FlyConfig, source: str, lines: TomlPositions) -> None:
    """Cross-section rules flyctl enforces: sections name defined groups, services say which group they
    serve when there are several, at most one mount per group, no canary deploys with volumes."""
    groups = cfg.process_groups()
    for name, cmd in cfg.processes.items():
        try:
            shlex.split(cmd)
        except ValueError as e:
            raise ConfigError(f"{where(source, lines, ('processes', name))}cannot split command: {e}") from None

    sections: list[tuple[KeyPath, Sequence[str] | None]] = []
    if cfg.http_service is not None:
        sections.append((("http_service",), cfg.http_service.processes))
    for key in ("services", "mounts", "vm", "restart", "files", "statics", "metrics"):
        for i, item in enumerate(getattr(cfg, key)):
            sections.append(((key, i), item.processes))
    for name, check in cfg.checks.items():
        sections.append((("checks", name), check.processes))
    for loc, procs in sections:
        for p in procs or ():
            if p not in groups:
                have = ", ".join(repr(g) for g in groups)
                raise ConfigError(
                    f"{where(source, lines, (*loc, 'processes'))}process group {p!r} is not defined "
                    f"(groups: {have}){did_you_mean(p, groups)}"
                )
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
        for key in ("vm", "restart"):
            items = getattr(cfg, key)
            specific = [i for i, x in enumerate(items) if x.processes and group in x.processes]
            general = [i for i, x in enumerate(items) if not x.processes]
            for dup in (specific, general):
                if len(dup) > 1:
                    raise ConfigError(
                        f"{where(source, lines, (key, dup[1]))}more than one [[{key}]] applies to process "
                        f"group {group!r} ({key}[{dup[0]}] and {key}[{dup[1]}])"
                    )
    if cfg.deploy.strategy == "canary" and cfg.mounts:
        raise ConfigError(
            f"{where(source, lines, ('deploy', 'strategy'))}the canary strategy cannot be used with "
            "[[mounts]] (volumes); use rolling or immediate"
        )

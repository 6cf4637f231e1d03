"""Typed reading of plain data (parsed TOML, flags merged over it) into frozen dataclasses: types, ranges,
unknown keys with a "did you mean", per-field converters named in the field's metadata (``convert``,
``item``, ``min``/``max``, ``key``), and the converters several parts of the image definition share.
Errors are :class:`SpecError` (a key and a message) for the caller to locate in its file."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class SpecError(ValueError):
    """Bad input at ``key`` (dotted, relative to the image definition)."""

    def __init__(self, key: str, msg: str) -> None:
        super().__init__(msg)
        self.key = key
        self.msg = msg


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


def _convert(tp: Any, v: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if v is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], v, key)
    if origin is Literal:
        if v not in args:
            raise SpecError(key, f"must be one of {', '.join(repr(a) for a in args)} (got {v!r})")
        return v
    if origin is list:
        if not isinstance(v, list):
            raise SpecError(key, "must be a list")
        return [_convert(args[0], x, f"{key}.{i}") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise SpecError(key, "must be a table")
        return {str(k): _convert(args[1], x, f"{key}.{k}") for k, x in v.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, v, key)  # type: ignore[arg-type]
    if tp in (str, int, bool):
        ok = isinstance(v, tp) and not (tp is int and isinstance(v, bool))
        if not ok:
            raise SpecError(key, f"must be {_TYPE_NAMES[tp]} (got {type(v).__name__} {v!r})")
        return v
    raise SpecError(key, f"unsupported type {tp!r}")  # a bug in this module, not bad input


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from parsed TOML/flag data, checking types, ranges and unknown keys."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise SpecError(prefix or "(top level)", "must be a table")
    hints = typing.get_type_hints(cls)
    # A field's key is its name unless its metadata names another (``from`` is a Python keyword).
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for k in data:
        if k not in fields:
            close = difflib.get_close_matches(str(k), [f.replace("_", "-") if "-" in str(k) else f for f in fields], 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(f"{prefix}.{k}" if prefix else str(k), "unknown key" + hint)
    kw: dict[str, Any] = {}
    for dkey, f in fields.items():
        name = f.name
        key = f"{prefix}.{dkey}" if prefix else dkey
        if dkey not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(key, "is required")
            continue
        v = data[dkey]
        if "convert" in f.metadata and v is not None:
            kw[name] = f.metadata["convert"](v, key)
            continue
        v = _convert(hints[name], v, key)
        if isinstance(v, int) and not isinstance(v, bool):
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
                raise SpecError(key, f"must be {rng} (got {v})")
        if "item" in f.metadata:
            v = [f.metadata["item"](x, f"{key}.{i}") for i, x in enumerate(v)]
        kw[name] = v
    return cls(**kw)


def to_dict(obj: Any) -> Any:
    """The plain-data form of a spec (the inverse of ``from_dict``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.metadata.get("key", f.name): to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj



def octal_mode(v: Any, key: str) -> int:
    if isinstance(v, str):
        try:
            v = int(v, 8)
        except ValueError:
            raise SpecError(key, f'mode {v!r} is not an octal number such as "0755"') from None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0o7777:
        raise SpecError(key, 'must be a mode between "0000" and "7777" (an octal string such as "0755")')
    return v


def one_of(allowed: tuple[str, ...], what: str) -> Any:
    def check(v: Any, key: str) -> str:
        if not isinstance(v, str) or v not in allowed:
            raise SpecError(key, f"{v!r} is not an OCI {what} (use one of {', '.join(allowed)})")
        return v

    return check


def port_spec(v: str, key: str) -> str:
    port, _, proto = str(v).partition("/")
    if not port.isdigit() or not 0 < int(port) < 65536 or proto not in ("", "tcp", "udp"):
        raise SpecError(key, f"port {v!r} must look like 8080 or 8080/tcp")
    return f"{int(port)}/{proto or 'tcp'}"


def at_least(n: int) -> dict[str, Any]:
    return {"min": n}

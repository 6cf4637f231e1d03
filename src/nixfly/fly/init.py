"""A starter fly.toml from an image's config, or an update of an existing one that keeps its comments.

The HTTP port comes from the image's ``ExposedPorts`` (the lowest TCP port; Fly's default 8080 when the
image exposes none), and the service gets an HTTP health check. An existing file is edited with tomlkit,
so everything the user wrote (comments, order, spacing, other sections) stays as it was; only ``app``,
``primary_region``, ``[build] image`` and the http_service port are set, and missing sections added.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Table

from nixfly.errors import ConfigError, UsageError
from nixfly.fly.flytoml import parse_fly_toml
from nixfly.fsutil import atomic_write_bytes

DEFAULT_PORT = 8080
_APP_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_REGION = re.compile(r"^[a-z]{3}$")


def exposed_tcp_ports(image_config: Mapping[str, Any]) -> list[int]:
    """The TCP ports an OCI/Docker image config exposes (``config.ExposedPorts``), sorted."""
    inner = image_config.get("config")
    exposed = inner.get("ExposedPorts") if isinstance(inner, Mapping) else None
    ports: set[int] = set()
    if isinstance(exposed, Mapping):
        for spec in exposed:
            number, _, proto = str(spec).partition("/")
            if (proto or "tcp").lower() == "tcp" and number.isdigit() and 1 <= int(number) <= 65535:
                ports.add(int(number))
    return sorted(ports)


def check_app_name(app: str) -> None:
    """Raise UsageError unless ``app`` is a valid Fly app name (lowercase letters, digits, dashes)."""
    if not _APP_NAME.match(app):
        raise UsageError(
            f"app name {app!r} is not valid: use 1-63 lowercase letters, digits and dashes, "
            "not starting or ending with a dash"
        )


def check_region(region: str) -> None:
    """Raise UsageError unless ``region`` looks like a Fly region code (three lowercase letters)."""
    if not _REGION.match(region):
        raise UsageError(f"region {region!r} is not a Fly region code like 'ams' or 'iad'")


def starter_fly_toml(
    app: str | None,
    image_config: Mapping[str, Any] | None,
    existing: str | None,
    *,
    region: str | None = None,
    image_ref: str | None = None,
    check_path: str | None = None,
) -> str:
    """Return fly.toml text for ``app``.

    Without ``existing``: a fresh starter file (rolling deploys, an [http_service] on the image's exposed
    port, with an HTTP check on ``check_path`` when one is given — never a guessed "/" that may answer
    404). With ``existing``: that text with ``app`` (if given), ``region`` and ``image_ref`` set, the
    http_service port set from the image (when the image exposes one), an [http_service] added only if
    the file serves nothing, and a check on ``check_path`` only if the file has no check anywhere (an
    existing [[http_service.checks]] gets the new path instead); all comments and layout are kept.
    The result always passes :func:`~nixfly.fly.flytoml.parse_fly_toml`; ConfigError if the existing
    text is not valid TOML, UsageError for a bad app name or region.
    """
    if app is not None:
        check_app_name(app)
    if region is not None:
        check_region(region)
    if check_path is not None and not check_path.startswith("/"):
        raise UsageError(f"check path {check_path!r} must start with '/'")
    ports = exposed_tcp_ports(image_config or {})
    port = ports[0] if ports else None

    if existing is None:
        if app is None:
            raise UsageError("no app name: pass --app NAME")
        text = _fresh(app, region, image_ref, port, check_path)
    else:
        text = _update(existing, app, region, image_ref, port, check_path)
    # Whatever we write must load; a failure here is our bug or an already-broken file.
    parse_fly_toml(text, source="fly.toml (as it would be written)", warn=lambda _m: None)
    return text


def _fresh(app: str, region: str | None, image_ref: str | None, port: int | None, check_path: str | None) -> str:
    q = _toml_str
    lines = [
        f"# fly.toml for {app}, started by `nixfly init`.",
        "# Reference: https://fly.io/docs/reference/configuration/",
        "",
        f"app = {q(app)}",
    ]
    if region:
        lines.append(f"primary_region = {q(region)}")
    if image_ref:
        lines += ["", "[build]", f"  image = {q(image_ref)}"]
    port_note = "from the image's ExposedPorts" if port else "the image exposes no port; Fly's default"
    lines += [
        "",
        "[deploy]",
        '  strategy = "rolling"',
        "",
        "[http_service]",
        f"  internal_port = {port or DEFAULT_PORT}  # {port_note}",
        "  force_https = true",
        '  auto_stop_machines = "stop"',
        "  auto_start_machines = true",
        "  min_machines_running = 0",
        "",
    ]
    if check_path is None:
        lines += ["  # No health check yet: add one with `nixfly init --force --check-path /healthz`.", ""]
    else:
        lines += [
            "  [[http_service.checks]]",
            '    grace_period = "10s"',
            '    interval = "30s"',
            '    method = "GET"',
            f"    path = {q(check_path)}",
            '    timeout = "5s"',
            "",
        ]
    return "\n".join(lines)


def _toml_str(value: str) -> str:
    return tomlkit.string(value).as_string()


def _starter_check(path: str) -> Table:
    check = tomlkit.table()
    check.update({"grace_period": "10s", "interval": "30s", "method": "GET", "path": path, "timeout": "5s"})
    return check


def _has_check(doc: Any) -> bool:
    """Whether the file already checks the app anywhere: [[http_service.checks]], [checks.*] or a
    [[services]] tcp_checks/http_checks."""
    hs = doc.get("http_service")
    if isinstance(hs, dict) and hs.get("checks"):
        return True
    if doc.get("checks"):
        return True
    services = doc.get("services") or []
    services = [services] if isinstance(services, dict) else services
    return any(isinstance(s, dict) and (s.get("tcp_checks") or s.get("http_checks")) for s in services)


def _update(
    existing: str, app: str | None, region: str | None, image_ref: str | None, port: int | None, check_path: str | None
) -> str:
    try:
        doc = tomlkit.parse(existing)
    except TOMLKitError as e:
        raise ConfigError(f"fly.toml: invalid TOML, not editing it: {e}") from None
    if app is not None:
        doc["app"] = app
    elif "app" not in doc:
        raise UsageError("the existing fly.toml has no app name: pass --app NAME")
    if region is not None:
        doc["primary_region"] = region
    if image_ref is not None:
        build = doc.get("build")
        if isinstance(build, Table):
            build["image"] = image_ref
        else:
            build = tomlkit.table()
            build["image"] = image_ref
            doc["build"] = build

    hs = doc.get("http_service")
    has_services = bool(doc.get("services"))
    if isinstance(hs, Table):
        if port is not None:
            hs["internal_port"] = port
        existing_checks = hs.get("checks")
        if check_path is not None and existing_checks:
            first = existing_checks[0] if isinstance(existing_checks, list) else existing_checks
            if isinstance(first, dict):
                first["path"] = check_path
        elif check_path is not None and not _has_check(doc):
            checks = tomlkit.aot()
            checks.append(_starter_check(check_path))
            hs["checks"] = checks
    elif hs is None and not has_services:
        # Only a file that serves nothing gets an http_service; one with [[services]] knows its ports.
        table = tomlkit.table()
        table.update(
            {
                "internal_port": port or DEFAULT_PORT,
                "force_https": True,
                "auto_stop_machines": "stop",
                "auto_start_machines": True,
                "min_machines_running": 0,
            }
        )
        if check_path is not None and not _has_check(doc):
            checks = tomlkit.aot()
            checks.append(_starter_check(check_path))
            table["checks"] = checks
        doc["http_service"] = table
    return tomlkit.dumps(doc)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (readers see the old file or the new one, never half of one).
    An existing file's permission bits are kept."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    atomic_write_bytes(path if str(path.parent) else Path(".") / path, text.encode("utf-8"), mode=mode)


__all__ = [
    "check_app_name",
    "check_region",
    "exposed_tcp_ports",
    "starter_fly_toml",
    "write_atomic",
]

"""The one place nixfly looks for a Fly.io token: ``FLY_API_TOKEN`` (or flyctl's older
``FLY_ACCESS_TOKEN``), else ``access_token`` in flyctl's ``~/.fly/config.yml``.

Used by the Machines API client and by registry authentication for registry.fly.io. The token is never
put into an error message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nixfly.errors import ConfigError
from nixfly.fsutil import CONFIG_FILE_MAX, read_text_file

TOKEN_ENVS = ("FLY_API_TOKEN", "FLY_ACCESS_TOKEN")


@dataclass(frozen=True)
class FoundToken:
    """A token and where it came from (an environment variable name or the config file's path)."""

    value: str = field(repr=False)
    source: str


def fly_config_path(home: Path) -> Path:
    return home / ".fly" / "config.yml"


def find_fly_token(env: Mapping[str, str], home: Path) -> FoundToken | None:
    """The token from the environment, else from ``~/.fly/config.yml``; None when neither has one.

    ConfigError (naming the file, never its content) when the config file exists but cannot be read.
    """
    for name in TOKEN_ENVS:
        value = env.get(name, "").strip()
        if value:
            return FoundToken(value, name)
    path = fly_config_path(home)
    try:  # a regular file, bounded (flyctl's config is a few lines; never a FIFO's endless wait)
        text = read_text_file(path, CONFIG_FILE_MAX, str(path), ConfigError)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    import yaml  # only when there is a config file to read: PyYAML is not on the start-up path

    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):  # PyYAML recurses per nesting level
        raise ConfigError(f"{path} is not valid YAML") from None
    token = data.get("access_token") if isinstance(data, dict) else None
    if isinstance(token, str) and token.strip():
        return FoundToken(token.strip(), str(path))
    return None

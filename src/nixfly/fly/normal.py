"""MachineConfig in two normal forms: the spec's request shape, and a form for comparing configs.

The Machines API answers in a looser shape than it accepts: ``services[].autostop`` comes back as a
boolean (``true`` for "stop", ``false`` for "off") although requests must use the string enum, and
empty sections the API fills in (``init: {}``, ``dns: {}``) come back where we sent nothing. A deploy
that compared raw configs would restart every machine on every run, and a rollback that sent the config
back as received would not be a valid request.
"""

from __future__ import annotations

import copy
from typing import Any

JSON = dict[str, Any]

# Metadata nixfly keeps on machines outside the config a deploy decides: the release log (releases.py), a
# first deploy's group size and a green machine's blue (plan.py). A difference in them alone is no change.
RELEASES_KEY = "nixfly_releases"
# A machine created by a first deploy: how many machines its group starts with. A re-run after an
# interrupted first deploy creates the ones still missing (the plan counts what the app should have).
GROUP_SIZE_KEY = "nixfly_group_size"
# A bluegreen green machine: the blue machine it replaces. A re-run after an interrupted bluegreen deploy
# finishes the switch instead of starting a second set of greens.
GREEN_FOR_KEY = "nixfly_green_for"
BOOKKEEPING_METADATA = (RELEASES_KEY, GROUP_SIZE_KEY, GREEN_FOR_KEY)
# flyctl's process group of the one-off machine that runs a release command (its fly_process_group).
RELEASE_GROUP = "fly_app_release_command"


def _autostop(value: Any) -> Any:
    if value is True:
        return "stop"
    if value is False:
        return "off"
    return value


def request_form(config: JSON) -> JSON:
    """``config`` (as the API returned it, or as we built it) in the shape the OpenAPI spec requires."""
    out = copy.deepcopy(config)
    for svc in out.get("services") or []:
        if isinstance(svc, dict) and "autostop" in svc:
            svc["autostop"] = _autostop(svc["autostop"])
    return out


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v is not None and v != {} and v != []}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def comparable(config: JSON) -> JSON:
    """The normal form two configs are compared in: request shape, no empty sections or nulls (key order
    never matters for dicts), and without nixfly's bookkeeping metadata."""
    out = request_form(config)
    meta = out.get("metadata")
    if isinstance(meta, dict):
        for key in BOOKKEEPING_METADATA:
            meta.pop(key, None)
    pruned: JSON = _prune(out)
    return pruned


def same_config(a: JSON, b: JSON) -> bool:
    """Whether deploying ``a`` over a machine running ``b`` would change nothing."""
    return comparable(a) == comparable(b)

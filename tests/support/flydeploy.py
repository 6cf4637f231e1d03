"""Set-up the deploy tests share (tests/test_deploy.py, tests/test_deploy_rollback_and_secrets.py): the app
"demo" in the Machines API stand-in, and digest-pinned images of it in a real registry.

Fixtures (function-scoped):

- ``demo_app``: the test's work directory, with the app ``demo`` created in the stand-in that ``fly_env``
  points nixfly at.
- ``demo_images``: ``v1``, ``v2`` (two tags of repository ``demo``) and ``bad`` (``demo-bad:v3``, the repository
  tests make fail), each as a ``name@sha256:…`` reference pushed to the ``registry`` fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    # Imported lazily at run time so that pytest registers (and assert-rewrites) those plugins itself.
    from tests.support.flystandin import RunningStandin
    from tests.support.registry import RunningRegistry


@pytest.fixture
def demo_app(fly_env: RunningStandin, tmp_path: Path) -> Path:
    fly_env.create_app("demo")
    return tmp_path


@pytest.fixture
def demo_images(registry: RunningRegistry, tiny_oci_layout: Path, tmp_path: Path) -> dict[str, str]:
    from tests.support.flystandin import push_tiny_image

    return {
        "v1": push_tiny_image(tiny_oci_layout, registry.host, "demo", "v1", tmp_path),
        "v2": push_tiny_image(tiny_oci_layout, registry.host, "demo", "v2", tmp_path),
        "bad": push_tiny_image(tiny_oci_layout, registry.host, "demo-bad", "v3", tmp_path),
    }

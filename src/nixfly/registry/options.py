"""``RegistryOptions``: how to reach registries. Its own module, free of the HTTP stack, so a command can
parse its registry flags (every ``build`` does) without importing httpx; ``registry.client`` re-exports it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nixfly.registry.auth import Credentials
    from nixfly.retry import RetryPolicy

_MiB = 1 << 20


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries. The defaults are the safe ones: TLS verified, credentials looked up."""

    credentials: Credentials | None = None  # explicit (--creds); None means look them up
    tls_verify: bool = True
    cert_dir: Path | None = None  # a directory of *.crt CA files (skopeo/docker certs.d layout)
    # True: always http; False: never (an explicit --tls-verify=true); None: http only as a fallback for local hosts
    plain_http: bool | None = None
    timeout: float = 60.0  # seconds for connect and for each read/write to make progress
    retries: int = 5  # per request, counted since the last progress
    backoff: float = 0.5  # first backoff in seconds; doubles per attempt
    max_backoff: float = 20.0
    parallel: int = 4  # blob transfers at once
    chunk_size: int = 16 * _MiB  # PATCH size for chunked uploads
    monolithic_max: int = 16 * _MiB  # blobs up to this size go in a single PUT
    env: Mapping[str, str] | None = field(default=None, repr=False)
    home: Path | None = None
    retry: RetryPolicy | None = field(default=None, repr=False)  # overrides retries/backoff (tests: fake clock)
    # Told one line before each retry's wait (the CLI shows it on a terminal); never holds a secret.
    on_retry: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    def retry_policy(self) -> RetryPolicy:
        if self.retry is not None:
            return self.retry
        from nixfly.retry import RetryPolicy  # tenacity and httpx load with the client, not with the flags

        return RetryPolicy(retries=self.retries, backoff=self.backoff, max_backoff=self.max_backoff)


__all__ = ["RegistryOptions"]

"""TLS for registry connections: which CAs a client trusts, built once per process for the same inputs."""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path

from nixfly.errors import UsageError
from nixfly.registry.options import RegistryOptions

_TLS_CONTEXTS: dict[tuple[object, ...], ssl.SSLContext] = {}
_TLS_LOCK = threading.Lock()


def _shared_tls_context(cas: list[Path]) -> ssl.SSLContext:
    """The system trust store plus ``cas``, built once per process for the same inputs: loading the
    system store costs tens of milliseconds, and one command may open a client per registry, per
    referrer push and for the layer index. Keyed by the CA files' identity (path, inode, size, mtime)
    and the variables OpenSSL reads the default store from, so a changed input builds a new context."""
    key: list[object] = [os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")]
    for ca in cas:
        try:
            st = ca.stat()
        except OSError:
            raise UsageError(f"{ca} is not a PEM certificate") from None
        key.append((str(ca), st.st_ino, st.st_size, st.st_mtime_ns))
    with _TLS_LOCK:
        ctx = _TLS_CONTEXTS.get(tuple(key))
        if ctx is None:
            ctx = ssl.create_default_context()
            for ca in cas:
                try:
                    ctx.load_verify_locations(cafile=str(ca))
                except (ssl.SSLError, OSError):
                    raise UsageError(f"{ca} is not a PEM certificate") from None
            _TLS_CONTEXTS[tuple(key)] = ctx
        return ctx


def tls_context(options: RegistryOptions) -> ssl.SSLContext | bool:
    """What a client's connections verify against: nothing with ``--tls-verify=false``, else the system
    trust store plus every ``*.crt`` in ``--cert-dir`` (skopeo's layout)."""
    if not options.tls_verify:
        return False
    cas: list[Path] = []
    cert_dir = options.cert_dir
    if cert_dir is not None:
        try:  # a name too long for the system raises here (ENAMETOOLONG), not "no such directory"
            cas = sorted(p for p in Path(cert_dir).glob("*.crt") if not p.name.endswith(".cert"))
        except OSError as e:
            raise UsageError(f"--cert-dir {cert_dir}: {e.strerror}") from None
        if not Path(cert_dir).is_dir():
            raise UsageError(f"--cert-dir {cert_dir} is not a directory")
        if not cas:
            raise UsageError(f"--cert-dir {cert_dir} holds no *.crt CA file")
    return _shared_tls_context(cas)

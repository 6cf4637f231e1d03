"""Store paths from Nix binary caches: an image of paths that are not in the local store, on any host.

A binary cache (``file://DIR``, ``http://``, ``https://``) holds ``nix-cache-info`` (its StoreDir must
be ours), one ``<hash>.narinfo`` per store path (StorePath, URL, Compression, FileHash, FileSize,
NarHash, NarSize, References, Deriver, Sig) and the compressed NARs. The closure is found by following
References from the roots; paths present in the local store are read from disk (their metadata from
``nix path-info``), only the missing ones come from a cache. Each narinfo's signature is checked before
anything else is fetched: ed25519 over ``1;<storePath>;<narHash>;<narSize>;<refs>`` against the trusted
keys. NARs are downloaded with bounded parallelism into a private directory (HTTP) or read in place
(``file://``), then streamed through the decompressor and the NAR parser into the layer's tar writer;
FileHash/FileSize and NarHash/NarSize are checked when the stream ends, before the layer is committed.
Installables are evaluated for their store path (``nix eval``), never built.

Bounds: FileSize and URL are not signed, NarSize is. A download (or an in-place read) stops at FileSize
when given, and in any case at the most a compressor can make of NarSize bytes (``compressed_limit``),
so a cache that streams without end fills neither memory nor disk. Downloads go into a directory named
after this process (``nars.<pid>.…`` in the cache's tmp dir); the next build removes one whose process
died (``nixfly.build.cache.sweep_stale_temps``). A full disk is one line naming the directory.

The package, by job: ``narinfo`` (narinfo parsing, hash spellings, trusted keys, signatures), ``fetch``
(one cache and its bounded HTTP fetcher, the counting and decompressing streams), ``resolve`` (nix.conf
settings, the build's cache options, closure resolution), ``store`` (``RemoteStore``: NAR fetches and
streams into layers) and ``remotefs`` (``RemoteFS``: listings of remote paths). Nix's base-32 is
``nixfly.nixbase32``. Callers import from this package.
"""

from __future__ import annotations

from nixfly.build.bincache.fetch import BinaryCache
from nixfly.build.bincache.narinfo import (
    BinaryCacheError,
    NarInfo,
    SignatureError,
    TrustedKey,
    parse_narinfo,
    verify_signature,
)
from nixfly.build.bincache.remotefs import RemoteFS
from nixfly.build.bincache.resolve import (
    CacheOptions,
    RemoteClosure,
    cache_options,
    eval_installable,
    read_nix_settings,
    resolve_from_caches,
)
from nixfly.build.bincache.store import RemoteStore, download_size
from nixfly.build.nar import Readable

__all__ = [
    "BinaryCache", "BinaryCacheError", "CacheOptions", "NarInfo", "Readable", "RemoteClosure", "RemoteFS",
    "RemoteStore", "SignatureError", "TrustedKey", "cache_options", "download_size", "eval_installable",
    "parse_narinfo", "read_nix_settings", "resolve_from_caches", "verify_signature",
]  # fmt: skip

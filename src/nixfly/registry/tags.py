"""Listing a repository's tags: ``GET /v2/<name>/tags/list``, page after page by ``Link: <…>; rel="next"``
(distribution spec, "Listing Tags"), with a bound on pages and tags so a registry that pages on for ever
ends here, not at memory's end."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urljoin

import httpx

from nixfly.errors import RegistryError
from nixfly.limits import DEFAULT_MAX, TAGS_MAX
from nixfly.registry.wire import registry_error_text


class TagsClient(Protocol):
    """What a tags listing needs of ``RegistryClient``."""

    def request(
        self,
        method: str,
        path_or_url: str,
        scope: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        stream: bool = False,
        repeatable: bool | None = None,
        limit: int = DEFAULT_MAX,
    ) -> httpx.Response: ...

    def pull_scope(self, repo: str) -> str: ...

    def fail(self, what: str) -> RegistryError: ...


# A tags list that pages on for ever (each page naming a new next page) ends here, not at memory's end.
_MAX_PAGES = 1_000
_MAX_TAGS = 1_000_000


def list_tags(client: TagsClient, repo: str, page_size: int | None = None) -> list[str]:
    """All tags of ``repo``, following ``Link: <…>; rel="next"`` pagination (a next page on another
    host is fetched without credentials, see ``is_own``)."""
    tags: list[str] = []
    url: str | None = f"/v2/{repo}/tags/list"
    params = {"n": str(page_size)} if page_size else None
    seen: set[str] = set()
    while url is not None:
        if len(seen) >= _MAX_PAGES or len(tags) > _MAX_TAGS:
            raise client.fail(f"the tags list of {repo} goes on for more than {len(seen)} pages, "
                              f"{len(tags)} tags; not reading on")  # fmt: skip
        resp = client.request("GET", url, client.pull_scope(repo), params=params, limit=TAGS_MAX)
        params = None  # the Link URL carries its own query
        if resp.status_code == 404:
            text = registry_error_text(resp)
            if "NAME_UNKNOWN" in text or not tags:
                raise client.fail(f"repository {repo} not found")
        if resp.status_code != 200:
            raise client.fail(f"GET tags of {repo}: {registry_error_text(resp)}")
        try:
            page = resp.json().get("tags") or []
            tags.extend(str(t) for t in page)
        except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
            raise client.fail(f"tags list of {repo} is not JSON") from None
        url = _next_link(resp.headers.get("link", ""))
        if url is not None:
            url = urljoin(str(resp.request.url), url)  # relative to the page that named it
            if url in seen:
                break
            seen.add(url)
    return tags


def _next_link(header: str) -> str | None:
    """The target of the ``rel="next"`` link in a ``Link`` header (RFC 8288), if any."""
    for part in header.split(","):
        m = re.match(r"\s*<([^>]+)>\s*;(.*)$", part)
        if m and re.search(r'rel="?next"?', m.group(2)):
            return m.group(1)
    return None

"""Sizes the upstream page did not give, from the files already in the cache.

PEP 700 makes ``size`` mandatory in JSON from api-version 1.1, and an HTML-only upstream gives
none: such a page is served as 1.0 without sizes (never ``null``: uv refuses the page). A file
this server has cached knows its size, so it is filled in: a page whose files are all cached
is complete again. Blocking (a stat per file, a diskcache read for files without a sha256):
call it in a thread, and only for pages that lack sizes.
"""

from __future__ import annotations

import dataclasses

from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.upstream.cache import BlobStore, PageCache, is_sha256

__all__ = ["SizeFiller", "lacks_sizes"]


def lacks_sizes(page: ProjectPage) -> bool:
    return any(f.size is None and f.origin is Origin.UPSTREAM for f in page.files)


class SizeFiller:
    def __init__(self, blobs: BlobStore, pages: PageCache) -> None:
        self.blobs = blobs
        self.pages = pages

    def _size(self, dist: DistFile) -> int | None:
        sha256 = dist.sha256
        if sha256 is None and isinstance(dist.location, str):
            sha256 = self.pages._blob_for_url(dist.location)  # blocking: we are in a thread
        if sha256 is None or not is_sha256(sha256):
            return None
        try:
            return self.blobs.path(sha256).stat().st_size
        except OSError:
            return None

    def __call__(self, page: ProjectPage) -> ProjectPage:
        """The page with the sizes of its cached upstream files filled in."""
        files = list(page.files)
        changed = False
        for index, dist in enumerate(files):
            if dist.size is None and dist.origin is Origin.UPSTREAM:
                size = self._size(dist)
                if size is not None:
                    files[index] = dataclasses.replace(dist, size=size)
                    changed = True
        return dataclasses.replace(page, files=tuple(files)) if changed else page

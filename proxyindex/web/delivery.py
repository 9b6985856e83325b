"""``storage.s3_delivery = "redirect"``: cached upstream files sent by the bucket itself.

A file already in the bucket is answered with a 302 to a presigned GET URL (valid a few
minutes), so the bytes go from the object store (or a CDN in front of it) to the client and
never through a replica. pip and uv follow the redirect and check the file against the
sha256 on the page, as for any file. A file not in the bucket yet is streamed as usual (and
put in the bucket on the way); without a sha256 on the page there is no key, so no redirect.
Clients must be able to reach the bucket's endpoint.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from aiohttp import hdrs, web

from proxyindex.models import DistFile
from proxyindex.upstream.s3blobs import S3BlobStore
from proxyindex.web import appkeys

__all__ = ["bucket_redirect"]

_EXPIRES = timedelta(minutes=10)


async def bucket_redirect(request: web.Request, dist: DistFile) -> web.StreamResponse | None:
    """A 302 to the file in the bucket, or None to send it the usual way."""
    if request.app[appkeys.CONFIG].storage.s3_delivery != "redirect":
        return None
    blobs = request.app[appkeys.BLOBS]
    sha256 = dist.sha256
    if not isinstance(blobs, S3BlobStore) or sha256 is None:
        return None
    url = await asyncio.to_thread(blobs.presigned_url, sha256, _EXPIRES)
    if url is None:
        return None
    # The URL expires: a client or a shared cache must not keep the redirect.
    headers = {hdrs.LOCATION: url, hdrs.CACHE_CONTROL: "no-store"}
    return web.Response(status=302, headers=headers)

"""Typed keys for the application's state (aiohttp ``AppKey``): no module-level singletons."""

from __future__ import annotations

from aiohttp import web

from proxyindex.auth.authenticator import Authenticator, Identity
from proxyindex.config import Config
from proxyindex.index.jsonpages import JsonPages
from proxyindex.index.projects import ProjectIndex
from proxyindex.index.root import RootIndex
from proxyindex.metrics import Metrics
from proxyindex.private.audit import AuditLog
from proxyindex.private.store import PrivateStore
from proxyindex.upstream.cache import BlobStore, PageCache
from proxyindex.upstream.downloads import Downloader
from proxyindex.upstream.pages import PageListener
from proxyindex.upstream.readiness import UpstreamMonitor
from proxyindex.upstream.wheelmeta import WheelMetadata

__all__ = [
    "AUDIT",
    "AUTH",
    "BLOBS",
    "CONFIG",
    "DOWNLOADER",
    "IDENTITY",
    "INDEX",
    "JSON_PAGES",
    "METRICS",
    "PAGES",
    "PAGE_LISTENERS",
    "ROOT",
    "STORAGE",
    "UPSTREAM_CHECK",
    "UPSTREAM_CHECKS",
    "WHEEL_METADATA",
]

CONFIG = web.AppKey("config", Config)
AUTH = web.AppKey("auth", Authenticator)
AUDIT = web.AppKey("audit", AuditLog)
STORAGE = web.AppKey("storage", PrivateStore)
PAGES = web.AppKey("pages", PageCache)
BLOBS = web.AppKey("blobs", BlobStore)
INDEX = web.AppKey("index", ProjectIndex)
JSON_PAGES = web.AppKey("json_pages", JsonPages)
DOWNLOADER = web.AppKey("downloader", Downloader)
WHEEL_METADATA = web.AppKey("wheel_metadata", WheelMetadata)
ROOT = web.AppKey("root", RootIndex)
UPSTREAM_CHECK = web.AppKey("upstream_check", UpstreamMonitor)  # the first upstream's
# Every upstream's check, in order of priority (several upstreams, ``[[upstreams]]``).
UPSTREAM_CHECKS: web.AppKey[tuple[UpstreamMonitor, ...]] = web.AppKey("upstream_checks")
METRICS = web.AppKey("metrics", Metrics)  # Prometheus: one set per app (proxyindex.metrics)
# Told of each page a client's request brought from the upstream (set up before the start).
PAGE_LISTENERS: web.AppKey[list[PageListener]] = web.AppKey("page_listeners")

# Per request: who logged in (set by the auth middleware when a login was checked).
IDENTITY = web.RequestKey("identity", Identity)

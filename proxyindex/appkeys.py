"""Typed keys for the application's state (aiohttp ``AppKey``): no module-level singletons."""

from __future__ import annotations

from aiohttp import web

from proxyindex.auth import Authenticator, Identity
from proxyindex.cache import BlobStore, PageCache
from proxyindex.config import Config
from proxyindex.downloads import Downloader
from proxyindex.index import ProjectIndex
from proxyindex.readiness import UpstreamMonitor
from proxyindex.rootindex import RootIndex
from proxyindex.storage import PrivateStorage

__all__ = [
    "AUTH",
    "BLOBS",
    "CONFIG",
    "DOWNLOADER",
    "IDENTITY",
    "INDEX",
    "PAGES",
    "ROOT",
    "STORAGE",
    "UPSTREAM_CHECK",
]

CONFIG = web.AppKey("config", Config)
AUTH = web.AppKey("auth", Authenticator)
STORAGE = web.AppKey("storage", PrivateStorage)
PAGES = web.AppKey("pages", PageCache)
BLOBS = web.AppKey("blobs", BlobStore)
INDEX = web.AppKey("index", ProjectIndex)
DOWNLOADER = web.AppKey("downloader", Downloader)
ROOT = web.AppKey("root", RootIndex)
UPSTREAM_CHECK = web.AppKey("upstream_check", UpstreamMonitor)

# Per request: who logged in (set by the auth middleware when a login was checked).
IDENTITY = web.RequestKey("identity", Identity)

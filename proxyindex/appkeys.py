"""Typed keys for the application's state (aiohttp ``AppKey``): no module-level singletons."""

from __future__ import annotations

from aiohttp import web

from proxyindex.auth import Authenticator
from proxyindex.cache import BlobStore, PageCache
from proxyindex.config import Config
from proxyindex.downloads import Downloader
from proxyindex.index import ProjectIndex
from proxyindex.rootindex import RootIndex
from proxyindex.storage import PrivateStorage

__all__ = ["AUTH", "BLOBS", "CONFIG", "DOWNLOADER", "INDEX", "PAGES", "ROOT", "STORAGE", "USER"]

CONFIG = web.AppKey("config", Config)
AUTH = web.AppKey("auth", Authenticator)
STORAGE = web.AppKey("storage", PrivateStorage)
PAGES = web.AppKey("pages", PageCache)
BLOBS = web.AppKey("blobs", BlobStore)
INDEX = web.AppKey("index", ProjectIndex)
DOWNLOADER = web.AppKey("downloader", Downloader)
ROOT = web.AppKey("root", RootIndex)
# The user the auth middleware authenticated for this request (for the access log).
USER = web.RequestKey("user", str)

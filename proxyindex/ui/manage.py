"""The web UI's yank, unyank and remove buttons: plain POST forms (no JavaScript), guarded
against cross-site requests with a double-submit token.

A browser sends Basic credentials with every request to the realm, a cross-site form POST
included, so a login alone would let any page a logged-in admin visits remove releases. Each
form therefore carries a random token that must equal the ``pxi_csrf`` cookie (SameSite=Strict,
HttpOnly): another site can make the browser send the cookie, but cannot read it to put it in
the form. A POST without the pair, or with a mismatch, is a 403 and changes nothing.

Who may press them: the ``manage`` action (admins, and users allowed to upload; without
users, people on this host). The project page shows the buttons only to such a viewer, and a
"log in" link otherwise; ``/ui/login`` asks the browser for credentials and goes back.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from pathlib import Path

from aiohttp import hdrs, web

from proxyindex.auth.authenticator import MANAGE
from proxyindex.errors import Forbidden, InvalidRequest, ProxyIndexError
from proxyindex.models import is_valid_name, normalize
from proxyindex.web import admin, appkeys

__all__ = [
    "CSRF_COOKIE",
    "csrf_token",
    "login",
    "manage",
    "set_csrf_cookie",
    "uploaders",
    "viewer_may_manage",
]

CSRF_COOKIE = "pxi_csrf"
_MAX_FORM = 16 << 10
_AUDIT_TAIL = 32 << 20  # bytes of the audit log read for uploaders (the newest lines)


async def viewer_may_manage(request: web.Request) -> bool:
    """Whether the credentials this request carries (if any) allow the ``manage`` action:
    decides if the buttons are shown (the POST is checked again by the auth middleware)."""
    try:
        await request.app[appkeys.AUTH].authorize(
            MANAGE, request.headers.get(hdrs.AUTHORIZATION), request.remote or ""
        )
    except ProxyIndexError:
        return False
    return True


def csrf_token(request: web.Request) -> str:
    """The browser's token (from its cookie), or a new one to set."""
    token = request.cookies.get(CSRF_COOKIE, "")
    return token if len(token) == 43 else secrets.token_urlsafe(32)


def set_csrf_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(
            CSRF_COOKIE,
            token,
            path="/ui/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )


def _check_csrf(request: web.Request, sent: str) -> None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not sent or not secrets.compare_digest(cookie, sent):
        raise Forbidden("missing or wrong form token (CSRF); reload the page and try again")


async def manage(request: web.Request) -> web.StreamResponse:
    """POST /ui/projects/{name}/manage: ``op`` yank, unyank or remove one ``version``; back to
    the project page (303) when done."""
    raw = request.match_info["name"]
    if not is_valid_name(raw):
        raise InvalidRequest(f"not a valid project name: {raw[:100]!r}")
    name = normalize(raw)
    if request.content_length is None or request.content_length > _MAX_FORM:
        raise InvalidRequest("the form is missing or too large")
    form = await request.post()
    _check_csrf(request, str(form.get("csrf", "")))
    version = admin.release_version(str(form.get("version", "")))
    op = form.get("op")
    if op == "yank":
        await admin.set_yank(request, name, version, admin.yank_reason(form.get("reason")))
    elif op == "unyank":
        await admin.set_yank(request, name, version, None)
    elif op == "remove":
        if form.get("confirm") != "yes":
            raise InvalidRequest("tick 'confirm' to remove a release")
        await admin.remove_project(request, name, version)
        storage = request.app[appkeys.STORAGE]
        if not storage.has(name):
            raise web.HTTPSeeOther("/ui/projects/")
    else:
        raise InvalidRequest("op: expected yank, unyank or remove")
    raise web.HTTPSeeOther(f"/ui/projects/{name}/#v{version}")


async def login(request: web.Request) -> web.StreamResponse:
    """GET /ui/login?next=PATH: its action needs a login, so the browser asks for one; once
    given, back to the page (only a path of this UI: never an open redirect)."""
    target = request.query.get("next", "/ui/projects/")
    if not target.startswith("/ui/") or "//" in target or "\\" in target:
        target = "/ui/projects/"
    raise web.HTTPSeeOther(target)


def _read_uploaders(path: Path, project: str) -> dict[str, str]:
    """Blocking: filename -> user of the project's uploads, from the newest part of the
    audit log (the log is the record of who uploaded what; nothing else keeps it)."""
    found: dict[str, str] = {}
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > _AUDIT_TAIL:
                fh.seek(size - _AUDIT_TAIL)
                fh.readline()  # a partial line
            for line in fh:
                if b'"project"' not in line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if (
                    isinstance(event, dict)
                    and event.get("project") == project
                    and event.get("action") in ("upload", "overwrite")
                    and isinstance(event.get("filename"), str)
                ):
                    found[event["filename"]] = str(event.get("user", "-"))
    except OSError:
        return {}
    return found


async def uploaders(request: web.Request, project: str) -> dict[str, str]:
    path = request.app[appkeys.AUDIT].path
    if path is None:
        return {}
    return await asyncio.to_thread(_read_uploaders, path, project)

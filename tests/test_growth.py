"""Issue 9 §2: the cost of a change grows with the change, not with everything stored.

Each test counts the work a change causes (entries rendered, pages built, files listed,
blobs looked at) with a hook on the function that does it; none measures time.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxyindex.index import root as root_module
from proxyindex.models import normalize
from proxyindex.private.storage import PrivateStorage
from tests.conftest import MakeAppClient
from tests.fakepypi import FakePyPI
from tests.test_upload import form, upload
from tests.wheelmaker import make_wheel

JSON = "application/vnd.pypi.simple.v1+json"
ANON = {"anonymous_upload": True}
Client = TestClient[Any, Any]


class Counter:
    def __init__(self) -> None:
        self.calls = 0


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> Counter:
    """Wrap ``owner.name`` so each call is counted."""
    counter = Counter()
    real = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        counter.calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return counter


async def root_names(client: Client) -> list[str]:
    resp = await client.get("/simple/", headers={"Accept": JSON})
    assert resp.status == 200
    return [p["name"] for p in (await resp.json(content_type=None))["projects"]]


# --- the root list ---------------------------------------------------------------------------


async def test_a_new_version_of_a_private_project_does_not_rebuild_the_root(
    make_app_client: MakeAppClient,
    fake_pypi: FakePyPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_pypi.root_names = 3000
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client(auth=ANON)
    assert "corp-lib" in await root_names(client)
    rendered = count_calls(monkeypatch, root_module, "render_root_entry")
    new = make_wheel(tmp_path / "wheels", "corp-lib", "2.0")
    assert (await upload(client, form(new))).status == 200
    names = await root_names(client)
    assert names.count("corp-lib") == 1 and "synthetic-003000" in names
    assert rendered.calls == 0


async def test_a_new_private_name_renders_the_private_names_not_the_upstream_list(
    make_app_client: MakeAppClient,
    fake_pypi: FakePyPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_pypi.root_names = 5000
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client(auth=ANON)
    assert len(await root_names(client)) == 5001
    rendered = count_calls(monkeypatch, root_module, "render_root_entry")
    new = make_wheel(tmp_path / "wheels", "corp-other", "1.0")
    assert (await upload(client, form(new))).status == 200
    names = await root_names(client)
    assert len(names) == len(set(names)) == 5002
    # Two private names, in two formats: nothing of the 5,000 upstream names.
    assert rendered.calls == 4
    gz = await client.get("/simple/", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    html = gzip.decompress(await gz.read()).decode()
    assert html.count('href="corp-other/"') == 1 and html.count('href="synthetic-') == 5000


async def test_a_private_name_that_shadows_an_upstream_one_re_renders_only_its_segment(
    make_app_client: MakeAppClient,
    fake_pypi: FakePyPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_pypi.root_names = 5000
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client(auth=ANON, private={"refuse_shadowing_uploads": False})
    await root_names(client)
    rendered = count_calls(monkeypatch, root_module, "render_root_entry")
    shadow = make_wheel(tmp_path / "wheels", "synthetic-002500", "1.0")
    assert (await upload(client, form(shadow))).status == 200
    names = await root_names(client)
    assert names.count("synthetic-002500") == 1 and len(names) == 5001
    assert names.index("synthetic-002500") < names.index("synthetic-000001")  # private first
    assert 0 < rendered.calls <= 2 * (2 + root_module._SEGMENT)
    plain = (tmp_path / "cache" / "root" / "root.json").read_bytes()
    assert gzip.decompress((tmp_path / "cache" / "root" / "root.json.gz").read_bytes()) == plain
    assert json.loads(plain)["projects"][0] == {"name": "corp-lib"}


def test_an_unsorted_upstream_list_is_sorted_and_without_repeats(tmp_path: Path) -> None:
    names = tmp_path / "upstream-names.txt"
    names.write_text("zeta\nalpha\nzeta\nmid\n")
    root_module.sort_names_file(names)
    assert names.read_text() == "alpha\nmid\nzeta\n"
    part = root_module.build_upstream_part(names, tmp_path / "parts")
    assert part is not None
    assert root_module.shadowed(part, [normalize("Mid"), "other"]) == {"mid"}


# --- per-project invalidation ------------------------------------------------------------------


async def test_an_upload_to_one_project_does_not_rebuild_another_projects_page(
    make_app_client: MakeAppClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in ("1.0", "1.1", "1.2"):
        make_wheel(tmp_path / "packages", "corp-big", version)
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client(auth=ANON)
    first = await client.get("/simple/corp-big/", headers={"Accept": JSON})
    assert first.status == 200
    built = count_calls(monkeypatch, PrivateStorage, "page")
    new = make_wheel(tmp_path / "wheels", "corp-lib", "2.0")
    assert (await upload(client, form(new))).status == 200
    again = await client.get(
        "/simple/corp-big/", headers={"Accept": JSON, "If-None-Match": first.headers["ETag"]}
    )
    assert again.status == 304
    assert built.calls == 0
    # The uploaded project's own page does change.
    lib = await client.get("/simple/corp-lib/", headers={"Accept": JSON})
    assert len((await lib.json(content_type=None))["files"]) == 2
    assert built.calls == 1

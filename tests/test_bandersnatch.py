"""bandersnatch, a mirroring client, mirrors public and private projects through the proxy
(issue 8 §2): simple-API mode reads the root's per-project ``_last-serial``, asks
``/pypi/<name>/json`` for each project with that serial as the minimum it accepts
(``X-PyPI-Last-Serial``: bandersnatch's StalePage check), and downloads every file, checking
its sha256 against the document."""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.clients import client_env, run
from tests.conftest import MakeProxy
from tests.fakepypi import FakePyPI
from tests.wheelmaker import make_wheel

pytestmark = pytest.mark.e2e

BANDERSNATCH = Path(sys.executable).parent / "bandersnatch"


def bandersnatch_config(path: Path, master: str, mirror: Path, *projects: str) -> Path:
    allow = "\n".join(f"    {p}" for p in projects)
    path.write_text(
        f"""[mirror]
directory = {mirror}
master = {master}
api-method = simple
allow-non-https = true
json = false
release-files = true
workers = 1
timeout = 20
global-timeout = 120
stop-on-error = true
hash-index = false
simple-format = ALL
storage-backend = filesystem
verifiers = 1

[plugins]
enabled =
    allowlist_project

[allowlist]
packages =
{allow}
""",
        encoding="utf-8",
    )
    return path


def _until_listed(page_url: str, filename: str, seconds: float = 30.0) -> None:
    """A file dropped into the packages folder is listed once the server's poll saw it."""
    deadline = time.monotonic() + seconds
    while True:
        with urllib.request.urlopen(page_url, timeout=10) as resp:  # noqa: S310 - 127.0.0.1
            if filename in resp.read().decode():
                return
        assert time.monotonic() < deadline, f"{filename} never listed"
        time.sleep(0.2)


def mirrored(mirror: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (mirror / "web" / "packages").rglob("*") if p.is_file()}


def test_bandersnatch_mirrors_a_public_and_a_private_project_and_then_what_changed(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    public = [
        fake_pypi.add_wheel("Public.Lib", "1.0"),
        fake_pypi.add_sdist("Public.Lib", "1.0"),
        fake_pypi.add_wheel("Public.Lib", "1.1"),
    ]
    fake_pypi.add_wheel("not-mirrored", "1.0")  # in the root, outside the allowlist
    proxy = make_proxy(upstream={"prefetch": False})
    packages = proxy.config.parent / "packages"
    private = [make_wheel(packages, "corp-lib", "1.0")]
    mirror = client_tmp / "mirror"
    config = bandersnatch_config(
        client_tmp / "bandersnatch.conf", proxy.url, mirror, "public-lib", "corp-lib"
    )
    env = client_env(client_tmp)

    run([BANDERSNATCH, "--config", config, "mirror"], env, client_tmp, timeout=180)
    got = mirrored(mirror)
    assert got == {p.name: p.read_bytes() for p in public + private}
    assert (mirror / "web" / "simple" / "corp-lib" / "index.html").exists()
    first_serial = int((mirror / "status").read_text().strip())

    # A new private release after the first sync: the next run sees its serial as newer.
    private.append(make_wheel(packages, "corp-lib", "2.0"))
    _until_listed(proxy.index_url + "corp-lib/", private[-1].name)  # the poll: within ~2 s
    run([BANDERSNATCH, "--config", config, "mirror"], env, client_tmp, timeout=180)
    assert mirrored(mirror) == {p.name: p.read_bytes() for p in public + private}
    assert int((mirror / "status").read_text().strip()) > first_serial

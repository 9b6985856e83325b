"""The Docker image's exact entrypoint and healthcheck, run outside Docker (no engine here).

The Dockerfile is parsed, not copied: its ENV defaults, its ENTRYPOINT argv and its HEALTHCHECK
command are what run, with ``/data`` and ``/etc/proxyindex`` mapped to temp folders.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clients import client_env, run, run_pip_install
from tests.fakepypi import FakePyPI
from tests.serverproc import REPO_ROOT
from tests.wheelmaker import make_wheel

pytestmark = pytest.mark.e2e


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO_ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_runs_as_non_root_with_a_data_volume_and_healthcheck() -> None:
    instructions = dict(dockerfile_instructions())
    assert instructions["FROM"].startswith("python:3.1") and "slim" in instructions["FROM"]
    assert instructions["USER"] not in ("root", "0")
    assert json.loads(instructions["VOLUME"]) == ["/data"]
    assert instructions["EXPOSE"] == "8080"
    assert "/health" in instructions["HEALTHCHECK"]


def test_image_entrypoint_serves_from_a_data_folder(
    tmp_path: Path, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    data = tmp_path / "data"
    etc = tmp_path / "etc-proxyindex"
    env = {k: v for k, v in client_env(tmp_path / "env").items() if not k.startswith("PROXYINDEX")}
    entrypoint: list[str] = []
    healthcheck: list[str] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for assignment in shlex.split(rest):
                key, _, value = assignment.partition("=")
                env[key] = value.replace("/data", str(data))
        elif keyword == "COPY" and rest.endswith("/etc/proxyindex/config.toml"):
            etc.mkdir()
            shutil.copy(REPO_ROOT / rest.split()[0], etc / "config.toml")
        elif keyword == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif keyword == "HEALTHCHECK":
            healthcheck = json.loads(rest.partition("CMD ")[2])
    assert entrypoint[:2] == ["proxyindex", "serve"]
    argv = [a.replace("/etc/proxyindex", str(etc)) for a in entrypoint]
    argv[0] = str(Path(sys.executable).with_name("proxyindex"))
    # Only the port (any free one) and the upstream (the fake) differ from the image.
    env.update(PROXYINDEX_SERVER_PORT="0", PROXYINDEX_UPSTREAM_URL=fake_pypi.simple_url)
    (data / "packages").mkdir(parents=True)
    make_wheel(data / "packages", "corp-lib", "1.0")
    fake_pypi.add_wheel("dep-one", "1.0")
    server = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        match = re.search(r"listening on http://[^:]+:(\d+)", line)
        assert match, line
        port = match.group(1)
        url = f"http://127.0.0.1:{port}"
        health_env = {**env, "PROXYINDEX_SERVER_PORT": port}
        run(healthcheck, health_env, cwd=tmp_path, timeout=10)
        report = run_pip_install(
            client_tmp, f"{url}/simple/", "corp-lib", "dep-one", target=client_tmp / "t"
        )
        assert report.versions() == {"corp-lib": "1.0", "dep-one": "1.0"}
        assert any((data / "cache" / "files").rglob("*"))
    finally:
        server.terminate()
        server.wait(timeout=10)
    failing = run(healthcheck, health_env, cwd=tmp_path, timeout=10, check=False)
    assert failing.returncode != 0

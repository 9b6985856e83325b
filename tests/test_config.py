"""The shipped config.toml documents the embedded defaults; bad input names the key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from proxyindex.config import DEFAULT_UPSTREAM, Config, ConfigError, as_toml, load_config

REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_toml_equals_the_embedded_defaults() -> None:
    shipped = tomllib.loads((REPO / "config.toml").read_text(encoding="utf-8"))
    assert shipped == as_toml(Config())


def test_every_key_in_config_toml_has_a_comment() -> None:
    lines = (REPO / "config.toml").read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[number - 1].startswith("#"), f"no comment above {line!r}"


def test_public_pypi_is_the_default_upstream() -> None:
    assert Config().upstream.url == DEFAULT_UPSTREAM == "https://pypi.org/simple/"


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[server]\nprot = 1\n", "server.prot"),
        ("[servr]\nport = 1\n", "servr"),
        ('[server]\nport = "80"\n', "server.port"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nworkers = 0\n", "server.workers"),
        ("[upstream]\npage_ttl = -5\n", "upstream.page_ttl"),
        ('[upstream]\nurl = "ftp://x/"\n', "upstream.url"),
        ("[private]\nallow_overwrite = 1\n", "private.allow_overwrite"),
        ('[private]\nreserved = "acme-*"\n', "private.reserved"),
        ('[auth]\nprotect = ["everything"]\n', "auth.protect"),
        ("[storage]\npackages_dir = 1\n", "storage.packages_dir"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_key_or_value_raises_an_error_naming_it(tmp_path: Path, toml: str, named: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(path)


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.toml"
    path.parent.mkdir()
    path.write_text('[storage]\npackages_dir = "pk"\n', encoding="utf-8")
    assert load_config(path).storage.packages_dir == tmp_path / "sub" / "pk"


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[server]\nport = 1000\n[upstream]\npage_ttl = 5\n", encoding="utf-8")
    environ = {
        "PROXYINDEX_SERVER_PORT": "2000",
        "PROXYINDEX_PRIVATE_RESERVED": '["Acme_*"]',
        "PROXYINDEX_PRIVATE_ALLOW_OVERWRITE": "true",
        "PROXYINDEX_UPSTREAM_URL": "http://127.0.0.1:9/simple",
        "PROXYINDEX_AUTH_HTPASSWD": str(tmp_path / "ht"),
    }
    config = load_config(path, environ=environ, overrides={"server": {"port": 3000}})
    assert config.server.port == 3000
    assert config.upstream.page_ttl == 5
    assert config.private.reserved == ("acme-*",)
    assert config.private.allow_overwrite is True
    assert config.upstream.url == "http://127.0.0.1:9/simple/"
    assert config.auth.htpasswd == tmp_path / "ht"


def test_unknown_environment_setting_is_an_error() -> None:
    with pytest.raises(ConfigError, match="PROXYINDEX_NOPE_X"):
        load_config(None, environ={"PROXYINDEX_NOPE_X": "1"})
    with pytest.raises(ConfigError, match=r"server\.portt"):
        load_config(None, environ={"PROXYINDEX_SERVER_PORTT": "1"})


def test_cli_stops_on_a_bad_config_with_a_one_line_message(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[upstream]\npage_ttl = 'soon'\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "proxyindex", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "proxyindex: configuration error: upstream.page_ttl: expected a whole number >= 0, "
        "got 'soon'"
    ]

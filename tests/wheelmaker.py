"""Build real, installable wheels and sdists in pure Python, with deterministic bytes.

Tests need distributions that pip and uv accept (valid RECORD, dist-info, filename), and the
same input must give the same bytes so hashes can be asserted and files re-added without the
serial or ETag changing. A build backend would be slow and would stamp the current time, so
the archives are written here by hand with fixed timestamps and a fixed member order.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
import zipfile
from email.parser import BytesParser
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.utils import canonicalize_name
from packaging.version import Version

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "dist_metadata",
    "escape_name",
    "make_sdist",
    "make_wheel",
    "sdist_metadata",
    "sha256_file",
    "wheel_metadata",
]

# The earliest timestamp a zip member can carry; any fixed value makes the bytes reproducible.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# 2020-01-01T00:00:00Z, for tar members and the gzip header.
_TAR_MTIME = 1577836800


def escape_name(name: str) -> str:
    """Return the name as it appears in wheel/sdist filenames and dist-info dirs.

    Binary distribution format spec: normalise, then replace ``-`` with ``_``.
    """
    return canonicalize_name(name).replace("-", "_")


def _escape_version(version: str) -> str:
    # Normalised PEP 440 form; a local version's "-" is never present after normalisation.
    return str(Version(version)).replace("-", "_")


def _metadata(
    name: str,
    version: str,
    requires_dist: Sequence[str],
    requires_python: str | None,
    description: str | None = None,
) -> bytes:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines.append(f"Summary: {name} built by tests/wheelmaker.py")
    if requires_python is not None:
        lines.append(f"Requires-Python: {requires_python}")
    lines.extend(f"Requires-Dist: {req}" for req in requires_dist)
    if description is not None:  # the long description: the message body (Metadata 2.1)
        lines.append("Description-Content-Type: text/markdown")
        return ("\n".join(lines) + "\n\n" + description).encode()
    return ("\n".join(lines) + "\n\n").encode()


def _default_modules(name: str, version: str) -> dict[str, str]:
    return {f"{escape_name(name)}/__init__.py": f'__version__ = "{version}"\n'}


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def _zip_write(zf: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def make_wheel(
    dest_dir: Path,
    name: str,
    version: str,
    *,
    requires_dist: Sequence[str] = (),
    requires_python: str | None = None,
    modules: Mapping[str, str] | None = None,
    tag: str = "py3-none-any",
    description: str | None = None,
) -> Path:
    """Write ``{name}-{version}-{tag}.whl`` into ``dest_dir`` and return its path.

    ``description`` becomes the METADATA body, a Markdown long description.

    ``modules`` maps archive paths to source text; by default one package
    ``{import_name}/__init__.py`` defining ``__version__``. ``name`` is written verbatim into
    METADATA (so a display name like ``Foo.Bar`` survives), the filename uses the escaped form.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    dist = f"{escape_name(name)}-{_escape_version(version)}"
    dist_info = f"{dist}.dist-info"
    files = dict(_default_modules(name, version) if modules is None else modules)
    wheel_file = (
        "Wheel-Version: 1.0\n"
        "Generator: tests.wheelmaker\n"
        "Root-Is-Purelib: true\n" + "".join(f"Tag: {t}\n" for t in _expand_tag(tag))
    )
    members: list[tuple[str, bytes]] = [(path, text.encode()) for path, text in files.items()]
    members.append(
        (
            f"{dist_info}/METADATA",
            _metadata(name, version, requires_dist, requires_python, description),
        )
    )
    members.append((f"{dist_info}/WHEEL", wheel_file.encode()))
    record_lines = [f"{path},{_record_hash(data)},{len(data)}" for path, data in members]
    record_lines.append(f"{dist_info}/RECORD,,")
    members.append((f"{dist_info}/RECORD", ("\n".join(record_lines) + "\n").encode()))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, data in members:
            _zip_write(zf, path, data)
    out = dest_dir / f"{dist}-{tag}.whl"
    out.write_bytes(buf.getvalue())
    return out


def _expand_tag(tag: str) -> list[str]:
    """Expand a compressed tag set (``py2.py3-none-any``) into the WHEEL file's Tag lines."""
    pythons, abis, platforms = tag.split("-")
    return [
        f"{py}-{abi}-{plat}"
        for py in pythons.split(".")
        for abi in abis.split(".")
        for plat in platforms.split(".")
    ]


def _tar_add(tf: tarfile.TarFile, arcname: str, data: bytes) -> None:
    info = tarfile.TarInfo(arcname)
    info.size = len(data)
    info.mtime = _TAR_MTIME
    info.mode = 0o644
    info.uname = info.gname = ""
    tf.addfile(info, io.BytesIO(data))


def make_sdist(
    dest_dir: Path,
    name: str,
    version: str,
    *,
    requires_dist: Sequence[str] = (),
    requires_python: str | None = None,
    modules: Mapping[str, str] | None = None,
) -> Path:
    """Write a PEP 625 sdist ``{escaped_name}-{version}.tar.gz`` and return its path.

    It holds PKG-INFO, a setuptools ``pyproject.toml`` and the modules under ``src/``, so a
    real frontend could build it, given setuptools on the index it installs from.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    base = f"{escape_name(name)}-{_escape_version(version)}"
    pkg_info = _metadata(name, version, requires_dist, requires_python)
    deps = ", ".join(_toml_str(r) for r in requires_dist)
    pyproject = (
        "[build-system]\n"
        'requires = ["setuptools>=61"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        "[project]\n"
        f"name = {_toml_str(name)}\n"
        f"version = {_toml_str(version)}\n"
        f"dependencies = [{deps}]\n"
    )
    if requires_python is not None:
        pyproject += f"requires-python = {_toml_str(requires_python)}\n"
    files = _default_modules(name, version) if modules is None else modules
    members: list[tuple[str, bytes]] = [
        (f"{base}/PKG-INFO", pkg_info),
        (f"{base}/pyproject.toml", pyproject.encode()),
    ]
    members.extend((f"{base}/src/{path}", text.encode()) for path, text in files.items())

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, data in members:
            _tar_add(tf, path, data)
    out = dest_dir / f"{base}.tar.gz"
    # gzip via GzipFile so the header mtime is fixed (tarfile's "w:gz" stamps the clock).
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=_TAR_MTIME) as g:
        g.write(raw.getvalue())
    out.write_bytes(gz.getvalue())
    return out


def _toml_str(value: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(value)


_DIST_INFO_METADATA = re.compile(r"[^/]+\.dist-info/METADATA")


def wheel_metadata(path: Path) -> bytes:
    """Return the exact bytes of the wheel's ``*.dist-info/METADATA`` (what PEP 658 serves)."""
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if _DIST_INFO_METADATA.fullmatch(n)]
        if len(names) != 1:
            raise ValueError(f"{path.name}: expected one .dist-info/METADATA, found {names}")
        return zf.read(names[0])


def sdist_metadata(path: Path) -> bytes:
    """Return the bytes of the sdist's top-level ``PKG-INFO``."""
    with tarfile.open(path, "r:gz") as tf:
        for member in tf.getmembers():
            parts = member.name.split("/")
            if len(parts) == 2 and parts[1] == "PKG-INFO" and member.isfile():
                extracted = tf.extractfile(member)
                if extracted is not None:
                    return extracted.read()
    raise ValueError(f"{path.name}: no top-level PKG-INFO")


def dist_metadata(path: Path) -> dict[str, list[str]]:
    """Parse a wheel's METADATA or an sdist's PKG-INFO into ``{field: [values]}``."""
    raw = wheel_metadata(path) if path.name.endswith(".whl") else sdist_metadata(path)
    msg = BytesParser().parsebytes(raw, headersonly=True)
    fields: dict[str, list[str]] = {}
    for key, value in msg.items():
        fields.setdefault(key, []).append(str(value))
    return fields


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, as PEP 503 ``#sha256=`` and PEP 691 ``hashes`` carry it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()

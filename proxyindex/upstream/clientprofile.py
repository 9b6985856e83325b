"""What an installer tells about itself in its ``User-Agent``, for fetching ahead on its behalf.

pip and uv send a JSON "linehaul" document after their name (``pip/26.3 {...}``, ``uv/0.13.9
{...}``): the Python version and implementation, the CPU, the OS and its libc. From it follows
the set of wheel tags the client will accept, so fetch-ahead takes the wheel this client will
ask for, not the one the server's own interpreter would (a server on Linux/3.12 serving Windows
laptops on 3.11 would otherwise fetch the wrong 30 MB of numpy for every cold install). uv also
names its subcommand: ``uv lock`` and ``uv pip compile`` read metadata only and never download a
distribution, so fetching files ahead for them is pure waste (measured on the real PyPI: 7 wheels,
34 MB, for one ``uv lock``).

The profile of the request being served travels in a :class:`~contextvars.ContextVar`: the page
handler sets it, the upstream page fetch it starts runs in a task that copies the context, and the
prefetcher reads it when it hears of the page. Nothing global: each request's task has its own.
"""

from __future__ import annotations

import contextvars
import json
from dataclasses import dataclass, field
from functools import lru_cache

from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms

__all__ = ["CLIENT", "ClientProfile", "profile_from_user_agent"]

# uv subcommands that resolve without downloading any distribution file.
_METADATA_ONLY_UV = frozenset({("lock",), ("pip", "compile"), ("tree",), ("export",)})
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
_WINDOWS = {"amd64": "win_amd64", "x86_64": "win_amd64", "arm64": "win_arm64", "x86": "win32"}


@dataclass(frozen=True, slots=True)
class ClientProfile:
    """An installer as far as fetch-ahead cares: what it will install, and whether it will
    download files at all. ``tags`` ranks the acceptable wheel tags, most preferred first; an
    empty mapping means "unknown platform" (fetch-ahead then uses the server's own tags)."""

    installer: str  # "pip", "uv", or "" when the User-Agent says nothing useful
    python: str | None  # "3.11.7"
    platform: str  # the best platform tag ("manylinux_2_36_x86_64"); "" if unknown
    wants_files: bool
    # Derived from the fields above, so left out of equality: profiles compare (and hash) as
    # "the same kind of client", which is what "already fetched ahead for it" needs.
    tags: dict[Tag, int] = field(default_factory=dict, compare=False)
    markers: dict[str, str] = field(default_factory=dict, compare=False)  # PEP 508 environment


UNKNOWN = ClientProfile("", None, "", True)

CLIENT: contextvars.ContextVar[ClientProfile] = contextvars.ContextVar(
    "proxyindex_client", default=UNKNOWN
)


@lru_cache(maxsize=256)
def profile_from_user_agent(user_agent: str | None) -> ClientProfile:
    """Pure (and memoised: a fleet sends a handful of distinct strings). Anything that does not
    parse gives :data:`UNKNOWN`; a User-Agent is client input and never an error."""
    if not user_agent or " " not in user_agent:
        return UNKNOWN
    product, _, rest = user_agent.partition(" ")
    installer = product.split("/", 1)[0].lower()
    if installer not in ("pip", "uv"):
        return UNKNOWN
    try:
        data = json.loads(rest)
    except ValueError:
        return UNKNOWN
    if not isinstance(data, dict):
        return UNKNOWN
    python = _text(data.get("python"))
    wants_files = True
    if installer == "uv":
        sub = _dig(data, "installer", "subcommand")
        if isinstance(sub, list) and tuple(str(s) for s in sub) in _METADATA_ONLY_UV:
            wants_files = False
    tags = _tags(data, python)
    platform = next(iter(tags)).platform if tags else ""
    return ClientProfile(installer, python, platform, wants_files, tags, _markers(data, python))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _dig(data: dict[str, object], *keys: str) -> object:
    node: object = data
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _version(text: str | None, parts: int) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        numbers = tuple(int(p) for p in text.split(".")[:parts])
    except ValueError:
        return None
    return numbers if len(numbers) == parts else None


def _platforms(data: dict[str, object]) -> list[str]:
    """Platform tags, best first, as the client itself would compute them."""
    system = _text(_dig(data, "system", "name")) or ""
    cpu = (_text(data.get("cpu")) or "").lower()
    if not cpu:
        return []
    if system == "Linux":
        out: list[str] = []
        lib = _text(_dig(data, "distro", "libc", "lib"))
        libc = _version(_text(_dig(data, "distro", "libc", "version")), 2)
        if lib == "glibc" and libc is not None and libc[0] == 2:
            for minor in range(libc[1], 4, -1):
                out.append(f"manylinux_2_{minor}_{cpu}")
                if minor in _LEGACY_MANYLINUX:
                    out.append(f"{_LEGACY_MANYLINUX[minor]}_{cpu}")
        elif lib == "musl" and libc is not None and libc[0] == 1:
            out.extend(f"musllinux_1_{minor}_{cpu}" for minor in range(libc[1], -1, -1))
        return [*out, f"linux_{cpu}"]
    if system == "Darwin":
        mac = _version(_text(_dig(data, "distro", "version")), 2)
        if mac is None:
            return []
        return list(mac_platforms((mac[0], mac[1]), "arm64" if cpu == "arm64" else "x86_64"))
    if system == "Windows" and cpu in _WINDOWS:
        return [_WINDOWS[cpu]]
    return []


_SYS_PLATFORM = {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}


def _markers(data: dict[str, object], python: str | None) -> dict[str, str]:
    """The PEP 508 marker environment of the client, so fetch-ahead follows the dependencies
    it will install (``pywin32; sys_platform == "win32"`` for a Windows client only). Empty
    when the User-Agent lacks any of it: the server's own environment is used then."""
    system = _text(_dig(data, "system", "name"))
    implementation = _text(_dig(data, "implementation", "name"))
    version = _version(python, 2)
    if system not in _SYS_PLATFORM or implementation is None or version is None or not python:
        return {}
    return {
        "python_version": f"{version[0]}.{version[1]}",
        "python_full_version": python,
        "implementation_name": implementation.lower(),
        "implementation_version": _text(_dig(data, "implementation", "version")) or python,
        "platform_python_implementation": implementation,
        "sys_platform": _SYS_PLATFORM[system],
        "platform_system": system,
        "os_name": "nt" if system == "Windows" else "posix",
        "platform_machine": _text(data.get("cpu")) or "",
        "platform_release": _text(_dig(data, "system", "release")) or "",
    }


def _tags(data: dict[str, object], python: str | None) -> dict[Tag, int]:
    if _text(_dig(data, "implementation", "name")) != "CPython":
        return {}
    version = _version(python, 2)
    platforms = _platforms(data)
    if version is None or not platforms:
        return {}
    ordered = [
        *cpython_tags((version[0], version[1]), platforms=platforms),
        *compatible_tags((version[0], version[1]), f"cp{version[0]}{version[1]}", platforms),
    ]
    ranks: dict[Tag, int] = {}
    for tag in ordered:
        ranks.setdefault(tag, len(ranks))
    return ranks

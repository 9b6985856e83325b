"""A tiny example package: the thing you upload to a private index to check it works."""

from __future__ import annotations

__all__ = ["sample_print_stmt"]


def sample_print_stmt(s: str) -> str:
    """Print ``s`` and return it, so callers (and tests) can check both the output and the value."""
    print(s)
    return s

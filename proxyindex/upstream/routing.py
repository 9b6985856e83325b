"""Which upstream a project name comes from: pins, then "first index", never a guess.

Pure rules, tested as tables, used by :class:`proxyindex.upstream.router.UpstreamRouter`.
Private storage comes before all of this (``policy.owner_of``): a private name never gets here.

- A name **pinned** to an upstream (its ``projects`` list) comes from that upstream only:
  its 404 is the answer, and while it is down nothing else is asked. An ``explicit``
  upstream serves nothing but its pins (PyTorch's index also has numpy: never from there).
- An unpinned name comes from the **first** upstream (in config order, among those without
  pins) that has it; pages are never merged across upstreams. This is what uv calls
  ``first-index``: an attacker who publishes an internal name on a later index gains nothing.
- A 404 from one upstream moves on to the next.
- An upstream that is **down** (refused, timed out, 5xx, with nothing cached for the name —
  a cached page or a cached 404 is still an answer) makes the answer unknown: the name may be
  exactly the one it serves, and the next upstream's project of that name could be anyone's.
  The walk goes on past it only when the name is remembered as served by a later upstream
  (``served_by``, kept on disk with the page cache); otherwise the request fails with the
  down upstream's 502/504.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from proxyindex.config import UpstreamSource

__all__ = ["Answer", "Ask", "NotFound", "Serve", "Step", "Unknown", "candidates", "next_step"]


class Answer(Enum):
    HAS = "has"  # a project page (fresh, or stale while it is down)
    LACKS = "lacks"  # a 404, fresh or remembered
    DOWN = "down"  # failed with nothing cached for the name


@dataclass(frozen=True, slots=True)
class Ask:
    upstream: str


@dataclass(frozen=True, slots=True)
class Serve:
    upstream: str


@dataclass(frozen=True, slots=True)
class NotFound:
    """Every candidate said 404 (or a pinned name's upstream did)."""


@dataclass(frozen=True, slots=True)
class Unknown:
    """``upstream`` is down and may be the one that serves the name: fail, don't fall through."""

    upstream: str


Step = Ask | Serve | NotFound | Unknown


def candidates(name: str, sources: Sequence[UpstreamSource]) -> tuple[str, ...]:
    """The upstreams that may serve ``name`` (normalised), in order: the one it is pinned to
    (the first pinning one, if patterns overlap), else every upstream but the ``explicit``
    ones (those serve their pins only)."""
    for source in sources:
        if source.pins(name):
            return (source.name,)
    return tuple(source.name for source in sources if not source.explicit)


def next_step(order: Sequence[str], answers: Mapping[str, Answer], served_by: str | None) -> Step:
    """What to do next for a name, given the answers so far (``order`` from
    :func:`candidates`) and the upstream remembered as having served it, if any."""
    for position, upstream in enumerate(order):
        answer = answers.get(upstream)
        if answer is None:
            return Ask(upstream)
        if answer is Answer.HAS:
            return Serve(upstream)
        if answer is Answer.DOWN and served_by not in order[position + 1 :]:
            return Unknown(upstream)
        # LACKS, or DOWN for a name a later upstream is known to serve: go on.
    return NotFound()

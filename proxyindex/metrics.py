"""Prometheus metrics: the one object that holds them (``Metrics``, one per app, on an AppKey).

Each event is counted where it happens, with a one-line call on this object (a request in the
web middleware, a cache lookup in ``upstream.pages`` / ``upstream.downloads``, an upstream GET
in ``upstream.client``, a change of private files through the audit log, a refused login in
the auth middleware). Numbers that describe shared state (cache size, private projects) are
not counted but read when ``/metrics`` is scraped (:class:`StateCollector`).

Two modes, chosen by the process, never by an import:

- one process (the default, and every app a test builds): the metrics live in a registry of
  their own, so several apps in one Python process never clash on prometheus-client's
  global default registry;
- ``serve --workers N``: :func:`enable_multiprocess` (called once by the CLI before it forks)
  switches prometheus-client to its multiprocess mode, where each worker writes its values
  to memory-mapped files in a private folder and a scrape, whichever worker answers it, adds
  up every worker's files. That switch is prometheus-client's own process-wide setting
  (``PROMETHEUS_MULTIPROC_DIR`` and its value class): the only global state involved.

Labels are bounded by construction: a route is the route table's path template (never the
raw URL), a status a class (``2xx``), an upstream the configured upstream's name, a reason
an exception class name or one of a few fixed words.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxyindex.errors import Forbidden, TooManyRequests, UpstreamError

__all__ = [
    "CONTENT_TYPE",
    "Metrics",
    "State",
    "StateCollector",
    "Totals",
    "UpstreamCall",
    "enable_multiprocess",
    "mark_dead",
    "multiprocess_dir",
    "status_class",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "proxyindex"
# Seconds. Cached pages answer in ~1 ms, a cold page or file waits for the upstream (100 ms
# to seconds); 30 s is the upstream timeout.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_METHODS = frozenset({"GET", "HEAD", "POST"})


def status_class(status: int) -> str:
    """``404`` -> ``"4xx"`` (pure): one label value per class, not per status."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def method_label(method: str) -> str:
    """The request method, or ``other`` for anything a client may invent (pure)."""
    return method if method in _METHODS else "other"


class Metrics:
    """Every metric proxyindex exports. Create one per app; ``registry`` holds them in the
    one-process mode (in multiprocess mode the scrape reads the workers' files instead)."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = _PREFIX
        self.requests = Counter(
            f"{p}_http_requests",
            "HTTP requests answered, by route template, method and status class.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            f"{p}_http_request_duration_seconds",
            "Time to produce a response (a streamed body is sent after), by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.served_bytes = Counter(
            f"{p}_http_response_bytes",
            "Bytes of response bodies sent (their Content-Length), by route template.",
            ["route"],
            registry=r,
        )
        self.cache = Counter(
            f"{p}_cache_requests",
            "Upstream pages and files asked for, by result: hit, miss (fetched from the "
            "upstream, for a client or the prefetcher), revalidated (a 304 from the upstream), "
            "stale (served while the upstream fails).",
            ["cache", "result"],
            registry=r,
        )
        self.joins = Counter(
            f"{p}_single_flight_joins",
            "Requests that joined an upstream fetch already running instead of starting one.",
            ["cache"],
            registry=r,
        )
        self.prefetch_hits = Counter(
            f"{p}_prefetch_hits",
            "Client requests for a file the prefetcher had fetched or started ahead.",
            registry=r,
        )
        self.upstream_requests = Counter(
            f"{p}_upstream_requests",
            "Requests sent to an upstream index, by upstream and answer status class.",
            ["upstream", "status"],
            registry=r,
        )
        self.upstream_errors = Counter(
            f"{p}_upstream_errors",
            "Upstream requests that failed (timeout, refused, bad status, bad body), by reason.",
            ["upstream", "reason"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            f"{p}_upstream_request_duration_seconds",
            "Time until an upstream answered with its headers.",
            ["upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fetched_bytes = Counter(
            f"{p}_upstream_bytes",
            "Bytes received from an upstream (pages decoded, files as stored).",
            ["upstream"],
            registry=r,
        )
        self.downloads_in_flight = Gauge(
            f"{p}_downloads_in_flight",
            "Upstream file downloads running now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.private_changes = Counter(
            f"{p}_private_changes",
            "Changes to private packages as the audit log records them, by action "
            "(upload, upload-same, overwrite, remove, release, yank, unyank, purge).",
            ["action"],
            registry=r,
        )
        self.auth_failures = Counter(
            f"{p}_auth_failures",
            "Requests refused by the auth rules, by reason: login_required (no credentials), "
            "bad_credentials, forbidden (logged in, not allowed), not_local (/metrics).",
            ["reason"],
            registry=r,
        )
        self.policy_files = Counter(
            f"{p}_policy_files",
            "Upstream files a supply-chain policy hid, yanked or denied, by rule and verdict; "
            "each file counted once per process, when first decided (snapshots not counted).",
            ["rule", "verdict"],
            registry=r,
        )
        self.policy_refusals = Counter(
            f"{p}_policy_refusals",
            "Requests answered 404 or 403 by a supply-chain policy (pages, files, JSON API), "
            "by rule.",
            ["rule"],
            registry=r,
        )
        self.throttled = Counter(
            f"{p}_auth_throttled",
            "Requests refused with 429 because their client failed too many logins.",
            registry=r,
        )

        # Labelled children, looked up once: ``labels()`` validates and locks on every call
        # (5 us against 1.4 us for the child's ``inc``, measured on the 2-core test machine);
        # the label values are bounded, so are these.
        self._answered: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._served: dict[str, Counter] = {}
        self._lookups: dict[tuple[str, str], Counter] = {}

    # -- events: one-line calls where they happen ----------------------------------------

    def answered(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request answered (``route``: the route template)."""
        key = (route, method_label(method), status_class(status))
        children = self._answered.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(route))
            self._answered[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def served(self, route: str, size: int) -> None:
        """A response body of ``size`` bytes is on its way."""
        child = self._served.get(route)
        if child is None:
            child = self._served[route] = self.served_bytes.labels(route)
        child.inc(size)

    def cache_lookup(self, cache: str, result: str) -> None:
        child = self._lookups.get((cache, result))
        if child is None:
            child = self._lookups[cache, result] = self.cache.labels(cache, result)
        child.inc()

    def joined(self, cache: str) -> None:
        self.joins.labels(cache).inc()
        self.cache_lookup(cache, "miss")

    def policy_decided(self, rule: str, verdict: str) -> None:
        """The guard decided a file's fate for the first time in this process."""
        self.policy_files.labels(rule, verdict).inc()

    def policy_refused(self, rule: str) -> None:
        """A request refused by a supply-chain policy."""
        self.policy_refusals.labels(rule or "policy").inc()

    def audited(self, action: str) -> None:
        self.private_changes.labels(action).inc()

    def refused(self, exc: Exception, credentials: bool) -> None:
        """A request the auth rules refused: 429 (throttled) or a failure by reason."""
        if isinstance(exc, TooManyRequests):
            self.throttled.inc()
        elif isinstance(exc, Forbidden):
            self.auth_failures.labels("forbidden").inc()
        else:
            reason = "bad_credentials" if credentials else "login_required"
            self.auth_failures.labels(reason).inc()

    def upstream_call(self, upstream: str) -> UpstreamCall:
        """Count one upstream request: ``with metrics.upstream_call(name) as call:`` around
        it, ``call.answered(response)`` when its headers arrive."""
        return UpstreamCall(self, upstream)

    # -- the scrape ------------------------------------------------------------------------

    def _collect(self) -> Iterable[Metric]:
        if self.multiprocess_dir is None:
            return self.registry.collect()
        collector = multiprocess.MultiProcessCollector(None, str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        result: Iterable[Metric] = collector.collect()  # type: ignore[no-untyped-call]
        return result

    def totals(self) -> Totals:
        """The counters summed over their labels (blocking in multiprocess mode: a thread)."""
        sums: dict[tuple[str, str, str], float] = {}
        for metric in self._collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    key = (sample.name, labels.get("cache", ""), labels.get("result", ""))
                    sums[key] = sums.get(key, 0.0) + sample.value

        def total(name: str, cache: str | None = None, result: str | None = None) -> int:
            return int(
                sum(
                    v
                    for (n, c, r), v in sums.items()
                    if n == f"{_PREFIX}_{name}_total" and cache in (None, c) and result in (None, r)
                )
            )

        cache = "cache_requests"
        return Totals(
            requests=total("http_requests"),
            page_hits=total(cache, "page", "hit"),
            page_misses=total(cache, "page", "miss") + total(cache, "page", "revalidated"),
            page_stale=total(cache, "page", "stale"),
            file_hits=total(cache, "file", "hit"),
            file_misses=total(cache, "file", "miss"),
            joins=total("single_flight_joins", "page") + total("single_flight_joins", "file"),
            prefetch_hits=total("prefetch_hits"),
            served_bytes=total("http_response_bytes"),
            fetched_bytes=total("upstream_bytes"),
            upstream_requests=total("upstream_requests"),
            upstream_errors=total("upstream_errors"),
        )

    def exposition(self, state: Collector | None = None) -> bytes:
        """The text format of every metric, plus ``state`` (read now). Blocking in
        multiprocess mode (it reads every worker's files): call it in a thread."""
        if self.multiprocess_dir is None:
            registry = self.registry
            if state is not None:
                registry = CollectorRegistry(auto_describe=False)
                registry.register(_Both(self.registry, state))
            return generate_latest(registry)
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry, str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        if state is not None:
            registry.register(state)
        return generate_latest(registry)


@dataclass(frozen=True, slots=True)
class Totals:
    """Counts since the server started, every worker's added up (the web UI's cache page)."""

    requests: int
    page_hits: int
    page_misses: int  # misses and revalidations: the upstream was asked
    page_stale: int
    file_hits: int
    file_misses: int
    joins: int
    prefetch_hits: int
    served_bytes: int
    fetched_bytes: int
    upstream_requests: int
    upstream_errors: int

    @property
    def hit_rate(self) -> float | None:
        """Hits among page and file lookups, in percent; None before the first lookup."""
        hits = self.page_hits + self.file_hits
        lookups = hits + self.page_misses + self.page_stale + self.file_misses
        return hits * 100 / lookups if lookups else None


class _Response(Protocol):
    """What an upstream call needs of aiohttp's ``ClientResponse``."""

    @property
    def status(self) -> int: ...

    @property
    def content(self) -> _Stream: ...


class _Stream(Protocol):
    @property
    def total_bytes(self) -> int: ...


class UpstreamCall:
    """One upstream request being counted: its answer's status class and latency (to the
    headers), its body's bytes (however much was read), its error if it failed."""

    __slots__ = ("_metrics", "_response", "_started", "_upstream")

    def __init__(self, metrics: Metrics, upstream: str) -> None:
        self._metrics = metrics
        self._upstream = upstream
        self._started = time.perf_counter()
        self._response: _Response | None = None

    def __enter__(self) -> UpstreamCall:
        return self

    def answered(self, response: _Response) -> None:
        m, name = self._metrics, self._upstream
        m.upstream_requests.labels(name, status_class(response.status)).inc()
        m.upstream_latency.labels(name).observe(time.perf_counter() - self._started)
        self._response = response

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        m, name = self._metrics, self._upstream
        if self._response is not None:
            m.fetched_bytes.labels(name).inc(self._response.content.total_bytes)
        elif exc is not None and not isinstance(exc, asyncio.CancelledError | GeneratorExit):
            m.upstream_requests.labels(name, "error").inc()
        if isinstance(exc, UpstreamError):
            m.upstream_errors.labels(name, type(exc).__name__).inc()


class _Both(Collector):
    """A registry's metrics and one more collector, for one scrape."""

    def __init__(self, registry: CollectorRegistry, extra: Collector) -> None:
        self._registry = registry
        self._extra = extra

    def collect(self) -> Iterable[Metric]:
        yield from self._registry.collect()
        yield from self._extra.collect()


@dataclass(frozen=True, slots=True)
class State:
    """Numbers about shared state, read at scrape time (the same in every worker)."""

    cache_bytes: int | None
    cache_files: int | None
    cache_max_bytes: int
    private_projects: int
    private_files: int


class StateCollector(Collector):
    """Gauges of a :class:`State` measured just before the scrape (cheap: no folder walk)."""

    def __init__(self, state: State) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self._state
        p = _PREFIX
        rows: list[tuple[str, str, int | None]] = [
            (
                "cache_size_bytes",
                "Bytes of upstream files in the cache (measured at most once a minute).",
                s.cache_bytes,
            ),
            ("cache_files", "Upstream files in the cache (as cache_size_bytes).", s.cache_files),
            (
                "cache_max_size_bytes",
                "storage.cache_max_size (0: no limit).",
                s.cache_max_bytes,
            ),
            ("private_projects", "Private projects.", s.private_projects),
            ("private_files", "Private distribution files.", s.private_files),
        ]
        for name, documentation, value in rows:
            if value is not None:
                yield GaugeMetricFamily(f"{p}_{name}", documentation, value=value)


def multiprocess_dir(cache_dir: Path) -> Path:
    """This server's folder for the workers' metric files, ``<cache>/metrics/<pid>``, with
    the folders of servers no longer running removed (blocking). Per process: two servers
    sharing one cache folder must not add up (or wipe) each other's metrics."""
    base = cache_dir / "metrics"
    if base.is_dir():
        for old in base.iterdir():
            if old.name.isdigit() and not _running(int(old.name)):
                shutil.rmtree(old, ignore_errors=True)
    return base / str(os.getpid())


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def enable_multiprocess(directory: Path) -> None:
    """Switch this process (and the workers it forks next) to prometheus-client's
    multiprocess mode, with ``directory`` emptied first: values of an earlier run must not
    be added to this one's. Call it once, before any ``Metrics`` exists (blocking)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def mark_dead(directory: Path) -> Callable[[int], None]:
    """What the supervisor calls when a worker exits: its live gauges (downloads in flight)
    stop counting; its counters stay, so totals never go down."""

    def dead(pid: int) -> None:
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]

    return dead

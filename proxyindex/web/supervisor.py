"""The master process of ``serve --workers N``: fork the workers, replace any that dies, stop
them all on SIGTERM/SIGINT.

Before, a worker that died was not replaced (3 -> 2 -> 1 workers), and the master exited
silently when the last one died. The master now waits for its signals with ``sigtimedwait``
(SIGCHLD, SIGTERM, SIGINT blocked, so none is lost between two checks and no handler runs at
an awkward moment), logs each death with its exit status and forks a replacement. A worker
that dies within ``_QUICK_DEATH`` seconds of its start counts towards a crash loop, and the
next replacement waits longer each time (0.5 s doubling up to ``_MAX_BACKOFF``), so a broken
disk or config does not fork hundreds of processes a second. On SIGTERM/SIGINT the signal is
passed on, the master waits for every worker (SIGKILL after ``_STOP_GRACE`` seconds) and
exits 0: no orphans. Workers also stop by themselves if the master is killed outright.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable

__all__ = ["Supervisor", "describe_status"]

log = logging.getLogger(__name__)

_SIGNALS = frozenset({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT})
_QUICK_DEATH = 10.0  # seconds: a worker dying sooner than this after its start is crash-looping
_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
_STOP_GRACE = 30.0  # seconds workers get to finish on SIGTERM before they are killed
_TICK = 1.0

# Runs in a forked worker; calls its argument (if not None) once it accepts connections.
Worker = Callable[[Callable[[], None] | None], None]


def describe_status(status: int) -> str:
    """``os.waitpid``'s status in words: "exit status 1", "signal 9 (SIGKILL)" (pure)."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "?"
    return f"signal {-code} ({name})"


class Supervisor:
    """Run ``count`` copies of ``worker`` in forked processes until SIGTERM/SIGINT."""

    def __init__(
        self, count: int, worker: Worker, on_exit: Callable[[int], None] | None = None
    ) -> None:
        self._count = count
        self._worker = worker
        self._on_exit = on_exit  # told each worker's pid once it has exited (the metrics)
        self._children: dict[int, float] = {}  # pid -> monotonic start time
        self._due: list[float] = []  # monotonic times at which to fork a replacement
        self._quick_deaths = 0
        self._stopping_since: float | None = None

    def run(self, on_ready: Callable[[], None]) -> int:
        """Fork the workers, call ``on_ready`` once all accept connections, then supervise.
        Returns the exit status: 0 after a signal, 1 if the workers could not start."""
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            if not self._start_all():
                log.error("workers failed to start; stopping")
                self._stop(signal.SIGTERM)
                self._wait_all()
                return 1
            on_ready()
            self._supervise()
            return 0
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

    def _start_all(self) -> bool:
        """Fork the first workers; True once each one said it accepts connections."""
        ready_read, ready_write = os.pipe()
        for _ in range(self._count):
            self._fork(ready_write, ready_read)
        os.close(ready_write)
        started = 0
        try:
            while started < self._count:
                got = os.read(ready_read, self._count)
                if not got:  # every worker either reported or died: some died
                    break
                started += len(got)
        finally:
            os.close(ready_read)
        return started == self._count

    def _fork(self, ready_write: int | None = None, ready_read: int | None = None) -> int:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                if ready_read is not None:
                    os.close(ready_read)

                def ready() -> None:
                    if ready_write is not None:
                        os.write(ready_write, b".")
                        os.close(ready_write)  # so the master sees EOF once all are done

                self._worker(ready if ready_write is not None else None)
            except BaseException:
                traceback.print_exc(file=sys.stderr)
                code = 1
            finally:
                os._exit(code)
        self._children[pid] = time.monotonic()
        return pid

    def _supervise(self) -> None:
        while True:
            self._reap()
            if self._stopping_since is not None:
                if not self._children:
                    return
                if time.monotonic() - self._stopping_since > _STOP_GRACE:
                    log.warning("workers still running after %.0f s: killing", _STOP_GRACE)
                    self._stop(signal.SIGKILL)
                    self._wait_all()
                    return
            else:
                self._replace_due()
            timeout = _TICK
            if self._due and self._stopping_since is None:
                timeout = max(0.0, min(_TICK, min(self._due) - time.monotonic()))
            info = signal.sigtimedwait(list(_SIGNALS), timeout)
            if info is not None and info.si_signo != signal.SIGCHLD:
                if self._stopping_since is None:
                    log.info("stopping %d worker(s)", len(self._children))
                    self._stopping_since = time.monotonic()
                    self._due.clear()
                self._stop(info.si_signo)

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                return
            if pid == 0:
                return
            started = self._children.pop(pid, None)
            if self._on_exit is not None:
                self._on_exit(pid)
            if started is None or self._stopping_since is not None:
                continue
            lived = time.monotonic() - started
            if lived < _QUICK_DEATH:
                self._quick_deaths += 1
                delay = min(_MAX_BACKOFF, _FIRST_BACKOFF * 2 ** (self._quick_deaths - 1))
            else:
                self._quick_deaths = 0
                delay = 0.0
            log.warning(
                "worker %d exited (%s) after %.1f s; starting a new one in %.1f s",
                pid,
                describe_status(status),
                lived,
                delay,
            )
            self._due.append(time.monotonic() + delay)

    def _replace_due(self) -> None:
        now = time.monotonic()
        for when in sorted(self._due):
            if when > now:
                break
            self._due.remove(when)
            pid = self._fork()
            log.info("worker %d started", pid)

    def _stop(self, signum: int) -> None:
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _wait_all(self) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._children.clear()

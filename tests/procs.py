"""What every helper process of the tests (moto, nginx, a forward proxy) shares: how it stops,
and ``with`` blocks that start and stop it."""

from __future__ import annotations

import subprocess
from types import TracebackType
from typing import Any, Self

__all__ = ["ManagedProcess", "stop_process"]


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it lingers past ``timeout``; reaped either way."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ManagedProcess:
    """A helper started with :meth:`start` and stopped with :meth:`stop`, also as ``with``."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

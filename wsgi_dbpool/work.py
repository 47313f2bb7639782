"""``Work``: one unit of work a pool serves (a request, a ``checkout()`` block, a task)."""

from __future__ import annotations

from typing import Any

from .errors import PoolError


class Work:
    """One unit of work (a request, a ``checkout()`` block, a task): how long it waits at
    the cap, what it is called in the logs, and where a wait that timed out inside the
    work is reported (so the middleware can answer 503 rather than 500).

    A request's work keeps its method and path, not its environ: the environ holds the
    work (``quiet.WORK_KEY``), and a reference back would make every request a cycle,
    its whole graph (request, response) left for the garbage collector to find."""

    __slots__ = ("kind", "method", "name", "path", "timed_out", "timeout")

    def __init__(
        self, timeout: float | None, environ: dict[str, Any] | None = None, name: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.timeout = timeout
        # The request's (None for checkout() and greenlets): its label, and its view's.
        if environ is None:
            self.method = self.path = None
        else:
            self.method = environ.get("REQUEST_METHOD")
            self.path = environ.get("PATH_INFO")
        self.name = name
        # What the once-per-kind warnings key on when the name is one run's (a task's id).
        self.kind = kind
        self.timed_out: PoolError | None = None  # a wait timed out, or the breaker refused

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
        if self.method is None and self.path is None:
            return "work outside a request"
        return f"{self.method} {self.path}"

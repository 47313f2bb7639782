"""``Work``: one unit of work a pool serves (a request, a ``checkout()`` block, a task)."""

from __future__ import annotations

from typing import Any

from .errors import PoolError


class Work:
    """One unit of work (a request, a ``checkout()`` block, a task): how long it waits at
    the cap, what it is called in the logs, and where a wait that timed out inside the
    work is reported (so the middleware can answer 503 rather than 500)."""

    __slots__ = ("environ", "kind", "name", "timed_out", "timeout")

    def __init__(
        self, timeout: float | None, environ: dict[str, Any] | None = None, name: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.timeout = timeout
        self.environ = environ  # the request's, or None for checkout() and greenlets
        self.name = name
        # What the once-per-kind warnings key on when the name is one run's (a task's id).
        self.kind = kind
        self.timed_out: PoolError | None = None  # a wait timed out, or the breaker refused

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
        if self.environ is None:
            return "work outside a request"
        return f"{self.environ.get('REQUEST_METHOD')} {self.environ.get('PATH_INFO')}"

"""Quiet logs at the cap: one WARNING line per alias now and then, not one per 503.

Under a burst past ``max_outstanding`` every request that waits ``timeout`` in vain is
answered ``503`` with ``Retry-After``: hundreds a second. Two things would flood the
logs (and an error tracker fed by them):

- our own WARNING per 503: :class:`UnavailableLog` writes one line per alias at most
  every :data:`EVERY` seconds, with how many 503s it left out since the last one;
- with ``hold="lazy"``/``"transaction"``, the wait that times out runs inside the view,
  so the :class:`~wsgi_dbpool.PoolTimeout` escapes it and Django logs
  ``Internal Server Error`` with a traceback on ``django.request`` before the middleware
  replaces its 500 by the 503 (so does ``fail_fast``'s
  :class:`~wsgi_dbpool.DatabaseUnavailable`, while the breaker is open).
  :class:`DropAnswered503` is a :class:`logging.Filter` on that logger (Python's and
  Django's documented seam) that drops exactly those records: the exception is the very
  ``PoolError`` the request's wait raised, and the record is Django's 500 for it. Every
  other record, real 500s included, goes through.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from . import _concurrency
from .errors import PoolError, PoolTimeout

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

logger = logging.getLogger("wsgi_dbpool")

# Seconds between two WARNING lines about the 503s of one alias.
EVERY = 10.0
# Where the middleware leaves the request's unit of work (``work.Work``) in the environ.
WORK_KEY = "wsgi_dbpool.work"


class UnavailableLog:
    """Logs the 503s at the cap: the first of each alias, then one line per ``EVERY`` s."""

    def __init__(self) -> None:
        self._guard = _concurrency.new_guard_lock()
        self._next: dict[str, float] = {}  # alias: when the next line may be written
        self._left_out: dict[str, int] = {}  # alias: 503s not logged since the last line

    def note(self, exc: PoolTimeout, environ: WSGIEnvironment) -> None:
        now = time.monotonic()
        with self._guard:  # no I/O inside: the line is written after
            if now < self._next.get(exc.alias, now):
                self._left_out[exc.alias] = self._left_out.get(exc.alias, 0) + 1
                return
            self._next[exc.alias] = now + EVERY
            left_out = self._left_out.pop(exc.alias, 0)
        logger.warning(
            "503 for %s %s: no connection for %r within %.3fs (max_outstanding=%s)%s",
            environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
            exc.alias, exc.waited, exc.max_outstanding,
            f"; {left_out} more 503(s) for {exc.alias!r} not logged since the last line"
            if left_out else "",
        )


class DropAnswered503(logging.Filter):
    """On ``django.request``: drops Django's 500 record for a ``PoolTimeout`` (or, with
    ``fail_fast``'s breaker open, a ``DatabaseUnavailable``) the middleware answers with a
    503 instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, PoolError) or getattr(record, "status_code", None) != 500:
            return True
        meta = getattr(getattr(record, "request", None), "META", None)
        work: Any = meta.get(WORK_KEY) if isinstance(meta, dict) else None
        # The middleware answers 503 exactly when the request's own wait timed out
        # (work.timed_out) and Django answered 500: this record.
        return work is None or work.timed_out is not exc


def drop_answered_503s() -> None:
    """Install :class:`DropAnswered503` on ``django.request`` (once per process)."""
    django_request = logging.getLogger("django.request")
    if not any(isinstance(f, DropAnswered503) for f in django_request.filters):
        django_request.addFilter(DropAnswered503())

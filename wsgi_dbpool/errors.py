"""The errors this library raises: one class per failure mode."""

from __future__ import annotations

from typing import Any


class PoolError(Exception):
    """Base class of every error raised by :mod:`wsgi_dbpool`."""

    __module__ = "wsgi_dbpool"  # as users import and see it: wsgi_dbpool.PoolError


class PoolTimeout(PoolError):
    """No connection could be had within ``timeout`` because ``max_outstanding`` were in use.

    The middleware turns this into a ``503 Service Unavailable`` with ``Retry-After``;
    :meth:`PoolingMiddleware.checkout` lets it propagate to the caller.
    """

    __module__ = "wsgi_dbpool"

    def __init__(self, alias: str, waited: float, max_outstanding: int | None) -> None:
        self.alias = alias
        self.waited = waited
        self.max_outstanding = max_outstanding
        super().__init__(
            f"no connection for database alias {alias!r} after waiting {waited:.3f}s: "
            f"all {max_outstanding} allowed by max_outstanding are in use; raise "
            f"max_outstanding or timeout, or lower the server's concurrency "
            f"(gunicorn --worker-connections)"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # pickled with its arguments (Celery, multiprocessing)
        return (type(self), (self.alias, self.waited, self.max_outstanding))


class SessionStateError(PoolError):
    """A statement would read session state from another unit of work's connection, or
    (``session_state="raise"``) would leave state on its session.

    Raised at the statement, before it runs; the message names the statement and the fix
    (usually: run the statements together inside ``transaction.atomic()``).
    """

    __module__ = "wsgi_dbpool"
class TooManyWaiting(PoolTimeout):
    """``max_waiting`` requests already wait at the cap: this one is turned away at once.

    A :class:`PoolTimeout` that waited 0 s, so that everything answering a timeout with
    a 503 (the middleware, ``autoretry_for=(PoolTimeout,)``) answers this one the same.
    """

    __module__ = "wsgi_dbpool"

    def __init__(self, alias: str, waiting: int, max_outstanding: int | None) -> None:
        PoolError.__init__(
            self,
            f"no connection for database alias {alias!r}: all {max_outstanding} allowed by "
            f"max_outstanding are in use and {waiting} request(s) already wait (max_waiting); "
            f"turned away at once. Raise max_waiting or max_outstanding, or add capacity",
        )
        self.alias = alias
        self.waited = 0.0
        self.max_outstanding = max_outstanding
        self.waiting = waiting

    def __reduce__(self) -> tuple[Any, ...]:  # pickled with its arguments (Celery, multiprocessing)
        return (type(self), (self.alias, self.waiting, self.max_outstanding))


class DatabaseUnavailable(PoolError):
    """The database of ``alias`` could not be reached a moment ago (its breaker is open):
    no connect is tried until a background probe succeeds, ``retry_after`` seconds or so
    from now. The middleware answers ``503`` with ``Retry-After``; ``checkout()`` and a
    statement inside a view raise it."""

    __module__ = "wsgi_dbpool"

    def __init__(self, alias: str, retry_after: float, cause: str) -> None:
        self.alias = alias
        self.retry_after = retry_after
        self.cause = cause
        super().__init__(
            f"database alias {alias!r} is unreachable ({cause}); not trying to connect for "
            f"another {retry_after:.1f}s (fail_fast). Check that the server is up and "
            f"reachable; fail_fast=False makes every request try (and wait) instead"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # pickled with its arguments (Celery, multiprocessing)
        return (type(self), (self.alias, self.retry_after, self.cause))


class MaxHoldExceeded(PoolError):
    """The connection this unit of work held was taken back: it was held longer than
    ``max_hold`` seconds (a request stuck inside a transaction, say).

    Its server session was ended, so its open transaction was rolled back, and its slot
    went to the next request. Inside Django it reaches the work as Django's
    ``OperationalError`` carrying this message (raised from this error): every later
    statement, commit or rollback of the work on that connection fails with it.
    """

    __module__ = "wsgi_dbpool"

    def __init__(self, alias: str, max_hold: float, held: float) -> None:
        self.alias = alias
        self.max_hold = max_hold
        self.held = held
        super().__init__(
            f"max_hold={max_hold:g}s took back this unit of work's connection of database "
            f"alias {alias!r} after {held:.1f}s: its server session was ended, its open "
            f"transaction rolled back (nothing of it was committed) and the slot given to the "
            f"next request. Keep transactions short (do slow work such as HTTP calls outside "
            f"transaction.atomic()), use hold='transaction', or raise max_hold"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # pickled with its arguments (Celery, multiprocessing)
        return (type(self), (self.alias, self.max_hold, self.held))

"""The errors this library raises: one class per failure mode."""

from __future__ import annotations


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


class SessionStateError(PoolError):
    """A statement would read session state from another unit of work's connection, or
    (``session_state="raise"``) would leave state on its session.

    Raised at the statement, before it runs; the message names the statement and the fix
    (usually: run the statements together inside ``transaction.atomic()``).
    """

    __module__ = "wsgi_dbpool"

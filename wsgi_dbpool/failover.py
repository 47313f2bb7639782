"""Failover detection: the errors that say a connection points at the wrong server.

After a managed-MySQL or Aurora failover, pooled connections still reach the demoted
node, which answers pings but refuses writes; after a PostgreSQL switchover the old
primary shuts sessions down. The error must be noted when the statement fails: at
the end of the request Django pings a connection that had an error and forgets the
error if the ping works, which a read-only server's does. So pooled wrappers carry
:func:`watch`, a statement hook shaped as a Django ``execute_wrapper`` (run around the
user's ``execute_wrappers``, not in that list: see ``_internals.hook_cursors``), which
writes the reason on the wrapper; the return-path verdict then closes that
connection and the alias's idle ones (see :mod:`wsgi_dbpool.verdict`). The reason is
kept in the wrapper's record (:mod:`wsgi_dbpool.record`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .drivers import failover_reason


def failover_error(exc: BaseException) -> str | None:
    """Why ``exc`` (Django's wrapped error, or the driver's) means a failover; None if not
    (each driver's errors: :meth:`wsgi_dbpool.drivers.Driver.failover_reason`)."""
    for error in (exc, exc.__cause__):
        if error is not None:
            reason = failover_reason(error)
            if reason is not None:
                return reason
    return None


def note(record: Any, exc: BaseException) -> None:
    """Write the failover reason of ``exc`` (if it is one) on the failing wrapper's record."""
    reason = failover_error(exc)
    if reason is not None:
        record.failover = reason


def watch(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Statement hook: note a failover error on the wrapper, then re-raise. (With the
    session-state watch on, that watch notes it instead: one hook per statement.)"""
    try:
        return execute(sql, params, many, context)
    except Exception as exc:
        note(context["connection"]._wsgi_dbpool, exc)  # its record
        raise

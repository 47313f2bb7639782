"""Failover detection: the errors that say a connection points at the wrong server.

After a managed-MySQL or Aurora failover, pooled connections still reach the demoted
node, which answers pings but refuses writes; after a PostgreSQL switchover the old
primary shuts sessions down. The error must be noted when the statement fails: at
the end of the request Django pings a connection that had an error and forgets the
error if the ping works, which a read-only server's does. So pooled wrappers carry
:func:`watch`, a Django ``execute_wrapper`` (the public per-connection hook), which
writes the reason on the wrapper; the return-path verdict then closes that
connection and the alias's idle ones (see :mod:`wsgi_dbpool.verdict`). The reason is
kept in the wrapper's record (:mod:`wsgi_dbpool.record`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# MySQL / MariaDB error numbers (the first argument of the driver's error).
MYSQL_ERRORS = {
    1290: "the server runs with --read-only",  # ER_OPTION_PREVENTS_STATEMENT
    1792: "the transaction is read-only",  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    1836: "the server is in read-only mode",  # ER_READ_ONLY_MODE
    2006: "the server has gone away",  # CR_SERVER_GONE_ERROR
    2013: "the connection to the server was lost",  # CR_SERVER_LOST
}
# PostgreSQL SQLSTATEs.
POSTGRES_ERRORS = {
    "25006": "the transaction is read-only",  # read_only_sql_transaction
    "57P01": "the server is shutting down",  # admin_shutdown
}


def failover_error(exc: BaseException) -> str | None:
    """Why ``exc`` (Django's wrapped error, or the driver's) means a failover; None if not."""
    for error in (exc, exc.__cause__):
        if error is None:
            continue
        args = error.args
        if args and isinstance(args[0], int) and args[0] in MYSQL_ERRORS:
            return f"MySQL error {args[0]}: {MYSQL_ERRORS[args[0]]}"
        # psycopg 3: ``sqlstate``; psycopg2: ``pgcode``.
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if state in POSTGRES_ERRORS:
            return f"SQLSTATE {state}: {POSTGRES_ERRORS[state]}"
    return None


def watch(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Django ``execute_wrapper``: note a failover error on the wrapper, then re-raise."""
    try:
        return execute(sql, params, many, context)
    except Exception as exc:
        reason = failover_error(exc)
        if reason is not None:
            context["connection"]._wsgi_dbpool.failover = reason  # its record
        raise

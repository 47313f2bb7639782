"""Every private detail of Django, asgiref and the drivers that this library relies on.

Public seams are preferred everywhere (``connections.create_connection``, the
``connection_created`` signal, the wrapper's own ``close``/``rollback``/
``set_autocommit``/``init_connection_state``); what no public seam offers is read or
written here, and only here, so that an upgrade is one read of this header.
Tested with Django 4.2 and 5.2 (LTS), asgiref 3.8+, PyMySQL 1.1 and 1.2, psycopg 3.1+,
Python's sqlite3, on Python 3.11.

========================================  ==============================================
private detail                            why
========================================  ==============================================
``BaseDatabaseWrapper._thread_ident``     Django refuses a wrapper used from a thread
                                          (greenlet) other than its owner; ownership
                                          moves with the checkout (:func:`set_owner`),
                                          and a returned wrapper is owned by nobody, so
                                          a greenlet that kept a stale binding fails
                                          loudly instead of sharing a socket.
``ConnectionHandler._connections``        the greenlet-local behind ``connections``;
``asgiref.local.Local._storage``          asgiref's plain thread-local inside it, used
(``_ThreadCriticalLocal``)                directly when no event loop runs (what asgiref
                                          itself does then): 1 µs a request saved, and
                                          the object the ``--preload`` repair replaces.
``BaseDatabaseWrapper.close_at``          the expiry Django computes from ``CONN_MAX_AGE``
                                          at connect; read by the verdict, and cleared
                                          when ``max_lifetime`` replaces that rule.
``BaseDatabaseWrapper.connect``,          wrapped on each pooled wrapper instance (not
``execute_wrappers``                      the class) to time connects; the failover
                                          watch is put first in the (public) list.
``BaseDatabaseWrapper._set_autocommit``   replays the server's autocommit after a
                                          session reset without Django's bookkeeping.
PyMySQL ``Connection.server_status``      in memory after every reply: bit 0x1 "in
                                          transaction", bit 0x2 "autocommit" (the MySQL
                                          protocol's ``SERVER_STATUS_*``).
PyMySQL ``Connection._result``            an unbuffered result still on the wire
``.unbuffered_active``                    (``SSCursor``): the next command would first
                                          drain it, or fail; cleared when we close the
                                          connection, so the cursor does not read on.
PyMySQL ``Connection._execute_command``,  ``COM_RESET_CONNECTION``, which PyMySQL has no
``_read_ok_packet``                       public call for.
PyMySQL ``Connection.db``, ``charset``,   what ``connect()`` set up, replayed after a
``collation``, ``sql_mode``,              session reset so that the connection is like
``init_command``                          a fresh one.
``BaseDatabaseWrapper`` flags:            a front wrapper (``hold="lazy"``/``"transaction"``)
``in_atomic_block``, ``savepoint_ids``,   lends its transaction state to the carrier the
``atomic_blocks``, ``needs_rollback``,    verdict judges, and is reset between units of
``closed_in_transaction``,                work (:func:`copy_transaction_state`,
``errors_occurred``, ``commit_on_exit``,  :func:`reset_transaction_state`); ``close_at``
``run_on_commit``, ``savepoint_state``,   and ``health_check_done`` move with the raw
``close_at``, ``health_check_done``       connection.
``connect``, ``get_autocommit``,          overridden on front wrappers only (instance
``set_autocommit``, ``close``             attributes on objects the pool made): attach,
                                          read a flag without connecting, detach at the
                                          end of ``atomic()``, give the slot back.
``BaseDatabaseWrapper.execute_wrappers``  Django's documented ``execute_wrapper`` list,
                                          appended to on front wrappers for good.
``utils.CursorWrapper.cursor``            the driver cursor inside Django's cursor,
                                          replaced when it belongs to an earlier
                                          attachment's connection.
driver cursor ``.connection``             (DB-API extension; through Django's MySQL
                                          cursor wrapper by ``__getattr__``) which raw
                                          connection a cursor runs on.
``ConnectionHandler.create_connection``   replaced on ``django.db.connections`` itself
                                          (an instance attribute) while a middleware
                                          with ``hold != "request"`` exists: a gevent
                                          greenlet's first use of a pooled alias gets a
                                          front wrapper, under the cap.
========================================  ==============================================

Public driver state read here too (and in :mod:`~wsgi_dbpool.alias_pool`, which asks
PyMySQL's ``get_server_info()`` whether the server is MariaDB for ``statement_timeout``):
PyMySQL ``open``; psycopg 3 ``closed``, ``broken``,
``autocommit``, ``info.transaction_status``; psycopg2 ``closed``, ``autocommit``,
``get_transaction_status()``; sqlite3 ``in_transaction``, ``isolation_level``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("wsgi_dbpool")

# The owner of a wrapper that sits in the pool: no greenlet's ident is 0.
NOBODY = 0


def set_owner(wrapper: Any, ident: int) -> None:
    """Make greenlet (or thread) ``ident`` the only one Django lets use ``wrapper``."""
    wrapper._thread_ident = ident


def thread_local_storage(local: Any) -> Any:
    """asgiref's plain thread-local inside ``connections._connections``, or None."""
    if type(local).__name__ != "_ThreadCriticalLocal":
        return None
    return getattr(local, "_storage", None)


def replace_thread_local_storage(local: Any, storage: Any) -> None:
    object.__setattr__(local, "_storage", storage)


def set_driver_autocommit(wrapper: Any, autocommit: bool) -> None:
    wrapper._set_autocommit(autocommit)


# -- the driver's real state, read from memory -----------------------------------------
#
# A probe answers "what is wrong with this raw connection?" from what the driver holds
# in memory, with no round trip: None for nothing, else one of these reasons. The
# first three mean the connection cannot be handed on at all; the last two mean it is
# usable once rolled back and its autocommit restored.

CLOSED = "its connection was closed under it (an interrupted or lost query)"
MID_RESULT = "a result was still being read from the wire"
MID_COMMAND = "a command was still in progress"
IN_TRANSACTION = "it was left in a transaction"
AUTOCOMMIT_CHANGED = "its autocommit was changed behind Django's back"

UNUSABLE = frozenset((CLOSED, MID_RESULT, MID_COMMAND))

Probe = Callable[[Any, bool], "str | None"]


def _pymysql(raw: Any, autocommit: bool) -> str | None:
    if not raw.open:
        return CLOSED
    result = raw._result
    if result is not None and result.unbuffered_active:
        return MID_RESULT
    status = raw.server_status
    if status & 1:  # SERVER_STATUS_IN_TRANS
        return IN_TRANSACTION
    if bool(status & 2) is not autocommit:  # SERVER_STATUS_AUTOCOMMIT
        return AUTOCOMMIT_CHANGED
    return None


def _libpq(closed: bool, status: int, driver_autocommit: bool, autocommit: bool) -> str | None:
    # libpq's transaction status: IDLE 0, ACTIVE 1, INTRANS 2, INERROR 3, UNKNOWN 4.
    if closed or status == 4:
        return CLOSED
    if status == 1:
        return MID_COMMAND
    if status:
        return IN_TRANSACTION
    if driver_autocommit is not autocommit:
        return AUTOCOMMIT_CHANGED
    return None


def _psycopg3(raw: Any, autocommit: bool) -> str | None:
    return _libpq(
        raw.closed or raw.broken, int(raw.info.transaction_status), bool(raw.autocommit), autocommit
    )


def _psycopg2(raw: Any, autocommit: bool) -> str | None:
    closed = bool(raw.closed)
    status = 4 if closed else int(raw.get_transaction_status())
    return _libpq(closed, status, bool(raw.autocommit), autocommit)


def _sqlite3(raw: Any, autocommit: bool) -> str | None:
    if raw.in_transaction:
        return IN_TRANSACTION
    if (raw.isolation_level is None) is not autocommit:  # Django's autocommit switch
        return AUTOCOMMIT_CHANGED
    return None


def _unknown(raw: Any, autocommit: bool) -> str | None:
    return None  # Django's own flags are all we go by


def _probe_for(raw: Any) -> Probe:
    if isinstance(getattr(raw, "server_status", None), int) and hasattr(raw, "open"):
        return _pymysql
    info = getattr(raw, "info", None)
    if info is not None and hasattr(info, "transaction_status") and hasattr(raw, "broken"):
        return _psycopg3
    if callable(getattr(raw, "get_transaction_status", None)):
        return _psycopg2
    if isinstance(getattr(raw, "in_transaction", None), bool):
        return _sqlite3
    return _unknown


_PROBES: dict[type, Probe] = {}


def driver_trouble(raw: Any, autocommit: bool) -> str | None:
    """What is wrong with ``raw`` for a holder expecting ``autocommit``; None: nothing."""
    probe = _PROBES.get(type(raw))
    if probe is None:
        probe = _PROBES[type(raw)] = _probe_for(raw)
    return probe(raw, autocommit)


def abandon_unread_result(raw: Any) -> None:
    """Let PyMySQL forget a result left on the wire, so that the cursor holding it does
    not try to read the rest from a closed connection when it is collected."""
    result = getattr(raw, "_result", None)
    if result is not None and getattr(result, "unbuffered_active", False):
        result.unbuffered_active = False


def force_close(raw: Any) -> None:
    """Drop the raw connection without a goodbye on the wire (it may be mid-protocol)."""
    close = getattr(raw, "_force_close", None)  # PyMySQL: close the socket, send nothing
    try:
        if close is not None:
            close()
        else:
            raw.close()
    except Exception as exc:  # already broken: the socket is gone either way
        logger.debug("closing a broken connection failed: %r", exc)


# -- MySQL / MariaDB session reset (PyMySQL) ---------------------------------------------

COM_RESET_CONNECTION = 0x1F  # MySQL >= 5.7, MariaDB >= 10.2


def pymysql_reset_session(raw: Any) -> None:
    """``COM_RESET_CONNECTION``, then what PyMySQL's ``connect()`` set up, replayed.

    The reset gives the session the server's global defaults, which are not what the
    connection was opened with: the character set and collation asked for, the
    ``sql_mode`` and ``init_command`` options; and MariaDB keeps the current database
    across the reset, so a ``USE`` would survive it.
    """
    raw._execute_command(COM_RESET_CONNECTION, b"")
    raw._read_ok_packet()
    if raw.db:
        raw.select_db(raw.db)
    raw.set_character_set(raw.charset, raw.collation)
    if raw.sql_mode is not None:
        with raw.cursor() as cursor:
            cursor.execute("SET sql_mode=%s", (raw.sql_mode,))
    if raw.init_command is not None:
        with raw.cursor() as cursor:
            cursor.execute(raw.init_command)


def is_pymysql(raw: Any) -> bool:
    return hasattr(raw, "_execute_command") and hasattr(raw, "_read_ok_packet")


# -- front wrappers (hold="lazy" / "transaction") ------------------------------------------

_TRANSACTION_STATE = (
    "in_atomic_block", "savepoint_ids", "atomic_blocks", "needs_rollback",
    "closed_in_transaction", "errors_occurred", "autocommit", "commit_on_exit",
    "savepoint_state",
)


def copy_transaction_state(source: Any, target: Any) -> None:
    for name in _TRANSACTION_STATE:
        value = getattr(source, name)
        setattr(target, name, list(value) if isinstance(value, list) else value)


def reset_transaction_state(wrapper: Any) -> None:
    """A wrapper's transaction state as Django's ``connect()`` leaves it."""
    wrapper.in_atomic_block = False
    wrapper.savepoint_ids = []
    wrapper.atomic_blocks = []
    wrapper.needs_rollback = False
    wrapper.closed_in_transaction = False
    wrapper.errors_occurred = False
    wrapper.commit_on_exit = True
    wrapper.run_on_commit = []
    wrapper.run_commit_hooks_on_set_autocommit_on = False


def override_front_methods(wrapper: Any, front: Any) -> None:
    """Attach on ``connect()``, detach at the end of ``atomic()`` and on ``close()``."""
    cls = type(wrapper)

    def connect() -> None:
        front.attach(wrapper)

    def get_autocommit() -> bool:
        if wrapper.connection is None:  # detached: the next attachment restores this
            return bool(wrapper.autocommit)
        return bool(cls.get_autocommit(wrapper))

    def set_autocommit(
        autocommit: bool, force_begin_transaction_with_broken_autocommit: bool = False
    ) -> None:
        cls.set_autocommit(wrapper, autocommit, force_begin_transaction_with_broken_autocommit)
        if autocommit and front.per_transaction:
            front.detach_if_idle(wrapper)  # the end of the outermost atomic(), on_commit run

    def close() -> None:
        try:
            cls.close(wrapper)
        finally:
            front.detach(wrapper)  # the raw connection is closed: give the slot back

    wrapper.connect = connect
    wrapper.get_autocommit = get_autocommit
    wrapper.set_autocommit = set_autocommit
    wrapper.close = close


def driver_cursor_connection(django_cursor: Any) -> Any:
    return getattr(django_cursor.cursor, "connection", None)


def replace_driver_cursor(django_cursor: Any, driver_cursor: Any) -> None:
    django_cursor.cursor = driver_cursor


def django_create_connection(alias: str) -> Any:
    """Django's own ``connections.create_connection``, whatever is installed over it."""
    from django.db import connections

    return type(connections).create_connection(connections, alias)


def install_create_connection(hook: Callable[[str], Any]) -> None:
    from django.db import connections

    connections.create_connection = hook

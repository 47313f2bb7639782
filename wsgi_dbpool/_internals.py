"""Every private detail of Django, asgiref and the drivers that this library relies on.

Public seams are preferred everywhere (``connections.create_connection``, the
``connection_created`` signal, the wrapper's own ``close``/``rollback``/
``set_autocommit``/``init_connection_state``); what no public seam offers is read or
written here, and only here, so that an upgrade is one read of this header.
Checked against (``tests/test_internals.py`` asserts that each detail below exists, in every
lane of ``make test``): Django 6.1.x on Python 3.13, 6.0.x on 3.12, 5.2.x and 5.2.0 on 3.11;
asgiref 3.8.1 and 3.13.0; PyMySQL 1.1.3 and 1.2.4; psycopg 3.1.14 and 3.3.x; Python's sqlite3.
An entry names the versions where they differ.

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
(3.13: ``_ThreadCriticalLocal``;          directly when no event loop runs (what asgiref
3.8.1-3.12.1: ``Local`` with              itself does then): 1 µs a request saved, and
``_thread_critical = True``)              the object the ``--preload`` repair replaces.
                                          Checked: asgiref 3.8.1, 3.9.1, 3.12.1, 3.13.0.
``BaseDatabaseWrapper.close_at``          the expiry Django computes from ``CONN_MAX_AGE``
                                          at connect; read by the verdict, and cleared
                                          when ``max_lifetime`` replaces that rule.
``BaseDatabaseWrapper.connect``,          wrapped on each pooled wrapper instance (not
``execute_wrappers``                      the class) to time connects (and to tell the
                                          session-state watch that Django's own session
                                          set-up runs: its statements pass through the
                                          list too); the failover watch is put first in
                                          the (public) list, the session-state watch
                                          second.
``BaseDatabaseWrapper._set_autocommit``   replays the server's autocommit after a
                                          session reset without Django's bookkeeping.
PyMySQL ``Connection.server_status``      in memory after every reply: bit 0x1 "in
                                          transaction", bit 0x2 "autocommit" (the MySQL
                                          protocol's ``SERVER_STATUS_*``).
PyMySQL ``Connection._result``            an unbuffered result still on the wire
``.unbuffered_active``                    (``SSCursor``): the next command would first
                                          drain it, or fail; cleared when we close the
                                          connection, so the cursor does not read on.
PyMySQL ``Connection.ping(reconnect=)``  the idle check pings with ``reconnect=False``:
                                          PyMySQL 1.1.x reconnects by default, which
                                          Django's ``is_usable()`` would let happen
                                          (checked: 1.1.3, 1.2.4).
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
``BaseDatabaseWrapper                     reset by :func:`set_owner` when a wrapper changes
._thread_sharing_count``                  holder: ``inc_thread_sharing()`` is the holder's,
                                          and a count left over would switch Django's
                                          thread check off for the next one (5.2, 6.1).
``BaseDatabaseWrapper.rollback_exc``      the error that doomed the holder's ``atomic()``;
                                          reset when the wrapper changes holder (5.2, 6.1).
``isolation_level`` (MySQL                what ``connect()`` leaves on the wrapper besides
``get_connection_params``, PostgreSQL     the flags above (:data:`CONNECT_ATTRIBUTES`):
``get_new_connection``);                  copied from the carrier to a front on attach
``transaction_mode``, ``init_commands``   (5.2, 6.1).
(SQLite ``get_connection_params``)
``cached_property`` values in the         what the server told Django (:data:`SERVER_CACHES`:
wrapper's ``__dict__``: MySQL             one ``temporary_connection()`` round trip each
``mysql_server_data``; PostgreSQL         time a wrapper first asks): shared between a front
``pg_version``                            and its carriers (5.2, 6.1).
``BaseDatabaseWrapper._cursor``,          overridden on ``hold="transaction"`` fronts: a
``_prepare_cursor``                       cursor made while detached wraps a placeholder
                                          driver cursor and attaches at its first statement
                                          (5.2, 6.1).
``BaseDatabaseWrapper                     overridden on fronts: borrow (and, per transaction,
.temporary_connection``                   give back) instead of close (5.2, 6.1).
``health_check_enabled``,                 ``CONN_HEALTH_CHECKS``, which only ``connect()``
``close_if_health_check_failed``          arms: set on fronts, run on the carrier at a unit
                                          of work's first attachment (5.2, 6.1).
PyMySQL ``Connection._result.has_next``   more result sets to come (the server's
                                          ``SERVER_MORE_RESULTS_EXISTS``): a ``CALL`` read in
                                          part keeps its connection (PyMySQL 1.1.3, 1.2.4).
gevent ``Greenlet.spawning_greenlet``     under ``hold="lazy"``, whether a greenlet's spawner
                                          holds a connection it would wait for (gevent 24.2,
                                          26.9).
``ConnectionHandler.create_connection``   replaced on ``django.db.connections`` itself
                                          (an instance attribute) while a middleware
                                          with ``hold != "request"`` exists: a gevent
                                          greenlet's first use of a pooled alias gets a
                                          front wrapper, under the cap.
PyMySQL's ``RuntimeError`` texts          a connect whose authentication needs a package
``'cryptography' package is required``,   that is not installed (``pymysql/_auth.py``,
``'pynacl' package is required``          PyMySQL 1.1 and 1.2.4): named once in a
                                          WARNING with the extra to install.
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
    """Make greenlet (or thread) ``ident`` the only one Django lets use ``wrapper``.

    The thread-sharing count goes back to zero: ``inc_thread_sharing()`` was the previous
    holder's, and a count left over would switch Django's check off for the next one.
    """
    wrapper._thread_ident = ident
    wrapper._thread_sharing_count = 0


def thread_local_storage(local: Any) -> Any:
    """asgiref's plain thread-local inside ``connections._connections``, or None.

    Two shapes hold it in ``_storage``: asgiref >= 3.13 makes a ``_ThreadCriticalLocal``;
    3.8.1 to 3.12.1 make one ``Local`` class with ``_thread_critical = True``.
    """
    state = vars(local)
    if type(local).__name__ != "_ThreadCriticalLocal" and state.get("_thread_critical") is not True:
        return None
    return state.get("_storage")


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
    # A result still on the wire, or more results to come (SERVER_MORE_RESULTS_EXISTS,
    # 0x8, which PyMySQL keeps as ``has_next``: a CALL or "a; b" read only in part).
    if result is not None and (result.unbuffered_active or result.has_next):
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


def is_usable(wrapper: Any) -> bool:
    """Django's ``is_usable()``, without a silent reconnect.

    PyMySQL before 1.2 pings with ``reconnect=True`` by default, so Django's check
    answers "usable" for a connection the server killed, having opened a new session
    behind Django's back (no ``connection_created``, no Django set-up, not counted).
    """
    raw = wrapper.connection
    if is_pymysql(raw):
        try:
            raw.ping(reconnect=False)
        except wrapper.Database.Error:
            return False
        return True
    return bool(wrapper.is_usable())


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
    """A wrapper's transaction state as Django's ``connect()`` leaves it (and no
    ``rollback_exc``: a new wrapper's, which a plain connection has in a new thread)."""
    wrapper.rollback_exc = None
    wrapper.in_atomic_block = False
    wrapper.savepoint_ids = []
    wrapper.atomic_blocks = []
    wrapper.needs_rollback = False
    wrapper.closed_in_transaction = False
    wrapper.errors_occurred = False
    wrapper.commit_on_exit = True
    wrapper.run_on_commit = []
    wrapper.run_commit_hooks_on_set_autocommit_on = False


# What Django's connect() (through get_connection_params(), get_new_connection() and
# init_connection_state()) leaves on the wrapper itself, beside the flags above and
# ``close_at``, ``health_check_enabled``/``_done``: a front never runs it, so it takes
# these from the carrier whose connection it borrows. MySQL: ``isolation_level`` (set by
# get_connection_params); PostgreSQL: ``isolation_level`` (get_new_connection); SQLite
# (5.1+): ``transaction_mode``, ``init_commands`` (get_connection_params).
CONNECT_ATTRIBUTES = ("isolation_level", "transaction_mode", "init_commands")

# Django's cached_property values read from the server (one round trip, through
# ``temporary_connection()``, the first time): shared between a front and its carriers,
# so that each is asked once per connection, not once per front. (``mysql_server_info``,
# ``mysql_version``, ``mysql_is_mariadb`` and ``sql_mode`` derive from
# ``mysql_server_data`` with no round trip.)
SERVER_CACHES = ("mysql_server_data", "pg_version")


def copy_connect_state(carrier: Any, front: Any) -> None:
    """On attach: what ``connect()`` set on the carrier, and what the server told it."""
    source, target = carrier.__dict__, front.__dict__
    for name in CONNECT_ATTRIBUTES:
        if name in source:
            target[name] = source[name]
    for name in SERVER_CACHES:
        if name in source and name not in target:
            target[name] = source[name]


def keep_server_caches(front: Any, carrier: Any) -> None:
    """On detach: what the front learnt from the server, for the carrier's next fronts."""
    source, target = front.__dict__, carrier.__dict__
    for name in SERVER_CACHES:
        if name in source and name not in target:
            target[name] = source[name]


def driver_cursor_connection(django_cursor: Any) -> Any:
    return getattr(django_cursor.cursor, "connection", None)


def driver_cursor_closed(driver_cursor: Any) -> bool:
    """Whether the user closed this driver cursor: PyMySQL forgets its connection,
    psycopg and sqlite3 say ``closed``."""
    closed = getattr(driver_cursor, "closed", None)
    if isinstance(closed, bool):
        return closed
    return getattr(driver_cursor, "connection", True) is None


def replace_driver_cursor(django_cursor: Any, driver_cursor: Any) -> None:
    django_cursor.cursor = driver_cursor


def django_create_connection(alias: str) -> Any:
    """Django's own ``connections.create_connection``, whatever is installed over it."""
    from django.db import connections

    return type(connections).create_connection(connections, alias)


def install_create_connection(hook: Callable[[str], Any]) -> None:
    from django.db import connections

    connections.create_connection = hook


# What PyMySQL says when an authentication method needs a package it cannot import, and
# the extra that brings it: caching_sha2_password's full authentication without TLS (MySQL
# after a restart) needs RSA; MariaDB's ed25519 needs NaCl.
_AUTH_PACKAGES = (
    ("'cryptography' package is required", "PyMySQL[rsa]",
     "caching_sha2_password's full authentication without TLS (sha256_password too)"),
    ("'pynacl' package is required", "PyMySQL[ed25519]", "MariaDB's ed25519 authentication"),
)


def missing_auth_package(exc: BaseException) -> tuple[str, str] | None:
    """(the extra to install, what needs it) when ``exc`` is PyMySQL missing one, else None."""
    if isinstance(exc, RuntimeError):
        text = str(exc)
        for needle, extra, needed_by in _AUTH_PACKAGES:
            if needle in text:
                return extra, needed_by
    return None

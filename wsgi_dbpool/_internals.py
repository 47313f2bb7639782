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
``Local.__getattr__``, its class;         :func:`speed_up_lookups` gives the ``Local``
``asyncio.events._get_running_loop``      behind ``connections`` a subclass whose reads
                                          skip asgiref's loop check (``get_running_loop()``
                                          raising in a sync thread) when no loop runs,
                                          and are asgiref's own when one does: Django's
                                          own lookups, seven a request, cost 0.2 µs
                                          instead of 0.7 (asgiref 3.8.1, 3.13.0; the
                                          None-returning call: Python 3.7 to 3.14).
``BaseDatabaseWrapper.close_at``          the expiry Django computes from ``CONN_MAX_AGE``
                                          at connect; read by the verdict, and cleared
                                          when ``max_lifetime`` replaces that rule.
``BaseDatabaseWrapper.connect``           wrapped on each pooled wrapper instance (not
                                          the class) to time connects (and to tell the
                                          session-state watch that Django's own session
                                          set-up runs: its statements pass through the
                                          statement hooks too).
``BaseDatabaseWrapper.make_cursor``,      replaced on each pooled wrapper instance
``make_debug_cursor``;                    (:func:`hook_cursors`): its cursors are of a
``utils.CursorWrapper``,                  subclass of the class Django builds whose
``CursorDebugWrapper``                    ``_execute_with_wrappers`` runs the pool's hooks
``._execute_with_wrappers``               (``Record.hooks``: the session-state watch,
                                          which notes failover errors too, or the failover
                                          watch alone; the front's statement
                                          hook, max_hold's refusal) outside the user's
                                          ``execute_wrappers``, which stays Django's
                                          own list: empty unless the user adds one
                                          (5.2, 6.1: the same four lines in both).
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
``close_at``, ``health_check_done``       connection. ``savepoint_state`` (which numbers
                                          savepoints) starts at 0 for each holder, as on
                                          a new thread's wrapper; a front keeps
                                          ``errors_occurred`` across its detachments to
                                          the work's end, as Django keeps it to the
                                          request's (5.2, 6.1).
``connect``, ``connection``              ``max_hold`` fences a revoked wrapper: its
                                          ``connect`` refuses, a refusing statement hook
                                          goes first, its driver connection is replaced
                                          by a stand-in that raises, and a probe for that
                                          stand-in is put in :data:`_PROBES` (5.2, 6.1).
``get_connection_params``,                the driver connection that ends a session taken
``get_new_connection``, ``Database``      back (``KILL``): Django's own parameters, with no
                                          signal and no set-up; ``Database.OperationalError``
                                          is what ``wrap_database_errors`` converts (5.2, 6.1).
PyMySQL ``Connection._sock``              the socket of a connection taken back at
                                          ``max_hold``: its client port (to confirm the
                                          session before ``KILL``) and its shutdown (psycopg:
                                          the public ``fileno()``) (PyMySQL 1.1.3, 1.2.4).
``connect``, ``get_autocommit``,          overridden on front wrappers only (instance
``set_autocommit``, ``close``             attributes on objects the pool made): attach,
                                          read a flag without connecting, detach at the
                                          end of ``atomic()``, give the slot back.
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
libpq's connect failure text             psycopg 3 and psycopg2 give a failed connect
``... failed: FATAL:  <message>``         no SQLSTATE; a server's answer (too many
                                          connections, unknown role) is told from no
                                          answer by its severity part (``fail_fast``).
                                          Checked: psycopg 3.3.9; pinned in every lane by
                                          test_underfire's PostgreSQL "too many" test.
========================================  ==============================================

The driver details of this table (PyMySQL, psycopg, sqlite3) are read and written in
:mod:`wsgi_dbpool.drivers`, one adapter class per driver family, and only there (but for
:mod:`~wsgi_dbpool.alias_pool`, which asks PyMySQL's public ``get_server_info()`` whether
the server is MariaDB for ``statement_timeout``). Public driver state read there too:
PyMySQL ``open``; psycopg 3 ``pgconn.status`` and ``pgconn.transaction_status`` (libpq's
own, through the documented ``Connection.pgconn``), ``autocommit``; psycopg2 ``closed``, ``autocommit``,
``get_transaction_status()``; sqlite3 ``in_transaction``, ``isolation_level``.
"""

from __future__ import annotations

import asyncio
import functools
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
    3.8.1 to 3.12.1 make one ``Local`` class with ``_thread_critical = True``. (The class
    :func:`speed_up_lookups` puts in place keeps its base's name.)
    """
    state = vars(local)
    if type(local).__name__ != "_ThreadCriticalLocal" and state.get("_thread_critical") is not True:
        return None
    return state.get("_storage")


def replace_thread_local_storage(local: Any, storage: Any) -> None:
    object.__setattr__(local, "_storage", storage)


# The classes speed_up_lookups() made, each with the thread-local it reads.
_FAST_LOCALS: dict[type, Any] = {}


def speed_up_lookups(local: Any, storage: Any) -> None:
    """Make ``connections[alias]`` read ``storage`` (the thread-local inside ``local``)
    directly when no event loop runs in the calling thread (greenlet).

    That is what asgiref's thread-critical ``Local`` does itself, after asking asyncio for a
    running loop with ``get_running_loop()``, which raises ``RuntimeError`` in a sync
    thread: 0.7 µs a lookup, and Django looks connections up about seven times a request
    (``reset_queries``, ``close_old_connections`` twice, the ORM). The subclass asks
    ``asyncio._get_running_loop()``, which returns None instead of raising, and hands a
    thread with a running loop to asgiref's own ``__getattr__``: the same storage in every
    case. Writes and deletes stay asgiref's (rare: a connection made, a binding).
    """
    base = type(local)
    if base in _FAST_LOCALS:
        if _FAST_LOCALS[base] is storage:
            return  # already reading this storage
        base = base.__mro__[1]  # made for a storage since replaced: make it again
    running_loop = asyncio.events._get_running_loop
    lookup = base.__getattr__

    def __getattr__(self: Any, key: str) -> Any:
        if running_loop() is None:
            return getattr(storage, key)
        return lookup(self, key)

    fast = type(base.__name__, (base,), {"__slots__": (), "__getattr__": __getattr__})
    _FAST_LOCALS[fast] = storage
    object.__setattr__(local, "__class__", fast)


def set_driver_autocommit(wrapper: Any, autocommit: bool) -> None:
    wrapper._set_autocommit(autocommit)


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


# -- the pool's statement hooks, below Django's execute_wrappers list -------------------------

# Per cursor class Django's make_cursor()/make_debug_cursor() build: its subclass whose
# _execute_with_wrappers runs the pool's hooks around the user's execute_wrappers.
_HOOKED: dict[type, type] = {}


def _execute_with_hooks(
    self: Any, sql: Any, params: Any, many: bool, executor: Callable[..., Any]
) -> Any:
    """Django's ``CursorWrapper._execute_with_wrappers`` (5.2 to 6.1), with the pool's hooks
    (``Record.hooks``) outside the user's ``execute_wrappers``: as when they were first in
    that list, but not in it. One context dict for all, as Django passes it."""
    db = self.db
    context = {"connection": db, "cursor": self}
    wrappers = db.execute_wrappers
    if wrappers:
        for wrapper in reversed(wrappers):
            executor = functools.partial(wrapper, executor)
    hooks = db._wsgi_dbpool.hooks  # never empty: the outermost is called, not wrapped
    if len(hooks) > 1:  # usually one: the session-state watch
        for index in range(len(hooks) - 1, 0, -1):
            executor = functools.partial(hooks[index], executor)
    return hooks[0](executor, sql, params, many, context)


def _hooked_class(base: type) -> type:
    hooked = _HOOKED.get(base)
    if hooked is None:
        hooked = _HOOKED[base] = type(
            base.__name__, (base,), {
                "__slots__": (), "__qualname__": base.__qualname__,
                "_execute_with_wrappers": _execute_with_hooks,
            },
        )
    return hooked


def hook_cursors(wrapper: Any) -> None:
    """Make the cursors of a pooled wrapper run its ``Record.hooks`` around each statement,
    leaving ``execute_wrappers`` (Django's documented list, which a user or a library may
    read, clear or assert empty) as Django's own. The cursor is of the class the backend's
    ``make_cursor``/``make_debug_cursor`` builds, subclassed to differ in
    ``_execute_with_wrappers`` only, so a class patched or mocked by others is kept.

    Django's own ``make_cursor``/``make_debug_cursor`` build ``utils.CursorWrapper(cursor,
    self)``/``utils.CursorDebugWrapper(...)``: the subclass is built directly. A backend's
    own (PostgreSQL's ``make_debug_cursor``, 5.2 to 6.1) builds its cursor, whose class is
    then switched (slower: CPython's inline attribute values are lost; DEBUG only).
    """
    from django.db.backends import utils
    from django.db.backends.base.base import BaseDatabaseWrapper

    cls = type(wrapper)

    def direct(name: str) -> Callable[[Any], Any]:
        def make_cursor(cursor: Any) -> Any:
            base = getattr(utils, name)  # read at each call, as Django does
            return (_HOOKED.get(base) or _hooked_class(base))(cursor, wrapper)

        return make_cursor

    def switched(make: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
        def make_cursor(cursor: Any) -> Any:
            wrapped = make(wrapper, cursor)
            wrapped.__class__ = _HOOKED.get(wrapped.__class__) or _hooked_class(wrapped.__class__)
            return wrapped

        return make_cursor

    wrapper.make_cursor = (
        direct("CursorWrapper") if cls.make_cursor is BaseDatabaseWrapper.make_cursor
        else switched(cls.make_cursor)
    )
    wrapper.make_debug_cursor = (
        direct("CursorDebugWrapper")
        if cls.make_debug_cursor is BaseDatabaseWrapper.make_debug_cursor
        else switched(cls.make_debug_cursor)
    )

"""Every private detail listed in ``wsgi_dbpool/_internals.py`` exists in the versions installed.

``make test`` runs this file in each of its lanes (Django 6.1, 6.0, 5.2 and the lowest
versions the requirements allow), so the header's "checked against" is these runs, not a
memory of them: an upgrade that renames one of them fails here, by name, before it fails
somewhere deep in a request.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import pytest

WRAPPER_STATE = (
    "_thread_ident", "close_at", "health_check_done", "in_atomic_block", "savepoint_ids",
    "atomic_blocks", "needs_rollback", "closed_in_transaction", "errors_occurred", "autocommit",
    "commit_on_exit", "run_on_commit", "savepoint_state", "run_commit_hooks_on_set_autocommit_on",
    "execute_wrappers", "queries_log",
)


@pytest.fixture
def connected(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A wrapper of ``request.param``'s alias from Django's own factory, connected."""
    from django.db import connections

    request.getfixturevalue("db" if request.param == "default" else "pg_db")
    wrapper = connections.create_connection(request.param)
    wrapper.ensure_connection()
    try:
        yield wrapper
    finally:
        wrapper.close()


@pytest.mark.parametrize("connected", ["default", "pg"], indirect=True, ids=["mariadb", "postgresql"])
def test_django_wrapper_state_we_read_and_write(connected):
    missing = [name for name in WRAPPER_STATE if not hasattr(connected, name)]
    assert not missing, f"Django's DatabaseWrapper no longer has {missing}"
    assert callable(connected._set_autocommit)
    with connected.cursor() as cursor:
        assert hasattr(cursor, "cursor")  # utils.CursorWrapper's driver cursor


def test_connection_storage_is_recognised(django_site):
    """The asgiref thread-local behind ``connections``, in whichever shape asgiref has it
    (3.13: ``_ThreadCriticalLocal``; 3.8.1-3.12: ``Local``); ``--preload``'s repair needs it."""
    from django.db import connections

    from wsgi_dbpool import _internals

    assert hasattr(connections, "_connections")
    assert _internals.thread_local_storage(connections._connections) is not None
    assert asyncio.events._get_running_loop() is None  # no loop here: None, no exception
    assert callable(type(connections).create_connection)


@pytest.mark.parametrize("connected", ["default"], indirect=True, ids=["mariadb"])
def test_pymysql_state_we_read(connected):
    raw = connected.connection
    assert isinstance(raw.server_status, int) and raw.open
    assert hasattr(raw, "_result")
    for name in ("_execute_command", "_read_ok_packet", "_force_close", "select_db",
                 "set_character_set", "thread_id"):
        assert callable(getattr(raw, name)), name
    for name in ("db", "charset", "collation", "sql_mode", "init_command"):
        assert hasattr(raw, name), name
    assert "reconnect" in inspect.signature(raw.ping).parameters
    assert raw.server_status & 2  # SERVER_STATUS_AUTOCOMMIT, as Django sets it


@pytest.mark.parametrize("connected", ["pg"], indirect=True, ids=["postgresql"])
def test_psycopg_state_we_read(connected):
    raw = connected.connection
    assert raw.closed is False and raw.broken is False and raw.autocommit is True
    assert int(raw.info.transaction_status) == 0  # IDLE
    # What the verdict reads: libpq's own state on the PGconn, as plain ints.
    assert (raw.pgconn.status, raw.pgconn.transaction_status) == (0, 0)  # CONNECTION_OK, IDLE
    with raw.transaction():
        raw.execute("SELECT 1")
        assert raw.pgconn.transaction_status == 2  # INTRANS
    assert isinstance(raw.info.backend_pid, int)


def test_django_cursor_wrapper_runs_execute_wrappers_as_hook_cursors_does(django_site):
    """``_internals.hook_cursors`` builds cursors of a subclass of the class Django's
    ``make_cursor``/``make_debug_cursor`` build, whose ``_execute_with_wrappers`` is Django's
    own with the pool's hooks outside the list: Django's must still be those four lines."""
    from django.db.backends import utils
    from django.db.backends.base.base import BaseDatabaseWrapper

    source = inspect.getsource(utils.CursorWrapper._execute_with_wrappers)
    body = [line.strip() for line in source.splitlines()[1:] if line.strip()]
    assert body == [
        'context = {"connection": self.db, "cursor": self}',
        "for wrapper in reversed(self.db.execute_wrappers):",
        "executor = functools.partial(wrapper, executor)",
        "return executor(sql, params, many, context)",
    ]
    assert issubclass(utils.CursorDebugWrapper, utils.CursorWrapper)
    assert "_execute_with_wrappers" not in vars(utils.CursorDebugWrapper)
    for name, cls in (("make_cursor", "CursorWrapper"), ("make_debug_cursor", "CursorDebugWrapper")):
        source = inspect.getsource(getattr(BaseDatabaseWrapper, name))
        assert f"return utils.{cls}(cursor, self)" in source, name


def test_fast_lookups_read_the_storage_in_place_now():
    """``speed_up_lookups`` twice with the same storage changes nothing; after the
    ``--preload`` repair gives the ``Local`` a fresh storage, lookups read the fresh one."""

    from asgiref.local import Local

    from wsgi_dbpool import _internals

    local = Local(thread_critical=True)
    first = _internals.thread_local_storage(local)
    _internals.speed_up_lookups(local, first)
    fast = type(local)
    _internals.speed_up_lookups(local, first)
    assert type(local) is fast and fast in _internals._FAST_LOCALS
    local.alias = "first"  # asgiref's own write
    assert local.alias == "first" and first.alias == "first"

    fresh = threading.local()
    _internals.replace_thread_local_storage(local, fresh)
    _internals.speed_up_lookups(local, fresh)
    assert type(local) is not fast and type(local).__mro__[1] is fast.__mro__[1]
    assert not hasattr(local, "alias")
    fresh.alias = "fresh"
    assert local.alias == "fresh"

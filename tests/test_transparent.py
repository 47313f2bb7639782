"""Indistinguishable from Django's own connection, in every ``hold`` mode (issue #19).

A front wrapper (``hold="lazy"``/``"transaction"``) is a ``DatabaseWrapper`` that never
ran Django's ``connect()``; a pooled wrapper changes holders. Each test here is one place
where that showed through, judged by what the server says (``CONNECTION_ID()``, the
``Connections`` counter, result sets) and by what plain Django answers.
"""

from __future__ import annotations

import time

import gevent
import gevent.event
import pytest

from tests.helpers import get, serve, wait_until

pytestmark = pytest.mark.mariadb

MODES = ["request", "lazy", "transaction"]
FRONT_MODES = ["lazy", "transaction"]


def _one(sql: str, alias: str = "default"):
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0] if cursor.description else None


def _in_use(app, alias: str = "default") -> int:
    return int(app.stats()[alias]["in_use"])


# -- 1. what connect() sets on the wrapper ------------------------------------------------------


@pytest.mark.parametrize("hold", MODES)
def test_connect_state_is_there_as_on_a_plain_connection(make_app, db, hold):
    from django.db import connection

    app = make_app(size=1, hold=hold)
    with app.checkout():
        assert _one("SELECT 1") == 1
        assert connection.isolation_level == "read committed"
        assert connection.health_check_enabled is False  # CONN_HEALTH_CHECKS' default
        connection.init_connection_state()  # Django's own tests call it again
        assert _one("SELECT @@tx_isolation") == "READ-COMMITTED"


@pytest.mark.parametrize("hold", MODES)
def test_connect_state_on_postgresql(make_app, pg_db, hold):
    from django.db import connections
    from psycopg import IsolationLevel

    app = make_app(size=1, aliases=["pg"], hold=hold)
    with app.checkout():
        assert _one("SELECT 1", "pg") == 1
        assert connections["pg"].isolation_level == IsolationLevel.READ_COMMITTED


# -- 2. a closed cursor stays closed --------------------------------------------------------------


@pytest.mark.parametrize("hold", MODES)
def test_a_closed_cursor_does_not_execute_again(make_app, db, hold):
    from django.db import ProgrammingError, connection

    app = make_app(size=1, hold=hold)
    with app.checkout():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        with pytest.raises(ProgrammingError):
            cursor.execute("SELECT 2")
        with connection.cursor() as never_used:
            pass
        with pytest.raises(ProgrammingError):
            never_used.execute("SELECT 3")


@pytest.mark.parametrize("hold", MODES)
def test_a_closed_cursor_does_not_execute_again_on_postgresql(make_app, pg_db, hold):
    from django.db import InterfaceError, ProgrammingError, connections, transaction

    app = make_app(size=1, aliases=["pg"], hold=hold)
    holding, done = gevent.event.Event(), gevent.event.Event()

    def hold_the_idle_one() -> None:  # so that a new attachment gets another connection
        with app.checkout(), transaction.atomic(using="pg"):
            _one("SELECT 1", "pg")
            holding.set()
            done.wait(10)

    with app.checkout():
        with connections["pg"].cursor() as cursor:
            cursor.execute("SELECT 1")
        holder = gevent.spawn(hold_the_idle_one)
        try:
            if hold != "request":  # under "request" this work keeps its own connection
                assert holding.wait(10)
            with pytest.raises((InterfaceError, ProgrammingError)):
                cursor.execute("SELECT 2")
        finally:
            done.set()
            holder.join(10)


# -- 3. CONN_HEALTH_CHECKS ---------------------------------------------------------------------------


@pytest.mark.parametrize("hold", MODES)
def test_conn_health_checks_are_honoured(make_app, db, hold):
    from django.db import connection, connections

    settings_dict = connections.settings["default"]
    settings_dict["CONN_HEALTH_CHECKS"] = True
    try:
        app = make_app(size=1, hold=hold, ping_after=None)  # only Django's check is left
        with app.checkout():
            first = _one("SELECT CONNECTION_ID()")
            assert connection.health_check_enabled is True
        db.kill(first)
        wait_until(lambda: db.connection_count("app") == 0, what="the idle connection killed")
        with app.checkout():
            second = _one("SELECT CONNECTION_ID()")  # Django's health check reconnects
        assert second != first
    finally:
        settings_dict["CONN_HEALTH_CHECKS"] = False


# -- 4. close() inside atomic() -------------------------------------------------------------------


@pytest.mark.parametrize("hold", MODES)
def test_close_inside_atomic_then_the_work_goes_on(make_app, db, hold):
    from django.db import connection, transaction

    app = make_app(size=1, hold=hold)
    with app.checkout():
        with transaction.atomic():
            _one("INSERT INTO items (name) VALUES ('lost')")
            connection.close()
        assert connection.get_autocommit() is True
        with transaction.atomic():
            _one("INSERT INTO items (name) VALUES ('kept')")
        assert _one("SELECT @@autocommit") == 1
        assert _one("SELECT COUNT(*) FROM items") == 1
    assert [r[0] for r in db.admin_query("SELECT name FROM app.items")] == ["kept"]


# -- 5. the thread-sharing count -------------------------------------------------------------------


@pytest.mark.parametrize("hold", MODES)
def test_thread_sharing_does_not_leak_to_the_next_holder(make_app, db, hold):
    from django.db import connection

    app = make_app(size=1, hold=hold)
    with app.checkout():
        _one("SELECT 1")
        connection.inc_thread_sharing()  # and never dec: the work is over
        shared = connection
    with app.checkout():
        _one("SELECT 1")
        assert connection is shared  # the same wrapper, for a new holder
        assert connection.allow_thread_sharing is False

    def other_greenlet() -> bool:
        with app.checkout():
            _one("SELECT 1")
            return bool(connection.allow_thread_sharing)

    assert gevent.spawn(other_greenlet).get(timeout=10) is False


# -- 6. a multi-result statement is never handed on mid-way ------------------------------------------


@pytest.fixture
def two_sets(db):
    db.admin_query("DROP PROCEDURE IF EXISTS app.two_sets")
    db.admin_query(
        "CREATE PROCEDURE app.two_sets() BEGIN "
        "SELECT CONNECTION_ID(), 1; SELECT CONNECTION_ID(), 2; END"
    )
    return db


@pytest.mark.parametrize("hold", MODES)
def test_a_second_result_set_stays_with_its_reader(make_app, two_sets, hold):
    from django.db import connection

    app = make_app(size=1, max_outstanding=1, timeout=5, hold=hold)

    def reader() -> tuple[list, list, bool]:
        with app.checkout(), connection.cursor() as cursor:
            cursor.execute("CALL two_sets()")
            first = list(cursor.fetchall())
            gevent.sleep(0.05)  # the other greenlet asks for a connection meanwhile
            more = bool(cursor.nextset())
            second = list(cursor.fetchall()) if more else []
            return first, second, more

    def other() -> int:
        with app.checkout():
            return int(_one("SELECT CONNECTION_ID()"))

    job = gevent.spawn(reader)
    gevent.sleep(0.01)
    intruder = gevent.spawn(other)
    gevent.joinall([job, intruder], timeout=10, raise_error=True)
    first, second, more = job.value
    assert more, "the second result set was lost"
    assert second[0][1] == 2 and second[0][0] == first[0][0]


@pytest.mark.parametrize("hold", MODES)
def test_a_connection_returned_mid_result_sets_is_not_handed_on(make_app, two_sets, hold):
    from django.db import connection

    app = make_app(size=1, hold=hold)
    with app.checkout():
        cursor = connection.cursor()
        cursor.execute("CALL two_sets()")
        first = cursor.fetchall()[0][0]
        # The work ends with the second set unread (the cursor is not closed).
    with app.checkout():
        assert _one("SELECT 1") == 1
        assert _one("SELECT CONNECTION_ID()") != first  # closed, not handed on
    assert first not in [p["id"] for p in two_sets.processlist()]
    del cursor


# -- 7. connection.cursor() alone takes nothing -----------------------------------------------------


def test_a_cursor_alone_takes_no_connection_in_transaction_mode(make_app, db):
    from django.db import connection

    app = make_app(size=1, max_outstanding=1, timeout=5, hold="transaction")

    def other() -> float:
        started = time.monotonic()
        with app.checkout():
            _one("SELECT 1")
        return time.monotonic() - started

    with app.checkout():
        cursor = connection.cursor()
        assert _in_use(app) == 0
        waited = gevent.spawn(other).get(timeout=10)  # runs while our cursor is open
        assert waited < 0.3
        cursor.execute("SELECT CONNECTION_ID()")
        assert cursor.fetchone()[0] > 0
        assert _in_use(app) == 0
        cursor.close()


# -- 8. lazy: a view that queries, then spawns greenlets that query ------------------------------------


def _query_then_spawn(environ, start_response):
    from django.db import connections

    _one("SELECT 1")
    jobs = [gevent.spawn(_one, "SELECT CONNECTION_ID()") for _ in range(2)]
    gevent.joinall(jobs, raise_error=True)
    connections["default"]  # still bound to the request
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.mark.parametrize("hold", MODES)
def test_a_view_that_queries_then_spawns_does_not_deadlock(make_app, db, hold):
    app = make_app(_query_then_spawn, size=2, max_outstanding=2, timeout=3, hold=hold)
    with serve(app) as address:
        started = time.monotonic()
        jobs = [gevent.spawn(get, address, "/", timeout=20) for _ in range(4)]
        gevent.joinall(jobs, timeout=30, raise_error=True)
        elapsed = time.monotonic() - started
    assert [job.value.status for job in jobs] == [200] * 4
    assert elapsed < 2.5


# -- 9. version-dependent queries do not cost a reconnect ------------------------------------------------


@pytest.mark.parametrize("hold", FRONT_MODES)
def test_server_version_lookups_keep_the_borrowed_connection(make_app, db, hold):
    from django.db import connection

    app = make_app(size=1, hold=hold)
    before = db.connections_total()
    with app.checkout():
        # What filter(x__regex=...) does while compiling, before any query ran.
        assert "REGEXP" in connection.ops.regex_lookup("regex")
        first = _one("SELECT CONNECTION_ID()")
    with app.checkout():
        assert "REGEXP" in connection.ops.regex_lookup("regex")
        assert _one("SELECT CONNECTION_ID()") == first
    assert db.connections_opened_since(before) == 1
    assert app.stats()["default"]["closed"] == 0


# -- #17 item 4: rollback_exc ------------------------------------------------------------------------------


@pytest.mark.parametrize("hold", MODES)
def test_rollback_exc_belongs_to_its_unit_of_work(make_app, db, hold):
    from django.db import IntegrityError, connection, transaction
    from django.db.transaction import TransactionManagementError

    app = make_app(size=1, hold=hold)
    with app.checkout():
        with transaction.atomic():
            _one("INSERT INTO items (id, name) VALUES (1, 'one')")
            try:
                with transaction.mark_for_rollback_on_error():
                    _one("INSERT INTO items (id, name) VALUES (1, 'again')")
            except IntegrityError as exc:
                error = exc
            with pytest.raises(TransactionManagementError) as broken:
                _one("SELECT 1")
            assert broken.value.__cause__ is error  # carried across attachments
    with app.checkout():
        assert connection.rollback_exc is None  # a new unit of work starts clean


# -- the execute-wrapper list is the user's own -------------------------------------------------------

# Per backend: a statement that sets session state, and one that reads it back.
SESSION_PROBES = {
    "mariadb": ("SET @pooled = 5", "SELECT @pooled"),
    "postgresql": ("SET application_name = 'pooled'", "SELECT current_setting('application_name')"),
}


@pytest.mark.parametrize("hold", MODES)
def test_execute_wrappers_hold_only_what_the_user_put_there(make_app, backend, hold):
    """``connection.execute_wrappers`` is Django's public list: empty unless the user adds
    to it, whatever the pool runs around each statement; a library that clears it (or
    asserts it empty) takes nothing of the pool's away."""
    from django.db import connections

    alias = backend.alias
    kind = "mariadb" if alias == "default" else "postgresql"
    set_state, read_state = SESSION_PROBES[kind]
    app = make_app(size=1, hold=hold, aliases=[alias])
    seen: list[tuple[str, bool]] = []

    def mine(execute, sql, params, many, context):
        seen.append((sql, context["connection"] is connections[alias]))
        return execute(sql, params, many, context)

    with app.checkout():
        connection = connections[alias]
        assert connection.execute_wrappers == []
        first = _one(backend.connection_id_sql, alias)
        assert connection.execute_wrappers == []
        with connection.execute_wrapper(mine):
            assert connection.execute_wrappers == [mine]
            assert _one(backend.connection_id_sql, alias) == first
        assert seen == [(backend.connection_id_sql, True)]
        assert connection.execute_wrappers == []
        connection.execute_wrappers.clear()  # what a library may do
        # The pool's hooks still run: the session-state watch marks (and under
        # hold="transaction" pins) the work that sets session state.
        _one(set_state, alias)
        if hold == "transaction":
            assert _in_use(app, alias) == 1, "the work that set session state is pinned"
        assert _one(read_state, alias) in ("5", 5, "pooled")
    assert app.stats()[alias]["pinned"] == 1
    with app.checkout():
        assert _one(read_state, alias) in (None, "")  # reset on return: not the next holder's
        assert _one(backend.connection_id_sql, alias) == first  # the same session, reset


@pytest.mark.parametrize("hold", MODES)
def test_a_user_wrapper_runs_inside_the_pools_hooks(make_app, db, hold):
    """The user's execute wrapper sees the statement as on a plain connection: its own
    context, on the connection that runs it (attached already under hold="transaction")."""
    from django.db import connection

    app = make_app(size=1, hold=hold)
    seen: list[tuple[str, bool]] = []

    def mine(execute, sql, params, many, context):
        raw = connection.connection
        seen.append((sql, raw is not None and raw is context["cursor"].cursor.connection))
        return execute(sql, params, many, context)

    insert = "INSERT INTO items (name) VALUES (%s)"
    with app.checkout(), connection.execute_wrapper(mine):
        _one("SELECT 1")
        with connection.cursor() as cursor:
            cursor.executemany(insert, [("a",), ("b",)])
    # (Django's own session set-up, when the first statement connects, passes through the
    # user's wrapper too, as on a plain connection.)
    assert [sql for sql, _ in seen][-2:] == ["SELECT 1", insert]
    assert all(on_its_connection for _, on_its_connection in seen), seen
    assert db.admin_query("SELECT COUNT(*) FROM app.items")[0][0] == 2


# -- what Django keeps on the wrapper for the rest of the unit of work ------------------------------


@pytest.mark.parametrize("hold", MODES)
def test_errors_occurred_is_kept_for_the_rest_of_the_work(make_app, backend, hold):
    """Django sets ``errors_occurred`` on a failed statement and keeps it until the request
    ends (its end-of-request check reads it); the next unit of work starts without it."""
    from django.db import ProgrammingError, connections

    alias = backend.alias
    app = make_app(size=1, hold=hold, aliases=[alias])
    with app.checkout():
        connection = connections[alias]
        assert connection.errors_occurred is False
        with pytest.raises(ProgrammingError):
            _one("SELEC 1", alias)
        assert connection.errors_occurred is True
        first = _one(backend.connection_id_sql, alias)  # the connection answers: kept
        assert connection.errors_occurred is True
    with app.checkout():
        connection = connections[alias]
        assert connection.errors_occurred is False
        assert _one(backend.connection_id_sql, alias) == first  # judged usable, kept
        assert connection.errors_occurred is False


@pytest.mark.parametrize("hold", MODES)
def test_each_unit_of_work_starts_as_a_new_threads_connection(make_app, backend, hold):
    """Whatever the last holder did (nested atomic(), a failed statement, on_commit, a rollback
    flag, a thread-sharing count), the next starts with the state a wrapper of a new
    thread has: under gevent, what plain Django gives each request."""
    from django.db import IntegrityError, ProgrammingError, connections, transaction

    from wsgi_dbpool import _internals

    alias = backend.alias

    def fresh_state(connection) -> dict:
        return {
            "in_atomic_block": connection.in_atomic_block,
            "savepoint_ids": list(connection.savepoint_ids),
            "atomic_blocks": list(connection.atomic_blocks),
            "needs_rollback": connection.needs_rollback,
            "errors_occurred": connection.errors_occurred,
            "run_on_commit": list(connection.run_on_commit),
            "savepoint_state": connection.savepoint_state,
            "rollback_exc": connection.rollback_exc,
            "allow_thread_sharing": connection.allow_thread_sharing,
            "queries_log": list(connection.queries_log),
            "execute_wrappers": list(connection.execute_wrappers),
            "get_autocommit": connection.get_autocommit(),
            "closed_in_transaction": connection.closed_in_transaction,
            "commit_on_exit": connection.commit_on_exit,
        }

    plain = _internals.django_create_connection(alias)  # Django's own, as a new thread gets
    try:
        expected = fresh_state(plain)
    finally:
        plain.close()
    app = make_app(size=1, hold=hold, aliases=[alias])
    with app.checkout():
        connection = connections[alias]
        connection.force_debug_cursor = True
        with transaction.atomic(using=alias):
            _one("INSERT INTO items (id, name) VALUES (7, 'x')", alias)
            with transaction.atomic(using=alias):
                transaction.on_commit(lambda: None, using=alias)
                with pytest.raises(IntegrityError):
                    with transaction.atomic(using=alias):
                        _one("INSERT INTO items (id, name) VALUES (7, 'y')", alias)
        connection.force_debug_cursor = False
        with pytest.raises(ProgrammingError):
            _one("SELEC 1", alias)
        connection.inc_thread_sharing()
    with app.checkout():
        assert fresh_state(connections[alias]) == expected


@pytest.mark.parametrize("hold", MODES)
def test_lookups_under_an_event_loop_stay_asgirefs(make_app, db, hold):
    """The pool reads ``connections[alias]`` straight from the greenlet's local when no
    event loop runs (``_internals.speed_up_lookups``). Code under a running loop must still
    get asgiref's answer: its own context's connection, never the greenlet's pooled one,
    which Django would then share with async code."""
    import asyncio

    from django.db import connections

    from wsgi_dbpool import _internals

    app = make_app(hold=hold)
    with app.checkout():
        pooled = connections["default"]
        assert type(connections._connections) in _internals._FAST_LOCALS  # the fast path is on

        async def inside_a_loop():
            return connections["default"]

        theirs = asyncio.run(inside_a_loop())
        try:
            assert theirs is not pooled
            assert connections["default"] is pooled  # and the greenlet's is still its own
            assert hasattr(connections._connections, "default")
            assert not hasattr(connections._connections, "no such alias")
        finally:
            theirs.close()

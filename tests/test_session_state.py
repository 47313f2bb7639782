"""Session state seen at the execute seam: reset when it is there, pinned under
``hold="transaction"``, never another request's (the issue "Transaction pooling as safe as
session pooling").

Every test judges by what the server reports: the row an id points at, ``IS_USED_LOCK``,
``pg_locks``, ``@@`` variables, ``CONNECTION_ID()``, ``Com_change_db``.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from tests.helpers import call

MARIADB = pytest.param("mariadb", marks=pytest.mark.mariadb)
POSTGRES = pytest.param("postgresql", marks=pytest.mark.postgresql)


def _cursor(alias: str) -> Any:
    from django.db import connections

    return connections[alias].cursor()


def _one(alias: str, sql: str, params: Any = None) -> Any:
    with _cursor(alias) as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone() if cursor.description else None
    return row[0] if row is not None else None


def _app(make_app, view: Callable[[dict[str, Any]], Any], alias: str, **knobs: Any) -> Any:
    """A pooled WSGI app whose inner app answers ``view(environ)`` as JSON, or the
    :class:`~wsgi_dbpool.SessionStateError` it raised (as ``{"refused": message}``)."""
    from wsgi_dbpool import SessionStateError

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        try:
            answer = view(environ)
        except SessionStateError as exc:
            answer = {"refused": str(exc)}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]

    return make_app(inner, aliases=[alias], **knobs)


def _get(app: Any, path: str = "/") -> Any:
    status, _, body = call(app, path)
    assert status.startswith("200"), body
    return json.loads(body)


def _concurrently(app: Any, paths: list[str]) -> list[Any]:
    """Each path requested at once, in its own greenlet; the answers in the paths' order."""
    greenlets = [gevent.spawn(_get, app, path) for path in paths]
    gevent.joinall(greenlets, timeout=60, raise_error=True)
    return [g.value for g in greenlets]


@pytest.fixture(params=[MARIADB, POSTGRES])
def server(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """(alias, server) for each backend, with no app connection left and ``items`` empty."""
    if request.param == "mariadb":
        return "default", request.getfixturevalue("db")
    request.getfixturevalue("django_site")
    return "pg", request.getfixturevalue("pg_db")


# -- 1. LAST_INSERT_ID() / currval(): one's own id, or the clear error ---------------------


def test_last_insert_id_read_in_a_later_statement_is_never_another_requests(make_app, server, hold):
    alias, _ = server
    reader = "SELECT LAST_INSERT_ID()" if alias == "default" else "SELECT currval('items_id_seq')"
    rng = random.Random(20)

    def view(environ: dict[str, Any]) -> Any:
        marker = environ["PATH_INFO"].strip("/")
        with _cursor(alias) as cursor:
            cursor.execute("INSERT INTO items (name) VALUES (%s)", [marker])
            gevent.sleep(rng.random() * 0.01)  # others run their INSERTs meanwhile
            cursor.execute(reader)
            new_id = cursor.fetchone()[0]
            cursor.execute("SELECT name FROM items WHERE id = %s", [new_id])
            row = cursor.fetchone()
        return {"name": row[0] if row else None}

    app = _app(make_app, view, alias, hold=hold, size=3, max_outstanding=3)
    seen = [(f"r{i}", got) for i, got in enumerate(_concurrently(app, [f"/r{i}" for i in range(100)]))]
    stolen = [(marker, got) for marker, got in seen if "refused" not in got and got["name"] != marker]
    assert stolen == []  # never another request's row
    refused = [got["refused"] for _, got in seen if "refused" in got]
    if hold == "transaction":  # the INSERT's connection was given back: refused, each time
        assert len(refused) == 100
        assert "transaction.atomic()" in refused[0] and "hold='transaction'" in refused[0]
    else:  # the same connection all along: one's own id
        assert refused == []


def test_last_insert_id_inside_atomic_is_ones_own_under_transaction_hold(make_app, server):
    from django.db import transaction

    alias, _ = server
    reader = "SELECT LAST_INSERT_ID()" if alias == "default" else "SELECT currval('items_id_seq')"

    def view(environ: dict[str, Any]) -> Any:
        marker = environ["PATH_INFO"].strip("/")
        with transaction.atomic(using=alias), _cursor(alias) as cursor:
            cursor.execute("INSERT INTO items (name) VALUES (%s)", [marker])
            gevent.sleep(0.001)
            cursor.execute(reader)
            cursor.execute("SELECT name FROM items WHERE id = %s", [cursor.fetchone()[0]])
            return {"name": cursor.fetchone()[0]}

    app = _app(make_app, view, alias, hold="transaction", size=3, max_outstanding=3)
    answers = _concurrently(app, [f"/a{i}" for i in range(30)])
    assert answers == [{"name": f"a{i}"} for i in range(30)]


def test_found_rows_after_sql_calc_found_rows_is_ones_own_in_every_mode(make_app, db, hold):
    # SQL_CALC_FOUND_ROWS exists for the FOUND_ROWS() after it: it pins the work.
    def view(environ: dict[str, Any]) -> Any:
        me = environ["PATH_INFO"].strip("/")
        with _cursor("default") as cursor:
            cursor.execute("SELECT SQL_CALC_FOUND_ROWS name FROM items WHERE name LIKE %s LIMIT 1",
                           [me + "-%"])
            gevent.sleep(0.005)
            cursor.execute("SELECT FOUND_ROWS()")
            return {"found": cursor.fetchone()[0]}

    rows = [(f"f{i}-{j}",) for i in range(12) for j in range(i % 4 + 1)]
    with _cursor("default") as cursor:
        cursor.executemany("INSERT INTO items (name) VALUES (%s)", rows)
    from django.db import connections

    connections["default"].close()
    app = _app(make_app, view, "default", hold=hold, size=2, max_outstanding=2)
    answers = _concurrently(app, [f"/f{i}" for i in range(12)])
    assert answers == [{"found": i % 4 + 1} for i in range(12)]


@pytest.mark.parametrize(
    "reader", ["SELECT LAST_INSERT_ID()", "SELECT @@identity", "select @@SESSION.last_insert_id"]
)
def test_a_reader_first_on_a_kept_connection_is_refused(make_app, db, hold, reader):
    # The previous request's id is still on the connection: read first, it would be theirs.
    def view(environ: dict[str, Any]) -> Any:
        if environ["PATH_INFO"] == "/insert":
            _one("default", "INSERT INTO items (name) VALUES ('theirs')")
            return {"id": _one("default", "SELECT CONNECTION_ID()")}
        return {"last": _one("default", reader)}

    app = _app(make_app, view, "default", hold=hold, size=1, max_outstanding=1)
    _get(app, "/insert")
    got = _get(app, "/read")
    assert "refused" in got and "transaction.atomic()" in got["refused"], got


# -- 2. named locks: mutual exclusion, and nothing held after the request ------------------


def test_named_lock_keeps_mutual_exclusion_and_is_gone_after_the_request(make_app, server, hold):
    alias, srv = server
    if alias == "default":
        take, release = "SELECT GET_LOCK('k', 0)", "SELECT RELEASE_LOCK('k')"
    else:
        take, release = "SELECT pg_try_advisory_lock(4242)", "SELECT pg_advisory_unlock(4242)"
    holding: set[str] = set()
    overlaps: list[tuple[str, set[str]]] = []

    def view(environ: dict[str, Any]) -> Any:
        me = environ["PATH_INFO"]
        got = _one(alias, take)
        if not got:
            return {"got": False}
        if holding:
            overlaps.append((me, set(holding)))
        holding.add(me)
        gevent.sleep(0.05)
        holding.discard(me)
        return {"got": True, "released": _one(alias, release)}

    app = _app(make_app, view, alias, hold=hold, size=3, max_outstanding=3)
    answers = _concurrently(app, [f"/l{i}" for i in range(8)])
    assert overlaps == []
    assert any(a["got"] for a in answers)
    assert all(a["released"] in (1, True) for a in answers if a["got"]), answers

    # A request that takes the lock and never releases it: gone when the request ends.
    kept = _app(make_app, lambda e: {"got": _one(alias, take)}, alias, hold=hold, size=1)
    assert _get(kept)["got"] in (1, True)
    if alias == "default":
        assert srv.admin_query("SELECT IS_USED_LOCK('k')") == [(None,)]
    else:
        assert srv.admin_query(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242") == [(0,)]


# -- 3. temporary tables and user variables: never seen by another request -----------------


def test_temporary_tables_and_variables_are_never_seen_by_another_request(make_app, server, hold):
    alias, _ = server
    if alias == "default":
        leave = ["SET @secret = 'from A'", "CREATE TEMPORARY TABLE scratch (x INT)"]
        probe = {"variable": "SELECT @secret", "same": "SELECT CONNECTION_ID()"}
    else:
        leave = ["SET myapp.secret = 'from A'", "CREATE TEMPORARY TABLE scratch (x INT)",
                 "SELECT 1 AS x INTO TEMP scratch"]
        probe = {"variable": "SELECT NULLIF(current_setting('myapp.secret', true), '')",
                 "same": "SELECT pg_backend_pid()"}

    def view(environ: dict[str, Any]) -> Any:
        if environ["PATH_INFO"].startswith("/a"):
            _one(alias, leave[int(environ["PATH_INFO"][2:])])
            return {"same": _one(alias, probe["same"])}
        seen = {name: _one(alias, sql) for name, sql in probe.items()}
        try:
            seen["table"] = _one(alias, "SELECT COUNT(*) FROM scratch")
        except Exception:
            seen["table"] = "absent"
        return seen

    app = _app(make_app, view, alias, hold=hold, size=1, max_outstanding=1)
    for i, statement in enumerate(leave):  # one at a time: each must be seen on its own
        a = _get(app, f"/a{i}")
        b = _get(app, "/b")
        assert b["same"] == a["same"]  # the same server connection, its session reset
        assert (b["variable"], b["table"]) == (None, "absent"), statement


@pytest.mark.mariadb
@pytest.mark.parametrize(
    "statement",
    ["# why\nSET @secret = 'from A'", "/*!40101 SET @secret = 'from A' */",
     "/*M!100100 SET @secret = 'from A' */", "/* why */ -- and\n  sEt\t@secret='from A'"],
    ids=["hash-comment", "executable-comment", "mariadb-executable-comment", "comments-mixed-case"],
)
def test_session_state_behind_comments_is_seen(make_app, db, hold, statement):
    # MySQL runs what follows '#' on the next line, and the text of /*! ... */ comments.
    def view(environ: dict[str, Any]) -> Any:
        if environ["PATH_INFO"] == "/a":
            _one("default", statement)
        return {"secret": _one("default", "SELECT @secret"), "id": _one("default", "SELECT CONNECTION_ID()")}

    app = _app(make_app, view, "default", hold=hold, size=1, max_outstanding=1)
    a = _get(app, "/a")
    b = _get(app, "/b")
    assert a["secret"] == "from A" and a["id"] == b["id"]  # it ran; the same server connection
    assert b["secret"] is None


@pytest.mark.postgresql
def test_a_reader_after_its_setter_in_one_text_is_ones_own(make_app, pg_db, hold):
    # psycopg sends several statements in one execute(): the reader runs where its INSERT ran.
    def view(environ: dict[str, Any]) -> Any:
        marker = environ["PATH_INFO"].strip("/")
        with _cursor("pg") as cursor:
            if marker == "select-first":
                cursor.execute("SELECT 1; SELECT currval('items_id_seq')")
                return {"id": cursor.fetchone()[0]}
            cursor.execute(
                "INSERT INTO items (name) VALUES (%s); SELECT currval('items_id_seq')", [marker])
            cursor.nextset()  # the SELECT's result
            new_id = cursor.fetchone()[0]
            gevent.sleep(0.001)
            cursor.execute("SELECT name FROM items WHERE id = %s", [new_id])
            return {"name": cursor.fetchone()[0]}

    app = _app(make_app, view, "pg", hold=hold, size=3, max_outstanding=3)
    answers = _concurrently(app, [f"/m{i}" for i in range(30)])
    assert answers == [{"name": f"m{i}"} for i in range(30)]
    # A statement before it that does not set it: the value would still be another's.
    assert "transaction.atomic()" in _get(app, "/select-first")["refused"]


# -- 4. USE, SET NAMES, LOCK TABLES, SET SESSION: the next request sees a fresh session ------

_MARIADB_PROBE = (
    "SELECT CONCAT_WS(' ', DATABASE(), @@character_set_client, @@sql_mode, @@time_zone, "
    "@@tx_isolation)"
)
_PG_PROBE = (
    "SELECT current_setting('search_path') || ' ' || current_setting('TimeZone') || ' ' "
    "|| current_setting('statement_timeout') || ' ' || current_setting('transaction_isolation')"
)


@pytest.mark.parametrize(
    "alias, statement",
    [
        pytest.param("default", "USE app_other", marks=pytest.mark.mariadb, id="USE"),
        pytest.param("default", "SET NAMES latin1", marks=pytest.mark.mariadb, id="SET-NAMES"),
        pytest.param("default", "LOCK TABLES items WRITE", marks=pytest.mark.mariadb, id="LOCK-TABLES"),
        pytest.param("default", "SET SESSION sql_mode = 'ANSI_QUOTES'", marks=pytest.mark.mariadb,
                     id="SET-SESSION"),
        pytest.param("default", "SET time_zone = '+05:00'", marks=pytest.mark.mariadb, id="time_zone"),
        pytest.param("pg", "SET search_path = pg_catalog", marks=pytest.mark.postgresql,
                     id="pg-search_path"),
        pytest.param("pg", "SET TIME ZONE '+05'", marks=pytest.mark.postgresql, id="pg-TIME-ZONE"),
        pytest.param("pg", "SET SESSION statement_timeout = 1234", marks=pytest.mark.postgresql,
                     id="pg-SET-SESSION"),
    ],
)
def test_the_next_request_sees_a_fresh_session_in_the_default_mode(make_app, request, alias, statement):
    srv = request.getfixturevalue("db" if alias == "default" else "pg_db")
    probe = _MARIADB_PROBE if alias == "default" else _PG_PROBE
    ident = "SELECT CONNECTION_ID()" if alias == "default" else "SELECT pg_backend_pid()"
    write = ("INSERT INTO app.short_names (name) VALUES ('by B')" if alias == "default"
             else "INSERT INTO public.items (name) VALUES ('by B')")

    def view(environ: dict[str, Any]) -> Any:
        if environ["PATH_INFO"] == "/a":
            _one(alias, statement)
        answer = {"id": _one(alias, ident), "session": _one(alias, probe)}
        if environ["PATH_INFO"] == "/b":
            _one(alias, write)  # refused under a kept LOCK TABLES
        return answer

    app = _app(make_app, view, alias, size=1)
    fresh = _get(app, "/fresh")
    a = _get(app, "/a")
    b = _get(app, "/b")
    assert a["id"] == b["id"] == fresh["id"]  # reset, not reconnected
    assert b["session"] == fresh["session"]
    if alias == "default":
        assert srv.admin_query("SELECT count(*) FROM app.short_names") == [(1,)]
    else:
        assert srv.app_query("SELECT count(*) FROM public.items") == [(1,)]


def test_the_clean_path_sends_no_session_reset(make_app, db):
    from django.db import connection

    app = make_app(size=1)
    # A session reset replays the database (COM_INIT_DB), which the server counts.
    before = db.status("Com_change_db")
    for _ in range(5):
        with app.checkout(), connection.cursor() as cursor:
            cursor.execute("INSERT INTO items (name) VALUES ('plain')")
            cursor.execute("SELECT COUNT(*) FROM items")
    assert db.status("Com_change_db") == before
    with app.checkout(), connection.cursor() as cursor:
        cursor.execute("SET @x = 1")
    assert db.status("Com_change_db") == before + 1
    assert app.stats()["default"]["pinned"] == 1


# -- 5. hold="transaction": pinned, counted, warned once ------------------------------------


def test_transaction_hold_pins_the_work_that_sets_session_state(make_app, db, caplog):
    def view(environ: dict[str, Any]) -> Any:
        first = _one("default", "SELECT CONNECTION_ID()")
        _one("default", "SET @mine = CONNECTION_ID()")
        gevent.sleep(0.01)
        return {"first": first, "mine": _one("default", "SELECT @mine"),
                "now": _one("default", "SELECT CONNECTION_ID()")}

    app = _app(make_app, view, "default", hold="transaction", size=2, max_outstanding=2)
    with caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
        answers = _concurrently(app, ["/pin"] * 6)
    assert all(a["mine"] == a["now"] for a in answers), answers  # its own variable, its connection
    assert app.stats()["default"]["pinned"] == 6
    warnings = [r.getMessage() for r in caplog.records if "hold='transaction'" in r.getMessage()]
    assert len(warnings) == 1 and "GET /pin" in warnings[0] and "SET" in warnings[0]


def test_the_pinned_warning_is_once_per_view_not_per_path(make_app, db, caplog):
    app = make_app(hold="transaction", size=2, max_outstanding=2)
    with caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
        for n in range(4):  # one view (run/<int:n>/), four paths
            assert call(app, f"/run/{n}/?sql=SET @x = 1")[0].startswith("200")
    warnings = [r.getMessage() for r in caplog.records if "hold='transaction'" in r.getMessage()]
    assert len(warnings) == 1 and "GET /run/0/" in warnings[0], warnings
    assert app.stats()["default"]["pinned"] == 4


def test_the_pinned_warning_is_once_per_task_not_per_run(django_site, db, caplog):
    from celery import Celery
    from django.db import connection

    from wsgi_dbpool.celery import pool_tasks

    celery_app = Celery("tests.pinned")
    pool = pool_tasks(celery_app, aliases=["default"], hold="transaction", size=1)

    @celery_app.task(name="tests.pinned.keeps_a_variable")
    def keeps_a_variable() -> Any:
        with connection.cursor() as cursor:
            cursor.execute("SET @t = CONNECTION_ID()")
            cursor.execute("SELECT @t = CONNECTION_ID()")
            return cursor.fetchone()[0]

    pool.wrap_tasks()
    try:
        with caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
            assert [keeps_a_variable.apply().get() for _ in range(3)] == [1, 1, 1]
    finally:
        pool.close()
    warnings = [r.getMessage() for r in caplog.records if "hold='transaction'" in r.getMessage()]
    assert len(warnings) == 1 and "task tests.pinned.keeps_a_variable" in warnings[0], warnings
    assert pool.stats()["default"]["pinned"] == 3


# -- 6. the knob: "raise" refuses, "ignore" is the old behaviour ----------------------------


def test_raise_refuses_session_state_before_it_is_set(make_app, db, hold):
    def view(environ: dict[str, Any]) -> Any:
        if environ["PATH_INFO"] == "/a":
            _one("default", "SET @x = 'from A'")
        return {"x": _one("default", "SELECT @x")}

    app = _app(make_app, view, "default", hold=hold, size=1, session_state="raise")
    refused = _get(app, "/a")["refused"]
    assert "session_state='raise'" in refused and "SET @x = 'from A'" in refused, refused
    assert _get(app, "/b") == {"x": None}
    # Django's own session set-up (the isolation level) and a session reset are not refused.
    app = _app(make_app, view, "default", hold=hold, size=1, session_state="raise",
               reset="session") if hold != "transaction" else app
    assert _get(app, "/b") == {"x": None}
    assert _get(app, "/b") == {"x": None}


def test_ignore_sees_nothing_as_before(make_app, db):
    def view(environ: dict[str, Any]) -> Any:
        if environ["PATH_INFO"] == "/a":
            _one("default", "SET @x = 'from A'")
        return {"x": _one("default", "SELECT @x")}

    app = _app(make_app, view, "default", size=1, session_state="ignore")
    _get(app, "/a")
    assert _get(app, "/b") == {"x": "from A"}  # documented: nothing seen, nothing reset
    assert app.stats()["default"]["pinned"] == 0


def test_session_state_is_checked_like_every_knob(make_app, django_site):
    with pytest.raises(ValueError, match="session_state must be one of"):
        make_app(session_state="reset")


# -- 7. the classifier against the server's own account ------------------------------------

# What a unit of work may send that leaves state on its session, and what it sends every day.
LEAVES_STATE = [
    "SET @x = 1", "SET @@session.sql_mode = ''", "SET SESSION time_zone = '+01:00'",
    "SET time_zone = '+02:00'", "SET NAMES latin1", "SET CHARACTER SET utf8mb4",
    "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET autocommit = 0",
    "SET autocommit = 1", "SET SQL_AUTO_IS_NULL = 1", "USE app_other", "USE app",
    "CREATE TEMPORARY TABLE scratch_a (x INT)", "CREATE OR REPLACE TEMPORARY TABLE scratch_b (x INT)",
    "PREPARE p FROM 'SELECT 1'", "/* a comment */ SET @y = 2", "set @z = 3",
]
# Not session state, though they look like it (a table named temp; a reader after its setter).
LOOK_ALIKE_POSTGRES = [
    "INSERT INTO temp (x) VALUES (1)", "insert into temporary select 1",
    "INSERT INTO items (name) VALUES ('x'); SELECT currval('items_id_seq')",
    "SELECT nextval('items_id_seq'); SELECT currval('items_id_seq')",
]


def test_look_alikes_are_not_session_state():
    from wsgi_dbpool.session_state import CLASSIFIERS

    assert [sql for sql in LOOK_ALIKE_POSTGRES if CLASSIFIERS["postgresql"].classify(sql)] == []


EVERYDAY = [
    "SELECT 1", "SELECT name FROM items WHERE id = 1", "INSERT INTO items (name) VALUES ('e')",
    "UPDATE items SET name = 'f' WHERE id = -1", "DELETE FROM items WHERE id = -1", "BEGIN",
    "COMMIT", "SET TRANSACTION ISOLATION LEVEL READ COMMITTED", "SAVEPOINT s", "ROLLBACK",
    "SELECT COUNT(*) FROM items", "DO 1",
]


@pytest.mark.mariadb
def test_the_classifier_sees_every_change_mariadb_reports(db):
    """MariaDB reports a session-state change (SERVER_SESSION_STATE_CHANGED) on the OK packet
    of the statement, with CLIENT_SESSION_TRACK and session_track_state_change=ON: every
    statement it flags, the classifier marks; no everyday statement is marked by either."""
    import pymysql
    from pymysql.constants import CLIENT

    from wsgi_dbpool.session_state import CLASSIFIERS

    classify = CLASSIFIERS["mysql"].classify
    raw = pymysql.connect(host=db.host, port=db.port, user=db.user, password=db.password,
                          database=db.database, client_flag=CLIENT.SESSION_TRACK)
    try:
        with raw.cursor() as cursor:
            cursor.execute("SET SESSION session_track_state_change = ON")
            reported = {}
            for sql in LEAVES_STATE + EVERYDAY:
                cursor.execute("DO 1")  # an OK packet: clears a flag a result set left behind
                cursor.execute(sql)
                cursor.fetchall()
                reported[sql] = bool(raw.server_status & 0x4000) and not raw._result.field_count
    finally:
        raw.close()
    assert [sql for sql in LEAVES_STATE if not reported[sql]] == []  # the server agrees
    assert [sql for sql in EVERYDAY if reported[sql]] == []
    assert [sql for sql in LEAVES_STATE if classify(sql) is None] == []
    assert [sql for sql in EVERYDAY if classify(sql) is not None] == []

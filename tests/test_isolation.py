"""What one request leaves in the server session, and whether the next one sees it.

Each leak kind runs with the defaults (``reset="transaction"``, ``session_state="pin"``: the
session is reset because the work changed it), with ``reset="session"`` (reset always), and with
``session_state="ignore"`` (nothing seen: the state is handed on, as documented);
``docs/isolation.md`` says the same as these tests.
"""

from __future__ import annotations

import pytest
from django.db.utils import ProgrammingError


def _run(sql: str) -> object:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql)
        row = cursor.fetchone() if cursor.description else None
        return row[0] if row else None


def _conn_id() -> int:
    return int(_run("SELECT CONNECTION_ID()"))  # type: ignore[arg-type]


# kind: (what request A does, what request B reads, B's value when it leaked, when clean)
LEAKS = {
    "user-variable": ("SET @secret = 'from A'", "SELECT @secret", "from A", None),
    "session-variable": (
        "SET SESSION time_zone = '+05:00'", "SELECT @@session.time_zone", "+05:00", "SYSTEM",
    ),
    "isolation-level": (
        "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SELECT @@session.tx_isolation", "SERIALIZABLE", "READ-COMMITTED",  # Django's default
    ),
    "temporary-table": (
        "CREATE TEMPORARY TABLE scratch (x INT)", "SELECT COUNT(*) FROM scratch", 0, "missing",
    ),
}


# (reset, session_state): the session is handed on only when nothing looks at it.
MODES = [("transaction", "pin"), ("session", "pin"), ("transaction", "ignore")]
MODE_IDS = ["default", "reset-session", "ignore"]


def _leaks(reset: str, session_state: str) -> bool:
    return reset == "transaction" and session_state == "ignore"


@pytest.mark.parametrize(("reset", "session_state"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize("kind", list(LEAKS))
def test_session_state_between_requests(make_app, db, kind, reset, session_state):
    app = make_app(size=1, reset=reset, session_state=session_state)
    plant, probe, leaked, clean = LEAKS[kind]
    with app.checkout():
        first = _conn_id()
        _run(plant)
    with app.checkout():
        same = _conn_id() == first
        try:
            seen = _run(probe)
        except ProgrammingError:  # e.g. the temporary table is gone
            seen = "missing"
    assert same, "the next request must reuse the same server connection"
    assert seen == (leaked if _leaks(reset, session_state) else clean)


@pytest.mark.parametrize(("reset", "session_state"), MODES, ids=MODE_IDS)
def test_named_lock(make_app, db, reset, session_state):
    app = make_app(size=1, reset=reset, session_state=session_state)
    with app.checkout():
        holder = _conn_id()
        assert _run("SELECT GET_LOCK('wsgi_dbpool_test', 0)") == 1
    # Asked from outside: who holds the lock once the request is over?
    owner = db.admin_query("SELECT IS_USED_LOCK('wsgi_dbpool_test')")[0][0]
    assert owner == (holder if _leaks(reset, session_state) else None)


@pytest.mark.parametrize(("reset", "session_state"), MODES, ids=MODE_IDS)
def test_lock_tables(make_app, db, reset, session_state):
    app = make_app(size=1, reset=reset, session_state=session_state)
    with app.checkout():
        _run("LOCK TABLES items WRITE")
    in_use = db.admin_query("SHOW OPEN TABLES FROM app WHERE `Table` = 'items' AND In_use > 0")
    assert bool(in_use) == _leaks(reset, session_state)
    if _leaks(reset, session_state):
        with app.checkout():
            _run("UNLOCK TABLES")


def test_session_reset_costs_round_trips_only_with_the_option(make_app, db):
    app = make_app(size=1, reset="session")
    with app.checkout():
        _run("SELECT 1")
    before = db.user_statistics("app")
    for _ in range(10):
        with app.checkout():
            _run("SELECT 1")
    after = db.user_statistics("app")
    # Per return: the reset and the database (protocol commands the server's statistics do
    # not count as statements), then what connect() set up, replayed: SET NAMES, and
    # Django's session set-up, one SET of the isolation level.
    assert after["select_commands"] - before["select_commands"] == 10
    assert after["other_commands"] - before["other_commands"] == 20
    assert app.stats()["default"]["opened"] == 1

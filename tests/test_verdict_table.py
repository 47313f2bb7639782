"""The return-path verdict and the front's detach decision, as tables, without a server.

Each row is a wrapper state and a driver state (what PyMySQL and psycopg hold in memory,
on stand-ins of their connection objects; sqlite3's is a real in-memory connection) and
the decision expected: the order of ``verdict.py``'s header, pinned in milliseconds. The
servers' own suites (tests/test_clean.py, tests/test_hold.py) check that those driver
states are what the drivers really report.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

from wsgi_dbpool import drivers, verdict
from wsgi_dbpool.front import KEEP_ATTACHED, keep_attached
from wsgi_dbpool.record import Record
from wsgi_dbpool.verdict import Action, judge

IN_TRANS, AUTOCOMMIT = 1, 2  # PyMySQL server_status bits (SERVER_STATUS_*)


class PyMySQLState:
    """What the PyMySQL probe reads: ``open``, ``_result``, ``server_status``."""

    def __init__(self, *, open: bool = True, status: int = AUTOCOMMIT, unread: bool = False) -> None:
        self.open = open
        self.server_status = status
        self._result = type("Result", (), {"unbuffered_active": unread, "has_next": False})()


class PsycopgState:
    """What the psycopg 3 probe reads: libpq's own ``pgconn.status`` (CONNECTION_BAD 1 once
    closed) and ``pgconn.transaction_status`` (IDLE 0, ACTIVE 1, INTRANS 2, INERROR 3,
    UNKNOWN 4), and ``autocommit``; ``info`` and ``broken`` tell the driver apart."""

    def __init__(self, *, status: int = 0, closed: bool = False, autocommit: bool = True) -> None:
        self.closed = closed
        self.broken = False
        self.autocommit = autocommit
        self.info = type("Info", (), {"transaction_status": status})()
        self.pgconn = type("PGconn", (), {"status": 1 if closed else 0, "transaction_status": status})()


class Wrapper:
    """The Django wrapper state the verdict reads, with its record."""

    def __init__(self, raw: Any, **state: Any) -> None:
        self._wsgi_dbpool = Record(None)  # type: ignore[arg-type]
        self.connection = raw
        self.settings_dict = {"AUTOCOMMIT": True}
        self.in_atomic_block = False
        self.autocommit = True
        self.errors_occurred = False
        self.close_at: float | None = None
        for name, value in state.items():
            if name in ("failover", "session", "expires"):
                setattr(self._wsgi_dbpool, name, value)
            else:
                setattr(self, name, value)


def _sqlite(*, in_transaction: bool = False, autocommit: bool = True) -> sqlite3.Connection:
    raw = sqlite3.connect(":memory:", isolation_level=None if autocommit else "")
    if in_transaction:
        raw.execute("BEGIN")
    return raw


PAST = time.monotonic() - 1.0
CLEAN = PyMySQLState()

# (id, wrapper, broken, reset_session) -> (action, reason), in the header's order.
VERDICTS = [
    ("0-failover-first", Wrapper(CLEAN, failover="MySQL error 1290", in_atomic_block=True), True,
     False, Action.FAIL_OVER, "MySQL error 1290"),
    ("1-atomic-before-not-connected", Wrapper(None, in_atomic_block=True), False, False,
     Action.REPLACE, verdict.IN_ATOMIC),
    ("2-not-connected", Wrapper(None, errors_occurred=True), True, True,
     Action.KEEP, verdict.NOT_CONNECTED),
    ("3-interrupted", Wrapper(PyMySQLState(status=IN_TRANS)), True, False,
     Action.CLOSE, verdict.INTERRUPTED),
    ("3-pymysql-closed", Wrapper(PyMySQLState(open=False)), False, False,
     Action.CLOSE, drivers.CLOSED),
    ("3-pymysql-unread-result", Wrapper(PyMySQLState(unread=True)), False, False,
     Action.CLOSE, drivers.MID_RESULT),
    ("3-psycopg-mid-command", Wrapper(PsycopgState(status=1)), False, False,
     Action.CLOSE, drivers.MID_COMMAND),
    ("3-psycopg-unknown-is-closed", Wrapper(PsycopgState(status=4)), False, False,
     Action.CLOSE, drivers.CLOSED),
    ("4-pymysql-in-transaction", Wrapper(PyMySQLState(status=IN_TRANS | AUTOCOMMIT)), False,
     False, Action.ROLL_BACK, drivers.IN_TRANSACTION),
    ("4-pymysql-autocommit-off-by-sql", Wrapper(PyMySQLState(status=0)), False, False,
     Action.ROLL_BACK, drivers.AUTOCOMMIT_CHANGED),
    ("4-psycopg-in-error", Wrapper(PsycopgState(status=3)), False, False,
     Action.ROLL_BACK, drivers.IN_TRANSACTION),
    ("4-sqlite-in-transaction", Wrapper(_sqlite(in_transaction=True)), False, False,
     Action.ROLL_BACK, drivers.IN_TRANSACTION),
    ("4-django-autocommit-left-off", Wrapper(CLEAN, autocommit=False), False, False,
     Action.ROLL_BACK, verdict.AUTOCOMMIT_LEFT_OFF),
    ("5-errors-before-lifetime", Wrapper(CLEAN, errors_occurred=True, close_at=PAST), False,
     True, Action.CHECK, verdict.ERRORS_OCCURRED),
    ("6-conn-max-age", Wrapper(CLEAN, close_at=PAST, expires=PAST), False, True,
     Action.CLOSE, verdict.TOO_OLD),
    ("6-max-lifetime", Wrapper(CLEAN, expires=PAST, session="SET"), False, True,
     Action.CLOSE, verdict.PAST_LIFETIME),
    ("7-session-changed-before-reset-mode", Wrapper(CLEAN, session="SET"), False, True,
     Action.RESET, verdict.SESSION_CHANGED),
    ("7-reset-session", Wrapper(_sqlite()), False, True, Action.RESET, verdict.SESSION),
    ("8-clean", Wrapper(PsycopgState()), False, False, Action.KEEP, verdict.CLEAN),
]


@pytest.mark.parametrize(
    ("wrapper", "broken", "reset_session", "action", "reason"),
    [row[1:] for row in VERDICTS], ids=[row[0] for row in VERDICTS],
)
def test_verdict_table(wrapper, broken, reset_session, action, reason):
    assert judge(wrapper, broken, reset_session) == (action, reason)


def test_verdict_reuses_the_trouble_it_is_given():
    in_transaction = PyMySQLState(status=IN_TRANS | AUTOCOMMIT)
    # What the front read (nothing wrong) is trusted: the driver is not asked again.
    assert judge(Wrapper(in_transaction), False, False, None) == (Action.KEEP, verdict.CLEAN)
    # Not given (UNKNOWN, the default, and what a front passes for an alias configured with
    # AUTOCOMMIT off): the verdict reads the driver for the alias's setting.
    manual = Wrapper(PyMySQLState(status=AUTOCOMMIT), settings_dict={"AUTOCOMMIT": False},
                     autocommit=False)
    assert judge(manual, False, False, verdict.UNKNOWN) == (
        Action.ROLL_BACK, drivers.AUTOCOMMIT_CHANGED
    )


# (id, wrapper) -> what the front does after a statement under hold="transaction".
DETACH = [
    ("pinned", Wrapper(CLEAN, session="SET"), KEEP_ATTACHED),
    ("inside-atomic", Wrapper(CLEAN, in_atomic_block=True), KEEP_ATTACHED),
    ("autocommit-off", Wrapper(CLEAN, autocommit=False), KEEP_ATTACHED),
    ("pymysql-in-transaction", Wrapper(PyMySQLState(status=IN_TRANS | AUTOCOMMIT)), KEEP_ATTACHED),
    ("pymysql-autocommit-off-by-sql", Wrapper(PyMySQLState(status=0)), KEEP_ATTACHED),
    ("pymysql-unread-result", Wrapper(PyMySQLState(unread=True)), KEEP_ATTACHED),
    ("psycopg-in-transaction", Wrapper(PsycopgState(status=2)), KEEP_ATTACHED),
    ("sqlite-in-transaction", Wrapper(_sqlite(in_transaction=True)), KEEP_ATTACHED),
    ("clean-detaches", Wrapper(CLEAN), None),
    ("sqlite-clean-detaches", Wrapper(_sqlite()), None),
    # Unusable: detach, and the verdict closes it with the reason read here.
    ("pymysql-closed-detaches", Wrapper(PyMySQLState(open=False)), drivers.CLOSED),
    ("psycopg-mid-command-detaches", Wrapper(PsycopgState(status=1)), drivers.MID_COMMAND),
]


@pytest.mark.parametrize(("wrapper", "expected"), [row[1:] for row in DETACH],
                         ids=[row[0] for row in DETACH])
def test_front_detach_table(wrapper, expected):
    decided = keep_attached(wrapper, wrapper._wsgi_dbpool, wrapper.connection)
    assert decided is expected or decided == expected
    if decided is not KEEP_ATTACHED:  # the verdict, given what was read, agrees with a fresh read
        assert judge(wrapper, False, False, decided) == judge(wrapper, False, False)

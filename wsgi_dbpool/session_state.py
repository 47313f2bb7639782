"""Session state: see, at the execute seam and at no round trip, which statements leave state
on their server connection, and which read state an earlier statement left there.

A pooled connection outlives the unit of work (request, ``checkout()``, task) that used it.
What a statement leaves in the *session* (a variable, a temporary table, a named lock, the
current database) is seen by whoever holds the connection next; and under
``hold="transaction"`` the next statement of the *same* work may run on another connection.
So every statement sent through Django's cursor is classified (two precompiled patterns per
backend: what a statement starts with, and what it calls; the answer cached per SQL text, as
ORM statements repeat):

- a statement that **sets** session state marks the connection (its record's ``session``): the
  return path resets its session (``COM_RESET_CONNECTION`` / ``DISCARD ALL``, as
  ``reset="session"``), and under ``hold="transaction"`` the unit of work keeps the connection
  to its end (*pinned*), so its later statements see what it set;
- a statement that **reads** what the previous statement left (``LAST_INSERT_ID()``,
  ``@@identity``, ``FOUND_ROWS()``, ``ROW_COUNT()``; PostgreSQL ``currval()``, ``lastval()``;
  not after a statement of its own text that set it) is refused with
  :class:`~wsgi_dbpool.SessionStateError` when it would be the first statement of its work on
  that connection: the value would be another request's. Under ``hold="transaction"`` that is
  every such read outside ``atomic()`` in a work not pinned: the INSERT that set the id ran on
  a connection given back since. Pinning on every INSERT instead would take ``hold=
  "transaction"``'s sharing away from every view that writes; the fix is one line (run both in
  ``atomic()``, or read ``cursor.lastrowid`` / ``RETURNING``).

``session_state="raise"`` refuses the setters too, before they run (to find every use, in CI);
``"ignore"`` installs nothing (no cost, nothing seen: the behaviour before this module).

What cannot be seen: SQL sent on the raw driver connection (``connection.connection``),
``callproc()`` and what a stored procedure or trigger does inside the server (``CALL`` is not
classified), SQL given as a non-``str`` object (psycopg ``sql.Composed``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import SessionStateError
from .record import Record, record_of
from .settings import SessionStateMode

# Kept in each pooled wrapper's record (wsgi_dbpool.record): ``session``, what changed the
# session of its connection (a label) or None; ``ran``, a statement ran on the connection
# since this work took it; ``setup``, True while Django sets the session up (connect, or
# after a session reset): its statements (the isolation level, say) are the connection's
# own, not the work's.

# What a statement starts with (the string, or after a ';': psycopg runs several), past
# comments; and what it calls anywhere. Named groups: the ones in _READERS read state, the
# others set it. The second pattern runs only on a text that holds one of its needles.
_START = r"(?:/\*.*?\*/\s*|--[^\n]*\n\s*)*"
# MySQL also ends a comment at the line's end after '#', and runs the text of a
# /*! ... */ (MariaDB: /*M! ... */) comment: its statement starts inside it.
_MYSQL_COMMENTS = r"(?:/\*M?!\d*\s*|/\*.*?\*/\s*|(?:--|#)[^\n]*\n\s*)*"
_MYSQL_START = re.compile(
    r"\s*" + _MYSQL_COMMENTS + r"(?:"
    r"(?P<set>SET\b(?!\s+(?:TRANSACTION|STATEMENT)\b))"
    r"|(?P<use>USE\b)"
    r"|(?P<lock_tables>LOCK\s+TABLES?\b)"
    r"|(?P<temporary>CREATE\s+(?:OR\s+REPLACE\s+)?TEMPORARY\b)"
    r"|(?P<prepare>PREPARE\b)"
    r"|(?P<handler>HANDLER\b))",
    re.IGNORECASE | re.DOTALL,
)
_MYSQL_ANYWHERE = re.compile(
    r"\b(?:(?P<get_lock>GET_LOCK)\s*\("
    r"|(?P<calc_found_rows>SQL_CALC_FOUND_ROWS)\b"
    r"|(?P<set_insert_id>LAST_INSERT_ID)\s*\(\s*[^)\s]"
    r"|(?P<last_insert_id>LAST_INSERT_ID)\s*\(\s*\)"
    r"|(?P<found_rows>FOUND_ROWS)\s*\(\s*\)"
    r"|(?P<row_count>ROW_COUNT)\s*\(\s*\))"
    r"|(?P<identity>@@(?:SESSION\.)?(?:IDENTITY|LAST_INSERT_ID)\b)(?!\s*:?=)"
    r"|(?P<user_variable>:=|\bINTO\s+@)",
    re.IGNORECASE,
)
_MYSQL_NEEDLES = ("get_lock", "found_rows", "last_insert_id", "row_count", ":=", "@")
_POSTGRES_START = re.compile(
    r"\s*" + _START + r"(?:"
    r"(?P<set>SET\b(?!\s+(?:LOCAL|TRANSACTION|CONSTRAINTS)\b))"
    r"|(?P<listen>LISTEN\b)"
    r"|(?P<prepare>PREPARE\b)"
    r"|(?P<hold_cursor>DECLARE\b[^;]*?\bWITH\s+HOLD\b)"
    r"|(?P<temporary>CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b)"
    r"|(?P<load>LOAD\b))",
    re.IGNORECASE | re.DOTALL,
)
_POSTGRES_ANYWHERE = re.compile(
    r"\b(?:(?P<advisory_lock>PG_(?:TRY_)?ADVISORY_LOCK(?:_SHARED)?)\s*\("
    r"|(?P<set_config>SET_CONFIG)\s*\("
    r"|(?P<currval>CURRVAL)\s*\("
    r"|(?P<lastval>LASTVAL)\s*\(\s*\)"
    r"|(?P<into_temporary>INTO\s+TEMP(?:ORARY)?)\b)",
    re.IGNORECASE,
)
_POSTGRES_NEEDLES = ("advisory_lock", "set_config", "currval", "lastval", "temp")
LABELS = {
    "set": "SET", "use": "USE", "lock_tables": "LOCK TABLES",
    "temporary": "CREATE TEMPORARY TABLE", "prepare": "PREPARE", "handler": "HANDLER",
    "get_lock": "GET_LOCK()", "calc_found_rows": "SQL_CALC_FOUND_ROWS",
    "set_insert_id": "LAST_INSERT_ID(expr)", "user_variable": "a user variable (:= or INTO @)",
    "last_insert_id": "LAST_INSERT_ID()", "found_rows": "FOUND_ROWS()", "row_count": "ROW_COUNT()",
    "listen": "LISTEN", "hold_cursor": "DECLARE ... WITH HOLD", "load": "LOAD",
    "advisory_lock": "pg_advisory_lock()", "set_config": "set_config()",
    "currval": "currval()", "lastval": "lastval()", "identity": "@@identity",
    "into_temporary": "SELECT ... INTO TEMP",
}
# Each reader, and the first words of an earlier statement of the same text that set what it
# reads there, on the same connection (INSERT ...; SELECT currval(...)): then it is not refused.
_READERS = {
    "last_insert_id": ("insert", "replace"), "identity": ("insert", "replace"),
    "found_rows": ("select",), "row_count": ("insert", "replace", "update", "delete"),
    "currval": ("insert", "nextval"), "lastval": ("insert", "nextval"),
}

# (what it sets, what it reads): labels, or None. None for a statement that does neither.
Kind = tuple["str | None", "str | None"] | None

_CACHE_LIMIT = 4096


class Classifier:
    """What a statement does to its session, from its SQL text; cached per text."""

    __slots__ = ("_anywhere", "_needles", "_start", "cache")

    def __init__(
        self, start: re.Pattern[str], anywhere: re.Pattern[str], needles: tuple[str, ...]
    ) -> None:
        self._start = start
        self._anywhere = anywhere
        self._needles = needles
        self.cache: dict[str, Kind] = {}

    def __call__(self, sql: object) -> Kind:
        if type(sql) is not str:
            return None  # a psycopg sql.Composed, bytes: not seen (documented)
        try:
            return self.cache[sql]
        except KeyError:
            pass
        kind = self.classify(sql)
        if len(self.cache) >= _CACHE_LIMIT:
            self.cache.clear()  # many distinct texts (IN lists of every length): start over
        self.cache[sql] = kind
        return kind

    def classify(self, sql: str) -> Kind:
        sets = reads = None
        for group in self._groups(sql):
            assert group is not None
            if group in _READERS:
                reads = reads or LABELS[group]
            else:
                sets = sets or LABELS[group]
        if sets is None and reads is None:
            return None
        return sets, reads

    def _groups(self, sql: str) -> list[str | None]:
        """The pattern groups ``sql`` matches, statement by statement: at its start, and
        anywhere; a reader is left out after an earlier statement that set what it reads."""
        groups: list[str | None] = []
        low = sql.lower()
        anywhere = any(needle in low for needle in self._needles)
        before: list[str] = []  # the first words of the statements before this one
        for statement in sql.split(";"):
            match = self._start.match(statement)
            if match is not None:
                groups.append(match.lastgroup)
            lowered = statement.lower()
            words = lowered.split(None, 1)
            first = words[0] if words else ""
            if anywhere:
                found = [m.lastgroup for m in self._anywhere.finditer(statement)]
                groups += [g for g in found if not _set_before(g, before, first)]
            before.append(first)
            if "nextval" in lowered:  # SELECT nextval(...) before: it sets currval()
                before.append("nextval")
        return groups


def _set_before(group: str | None, before: list[str], first: str) -> bool:
    """True for a reader after a statement that set what it reads, and for ``INTO TEMP`` in
    an ``INSERT`` (``INSERT INTO temp ...``: a table named temp)."""
    if group == "into_temporary":
        return first == "insert"
    setters = _READERS.get(group or "")
    return setters is not None and any(word in setters for word in before)


CLASSIFIERS = {
    "mysql": Classifier(_MYSQL_START, _MYSQL_ANYWHERE, _MYSQL_NEEDLES),
    "postgresql": Classifier(_POSTGRES_START, _POSTGRES_ANYWHERE, _POSTGRES_NEEDLES),
}


def watcher(
    vendor: str, mode: SessionStateMode, note_error: Callable[[Record, BaseException], None]
) -> Any:
    """The statement hook (execute_wrapper-shaped) that watches the pooled wrappers of one
    alias; None: nothing to watch (``"ignore"``, or a backend with no session reset, such as
    SQLite). ``note_error(record, exc)`` is called for every error a statement raises (the
    failover watch, folded in here: one hook, one frame per statement, not two)."""
    classify = CLASSIFIERS.get(vendor)
    if classify is None or mode == "ignore":
        return None
    refuse_setters = mode == "raise"
    seen = classify.cache  # read inline: the everyday path is one dictionary lookup

    def watch(
        execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]
    ) -> Any:
        wrapper = context["connection"]
        record: Record = wrapper._wsgi_dbpool
        try:
            kind = seen[sql]
        except (KeyError, TypeError):
            kind = classify(sql)
        if kind is None or record.session is not None:  # nothing new to learn
            try:
                return execute(sql, params, many, context)
            except Exception as exc:
                note_error(record, exc)
                raise
            finally:
                record.ran = True
        if record.setup:
            try:
                return execute(sql, params, many, context)
            except Exception as exc:
                note_error(record, exc)
                raise
        sets, reads = kind
        if reads is not None and not record.ran:
            raise SessionStateError(_read_elsewhere(reads, sql, wrapper))
        if sets is not None and refuse_setters:
            raise SessionStateError(_refused(sets, sql, wrapper))
        try:
            return execute(sql, params, many, context)
        except Exception as exc:
            note_error(record, exc)
            raise
        finally:
            record.ran = True
            if sets is not None:
                record.session = sets

    return watch


def _quoted(sql: str) -> str:
    text = " ".join(sql.split())
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _read_elsewhere(reads: str, sql: str, wrapper: Any) -> str:
    front = record_of(wrapper).front
    if front is not None and front.per_transaction:
        where = (
            "under hold='transaction' the statement that set it ran on a connection given "
            "back since, and this one runs on whichever connection is free"
        )
    else:
        where = "it is the first statement of this unit of work on its connection"
    return (
        f"{_quoted(sql)}: {reads} reads what the previous statement left on its connection "
        f"({wrapper.alias!r}), "
        f"and {where}: it would return another request's value. Run the statement that sets "
        f"it and {reads} together inside transaction.atomic(), or take the value from the "
        f"statement itself (cursor.lastrowid, INSERT ... RETURNING)"
    )


def _refused(sets: str, sql: str, wrapper: Any) -> str:
    return (
        f"{_quoted(sql)}: {sets} leaves state on the session of its connection "
        f"({wrapper.alias!r}), refused by "
        f"session_state='raise'. Undo it in the same unit of work, or use a transaction-scoped "
        f"form (SET LOCAL, pg_advisory_xact_lock) inside transaction.atomic(); "
        f"session_state='pin' (the default) allows it: the work keeps its connection to its "
        f"end and the session is reset on return"
    )

"""What this library knows about each database driver: one adapter class per family.

An adapter answers, for a raw driver connection, from what the driver holds in memory
(no round trip unless said): what is wrong with it (:meth:`Driver.trouble`), how to drop
it without a word on the wire, how to forget a result left on the wire, how to reset
its server session, whether an error means a failover, its server-side id for the logs,
and how to ping it. :class:`PyMySQL`, :class:`Psycopg` (3),
:class:`Psycopg2` and :class:`SQLite3`; :class:`Driver` itself stands for a driver we
know nothing of (Django's own flags are all we go by). Adding a driver (mysqlclient,
oracledb) is one class here, added to :data:`DRIVERS`.

The private driver details read here are listed in :mod:`wsgi_dbpool._internals`'s table.
"""

from __future__ import annotations

import logging
import re
from typing import Any

logger = logging.getLogger("wsgi_dbpool")

# What is wrong with a raw connection, by the driver's account (None: nothing). The first
# three mean the connection cannot be handed on at all; the last two mean it is usable
# once rolled back and its autocommit restored.
CLOSED = "its connection was closed under it (an interrupted or lost query)"
MID_RESULT = "a result was still being read from the wire"
MID_COMMAND = "a command was still in progress"
IN_TRANSACTION = "it was left in a transaction"
AUTOCOMMIT_CHANGED = "its autocommit was changed behind Django's back"

UNUSABLE = frozenset((CLOSED, MID_RESULT, MID_COMMAND))

# Driver.unreachable()'s answer for an error that is not this driver's to judge.
UNDECIDED: Any = object()


class Driver:
    """A driver we know nothing of; the base of the adapters."""

    name = "unknown"

    @staticmethod
    def recognises(raw: Any) -> bool:
        return True

    def trouble(self, raw: Any, autocommit: bool) -> str | None:
        """What is wrong with ``raw`` for a holder expecting ``autocommit``; None: nothing."""
        return None  # Django's own flags are all we go by

    def force_close(self, raw: Any) -> None:
        """Drop the raw connection without a goodbye on the wire (it may be mid-protocol)."""
        raw.close()

    def abandon_unread_result(self, raw: Any) -> None:
        """Forget a result left on the wire, so that the cursor holding it does not read
        on from a closed connection when it is collected."""

    def reset_session(self, raw: Any) -> bool:
        """Reset the server session as a fresh connection has it; False if unsupported."""
        return False

    def failover_reason(self, error: BaseException) -> str | None:
        """Why the driver's ``error`` means the connection points at the wrong server."""
        return None

    def unreachable(self, error: BaseException) -> Any:
        """Why a failed connect's ``error`` means the server could not be reached (a
        reason), None if the server answered, :data:`UNDECIDED` if not this driver's."""
        return UNDECIDED

    def label(self, raw: Any) -> str:
        """The server's id for the connection, from what the driver already knows."""
        return hex(id(raw))

    def ping(self, wrapper: Any) -> bool:
        """Django's ``is_usable()``: one round trip."""
        return bool(wrapper.is_usable())


# MySQL / MariaDB error numbers (the first argument of the driver's error).
MYSQL_ERRORS = {
    1290: "the server runs with --read-only",  # ER_OPTION_PREVENTS_STATEMENT
    1792: "the transaction is read-only",  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    1836: "the server is in read-only mode",  # ER_READ_ONLY_MODE
    2006: "the server has gone away",  # CR_SERVER_GONE_ERROR
    2013: "the connection to the server was lost",  # CR_SERVER_LOST
}
COM_RESET_CONNECTION = 0x1F  # MySQL >= 5.7, MariaDB >= 10.2


class PyMySQL(Driver):
    """PyMySQL (MySQL, MariaDB)."""

    name = "PyMySQL"

    @staticmethod
    def recognises(raw: Any) -> bool:
        return isinstance(getattr(raw, "server_status", None), int) and hasattr(raw, "open")

    def trouble(self, raw: Any, autocommit: bool) -> str | None:
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

    def force_close(self, raw: Any) -> None:
        raw._force_close()  # close the socket, send nothing

    def abandon_unread_result(self, raw: Any) -> None:
        result = getattr(raw, "_result", None)
        if result is not None and getattr(result, "unbuffered_active", False):
            result.unbuffered_active = False

    def reset_session(self, raw: Any) -> bool:
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
        return True

    def failover_reason(self, error: BaseException) -> str | None:
        args = error.args
        if args and isinstance(args[0], int) and args[0] in MYSQL_ERRORS:
            return f"MySQL error {args[0]}: {MYSQL_ERRORS[args[0]]}"
        return None

    def unreachable(self, error: BaseException) -> Any:
        # Client-side errors are numbered 2000-2999 (CR_*: cannot connect, unknown host,
        # lost or gone during the handshake); the server's own answers are below 2000.
        args = error.args
        if args and isinstance(args[0], int):
            return f"MySQL client error {args[0]}" if 2000 <= args[0] < 3000 else None
        return UNDECIDED

    def label(self, raw: Any) -> str:
        return str(raw.thread_id())  # CONNECTION_ID()

    def ping(self, wrapper: Any) -> bool:
        """Without a silent reconnect: PyMySQL before 1.2 pings with ``reconnect=True`` by
        default, so Django's check answers "usable" for a connection the server killed,
        having opened a new session behind Django's back (no ``connection_created``, no
        Django set-up, not counted)."""
        try:
            wrapper.connection.ping(reconnect=False)
        except wrapper.Database.Error:
            return False
        return True


# PostgreSQL SQLSTATE 57P03 cannot_connect_now: starting up, shutting down, in recovery.
POSTGRES_DOWN = frozenset(("57P03",))
# A failed connect carries no SQLSTATE (no result to read it from): libpq's message tells a
# server's answer ("... failed: FATAL:  too many connections for role ...", the severity in
# the server's language, two spaces) from its own failures (refused, timeout, lost).
_POSTGRES_ANSWERED = re.compile(r"failed: [^\s:]+:  (.*)", re.DOTALL)
# 57P03's messages (English servers): an answer, but the server cannot serve yet.
_POSTGRES_NOT_YET = "the database system is "
# PostgreSQL SQLSTATEs.
POSTGRES_ERRORS = {
    "25006": "the transaction is read-only",  # read_only_sql_transaction
    "57P01": "the server is shutting down",  # admin_shutdown
}


_CONNECTION_BAD = 1  # libpq's ConnStatusType CONNECTION_BAD


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


class Psycopg(Driver):
    """psycopg 3 (PostgreSQL)."""

    name = "psycopg"

    @staticmethod
    def recognises(raw: Any) -> bool:
        info = getattr(raw, "info", None)
        return info is not None and hasattr(info, "transaction_status") and hasattr(raw, "broken")

    def trouble(self, raw: Any, autocommit: bool) -> str | None:
        # libpq's own state, read from the PGconn: ``raw.info.transaction_status`` would build
        # a ConnectionInfo and an enum on every return (2.3 against 0.6 us, measured).
        # ``status`` is CONNECTION_BAD once closed or broken, and libpq answers UNKNOWN then.
        # The clean case inline (one call per statement under hold="transaction").
        pgconn = raw.pgconn
        status = pgconn.transaction_status
        if status == 0 and pgconn.status != _CONNECTION_BAD and raw.autocommit is autocommit:
            return None  # idle, open, autocommit as expected
        return _libpq(
            pgconn.status == _CONNECTION_BAD, status, bool(raw.autocommit), autocommit,
        )

    def reset_session(self, raw: Any) -> bool:
        with raw.cursor() as cursor:
            cursor.execute("DISCARD ALL")
        return True

    def failover_reason(self, error: BaseException) -> str | None:
        # psycopg 3: ``sqlstate``; psycopg2: ``pgcode``.
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if state in POSTGRES_ERRORS:
            return f"SQLSTATE {state}: {POSTGRES_ERRORS[state]}"
        return None

    def unreachable(self, error: BaseException) -> Any:
        if not type(error).__module__.startswith(("psycopg", "psycopg2")):
            return UNDECIDED
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if state is not None:
            return f"SQLSTATE {state}" if state in POSTGRES_DOWN else None
        answered = _POSTGRES_ANSWERED.search(str(error))
        if answered is None:
            return "no answer from the server"
        if answered.group(1).startswith(_POSTGRES_NOT_YET):  # starting up, shutting down...
            return "the server cannot take connections now"
        return None  # it answered (too many connections, unknown role or database): it is up

    def label(self, raw: Any) -> str:
        return str(raw.info.backend_pid)


class Psycopg2(Psycopg):
    """psycopg2 (PostgreSQL)."""

    name = "psycopg2"

    @staticmethod
    def recognises(raw: Any) -> bool:
        return callable(getattr(raw, "get_transaction_status", None))

    def trouble(self, raw: Any, autocommit: bool) -> str | None:
        closed = bool(raw.closed)
        status = 4 if closed else int(raw.get_transaction_status())
        return _libpq(closed, status, bool(raw.autocommit), autocommit)

    def label(self, raw: Any) -> str:
        return str(raw.get_backend_pid())


class SQLite3(Driver):
    """Python's sqlite3: no server, no session to reset."""

    name = "sqlite3"

    @staticmethod
    def recognises(raw: Any) -> bool:
        return isinstance(getattr(raw, "in_transaction", None), bool)

    def trouble(self, raw: Any, autocommit: bool) -> str | None:
        if raw.in_transaction:
            return IN_TRANSACTION
        if (raw.isolation_level is None) is not autocommit:  # Django's autocommit switch
            return AUTOCOMMIT_CHANGED
        return None


# The adapters, most specific first; the last one answers for any driver.
DRIVERS: tuple[Driver, ...] = (PyMySQL(), Psycopg(), Psycopg2(), SQLite3(), Driver())
# The adapter of each raw connection class seen (read inline on the per-return path).
BY_TYPE: dict[type, Driver] = {}


def register(kind: type, driver: Driver) -> None:
    """Answer for raw connections of class ``kind`` with ``driver``, without asking the
    adapters in :data:`DRIVERS` (``max_hold``'s stand-in, which raises on any probe)."""
    BY_TYPE[kind] = driver


def driver_of(raw: Any) -> Driver:
    """The adapter for the raw connection ``raw`` (found once per connection class)."""
    driver = BY_TYPE.get(type(raw))
    if driver is None:
        driver = BY_TYPE[type(raw)] = next(d for d in DRIVERS if d.recognises(raw))
    return driver


def driver_trouble(raw: Any, autocommit: bool) -> str | None:
    """What is wrong with ``raw`` for a holder expecting ``autocommit``; None: nothing."""
    driver = BY_TYPE.get(type(raw)) or driver_of(raw)  # the lookup inline: per statement
    return driver.trouble(raw, autocommit)


def force_close(raw: Any) -> None:
    """Drop the raw connection without a goodbye on the wire (it may be mid-protocol)."""
    try:
        driver_of(raw).force_close(raw)
    except Exception as exc:  # already broken: the socket is gone either way
        logger.debug("closing a broken connection failed: %r", exc)


def failover_reason(error: BaseException) -> str | None:
    """Why a driver's ``error`` means a failover, by whichever driver raised it."""
    for driver in DRIVERS:
        reason = driver.failover_reason(error)
        if reason is not None:
            return reason
    return None


def unreachable(error: BaseException) -> Any:
    """:meth:`Driver.unreachable`, by whichever driver raised ``error``."""
    for driver in DRIVERS:
        reason = driver.unreachable(error)
        if reason is not UNDECIDED:
            return reason
    return UNDECIDED


def label(raw: Any) -> str:
    """The server's id for ``raw``, or its Python id when the driver offers none."""
    if raw is None:
        return "(not connected)"
    return driver_of(raw).label(raw)


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

"""``max_hold``: take back a connection held too long, and end its server session.

HikariCP only warns about a leak (``hold_warning`` does that here); PgBouncer's
``idle_transaction_timeout`` and ProxySQL's ``max_transaction_time`` end the session.
This does the latter for a pooled alias. A *carrier* (the pooled wrapper that owns a
slot) checked out more than ``max_hold`` seconds ago is *revoked* by a timer (a
greenlet under gevent, a thread otherwise) that never runs the holder's code:

1. **claimed**: removed from the watch under a guard lock, so that the holder's own
   return and the revocation can never both give the slot back;
2. **fenced**, with no I/O: the wrapper's driver connection is replaced by a
   :class:`Revoked` stand-in that answers every use with the error (``close()`` alone
   does nothing), its ``connect`` refuses, and a statement through a cursor made before
   is refused at Django's execute seam, on the front wrapper of ``hold="lazy"``/
   ``"transaction"`` alike. Nothing the holder does afterwards reaches a server, and it
   sees Django's ``OperationalError`` carrying :class:`~wsgi_dbpool.MaxHoldExceeded`'s
   message;
3. **ended on the server**: ``KILL <id>`` (MariaDB/MySQL) or ``pg_terminate_backend``
   sent from a separate short-lived connection, once the server confirms that id is this
   socket's session (same client port: a pooler or proxy in between reports ids of its
   own), so the server rolls back what was open and stops a statement still running
   (the holder gets the server's error for that one); then the socket is shut down (not
   closed: the descriptor stays the holder's), which wakes a holder blocked on it and
   ends an idle session even where nothing could be killed;
4. **the slot given back** (:meth:`~wsgi_dbpool.pool.Pool.revoke`): the oldest waiter is
   served at once. Only now, so that the server never sees more of this pool's sessions
   than ``max_outstanding`` (plus the short-lived one).

The holder's eventual return of the wrapper only closes the socket it still held: the
slot had its one release at step 4, and a revoked wrapper is never handed on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from . import _concurrency, _internals, drivers
from .errors import MaxHoldExceeded
from .record import Record, record_of
from .work import Work


class AliasPool(Protocol):
    """What the watch asks of the alias pool that owns it (``alias_pool.AliasPool``),
    named by what it does, so that this module imports nothing above it."""

    alias: str
    pool: Any  # its pool.Pool: count() and revoke()


logger = logging.getLogger("wsgi_dbpool")

TAKEN_BACK = "taken_back"  # the stats() key (alias_pool.TAKEN_BACK): connections taken back

# Seconds the short-lived connection that ends a session may take, connect and statement.
END_SESSION_TIMEOUT = 5.0
# Seconds before looking again at a carrier that was connecting when it fell due.
_BUSY_RETRY = 0.05


class _Held:
    """A carrier checked out, when, and for what work (named in the WARNING)."""

    __slots__ = ("carrier", "taken", "work")

    def __init__(self, carrier: Any, taken: float, work: Work) -> None:
        self.carrier = carrier
        self.taken = taken
        self.work = work


class Revocation:
    """What a revoked carrier keeps until its holder gives it back."""

    __slots__ = ("error", "front", "raw", "seconds", "server_id")

    def __init__(self, raw: Any, front: Any, error: Callable[[], BaseException]) -> None:
        self.raw = raw  # the driver connection, closed when the holder gives it back
        self.front = front
        self.error = error
        self.server_id: int | None = None  # the server's id of the session
        self.seconds = 0.0  # how long it had been held

    def refuse_statement(
        self, execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any
    ) -> Any:
        """Statement hook (execute_wrapper-shaped), put first on a revoked wrapper: no
        statement runs."""
        from django.db.utils import OperationalError

        error = self.error()
        raise OperationalError(*error.args) from error


class Revoked:
    """The driver connection of a revoked wrapper: every use raises the error (a
    :class:`~wsgi_dbpool.MaxHoldExceeded` that is also the driver's
    ``OperationalError``, so Django converts it as it would a lost connection, and its
    ``is_usable()`` answers False); ``close()`` does nothing."""

    __slots__ = ("_error",)

    def __init__(self, error: Callable[[], BaseException]) -> None:
        object.__setattr__(self, "_error", error)

    def close(self) -> None:
        """Nothing to say to the server: the session is gone."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # probes for driver internals (hasattr, getattr with a default)
            raise AttributeError(name)
        raise self._error()

    def __setattr__(self, name: str, value: object) -> None:  # psycopg: .autocommit = ...
        raise self._error()


class _RevokedDriver(drivers.Driver):
    """The adapter for a :class:`Revoked` stand-in (registered by its type: it must never
    be asked the other adapters' questions, which it would answer with the error). The
    verdict never sees one (its return is short-circuited), but a front's per-statement
    detach does: "in a transaction" keeps the front on the revoked carrier, refused, until
    the work ends, so that no later statement of the work reaches a server."""

    name = "revoked"

    @staticmethod
    def recognises(raw: Any) -> bool:
        return isinstance(raw, Revoked)

    def trouble(self, raw: Any, autocommit: bool) -> str | None:
        return drivers.IN_TRANSACTION

    def force_close(self, raw: Any) -> None:
        """Nothing to close: the holder's socket is closed from the Revocation."""


drivers.register(Revoked, _RevokedDriver())

_ERROR_CLASSES: dict[Any, type[MaxHoldExceeded]] = {}


def _error_class(database: Any) -> type[MaxHoldExceeded]:
    """MaxHoldExceeded that is also ``database.OperationalError`` (the driver module
    Django's backend uses), made once per driver."""
    cls = _ERROR_CLASSES.get(database)
    if cls is None:
        cls = type(
            "MaxHoldExceeded",
            (MaxHoldExceeded, database.OperationalError),
            {"__module__": "wsgi_dbpool"},
        )
        _ERROR_CLASSES[database] = cls
    return cls


class MaxHold:
    """Watches one alias's checked-out carriers and takes back those held past ``limit``.

    Owned by the alias pool when ``max_hold`` is set: its ``checkout()`` calls
    :meth:`watch`, its ``checkin()`` asks :meth:`given_back` first. A front's carrier goes
    through both per attachment; the front it is lent to is its record's ``borrower``.
    """

    def __init__(self, alias_pool: AliasPool, limit: float) -> None:
        self.alias_pool = alias_pool
        self.alias = alias_pool.alias
        self.limit = limit
        self._lock = _concurrency.new_guard_lock()
        self._held: dict[int, _Held] = {}
        self._generation = -1
        self._scanning = False  # a timer will scan: set and cleared under the lock

    # -- the watch ----------------------------------------------------------------------

    def watch(self, carrier: Any, work: Work) -> None:
        """``AliasPool.checkout()``: ``carrier`` was just taken (its record's ``taken``)
        for ``work`` (a request, a task, a ``checkout()`` block, a front's attachment)."""
        record: Record = carrier._wsgi_dbpool
        held = _Held(carrier, record.taken, work)
        with self._lock:  # the common case inlined: this is the per-checkout path
            if self._generation == _concurrency._fork_generation and self._scanning:
                self._held[id(carrier)] = held
                return
        self._watch(held)

    def given_back(self, carrier: Any) -> bool:
        """``AliasPool.checkin()`` asks first: True if ``carrier`` was taken back (then
        this closes what its holder still held, and the check-in must do nothing more)."""
        record: Record = carrier._wsgi_dbpool
        with self._lock:  # the claim and the fence happen under it too: one or the other
            self._held.pop(id(carrier), None)
            revocation = record.revoked
        if revocation is None:
            return False
        self._given_back(carrier, record, revocation)
        return True

    def _watch(self, held: _Held) -> None:
        with self._lock:
            if self._generation != _concurrency._fork_generation:
                # Inherited through fork: the parent's holds are not this process's.
                self._held = {}
                self._scanning = False
                self._generation = _concurrency._fork_generation
            self._held[id(held.carrier)] = held
            start = not self._scanning
            self._scanning = True
        if start:
            _concurrency.call_later(self.limit, self._scan)

    def _scan(self) -> None:
        now = time.monotonic()
        due: list[tuple[_Held, Revocation]] = []
        next_at = None
        with self._lock:
            for key, held in list(self._held.items()):
                at = held.taken + self.limit
                if at > now:
                    next_at = at if next_at is None else min(next_at, at)
                elif record_of(held.carrier).setup:  # connecting: its socket is
                    next_at = now + _BUSY_RETRY  # not on the wrapper yet; look again soon
                else:
                    # Claimed and fenced under the lock (attribute writes, no I/O): a holder
                    # returning it in another thread finds it revoked, never half-done.
                    try:
                        revocation = self._fence(held, now)
                    except Exception:
                        logger.exception("max_hold: could not take back a connection of %r",
                                         self.alias)
                        continue
                    del self._held[key]
                    due.append((held, revocation))
            self._scanning = next_at is not None
        for held, revocation in due:
            self._take_back(held, revocation)
        if next_at is not None:
            _concurrency.call_later(max(next_at - time.monotonic(), 0.01), self._scan)

    # -- taking back ----------------------------------------------------------------------

    def _fence(self, held: _Held, now: float) -> Revocation:
        """Make the carrier (and the front that borrowed it) unusable; attribute writes only."""
        carrier = held.carrier
        record = record_of(carrier)
        front = record.borrower  # the front wrapper it is lent to, if any
        raw = carrier.connection
        error_class = _error_class(carrier.Database)
        alias, limit, seconds = self.alias, self.limit, now - held.taken

        def error() -> BaseException:
            return error_class(alias, limit, seconds)

        revocation = Revocation(raw, front, error)
        revocation.server_id = _server_id(raw, carrier.vendor)
        revocation.seconds = seconds
        stand_in = Revoked(error)

        def refuse_connect() -> None:
            raise error()

        carrier.connect = refuse_connect
        record.hooks.insert(0, revocation.refuse_statement)
        if raw is not None:
            carrier.connection = stand_in
        if front is not None:
            if front.connection is raw:
                front.connection = stand_in
            record_of(front).hooks.insert(0, revocation.refuse_statement)
        record.revoked = revocation
        return revocation

    def _take_back(self, held: _Held, revocation: Revocation) -> None:
        """End the fenced carrier's server session, then free its slot, exactly once."""
        carrier = held.carrier
        record = record_of(carrier)
        pool = self.alias_pool.pool
        pool.count(TAKEN_BACK)
        logger.warning(
            "max_hold=%ss: took back the connection of %r (server session %s) held %.1fs by %s "
            "(greenlet %s); ending its session on the server (its transaction rolls back) and "
            "giving the slot to the next request. Its next statement fails with MaxHoldExceeded",
            self.limit, self.alias, revocation.server_id, revocation.seconds,
            held.work.label, record.holder,
        )
        try:
            self._end_session(carrier, revocation.raw, revocation.server_id)
        except Exception:
            logger.exception("max_hold: ending a session of %r failed", self.alias)
        finally:
            if record.open:  # the server session is gone: counted closed
                record.open = False
                pool.count("closed")
            pool.revoke(held.taken)  # the slot's one release: the oldest waiter is served

    def _end_session(self, carrier: Any, raw: Any, server_id: int | None) -> None:
        """End the session on the server, then shut the holder's socket down.

        ``KILL`` / ``pg_terminate_backend`` go through a short-lived connection of their own
        (bounded by :data:`END_SESSION_TIMEOUT`), and only once the server confirms the id is
        this socket's session (same id, same client port): behind a pooler or a proxy
        (PgBouncer reports a made-up pid), or over a unix socket, the id cannot be confirmed
        and nothing is killed. The shutdown wakes a holder blocked on the socket, and ends an
        idle session at once even where nothing could be killed.
        """
        if raw is None:
            return  # never connected: no session
        port = _client_port(raw)
        failure: BaseException | None = None
        confirmed = False
        if server_id is not None and port is not None:
            limit = _concurrency.TimeLimit(END_SESSION_TIMEOUT)
            try:
                with limit:
                    confirmed = self._kill(carrier.vendor, server_id, port)
            except BaseException as exc:
                if not (limit.fired(exc) or isinstance(exc, Exception)):
                    raise
                failure = exc
        _shutdown(raw)
        if not confirmed and server_id is not None:
            logger.warning(
                "max_hold: session %s of %r not ended by the server (%s); its socket was shut "
                "down, which ends it once it is idle (statement_timeout bounds one running)",
                server_id, self.alias,
                repr(failure) if failure is not None else "not confirmed as this socket's session",
            )

    def _kill(self, vendor: str, server_id: int, port: int) -> bool:
        """Kill session ``server_id`` if the server says its client port is ``port``."""
        # A wrapper of Django's own factory, never connected: the driver's connect with the
        # alias's parameters, and no connection_created, no session set-up, not pooled.
        admin_wrapper = _internals.django_create_connection(self.alias)
        admin = admin_wrapper.get_new_connection(admin_wrapper.get_connection_params())
        try:
            cursor = admin.cursor()
            if vendor == "mysql":
                cursor.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE ID = %s AND HOST LIKE %s",
                    [server_id, f"%:{port}"],
                )
                confirmed = cursor.fetchone() is not None
                if confirmed:
                    cursor.execute("KILL %s", [server_id])
            else:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE pid = %s AND client_port = %s",
                    [server_id, port],
                )
                confirmed = cursor.fetchone() is not None
            cursor.close()
        finally:
            admin.close()
        return confirmed

    def _given_back(self, carrier: Any, record: Record, revocation: Revocation) -> None:
        """The holder's return of a revoked carrier: close what it held, nothing more."""
        record.holder = None
        record.borrower = None
        _internals.set_owner(carrier, _internals.NOBODY)
        raw, revocation.raw = revocation.raw, None
        front = revocation.front
        if front is not None:
            try:
                record_of(front).hooks.remove(revocation.refuse_statement)
            except ValueError:
                pass
        if raw is not None:
            try:
                drivers.driver_of(raw).abandon_unread_result(raw)
            except Exception as exc:  # its socket was shut down under it
                logger.debug("forgetting an unread result failed: %r", exc)
            drivers.force_close(raw)  # the server ended the session: nothing to say


def _socket(raw: Any) -> socket.socket | None:
    """A second handle on the driver connection's socket (a dup of its descriptor), or None."""
    fileno = getattr(raw, "fileno", None)  # psycopg 2 and 3
    try:
        fd = fileno() if callable(fileno) else raw._sock.fileno()  # PyMySQL
        return socket.socket(fileno=os.dup(fd))
    except Exception:  # closed meanwhile by its holder (psycopg raises its own error): no socket
        return None


def _client_port(raw: Any) -> int | None:
    """The local TCP port of the connection (what the server shows as the client's); None
    over a unix socket or when it cannot be read."""
    sock = _socket(raw)
    if sock is None:
        return None
    with sock:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        return int(sock.getsockname()[1])


def _shutdown(raw: Any) -> None:
    """Shut the socket down both ways, without closing the holder's descriptor: a read
    blocked on it returns at once, and the server sees the client go."""
    sock = _socket(raw)
    if sock is None:
        return
    with sock:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:  # already gone
            logger.debug("shutting a socket down failed: %r", exc)


def _server_id(raw: Any, vendor: str) -> int | None:
    """The server's id of the session (what ``KILL``/``pg_terminate_backend`` take)."""
    if raw is None:
        return None
    try:
        if vendor == "mysql":
            return int(raw.thread_id())
        if vendor == "postgresql":
            info = getattr(raw, "info", None)  # psycopg 3
            return int(info.backend_pid if info is not None else raw.get_backend_pid())
    except Exception:  # closed under its holder already: no session to end
        return None
    return None

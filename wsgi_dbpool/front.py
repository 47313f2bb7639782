"""Front wrappers: what a greenlet sees as ``connections[alias]`` under ``hold="lazy"`` and
``hold="transaction"``, borrowing a pooled server connection only while it needs one.

See ``docs/hold-modes.md`` for the states and the hooks. In short: a *front* wrapper
``W`` is a Django ``DatabaseWrapper`` that never opens a connection of its own. Its
``connect()`` (which Django calls from ``ensure_connection()``) *attaches*: it checks a
*carrier* ``P`` out of the alias's pool (FIFO, capped) and borrows ``P``'s raw connection.
*Detaching* gives it back through the pool's one return path (the verdict). Under
``hold="transaction"`` a front detaches after every statement that leaves no transaction
open, and at the end of the outermost ``atomic()``; the next statement attaches again.
The front's own state (``atomic()`` blocks, ``on_commit`` callbacks, the DEBUG query
log) belongs to the work, and stays with it across attachments.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from . import _concurrency, _internals, drivers
from .alias_pool import SPAWNED, AliasPool
from .errors import PoolError
from .hold_watch import HoldWatch
from .lease import in_lease
from .record import Record, record_of
from .verdict import UNKNOWN
from .work import Work

logger = logging.getLogger("wsgi_dbpool")

# What may still be going on after a statement, by the driver's account: a transaction
# (also autocommit switched off by SQL: the next statements are one) or an unread result.
_STILL_BUSY = frozenset(
    (drivers.IN_TRANSACTION, drivers.AUTOCOMMIT_CHANGED, drivers.MID_RESULT)
)
# keep_attached()'s answer when the front keeps its connection.
KEEP_ATTACHED: Any = object()


def keep_attached(wrapper: Any, record: Record, raw: Any) -> Any:
    """After a statement (``hold="transaction"``): :data:`KEEP_ATTACHED` while the work is
    pinned (it changed the session), inside ``atomic()``, with autocommit off, or while the
    driver reports a transaction or a result still to read; otherwise what the driver
    reported (None: nothing), which the verdict reuses: one probe per statement."""
    if record.session is not None or wrapper.in_atomic_block or not wrapper.autocommit:
        return KEEP_ATTACHED
    trouble = drivers.driver_trouble(raw, True)
    return KEEP_ATTACHED if trouble in _STILL_BUSY else trouble


class Front:
    """``hold="lazy"``/``"transaction"``: makes, lends and takes back the front wrappers of
    one alias (one per alias pool); the strategy of :mod:`wsgi_dbpool.hold`."""

    def __init__(
        self, alias_pool: AliasPool, *, per_transaction: bool, watch: HoldWatch | None = None
    ) -> None:
        self.alias_pool = alias_pool
        self.alias = alias_pool.alias
        self.per_transaction = per_transaction
        self.holds = watch  # holds are attachments, not works
        self._no_work = Work(alias_pool.settings.timeout)  # for a front that serves none
        self._free: _concurrency.PerProcess[list[Any]] = _concurrency.PerProcess(list)
        # hold="lazy": the greenlets holding (or waiting for) a connection of this alias,
        # whose spawned greenlets must not wait for one under the same cap.
        self.holding: set[int] = set()

    # -- lending -----------------------------------------------------------------------

    def take(self, work: Work | None, ident: int) -> Any:
        """A detached front wrapper for greenlet ``ident``: no server connection yet."""
        per = self._free  # PerProcess.get() inlined: inherited ones are left behind
        free = per.value if per.generation == _concurrency._fork_generation else per.get()
        wrapper = free.pop() if free else self._make()
        _internals.set_owner(wrapper, ident)
        record: Record = wrapper._wsgi_dbpool
        record.holder = ident
        record.work = work
        wrapper.health_check_done = False  # CONN_HEALTH_CHECKS: once per unit of work
        return wrapper

    def give(self, wrapper: Any, broken: bool = False) -> None:
        """End of the work: detach (through the verdict), reset, and keep for reuse."""
        record: Record = wrapper._wsgi_dbpool
        try:
            if record.carrier is not None:  # detach() calls no Django method on the front
                self.detach(wrapper, broken)
        finally:
            record.work = None
            record.holder = None
            _internals.set_owner(wrapper, _internals.NOBODY)
            _reset_work_state(wrapper, record)
            per = self._free
            free = per.value if per.generation == _concurrency._fork_generation else per.get()
            free.append(wrapper)

    def _make(self) -> Any:
        wrapper = self.alias_pool.new_wrapper()
        record_of(wrapper).front = self
        wrapper.autocommit = wrapper.settings_dict["AUTOCOMMIT"]
        wrapper.health_check_enabled = wrapper.settings_dict["CONN_HEALTH_CHECKS"]
        _override_methods(wrapper, self)
        if self.per_transaction:
            # Outermost, so that the failover watch inside it has noted an error on the
            # front before the statement's end detaches (and hands the note on).
            record_of(wrapper).hooks.insert(0, self._around_statement)
        return wrapper

    # -- attach / detach --------------------------------------------------------------

    def serve_spawned_greenlets(self) -> None:
        """Give greenlets with no binding a front wrapper of this alias on first use.

        A gevent greenlet spawned by a view that uses the ORM asks Django's connection
        handler for a wrapper; instead of a connection of its own, outside the cap, it gets
        a front wrapper, under the cap, given back when the greenlet ends.
        """
        _serving[self.alias] = weakref.ref(self)
        _internals.install_create_connection(_create_connection)

    def attach(self, wrapper: Any) -> None:
        """``W.connect()``: borrow the raw connection of a carrier from the pool."""
        record: Record = wrapper._wsgi_dbpool
        work = record.work
        carrier = self._connected_carrier(wrapper, work)
        # What Django's connect() does to a wrapper outside atomic(), for this connection.
        if wrapper.closed_in_transaction:  # the last one was closed inside atomic()
            _internals.reset_transaction_state(wrapper)
        wrapper.connection = carrier.connection
        wrapper.close_at = carrier.close_at
        wrapper.autocommit = carrier.autocommit
        wrapper.needs_rollback = False
        wrapper.closed_in_transaction = False
        record.errors = wrapper.errors_occurred  # the work's: shown again after the detach
        wrapper.errors_occurred = False  # this connection's, as connect() starts it
        wrapper.health_check_done = True  # checked by the pool (ping_after), not per attach
        record.ran = False  # nothing of this work on this connection yet
        if record.copied_from is not carrier:  # once per pair: it is per alias
            _internals.copy_connect_state(carrier, wrapper)
            record.copied_from = carrier
        record.known = len(wrapper.__dict__)  # a cache the front learns adds a key
        record.carrier = carrier
        carrier._wsgi_dbpool.borrower = wrapper  # for max_hold's fence
        if self.holds is not None:
            record.hold_token = self.holds.start(
                work.label if work is not None else "work outside a request"
            )

    def _connected_carrier(self, wrapper: Any, work: Work | None) -> Any:
        """A carrier checked out of the alias pool for the calling greenlet, connected."""
        ident = _thread.get_ident()  # read at call time: gevent's once patched
        if not self.per_transaction:
            self.holding.add(ident)
        try:
            carrier = self.alias_pool.checkout(work or self._no_work, ident)
        except PoolError as exc:
            self.holding.discard(ident)
            if work is not None:
                work.timed_out = exc  # so the middleware can answer 503 instead of 500
            raise
        # Read at each attachment, as connect() reads it (a test may patch the settings).
        wrapper.health_check_enabled = wrapper.settings_dict["CONN_HEALTH_CHECKS"]
        try:
            if carrier.connection is None:
                carrier.connect()  # Django's own: driver connect, session set-up, signal
            elif wrapper.health_check_enabled and not wrapper.health_check_done:
                self._health_check(carrier)
        except BaseException as exc:
            self.holding.discard(ident)
            self.alias_pool.checkin(carrier, broken=not isinstance(exc, Exception))
            raise
        return carrier

    @staticmethod
    def _health_check(carrier: Any) -> None:
        """``CONN_HEALTH_CHECKS``: Django's own check, on the first attachment of a unit
        of work (Django checks once per request, before the first query)."""
        carrier.health_check_enabled = True
        carrier.health_check_done = False
        carrier.close_if_health_check_failed()  # closed if it does not answer
        if carrier.connection is None:
            carrier.connect()

    def detached_cursor(self, wrapper: Any) -> Any:
        """``connection.cursor()`` while detached (per transaction): a Django cursor that
        takes a connection at its first statement, not now."""
        driver = DetachedCursor(wrapper)
        cursor = wrapper._prepare_cursor(driver)
        driver.owner = cursor
        return cursor

    def detach(self, wrapper: Any, broken: bool = False, trouble: Any = UNKNOWN) -> None:
        """Give the raw connection back through the pool's return path (the verdict);
        ``trouble``: the driver's state, when the caller has just read it."""
        record: Record = wrapper._wsgi_dbpool
        carrier = record.carrier
        if carrier is None:
            return
        record.carrier = None
        self.holding.discard(record.holder)  # hold="lazy"'s (empty under "transaction")
        if self.holds is not None:
            self.holds.finish(record.hold_token)
            record.hold_token = -1
        carrier.connection = wrapper.connection
        carrier.close_at = wrapper.close_at
        if len(wrapper.__dict__) != record.known:  # perhaps learnt a server cache
            _internals.keep_server_caches(wrapper, carrier)
        if record.failover is not None or record.session is not None:
            self._hand_on_notes(record, record_of(carrier))
        errors = wrapper.errors_occurred
        if (
            wrapper.in_atomic_block
            or errors
            or wrapper.closed_in_transaction
            or wrapper.autocommit != carrier.autocommit
        ):
            # The verdict reads these flags: let the carrier tell it the truth.
            _internals.copy_transaction_state(wrapper, carrier)
        wrapper.connection = None
        # Django keeps errors_occurred up to the end of the request: so does the front
        # (the verdict has judged this connection's; the next attachment starts afresh).
        wrapper.errors_occurred = errors | record.errors  # both bools
        carrier._wsgi_dbpool.borrower = None
        self.alias_pool.checkin(carrier, broken, trouble)

    def _hand_on_notes(self, record: Record, carrier: Record) -> None:
        """What the execute seam noted on the front, for the verdict, which reads the
        carrier: a failover error (the statement failed on the front), a changed session."""
        if record.failover is not None:
            carrier.failover = record.failover
            record.failover = None
        session = record.session
        if session is not None:  # the session changed: the verdict resets it
            carrier.session = session
            record.session = None
            if self.per_transaction:  # the work was pinned to this connection
                work = record.work
                where = work.label if work is not None else "work outside a request"
                self.alias_pool.warn_pinned(where, session, _kind_of(work) or where)

    def detach_if_idle(self, wrapper: Any) -> None:
        """Detach when no transaction is open and no result is being read (per transaction),
        and the work did not change the session (then it keeps the connection: pinned).
        The driver is read once: the verdict gets what was read (see :func:`keep_attached`)."""
        record: Record = wrapper._wsgi_dbpool
        raw = wrapper.connection
        if raw is None or record.carrier is None:
            return
        trouble = keep_attached(wrapper, record, raw)
        if trouble is KEEP_ATTACHED:
            return
        if wrapper.settings_dict["AUTOCOMMIT"] is not True:  # read for autocommit: not this
            trouble = UNKNOWN  # alias's setting, so the verdict reads the driver itself
        self.detach(wrapper, False, trouble)

    def _around_statement(
        self, execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]
    ) -> Any:
        """Statement hook, execute_wrapper-shaped (per transaction): attach before, detach
        after."""
        wrapper = context["connection"]
        cursor = context["cursor"]
        driver = cursor.cursor
        if type(driver) is DetachedCursor:
            if driver.closed:
                return execute(sql, params, many, context)  # the driver's own error
            wrapper.ensure_connection()
            _internals.replace_driver_cursor(cursor, wrapper.create_cursor(None))
        else:
            raw = _internals.driver_cursor_connection(cursor)
            if raw is None:  # PyMySQL forgets its connection on close()
                return execute(sql, params, many, context)  # stays closed: its own error
            if wrapper.connection is None:
                wrapper.ensure_connection()
            if raw is not wrapper.connection:
                if _internals.driver_cursor_closed(driver):  # psycopg: stays closed too
                    return execute(sql, params, many, context)
                # A cursor made under an earlier attachment: its driver cursor belongs to
                # a connection that may be someone else's now. Give it one on ours.
                _internals.replace_driver_cursor(cursor, wrapper.create_cursor(None))
        try:
            return execute(sql, params, many, context)
        finally:
            self.detach_if_idle(wrapper)


class DetachedCursor:
    """The driver cursor inside a Django cursor made while detached (per transaction).

    Nothing has run on it: it answers as a fresh driver cursor does, and the statement
    wrapper replaces it with a real one at the first ``execute()``. Anything else asked
    of it (``callproc``, ...) takes a connection then.
    """

    description = None
    rowcount = -1
    lastrowid = None
    arraysize = 1

    def __init__(self, wrapper: Any) -> None:
        self.wrapper = wrapper
        self.owner: Any = None  # the Django cursor around it
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def _error(self, message: str) -> Exception:
        return self.wrapper.Database.ProgrammingError(message)  # type: ignore[no-any-return]

    def execute(self, *args: Any) -> Any:  # reached only once closed
        raise self._error("Cursor closed")

    executemany = execute

    def fetchone(self) -> Any:
        raise self._error("Cursor closed" if self.closed else "execute() first")

    fetchmany = fetchall = __iter__ = fetchone

    def nextset(self) -> None:
        if self.closed:
            raise self._error("Cursor closed")
        return None

    def __getattr__(self, name: str) -> Any:
        if self.closed:
            raise self._error("Cursor closed")
        wrapper = self.wrapper
        wrapper.ensure_connection()
        real = wrapper.create_cursor(None)
        _internals.replace_driver_cursor(self.owner, real)
        return getattr(real, name)


def _override_methods(wrapper: Any, front: Front) -> None:
    """Attach on ``connect()``, detach at the end of ``atomic()`` and on ``close()``; with
    ``hold="transaction"`` a cursor made while detached attaches at its first statement."""
    cls = type(wrapper)

    def connect() -> None:
        front.attach(wrapper)

    def get_autocommit() -> bool:
        if wrapper.connection is None:  # detached: the next attachment restores this
            if wrapper.closed_in_transaction and not wrapper.in_atomic_block:
                # Closed inside atomic(), whose end has passed: Django's own answer
                # connects, and connect() starts afresh. So does the next attachment.
                _internals.reset_transaction_state(wrapper)
                wrapper.autocommit = wrapper.settings_dict["AUTOCOMMIT"]
            return bool(wrapper.autocommit)
        return bool(cls.get_autocommit(wrapper))

    def set_autocommit(
        autocommit: bool, force_begin_transaction_with_broken_autocommit: bool = False
    ) -> None:
        cls.set_autocommit(wrapper, autocommit, force_begin_transaction_with_broken_autocommit)
        if autocommit and front.per_transaction:
            front.detach_if_idle(wrapper)  # the end of the outermost atomic(), on_commit run

    def close() -> None:
        try:
            cls.close(wrapper)
        finally:
            front.detach(wrapper)  # the raw connection is closed: give the slot back

    @contextlib.contextmanager
    def temporary_connection() -> Iterator[Any]:
        # Django's closes a connection it opened for the occasion; a front borrowed one:
        # closing it would cost the pool a reconnect. Under hold="transaction" it is
        # given back as after any statement; under "lazy" the work holds it as usual.
        detached = wrapper.connection is None
        try:
            wrapper.ensure_connection()
            with wrapper.cursor() as cursor:
                yield cursor
        finally:
            if detached and front.per_transaction:
                front.detach_if_idle(wrapper)

    wrapper.connect = connect
    wrapper.get_autocommit = get_autocommit
    wrapper.set_autocommit = set_autocommit
    wrapper.close = close
    wrapper.temporary_connection = temporary_connection
    if front.per_transaction:

        def _cursor(name: str | None = None) -> Any:
            if name is None and wrapper.connection is None:
                return front.detached_cursor(wrapper)
            return cls._cursor(wrapper, name)

        wrapper._cursor = _cursor


def _reset_work_state(wrapper: Any, record: Record) -> None:
    """What the next work must not inherit from this one (the verdict closed what it had)."""
    if (
        wrapper.in_atomic_block
        or wrapper.atomic_blocks
        or wrapper.savepoint_ids
        or wrapper.run_on_commit
        or wrapper.run_commit_hooks_on_set_autocommit_on
        or wrapper.needs_rollback
        or wrapper.closed_in_transaction
        or wrapper.errors_occurred
    ):
        _internals.reset_transaction_state(wrapper)
    wrapper.rollback_exc = None
    wrapper.savepoint_state = 0  # as on a new thread's wrapper (it numbers savepoints)
    wrapper.close_at = None  # no connection: none to expire
    record.errors = False
    wrapper.autocommit = wrapper.settings_dict["AUTOCOMMIT"]
    if wrapper.queries_log:  # DEBUG's query log carries SQL and parameters
        wrapper.queries_log.clear()


# -- greenlets spawned by a view ------------------------------------------------------------

# The front serving each alias's spawned greenlets in this process.
_serving: dict[str, weakref.ref[Front]] = {}


def _create_connection(alias: str) -> Any:
    ref = _serving.get(alias)
    front = ref() if ref is not None else None
    if front is not None:
        ident = _concurrency.get_ident()
        if not in_lease(ident) and not _would_wait_for_its_spawner(front):
            wrapper = front.take(Work(front.alias_pool.settings.timeout, None), ident)
            if _concurrency.at_greenlet_exit(lambda: front.give(wrapper)):
                front.alias_pool.pool.count(SPAWNED)
                return wrapper
            front.give(wrapper)  # not a greenlet we can watch: Django's own
    return _internals.django_create_connection(alias)


def _would_wait_for_its_spawner(front: Front) -> bool:
    """``hold="lazy"``: the greenlet that spawned this one holds a connection of the alias
    until its work ends, and may be waiting for this greenlet. Under the same cap, with
    every slot held by such a spawner, neither would get anywhere before ``timeout``:
    this greenlet opens its own connection instead, as under ``hold="request"``."""
    if front.per_transaction or not front.holding:
        return False
    return _concurrency.spawner_ident() in front.holding


def _kind_of(work: Work | None) -> str | None:
    """What a once-per-kind warning keys on: a task, not its run; a request's view, not its
    path (``/items/1/`` and ``/items/2/`` are one view). Resolved only for a pinned work,
    which pays a session reset anyway; None: use the label."""
    if work is None or work.kind is not None or (work.method is None and work.path is None):
        return None if work is None else work.kind
    from django.urls import resolve

    try:
        view = resolve(work.path or "/").view_name
    except Exception:  # Resolver404, or a URLconf that cannot load here: the path, then
        return None
    return f"{work.method} {view}"

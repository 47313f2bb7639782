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

import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _concurrency, _internals
from .errors import PoolError
from .failover import FAILOVER_ATTR

if TYPE_CHECKING:
    from .alias_pool import AliasPool
    from .holds import HoldWatch

logger = logging.getLogger("wsgi_dbpool")

# Attributes on a front wrapper.
FRONT_ATTR = "_wsgi_dbpool_front"  # the Front that made it
_CARRIER = "_wsgi_dbpool_carrier"  # the checked-out carrier while attached, else None
_WORK = "_wsgi_dbpool_work"  # the Work it serves while taken

# What may still be going on after a statement, by the driver's account: a transaction
# (also autocommit switched off by SQL: the next statements are one) or an unread result.
_KEEP_ATTACHED = frozenset(
    (_internals.IN_TRANSACTION, _internals.AUTOCOMMIT_CHANGED, _internals.MID_RESULT)
)


class Work:
    """The unit of work a front serves: where a wait at the cap is reported, and its label."""

    __slots__ = ("environ", "timed_out", "timeout")

    def __init__(self, timeout: float | None, environ: dict[str, Any] | None) -> None:
        self.timeout = timeout
        self.environ = environ  # the request's, or None for checkout() and greenlets
        self.timed_out: PoolError | None = None  # a wait timed out, or the breaker refused

    @property
    def label(self) -> str:
        if self.environ is None:
            return "work outside a request"
        return f"{self.environ.get('REQUEST_METHOD')} {self.environ.get('PATH_INFO')}"


class Front:
    """Makes, lends and takes back the front wrappers of one alias (one per pool)."""

    def __init__(self, alias_pool: AliasPool, *, per_transaction: bool) -> None:
        self.alias_pool = alias_pool
        self.alias = alias_pool.alias
        self.per_transaction = per_transaction
        self.holds: HoldWatch | None = None
        self._free: list[Any] = []
        self._generation = -1

    # -- lending -----------------------------------------------------------------------

    def take(self, work: Work | None, ident: int) -> Any:
        """A detached front wrapper for greenlet ``ident``: no server connection yet."""
        if self._generation != _concurrency._fork_generation:
            self._free = []  # inherited: never share a front across processes
            self._generation = _concurrency._fork_generation
        wrapper = self._free.pop() if self._free else self._make()
        _internals.set_owner(wrapper, ident)
        wrapper._wsgi_dbpool_holder = ident
        setattr(wrapper, _WORK, work)
        return wrapper

    def give_back(self, wrapper: Any, broken: bool = False) -> None:
        """End of the work: detach (through the verdict), reset, and keep for reuse."""
        try:
            if getattr(wrapper, _CARRIER) is not None:
                _internals.set_owner(wrapper, _concurrency.get_ident())
                self.detach(wrapper, broken)
        finally:
            setattr(wrapper, _WORK, None)
            wrapper._wsgi_dbpool_holder = None
            _internals.set_owner(wrapper, _internals.NOBODY)
            _reset_work_state(wrapper)
            self._free.append(wrapper)

    def _make(self) -> Any:
        wrapper = self.alias_pool.new_wrapper()
        setattr(wrapper, FRONT_ATTR, self)
        setattr(wrapper, _CARRIER, None)
        setattr(wrapper, _WORK, None)
        wrapper.autocommit = wrapper.settings_dict["AUTOCOMMIT"]
        _internals.override_front_methods(wrapper, self)
        if self.per_transaction:
            # Outermost, so that the failover watch inside it has noted an error on the
            # front before the statement's end detaches (and hands the note on).
            wrapper.execute_wrappers.insert(0, self._around_statement)
        return wrapper

    # -- attach / detach --------------------------------------------------------------

    def attach(self, wrapper: Any) -> None:
        """``W.connect()``: borrow the raw connection of a carrier from the pool."""
        work: Work | None = getattr(wrapper, _WORK)
        timeout = work.timeout if work is not None else self.alias_pool.settings.timeout
        ident = _concurrency.get_ident()
        try:
            carrier = self.alias_pool.checkout(timeout, ident)
        except PoolError as exc:
            if work is not None:
                work.timed_out = exc  # so the middleware can answer 503 instead of 500
            raise
        try:
            if carrier.connection is None:
                carrier.connect()  # Django's own: driver connect, session set-up, signal
        except BaseException as exc:
            self.alias_pool.checkin(carrier, broken=not isinstance(exc, Exception))
            raise
        # What Django's connect() does to a wrapper outside atomic(), for this connection.
        wrapper.connection = carrier.connection
        wrapper.close_at = carrier.close_at
        wrapper.autocommit = carrier.autocommit
        wrapper.needs_rollback = False
        wrapper.closed_in_transaction = False
        wrapper.errors_occurred = False
        wrapper.health_check_done = True  # checked by the pool (ping_after), not per attach
        setattr(wrapper, _CARRIER, carrier)
        if self.holds is not None:
            wrapper._wsgi_dbpool_hold = self.holds.start(
                work.label if work is not None else "work outside a request"
            )

    def detach(self, wrapper: Any, broken: bool = False) -> None:
        """Give the raw connection back through the pool's return path (the verdict)."""
        carrier = getattr(wrapper, _CARRIER)
        if carrier is None:
            return
        setattr(wrapper, _CARRIER, None)
        if self.holds is not None:
            self.holds.finish(wrapper.__dict__.pop("_wsgi_dbpool_hold", -1))
        carrier.connection = wrapper.connection
        carrier.close_at = wrapper.close_at
        failover = getattr(wrapper, FAILOVER_ATTR)
        if failover is not None:  # noted on the front when a statement failed: the
            setattr(carrier, FAILOVER_ATTR, failover)  # verdict reads it on the carrier
            setattr(wrapper, FAILOVER_ATTR, None)
        if (
            wrapper.in_atomic_block
            or wrapper.errors_occurred
            or wrapper.closed_in_transaction
            or wrapper.autocommit != carrier.autocommit
        ):
            # The verdict reads these flags: let the carrier tell it the truth.
            _internals.copy_transaction_state(wrapper, carrier)
        wrapper.connection = None
        wrapper.errors_occurred = False
        self.alias_pool.checkin(carrier, broken)

    def detach_if_idle(self, wrapper: Any) -> None:
        """Detach when no transaction is open and no result is being read (per transaction)."""
        raw = wrapper.connection
        if (
            raw is None
            or wrapper.in_atomic_block
            or not wrapper.autocommit
            or getattr(wrapper, _CARRIER) is None
            or _internals.driver_trouble(raw, True) in _KEEP_ATTACHED
        ):
            return
        self.detach(wrapper)

    def _around_statement(
        self, execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]
    ) -> Any:
        """Django execute wrapper (per transaction): attach before, detach after."""
        wrapper = context["connection"]
        if wrapper.connection is None:
            wrapper.ensure_connection()
        cursor = context["cursor"]
        if _internals.driver_cursor_connection(cursor) is not wrapper.connection:
            # A cursor made under an earlier attachment: its driver cursor belongs to a
            # connection that may be someone else's now. Give it one on ours.
            _internals.replace_driver_cursor(cursor, wrapper.create_cursor(None))
        try:
            return execute(sql, params, many, context)
        finally:
            self.detach_if_idle(wrapper)


def _reset_work_state(wrapper: Any) -> None:
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
    wrapper.autocommit = wrapper.settings_dict["AUTOCOMMIT"]
    if wrapper.queries_log:  # DEBUG's query log carries SQL and parameters
        wrapper.queries_log.clear()


# -- greenlets spawned by a view ------------------------------------------------------------

_serving: dict[str, weakref.ref[Front]] = {}


def serve_spawned_greenlets(front: Front) -> None:
    """Give greenlets with no binding a front wrapper of ``front``'s alias on first use.

    A gevent greenlet spawned by a view that uses the ORM asks Django's connection handler
    for a wrapper; instead of a connection of its own, outside the cap, it gets a front
    wrapper, under the cap, given back when the greenlet ends.
    """
    _serving[front.alias] = weakref.ref(front)
    _internals.install_create_connection(_create_connection)


def _create_connection(alias: str) -> Any:
    ref = _serving.get(alias)
    front = ref() if ref is not None else None
    if front is not None:
        from .lease import in_lease

        ident = _concurrency.get_ident()
        if not in_lease(ident):
            wrapper = front.take(Work(front.alias_pool.settings.timeout, None), ident)
            if _concurrency.at_greenlet_exit(lambda: front.give_back(wrapper)):
                front.alias_pool.pool.count("spawned")
                return wrapper
            front.give_back(wrapper)  # not a greenlet we can watch: Django's own
    return _internals.django_create_connection(alias)

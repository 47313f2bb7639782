"""The pool of Django ``DatabaseWrapper`` objects for one alias, and how a return is carried out.

The pool holds Django's own wrappers, made by Django's own factory
(``connections.create_connection``), so every backend, setting and signal keeps
working. What happens on return is decided by :func:`wsgi_dbpool.verdict.judge`; this
module carries it out, counts it and logs it, and makes sure that whatever happens
(an error, an interrupt inside the rollback) the slot goes back exactly once and no
connection in doubt is handed on.
"""

from __future__ import annotations

import logging
import random
import time
import weakref
from typing import Any

from . import _concurrency, drivers, failover, session_state
from ._internals import NOBODY, django_create_connection, hook_cursors, set_owner
from .breaker import Breaker
from .drivers import UNUSABLE, driver_of, force_close, missing_auth_package
from .lease import in_lease
from .max_hold import MaxHold
from .pool import Pool
from .record import Record, record_of, record_or_none
from .session import reset_session
from .settings import PoolSettings
from .verdict import (
    CHECK,
    CLOSE,
    DRAINED,
    FAIL_OVER,
    INTERRUPTED,
    KEEP,
    PAST_LIFETIME,
    REPLACE,
    RESET,
    ROLL_BACK,
    SESSION_CHANGED,
    UNKNOWN,
    Action,
    judge,
    judge_settled,
)
from .work import Work

# Django's ``BaseDatabaseWrapper``, carrying the attributes this module adds to it.
Wrapper = Any

logger = logging.getLogger("wsgi_dbpool")

# the ident of the greenlet holding it, or None).

# What the policy counts, beside the pool's own STATS_KEYS (see PoolingMiddleware.stats),
# written once: stats(), the exporters and the tests read them from here.
OPENED = "opened"  # server connections opened
CLOSED = "closed"  # server connections closed
STALE = "stale"  # found dead on checkout
DIRTY = "dirty"  # returned inside a transaction, or with autocommit changed
BROKEN = "broken"  # closed on return: interrupted, or closed mid-command or mid-result
OVERFLOW = "overflow"  # opened for a pooled alias outside any lease
SPAWNED = "spawned"  # greenlets spawned by a view given a front wrapper
FAILOVERS = "failovers"  # failover errors that closed the alias's connections
PINNED = "pinned"  # units of work that left state on their session
UNAVAILABLE = "unavailable"  # answered at once while the breaker was open (breaker.py)
DRAINED_COUNT = "drained"  # calls of drain()
TAKEN_BACK = "taken_back"  # connections taken back by max_hold (max_hold.py)
POLICY_EVENTS = (
    OPENED, CLOSED, STALE, DIRTY, BROKEN, OVERFLOW, SPAWNED, FAILOVERS, PINNED, UNAVAILABLE,
    DRAINED_COUNT, TAKEN_BACK,
)
# What the policy shows of its state now (gauges), beside the counters.
BREAKER_OPEN = "breaker_open"  # 1 while fail_fast's breaker is open, else 0
POLICY_GAUGES = (BREAKER_OPEN,)


# The verdicts after which the server connection is not handed on.
_PARTING = frozenset((FAIL_OVER, DRAINED, REPLACE, CLOSE))

# The pool serving each alias in this process, for connections opened outside it.
_serving: dict[str, weakref.ref[AliasPool]] = {}


class AliasPool:
    """A :class:`~wsgi_dbpool.pool.Pool` of Django wrappers for one alias, plus the policy.

    Stale connections are noticed on checkout (only when idle longer than
    ``ping_after``); on return the verdict decides, from the connection's real state,
    whether to keep, roll back, reset, close or replace it.
    """

    def __init__(self, alias: str, settings: PoolSettings) -> None:
        self.alias = alias
        self.settings = settings
        self.ping_after = settings.ping_after
        self._ping_every = float("inf") if settings.ping_after is None else settings.ping_after
        self.reset_session = settings.reset == "session"
        self.pool: Pool[Wrapper] = Pool(
            alias,
            create=self._create,
            dispose=self._dispose,
            size=settings.size,
            max_outstanding=settings.max_outstanding,
            linger=settings.linger,
            max_waiting=settings.max_waiting,
        )
        self._warned: set[str] = set()
        self._watch_session: Any = None  # session_state's statement hook, per backend
        # When the idle connections were last closed for a failover: a connection opened
        # before then that fails the same way belongs to that failover, not a new one.
        self._failover_at = float("-inf")
        # When drain() was last called: connections opened before are replaced on return.
        self._drained_at = float("-inf")
        # Connections opened before this are closed before they are handed out.
        self._replace_before = float("-inf")
        self.breaker: Breaker | None = None
        if settings.fail_fast:
            self.breaker = Breaker(
                alias, probe=self._probe, on_open=self.close_idle, count=self.pool.count
            )
        # max_hold: takes back a carrier held past it (every hold mode: a front's carrier
        # passes through checkout()/checkin() per attachment too).
        self.max_hold = MaxHold(self, settings.max_hold) if settings.max_hold is not None else None
        _serving[alias] = weakref.ref(self)

    # -- wrapper lifecycle --------------------------------------------------------

    def _create(self) -> Wrapper:
        """A carrier: a wrapper of this pool that connects on first use (timed, and
        refused at once while the breaker is open)."""
        wrapper = self.new_wrapper()
        wrapper.connect = self._timed(wrapper)  # this wrapper's own, not the class's
        return wrapper

    def new_wrapper(self) -> Wrapper:
        """A wrapper from Django's own factory, marked as ours, with the execute-seam
        watches: no I/O. A carrier (:meth:`_create`) or a front (``front.Front``) after."""
        wrapper = django_create_connection(self.alias)
        record = wrapper._wsgi_dbpool = Record(self)  # record.RECORD_ATTR
        # Around every statement, outside the user's execute_wrappers (which stay as
        # Django's own: empty unless the user adds one), seeing every error.
        if self._watch_session is None:
            self._watch_session = session_state.watcher(
                wrapper.vendor, self.settings.session_state, failover.note
            ) or False
        # The session-state watch notes failover errors too; without it, the failover
        # watch alone.
        record.hooks.append(self._watch_session or failover.watch)
        hook_cursors(wrapper)
        return wrapper

    def _timed(self, wrapper: Wrapper) -> Any:
        note_connect = self.pool.note_connect
        connect = wrapper.connect
        record = record_of(wrapper)
        breaker = self.breaker

        def timed_connect() -> None:
            if (
                breaker is not None and breaker.open_until
                and breaker.prober != _concurrency.get_ident()
            ):
                breaker.refuse()  # checked out before the breaker opened: no connect now
            started = time.monotonic()
            record.setup = True  # Django's session set-up: not the work's
            try:
                connect()
            except RuntimeError as exc:  # the server answered: not a reason to trip the breaker
                self._name_missing_auth_package(exc)
                raise
            except Exception as exc:
                if breaker is not None and breaker.prober != _concurrency.get_ident():
                    breaker.failed(exc)
                raise
            finally:
                record.setup = False
                note_connect(time.monotonic() - started)

        return timed_connect

    def _name_missing_auth_package(self, exc: RuntimeError) -> None:
        """A connect the driver could not authenticate for want of a package: say which,
        once per alias (it fails the same way at every connect until it is installed)."""
        missing = missing_auth_package(exc)
        if missing is None or "auth package" in self._warned:
            return
        self._warned.add("auth package")
        extra, needed_by = missing
        logger.warning(
            "cannot connect %r: the server asked for %s, and the driver lacks the package it "
            "needs (%s). Install it: pip install '%s' (see docs/mysql-connect.md)",
            self.alias, needed_by, exc, extra,
        )

    def _dispose(self, wrapper: Wrapper) -> None:
        set_owner(wrapper, _concurrency.get_ident())
        self._close(wrapper, "surplus over size")

    def _close(self, wrapper: Wrapper, reason: str) -> None:
        """Close the server connection (politely); the wrapper stays usable: it reconnects."""
        if wrapper.connection is not None:
            logger.debug("closing a connection of %r: %s", self.alias, reason)
            try:
                wrapper.close()
            except Exception as exc:  # already broken: the socket is gone either way
                logger.debug("closing a connection of %r failed: %r", self.alias, exc)
                wrapper.connection = None
        self.note_closed(wrapper)

    def note_opened(self, wrapper: Wrapper) -> None:
        record = record_of(wrapper)
        if record.open:
            # Django closed the previous one itself (CONN_MAX_AGE, errors) mid-lease.
            self.pool.count(CLOSED)
        record.open = True
        # A new session is a clean one (what Django's set-up just sent does not count).
        record.session = None
        record.opened_at = now = time.monotonic()
        lifetime = self.settings.max_lifetime
        if lifetime is not None:
            # Drawn per connection, so that connections opened together do not all
            # expire (and reconnect) in the same second. It replaces CONN_MAX_AGE.
            jitter = self.settings.lifetime_jitter
            record.expires = now + lifetime * (1.0 - jitter * random.random())
            wrapper.close_at = None
        self.pool.count(OPENED)
        if self.settings.statement_timeout is not None:
            self._limit_statements(wrapper)

    def _limit_statements(self, wrapper: Wrapper) -> None:
        """Apply ``statement_timeout`` to the session (at connect, after a session reset)."""
        seconds = self.settings.statement_timeout
        assert seconds is not None
        raw = wrapper.connection
        if wrapper.vendor == "mysql":
            if "mariadb" in str(raw.get_server_info()).lower():
                sql = f"SET SESSION max_statement_time = {seconds:.6f}"
            else:  # MySQL: read-only SELECTs only (the server's own rule)
                sql = f"SET SESSION max_execution_time = {max(1, round(seconds * 1000))}"
        elif wrapper.vendor == "postgresql":
            sql = f"SET statement_timeout = {max(1, round(seconds * 1000))}"
        else:
            self._warn_once(
                "statement_timeout",
                "statement_timeout on %r: the %s backend has no statement timeout; ignored",
                self.alias, wrapper.vendor,
            )
            return
        with raw.cursor() as cursor:  # the driver's: no execute wrappers, nothing counted
            cursor.execute(sql)

    def note_closed(self, wrapper: Wrapper) -> None:
        closed = wrapper.connection is None or wrapper.closed_in_transaction
        record = record_of(wrapper)
        if closed and record.open:
            record.open = False
            self.pool.count(CLOSED)

    # -- checkout -----------------------------------------------------------------

    def checkout(self, work: Work, ident: int) -> Any:
        """A wrapper owned by greenlet ``ident``, checked if it sat idle a while.

        Raises :class:`~wsgi_dbpool.errors.DatabaseUnavailable` at once while the
        breaker is open (``fail_fast``), :class:`~wsgi_dbpool.errors.PoolTimeout` after
        ``timeout`` at the cap.
        """
        wrapper: Any
        breaker = self.breaker
        if breaker is not None and breaker.open_until:
            breaker.refuse()
        wrapper, idle_since = self.pool.acquire(work.timeout)
        # Ownership moves to the caller; Django checks it on every use.
        set_owner(wrapper, ident)
        record: Record = wrapper._wsgi_dbpool
        record.holder = ident
        record.taken = now = time.monotonic()  # for the hold time
        record.ran = False
        if wrapper.connection is not None and (
            record.opened_at < self._replace_before
            or record.expires is not None
            or (idle_since is not None and now - idle_since >= self._ping_every)
        ):  # otherwise, handed out as it is: the everyday path, decided inline
            self._check_connected(wrapper, record, idle_since, now)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("checkout %r: connection %s", self.alias, connection_label(wrapper))
        if self.max_hold is not None:
            self.max_hold.watch(wrapper, work)
        return wrapper

    # hold="request": the alias pool is itself the strategy (``lease.Hold``): a unit of work
    # takes a carrier when it starts and gives it back when it ends.
    take = checkout

    def _check_connected(
        self, wrapper: Wrapper, record: Record, idle_since: float | None, now: float
    ) -> None:
        """Before a connected wrapper is handed out: past its lifetime (or opened before a
        failover), closed; idle a while, pinged."""
        if record.opened_at < self._replace_before or (record.expires or now) < now:
            self._retire(wrapper)  # closed: it reconnects on first use, no ping
        elif idle_since is not None and now - idle_since >= self._ping_every:
            self._check_alive(wrapper)

    def _retire(self, wrapper: Wrapper) -> None:
        """Close a connection that must not be handed out; the wrapper reconnects."""
        opened_at = record_of(wrapper).opened_at
        if opened_at < self._failover_at:
            # Busy during a failover and returned clean: it still points at the old server.
            self._close(wrapper, "opened before the last failover")
        elif opened_at < self._drained_at:
            self._close(wrapper, "opened before the last drain()")
        else:
            self._close(wrapper, PAST_LIFETIME)

    def _check_alive(self, wrapper: Wrapper) -> None:
        # One round trip (a ping), paid only after ping_after seconds idle, and bounded
        # by ping_timeout (a socket dropped silently would hang until the kernel gives
        # up). On failure the wrapper is closed and the request gets it anyway: it
        # reconnects lazily.
        limit = _concurrency.TimeLimit(self.settings.ping_timeout)
        try:
            with limit:
                alive = driver_of(wrapper.connection).ping(wrapper)
        except BaseException as exc:  # killed mid-ping: the socket may be mid-protocol
            if limit.fired(exc):
                self._ping_timed_out(wrapper)
                return
            try:
                self._discard(wrapper, "interrupted during the health check")
            finally:
                set_owner(wrapper, NOBODY)
                self.pool.release(wrapper, reusable=True)
            raise
        if not alive:
            self.pool.count(STALE)
            logger.warning(
                "discarded a stale connection of %r (closed by the server while idle)",
                self.alias,
            )
            self._close(wrapper, "stale")

    def _ping_timed_out(self, wrapper: Wrapper) -> None:
        self.pool.count(STALE)
        logger.warning(
            "discarded a stale connection of %r (no answer to a ping within ping_timeout=%ss)",
            self.alias, self.settings.ping_timeout,
        )
        raw = wrapper.connection
        if raw is not None:  # mid-protocol: drop the socket, say nothing on the wire
            force_close(raw)
            wrapper.connection = None
        self.note_closed(wrapper)

    # -- return -------------------------------------------------------------------

    def checkin(self, wrapper: Any, broken: bool = False, trouble: Any = UNKNOWN) -> None:
        """Make the wrapper safe for the next holder, then give it back, exactly once.

        ``broken``: the holder was interrupted (see :func:`wsgi_dbpool.lease.interrupted`).
        A wrapper whose server connection was closed on the way still goes back: it
        is clean and reconnects on first use. Any exception while making it safe
        (an interrupt inside the rollback, say) closes the connection; an interrupt
        is then re-raised, for the caller it was meant for.
        """
        if self.max_hold is not None and self.max_hold.given_back(wrapper):
            return  # taken back by max_hold: its slot had its one release then
        record: Record = wrapper._wsgi_dbpool
        record.holder = None
        wrapper.rollback_exc = None  # the holder's; a new thread's wrapper has none
        wrapper.savepoint_state = 0  # numbers the holder's savepoints; a new one's from 0
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("return %r: connection %s", self.alias, connection_label(wrapper))
        if wrapper.queries_log:  # DEBUG's query log carries SQL and parameters: not on
            wrapper.queries_log.clear()
        action, reason = judge(wrapper, broken, self.reset_session, trouble)
        taken = record.taken
        if action is KEEP and record.opened_at >= self._drained_at:
            # the clean path, decided from memory alone
            wrapper.health_check_done = False  # so CONN_HEALTH_CHECKS apply to the next holder
            set_owner(wrapper, NOBODY)
            self.pool.release(wrapper, True, taken)  # reusable
            return
        if action is KEEP:
            action, reason = DRAINED, "opened before the last drain()"
        giving = wrapper
        try:
            set_owner(wrapper, _concurrency.get_ident())  # whoever returns it acts on it
            giving = self._carry_out(wrapper, action, reason)
        except BaseException as exc:
            giving = self._discard(wrapper, f"{action.value} failed ({exc!r})")
            if not isinstance(exc, Exception):
                raise
        finally:
            set_owner(giving, NOBODY)
            self.pool.release(giving, reusable=True, taken=taken)

    give = checkin  # the strategy's return (hold="request"), as ``take`` is checkout

    def _carry_out(self, wrapper: Wrapper, action: Action, reason: str) -> Wrapper:
        """Do what the verdict said; returns the wrapper to give back (maybe a new one)."""
        if action in _PARTING:
            return self._part(wrapper, action, reason)
        if action is ROLL_BACK:
            self.pool.count(DIRTY)
            wrapper.rollback()
            wrapper.set_autocommit(wrapper.settings_dict["AUTOCOMMIT"])
            logger.warning("rolled back a transaction on a connection of %r: %s", self.alias, reason)
        elif action is CHECK:
            # Django's own rule: after a database error, keep it only if it answers.
            wrapper.close_if_unusable_or_obsolete()
            self.note_closed(wrapper)
        if wrapper.connection is None:
            return wrapper
        action, reason = (
            (action, reason) if action is RESET else judge_settled(wrapper, self.reset_session)
        )
        if action is CLOSE:
            self._close(wrapper, reason)
        elif action is RESET:
            if reason is SESSION_CHANGED:  # set by the work, seen at the execute seam
                self.pool.count(PINNED)
            self._reset_session(wrapper)
        wrapper.health_check_done = False  # so CONN_HEALTH_CHECKS apply to the next holder
        return wrapper

    def _part(self, wrapper: Wrapper, action: Action, reason: str) -> Wrapper:
        """The verdicts that end the server connection: fail over, drained, replace, close."""
        if action is FAIL_OVER:
            return self._fail_over(wrapper, reason)
        if action is REPLACE:
            self._count_discard(DIRTY, reason)
        elif action is CLOSE and (reason is INTERRUPTED or reason in UNUSABLE):
            self._count_discard(BROKEN, reason)
            _abandon_unread_result(wrapper)
        self._close(wrapper, reason)
        if action is CLOSE:
            return wrapper
        return self.pool.create_replacement()  # DRAINED, REPLACE

    def _fail_over(self, wrapper: Wrapper, reason: str) -> Wrapper:
        """Close this connection and every idle one of the alias: they all point at the
        server that failed over. Counted and logged once per failover."""
        record = record_of(wrapper)
        record.failover = None
        if record.opened_at >= self._failover_at:  # not seen before
            self._failover_at = time.monotonic()
            self._replace_before = max(self._replace_before, self._failover_at)
            self.pool.count(FAILOVERS)
            closed = self.pool.drain_idle()
            logger.warning(
                "failover on %r (%s): closed this connection and %d idle one(s); new "
                "connections go wherever the alias's address now leads",
                self.alias, reason, closed,
            )
        else:
            logger.debug("closing a connection of %r from before the failover: %s",
                         self.alias, reason)
        _abandon_unread_result(wrapper)
        self._close(wrapper, reason)
        if wrapper.in_atomic_block or wrapper.closed_in_transaction:
            return self.pool.create_replacement()
        return wrapper

    def _reset_session(self, wrapper: Wrapper) -> None:
        record = record_of(wrapper)
        record.setup = True  # the set-up replayed: not the work's
        try:
            done = reset_session(wrapper)
            if done and self.settings.statement_timeout is not None:
                self._limit_statements(wrapper)  # the reset put the server's default back
        finally:
            record.setup = False
        if done:
            # Clean now (Django's session set-up, replayed by the reset, was watched too).
            record.session = None
        else:  # no reset on this backend: a fresh connection is
            self._warn_once(                 # the clean one
                "no-reset",
                "reset='session' on %r: the %s backend has no session reset; every "
                "return closes the connection instead (a reconnect per request)",
                self.alias, wrapper.vendor,
            )
            self._close(wrapper, "no session reset on this backend")

    def _discard(self, wrapper: Wrapper, reason: str) -> Wrapper:
        """Drop the server connection with no I/O we could be interrupted in again.

        Returns the wrapper to give back: a new one if Django would refuse to use this
        one again (closed inside ``atomic()``).
        """
        self._count_discard(BROKEN, reason)
        raw = wrapper.connection
        if raw is not None:
            force_close(raw)
            wrapper.connection = None
        self.note_closed(wrapper)
        if wrapper.in_atomic_block or wrapper.closed_in_transaction:
            return self.pool.create_replacement()
        return wrapper

    def warn_pinned(self, where: str, label: str, kind: str) -> None:
        """Under hold="transaction", once per statement kind and kind of work (a view, a
        task: :func:`front._kind_of`); ``where`` names this one."""
        self._warn_once(
            f"pinned {label} {kind}",
            "%s: %s leaves state on the session of its connection of %r, so under "
            "hold='transaction' this unit of work keeps that connection to its end, and the "
            "session is reset on return. Counted in stats()['pinned']; to share the connection "
            "again, keep such state inside transaction.atomic() (SET LOCAL, "
            "pg_advisory_xact_lock) or avoid it; session_state='raise' finds every such statement",
            where, label, self.alias,
        )

    def _count_discard(self, event: str, reason: str) -> None:
        self.pool.count(event)
        logger.warning("discarded a connection of %r: %s", self.alias, reason)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    # -- connections opened outside the pool --------------------------------------------

    def note_overflow(self, wrapper: Wrapper) -> None:
        """A greenlet with no checkout opened its own connection for this alias.

        It is outside the pool and its cap. It is closed when its greenlet ends (not
        left to the garbage collector, which the server counts as an aborted client).
        """
        self.pool.count(OVERFLOW)
        self._warn_once(
            "overflow",
            "a greenlet outside any request opened its own connection to %r, outside the "
            "pool and its cap (a greenlet spawned by a view?); wrap its database work in "
            "`with application.checkout():` to use the pool. It is closed when the "
            "greenlet ends. Counted in stats()['overflow'].",
            self.alias,
        )
        _concurrency.at_greenlet_exit(lambda: _close_overflow(wrapper))

    # -- pre-warm -----------------------------------------------------------------

    def prewarm(self, count: int, spacing: float = 0.01) -> None:
        """Open up to ``count`` connections into the idle pool; retry with backoff.

        Meant for a background greenlet: one connect at a time with a short sleep
        between, so the hub keeps serving (each PyMySQL connect is ~30 ms of CPU). It
        never holds a slot, and stops early when requests have filled the pool already.
        Errors are logged and retried, up to a minute apart; they never propagate.
        """
        backoff = 0.5
        while True:
            try:
                opened = self._prewarm_once(count, spacing)
            except Exception as exc:
                logger.warning(
                    "pre-warming %r failed (%r); retrying in %.1fs", self.alias, exc, backoff
                )
                _concurrency.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            logger.info("pre-warmed %d connection(s) of %r", opened, self.alias)
            return

    def _prewarm_once(self, count: int, spacing: float) -> int:
        opened = 0
        while opened < count:
            stats = self.pool.stats()
            if int(stats["idle"] or 0) + int(stats["in_use"] or 0) >= count:
                break  # requests got there first
            wrapper = self._open_one("pre-warm")
            if not self.pool.add_idle(wrapper):
                set_owner(wrapper, _concurrency.get_ident())
                self._close(wrapper, "the pool filled up while pre-warming")
                break
            opened += 1
            _concurrency.sleep(spacing)
        return opened

    def _open_one(self, purpose: str) -> Wrapper:
        """A new wrapper, connected (outside any slot); raises if it cannot connect."""
        wrapper = self._create()
        set_owner(wrapper, _concurrency.get_ident())
        try:
            wrapper.ensure_connection()
        except BaseException:
            self._close(wrapper, f"{purpose} failed")
            raise
        finally:
            set_owner(wrapper, NOBODY)
        return wrapper

    def _probe(self) -> None:
        """The breaker's probe: one connect; kept idle if it works (the pool refills)."""
        wrapper = self._open_one("the breaker's probe")
        if not self.pool.add_idle(wrapper):
            set_owner(wrapper, _concurrency.get_ident())
            self._close(wrapper, "no room for the breaker's probe")

    # -- maintenance --------------------------------------------------------------

    def close_idle(self) -> int:
        return self.pool.drain_idle()

    def drain(self) -> int:
        """Replace every connection: idle ones are closed now, those in use when they
        come back (their wrappers too, so that new connects read the alias's settings
        as they are then: rotated credentials apply). Returns how many were closed now."""
        self._drained_at = time.monotonic()
        self._replace_before = max(self._replace_before, self._drained_at)
        closed = self.pool.drain_idle()
        self.pool.count(DRAINED_COUNT)
        logger.info(
            "drained %r: closed %d idle connection(s); the ones in use close on return",
            self.alias, closed,
        )
        return closed

    def stats(self) -> dict[str, int | float | None]:
        breaker = self.breaker
        is_open = breaker is not None and breaker.open_until != 0.0
        return {
            **dict.fromkeys(POLICY_EVENTS, 0), **self.pool.stats(), BREAKER_OPEN: int(is_open)
        }


def _close_overflow(wrapper: Wrapper) -> None:
    set_owner(wrapper, _concurrency.get_ident())
    try:
        wrapper.close()
    except Exception as exc:
        logger.debug("closing a spawned greenlet's connection failed: %r", exc)


def connection_label(wrapper: Wrapper) -> str:
    """The server's id for the wrapper's connection, from what the driver already knows."""
    return drivers.label(wrapper.connection)


def _abandon_unread_result(wrapper: Wrapper) -> None:
    raw = wrapper.connection
    if raw is not None:
        driver_of(raw).abandon_unread_result(raw)


def on_connection_created(sender: object, connection: Any, **kwargs: object) -> None:
    """``connection_created`` receiver: counts what pooled wrappers open, and notices a
    connection a pooled alias opens outside the pool and outside any lease."""
    record = record_or_none(connection)
    if record is not None:
        record.pool.note_opened(connection)
        return
    ref = _serving.get(connection.alias)
    alias_pool = ref() if ref is not None else None
    if alias_pool is None:
        return
    if not in_lease(_concurrency.get_ident()):  # a lease closes its own at its end
        alias_pool.note_overflow(connection)

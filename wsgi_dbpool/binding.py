"""The Django side: pooled ``DatabaseWrapper`` objects, how they are bound and judged.

Django keeps one ``DatabaseWrapper`` per alias in ``django.db.connections``, a
thread-local that gevent makes greenlet-local. Binding means putting a pooled wrapper
into that local for the current greenlet (Django's own seam,
``connections[alias] = wrapper``) and making the greenlet its owner, since Django
refuses a wrapper created in another thread.

Every decision on return is taken from state Django (or the driver) already holds in
memory, so the clean path costs no database round trip.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

from . import _concurrency
from .pool import Pool
from .session import reset_session

# Django's ``BaseDatabaseWrapper``, carrying the attributes this module adds to it (and
# relying on private ones, ``_thread_ident``, that no stub declares).
Wrapper = Any

logger = logging.getLogger("wsgi_dbpool")

UNBOUND: Any = object()

# Attributes this library sets on the wrappers it creates (and ``_wsgi_dbpool_holder``,
# the ident of the greenlet holding it, or None).
_POOL_ATTR = "_wsgi_dbpool_pool"  # the AliasPool that owns the wrapper
_OPEN_ATTR = "_wsgi_dbpool_open"  # a server connection was opened and not yet seen closed


def _connections() -> Any:
    from django.db import connections

    return connections


class ConnectionSlots:
    """Finds the object behind ``django.db.connections`` that holds each greenlet's wrappers.

    ``connections[alias] = w`` is ``setattr(connections._connections, alias, w)`` on
    asgiref's ``Local``, which asks asyncio for a running loop on every access (about
    1 µs, four times a request). In a WSGI worker no loop runs in the request's
    thread, so asgiref would use its plain thread-local anyway: we use that same
    object directly when it is there, and the ``Local`` itself otherwise. Either way
    ``getattr``/``setattr``/``delattr`` on :attr:`storage` mean exactly what they
    mean on ``connections``.
    """

    def __init__(self) -> None:
        local = _connections()._connections
        storage = getattr(local, "_storage", None)
        if type(local).__name__ == "_ThreadCriticalLocal" and storage is not None:
            self.storage: Any = _repair_pre_patch_local(local, storage)
        else:  # pragma: no cover - other asgiref versions: the public path
            self.storage = local


def _repair_pre_patch_local(local: Any, storage: Any) -> Any:
    """Make Django's connection local greenlet-local if gevent patched after it was made.

    With gunicorn ``--preload``, Django (and ``django.db.connections``) is imported in
    the master, before the gevent worker patches ``threading``. Its thread-local is
    then a native one, shared by every greenlet of the worker: binding a connection
    for one request would bind it for all. When we see that, we give ``connections``
    a fresh, patched local (nothing useful is lost: the master serves no requests).
    """
    import sys
    import threading

    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is None or not gevent_monkey.is_module_patched("threading"):
        return storage
    # `_thread._local` itself is gevent's by now: compare with the original class.
    if type(storage) is not gevent_monkey.get_original("_thread", "_local"):
        return storage
    fresh = threading.local()
    object.__setattr__(local, "_storage", fresh)
    logger.info(
        "django.db.connections was created before gevent patched threading "
        "(gunicorn --preload): gave it a greenlet-local storage"
    )
    return fresh


def _in_transaction_flag(raw: Any) -> bool:
    """Whether the driver knows of an open transaction, from what it already holds.

    Catches ``BEGIN`` sent by hand in autocommit mode, which Django's own flags miss.
    Unknown drivers report False: Django's flags are then all we go by.
    """
    return (_TRANSACTION_PROBES.get(type(raw)) or _learn_probe(raw))(raw)


def _learn_probe(raw: Any) -> Callable[[Any], bool]:
    probe = _TRANSACTION_PROBES[type(raw)] = _transaction_probe_for(raw)
    return probe


def _transaction_probe_for(raw: Any) -> Callable[[Any], bool]:
    if isinstance(getattr(raw, "server_status", None), int):  # PyMySQL, mysqlclient-like
        return lambda c: bool(c.server_status & 1)  # SERVER_STATUS_IN_TRANS
    if isinstance(getattr(raw, "in_transaction", None), bool):  # sqlite3
        return lambda c: bool(c.in_transaction)
    if getattr(getattr(raw, "info", None), "transaction_status", None) is not None:
        return lambda c: int(c.info.transaction_status) != 0  # psycopg 3: IDLE is 0
    if callable(getattr(raw, "get_transaction_status", None)):
        return lambda c: int(c.get_transaction_status()) != 0  # psycopg2: IDLE is 0
    return lambda c: False


_TRANSACTION_PROBES: dict[type, Callable[[Any], bool]] = {}


class AliasPool:
    """A :class:`~wsgi_dbpool.pool.Pool` of Django wrappers for one alias, plus the policy.

    The policy is what makes a wrapper safe to hand on: stale connections are noticed
    on checkout (only when idle longer than ``ping_after``), and on return a wrapper
    left in a transaction, an atomic block or with autocommit off is rolled back or
    dropped, and an unusable or obsolete (``CONN_MAX_AGE``) one is closed.
    """

    def __init__(
        self,
        alias: str,
        *,
        size: int,
        max_outstanding: int | None,
        ping_after: float | None,
        linger: float = 0.0,
        reset: str = "transaction",
    ) -> None:
        self.alias = alias
        self.ping_after = ping_after
        self.reset_session = reset == "session"
        self.pool: Pool[Wrapper] = Pool(
            alias,
            create=self._create,
            dispose=self._dispose,
            size=size,
            max_outstanding=max_outstanding,
            linger=linger,
        )

    # -- wrapper lifecycle --------------------------------------------------------

    def _create(self) -> Wrapper:
        # Django's own factory: no I/O, the wrapper connects on first use.
        wrapper = _connections().create_connection(self.alias)
        setattr(wrapper, _POOL_ATTR, self)
        wrapper._wsgi_dbpool_holder = None
        setattr(wrapper, _OPEN_ATTR, False)
        return wrapper

    def _dispose(self, wrapper: Wrapper) -> None:
        self._close(wrapper, "surplus over size")

    def _close(self, wrapper: Wrapper, reason: str) -> None:
        """Close the server connection; the wrapper itself stays usable (it reconnects)."""
        wrapper._thread_ident = _concurrency.get_ident()
        if wrapper.connection is not None:
            logger.debug("closing a connection of %r: %s", self.alias, reason)
            try:
                wrapper.close()
            except Exception as exc:  # already broken: the socket is gone either way
                logger.debug("closing a connection of %r failed: %r", self.alias, exc)
                wrapper.connection = None
        self.note_closed(wrapper)

    def note_opened(self, wrapper: Wrapper) -> None:
        if getattr(wrapper, _OPEN_ATTR, False):
            # Django closed the previous one itself (CONN_MAX_AGE, errors) mid-lease.
            self.pool.count("closed")
        setattr(wrapper, _OPEN_ATTR, True)
        self.pool.count("opened")

    def note_closed(self, wrapper: Wrapper) -> None:
        closed = wrapper.connection is None or wrapper.closed_in_transaction
        if closed and getattr(wrapper, _OPEN_ATTR, False):
            setattr(wrapper, _OPEN_ATTR, False)
            self.pool.count("closed")

    # -- checkout -----------------------------------------------------------------

    def checkout(self, timeout: float | None, ident: int) -> Any:
        """A wrapper owned by greenlet ``ident``, checked if it sat idle a while."""
        wrapper: Any
        wrapper, idle_since = self.pool.acquire(timeout)
        # Ownership moves to the caller; Django checks it on every use.
        wrapper._thread_ident = ident
        wrapper._wsgi_dbpool_holder = ident
        if (
            idle_since is not None
            and self.ping_after is not None
            and wrapper.connection is not None
            and time.monotonic() - idle_since >= self.ping_after
        ):
            self._check_alive(wrapper)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("checkout %r: connection %s", self.alias, connection_label(wrapper))
        return wrapper

    def _check_alive(self, wrapper: Wrapper) -> None:
        # One round trip (a ping), paid only after ping_after seconds idle. On failure
        # the wrapper is closed and the request gets it anyway: it reconnects lazily.
        try:
            alive = wrapper.is_usable()
        except BaseException:  # killed mid-ping: the socket may be mid-protocol
            try:
                self._close(wrapper, "interrupted during the health check")
            finally:
                self.pool.release(wrapper, reusable=False)
            raise
        if not alive:
            self.pool.count("stale")
            logger.warning(
                "discarded a stale connection of %r (closed by the server while idle)",
                self.alias,
            )
            self._close(wrapper, "stale")

    # -- return -------------------------------------------------------------------

    def checkin(self, wrapper: Any, broken: bool = False) -> None:
        """Make the wrapper safe for the next holder, then give it back to the pool.

        A wrapper whose server connection was closed on the way (stale, dirty,
        obsolete) still goes back: it is clean and reconnects on first use, and a
        request that never touches the database then costs no new wrapper.
        """
        wrapper._wsgi_dbpool_holder = None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("return %r: connection %s", self.alias, connection_label(wrapper))
        raw = wrapper.connection
        if (  # the clean path, decided from memory alone: nothing to do
            raw is not None
            and not broken
            and not self.reset_session
            and not wrapper.in_atomic_block
            and not wrapper.errors_occurred
            and wrapper.autocommit == wrapper.settings_dict["AUTOCOMMIT"]
            and (wrapper.close_at is None or time.monotonic() < wrapper.close_at)
            and not (_TRANSACTION_PROBES.get(type(raw)) or _learn_probe(raw))(raw)
        ):
            wrapper.health_check_done = False  # so CONN_HEALTH_CHECKS apply to the next request
            self.pool.release(wrapper, reusable=True)
            return
        giving = wrapper
        try:
            if broken:
                self._close(wrapper, "the work was interrupted mid-way")
            giving = self._reset(wrapper)
        finally:
            self.pool.release(giving, reusable=True)

    def _reset(self, wrapper: Wrapper) -> Wrapper:
        """The return path, in order: closed, atomic, transaction, errors, age.

        Returns the wrapper to give back: the same one, or a fresh one standing in
        for a wrapper Django can no longer reset.
        """
        if wrapper.connection is None:
            self.note_closed(wrapper)
            return wrapper
        if wrapper.in_atomic_block:
            # Django forbids rollback inside atomic(); the only safe move is to close,
            # after which the wrapper stays marked closed-in-transaction: replace it.
            self.pool.count("dirty")
            logger.warning(
                "discarded a connection of %r returned inside an atomic block", self.alias
            )
            self._close(wrapper, "inside an atomic block")
            return self._create()
        if (
            wrapper.autocommit != wrapper.settings_dict["AUTOCOMMIT"]
            or _in_transaction_flag(wrapper.connection)
        ):
            self.pool.count("dirty")
            self._roll_back(wrapper)
        elif wrapper.errors_occurred:
            # Django's own rule: after a database error, keep it only if it answers.
            wrapper._thread_ident = _concurrency.get_ident()
            wrapper.close_if_unusable_or_obsolete()
            self.note_closed(wrapper)
        elif wrapper.close_at is not None and time.monotonic() >= wrapper.close_at:
            self._close(wrapper, "older than CONN_MAX_AGE")
        if self.reset_session and wrapper.connection is not None:
            self._reset_session(wrapper)
        wrapper.health_check_done = False  # so CONN_HEALTH_CHECKS apply to the next request
        return wrapper

    def _reset_session(self, wrapper: Wrapper) -> None:
        wrapper._thread_ident = _concurrency.get_ident()
        try:
            done = reset_session(wrapper)
        except Exception as exc:
            logger.warning("closed a connection of %r: session reset failed: %r", self.alias, exc)
            done = False
        if not done:  # no reset on this backend: a fresh connection is the clean one
            self._close(wrapper, "session reset")

    def _roll_back(self, wrapper: Wrapper) -> None:
        wrapper._thread_ident = _concurrency.get_ident()  # whoever returns it may act on it
        try:
            wrapper.rollback()
            wrapper.set_autocommit(wrapper.settings_dict["AUTOCOMMIT"])
        except Exception as exc:
            logger.warning(
                "closed a connection of %r left in a transaction: rollback failed: %r",
                self.alias, exc,
            )
            self._close(wrapper, "rollback failed")
            return
        logger.warning("rolled back a transaction left open on a connection of %r", self.alias)

    # -- maintenance --------------------------------------------------------------

    def close_idle(self) -> int:
        return self.pool.drain_idle()

    def stats(self) -> dict[str, int | float | None]:
        return {"opened": 0, "closed": 0, "stale": 0, "dirty": 0, **self.pool.stats()}


def connection_label(wrapper: Wrapper) -> str:
    """The server's id for the wrapper's connection, from what the driver already knows."""
    raw = wrapper.connection
    if raw is None:
        return "(not connected)"
    thread_id = getattr(raw, "thread_id", None)  # PyMySQL / mysqlclient: CONNECTION_ID()
    if callable(thread_id):
        return str(thread_id())
    pid = getattr(getattr(raw, "info", None), "backend_pid", None)  # psycopg 3
    if pid is not None:
        return str(pid)
    return hex(id(raw))


def warn_if_conn_max_age_zero(alias: str, settings: dict[str, Any]) -> None:
    """A pooled alias with ``CONN_MAX_AGE = 0`` reconnects on every request anyway."""
    if settings.get("CONN_MAX_AGE", 0) == 0:
        message = (
            f"DATABASES[{alias!r}]['CONN_MAX_AGE'] is 0: Django closes the connection "
            f"at the end of every request, so the pool cannot reuse it. Set "
            f"CONN_MAX_AGE to a number of seconds below the server's wait_timeout "
            f"(e.g. 60), or None for no limit."
        )
        logger.warning("%s", message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def on_connection_created(sender: object, connection: Any, **kwargs: object) -> None:
    """``connection_created`` receiver: counts server connections opened by pooled wrappers."""
    owner = getattr(connection, _POOL_ATTR, None)
    if owner is not None:
        owner.note_opened(connection)



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
from typing import TYPE_CHECKING, Any, Callable

from . import _concurrency
from .pool import Pool

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("wsgi_dbpool")

UNBOUND: Any = object()

# Attributes this library sets on the wrappers it creates.
_POOL_ATTR = "_wsgi_dbpool_pool"  # the AliasPool that owns the wrapper
_HOLDER_ATTR = "_wsgi_dbpool_holder"  # ident of the greenlet/thread holding it, or None
_OPEN_ATTR = "_wsgi_dbpool_open"  # a server connection was opened and not yet seen closed


def _connections() -> Any:
    from django.db import connections

    return connections


class _Slots:
    """Direct access to the storage behind ``django.db.connections``.

    ``connections[alias] = w`` goes through asgiref's ``Local``, which asks asyncio
    for a running loop on every access (about 1 µs each, four times a request). In a
    WSGI worker no loop runs in the request's thread, so asgiref would use its plain
    thread-local anyway; we use that same object directly when it is there, and
    Django's public protocol otherwise.
    """

    def __init__(self) -> None:
        connections = _connections()
        local = connections._connections
        storage = getattr(local, "_storage", None)
        if type(local).__name__ == "_ThreadCriticalLocal" and storage is not None:
            storage = _repair_pre_patch_local(local, storage)
            self.get: Callable[[str], Any] = lambda alias: getattr(storage, alias, UNBOUND)
            self.set: Callable[[str, Any], None] = lambda alias, w: setattr(storage, alias, w)
            self.unset: Callable[[str], None] = lambda alias: delattr(storage, alias)
        else:  # pragma: no cover - other asgiref versions
            self.get = lambda alias: getattr(local, alias, UNBOUND)
            self.set = connections.__setitem__
            self.unset = connections.__delitem__


def _repair_pre_patch_local(local: Any, storage: Any) -> Any:
    """Make Django's connection local greenlet-local if gevent patched after it was made.

    With gunicorn ``--preload``, Django (and ``django.db.connections``) is imported in
    the master, before the gevent worker patches ``threading``. Its thread-local is
    then a native one, shared by every greenlet of the worker: binding a connection
    for one request would bind it for all. When we see that, we give ``connections``
    a fresh, patched local (nothing useful is lost: the master serves no requests).
    """
    import sys
    import _thread
    import threading

    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is None or not gevent_monkey.is_module_patched("threading"):
        return storage
    if type(storage) is not _thread._local or threading.local is _thread._local:
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
    status = getattr(raw, "server_status", None)  # PyMySQL / mysqlclient-like
    if isinstance(status, int):
        return bool(status & 1)  # SERVER_STATUS_IN_TRANS
    in_transaction = getattr(raw, "in_transaction", None)  # sqlite3
    if isinstance(in_transaction, bool):
        return in_transaction
    info = getattr(raw, "info", None)  # psycopg 3: IDLE is 0
    status = getattr(info, "transaction_status", None)
    if status is not None:
        return int(status) != 0
    get_status = getattr(raw, "get_transaction_status", None)  # psycopg2: IDLE is 0
    if callable(get_status):
        return int(get_status()) != 0
    return False


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
    ) -> None:
        self.alias = alias
        self.ping_after = ping_after
        self.pool: Pool[BaseDatabaseWrapper] = Pool(
            alias,
            create=self._create,
            dispose=self._dispose,
            size=size,
            max_outstanding=max_outstanding,
        )
        self.stale = 0
        self.dirty = 0
        self.opened = 0
        self.closed = 0

    # -- wrapper lifecycle --------------------------------------------------------

    def _create(self) -> BaseDatabaseWrapper:
        # Django's own factory: no I/O, the wrapper connects on first use.
        wrapper = _connections().create_connection(self.alias)
        setattr(wrapper, _POOL_ATTR, self)
        setattr(wrapper, _HOLDER_ATTR, None)
        setattr(wrapper, _OPEN_ATTR, False)
        return wrapper

    def _dispose(self, wrapper: BaseDatabaseWrapper) -> None:
        self._close(wrapper, "surplus over size")

    def _close(self, wrapper: BaseDatabaseWrapper, reason: str) -> None:
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

    def note_opened(self, wrapper: BaseDatabaseWrapper) -> None:
        setattr(wrapper, _OPEN_ATTR, True)
        self.opened += 1

    def note_closed(self, wrapper: BaseDatabaseWrapper) -> None:
        closed = wrapper.connection is None or wrapper.closed_in_transaction
        if closed and getattr(wrapper, _OPEN_ATTR, False):
            setattr(wrapper, _OPEN_ATTR, False)
            self.closed += 1

    # -- checkout -----------------------------------------------------------------

    def checkout(self, timeout: float | None) -> BaseDatabaseWrapper:
        """A wrapper owned by the calling greenlet, checked if it sat idle a while."""
        wrapper, idle_since = self.pool.acquire(timeout)
        wrapper._thread_ident = _concurrency.get_ident()
        setattr(wrapper, _HOLDER_ATTR, wrapper._thread_ident)
        if (
            idle_since is not None
            and self.ping_after is not None
            and wrapper.connection is not None
            and time.monotonic() - idle_since >= self.ping_after
        ):
            self._check_alive(wrapper)
        return wrapper

    def _check_alive(self, wrapper: BaseDatabaseWrapper) -> None:
        # One round trip (a ping), paid only after ping_after seconds idle. On failure
        # the wrapper is closed and the request gets it anyway: it reconnects lazily.
        try:
            alive = wrapper.is_usable()
        except BaseException:
            self.pool.release(wrapper, reusable=False)
            raise
        if not alive:
            self.stale += 1
            logger.warning(
                "discarded a stale connection of %r (closed by the server while idle)",
                self.alias,
            )
            self._close(wrapper, "stale")

    # -- return -------------------------------------------------------------------

    def checkin(self, wrapper: BaseDatabaseWrapper) -> None:
        """Make the wrapper safe for the next holder, then give it back to the pool."""
        wrapper._thread_ident = _concurrency.get_ident()
        setattr(wrapper, _HOLDER_ATTR, None)
        giving, reusable = wrapper, False
        try:
            giving, reusable = self._reset(wrapper)
        finally:
            self.pool.release(giving, reusable=reusable)

    def _reset(self, wrapper: BaseDatabaseWrapper) -> tuple[BaseDatabaseWrapper, bool]:
        """The return path, in order: closed, atomic, transaction, errors, age.

        Returns the wrapper to give back (the same one, or a fresh one standing in
        for a wrapper Django can no longer reset) and whether it may be kept idle. A
        wrapper whose connection is closed still goes to a waiter: it reconnects on
        first use.
        """
        if wrapper.connection is None:
            self.note_closed(wrapper)
            return wrapper, False
        if wrapper.in_atomic_block:
            # Django forbids rollback inside atomic(); the only safe move is to close.
            # close() then marks the wrapper closed-in-transaction: replace it.
            self.dirty += 1
            logger.warning(
                "discarded a connection of %r returned inside an atomic block", self.alias
            )
            self._close(wrapper, "inside an atomic block")
            return self._create(), False
        if (
            wrapper.autocommit != wrapper.settings_dict["AUTOCOMMIT"]
            or _in_transaction_flag(wrapper.connection)
        ):
            self.dirty += 1
            return wrapper, self._roll_back(wrapper)
        if wrapper.errors_occurred:
            # Django's own rule: after a database error, keep it only if it answers.
            wrapper.close_if_unusable_or_obsolete()
            self.note_closed(wrapper)
            return wrapper, wrapper.connection is not None
        if wrapper.close_at is not None and time.monotonic() >= wrapper.close_at:
            self._close(wrapper, "older than CONN_MAX_AGE")
            return wrapper, False
        wrapper.health_check_done = False  # so CONN_HEALTH_CHECKS apply to the next request
        return wrapper, True

    def _roll_back(self, wrapper: BaseDatabaseWrapper) -> bool:
        try:
            wrapper.rollback()
            wrapper.set_autocommit(wrapper.settings_dict["AUTOCOMMIT"])
        except Exception as exc:
            logger.warning(
                "discarded a connection of %r left in a transaction: rollback failed: %r",
                self.alias, exc,
            )
            self._close(wrapper, "rollback failed")
            return False
        logger.warning(
            "rolled back a transaction left open on a connection of %r", self.alias
        )
        return True

    # -- maintenance --------------------------------------------------------------

    def close_idle(self) -> int:
        return self.pool.drain_idle()

    def stats(self) -> dict[str, int | float | None]:
        stats = self.pool.stats()
        stats.update(
            opened=self.opened, closed=self.closed, stale=self.stale, dirty=self.dirty
        )
        return stats


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


def held_by_current(wrapper: Any) -> bool:
    """Whether ``wrapper`` is a pooled wrapper checked out by the calling greenlet."""
    holder = getattr(wrapper, _HOLDER_ATTR, None)
    return holder is not None and holder == _concurrency.get_ident()

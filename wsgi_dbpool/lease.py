"""A lease: the pooled connections bound to one unit of work, returned exactly once.

Binding means putting a pooled wrapper into Django's per-greenlet connection storage
(what ``connections[alias] = wrapper`` does) and making the greenlet its owner, since
Django refuses a wrapper used from another thread. :class:`ConnectionSlots` finds that
storage; :class:`Lease` binds and unbinds.
"""

from __future__ import annotations

import _thread
import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from . import _internals
from .hold_watch import HoldWatch
from .record import RECORD_ATTR
from .work import Work

logger = logging.getLogger("wsgi_dbpool")

UNBOUND: Any = object()

# Django's connection storage when it is a thread-local (gevent's, once patched).
_LOCALS = (threading.local, _thread._local)


# Greenlets (or threads) inside a lease, by ident: how many leases each is inside.
# A connection a pooled alias opens elsewhere is outside the pool (see AliasPool).
_leased: dict[int, int] = {}


class Hold(Protocol):
    """How a unit of work holds one alias's connections (see :mod:`wsgi_dbpool.hold`)."""

    alias: str

    def take(self, work: Work, ident: int) -> Any:
        """A wrapper for greenlet ``ident`` to bind for ``work``."""

    def give(self, wrapper: Any, broken: bool = False) -> None:
        """Take back what :meth:`take` gave, exactly once."""


def in_lease(ident: int) -> bool:
    return ident in _leased


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` may have cut a database conversation in half.

    ``GreenletExit``, ``gevent.Timeout`` and ``KeyboardInterrupt`` can land in the
    middle of a socket read. Ordinary exceptions cannot: an I/O error inside the
    driver surfaces as a ``DatabaseError``, and the verdict reads the driver's state.
    """
    return not isinstance(exc, Exception)


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
    mean on ``connections``. Django's own reads (``connections[alias]``) take the same
    shortcut once the storage is found (:func:`~wsgi_dbpool._internals.speed_up_lookups`).
    """

    def __init__(self) -> None:
        local = _connections()._connections
        storage = _internals.thread_local_storage(local)
        if storage is not None:
            self.storage: Any = _repair_pre_patch_local(local, storage)
            _internals.speed_up_lookups(local, self.storage)  # Django's own lookups too
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
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is None or not gevent_monkey.is_module_patched("threading"):
        return storage
    # `_thread._local` itself is gevent's by now: compare with the original class.
    if type(storage) is not gevent_monkey.get_original("_thread", "_local"):
        return storage
    fresh = threading.local()
    _internals.replace_thread_local_storage(local, fresh)
    logger.info(
        "django.db.connections was created before gevent patched threading "
        "(gunicorn --preload): gave it a greenlet-local storage"
    )
    return fresh


def _bound(storage: Any, alias: str) -> Any:
    """What ``connections[alias]`` holds for this greenlet, forgetting a stale binding.

    A pooled wrapper bound here but no longer held by this greenlet was released
    elsewhere (``close()`` from another greenlet, a dropped response): it may be in
    another request's hands now, so this greenlet must never reach it again.
    """
    if isinstance(storage, _LOCALS):
        # The greenlet's own dict: a miss costs no AttributeError (1.3 against 0.2 us).
        bound = storage.__dict__.get(alias, UNBOUND)
    else:  # pragma: no cover - asgiref's Local itself (see ConnectionSlots)
        bound = getattr(storage, alias, UNBOUND)
    return bound if bound is UNBOUND else _unless_stale(storage, alias, bound, _thread.get_ident())


def _unless_stale(storage: Any, alias: str, bound: Any, ident: int) -> Any:
    """``bound`` (bound for ``alias`` in greenlet ``ident``), or UNBOUND once forgotten: a
    pooled wrapper that greenlet no longer holds (see :func:`_bound`)."""
    record = bound.__dict__.get(RECORD_ATTR)
    if record is not None and record.holder != ident:
        delattr(storage, alias)
        return UNBOUND
    return bound


class Lease:
    """Checks out one wrapper per alias, binds it in the calling greenlet, and undoes both.

    Under ``hold="lazy"`` or ``"transaction"`` what is bound is a front wrapper that takes
    a server connection only when the work first needs one (``work`` is where a wait
    at the cap is reported; see :mod:`wsgi_dbpool.front`).

    Aliases are taken in one fixed order, so two requests can never each hold one
    alias while waiting for the other's. An alias the greenlet already holds from
    this library (a nested ``checkout()``, or the middleware stacked twice) is reused,
    not checked out again. Whatever was bound before is put back on release.

    ``storage`` is the object behind ``django.db.connections`` (see
    :class:`ConnectionSlots`): ``getattr``/``setattr`` on it are exactly
    ``connections[alias]`` reads and writes. This is the per-request hot path, hence
    the plain loops and the single identity lookup (``_thread.get_ident`` is read at
    call time, so it is gevent's once patched: one id per greenlet).
    """

    __slots__ = ("_entries", "_ident", "_released", "_storage", "_token", "_unpooled", "_watch")

    def __init__(
        self,
        holds: Sequence[Hold],
        storage: Any,
        work: Work,
        unpooled: Sequence[str] = (),
        watch: HoldWatch | None = None,
    ) -> None:
        self._watch = watch
        self._token = -1
        self._storage = storage
        self._released = False
        self._ident = ident = _thread.get_ident()
        _leased[ident] = _leased.get(ident, 0) + 1
        # Unpooled aliases with no wrapper yet: one the work opens is closed at the
        # end, or it would linger in this greenlet's local (the leak we exist to stop).
        self._unpooled = _unbound(storage, unpooled) if unpooled else None
        entries: list[tuple[Hold, Any, Any]] = []
        self._entries = entries
        # This greenlet's own dict, read as _bound() reads it (no call: the per-request path).
        bound = storage.__dict__ if isinstance(storage, _LOCALS) else None
        try:
            for hold in holds:
                alias = hold.alias
                previous = (
                    bound.get(alias, UNBOUND) if bound is not None
                    else getattr(storage, alias, UNBOUND)
                )
                if previous is not UNBOUND:  # rare: a nested lease, or a stale binding
                    previous = _unless_stale(storage, alias, previous, ident)
                    if previous is not UNBOUND and _holder(previous) == ident:
                        continue  # already leased to this greenlet: reuse, don't nest
                wrapper = hold.take(work, ident)
                entries.append((hold, wrapper, previous))
                setattr(storage, alias, wrapper)
        except BaseException as exc:
            self.release(broken=interrupted(exc))
            raise
        if watch is not None:  # watched from when the connections are held
            self._token = watch.start(work.label)

    def release(self, broken: bool = False) -> None:
        """Unbind and return every wrapper; later calls do nothing.

        ``broken``: the work was interrupted (see :func:`interrupted`), so a
        connection may be mid-protocol: close it rather than reuse it.
        """
        if self._released:
            return
        self._released = True
        if self._watch is not None:
            self._watch.finish(self._token)
        ident = self._ident
        depth = _leased.pop(ident, 1) - 1
        if depth:
            _leased[ident] = depth
        error = self._give_back(broken)
        if self._unpooled and ident == _thread.get_ident():
            try:
                _close_unpooled(self._storage, self._unpooled)
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error

    def _give_back(self, broken: bool) -> BaseException | None:
        """Unbind and give back every wrapper, the last taken first; the first error."""
        storage = self._storage
        error: BaseException | None = None
        for hold, wrapper, previous in reversed(self._entries):
            try:
                # Only undo our own binding: close() may come from another greenlet
                # (a server that closes elsewhere, or a dropped response). Then the
                # binding left in the holder's greenlet is forgotten the next time it
                # enters a lease, and Django refuses it until then (nobody owns it).
                alias = hold.alias
                if getattr(storage, alias, UNBOUND) is wrapper:
                    if previous is UNBOUND:
                        delattr(storage, alias)
                    else:
                        setattr(storage, alias, previous)
            finally:
                try:
                    hold.give(wrapper, broken)
                except BaseException as exc:  # keep returning the other aliases first
                    error = error or exc
        self._entries.clear()
        return error


def _holder(wrapper: Any) -> int | None:
    record = wrapper.__dict__.get(RECORD_ATTR)
    return None if record is None else record.holder


def _unbound(storage: Any, aliases: Sequence[str]) -> list[str]:
    return [alias for alias in aliases if _bound(storage, alias) is UNBOUND]


def _close_unpooled(storage: Any, aliases: Sequence[str]) -> None:
    for alias in aliases:
        wrapper = getattr(storage, alias, UNBOUND)
        if wrapper is UNBOUND:
            continue
        delattr(storage, alias)
        if wrapper.connection is not None:
            logger.debug("closing the connection of unpooled alias %r opened by the work", alias)
            wrapper.close()

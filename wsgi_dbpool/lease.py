"""A lease: the pooled connections bound to one unit of work, returned exactly once."""

from __future__ import annotations

import _thread
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .binding import UNBOUND

if TYPE_CHECKING:
    from .binding import AliasPool

logger = logging.getLogger("wsgi_dbpool")


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` may have cut a database conversation in half.

    ``GreenletExit``, ``gevent.Timeout`` and ``KeyboardInterrupt`` can land in the
    middle of a socket read. Ordinary exceptions cannot: an I/O error inside the
    driver surfaces as a ``DatabaseError``, which Django records in
    ``errors_occurred`` and the return path checks.
    """
    return not isinstance(exc, Exception)


class Lease:
    """Checks out one wrapper per alias, binds it in the calling greenlet, and undoes both.

    Aliases are taken in one fixed order, so two requests can never each hold one
    alias while waiting for the other's. An alias the greenlet already holds from
    this library (a nested ``checkout()``, or the middleware stacked twice) is reused,
    not checked out again. Whatever was bound before is put back on release.

    ``storage`` is the object behind ``django.db.connections`` (see
    :class:`~wsgi_dbpool.binding.ConnectionSlots`): ``getattr``/``setattr`` on it are
    exactly ``connections[alias]`` reads and writes. This is the per-request hot path,
    hence the plain loops and the single identity lookup (``_thread.get_ident`` is
    read at call time, so it is gevent's once patched: one id per greenlet).
    """

    __slots__ = ("_entries", "_ident", "_released", "_storage", "_unpooled")

    def __init__(
        self,
        pools: Sequence[AliasPool],
        storage: Any,
        timeout: float | None,
        unpooled: Sequence[str] = (),
    ) -> None:
        self._entries: list[tuple[AliasPool, Any, Any]] = []
        self._storage = storage
        self._released = False
        self._ident = ident = _thread.get_ident()
        # Unpooled aliases with no wrapper yet: one the work opens is closed at the
        # end, or it would linger in this greenlet's local (the leak we exist to stop).
        self._unpooled = (
            [a for a in unpooled if getattr(storage, a, UNBOUND) is UNBOUND] if unpooled else None
        )
        try:
            for alias_pool in pools:
                alias = alias_pool.alias
                previous = getattr(storage, alias, UNBOUND)
                if previous is not UNBOUND and previous.__dict__.get("_wsgi_dbpool_holder") == ident:
                    continue  # already leased to this greenlet: reuse, don't nest
                wrapper = alias_pool.checkout(timeout, ident)
                self._entries.append((alias_pool, wrapper, previous))
                setattr(storage, alias, wrapper)
        except BaseException as exc:
            self.release(broken=interrupted(exc))
            raise

    def release(self, broken: bool = False) -> None:
        """Unbind and return every wrapper; later calls do nothing.

        ``broken``: the work was interrupted (see :func:`interrupted`), so a
        connection may be mid-protocol: close it rather than reuse it.
        """
        if self._released:
            return
        self._released = True
        storage = self._storage
        error: BaseException | None = None
        for alias_pool, wrapper, previous in reversed(self._entries):
            try:
                alias = alias_pool.alias
                # Only undo our own binding: close() may come from another greenlet
                # (a server that closes elsewhere, or the garbage collector).
                if getattr(storage, alias, UNBOUND) is wrapper:
                    if previous is UNBOUND:
                        delattr(storage, alias)
                    else:
                        setattr(storage, alias, previous)
            finally:
                try:
                    alias_pool.checkin(wrapper, broken)
                except BaseException as exc:  # keep returning the other aliases first
                    error = error or exc
        self._entries.clear()
        if self._unpooled and self._ident == _thread.get_ident():
            try:
                _close_unpooled(storage, self._unpooled)
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error


def _close_unpooled(storage: Any, aliases: Sequence[str]) -> None:
    for alias in aliases:
        wrapper = getattr(storage, alias, UNBOUND)
        if wrapper is UNBOUND:
            continue
        delattr(storage, alias)
        if wrapper.connection is not None:
            logger.debug("closing the connection of unpooled alias %r opened by the work", alias)
            wrapper.close()

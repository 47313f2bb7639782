"""A lease: the pooled connections bound to one unit of work, returned exactly once."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

from . import _concurrency, binding

if TYPE_CHECKING:
    from .binding import AliasPool, _Slots

logger = logging.getLogger("wsgi_dbpool")


class Lease:
    """Checks out one wrapper per alias, binds it in the calling greenlet, and undoes both.

    Aliases are taken in one fixed order, so two requests can never each hold one
    alias while waiting for the other's. An alias the greenlet already holds from
    this library (a nested ``checkout()``, or the middleware stacked twice) is reused,
    not checked out again. Whatever was bound before is put back on release.
    """

    __slots__ = ("_entries", "_released", "_ident", "_unpooled", "_slots")

    def __init__(
        self,
        pools: Sequence[AliasPool],
        slots: _Slots,
        timeout: float | None,
        unpooled: Sequence[str] = (),
    ) -> None:
        self._entries: list[tuple[AliasPool, Any, Any]] = []
        self._slots = slots
        self._released = False
        self._ident = _concurrency.get_ident()
        # Aliases left out of the pool that had no wrapper yet: one the work opens is
        # closed at the end, or it would linger in this greenlet's local.
        self._unpooled = [a for a in unpooled if slots.get(a) is binding.UNBOUND]
        try:
            for alias_pool in pools:
                previous = slots.get(alias_pool.alias)
                if previous is not binding.UNBOUND and binding.held_by_current(previous):
                    continue
                wrapper = alias_pool.checkout(timeout)
                self._entries.append((alias_pool, wrapper, previous))
                slots.set(alias_pool.alias, wrapper)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Unbind and return every wrapper; later calls do nothing."""
        if self._released:
            return
        self._released = True
        slots = self._slots
        error: BaseException | None = None
        for alias_pool, wrapper, previous in reversed(self._entries):
            try:
                alias = alias_pool.alias
                # Only undo our own binding: close() may come from another greenlet
                # (a server that closes elsewhere, or the garbage collector).
                if slots.get(alias) is wrapper:
                    if previous is binding.UNBOUND:
                        slots.unset(alias)
                    else:
                        slots.set(alias, previous)
            finally:
                try:
                    alias_pool.checkin(wrapper)
                except BaseException as exc:  # keep returning the other aliases first
                    error = error or exc
        self._entries.clear()
        if self._unpooled and self._ident == _concurrency.get_ident():
            try:
                _close_unpooled(slots, self._unpooled)
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error


def _close_unpooled(slots: _Slots, aliases: Sequence[str]) -> None:
    for alias in aliases:
        wrapper = slots.get(alias)
        if wrapper is binding.UNBOUND:
            continue
        slots.unset(alias)
        if wrapper.connection is not None:
            logger.debug("closing the connection of unpooled alias %r opened by the work", alias)
            wrapper.close()

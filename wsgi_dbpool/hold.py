"""``hold=``: how long a unit of work holds a server connection, as one strategy per alias.

Chosen once, where ``settings.hold`` is read (:func:`hold_for`), and handed the alias
pool; a :class:`~wsgi_dbpool.lease.Lease` asks it for a wrapper to bind and gives the
wrapper back, and knows nothing of the mode:

- :class:`WholeWork` (``"request"``): a connection is checked out of the alias pool
  when the work starts, and checked in when it ends.
- :class:`~wsgi_dbpool.front.Front` (``"lazy"``, ``"transaction"``): a front wrapper that
  borrows a connection when the work first needs one (see ``docs/hold-modes.md``).

Both have the interface of :class:`~wsgi_dbpool.lease.Hold`: ``take(work, ident)`` and
``give(wrapper, broken)``.
"""

from __future__ import annotations

from typing import Any

from .alias_pool import AliasPool
from .front import Front
from .hold_watch import HoldWatch
from .lease import Hold
from .settings import PoolSettings
from .work import Work


class WholeWork:
    """``hold="request"``: one pooled connection per alias for the whole unit of work."""

    __slots__ = ("alias", "alias_pool")

    def __init__(self, alias_pool: AliasPool) -> None:
        self.alias = alias_pool.alias
        self.alias_pool = alias_pool

    def take(self, work: Work, ident: int) -> Any:
        return self.alias_pool.checkout(work.timeout, ident)

    def give(self, wrapper: Any, broken: bool = False) -> None:
        self.alias_pool.checkin(wrapper, broken)


def hold_for(alias_pool: AliasPool, settings: PoolSettings, watch: HoldWatch | None) -> Hold:
    """The strategy ``settings.hold`` names, for ``alias_pool``. ``watch``: the long-hold
    watch, which fronts run per attachment (a lease runs it for a whole work)."""
    if settings.hold == "request":
        return WholeWork(alias_pool)
    front = Front(alias_pool, per_transaction=settings.hold == "transaction", watch=watch)
    front.serve_spawned_greenlets()
    return front

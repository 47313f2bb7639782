"""``hold=``: how long a unit of work holds a server connection, as one strategy per alias.

Chosen once, where ``settings.hold`` is read (:func:`hold_for`), and handed the alias
pool; a :class:`~wsgi_dbpool.lease.Lease` asks it for a wrapper to bind and gives the
wrapper back, and knows nothing of the mode:

- the :class:`~wsgi_dbpool.alias_pool.AliasPool` itself (``"request"``): a connection is
  checked out when the work starts (``take``), and checked in when it ends (``give``).
- :class:`~wsgi_dbpool.front.Front` (``"lazy"``, ``"transaction"``): a front wrapper that
  borrows a connection when the work first needs one (see ``docs/hold-modes.md``).

Both have the interface of :class:`~wsgi_dbpool.lease.Hold`: ``take(work, ident)`` and
``give(wrapper, broken)``.
"""

from __future__ import annotations

from .alias_pool import AliasPool
from .front import Front
from .hold_watch import HoldWatch
from .lease import Hold
from .settings import PoolSettings


def hold_for(alias_pool: AliasPool, settings: PoolSettings, watch: HoldWatch | None) -> Hold:
    """The strategy ``settings.hold`` names, for ``alias_pool``. ``watch``: the long-hold
    watch, which fronts run per attachment (a lease runs it for a whole work)."""
    if settings.hold == "request":
        return alias_pool
    front = Front(alias_pool, per_transaction=settings.hold == "transaction", watch=watch)
    front.serve_spawned_greenlets()
    return front

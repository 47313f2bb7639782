"""The Django pool core, under the thin adapters (the WSGI middleware, the Celery helper).

:class:`DjangoPool` owns everything that is not about WSGI or Celery: the pooled aliases
(checked against ``DATABASES``), one :class:`~wsgi_dbpool.alias_pool.AliasPool` and one
hold strategy (:mod:`wsgi_dbpool.hold`) per alias, the long-hold watch, the per-process
repair of Django's connection storage, leasing (:meth:`DjangoPool.lease`,
:meth:`DjangoPool.checkout`), and the steering of a running pool (:meth:`~DjangoPool.stats`,
:meth:`~DjangoPool.close`, :meth:`~DjangoPool.prewarm`, :meth:`~DjangoPool.resize`,
:meth:`~DjangoPool.drain`, :meth:`~DjangoPool.pause`, :meth:`~DjangoPool.resume`).
An adapter builds one, and turns its own unit of work (a request, a task) into a
:class:`~wsgi_dbpool.work.Work` to lease for.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator
from types import EllipsisType
from typing import Any

from . import _concurrency, alias_pool, checks, control
from .alias_pool import AliasPool
from .hold import hold_for
from .hold_watch import HoldWatch
from .lease import ConnectionSlots, Lease, interrupted
from .pool import Pool
from .settings import Knobs, PoolSettings, check_seconds
from .work import Work

logger = logging.getLogger("wsgi_dbpool")

Stats = dict[str, dict[str, int | float | None]]


class DjangoPool(Knobs):
    """The pooled aliases of one process, their pools, and how a unit of work leases them.

    ``settings`` are already checked (:class:`~wsgi_dbpool.settings.PoolSettings`);
    ``aliases`` are checked here against ``DATABASES`` (Django must be set up), and so
    are the rules ``manage.py check`` reports (:mod:`wsgi_dbpool.checks`).
    """

    def __init__(self, settings: PoolSettings, aliases: Iterable[str] | None) -> None:
        from django.db.backends.signals import connection_created

        self.settings = settings
        self.aliases, unpooled = _resolve_aliases(aliases)
        checks.refuse_or_warn(self, self.aliases, settings.hold)
        self.unpooled = tuple(unpooled)
        self.every_alias = (*self.aliases, *self.unpooled)
        self.fronts = settings.hold != "request"
        self.watch = (
            HoldWatch(settings.hold_warning, self.aliases) if settings.hold_warning else None
        )
        self._alias_pools = [AliasPool(alias, settings) for alias in self.aliases]
        # The hold mode, chosen once. The long-hold watch runs per lease under "request",
        # per attachment (in the fronts) otherwise.
        self._holds = [hold_for(pool, settings, self.watch) for pool in self._alias_pools]
        self._lease_watch = None if self.fronts else self.watch
        # Per process: the storage behind django.db.connections, the prewarm started.
        self._storage = _concurrency.PerProcess(self._find_storage)
        self._prewarmed = _concurrency.PerProcess(self._start_prewarm)
        connection_created.connect(
            alias_pool.on_connection_created, dispatch_uid="wsgi_dbpool.on_connection_created"
        )
        control.register(self)  # python -m wsgi_dbpool drain|pause|resume steers it
        logger.info(
            "pooling %s: size=%d max_outstanding=%s timeout=%s ping_after=%s linger=%s reset=%s "
            "hold=%s session_state=%s",
            ", ".join(repr(a) for a in self.aliases), settings.size, settings.max_outstanding,
            settings.timeout, settings.ping_after, settings.linger, settings.reset, settings.hold,
            settings.session_state,
        )

    # -- leasing --------------------------------------------------------------------

    def lease(self, work: Work, *, watched: bool = True) -> Lease:
        """Bind this process's pooled connections (or fronts) in the calling greenlet for
        ``work``; the caller releases the lease exactly once. ``watched``: the long-hold
        watch (``hold_warning``) times it."""
        watch = self._lease_watch if watched else None
        per = self._storage  # PerProcess.get() inlined: the per-request path
        storage = per.value if per.generation == _concurrency._fork_generation else per.get()
        return Lease(self._holds, storage, work, self.unpooled, watch)

    def lease_nothing(self, work: Work) -> Lease:
        """No checkout; but a connection the work opens anyway is closed at its end, or it
        would linger in the greenlet (the leak this library exists to stop)."""
        return Lease((), self.storage(), work, self.every_alias)

    @contextlib.contextmanager
    def checkout(
        self,
        timeout: float | EllipsisType | None = ...,
        *,
        name: str | None = None,
        kind: str | None = None,
        watched: bool = False,
    ) -> Iterator[None]:
        """Bind pooled connections in the calling greenlet for the ``with`` block
        (see :meth:`PoolingMiddleware.checkout`); ``name``: the work's label in the logs;
        ``kind``: what a once-per-kind warning keys on (default: the name)."""
        wait = self.settings.timeout if timeout is ... else timeout
        check_seconds("timeout", wait)
        work = Work(wait, None, name, kind)
        lease = self.lease(work, watched=watched)
        try:
            yield
        except BaseException as exc:
            lease.release(broken=interrupted(exc))
            raise
        else:
            lease.release()

    def storage(self) -> Any:
        """The object behind ``django.db.connections``, found in the process (and after the
        monkey-patching) that serves; found again after a fork."""
        return self._storage.get()

    def _find_storage(self) -> Any:
        storage = ConnectionSlots().storage
        _concurrency.prepare_deferred_calls()
        control.install()  # the control signal's handler, in the process that serves
        self.prewarm()
        return storage

    def serve_control(self) -> None:
        """Make this process steerable by ``python -m wsgi_dbpool`` now, before it serves:
        for an adapter that knows where the work will run (a Celery worker process at
        start). Call it from the process's main thread: only there can a signal handler be
        installed (the first lease does it too, when it runs in the main thread)."""
        _concurrency.prepare_deferred_calls()  # the handler's work runs there (idempotent)
        control.install()

    # -- the pools ------------------------------------------------------------------

    def pools(self) -> dict[str, Pool[Any]]:
        """The pool mechanism behind each alias (for exporters such as Prometheus)."""
        return {p.alias: p.pool for p in self._alias_pools}

    def stats(self) -> Stats:
        """This process's pool, per alias (the keys: :meth:`PoolingMiddleware.stats`)."""
        return {p.alias: p.stats() for p in self._alias_pools}

    def prewarm(self) -> None:
        """Start opening ``prewarm`` connections per alias in the background, once per
        process; returns at once."""
        if self.settings.prewarm:
            self._prewarmed.get()

    def _start_prewarm(self) -> None:
        for pool in self._alias_pools:
            _concurrency.call_later(0.0, functools.partial(pool.prewarm, self.settings.prewarm))

    def close(self) -> None:
        """Close every idle pooled connection, and stop ``fail_fast``'s probes; the pool
        stays usable."""
        for pool in self._alias_pools:
            if pool.breaker is not None:
                pool.breaker.stop()
            closed = pool.close_idle()
            logger.info("closed %d idle connection(s) of %r", closed, pool.alias)

    # -- steering a running pool (this process) -------------------------------------

    def resize(
        self,
        *,
        size: int | EllipsisType = ...,
        max_outstanding: int | EllipsisType | None = ...,
        alias: str | None = None,
    ) -> None:
        """Change ``size`` and/or ``max_outstanding`` (see :meth:`PoolingMiddleware.resize`)."""
        for pool in self._chosen(alias):
            new_size = pool.pool.size if size is ... else size
            new_cap = pool.pool.max_outstanding if max_outstanding is ... else max_outstanding
            PoolSettings(size=new_size, max_outstanding=new_cap)  # the constructor's rules
            pool.pool.resize(new_size, new_cap)
            logger.info("resized %r: size=%d max_outstanding=%s", pool.alias, new_size, new_cap)

    def drain(self, alias: str | None = None) -> None:
        """Replace every connection of ``alias`` (see :meth:`PoolingMiddleware.drain`)."""
        for pool in self._chosen(alias):
            pool.drain()

    def pause(self, alias: str | None = None) -> None:
        """New checkouts of ``alias`` wait (see :meth:`PoolingMiddleware.pause`)."""
        for pool in self._chosen(alias):
            pool.pool.pause()
            logger.warning("paused %r: new checkouts wait until resume()", pool.alias)

    def resume(self, alias: str | None = None) -> None:
        """End :meth:`pause`: the waiting checkouts are served in arrival order."""
        for pool in self._chosen(alias):
            pool.pool.resume()
            logger.warning("resumed %r", pool.alias)

    def _chosen(self, alias: str | None) -> list[AliasPool]:
        if alias is None:
            return list(self._alias_pools)
        chosen = [pool for pool in self._alias_pools if pool.alias == alias]
        if not chosen:
            raise ValueError(
                f"alias {alias!r} is not pooled here (pooled: {list(self.aliases)!r}); "
                f"name one of them, or None for all"
            )
        return chosen


class Steering(Knobs):
    """What an adapter (the middleware, the Celery task pool) offers of its core: the
    knobs as attributes, and the core's steering, documented once here."""

    def _steered(self) -> DjangoPool:
        raise NotImplementedError

    def pools(self) -> dict[str, Pool[Any]]:
        """The pool mechanism behind each alias (for exporters such as Prometheus)."""
        return self._steered().pools()

    def prewarm(self) -> None:
        """Start opening ``prewarm`` connections per alias in the background, once per
        process; returns at once. Done anyway at the first request; call it earlier
        from gunicorn's ``post_worker_init`` (the worker, never the master)."""
        self._steered().prewarm()

    def resize(
        self,
        *,
        size: int | EllipsisType = ...,
        max_outstanding: int | EllipsisType | None = ...,
        alias: str | None = None,
    ) -> None:
        """Change ``size`` and/or ``max_outstanding`` of ``alias`` (None: every pooled
        alias) for the checkouts from now on, checked by the constructor's rules.

        A higher cap serves waiting requests at once. A lower one takes nothing back:
        the work in flight finishes, and new checkouts wait until the count is below
        the new cap. Idle connections beyond the new ``size`` are closed now.
        """
        self._steered().resize(size=size, max_outstanding=max_outstanding, alias=alias)

    def drain(self, alias: str | None = None) -> None:
        """Replace every connection of ``alias`` (None: every pooled alias).

        Idle connections close now; those in use close when they come back. New ones
        are made from ``settings.DATABASES[alias]`` as it is then: change it in place
        (e.g. its ``PASSWORD`` after rotating credentials, or its ``HOST`` after a
        switchover), then drain. Requests go on being served throughout.
        """
        self._steered().drain(alias)

    def pause(self, alias: str | None = None) -> None:
        """New checkouts of ``alias`` (None: every pooled alias) wait, up to ``timeout``
        (then 503), while the work in flight finishes; for planned maintenance or a
        switchover. :meth:`resume` serves the waiting requests in arrival order."""
        self._steered().pause(alias)

    def resume(self, alias: str | None = None) -> None:
        """End :meth:`pause`: the waiting requests are served in arrival order."""
        self._steered().resume(alias)

    def stats(self) -> Stats:
        """This process's pool, per alias, as a flat dict of numbers.

        ``idle``, ``in_use``, ``waiting``: now. ``size``, ``max_outstanding``: the
        settings. Lifetime counters: ``checkouts``, ``waits`` (checkouts that had to
        queue), ``wait_seconds`` (their total wait), ``timeouts``, ``handoffs``
        (returns given straight to a waiter), ``created`` (wrappers made),
        ``discarded`` (returns not kept: surplus or closed), ``opened`` and
        ``closed`` (server connections), ``stale`` (found dead on checkout),
        ``dirty`` (returned inside a transaction, or with autocommit changed),
        ``broken`` (closed on return: interrupted, or closed, mid-command or mid-result in
        the driver), ``overflow`` (opened for a pooled alias outside any lease: greenlets
        with no ``checkout()``), ``spawned`` (greenlets spawned by a view that took a
        pooled connection, with ``hold="lazy"``/``"transaction"``), ``failovers``
        (read-only or failover errors that closed the alias's connections), ``pinned``
        (units of work that left state on their session: reset on return, and under
        ``hold="transaction"`` kept their connection to their end),
        ``hold_seconds`` (total time connections were checked out), ``connects`` and
        ``connect_seconds`` (connect attempts and their total time), ``rejected``
        (turned away at ``max_waiting``), ``paused`` (1 while paused),
        ``breaker_open`` (1 while ``fail_fast``'s breaker is open), ``unavailable``
        (requests answered at once while it was), ``drained`` (calls of :meth:`drain`).
        """
        return self._steered().stats()

    def close(self) -> None:
        """Close every idle pooled connection (worker shutdown), and stop ``fail_fast``'s
        probes; the pool stays usable (a task pool not yet built: nothing to close)."""
        self._steered().close()


def _check_engine(alias: str, settings: dict[str, Any]) -> None:
    """Load the alias's backend now (no connection), so a typo fails at start-up."""
    from django.core.exceptions import ImproperlyConfigured
    from django.db.utils import load_backend

    engine = settings.get("ENGINE")
    if not engine:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}] has no ENGINE: set it, e.g. 'django.db.backends.mysql'"
        )
    try:
        load_backend(engine)
    except ImproperlyConfigured as exc:
        raise ImproperlyConfigured(f"DATABASES[{alias!r}]: {exc}") from None


def _resolve_aliases(aliases: Iterable[str] | None) -> tuple[tuple[str, ...], list[str]]:
    """The pooled aliases in lock order, and the others; checks names against DATABASES."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    databases: dict[str, Any] = settings.DATABASES
    if isinstance(aliases, str):
        raise TypeError(
            f"aliases must be a list of DATABASES aliases, got the string {aliases!r}: "
            f"write aliases=[{aliases!r}]"
        )
    chosen = list(databases) if aliases is None else list(aliases)
    if not chosen:
        raise ValueError(
            "aliases names no database: pass None to pool every DATABASES alias, "
            "or list the ones to pool"
        )
    unknown = [a for a in chosen if a not in databases]
    if unknown:
        raise ImproperlyConfigured(
            f"aliases {unknown!r} are not in settings.DATABASES (it has "
            f"{sorted(databases)!r}); fix the names or add them to DATABASES"
        )
    pooled = tuple(sorted(set(chosen)))
    for alias in pooled:
        _check_engine(alias, databases[alias])
    return pooled, [a for a in databases if a not in pooled]

"""``PoolingMiddleware``: one pool of Django connections shared by every greenlet."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from types import EllipsisType
from typing import TYPE_CHECKING, Any

# Imported here, not on the 503 path: a WebOb that cannot load (Python 3.13 removed the
# cgi module that WebOb <= 1.8.8 needs) must fail at start-up, not when the pool is full.
from webob.exc import HTTPServiceUnavailable

from . import _concurrency, alias_pool, checks, quiet
from .alias_pool import AliasPool
from .breaker import retry_after_header
from .errors import DatabaseUnavailable, PoolError, PoolTimeout
from .hold import hold_for
from .hold_watch import HoldWatch
from .lease import ConnectionSlots, Lease, Work, interrupted
from .pool import Pool
from .response import ClosingIterable, hook_file_wrapper
from .settings import HoldMode, PoolSettings, ResetMode, SessionStateMode, check_seconds

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger("wsgi_dbpool")

ENVIRON_KEY = "wsgi_dbpool.middleware"


class PoolingMiddleware:
    """Serve each request with database connections from a pool shared by the process.

    Django keeps one connection per thread, and under gevent every greenlet is a
    thread: persistent connections pile up until the server refuses more, and
    ``CONN_MAX_AGE = 0`` pays a connect per request. This middleware checks one
    Django ``DatabaseWrapper`` per alias out of a process-wide pool *before* calling
    the app, binds it as ``django.db.connections[alias]`` in the request's greenlet,
    and returns it when the server calls ``close()`` on the response, so streaming
    responses keep their connection until they are done::

        # wsgi.py
        from django.core.wsgi import get_wsgi_application
        from wsgi_dbpool import PoolingMiddleware

        application = PoolingMiddleware(get_wsgi_application(), size=4)

    :param app: the WSGI application to wrap (normally Django's).
    :param size: idle connections kept per alias between requests (>= 1).
    :param max_outstanding: at most this many connections checked out at once per
        alias in this process; requests beyond it wait in arrival order. ``None``:
        no cap.
    :param timeout: seconds a request waits at the cap before it is answered with
        ``503 Service Unavailable`` (``checkout()`` raises :class:`PoolTimeout`).
        ``None``: wait forever.
    :param aliases: the ``DATABASES`` aliases to pool; ``None``: all of them.
    :param skip: ``callable(environ) -> bool``; true means serve the request without
        checking anything out (health checks, static files), so it never queues
        behind the cap. A connection such a request opens anyway is its own, outside
        the pool and its cap, and is closed when the request ends.
    :param ping_after: a connection idle at least this many seconds is pinged before
        it is handed out (one round trip); ``None``: never.
    :param reset: ``"transaction"`` (default, no round trip on the clean path) rolls
        back what a request left open; ``"session"`` also wipes the server session
        (variables, temporary tables, named locks) before the next request gets it.
    :param hold_warning: log a WARNING, once, for a request still holding its
        connections this many seconds after it took them (naming its method and
        path); ``None``: off.
    :param linger: seconds a connection returned while ``size`` are already idle stays
        open for the next request before it is closed; ``0``: close it at once. Under
        a steady load above ``size`` this avoids closing one connection while opening
        the next (each PyMySQL connect costs ~30 ms of CPU).
    :param prewarm: connections per alias (at most ``size``) opened in the background
        when the process starts serving: at its first request, or at
        :meth:`prewarm` (call it from gunicorn's ``post_worker_init``, never in the
        master). The connects are spread out; failures are logged and retried.
    :param max_lifetime: seconds a server connection lives: it is closed on return
        once past it, and never handed out past it. Replaces ``CONN_MAX_AGE`` for
        pooled connections. ``None``: ``CONN_MAX_AGE`` decides, as in Django.
    :param lifetime_jitter: each connection's lifetime is drawn from
        ``[max_lifetime * (1 - lifetime_jitter), max_lifetime]``, so connections
        opened together are not all replaced in the same second (0 <= j < 1).
    :param ping_timeout: seconds the health check of an idle connection may take
        (under gevent) before the connection is counted stale and dropped; ``None``:
        as long as the driver waits.
    :param session_state: what to do with a statement that leaves state on its
        session (``SET``, ``USE``, temporary tables, ``GET_LOCK``; see
        ``docs/session-state.md``): ``"pin"`` (default) resets the session on return, and
        under ``hold="transaction"`` the unit of work keeps its connection to its end;
        ``"raise"`` refuses it with :class:`SessionStateError` (to find them, in CI);
        ``"ignore"`` sees nothing and resets nothing.
    :param fail_fast: after a connect fails because the server cannot be reached,
        answer every request that needs the alias at once with ``503`` and
        ``Retry-After`` (:class:`DatabaseUnavailable` inside a view and from
        ``checkout()``), trying no connect, while one background probe per backoff
        step (0.5 s doubling to 30 s) finds out when it is back. ``False``: every
        request tries to connect, and waits for the driver's connect timeout.
    :param max_waiting: at most this many requests wait at ``max_outstanding``; one
        more is answered ``503`` at once (``checkout()``: :class:`TooManyWaiting`, a
        :class:`PoolTimeout`). ``None``: no limit.
    :param statement_timeout: seconds a statement may run on a pooled connection
        before the server cancels it, set at connect and after each session reset
        (MariaDB ``max_statement_time``, MySQL ``max_execution_time``, which covers
        only ``SELECT``, PostgreSQL ``statement_timeout``). ``None``: the server's.

    Steering a running pool, per alias, from this process: :meth:`resize`,
    :meth:`drain` (replace every connection, e.g. after rotating credentials),
    :meth:`pause` and :meth:`resume`.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        size: int = 4,
        max_outstanding: int | None = None,
        timeout: float | None = 30.0,
        aliases: Iterable[str] | None = None,
        skip: Callable[[WSGIEnvironment], bool] | None = None,
        ping_after: float | None = 1.0,
        linger: float = 5.0,
        hold_warning: float | None = None,
        reset: ResetMode = "transaction",
        hold: HoldMode = "request",
        prewarm: int = 0,
        max_lifetime: float | None = None,
        lifetime_jitter: float = 0.1,
        ping_timeout: float | None = 5.0,
        session_state: SessionStateMode = "pin",
        fail_fast: bool = True,
        max_waiting: int | None = None,
        statement_timeout: float | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(
                f"app must be a WSGI application (a callable), got {type(app).__name__}: "
                f"pass get_wsgi_application(), not its module or its result"
            )
        if skip is not None and not callable(skip):
            raise TypeError(
                f"skip must be a callable taking the WSGI environ, got {type(skip).__name__}"
            )
        self.settings = settings = PoolSettings(
            size=size, max_outstanding=max_outstanding, timeout=timeout, ping_after=ping_after,
            linger=linger, hold_warning=hold_warning, reset=reset, hold=hold, prewarm=prewarm,
            max_lifetime=max_lifetime, lifetime_jitter=lifetime_jitter, ping_timeout=ping_timeout,
            session_state=session_state,
            fail_fast=fail_fast, max_waiting=max_waiting, statement_timeout=statement_timeout,
        )
        self.app = app
        self.skip = skip
        self.aliases, unpooled = _resolve_aliases(aliases)
        # The rules manage.py check reports too (wsgi_dbpool/checks.py): errors raise here.
        checks.refuse_or_warn(self, self.aliases, hold)
        self._holds = HoldWatch(hold_warning, self.aliases) if hold_warning else None
        self._unpooled = tuple(unpooled)
        self._every_alias = (*self.aliases, *self._unpooled)
        self._pools = [AliasPool(alias, settings) for alias in self.aliases]
        # The hold mode, chosen once: the long-hold watch runs per lease under "request",
        # per attachment (in the fronts) otherwise.
        self._lease_watch = self._holds if hold == "request" else None
        self._hold = [hold_for(pool, settings, self._holds) for pool in self._pools]
        self._storage: Any = None
        self._storage_generation = -1
        self._prewarmed_generation = -1
        self._unavailable_log = quiet.UnavailableLog()
        if hold != "request":
            quiet.drop_answered_503s()

        from django.db.backends.signals import connection_created

        connection_created.connect(
            alias_pool.on_connection_created, dispatch_uid="wsgi_dbpool.on_connection_created"
        )
        logger.info(
            "pooling %s: size=%d max_outstanding=%s timeout=%s ping_after=%s linger=%s reset=%s "
            "hold=%s session_state=%s",
            ", ".join(repr(a) for a in self.aliases), size, max_outstanding, timeout, ping_after,
            linger, reset, hold, session_state,
        )

    # The settings, read-only, as attributes of the middleware too.
    size = property(lambda self: self.settings.size)
    max_outstanding = property(lambda self: self.settings.max_outstanding)
    timeout = property(lambda self: self.settings.timeout)
    ping_after = property(lambda self: self.settings.ping_after)
    linger = property(lambda self: self.settings.linger)
    hold_warning = property(lambda self: self.settings.hold_warning)
    reset = property(lambda self: self.settings.reset)
    hold = property(lambda self: self.settings.hold)
    prewarm_count = property(lambda self: self.settings.prewarm)
    max_lifetime = property(lambda self: self.settings.max_lifetime)
    lifetime_jitter = property(lambda self: self.settings.lifetime_jitter)
    ping_timeout = property(lambda self: self.settings.ping_timeout)
    session_state = property(lambda self: self.settings.session_state)
    fail_fast = property(lambda self: self.settings.fail_fast)
    max_waiting = property(lambda self: self.settings.max_waiting)
    statement_timeout = property(lambda self: self.settings.statement_timeout)

    # -- WSGI ---------------------------------------------------------------------

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        environ[ENVIRON_KEY] = self
        if self.skip is not None and self.skip(environ):
            return self._serve_skipped(environ, start_response)
        if self.settings.hold != "request":
            return self._serve_with_fronts(environ, start_response)
        try:
            if self._storage_generation != _concurrency._fork_generation:
                self._connection_storage()
            lease = Lease(
                self._hold, self._storage, Work(self.settings.timeout, environ), self._unpooled,
                self._lease_watch,
            )
        except PoolError as exc:
            timed_out = exc
        else:
            release = lease.release
            try:
                result = self.app(environ, start_response)
            except BaseException as exc:
                release(interrupted(exc))
                raise
            file_wrapper = environ.get("wsgi.file_wrapper")
            if (
                file_wrapper is not None
                and isinstance(file_wrapper, type)
                and isinstance(result, file_wrapper)
                and hook_file_wrapper(result, release)
            ):
                return result
            return ClosingIterable(result, release)
        return self._unavailable(timed_out, environ, start_response)

    def _serve_with_fronts(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """``hold="lazy"``/``"transaction"``: bind front wrappers; they take connections
        when the work first needs them. A wait at the cap that times out inside the app
        becomes a 503 if the response has not started (Django would have made it a 500,
        and logged it: ``quiet.DropAnswered503`` drops that record)."""
        if self._storage_generation != _concurrency._fork_generation:
            self._connection_storage()
        work = environ[quiet.WORK_KEY] = Work(self.settings.timeout, environ)
        lease = Lease(self._hold, self._storage, work, self._unpooled)
        unavailable: list[Iterable[bytes]] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            # A 500 after a wait at the cap timed out, or the breaker refused: the PoolError
            # escaped the view. (A view that caught it and answered on its own is left alone.)
            if work.timed_out is not None and status[:3] == "500" and not unavailable:
                unavailable.append(self._unavailable(work.timed_out, environ, start_response))
                return lambda data: None
            return start_response(status, headers, exc_info)

        try:
            result = self.app(environ, start)
        except PoolError as exc:
            lease.release()
            if unavailable:
                raise
            return self._unavailable(exc, environ, start_response)
        except BaseException as exc:
            lease.release(interrupted(exc))
            raise
        if unavailable:
            close = getattr(result, "close", None)
            try:
                if close is not None:
                    close()  # Django's 500, replaced: its request_finished must still run
            finally:
                lease.release()
            return unavailable[0]
        file_wrapper = environ.get("wsgi.file_wrapper")
        if (
            file_wrapper is not None
            and isinstance(file_wrapper, type)
            and isinstance(result, file_wrapper)
            and hook_file_wrapper(result, lease.release)
        ):
            return result
        return ClosingIterable(result, lease.release)

    def _serve_skipped(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """No checkout; but a connection the request opens anyway is closed at its end,
        or it would linger in the greenlet (the leak this library exists to stop)."""
        lease = Lease((), self._connection_storage(), Work(None, environ), self._every_alias)
        try:
            result = self.app(environ, start_response)
        except BaseException:
            lease.release()
            raise
        return ClosingIterable(result, lease.release)

    def _unavailable(
        self, exc: PoolError, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if isinstance(exc, DatabaseUnavailable):
            # The breaker logged a WARNING when it opened: one line per request would flood.
            logger.debug(
                "503 for %s %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), exc
            )
            response = HTTPServiceUnavailable(
                detail="The database is unreachable; please retry shortly.",
                headers={"Retry-After": retry_after_header(exc.retry_after)},
            )
            return response(environ, start_response)  # type: ignore[no-any-return]
        if not isinstance(exc, PoolTimeout):  # no other kind of PoolError gets here
            raise exc
        self._unavailable_log.note(exc, environ)  # one WARNING line per alias per 10 s
        response = HTTPServiceUnavailable(
            detail="The database connection pool is exhausted; please retry shortly.",
            headers={"Retry-After": "1"},
        )
        return response(environ, start_response)  # type: ignore[no-any-return]

    # -- outside requests ---------------------------------------------------------

    @contextlib.contextmanager
    def checkout(self, timeout: float | EllipsisType | None = ...) -> Iterator[None]:
        """Bind pooled connections in the calling greenlet for the ``with`` block.

        For work outside a request: a greenlet spawned by a view, a job. Inside a
        request (or a nested ``checkout()``) the connections already bound are used.
        Raises :class:`PoolTimeout` when none can be had within ``timeout``
        (default: the middleware's).
        """
        wait = self.settings.timeout if timeout is ... else timeout
        check_seconds("timeout", wait)
        lease = Lease(self._hold, self._connection_storage(), Work(wait), self._unpooled)
        try:
            yield
        except BaseException as exc:
            lease.release(broken=interrupted(exc))
            raise
        else:
            lease.release()

    def pools(self) -> dict[str, Pool[Any]]:
        """The pool mechanism behind each alias (for exporters such as Prometheus)."""
        return {p.alias: p.pool for p in self._pools}

    def prewarm(self) -> None:
        """Start opening ``prewarm`` connections per alias in the background, once per
        process; returns at once. Done anyway at the first request; call it earlier
        from gunicorn's ``post_worker_init`` (the worker, never the master)."""
        generation = _concurrency.fork_generation()
        if self.settings.prewarm == 0 or self._prewarmed_generation == generation:
            return
        self._prewarmed_generation = generation
        for pool in self._pools:
            _concurrency.call_later(0.0, functools.partial(pool.prewarm, self.settings.prewarm))

    # -- steering a running pool (this process) -----------------------------------------

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
        for pool in self._chosen(alias):
            new_size = pool.pool.size if size is ... else size
            new_cap = pool.pool.max_outstanding if max_outstanding is ... else max_outstanding
            PoolSettings(size=new_size, max_outstanding=new_cap)  # the constructor's rules
            pool.pool.resize(new_size, new_cap)
            logger.info("resized %r: size=%d max_outstanding=%s", pool.alias, new_size, new_cap)

    def drain(self, alias: str | None = None) -> None:
        """Replace every connection of ``alias`` (None: every pooled alias).

        Idle connections close now; those in use close when they come back. New ones
        are made from ``settings.DATABASES[alias]`` as it is then: change it in place
        (e.g. its ``PASSWORD`` after rotating credentials, or its ``HOST`` after a
        switchover), then drain. Requests go on being served throughout.
        """
        for pool in self._chosen(alias):
            pool.drain()

    def pause(self, alias: str | None = None) -> None:
        """New checkouts of ``alias`` (None: every pooled alias) wait, up to ``timeout``
        (then 503), while the work in flight finishes; for planned maintenance or a
        switchover. :meth:`resume` serves the waiting requests in arrival order."""
        for pool in self._chosen(alias):
            pool.pool.pause()
            logger.warning("paused %r: new checkouts wait until resume()", pool.alias)

    def resume(self, alias: str | None = None) -> None:
        """End :meth:`pause`: the waiting requests are served in arrival order."""
        for pool in self._chosen(alias):
            pool.pool.resume()
            logger.warning("resumed %r", pool.alias)

    def _chosen(self, alias: str | None) -> list[AliasPool]:
        if alias is None:
            return list(self._pools)
        chosen = [pool for pool in self._pools if pool.alias == alias]
        if not chosen:
            raise ValueError(
                f"alias {alias!r} is not pooled here (pooled: {list(self.aliases)!r}); "
                f"name one of them, or None for all"
            )
        return chosen

    def stats(self) -> dict[str, dict[str, int | float | None]]:
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
        return {p.alias: p.stats() for p in self._pools}

    def close(self) -> None:
        """Close every idle pooled connection (worker shutdown), and stop ``fail_fast``'s
        probes; the pool stays usable."""
        for pool in self._pools:
            if pool.breaker is not None:
                pool.breaker.stop()
            closed = pool.close_idle()
            logger.info("closed %d idle connection(s) of %r", closed, pool.alias)

    # -- internals ----------------------------------------------------------------

    def _connection_storage(self) -> Any:
        # Found in the process (and after the monkey-patching) that serves requests.
        if self._storage_generation != _concurrency.fork_generation():
            self._storage = ConnectionSlots().storage
            _concurrency.prepare_deferred_calls()
            self._storage_generation = _concurrency.fork_generation()
            self.prewarm()
        return self._storage


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

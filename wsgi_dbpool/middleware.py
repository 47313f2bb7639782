"""``PoolingMiddleware``: one pool of Django connections shared by every greenlet."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from types import EllipsisType
from typing import TYPE_CHECKING, Any, TypeGuard

# Imported here, not on the 503 path: a WebOb that cannot load (Python 3.13 removed the
# cgi module that WebOb <= 1.8.8 needs) must fail at start-up, not when the pool is full.
from webob.exc import HTTPServiceUnavailable

from . import quiet
from .breaker import retry_after_header
from .core import DjangoPool, Steering
from .errors import DatabaseUnavailable, PoolError, PoolTimeout
from .lease import Lease, interrupted
from .response import ClosingContent, ClosingIterable, hook_file_wrapper
from .settings import HoldMode, PoolSettings, ResetMode, SessionStateMode
from .work import Work

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger("wsgi_dbpool")

ENVIRON_KEY = "wsgi_dbpool.middleware"


class PoolingMiddleware(Steering):
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
    :param max_hold: seconds a unit of work may hold a pooled connection (under
        ``hold="lazy"``/``"transaction"``: one attachment) before it is taken back: its
        server session is ended (``KILL``, ``pg_terminate_backend``), so what it left
        uncommitted rolls back, its slot goes to the next request at once, and its next
        statement raises Django's ``OperationalError`` with
        :class:`MaxHoldExceeded`'s message (the request ends in a 500). ``None``: no limit.

    Steering a running pool, per alias, from this process: :meth:`resize`,
    :meth:`drain` (replace every connection, e.g. after rotating credentials),
    :meth:`pause` and :meth:`resume`.

    WSGI only: the pool itself is :attr:`core` (:class:`~wsgi_dbpool.core.DjangoPool`).
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
        max_hold: float | None = None,
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
        self.settings = PoolSettings(
            size=size, max_outstanding=max_outstanding, timeout=timeout, ping_after=ping_after,
            linger=linger, hold_warning=hold_warning, reset=reset, hold=hold, prewarm=prewarm,
            max_lifetime=max_lifetime, lifetime_jitter=lifetime_jitter, ping_timeout=ping_timeout,
            session_state=session_state,
            fail_fast=fail_fast, max_waiting=max_waiting, statement_timeout=statement_timeout,
            max_hold=max_hold,
        )
        self.app = app
        self.skip = skip
        self.core = core = DjangoPool(self.settings, aliases)
        self.aliases = core.aliases
        self._unavailable_log = quiet.UnavailableLog()
        if core.fronts:
            quiet.drop_answered_503s()

    # -- WSGI ---------------------------------------------------------------------

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        environ[ENVIRON_KEY] = self
        work = environ[quiet.WORK_KEY] = Work(self.settings.timeout, environ)
        skipped = self.skip is not None and self.skip(environ)
        try:
            lease = self.core.lease_nothing(work) if skipped else self.core.lease(work)
        except PoolError as exc:
            return self._unavailable(exc, environ, start_response)
        # With fronts, the app's first query may wait at the cap: see _Answer503.
        answer = _Answer503(self, work, environ, start_response) if self.core.fronts else None
        try:
            result = self.app(environ, start_response if answer is None else answer)
        except BaseException as exc:
            lease.release(interrupted(exc))
            if skipped or answer is None or not answer.replaces(exc):
                raise
            return self._unavailable(exc, environ, start_response)
        return self._respond(result, lease, environ, answer)

    def _respond(
        self, result: Iterable[bytes], lease: Lease, environ: WSGIEnvironment,
        answer: _Answer503 | None,
    ) -> Iterable[bytes]:
        """The response tail: the lease is released when the server closes the response."""
        if answer is not None and answer.body is not None:
            close = getattr(result, "close", None)
            try:
                if close is not None:
                    close()  # Django's 500, replaced: its request_finished must still run
            finally:
                lease.release()
            return answer.body
        file_wrapper = environ.get("wsgi.file_wrapper")
        if (
            file_wrapper is not None
            and isinstance(file_wrapper, type)
            and isinstance(result, file_wrapper)
            and hook_file_wrapper(result, lease.release)
        ):
            return result
        if getattr(result, "streaming", None) is False:  # Django's HttpResponse: made already
            return ClosingContent(result, lease.release)
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

    # -- outside requests: the core's -----------------------------------------------

    def checkout(
        self, timeout: float | EllipsisType | None = ...
    ) -> AbstractContextManager[None]:
        """Bind pooled connections in the calling greenlet for the ``with`` block.

        For work outside a request: a greenlet spawned by a view, a job. Inside a
        request (or a nested ``checkout()``) the connections already bound are used.
        Raises :class:`PoolTimeout` when none can be had within ``timeout``
        (default: the middleware's).
        """
        return self.core.checkout(timeout)

    def _steered(self) -> DjangoPool:
        return self.core



class _Answer503:
    """``start_response`` under ``hold="lazy"``/``"transaction"``: a wait at the cap that
    timed out inside the app (or the breaker's refusal) becomes a 503 if the response has
    not started. Django made it a 500 (and logged it: ``quiet.DropAnswered503`` drops that
    record); a view that caught the error and answered on its own is left alone."""

    __slots__ = ("body", "environ", "middleware", "start_response", "work")

    def __init__(
        self, middleware: PoolingMiddleware, work: Work, environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> None:
        self.middleware = middleware
        self.work = work
        self.environ = environ
        self.start_response = start_response
        self.body: Iterable[bytes] | None = None  # the 503's, once it replaced the 500

    def replaces(self, exc: BaseException) -> TypeGuard[PoolError]:
        """Whether ``exc``, escaping the app, is answered with a 503 (no response started)."""
        return self.body is None and isinstance(exc, PoolError)

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        timed_out = self.work.timed_out
        if timed_out is not None and status[:3] == "500" and self.body is None:
            self.body = self.middleware._unavailable(timed_out, self.environ, self.start_response)
            return _write_nothing
        return self.start_response(status, headers, exc_info)


def _write_nothing(data: bytes) -> None:
    return None

"""``pool_tasks``: Celery tasks served by the same bounded pool, with one line in ``celery.py``.

Under ``celery worker -P gevent`` every task greenlet is a Django thread with its own
connection, the pile-up this library exists to stop. :func:`pool_tasks` wraps each
task's body in a checkout of the pool core (:class:`~wsgi_dbpool.core.DjangoPool`, the
same as under :class:`~wsgi_dbpool.PoolingMiddleware`), so a task takes pooled
connections when its body starts and gives them back when it ends, whatever ends it.

Where the lease sits, and why: Celery's tracer runs ``task_prerun`` receivers, then the
task's ``run``, then stores the result, then ``task_postrun`` receivers in a
``finally:``. Its Django fixup (``celery/fixups/django.py``) connects receivers to both
signals at worker start that ``close()`` every connection the task's thread holds. A
lease taken in a ``task_prerun`` receiver would be closed by the fixup's, and a
``PoolTimeout`` raised there is caught and logged by Celery, letting the task run
unbound past the cap. So we replace each task's ``run`` (or, under ``autoretry_for``,
the ``_orig_run`` Celery's retry wrapper calls) when the worker starts, before Celery
builds its tracers: the lease covers exactly the body, after the fixup's prerun close
and before its postrun close, both of which then find nothing bound and close
nothing of ours. ``PoolTimeout`` is an ordinary exception of the body: the task
fails, or retries when ``autoretry_for`` names it.

Private Celery attributes relied on (checked with Celery 5.7): ``Task._orig_run``, set by
``celery.app.autoretry``; ``WorkController.pool_cls`` (the ``-P`` choice, resolved by the
public ``celery.concurrency.get_implementation``). The hooks are public signals:
``import_modules``, ``worker_init``, ``worker_process_init``, ``worker_shutdown`` and
``worker_process_shutdown``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from .core import DjangoPool, Steering
from .errors import PoolTimeout
from .settings import HoldMode, PoolSettings, ResetMode, SessionStateMode

logger = logging.getLogger("wsgi_dbpool")

# Set on the functions we install, so a task is never wrapped twice.
_WRAPPED_ATTR = "_wsgi_dbpool_task_pool"
# Set on the Celery app by pool_tasks(), so one app is never pooled twice.
_APP_ATTR = "_wsgi_dbpool_task_pool"


class _CutShort(BaseException):
    """Carries an exception that left the driver mid-protocol through ``checkout()``.

    ``checkout()`` closes the connections (rather than reuse them) for exceptions
    that are not ``Exception`` subclasses. Celery's ``SoftTimeLimitExceeded`` is an
    ``Exception``, but it is raised by a signal handler wherever the task happens to
    be, often inside a socket read; PyMySQL then drops its socket while Django still
    believes the connection is open. Wrapping it in this class makes ``checkout()``
    treat it as the interruption it is; the original is re-raised outside.
    """

    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc


class TaskPool(Steering):
    """The pool serving one Celery app's tasks in each worker process; see :func:`pool_tasks`.

    A thin layer over the pool core (:class:`~wsgi_dbpool.core.DjangoPool`), built once
    Django is set up. ``settings`` are checked when :func:`pool_tasks` is called; the
    knobs read as attributes here too (``pool.size``). :meth:`stats`, :meth:`close`,
    :meth:`resize`, :meth:`drain`, :meth:`pause`, :meth:`resume` and :meth:`prewarm` are
    those of :class:`~wsgi_dbpool.PoolingMiddleware`, for this process.
    """

    def __init__(self, app: Any, settings: PoolSettings, aliases: Iterable[str] | None) -> None:
        self.app = app
        self.settings = settings
        # As given: the core checks them against DATABASES once Django is set up.
        self.aliases = aliases if aliases is None or isinstance(aliases, str) else tuple(aliases)
        self._core: DjangoPool | None = None

    def core(self) -> DjangoPool:
        """The pool core, built once Django is set up: every argument is checked here."""
        if self._core is None:
            self._core = DjangoPool(self.settings, self.aliases)
            self.aliases = self._core.aliases
        return self._core

    def _steered(self) -> DjangoPool:
        return self.core()

    def close(self) -> None:
        """Close every idle pooled connection of this process; later tasks still work."""
        if self._core is not None:
            self._core.close()

    # -- running a task -----------------------------------------------------------

    def _run(self, task: Any, run: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        core = self.core()
        cut_short: BaseException
        try:
            # Watched (hold_warning) from when the connections are held, not from when it
            # queued: by the lease under hold="request", by the fronts otherwise.
            with core.checkout(
                name=f"task {task.name}[{task.request.id}]", kind=f"task {task.name}", watched=True
            ):
                try:
                    return run(*args, **kwargs)
                except _interruptions() as exc:
                    raise _CutShort(exc) from None
        except _CutShort as wrapped:
            cut_short = wrapped.exc
        except PoolTimeout as exc:  # the timeout's message, or max_waiting's (TooManyWaiting)
            logger.warning("task %s[%s] failed: %s", task.name, task.request.id, exc)
            raise
        # Outside the except block, so the traceback shows the task, not our wrapper.
        raise cut_short

    def _wrap(self, task: Any) -> bool:
        """Install the lease around ``task``'s body; False if it already has one."""
        # autoretry_for wraps run() in a function calling _orig_run(): wrap inside it, so
        # that a PoolTimeout the task lists in autoretry_for is retried, and the
        # connections are back in the pool while Celery publishes the retry.
        target = "_orig_run" if hasattr(task, "_orig_run") else "run"
        run = getattr(task, target)
        if getattr(run, _WRAPPED_ATTR, None) is not None:
            return False

        @functools.wraps(run)
        def pooled_run(*args: Any, **kwargs: Any) -> Any:
            return self._run(task, run, args, kwargs)

        setattr(pooled_run, _WRAPPED_ATTR, self)
        setattr(task, target, pooled_run)
        return True

    def wrap_tasks(self) -> int:
        """Pool every registered task of the app but Celery's own; returns how many were new.

        Called at ``worker_init``, before the worker builds its tracers (they capture
        ``task.run``). Call it again after registering tasks later than that.
        """
        wrapped = 0
        for name, task in list(self.app.tasks.items()):
            if name.startswith("celery."):  # chord_unlock, backend_cleanup...: no database
                continue
            wrapped += self._wrap(task)
        return wrapped

    # -- signal receivers -----------------------------------------------------------

    def _on_import_modules(self, sender: Any = None, **kwargs: Any) -> None:
        # After the Django fixup's django.setup(); Celery re-raises what we raise
        # here, so a bad argument stops the worker at start-up.
        self.core()

    def _on_worker_init(self, sender: Any = None, **kwargs: Any) -> None:
        if not self._is_ours(sender):
            return
        count = self.wrap_tasks()
        logger.info("pooling the connections of %d Celery task(s) of %r", count, self.app.main)
        if not _forks_children(sender):
            # gevent, threads, solo: this process runs the tasks. Its main thread is here
            # (under -P threads, tasks run in other threads, where no signal handler can be
            # installed): ``python -m wsgi_dbpool drain|pause|resume --pid`` reaches it.
            self.core().serve_control()

    def _on_worker_process_init(self, **kwargs: Any) -> None:
        # A prefork child, before its first task: steerable from now (the handler was
        # installed at the fork; its work needs the thread that this starts).
        self.core().serve_control()

    def _on_worker_shutdown(self, sender: Any = None, **kwargs: Any) -> None:
        if not self._is_ours(sender):
            return
        self.close()

    def _on_worker_process_shutdown(self, **kwargs: Any) -> None:
        self.close()  # prefork children: worker_shutdown is sent in the parent only

    def _is_ours(self, worker: Any) -> bool:
        other = getattr(worker, "app", None)
        return other is None or _unwrap(other) is self.app

    def _connect(self) -> None:
        from celery import signals

        uid = f"wsgi_dbpool.celery:{id(self)}"
        # Strong references: the receivers are bound methods of this pool.
        signals.import_modules.connect(
            self._on_import_modules, sender=self.app, weak=False, dispatch_uid=f"{uid}:import"
        )
        signals.worker_init.connect(self._on_worker_init, weak=False, dispatch_uid=f"{uid}:init")
        signals.worker_process_init.connect(
            self._on_worker_process_init, weak=False, dispatch_uid=f"{uid}:process-init"
        )
        signals.worker_shutdown.connect(
            self._on_worker_shutdown, weak=False, dispatch_uid=f"{uid}:shutdown"
        )
        signals.worker_process_shutdown.connect(
            self._on_worker_process_shutdown, weak=False, dispatch_uid=f"{uid}:process-shutdown"
        )


def pool_tasks(
    app: Any,
    *,
    size: int = 4,
    max_outstanding: int | None = None,
    timeout: float | None = 30.0,
    aliases: Iterable[str] | None = None,
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
) -> TaskPool:
    """Serve every task of the Celery ``app`` with pooled connections, capped per process::

        # proj/celery.py
        app = Celery("proj")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        pool = pool_tasks(app, size=4, max_outstanding=5, timeout=30)

    Each task body runs inside :meth:`PoolingMiddleware.checkout`: pooled connections
    are bound when the body starts and returned when it ends (returned, raised,
    retried, rejected; closed, never reused, when a time limit or a revoke with
    ``terminate=True`` cut it short). Tasks beyond ``max_outstanding`` wait in
    arrival order; past ``timeout`` they raise :class:`~wsgi_dbpool.PoolTimeout`,
    which ``autoretry_for=(PoolTimeout,)`` retries. A warm shutdown closes the idle
    connections.

    The arguments are :class:`~wsgi_dbpool.PoolingMiddleware`'s (no ``skip``: a task
    has no request to skip), checked by its rules: every knob here, at once
    (:class:`~wsgi_dbpool.settings.PoolSettings`); ``aliases`` against ``DATABASES``
    here when Django is already set up, otherwise when the worker starts, which then
    refuses to start. Nothing connects to the database until a task runs.

    Works with the ``gevent``, ``threads``, ``solo`` and (forked) ``prefork`` pools.
    ``hold="lazy"`` or ``"transaction"`` work for tasks as for requests: a task that waits
    on an API between its queries holds a connection only while it queries.
    """
    from celery import Celery

    app = _unwrap(app)
    if not isinstance(app, Celery):
        raise TypeError(
            f"app must be a Celery application, got {type(app).__name__}: pass the "
            f"Celery('proj') instance from your celery.py"
        )
    if getattr(app, _APP_ATTR, None) is not None:
        raise RuntimeError(
            f"pool_tasks() was already called for the Celery app {app.main!r}: call it once, "
            f"in the module that creates the app, and keep the TaskPool it returned"
        )
    # Every knob checked now, by the middleware's own rules (the aliases once Django is set up).
    settings = PoolSettings(
        size=size, max_outstanding=max_outstanding, timeout=timeout, ping_after=ping_after,
        linger=linger, hold_warning=hold_warning, reset=reset, hold=hold,
        prewarm=prewarm, max_lifetime=max_lifetime, lifetime_jitter=lifetime_jitter,
        ping_timeout=ping_timeout, session_state=session_state, fail_fast=fail_fast,
        max_waiting=max_waiting, statement_timeout=statement_timeout, max_hold=max_hold,
    )
    pool = TaskPool(app, settings, aliases)
    if _django_ready():
        pool.core()  # check the arguments now
    pool._connect()
    setattr(app, _APP_ATTR, pool)
    return pool


def _django_ready() -> bool:
    from django.apps import apps

    return bool(apps.ready)


def _unwrap(app: Any) -> Any:
    """The app behind a proxy such as ``celery.current_app``."""
    get = getattr(app, "_get_current_object", None)
    return get() if callable(get) else app


def _forks_children(worker: Any) -> bool:
    """Whether the Celery worker ``worker`` runs its tasks in forked children (prefork)."""
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool as Prefork

    pool_cls = get_implementation(getattr(worker, "pool_cls", "prefork"))
    return isinstance(pool_cls, type) and issubclass(pool_cls, Prefork)


@functools.cache
def _interruptions() -> tuple[type[BaseException], ...]:
    from celery.exceptions import SoftTimeLimitExceeded

    return (SoftTimeLimitExceeded,)

"""The one seam through which the pool reaches threads, greenlets and fork.

Everything is looked up *at call time*: with gunicorn ``--preload`` the middleware is
built in the master before the gevent worker calls ``monkey.patch_all()``, so a lock
made at import or construction would be a native lock that blocks the gevent hub.
Asking ``threading`` for a lock when the pool is first used in the worker gives a
cooperative lock under gevent and a native one under plain threads.
"""

from __future__ import annotations

import _queue
import _thread
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")

logger = logging.getLogger("wsgi_dbpool")


class Lock(Protocol):
    """The part of ``threading.Lock`` (native or gevent's) the pool relies on."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...

    def __enter__(self) -> bool: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None: ...


def new_lock() -> Lock:
    """A lock to *wait* on: gevent's (cooperative) once patched, a native one otherwise."""
    return threading.Lock()


class Wakeup(Protocol):
    """One waiter's private signal: :meth:`wait` returns once :meth:`wake` was called
    (before or after it started waiting) or ``timeout`` seconds passed; the caller
    tells which from what it was handed, under its own lock."""

    def wait(self, timeout: float | None) -> None: ...

    def wake(self) -> None: ...


def new_wakeup() -> Wakeup:
    """A :class:`Wakeup`: the hub's own waiter once gevent patched ``threading``, a
    native lock otherwise (looked up now: see the module docstring)."""
    if _gevent_patched():
        return _HubWakeup()
    return _LockWakeup()


class _LockWakeup:
    """A lock taken at once, released by :meth:`wake`."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def wait(self, timeout: float | None) -> None:
        self._lock.acquire(timeout=-1 if timeout is None else timeout)

    def wake(self) -> None:
        self._lock.release()


class _HubWakeup:
    """Under gevent: the waiting greenlet parks in the hub on a ``gevent.hub.Waiter``,
    with a bare loop timer for the timeout.

    A third of the CPU of a gevent lock with a timeout (which builds a ``Timeout``, a
    lock and its links for every wait), measured: a wait at the cap is common under
    load, where every microsecond is the worker's. The waker only queues the switch in
    the hub (thread-safely when it runs in another thread); a switch arriving after a
    timeout finds nobody waiting and is dropped by the ``Waiter``.
    """

    __slots__ = ("_loop", "_thread", "_waiter")

    def __init__(self) -> None:
        gevent_hub = _gevent_hub()
        hub = gevent_hub.get_hub()
        self._loop = hub.loop
        self._waiter = gevent_hub.Waiter(hub)
        self._thread = _native_thread_ident()

    def wait(self, timeout: float | None) -> None:
        waiter = self._waiter
        if timeout is None:
            waiter.get()
            return
        timer = self._loop.timer(max(timeout, 0.0))
        timer.start(waiter.switch, None)
        try:
            waiter.get()
        finally:
            timer.close()

    def wake(self) -> None:
        if _native_thread_ident() == self._thread:
            self._loop.run_callback(self._waiter.switch, None)
        else:
            self._loop.run_callback_threadsafe(self._waiter.switch, None)


def _gevent_hub() -> Any:
    return sys.modules["gevent.hub"]  # imported by gevent.monkey, which patched threading


_native_get_ident: Callable[[], int] | None = None


def _native_thread_ident() -> int:
    """The OS thread's ident, also under gevent (whose patched one names the greenlet)."""
    global _native_get_ident
    get = _native_get_ident
    if get is None:
        monkey = sys.modules.get("gevent.monkey")
        get = monkey.get_original("_thread", "get_ident") if monkey is not None else None
        get = _native_get_ident = get or _thread.get_ident
    return get()


def new_guard_lock() -> Lock:
    """A native lock for critical sections that never wait, never do I/O, never yield.

    Such a section cannot be suspended while it holds the lock, so under gevent the
    lock is never contended by another greenlet and cannot stall the hub; across
    real threads it is the correct primitive. It is also a tenth of the cost of
    gevent's lock, which matters on the per-request path.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return monkey.get_original("_thread", "allocate_lock")()  # type: ignore[no-any-return]
    return _thread.allocate_lock()


def call_later(delay: float, fn: Callable[[], object]) -> None:
    """Run ``fn()`` once, ``delay`` seconds from now, in the background.

    A daemon timer thread, which is a greenlet once gevent has patched ``threading``
    (looked up now, not at import: see the module docstring). It never keeps the
    process alive at exit; an error from ``fn`` is logged, not raised.
    """

    def run() -> None:
        try:
            fn()
        except Exception:
            logger.exception("a background task of wsgi_dbpool failed: %r", fn)

    timer = threading.Timer(delay, run)
    timer.daemon = True
    timer.start()


def get_ident() -> int:
    """The identity Django checks connections against: the greenlet's under gevent."""
    return _thread.get_ident()


# A counter bumped in every forked child. Pools compare it with the value they were
# built under; a mismatch means "inherited from the parent: never reuse, never close".
_fork_generation = 0


def fork_generation() -> int:
    """How many forks separate this process from the one that imported the module."""
    return _fork_generation


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


class PerProcess(Generic[T]):
    """A value that belongs to one process: made by ``make`` at first use, and made again
    at first use in a forked child (what the parent had is never shared with a child).

    On a per-request path, read it without a call: ``p.value if p.generation ==
    _concurrency._fork_generation else p.get()``."""

    __slots__ = ("_make", "generation", "value")

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self.generation = -1  # the fork generation ``value`` was made in
        self.value: T = None  # type: ignore[assignment]  # made at the first get()

    def get(self) -> T:
        if self.generation != _fork_generation:
            self.value = self._make()
            self.generation = _fork_generation
        return self.value

    def made(self) -> bool:
        """Whether the value was made in this process already."""
        return self.generation == _fork_generation


os.register_at_fork(after_in_child=_after_fork_in_child)

# Guards the lazy creation of per-process pool state. It protects a few attribute
# assignments with no I/O, so a native lock cannot stall the gevent hub here.
state_creation_lock = _thread.allocate_lock()


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def at_greenlet_exit(callback: Callable[[], None]) -> bool:
    """Run ``callback`` in a new greenlet once the calling greenlet has ended.

    Only gevent's own greenlets can tell when they end; returns False elsewhere
    (the main greenlet, a plain thread), and nothing is scheduled.
    """
    if not _gevent_patched():
        return False
    import gevent

    current = gevent.getcurrent()
    if not isinstance(current, gevent.Greenlet):
        return False
    # Links run in the hub, which must never block: the callback gets its own greenlet.
    current.rawlink(lambda _ended: gevent.spawn(callback))
    return True


def spawner_ident() -> int | None:
    """The ident (:func:`get_ident`) of the gevent greenlet that spawned the calling one,
    while it is alive; None elsewhere."""
    if not _gevent_patched():
        return None
    import gevent

    ref = getattr(gevent.getcurrent(), "spawning_greenlet", None)
    spawner = ref() if ref is not None else None
    if spawner is None or spawner.dead:
        return None
    return id(spawner)  # gevent's get_ident() is the greenlet's id()


# Calls queued by finalisers, for plain threads; served by one daemon thread.
_deferred: _queue.SimpleQueue[Callable[[], None]] = _queue.SimpleQueue()
_deferred_thread: list[int] = []  # the fork generation its thread runs in, if any


def prepare_deferred_calls() -> None:
    """Start what :func:`call_soon` needs, outside any finaliser (once per process)."""
    if _gevent_patched():
        import gevent

        gevent.get_hub()  # created now, not inside a garbage collection
        return
    if _deferred_thread and _deferred_thread[0] == _fork_generation:
        return
    _deferred_thread[:] = [_fork_generation]
    _thread.start_new_thread(_serve_deferred, ())


def _serve_deferred() -> None:
    while True:
        callback = _deferred.get()
        try:
            callback()
        except Exception:  # logged by the callback's owner; the server thread goes on
            pass


def call_soon(callback: Callable[[], None]) -> None:
    """Run ``callback`` soon, elsewhere: safe to call from a finaliser.

    It takes no lock and does no I/O: under gevent it only appends a callback to the
    hub's loop (which then spawns a greenlet for it), with plain threads it puts it on a
    reentrant ``SimpleQueue`` served by a daemon thread.
    """
    if _gevent_patched():
        import gevent

        gevent.get_hub().loop.run_callback(gevent.spawn, callback)
    else:
        _deferred.put(callback)


def sleep(seconds: float) -> None:
    """Pause the caller: only this greenlet under gevent (``time.sleep`` is patched)."""
    time.sleep(seconds)


class TimeLimit:
    """Bound a block of I/O to ``seconds`` (``None``: no bound), under gevent.

    Only gevent can interrupt a greenlet blocked in a socket read; in plain threads
    the block runs unbounded (the driver's own timeouts apply). :meth:`fired` tells
    this limit's interrupt from any other one (an outer ``gevent.Timeout``).
    """

    __slots__ = ("_timeout", "seconds")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._timeout: BaseException | None = None

    def __enter__(self) -> TimeLimit:
        if self.seconds is not None and _gevent_patched():
            import gevent

            timeout = gevent.Timeout(self.seconds)
            timeout.start()
            self._timeout = timeout
        return self

    def __exit__(self, *exc_info: object) -> None:
        timeout = self._timeout
        if timeout is not None:
            timeout.close()  # type: ignore[attr-defined]

    def fired(self, exc: BaseException) -> bool:
        return self._timeout is not None and exc is self._timeout

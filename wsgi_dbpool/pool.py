"""A bounded, fair pool of reusable objects: the mechanism, with no Django in it.

The pool counts *slots*: an object checked out, or being created for a caller, holds
one. ``max_outstanding`` caps the slots; ``size`` caps the idle objects kept between
uses. Callers beyond the cap wait in arrival order, and a returned object is handed
straight to the oldest waiter (never closed while someone is about to open a new
one). What "reusable" means (clean, stale, dirty) is the caller's policy: see
:mod:`wsgi_dbpool.verdict`.

Every critical section below is a handful of attribute and deque operations with no
I/O and no call into user code, so it never yields to another greenlet; creating,
checking and disposing of objects always happens outside the lock.
"""

from __future__ import annotations

import bisect
import collections
import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from . import _concurrency
from .errors import PoolTimeout, TooManyWaiting

T = TypeVar("T")

logger = logging.getLogger("wsgi_dbpool")

# The keys of :meth:`Pool.stats`, written once: ``stats()``, the Prometheus exporter and the
# tests read them from here. Counts are per process, since the last fork.
SIZE = "size"  # idle objects kept between uses
MAX_OUTSTANDING = "max_outstanding"  # the cap on slots (None: no cap)
IDLE = "idle"  # objects idle now, lingering ones included
IN_USE = "in_use"  # slots taken now: objects checked out, or being created
WAITING = "waiting"  # callers queued at the cap now
CHECKOUTS = "checkouts"  # objects handed out
WAITS = "waits"  # checkouts that had to queue (served or not)
WAIT_SECONDS = "wait_seconds"  # seconds spent queuing, in total
TIMEOUTS = "timeouts"  # queued callers that gave up (PoolTimeout)
HANDOFFS = "handoffs"  # returns handed straight to a waiter
CREATED = "created"  # objects made
DISCARDED = "discarded"  # surplus objects disposed of (over size, unusable, reaped)
HOLD_SECONDS = "hold_seconds"  # seconds objects were checked out, checkout to return, in total
CONNECTS = "connects"  # connect attempts (note_connect)
CONNECT_SECONDS = "connect_seconds"  # seconds those attempts took, in total
REJECTED = "rejected"  # callers turned away at once: max_waiting already waited (TooManyWaiting)
PAUSED = "paused"  # 1 while paused (new checkouts wait), else 0
STATS_KEYS = (
    SIZE, MAX_OUTSTANDING, IDLE, IN_USE, WAITING, CHECKOUTS, WAITS, WAIT_SECONDS, TIMEOUTS,
    HANDOFFS, CREATED, DISCARDED, HOLD_SECONDS, CONNECTS, CONNECT_SECONDS, REJECTED, PAUSED,
)

# Upper bounds (seconds) of the wait-time histogram; the last bucket is +Inf.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# What release() did with an object nobody waited for: kept it idle, kept it lingering
# and the reaper must start, or counted it surplus (to dispose of outside the lock).
_KEPT, _REAP, _SURPLUS = 0, 1, 2

# What a waiter holds until it is served: nothing yet, or a bare slot to fill itself.
_NOTHING: object = object()
_SLOT: object = object()


class _FromIdle:
    """A gift taken from the idle objects (after :meth:`Pool.resume`), with its idle time."""

    __slots__ = ("obj", "since")

    def __init__(self, obj: object, since: float) -> None:
        self.obj = obj
        self.since = since


class _Waiter:
    """One caller waiting for a slot; woken through its private signal.

    The hand-off is *accepted* under the pool lock: a waiter that times out at the
    very moment it is served keeps what it was given, so nothing is lost.
    """

    __slots__ = ("gift", "signal")

    def __init__(self) -> None:
        self.signal = _concurrency.new_wakeup()
        self.gift: object = _NOTHING

    def serve(self, gift: object) -> None:
        self.gift = gift
        self.signal.wake()


class _ProcessState(Generic[T]):
    """What belongs to one process: made lazily there, abandoned (never used) after fork."""

    __slots__ = (
        "checkouts",
        "connect_histogram",
        "connect_seconds",
        "connects",
        "created",
        "discarded",
        "events",
        "generation",
        "handoffs",
        "hold_histogram",
        "hold_seconds",
        "idle",
        "lock",
        "outstanding",
        "reaping",
        "rejected",
        "timeouts",
        "wait_histogram",
        "wait_seconds",
        "waiters",
        "waits",
    )

    def __init__(self, generation: int) -> None:
        self.lock = _concurrency.new_guard_lock()
        self.idle: collections.deque[tuple[T, float]] = collections.deque()
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self.outstanding = 0
        self.generation = generation
        self.checkouts = 0
        self.waits = 0
        self.timeouts = 0
        self.rejected = 0
        self.created = 0
        self.handoffs = 0
        self.discarded = 0
        self.wait_seconds = 0.0
        self.events: dict[str, int] = {}
        self.wait_histogram = [0] * (len(WAIT_BUCKETS) + 1)  # finished waits per bucket
        self.reaping = False  # a timer will close what lingers beyond size
        self.hold_seconds = 0.0  # checkout to return, over every return
        self.hold_histogram = [0] * (len(WAIT_BUCKETS) + 1)
        self.connects = 0  # connect attempts, and the seconds they took
        self.connect_seconds = 0.0
        self.connect_histogram = [0] * (len(WAIT_BUCKETS) + 1)


# Objects a forked child inherited idle from its parent. They are kept referenced so
# that no finaliser ever closes them on the wire (psycopg sends Terminate on GC, which
# would kill the parent's session); the child simply never touches them.
_inherited: list[object] = []


class Pool(Generic[T]):
    """Slots, idle objects and a FIFO of waiters for one resource (one database alias).

    :param name: used in errors and logs (the database alias).
    :param create: makes a new object; called outside the lock with a slot reserved.
        If it raises, the slot is given back and the error propagates unchanged.
    :param dispose: gets rid of a surplus object; called outside the lock.
    :param linger: seconds an object returned while ``size`` are already idle stays
        idle before it is disposed of (0: at once). Bursts then reuse it instead of
        closing one connection while opening the next.
    :param max_waiting: at most this many callers wait at the cap; one more is turned
        away at once with :class:`TooManyWaiting`. ``None``: no limit.

    ``size`` and ``max_outstanding`` may change while it runs (:meth:`resize`), and it
    may be paused (:meth:`pause`: every new checkout waits, returns go idle).
    """

    def __init__(
        self,
        name: str,
        *,
        create: Callable[[], T],
        dispose: Callable[[T], None],
        size: int,
        max_outstanding: int | None,
        linger: float = 0.0,
        max_waiting: int | None = None,
    ) -> None:
        self.name = name
        self.size = size
        self.linger = linger
        self.max_outstanding = max_outstanding
        self.max_waiting = max_waiting
        self.paused = False
        self._create = create
        self._dispose = dispose
        self._state: _ProcessState[T] | None = None

    # -- per-process state -------------------------------------------------------

    def _current(self) -> _ProcessState[T]:
        state = self._state
        if state is not None and state.generation == _concurrency._fork_generation:
            return state
        return self._new_state()

    def _new_state(self) -> _ProcessState[T]:
        generation = _concurrency.fork_generation()
        with _concurrency.state_creation_lock:
            state = self._state
            if state is None or state.generation != generation:
                if state is not None:
                    # Inherited from the parent: the sockets are shared with it.
                    _inherited.extend(obj for obj, _ in state.idle)
                    if state.idle:
                        logger.info(
                            "pool %r: left %d connection(s) inherited through fork untouched",
                            self.name, len(state.idle),
                        )
                state = self._state = _ProcessState(generation)
        return state

    # -- checkout ----------------------------------------------------------------

    def acquire(self, timeout: float | None) -> tuple[T, float | None]:
        """Take an object, waiting up to ``timeout`` seconds (None: forever) at the cap.

        Returns the object and the monotonic time it was last returned (None when it
        was just created), so the caller can decide whether it needs a health check.
        """
        state = self._state  # inlined _current(): this is the per-request path
        if state is None or state.generation != _concurrency._fork_generation:
            state = self._new_state()
        with state.lock:
            # Newcomers never overtake waiting callers: with a queue, join its end.
            if not state.waiters and not self.paused:
                if state.idle:
                    state.outstanding += 1
                    state.checkouts += 1
                    return state.idle.pop()
                if self.max_outstanding is None or state.outstanding < self.max_outstanding:
                    state.outstanding += 1
                    state.checkouts += 1
                    waiter = None
                else:
                    waiter = self._queue(state)
            else:
                waiter = self._queue(state)
        if waiter is None:
            return self._create_in_slot(state), None
        return self._served(state, waiter, timeout)

    def _queue(self, state: _ProcessState[T]) -> _Waiter | int:
        """Under the lock: a place in the queue, or how many wait already at
        ``max_waiting`` (the caller raises, outside the lock)."""
        if self.max_waiting is not None and len(state.waiters) >= self.max_waiting:
            state.rejected += 1
            return len(state.waiters)
        waiter = _Waiter()
        state.waits += 1
        state.waiters.append(waiter)
        return waiter

    def _served(
        self, state: _ProcessState[T], waiter: _Waiter | int, timeout: float | None
    ) -> tuple[T, float | None]:
        """Wait in the queue for what :meth:`release` hands over (outside the lock)."""
        if not isinstance(waiter, _Waiter):  # turned away at max_waiting
            raise TooManyWaiting(self.name, waiter, self.max_outstanding)
        gift = self._wait(state, waiter, timeout)
        if gift is _SLOT:
            return self._create_in_slot(state), None
        if type(gift) is _FromIdle:
            return gift.obj, gift.since  # type: ignore[return-value]
        # A handed-off object was in use a moment ago: it needs no health check.
        return gift, None  # type: ignore[return-value]

    def _create_in_slot(self, state: _ProcessState[T]) -> T:
        try:
            obj = self._create()
        except BaseException:
            self._give_back_slot(state)
            raise
        with state.lock:
            state.created += 1
        return obj

    def create_replacement(self) -> T:
        """A new object standing in for a checked-out one that can never be reused;
        it takes over that object's slot (and is counted as created)."""
        obj = self._create()
        state = self._current()
        with state.lock:
            state.created += 1
        return obj

    def _wait(self, state: _ProcessState[T], waiter: _Waiter, timeout: float | None) -> object:
        started = time.monotonic()
        try:
            waiter.signal.wait(timeout)
        except BaseException:
            # Killed while waiting (GreenletExit, gevent.Timeout, KeyboardInterrupt):
            # leave the queue, or pass on what we were handed, then die.
            with state.lock:
                gift = waiter.gift
                if gift is _NOTHING:
                    state.waiters.remove(waiter)
            if gift is _SLOT:
                self._give_back_slot(state)
            elif gift is not _NOTHING:
                obj = gift.obj if type(gift) is _FromIdle else gift
                self.release(obj, reusable=True)  # type: ignore[arg-type]
            raise
        waited = time.monotonic() - started
        bucket = bisect.bisect_left(WAIT_BUCKETS, waited)
        with state.lock:
            state.wait_seconds += waited
            state.wait_histogram[bucket] += 1
            gift = waiter.gift
            if gift is _NOTHING:
                state.waiters.remove(waiter)
                state.timeouts += 1
            else:
                state.checkouts += 1
        if gift is _NOTHING:
            raise PoolTimeout(self.name, waited, self.max_outstanding)
        return gift

    # -- return ------------------------------------------------------------------

    def release(self, obj: T, reusable: bool, taken: float | None = None) -> None:
        """Give back a checked-out object; exactly once per successful :meth:`acquire`.

        ``taken``: when (``time.monotonic()``) it was checked out, for the hold times.
        (Positional parameters: the per-request caller passes them so, a cheaper call.)

        With someone waiting, the object (reusable or not: the caller has already
        made it safe, e.g. closed its connection) goes straight to them. Otherwise a
        reusable object is kept idle while fewer than ``size`` are, and anything else
        is disposed of outside the lock.
        """
        state = self._state  # inlined _current(): this is the per-request path
        if state is None or state.generation != _concurrency._fork_generation:
            state = self._new_state()
        now = time.monotonic()
        with state.lock:
            if state.outstanding <= 0:
                raise RuntimeError(f"pool {self.name!r}: release without a checkout")
            if taken is not None:
                held = now - taken
                state.hold_seconds += held
                state.hold_histogram[bisect.bisect_left(WAIT_BUCKETS, held)] += 1
            if state.waiters and not self.paused:
                state.handoffs += 1
                state.waiters.popleft().serve(obj)
                return
            if reusable and len(state.idle) < self.size:  # _put_back()'s first case, inline
                state.outstanding -= 1
                state.idle.append((obj, now))
                return
            outcome = self._put_back(state, obj, reusable, now)
        if outcome != _KEPT:  # outside the lock
            self._finish_put_back(outcome, obj)

    def _finish_put_back(self, outcome: int, obj: T) -> None:
        if outcome == _SURPLUS:
            self._dispose(obj)
        elif outcome == _REAP:
            _concurrency.call_later(self.linger, self._reap)

    def _put_back(self, state: _ProcessState[T], obj: T, reusable: bool, now: float) -> int:
        """Under the lock, nobody waiting: keep ``obj`` idle, let it linger, or count it
        surplus (the caller disposes of it outside the lock)."""
        state.outstanding -= 1
        if reusable and len(state.idle) < self.size:
            state.idle.append((obj, now))
            return _KEPT
        if reusable and self.linger > 0:
            # Over size, but the next request may be a moment away: let it
            # linger rather than close it now and open another then (churn).
            state.idle.append((obj, now))
            start_reaper = not state.reaping
            state.reaping = True
            return _REAP if start_reaper else _KEPT
        state.discarded += 1
        return _SURPLUS

    def _reap(self) -> None:
        """Close idle objects beyond ``size`` that lingered ``linger`` seconds unused."""
        state = self._current()
        victims = []
        with state.lock:
            now = time.monotonic()
            idle = state.idle
            # The left end holds the longest idle: acquire() takes from the right.
            while len(idle) > self.size and now - idle[0][1] >= self.linger:
                victims.append(idle.popleft()[0])
            again = len(idle) > self.size
            delay = idle[0][1] + self.linger - now if again else 0.0
            state.reaping = again
            state.discarded += len(victims)
        for obj in victims:
            try:
                self._dispose(obj)
            except Exception:
                logger.exception("pool %r: closing a lingering connection failed", self.name)
        if again:
            _concurrency.call_later(max(delay, 0.01), self._reap)

    def _give_back_slot(self, state: _ProcessState[T]) -> None:
        with state.lock:
            if state.waiters and not self.paused:
                state.waiters.popleft().serve(_SLOT)
            else:
                state.outstanding -= 1

    def revoke(self, taken: float | None = None) -> None:
        """Take back the slot of a checked-out object that will never come back (its
        holder kept it too long: :mod:`wsgi_dbpool.max_hold`): the oldest waiter gets
        the slot at once (it creates a new object). Its holder must not :meth:`release`
        it: this was that slot's one release."""
        state = self._current()
        with state.lock:
            if state.outstanding <= 0:
                raise RuntimeError(f"pool {self.name!r}: revoke without a checkout")
            if taken is not None:
                held = time.monotonic() - taken
                state.hold_seconds += held
                state.hold_histogram[bisect.bisect_left(WAIT_BUCKETS, held)] += 1
            if state.waiters and not self.paused:
                state.waiters.popleft().serve(_SLOT)
            else:
                state.outstanding -= 1

    def add_idle(self, obj: T) -> bool:
        """Put a new object (made by the caller, e.g. pre-warmed) into the pool, outside
        any slot: the oldest idle if fewer than ``size`` are idle or checked out, or
        straight to a waiter. False: no room, the caller disposes of it."""
        state = self._current()
        with state.lock:
            if state.waiters and not self.paused:
                state.outstanding += 1
                state.created += 1
                state.handoffs += 1
                state.waiters.popleft().serve(obj)
                return True
            if len(state.idle) + state.outstanding >= self.size:
                return False
            state.created += 1
            # The left end: LIFO checkouts reach it last, so it does not push a warm
            # connection out of the way.
            state.idle.appendleft((obj, time.monotonic()))
            return True

    def note_connect(self, seconds: float) -> None:
        """Count one connect attempt that took ``seconds``."""
        state = self._current()
        with state.lock:
            state.connects += 1
            state.connect_seconds += seconds
            state.connect_histogram[bisect.bisect_left(WAIT_BUCKETS, seconds)] += 1

    # -- maintenance -------------------------------------------------------------

    def drain_idle(self) -> int:
        """Dispose of every idle object (worker shutdown); the pool stays usable."""
        state = self._current()
        with state.lock:
            idle = [obj for obj, _ in state.idle]
            state.idle.clear()
        for obj in idle:
            self._dispose(obj)
        return len(idle)

    def resize(self, size: int, max_outstanding: int | None) -> None:
        """Apply new limits to the checkouts from now on. A higher cap serves waiters at
        once; a lower one lets the checkouts in flight finish (they are not taken back,
        their returns go idle or are disposed of); idle objects beyond the new ``size``
        are disposed of now."""
        state = self._current()
        with state.lock:
            self.size = size
            self.max_outstanding = max_outstanding
            self._serve_waiters(state)
            surplus = []
            while len(state.idle) > size:
                surplus.append(state.idle.popleft()[0])  # the longest idle first
            state.discarded += len(surplus)
        for obj in surplus:
            self._dispose(obj)

    def pause(self) -> None:
        """New checkouts wait (bounded by their timeout); those in flight go on."""
        self.paused = True

    def resume(self) -> None:
        """End a :meth:`pause`: the waiters are served, in arrival order."""
        state = self._current()
        with state.lock:
            self.paused = False
            self._serve_waiters(state)

    def _serve_waiters(self, state: _ProcessState[T]) -> None:
        """Serve waiters from the idle objects, then with free slots (under the lock)."""
        waiters, idle = state.waiters, state.idle
        while waiters and not self.paused:
            if idle:
                obj, since = idle.pop()
                gift: object = _FromIdle(obj, since)
            elif self.max_outstanding is None or state.outstanding < self.max_outstanding:
                gift = _SLOT
            else:
                return
            state.outstanding += 1
            waiters.popleft().serve(gift)

    def count(self, event: str) -> None:
        """Count an event of the caller's policy (per process, like every counter here)."""
        state = self._current()
        with state.lock:
            state.events[event] = state.events.get(event, 0) + 1

    def wait_histogram(self) -> tuple[list[tuple[float, int]], float, int]:
        """Time to get a slot, over every checkout: cumulative (bound, count) pairs, the
        sum of seconds and the count, as a Prometheus histogram wants them. Checkouts
        that did not wait count as 0 s."""
        state = self._current()
        with state.lock:
            waited = list(state.wait_histogram)
            total = state.checkouts + state.timeouts
            seconds = state.wait_seconds
        cumulative, running = [], total - sum(waited)  # the immediate ones: <= any bound
        for bound, count in zip((*WAIT_BUCKETS, float("inf")), waited, strict=True):
            running += count
            cumulative.append((bound, running))
        return cumulative, seconds, total

    def hold_histogram(self) -> tuple[list[tuple[float, int]], float, int]:
        """Time from checkout to return, over every return: as :meth:`wait_histogram`."""
        state = self._current()
        with state.lock:
            return _cumulative(state.hold_histogram, 0, state.hold_seconds)

    def connect_histogram(self) -> tuple[list[tuple[float, int]], float, int]:
        """Time each connect attempt took: as :meth:`wait_histogram`."""
        state = self._current()
        with state.lock:
            return _cumulative(state.connect_histogram, 0, state.connect_seconds)

    def stats(self) -> dict[str, int | float | None]:
        """A flat snapshot of this process's counts: the :data:`STATS_KEYS`, then the
        policy's events (:meth:`count`); see :meth:`PoolingMiddleware.stats`."""
        state = self._current()
        with state.lock:
            return {
                SIZE: self.size,
                MAX_OUTSTANDING: self.max_outstanding,
                IDLE: len(state.idle),
                IN_USE: state.outstanding,
                WAITING: len(state.waiters),
                CHECKOUTS: state.checkouts,
                WAITS: state.waits,
                WAIT_SECONDS: round(state.wait_seconds, 6),
                TIMEOUTS: state.timeouts,
                HANDOFFS: state.handoffs,
                CREATED: state.created,
                DISCARDED: state.discarded,
                HOLD_SECONDS: round(state.hold_seconds, 6),
                CONNECTS: state.connects,
                CONNECT_SECONDS: round(state.connect_seconds, 6),
                REJECTED: state.rejected,
                PAUSED: int(self.paused),
                **state.events,
            }


def _cumulative(
    counts: list[int], below_all: int, seconds: float
) -> tuple[list[tuple[float, int]], float, int]:
    """Per-bucket counts as cumulative (bound, count) pairs, the sum and the count."""
    cumulative, running = [], below_all
    for bound, count in zip((*WAIT_BUCKETS, float("inf")), counts, strict=True):
        running += count
        cumulative.append((bound, running))
    return cumulative, seconds, running

"""The pool's mechanism and the response wrappers, with plain objects: no server, no Django.

``Pool`` is generic; here it pools ``Thing`` objects so that FIFO order, hand-offs, timeouts,
killed waiters, over-release, the linger reaper and fork generations are checked in
milliseconds. The README's guarantees *Fair*, *Bounded*, *Exactly-once release* and
*Fork-safe* rest on what is checked here; the suites against real servers show the rest.
Every wait has a deadline (``DEADLINE`` seconds), so a regression fails, never hangs.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest

from wsgi_dbpool import PoolTimeout, TooManyWaiting, _concurrency
from wsgi_dbpool import pool as pool_module
from wsgi_dbpool import response as response_module
from wsgi_dbpool.pool import Pool
from wsgi_dbpool.response import ClosingIterable, hook_file_wrapper

DEADLINE = 2.0  # seconds: far above anything here, which takes milliseconds
_new_wakeup = _concurrency.new_wakeup  # the real one, for the signal wrappers below


class Thing:
    """A pooled object: numbered, and it knows whether it was disposed of."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.disposed = False

    def __repr__(self) -> str:
        return f"Thing({self.number})"


class Factory:
    """``create`` and ``dispose`` for a Pool, recording what they did."""

    def __init__(self) -> None:
        self.numbers = itertools.count(1)
        self.made: list[Thing] = []
        self.disposed: list[Thing] = []
        self.fail_next: BaseException | None = None
        self.gate: gevent.event.Event | None = None  # create() waits on it when set

    def create(self) -> Thing:
        if self.gate is not None:
            self.gate.wait(DEADLINE)
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        thing = Thing(next(self.numbers))
        self.made.append(thing)
        return thing

    def dispose(self, thing: Thing) -> None:
        assert not thing.disposed, f"{thing} disposed of twice"
        thing.disposed = True
        self.disposed.append(thing)


@pytest.fixture
def factory() -> Factory:
    return Factory()


@pytest.fixture
def make_pool(factory: Factory) -> Callable[..., Pool[Thing]]:
    def make(
        *, size: int = 2, max_outstanding: int | None = 1, linger: float = 0.0,
        max_waiting: int | None = None,
    ) -> Pool[Thing]:
        return Pool(
            "things", create=factory.create, dispose=factory.dispose,
            size=size, max_outstanding=max_outstanding, linger=linger, max_waiting=max_waiting,
        )

    return make


def wait_for(predicate: Callable[[], object], what: str) -> None:
    with gevent.Timeout(DEADLINE, AssertionError(f"timed out waiting for: {what}")):
        while not predicate():
            gevent.sleep(0.001)


def join_all(greenlets: list[gevent.Greenlet]) -> None:
    gevent.joinall(greenlets, timeout=DEADLINE, raise_error=True)
    assert all(g.dead for g in greenlets), "a greenlet was still running at the deadline"


def take(pool: Pool[Thing], timeout: float | None = DEADLINE) -> Thing:
    return pool.acquire(timeout)[0]


# -- checkout and return ----------------------------------------------------------


def test_waiters_are_served_in_arrival_order(make_pool):
    pool = make_pool(max_outstanding=1)
    held = take(pool)
    served: list[int] = []

    def client(number: int) -> None:
        thing = take(pool)
        served.append(number)
        gevent.sleep(0)  # let the later ones queue up behind us whatever the scheduler does
        pool.release(thing, reusable=True)

    clients = []
    for number in range(5):
        clients.append(gevent.spawn(client, number))
        gevent.sleep(0)  # it joins the queue before the next one is spawned
    assert pool.stats()["waiting"] == 5
    pool.release(held, reusable=True)
    join_all(clients)
    assert served == [0, 1, 2, 3, 4]
    stats = pool.stats()
    assert (stats["handoffs"], stats["waits"], stats["created"], stats["idle"]) == (5, 5, 1, 1)


def test_a_newcomer_never_overtakes_a_waiter(make_pool):
    pool = make_pool(max_outstanding=1)
    held = take(pool)
    order: list[str] = []

    def waiter() -> None:
        pool.release(take(pool), reusable=True)
        order.append("waiter")

    queued = gevent.spawn(waiter)
    gevent.sleep(0)
    pool.release(held, reusable=True)  # handed to the waiter, not left idle for anyone
    assert pool.stats()["idle"] == 0
    newcomer = gevent.spawn(lambda: (pool.release(take(pool), reusable=True), order.append("newcomer")))
    join_all([queued, newcomer])
    assert order == ["waiter", "newcomer"]


def test_idle_objects_are_reused_last_returned_first(make_pool, factory):
    pool = make_pool(size=2, max_outstanding=None)
    first, second = take(pool), take(pool)
    pool.release(first, reusable=True)
    pool.release(second, reusable=True)
    thing, returned_at = pool.acquire(DEADLINE)
    assert thing is second and returned_at is not None
    assert len(factory.made) == 2


@pytest.mark.parametrize(
    ("size", "reusable", "idle", "disposed"),
    [
        pytest.param(1, True, 1, 0, id="reusable-below-size-kept-idle"),
        pytest.param(0, True, 0, 1, id="reusable-over-size-disposed"),
        pytest.param(1, False, 0, 1, id="unusable-disposed"),
    ],
)
def test_what_a_release_with_no_waiter_keeps(make_pool, factory, size, reusable, idle, disposed):
    pool = make_pool(size=size, max_outstanding=None)
    pool.release(take(pool), reusable=reusable)
    stats = pool.stats()
    assert (stats["idle"], stats["in_use"], len(factory.disposed)) == (idle, 0, disposed)
    assert stats["discarded"] == disposed


def test_an_unusable_object_still_goes_to_a_waiter(make_pool, factory):
    # The caller made it safe (closed its connection); the waiter's policy reopens it.
    pool = make_pool(max_outstanding=1)
    held = take(pool)
    waiter = gevent.spawn(take, pool)
    gevent.sleep(0)
    pool.release(held, reusable=False)
    join_all([waiter])
    assert waiter.value is held and factory.disposed == []


# -- timeouts and the hand-off at the instant of one --------------------------------


def test_a_wait_past_its_timeout_raises_pool_timeout_and_leaves_the_queue(make_pool):
    pool = make_pool(max_outstanding=1)
    held = take(pool)
    with pytest.raises(PoolTimeout) as caught:
        pool.acquire(0.01)
    assert caught.value.alias == "things" and caught.value.max_outstanding == 1
    assert caught.value.__context__ is None  # raised outside any except block
    stats = pool.stats()
    assert (stats["waiting"], stats["timeouts"], stats["waits"], stats["in_use"]) == (0, 1, 1, 1)
    pool.release(held, reusable=True)
    assert pool.stats()["idle"] == 1  # nobody was left in the queue to hand it to


class _ServedAtTimeout:
    """A waiter's signal whose wait times out, with ``on_timeout`` run at that very instant.

    This is the race a real thread can hit: the releaser serves the waiter between the
    end of its wait and its look at what it was given.
    """

    def __init__(self, on_timeout: Callable[[], None]) -> None:
        self._signal = _new_wakeup()
        self._woken = False
        self._on_timeout = on_timeout

    def wait(self, timeout: float | None) -> None:
        self._signal.wait(timeout)
        if not self._woken:
            self._on_timeout()

    def wake(self) -> None:
        self._woken = True
        self._signal.wake()


@pytest.mark.parametrize(
    ("served_at_timeout", "waiter_gets"),
    [
        pytest.param(True, "the-held-object", id="served-at-the-instant-keeps-the-gift"),
        pytest.param(False, "pool-timeout", id="not-served-times-out"),
    ],
)
def test_a_hand_off_at_the_instant_of_a_timeout_is_never_lost(
    make_pool, factory, monkeypatch, served_at_timeout, waiter_gets
):
    pool = make_pool(max_outstanding=1)
    held = take(pool)

    def serve_now() -> None:
        if served_at_timeout:
            pool.release(held, reusable=True)

    monkeypatch.setattr(_concurrency, "new_wakeup", lambda: _ServedAtTimeout(serve_now))
    try:
        got: object = pool.acquire(0.01)[0]
    except PoolTimeout:
        got = "pool-timeout"
    monkeypatch.undo()
    assert got == (held if waiter_gets == "the-held-object" else waiter_gets)
    stats = pool.stats()
    assert stats["waiting"] == 0 and factory.disposed == []
    assert stats["timeouts"] == (0 if served_at_timeout else 1)
    if served_at_timeout:
        assert stats["in_use"] == 1
        pool.release(held, reusable=True)
    else:
        pool.release(held, reusable=True)  # after the waiter left: kept idle, not lost
    stats = pool.stats()
    assert (stats["in_use"], stats["idle"]) == (0, 1)


@pytest.mark.skipif(
    not _concurrency._gevent_patched(), reason="a greenlet served from a native thread: gevent only"
)
def test_a_waiting_greenlet_is_served_from_a_native_thread(make_pool):
    """The hub's waiter is woken thread-safely when the release runs in another OS thread
    (without it, the switch would be queued in the wrong loop: the waiter would sleep
    until its timeout and raise)."""
    import gevent.monkey

    start_native_thread = gevent.monkey.get_original("_thread", "start_new_thread")
    pool = make_pool(max_outstanding=1)
    held = take(pool)
    waiter = gevent.spawn(take, pool, 5.0)
    wait_for(lambda: pool.stats()["waiting"] == 1, "one waiting")
    start_native_thread(pool.release, (held,), {"reusable": True})
    assert waiter.get(timeout=DEADLINE) is held
    assert pool.stats()["timeouts"] == 0


# -- killed waiters -----------------------------------------------------------------


class _KilledWhenServed:
    """A waiter's signal that raises GreenletExit the moment its wait is over.

    The kill lands after the hand-off was made under the pool lock, but before the
    waiter took what it was given: the one order gevent's scheduler cannot be made to
    produce on demand.
    """

    def __init__(self) -> None:
        self._signal = _new_wakeup()

    def wait(self, timeout: float | None) -> None:
        self._signal.wait(timeout)
        raise gevent.GreenletExit

    def wake(self) -> None:
        self._signal.wake()


def queue_waiter(pool: Pool[Thing], *, killed_when_served: bool = False) -> gevent.Greenlet:
    """Spawns a greenlet taking a Thing and lets it join the pool's queue."""
    with pytest.MonkeyPatch.context() as patch:
        if killed_when_served:
            patch.setattr(_concurrency, "new_wakeup", _KilledWhenServed)
        waiter = gevent.spawn(take, pool)
        gevent.sleep(0)
    return waiter


@pytest.mark.parametrize(
    "served_first",
    [
        pytest.param(False, id="killed-while-queued-leaves-the-queue"),
        pytest.param(True, id="killed-when-served-passes-the-gift-on"),
    ],
)
@pytest.mark.parametrize(
    "behind", [pytest.param(False, id="nobody-behind"), pytest.param(True, id="a-waiter-behind")]
)
def test_a_killed_waiter_loses_nothing(make_pool, factory, served_first, behind):
    pool = make_pool(max_outstanding=1)
    held = take(pool)
    victim = queue_waiter(pool, killed_when_served=served_first)
    after = queue_waiter(pool) if behind else None
    assert pool.stats()["waiting"] == (2 if behind else 1)
    if served_first:
        pool.release(held, reusable=True)
        victim.join(DEADLINE)
    else:
        victim.kill(block=True, timeout=DEADLINE)
        assert pool.stats()["waiting"] == (1 if behind else 0)
        pool.release(held, reusable=True)
    assert victim.dead and isinstance(victim.value, gevent.GreenletExit)
    if after is not None:
        join_all([after])
        assert after.value is held  # the gift went on to the next in line
        pool.release(held, reusable=True)
    stats = pool.stats()
    assert (stats["waiting"], stats["in_use"], stats["idle"]) == (0, 0, 1)
    assert factory.made == [held] and factory.disposed == []


def test_a_waiter_killed_by_a_gevent_timeout_leaves_the_queue(make_pool):
    pool = make_pool(max_outstanding=1)
    held = take(pool)
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.01):
        pool.acquire(None)  # no timeout of its own: only the gevent.Timeout ends it
    assert pool.stats()["waiting"] == 0
    pool.release(held, reusable=True)
    assert pool.stats()["idle"] == 1


# -- create() failing, over-release ---------------------------------------------------


def test_create_raising_gives_the_slot_back(make_pool, factory):
    pool = make_pool(max_outstanding=1)
    factory.fail_next = ConnectionRefusedError("server down")
    with pytest.raises(ConnectionRefusedError, match="server down"):
        pool.acquire(DEADLINE)
    assert pool.stats()["in_use"] == 0
    pool.release(take(pool), reusable=True)  # the slot is usable again
    assert pool.stats()["created"] == 1


@pytest.mark.parametrize(
    "kill_heir",
    [
        pytest.param(False, id="the-waiter-fills-the-slot"),
        pytest.param(True, id="a-killed-heir-passes-the-slot-on"),
    ],
)
def test_create_raising_hands_the_slot_to_a_waiter(make_pool, factory, kill_heir):
    pool = make_pool(max_outstanding=1)
    factory.gate = gate = gevent.event.Event()
    factory.fail_next = ConnectionRefusedError("server down")

    def failing_take() -> BaseException | None:
        try:
            take(pool)
        except ConnectionRefusedError as error:
            return error
        return None

    creator = gevent.spawn(failing_take)  # holds the only slot, stuck in create()
    gevent.sleep(0)
    heir = queue_waiter(pool, killed_when_served=kill_heir)
    last = queue_waiter(pool)
    assert pool.stats()["waiting"] == 2
    factory.gate = None
    gate.set()
    join_all([creator, heir])
    assert isinstance(creator.value, ConnectionRefusedError)
    if kill_heir:
        assert isinstance(heir.value, gevent.GreenletExit)  # it passed the bare slot on
    else:
        assert isinstance(heir.value, Thing)  # made by the heir in the slot it was given
        pool.release(heir.value, reusable=True)
    join_all([last])
    winner = last.value
    assert isinstance(winner, Thing) and factory.made == [winner]
    pool.release(winner, reusable=True)
    stats = pool.stats()
    assert (stats["in_use"], stats["waiting"], stats["idle"]) == (0, 0, 1)


def test_create_raising_base_exception_gives_the_slot_back(make_pool, factory):
    pool = make_pool(max_outstanding=1)
    factory.fail_next = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        pool.acquire(DEADLINE)
    assert pool.stats()["in_use"] == 0


@pytest.mark.parametrize(
    "checkouts", [pytest.param(0, id="never-checked-out"), pytest.param(1, id="released-twice")]
)
def test_an_over_release_raises(make_pool, checkouts):
    pool = make_pool(max_outstanding=None)
    thing = Thing(0)
    for _ in range(checkouts):
        thing = take(pool)
        pool.release(thing, reusable=True)
    with pytest.raises(RuntimeError, match="release without a checkout"):
        pool.release(thing, reusable=True)
    assert pool.stats()["in_use"] == 0


# -- linger and the reaper -----------------------------------------------------------


@pytest.mark.parametrize(
    ("linger", "kept_at_once", "disposed"),
    [
        pytest.param(0.0, 1, [2, 3], id="no-linger-surplus-closed-at-once"),
        # the longest idle go first: the one kept is the most recently used
        pytest.param(0.05, 3, [1, 2], id="linger-surplus-kept-then-reaped"),
    ],
)
def test_surplus_lingers_then_the_reaper_closes_it(make_pool, factory, linger, kept_at_once, disposed):
    pool = make_pool(size=1, max_outstanding=None, linger=linger)
    things = [take(pool) for _ in range(3)]
    for thing in things:
        pool.release(thing, reusable=True)
    assert pool.stats()["idle"] == kept_at_once
    wait_for(lambda: pool.stats()["idle"] == 1, "the surplus reaped")
    assert [t.number for t in factory.disposed] == disposed
    assert pool.stats()["discarded"] == 2
    gevent.sleep(linger * 2)  # the reaper stops once nothing is over size
    assert pool.stats()["idle"] == 1 and not pool._current().reaping


def test_a_lingering_object_taken_again_is_not_reaped(make_pool, factory):
    pool = make_pool(size=0, max_outstanding=None, linger=0.05)
    thing = take(pool)
    pool.release(thing, reusable=True)
    assert take(pool) is thing  # the next request a moment later reuses it
    gevent.sleep(0.1)  # past the reaper's first run
    assert factory.disposed == [] and pool.stats()["in_use"] == 1
    pool.release(thing, reusable=True)
    wait_for(lambda: factory.disposed == [thing], "the lingering object reaped")


def test_a_failing_dispose_in_the_reaper_is_logged_and_the_rest_still_closed(make_pool, factory, caplog):
    pool = make_pool(size=0, max_outstanding=None, linger=0.01)
    first, second = take(pool), take(pool)
    dispose = factory.dispose

    def dispose_failing_once(thing: Thing) -> None:
        if thing is first:
            raise OSError("already gone")
        dispose(thing)

    pool._dispose = dispose_failing_once
    pool.release(first, reusable=True)
    pool.release(second, reusable=True)
    wait_for(lambda: pool.stats()["idle"] == 0, "both reaped")
    assert factory.disposed == [second]
    assert "closing a lingering connection failed" in caplog.text


def test_drain_idle_disposes_of_every_idle_object(make_pool, factory):
    pool = make_pool(size=3, max_outstanding=None)
    things = [take(pool) for _ in range(3)]
    for thing in things:
        pool.release(thing, reusable=True)
    assert pool.drain_idle() == 3
    assert factory.disposed == things and pool.stats()["idle"] == 0
    pool.release(take(pool), reusable=True)  # still usable
    assert pool.stats()["created"] == 4


# -- fork ----------------------------------------------------------------------------


@pytest.fixture
def forked(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Simulates a fork: bumps the generation the pool compares with; restored afterwards."""
    monkeypatch.setattr(pool_module, "_inherited", [])

    def fork() -> None:
        monkeypatch.setattr(_concurrency, "_fork_generation", _concurrency._fork_generation + 1)

    yield fork


def test_after_fork_inherited_idle_objects_are_never_reused_nor_closed(make_pool, factory, forked):
    pool = make_pool(size=2, max_outstanding=1)
    parents = [take(pool)]
    pool.release(parents[0], reusable=True)
    pool.count("stale")
    forked()
    stats = pool.stats()  # a fresh per-process state
    assert (stats["idle"], stats["in_use"], stats["checkouts"], stats.get("stale")) == (0, 0, 0, None)
    child = take(pool)
    assert child not in parents
    assert pool_module._inherited == parents  # kept referenced: no finaliser closes them
    pool.release(child, reusable=True)
    assert pool.drain_idle() == 1
    assert factory.disposed == [child] and not parents[0].disposed


def test_after_fork_the_parent_slots_do_not_count(make_pool, forked):
    pool = make_pool(max_outstanding=1)
    take(pool)  # held by a request of the parent when it forked
    forked()
    assert pool.stats()["in_use"] == 0
    thing = take(pool, timeout=0.01)  # would time out if the parent's slot still counted
    pool.release(thing, reusable=True)


# -- shedding load, steering ----------------------------------------------------------


def test_max_waiting_turns_the_next_caller_away_at_once_and_nothing_else_changes(make_pool):
    pool = make_pool(max_outstanding=1, max_waiting=2)
    held = take(pool)
    waiters = [gevent.spawn(take, pool) for _ in range(2)]
    wait_for(lambda: pool.stats()["waiting"] == 2, "two waiting")
    started = time.monotonic()
    with pytest.raises(TooManyWaiting) as caught:
        pool.acquire(DEADLINE)
    assert time.monotonic() - started < 0.5  # at once, not after the timeout (CI stalls ~0.1 s)
    assert isinstance(caught.value, PoolTimeout)  # answered like a timeout (503)
    assert "max_waiting" in str(caught.value)
    stats = pool.stats()
    assert (stats["rejected"], stats["waiting"], stats["timeouts"]) == (1, 2, 0)
    pool.release(held, reusable=True)
    join_all(waiters[:1])
    pool.release(waiters[0].value, reusable=True)
    join_all(waiters[1:])
    pool.release(waiters[1].value, reusable=True)
    assert pool.stats()["in_use"] == 0


def test_max_waiting_zero_never_queues(make_pool):
    pool = make_pool(max_outstanding=1, max_waiting=0)
    held = take(pool)
    with pytest.raises(TooManyWaiting):
        pool.acquire(DEADLINE)
    pool.release(held, reusable=True)
    pool.release(take(pool), reusable=True)  # under the cap: served as before


def test_pause_makes_new_checkouts_wait_and_resume_serves_them_in_order(make_pool, factory):
    pool = make_pool(size=2, max_outstanding=3)
    held = take(pool)  # in flight when paused
    pool.release(take(pool), reusable=True)  # one idle
    pool.pause()
    served: list[int] = []

    def client(number: int) -> None:
        thing = take(pool)
        served.append(number)
        pool.release(thing, reusable=True)

    clients = []
    for number in range(4):
        clients.append(gevent.spawn(client, number))
        gevent.sleep(0)
    gevent.sleep(0.02)
    assert served == [] and pool.stats()["waiting"] == 4 and pool.stats()["paused"] == 1
    pool.release(held, reusable=True)  # the work in flight finishes: no hand-off while paused
    gevent.sleep(0.01)
    assert served == [] and pool.stats()["idle"] == 2
    with pytest.raises(PoolTimeout):  # the wait stays bounded by its timeout
        pool.acquire(0.01)
    pool.resume()
    join_all(clients)
    assert served == [0, 1, 2, 3]
    stats = pool.stats()
    assert (stats["in_use"], stats["waiting"], stats["paused"]) == (0, 0, 0)
    assert len(factory.made) <= 3


def test_resize_raises_the_cap_for_waiters_and_a_lower_one_lets_work_finish(make_pool, factory):
    pool = make_pool(size=2, max_outstanding=1)
    held = take(pool)
    waiters = [gevent.spawn(take, pool) for _ in range(2)]
    wait_for(lambda: pool.stats()["waiting"] == 2, "two waiting")
    pool.resize(2, 3)  # both served at once, with new slots
    join_all(waiters)
    assert pool.stats()["in_use"] == 3
    pool.resize(1, 1)  # nothing taken back
    assert pool.stats()["in_use"] == 3 and not any(t.disposed for t in factory.made)
    late = gevent.spawn(take, pool)
    gevent.sleep(0.01)
    assert not late.dead  # 3 out, cap 1: it waits
    for thing in (held, waiters[0].value):
        pool.release(thing, reusable=True)  # handed to `late`, then kept idle
    join_all([late])
    pool.release(waiters[1].value, reusable=True)
    pool.release(late.value, reusable=True)
    stats = pool.stats()
    assert (stats["in_use"], stats["idle"], stats["size"], stats["max_outstanding"]) == (0, 1, 1, 1)


# -- counters ------------------------------------------------------------------------


def test_stats_count_what_happened(make_pool):
    pool = make_pool(size=1, max_outstanding=1)
    held = take(pool)
    with pytest.raises(PoolTimeout):
        pool.acquire(0.005)
    waiter = gevent.spawn(take, pool)
    gevent.sleep(0)
    pool.release(held, reusable=True)
    join_all([waiter])
    pool.release(waiter.value, reusable=False)
    pool.count("stale")
    pool.count("stale")
    stats = pool.stats()
    assert list(stats) == [*pool_module.STATS_KEYS, "stale"]  # the documented keys, then events
    assert stats == {
        pool_module.SIZE: 1,
        pool_module.MAX_OUTSTANDING: 1,
        pool_module.IDLE: 0,
        pool_module.IN_USE: 0,
        pool_module.WAITING: 0,
        pool_module.CHECKOUTS: 2,
        pool_module.WAITS: 2,
        pool_module.WAIT_SECONDS: stats[pool_module.WAIT_SECONDS],
        pool_module.TIMEOUTS: 1,
        pool_module.HANDOFFS: 1,
        pool_module.CREATED: 1,
        pool_module.DISCARDED: 1,
        pool_module.HOLD_SECONDS: stats[pool_module.HOLD_SECONDS],
        pool_module.CONNECTS: 0,  # nothing here connects (note_connect)
        pool_module.CONNECT_SECONDS: 0.0,
        pool_module.REJECTED: 0,
        pool_module.PAUSED: 0,
        "stale": 2,
    }
    assert 0.005 <= stats[pool_module.WAIT_SECONDS] < DEADLINE
    buckets, seconds, count = pool.wait_histogram()
    assert count == 3 and buckets[-1] == (float("inf"), 3)
    assert seconds == pytest.approx(stats["wait_seconds"], abs=1e-5)
    assert [c for _, c in buckets] == sorted(c for _, c in buckets)  # cumulative


def test_every_stats_key_is_documented_and_exported_from_the_one_definition():
    page = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text(encoding="utf-8")
    table = page.split("## Reading `stats()`", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(\w+)`", table))
    from wsgi_dbpool.alias_pool import POLICY_EVENTS, POLICY_GAUGES

    every_key = set(pool_module.STATS_KEYS) | set(POLICY_EVENTS) | set(POLICY_GAUGES)
    assert every_key <= documented
    pytest.importorskip("prometheus_client")
    from wsgi_dbpool import prometheus

    exported = set(prometheus.GAUGES) | set(prometheus.COUNTERS)
    assert exported <= every_key
    assert set(POLICY_GAUGES) <= set(prometheus.GAUGES)
    assert set(POLICY_EVENTS) <= set(prometheus.COUNTERS)


# -- background timers ----------------------------------------------------------------


def test_call_later_runs_once_after_the_delay_and_logs_an_error(caplog):
    ran: list[float] = []
    started = time.monotonic()
    _concurrency.call_later(0.02, lambda: ran.append(time.monotonic() - started))

    def fail() -> None:
        raise OSError("scrape target gone")

    _concurrency.call_later(0.0, fail)
    wait_for(lambda: ran and "scrape target gone" in caplog.text, "both timers")
    gevent.sleep(0.05)
    assert len(ran) == 1 and ran[0] >= 0.02
    assert "a background task of wsgi_dbpool failed" in caplog.text


def test_hold_watch_warns_once_per_long_hold_and_notes_its_end(caplog):
    from wsgi_dbpool.hold_watch import HoldWatch

    watch = HoldWatch(0.02, ("default",))
    with caplog.at_level(logging.INFO, logger="wsgi_dbpool"):
        long = watch.start("GET /report")
        short = watch.start("GET /quick")
        watch.finish(short)
        wait_for(lambda: watch.warned == 1, "the warning")
        gevent.sleep(0.05)  # later scans do not warn again
        watch.finish(long)
    assert watch.warned == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("GET /report has held its connections of 'default'")
    assert "GET /report released its connections of 'default' after" in caplog.text
    assert "GET /quick" not in caplog.text


# -- ClosingIterable -----------------------------------------------------------------


class Inner:
    """A response iterable: yields its chunks, then raises ``error`` if given."""

    def __init__(self, error: BaseException | None = None, close_error: Exception | None = None):
        self.error = error
        self.close_error = close_error
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        yield b"one"
        if self.error is not None:
            raise self.error
        yield b"two"

    def close(self) -> None:
        self.closed += 1
        if self.close_error is not None:
            raise self.close_error


@pytest.fixture(autouse=True)
def scheduled(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What finalisers hand to ``call_soon`` (to run elsewhere), kept here to run by hand."""
    calls: list[Any] = []
    monkeypatch.setattr(response_module._concurrency, "call_soon", calls.append)
    return calls


def closing(inner: Any) -> tuple[ClosingIterable, list[bool]]:
    released: list[bool] = []
    return ClosingIterable(inner, released.append), released


@pytest.mark.parametrize(
    ("error", "broken"),
    [
        pytest.param(None, False, id="iterated-to-the-end"),
        pytest.param(ValueError("in a view"), False, id="exception-not-broken"),
        pytest.param(gevent.GreenletExit(), True, id="greenlet-exit-broken"),
        pytest.param(KeyboardInterrupt(), True, id="keyboard-interrupt-broken"),
        pytest.param(gevent.Timeout(), True, id="gevent-timeout-broken"),
    ],
)
def test_closing_iterable_marks_a_base_exception_while_iterating_as_broken(error, broken):
    inner = Inner(error)
    response, released = closing(inner)
    if error is None:
        assert b"".join(response) == b"onetwo"
    else:
        with pytest.raises(type(error)):
            b"".join(response)
    response.close()
    assert released == [broken] and inner.closed == 1


def test_closing_iterable_stopped_between_chunks_is_not_broken():
    inner = Inner()
    response, released = closing(inner)
    chunks = iter(response)
    assert next(chunks) == b"one"
    chunks.close()  # the server stops iterating: the client went away
    response.close()
    assert released == [False]


@pytest.mark.parametrize(
    ("closes", "iterated"),
    [
        pytest.param(1, True, id="close-once"),
        pytest.param(2, True, id="close-twice-releases-once"),
        pytest.param(3, False, id="close-thrice-never-iterated"),
    ],
)
def test_closing_iterable_releases_exactly_once(closes, iterated, scheduled):
    inner = Inner()
    response, released = closing(inner)
    if iterated:
        b"".join(response)
    for _ in range(closes):
        response.close()
    assert released == [False] and inner.closed == 1
    del response
    assert not scheduled  # closed: the finaliser has nothing to do


def test_closing_iterable_releases_when_the_inner_close_raises_and_the_error_propagates():
    inner = Inner(close_error=OSError("inner close"))
    response, released = closing(inner)
    b"".join(response)
    with pytest.raises(OSError, match="inner close"):
        response.close()
    assert released == [False]
    response.close()  # idempotent even after a failed close
    assert released == [False] and inner.closed == 1


@pytest.mark.parametrize(
    "inner",
    [
        pytest.param([b"a list"], id="inner-without-close"),
        pytest.param(Inner(), id="inner-with-close"),
    ],
)
def test_closing_iterable_never_closed_schedules_its_release(inner, scheduled, caplog):
    response, released = closing(inner)
    b"".join(response)
    del response  # a broken server drops it without close()
    assert released == [] and len(scheduled) == 1  # nothing done inside the finaliser
    with caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
        scheduled.pop()()  # what the hub (or the deferred-call thread) runs at once
    assert released == [False]
    assert "without close()" in caplog.text


@pytest.mark.parametrize(
    ("close_error", "broken"),
    [
        pytest.param(OSError("inner close"), False, id="exception-not-broken"),
        pytest.param(gevent.Timeout(), True, id="interrupted-close-is-broken"),
        pytest.param(gevent.GreenletExit(), True, id="killed-close-is-broken"),
    ],
)
def test_closing_iterable_whose_inner_close_is_interrupted_releases_broken(close_error, broken):
    class Failing(Inner):
        def close(self) -> None:
            raise close_error

    response, released = closing(Failing())
    b"".join(response)
    with pytest.raises(type(close_error)):
        response.close()
    assert released == [broken]


# -- hook_file_wrapper -----------------------------------------------------------------


class FileWrapper:
    """Like gunicorn's and wsgiref's ``wsgi.file_wrapper``: ``close`` a plain attribute."""

    def __init__(self, close_error: Exception | None = None) -> None:
        self.closed = 0
        self.close_error = close_error

        def close() -> None:
            self.closed += 1
            if self.close_error is not None:
                raise self.close_error

        self.close = close


class NoClose:
    pass


class Frozen:
    __slots__ = ()


@pytest.mark.parametrize(
    ("result", "hooked"),
    [
        pytest.param(FileWrapper(), True, id="file-wrapper-hooked"),
        pytest.param(NoClose(), True, id="no-close-hooked"),
        pytest.param(Frozen(), False, id="slots-refused"),
        pytest.param((b"a", b"tuple"), False, id="builtin-refused"),
    ],
)
def test_hook_file_wrapper_hooks_what_takes_an_attribute(result, hooked):
    released: list[bool] = []
    assert hook_file_wrapper(result, released.append) is hooked
    if hooked:
        result.close()
        result.close()
        assert released == [False]
        if isinstance(result, FileWrapper):
            assert result.closed == 1
    else:
        assert released == []


def test_hook_file_wrapper_releases_when_the_inner_close_raises_and_the_error_propagates():
    wrapper = FileWrapper(close_error=OSError("sendfile failed"))
    released: list[bool] = []
    assert hook_file_wrapper(wrapper, released.append)
    with pytest.raises(OSError, match="sendfile failed"):
        wrapper.close()
    assert released == [False]
    wrapper.close()
    assert released == [False] and wrapper.closed == 1


@pytest.mark.parametrize("error", [
    ("PoolTimeout", ("default", 1.5, 4)),
    ("TooManyWaiting", ("default", 3, 4)),
    ("DatabaseUnavailable", ("default", 0.5, "ConnectionRefusedError: refused")),
    ("MaxHoldExceeded", ("default", 2.0, 2.1)),
], ids=["timeout", "too-many-waiting", "unavailable", "max-hold"])
def test_errors_survive_pickling_whole(error):
    """Celery stores a task's exception by pickling it (and prefork children send theirs to
    the parent): each error comes back as itself, not as the nearest class that pickles."""
    import pickle

    import wsgi_dbpool

    name, args = error
    original = getattr(wsgi_dbpool, name)(*args)
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is type(original)
    assert (str(copy), vars(copy)) == (str(original), vars(original))

"""``fail_fast``: a per-alias circuit breaker on failed connects.

While the database is down, every request that needs a new connection would wait out
the driver's connect timeout, holding a slot and a greenlet, then fail; a burst would
queue behind them. The breaker opens at the first connect that fails because the
server could not be reached (refused, unreachable, timed out, lost during the
handshake); while it is open, a checkout of the alias raises
:class:`~wsgi_dbpool.errors.DatabaseUnavailable` at once and no connect is tried. One
background greenlet probes with a single connect per backoff step (0.5 s doubling to
30 s, each drawn up to 20% shorter so that workers opened together do not probe in
step); the first that succeeds closes the breaker and its connection goes into the
idle pool.

A server that *answers* with an error is up, and does not open the breaker: "Too many
connections" (MySQL 1040, 1203; PostgreSQL 53300) says the server is full, not down.
Its idle connections, and the ones of other workers, still serve; a breaker opened by
one refused connect would turn them all away for half a second or more. That case is
what ``max_outstanding`` (below the server's limit) is for, and its error goes to the
one request that met it. Bad credentials or an unknown database answer too: a
configuration error, reported as it is. (psycopg gives a failed connect no SQLSTATE: the
server's answer is read from libpq's message, ``FATAL:  too many connections ...``.)
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections.abc import Callable
from typing import NoReturn

from . import _concurrency, drivers
from .errors import DatabaseUnavailable

logger = logging.getLogger("wsgi_dbpool")

FIRST_STEP = 0.5  # seconds from the first failed connect to the first probe
MAX_STEP = 30.0  # the backoff cap
JITTER = 0.2  # each step is drawn from [step * (1 - JITTER), step]


def unreachable(exc: BaseException) -> str | None:
    """Why a failed connect means the server could not be reached; None if it answered.

    Each driver judges its own errors (:meth:`wsgi_dbpool.drivers.Driver.unreachable`);
    an ``OSError`` no driver wrapped means the network.
    """
    for error in (exc, exc.__cause__):
        if error is None:
            continue
        reason = drivers.unreachable(error)
        if reason is not drivers.UNDECIDED:
            return reason  # type: ignore[no-any-return]
        if isinstance(error, OSError):
            return type(error).__name__
    return None


class Breaker:
    """The breaker of one alias in this process.

    :param probe: makes one connection and keeps it (raises if it cannot); called
        from the breaker's own background greenlet, one at a time.
    :param on_open: called in the background when the breaker opens (closes the idle
        connections, which point at the server that went away).
    :param count: counts an event (``unavailable``: a request answered at once).
    """

    __slots__ = (
        "_cause", "_count", "_epoch", "_generation", "_lock", "_on_open", "_probe", "_step", "alias",
        "open_until", "prober",
    )

    def __init__(
        self,
        alias: str,
        *,
        probe: Callable[[], None],
        on_open: Callable[[], object],
        count: Callable[[str], None],
    ) -> None:
        self.alias = alias
        self.open_until = 0.0  # 0.0: closed; else when (monotonic) the next probe is due
        self.prober = 0  # the ident of the greenlet probing now, allowed to connect
        self._cause = ""
        self._step = FIRST_STEP
        self._generation = -1
        self._epoch = 0  # bumped by each opening and by stop(): older probe timers do nothing
        self._lock = _concurrency.new_guard_lock()
        self._probe = probe
        self._on_open = on_open
        self._count = count

    def refuse(self) -> None:
        """Called while ``open_until`` is set: raise :class:`DatabaseUnavailable`.

        A breaker inherited through fork has no probe in this process: it is closed
        instead, and this process finds out for itself.
        """
        if self._generation != _concurrency._fork_generation:
            self.open_until = 0.0
            return
        self._refuse()

    def _refuse(self) -> NoReturn:
        self._count("unavailable")  # alias_pool.UNAVAILABLE
        raise DatabaseUnavailable(self.alias, max(self.open_until - time.monotonic(), 0.0),
                                  self._cause)

    def failed(self, exc: BaseException) -> None:
        """A connect failed (outside the probe): open the breaker if the server is out of reach."""
        cause = unreachable(exc)
        if cause is None:
            return
        with self._lock:
            if self.open_until and self._generation == _concurrency._fork_generation:
                return  # already open: a connect that started before it opened
            self._generation = _concurrency._fork_generation
            self._epoch += 1
            epoch = self._epoch
            self._step = FIRST_STEP
            self._cause = f"{cause}: {exc}"
            delay = _draw(self._step)
            self.open_until = time.monotonic() + delay
        logger.warning(
            "database %r unreachable (%s): answering requests that need it with 503 at once; "
            "probing with one connect in %.1fs, backing off up to %ds",
            self.alias, self._cause, delay, MAX_STEP,
        )
        _concurrency.call_later(0.0, self._on_open)
        _concurrency.call_later(delay, functools.partial(self._run_probe, epoch))

    def stop(self) -> None:
        """Close the breaker and cancel its probe (the pool is being closed)."""
        with self._lock:
            self._epoch += 1
            self.open_until = 0.0

    def _run_probe(self, epoch: int) -> None:
        if epoch != self._epoch or self._generation != _concurrency._fork_generation:
            return  # stopped, or a timer from before a fork
        self.prober = _concurrency.get_ident()
        try:
            self._probe()
        except Exception as exc:
            cause = unreachable(exc)
            if cause is not None:
                with self._lock:
                    self._step = min(self._step * 2, MAX_STEP)
                    delay = _draw(self._step)
                    self.open_until = time.monotonic() + delay
                    self._cause = f"{cause}: {exc}"
                logger.info(
                    "database %r still unreachable (%s); next probe in %.1fs",
                    self.alias, self._cause, delay,
                )
                _concurrency.call_later(delay, functools.partial(self._run_probe, epoch))
                return
            # It answered (with an error): it is up. Requests meet that error themselves.
            logger.info("database %r answers again (with %r)", self.alias, exc)
        finally:
            self.prober = 0
        with self._lock:
            if epoch != self._epoch:
                return
            self.open_until = 0.0
        logger.info("database %r reachable again: serving requests", self.alias)


def _draw(step: float) -> float:
    return step * (1.0 - JITTER * random.random())


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` for a wait of ``seconds``: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))

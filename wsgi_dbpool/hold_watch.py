"""Long-hold warnings: name the requests that keep their connections too long.

Like HikariCP's leak detection: a request still holding its pooled connections
``hold_warning`` seconds after it took them is logged once, with its method, path and
how long, while it is still running (a request that never ends is the one to find). A
timer (a greenlet under gevent, a thread otherwise) scans the few requests in flight;
the request itself is never slowed or interrupted.
"""

from __future__ import annotations

import itertools
import logging
import time

from . import _concurrency

logger = logging.getLogger("wsgi_dbpool")


class _Hold:
    """One request in flight: when it took its connections, what it is, whether warned."""

    __slots__ = ("label", "started", "warned")

    def __init__(self, label: str) -> None:
        self.started = time.monotonic()
        self.label = label
        self.warned = False


class HoldWatch:
    """Requests in flight, and a timer that warns about those past the threshold."""

    def __init__(self, threshold: float, aliases: tuple[str, ...]) -> None:
        self.threshold = threshold
        self.aliases = ", ".join(repr(a) for a in aliases)
        self.warned = 0
        self._active: dict[int, _Hold] = {}
        self._tokens = itertools.count()
        self._timer_generation = -1  # fork generation of the running timer, if any

    def start(self, label: str) -> int:
        token = next(self._tokens)
        self._active[token] = _Hold(label)
        if self._timer_generation != _concurrency.fork_generation():
            self._timer_generation = _concurrency.fork_generation()
            self._schedule()
        return token

    def finish(self, token: int) -> None:
        hold = self._active.pop(token, None)
        if hold is not None and hold.warned:
            logger.info(
                "%s released its connections of %s after %.1fs",
                hold.label, self.aliases, time.monotonic() - hold.started,
            )

    def _schedule(self) -> None:
        _concurrency.call_later(min(self.threshold / 2, 1.0), self._scan)

    def _scan(self) -> None:
        now = time.monotonic()
        for hold in list(self._active.values()):
            held = now - hold.started
            if not hold.warned and held >= self.threshold:
                hold.warned = True
                self.warned += 1
                logger.warning(
                    "%s has held its connections of %s for %.1fs (hold_warning=%ss)",
                    hold.label, self.aliases, held, self.threshold,
                )
        if self._active:
            self._schedule()
        else:
            self._timer_generation = -1

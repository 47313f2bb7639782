"""The pool's settings: declared once, checked once, shared by every layer.

:class:`PoolSettings` is what ``PoolingMiddleware`` (and the Celery integration) is
built from: each knob is declared here with its default, and checked here with one
message per rule that names the argument, the value and the fix. The layers below
(:class:`~wsgi_dbpool.alias_pool.AliasPool`, :class:`~wsgi_dbpool.pool.Pool`) take it
as it is, already valid.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

ResetMode = Literal["transaction", "session"]
RESET_MODES: tuple[ResetMode, ...] = ("transaction", "session")
HoldMode = Literal["request", "lazy", "transaction"]
HOLD_MODES: tuple[HoldMode, ...] = ("request", "lazy", "transaction")
SessionStateMode = Literal["pin", "raise", "ignore"]
SESSION_STATE_MODES: tuple[SessionStateMode, ...] = ("pin", "raise", "ignore")


@dataclass(frozen=True)
class PoolSettings:
    """Every pool knob (see ``PoolingMiddleware`` for what each one means)."""

    size: int = 4
    max_outstanding: int | None = None
    timeout: float | None = 30.0
    ping_after: float | None = 1.0
    linger: float = 5.0
    hold_warning: float | None = None
    reset: ResetMode = "transaction"
    hold: HoldMode = "request"
    prewarm: int = 0
    max_lifetime: float | None = None
    lifetime_jitter: float = 0.1
    ping_timeout: float | None = 5.0
    session_state: SessionStateMode = "pin"
    fail_fast: bool = True
    max_waiting: int | None = None
    statement_timeout: float | None = None
    max_hold: float | None = None

    def __post_init__(self) -> None:
        check_int("size", self.size, minimum=1)
        if self.max_outstanding is not None:
            check_int("max_outstanding", self.max_outstanding, minimum=1)
            if self.max_outstanding < self.size:
                raise ValueError(
                    f"max_outstanding={self.max_outstanding} is below size={self.size}: the "
                    f"pool could never fill; raise max_outstanding to at least {self.size}, "
                    f"or lower size"
                )
        check_seconds("timeout", self.timeout)
        check_seconds("ping_after", self.ping_after)
        if self.linger is None:
            raise TypeError("linger must be a number of seconds (0 closes surplus at once)")
        check_seconds("linger", self.linger)
        if self.reset not in RESET_MODES:
            raise ValueError(
                f"reset must be one of {RESET_MODES!r}, got {self.reset!r}: 'transaction' "
                f"(free: rolls back what was left open) or 'session' (a few round trips "
                f"more: wipes session variables, temporary tables and locks too)"
            )
        check_positive_seconds("hold_warning", self.hold_warning, "to turn the warning off")
        if self.hold not in HOLD_MODES:
            raise ValueError(
                f"hold must be one of {HOLD_MODES!r}, got {self.hold!r}: 'request' (a "
                f"connection for the whole request), 'lazy' (from the first query to the "
                f"end of the request) or 'transaction' (only while a statement or a "
                f"transaction runs)"
            )
        if self.hold == "transaction" and self.reset == "session":
            raise ValueError(
                "hold='transaction' cannot go with reset='session': the session would be "
                "reset after every statement (four round trips each), and session state "
                "does not survive between transactions anyway; use reset='transaction', or "
                "hold='lazy' to keep a session for the whole request"
            )
        if self.session_state not in SESSION_STATE_MODES:
            raise ValueError(
                f"session_state must be one of {SESSION_STATE_MODES!r}, got "
                f"{self.session_state!r}: 'pin' (a unit of work that sets session state keeps "
                f"its connection to its end, and the session is reset on return), 'raise' (refuse "
                f"such statements: to find them, in CI) or 'ignore' (see nothing, reset nothing)"
            )
        self._check_lifecycle()
        self._check_limits()

    def _check_lifecycle(self) -> None:
        check_int("prewarm", self.prewarm, minimum=0)
        if self.prewarm > self.size:
            raise ValueError(
                f"prewarm={self.prewarm} is above size={self.size}: the pool keeps at most "
                f"size idle connections; lower prewarm to at most {self.size}, or raise size"
            )
        check_positive_seconds("max_lifetime", self.max_lifetime, "to keep Django's CONN_MAX_AGE rule")
        jitter = self.lifetime_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, numbers.Real):
            raise TypeError(f"lifetime_jitter must be a fraction like 0.1, got {jitter!r}")
        if not 0 <= jitter < 1:
            raise ValueError(
                f"lifetime_jitter must be >= 0 and < 1 (a fraction of max_lifetime), got "
                f"{jitter!r}: 0.1 draws each lifetime from [0.9 * max_lifetime, max_lifetime]"
            )
        check_positive_seconds(
            "ping_timeout", self.ping_timeout, "to let the health check wait as long as the driver does"
        )

    def _check_limits(self) -> None:
        if not isinstance(self.fail_fast, bool):
            raise TypeError(f"fail_fast must be True or False, got {self.fail_fast!r}")
        if self.max_waiting is not None:
            check_int("max_waiting", self.max_waiting, minimum=0)
            if self.max_outstanding is None:
                raise ValueError(
                    f"max_waiting={self.max_waiting} needs max_outstanding: with no cap no "
                    f"request ever waits; set max_outstanding, or leave max_waiting None"
                )
        check_positive_seconds(
            "statement_timeout", self.statement_timeout, "to let statements run as long as the server allows"
        )
        if self.statement_timeout is not None and self.statement_timeout < 0.001:
            raise ValueError(
                f"statement_timeout must be at least 0.001 seconds (the servers count "
                f"milliseconds; below, MariaDB would read 0: no limit), got {self.statement_timeout!r}"
            )
        check_positive_seconds(
            "max_hold", self.max_hold, "to let a unit of work hold a connection as long as it runs"
        )
        if (
            self.max_hold is not None
            and self.statement_timeout is not None
            and self.max_hold <= self.statement_timeout
        ):
            raise ValueError(
                f"max_hold={self.max_hold} is not above statement_timeout={self.statement_timeout}: "
                f"every statement the server lets run to its timeout would have its connection "
                f"taken back first; raise max_hold above statement_timeout, or lower the latter"
            )


def check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")


def check_positive_seconds(name: str, value: object, none_means: str) -> None:
    """A number of seconds above 0, or None (which ``none_means``)."""
    check_seconds(name, value)
    if value == 0:
        raise ValueError(f"{name} must be > 0 seconds, or None {none_means}")


def check_seconds(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds or None, got {value!r}")
    if not math.isfinite(value):  # NaN passes every comparison below; inf is None's job
        raise ValueError(
            f"{name} must be a finite number of seconds, got {value!r}: write None for no limit"
        )
    if value < 0:
        raise ValueError(f"{name} must be >= 0 seconds (or None for no limit), got {value!r}")


class Knobs:
    """The settings as read-only attributes of what is built from them (``app.size``):
    the middleware, the pool core and the Celery task pool. ``prewarm`` reads as
    ``prewarm_count``, since ``prewarm()`` is a method there."""

    settings: PoolSettings

    @property
    def size(self) -> int:
        return self.settings.size

    @property
    def max_outstanding(self) -> int | None:
        return self.settings.max_outstanding

    @property
    def timeout(self) -> float | None:
        return self.settings.timeout

    @property
    def ping_after(self) -> float | None:
        return self.settings.ping_after

    @property
    def linger(self) -> float:
        return self.settings.linger

    @property
    def hold_warning(self) -> float | None:
        return self.settings.hold_warning

    @property
    def reset(self) -> ResetMode:
        return self.settings.reset

    @property
    def hold(self) -> HoldMode:
        return self.settings.hold

    @property
    def prewarm_count(self) -> int:
        return self.settings.prewarm

    @property
    def max_lifetime(self) -> float | None:
        return self.settings.max_lifetime

    @property
    def lifetime_jitter(self) -> float:
        return self.settings.lifetime_jitter

    @property
    def ping_timeout(self) -> float | None:
        return self.settings.ping_timeout

    @property
    def session_state(self) -> SessionStateMode:
        return self.settings.session_state

    @property
    def fail_fast(self) -> bool:
        return self.settings.fail_fast

    @property
    def max_waiting(self) -> int | None:
        return self.settings.max_waiting

    @property
    def statement_timeout(self) -> float | None:
        return self.settings.statement_timeout

    @property
    def max_hold(self) -> float | None:
        return self.settings.max_hold

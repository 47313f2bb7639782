"""The return-path verdict: what must happen to a returned wrapper before anyone else gets it.

One function, :func:`judge`, reads the connection's *real* state in one fixed order and
answers with one action and its reason. It trusts what the driver holds (the socket
open or not, a transaction open, the server's autocommit, a result still on the wire)
over Django's bookkeeping, which misses SQL sent behind its back (``SET autocommit =
0``, ``BEGIN``) and interrupts that land inside the driver (``gevent.Timeout``). All of
it is read from memory: the clean path costs no round trip.

The order, and why:

0. ``fail over`` when a statement failed with a read-only or failover error
   (:func:`~wsgi_dbpool.failover.failover_error`): the connection points at a
   demoted or vanished server even if it still answers a ping, so it is closed (or
   replaced inside ``atomic()``) and the alias's idle connections with it.
1. ``replace`` inside ``atomic()``: Django forbids a rollback there, and a wrapper closed
   inside ``atomic()`` stays marked closed-in-transaction: only a new wrapper is clean.
2. ``keep`` when not connected: it connects on first use, fresh.
3. ``close`` when the work was interrupted mid-way (the caller says so), or the driver
   says the connection is closed, mid-command, or mid-result: it cannot be handed on.
4. ``roll back`` when a transaction is open, or autocommit is not what the alias is
   configured for (in Django's flags or on the server).
5. ``check`` after a database error: Django's own rule, keep it only if it answers.
6. ``close`` when older than its lifetime (``CONN_MAX_AGE``, or the pool's own
   ``max_lifetime`` drawn with jitter when the connection was opened).
7. ``reset`` with ``reset="session"``, or when a statement changed the session state
   (seen at the execute seam: :mod:`wsgi_dbpool.session_state`): wipe the server session.
8. ``keep``: clean.

After ``roll back`` or ``check``, a wrapper still connected is judged again from step 6
on (a session reset still applies).
"""

from __future__ import annotations

import enum
import time
from typing import Any

from .drivers import BY_TYPE, UNUSABLE, driver_trouble
from .record import Record


class Action(enum.Enum):
    """What the return path does to a returned wrapper."""

    KEEP = "keep"
    ROLL_BACK = "roll back"
    CHECK = "check"
    RESET = "reset"
    CLOSE = "close"
    REPLACE = "replace"
    FAIL_OVER = "fail over"
    DRAINED = "drained"  # opened before the last drain(): close, give back a new wrapper


KEEP = Action.KEEP
ROLL_BACK = Action.ROLL_BACK
CHECK = Action.CHECK
RESET = Action.RESET
CLOSE = Action.CLOSE
REPLACE = Action.REPLACE
FAIL_OVER = Action.FAIL_OVER
DRAINED = Action.DRAINED

# What the driver's trouble calls for: a connection that cannot be used is closed; any
# other trouble (a transaction, autocommit switched, a result unread) is rolled back.
_ACTION_FOR = dict.fromkeys(UNUSABLE, CLOSE)

# judge()'s ``trouble`` when the caller has not read the driver's state.
UNKNOWN: Any = object()

CLEAN = "clean"
NOT_CONNECTED = "not connected"
INTERRUPTED = "the work was interrupted mid-way"
IN_ATOMIC = "it was returned inside an atomic block"
AUTOCOMMIT_LEFT_OFF = "its autocommit was left off"
ERRORS_OCCURRED = "a database error occurred"
TOO_OLD = "it is older than CONN_MAX_AGE"
PAST_LIFETIME = "it is past its max_lifetime"
SESSION = "reset='session'"
SESSION_CHANGED = "its session state was changed"


def judge(
    wrapper: Any, broken: bool, reset_session: bool, trouble: Any = UNKNOWN
) -> tuple[Action, str]:
    """The action the returned ``wrapper`` needs, and why (steps 0-8 above). ``trouble``:
    what :func:`~wsgi_dbpool.drivers.driver_trouble` just answered for this wrapper's
    configured autocommit, if the caller asked it (a front after a statement)."""
    record: Record = wrapper._wsgi_dbpool
    failover = record.failover
    if failover is not None:
        return FAIL_OVER, failover
    if wrapper.in_atomic_block:
        return REPLACE, IN_ATOMIC
    raw = wrapper.connection
    if raw is None:
        return KEEP, NOT_CONNECTED
    if broken:
        return CLOSE, INTERRUPTED
    configured = wrapper.settings_dict["AUTOCOMMIT"]
    if trouble is UNKNOWN:
        driver = BY_TYPE.get(type(raw))  # driver_trouble() inline: the per-return path
        trouble = (
            driver.trouble(raw, configured) if driver is not None else driver_trouble(raw, configured)
        )
    if trouble is not None:
        return _ACTION_FOR.get(trouble, ROLL_BACK), trouble  # close if unusable
    if wrapper.autocommit != configured:
        return ROLL_BACK, AUTOCOMMIT_LEFT_OFF
    if wrapper.errors_occurred:
        return CHECK, ERRORS_OCCURRED
    return judge_settled(wrapper, reset_session, record)


def judge_settled(
    wrapper: Any, reset_session: bool, record: Record | None = None
) -> tuple[Action, str]:
    """Steps 6-8, for a connected wrapper with no transaction and no error pending."""
    if record is None:
        record = wrapper._wsgi_dbpool
    close_at = wrapper.close_at
    expires = record.expires
    if close_at is not None or expires is not None:
        now = time.monotonic()
        if close_at is not None and now >= close_at:
            return CLOSE, TOO_OLD
        if expires is not None and now >= expires:
            return CLOSE, PAST_LIFETIME
    if record.session is not None:  # set at the execute seam (session_state)
        return RESET, SESSION_CHANGED
    if reset_session:
        return RESET, SESSION
    return KEEP, CLEAN

"""One record per pooled wrapper: everything this library keeps about a connection.

Django's ``DatabaseWrapper`` is the pooled object (so every backend, setting and signal
keeps working); what the pool knows about it lives in one slotted :class:`Record` on
the wrapper (SQLAlchemy's ``_ConnectionRecord``), set when the wrapper is made, so that
it is typed and mypy checks every read and write: ``record_of(wrapper).taken``.
"""

from __future__ import annotations

from typing import Any, Protocol

from .work import Work


class Owner(Protocol):
    """What a record asks of the alias pool that made its wrapper (``AliasPool``)."""

    def note_opened(self, wrapper: Any) -> None: ...


class Lender(Protocol):
    """What a record asks of the front that made its wrapper (``front.Front``)."""

    per_transaction: bool

    def detach_if_idle(self, wrapper: Any) -> None: ...

# The wrapper attribute that holds the record.
RECORD_ATTR = "_wsgi_dbpool"


class Record:
    """What the pool keeps about one pooled wrapper (a carrier, or a front)."""

    __slots__ = (
        "borrower", "carrier", "copied_from", "errors", "expires", "failover", "front",
        "hold_token", "holder", "hooks", "known", "open", "opened_at", "pool", "ran", "revoked",
        "session", "setup", "taken", "work",
    )

    def __init__(self, pool: Owner) -> None:
        self.pool = pool  # the alias pool that made the wrapper
        self.holder: int | None = None  # the ident of the greenlet holding it
        # The pool's own statement hooks, Django execute_wrapper-shaped, run around the
        # user's ``execute_wrappers`` (which they stay out of): see _internals.hook_cursors.
        self.hooks: list[Any] = []
        # The server connection: opened and not yet seen closed; when (monotonic); when it
        # reaches its max_lifetime (None: no limit); when it was last checked out.
        self.open = False
        self.opened_at = 0.0
        self.expires: float | None = None
        self.taken = 0.0
        # Seen at the execute seam: a failover error (the reason), what changed the session
        # (a label), whether a statement of this work ran, Django's own session set-up running.
        self.failover: str | None = None
        self.session: str | None = None
        self.ran = False
        self.setup = False
        # A front wrapper's (hold="lazy"/"transaction"): its Front, the carrier it borrows
        # while attached, the work it serves, the carrier whose connect() state it last
        # took, and its long-hold watch token while attached.
        self.front: Lender | None = None
        self.carrier: Any = None
        self.work: Work | None = None
        self.copied_from: Any = None
        self.hold_token = -1
        # How many attributes the front had when it attached: more at the detach, and it
        # may have learnt a server cache (_internals.SERVER_CACHES) to leave to the carrier.
        self.known = 0
        # A front's errors_occurred from before its attachment (the work's, which Django
        # keeps until the request ends): shown again once the attachment's own is judged.
        self.errors = False
        # A carrier's: the front wrapper borrowing it now (None: its holder uses it itself),
        # and, once max_hold took it back, its max_hold.Revocation until the holder returns it.
        self.borrower: Any = None
        self.revoked: Any = None


def record_of(wrapper: Any) -> Record:
    """The record of a wrapper the pool made."""
    record: Record = wrapper._wsgi_dbpool
    return record


def record_or_none(wrapper: Any) -> Record | None:
    """The record of ``wrapper``, or None for a wrapper the pool did not make."""
    record: Record | None = wrapper.__dict__.get(RECORD_ATTR)
    return record

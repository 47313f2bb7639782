"""The response iterable that returns the connections when the server closes it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .lease import interrupted

if TYPE_CHECKING:
    import collections

logger = logging.getLogger("wsgi_dbpool")


class ClosingIterable:
    """Wraps the inner app's iterable; ``close()`` closes it, then releases, once.

    PEP 3333 servers call ``close()`` after the last chunk, after an error while
    iterating, and when the client goes away, so a streaming response keeps its
    connections until its generator is done. If a broken server never calls
    ``close()``, the finaliser queues the release for the middleware to finish
    outside the garbage collector (which may run while a pool lock is held).
    """

    __slots__ = ("_abandoned", "_broken", "_closed", "_iterable", "_release")

    def __init__(
        self,
        iterable: Iterable[bytes],
        release: Callable[[bool], None],
        abandoned: collections.deque[Callable[[bool], None]],
    ) -> None:
        self._iterable = iterable
        self._release = release
        self._abandoned = abandoned
        self._closed = False
        self._broken = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._iterable
        except GeneratorExit:
            # The server stopped iterating between chunks (client gone): the
            # connection is idle, not mid-query, and stays reusable.
            raise
        except BaseException as exc:
            # Raised while producing a chunk, perhaps in the middle of a query.
            self._broken = interrupted(exc)
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            self._release(self._broken)  # an error from the inner close() still propagates

    def __del__(self) -> None:
        if not self._closed:
            self._closed = True
            self._abandoned.append(self._release)


def hook_file_wrapper(result: Any, release: Callable[[bool], None]) -> bool:
    """Chain ``release`` onto a server file wrapper's ``close``, keeping its sendfile path.

    Servers (gunicorn among them) send a response with ``sendfile()`` only when the
    iterable they get back is their own ``wsgi.file_wrapper`` object, so it must be
    returned unwrapped. Such wrappers keep ``close`` as a per-object attribute (Django's
    handler relies on that too); returns False when this one does not.
    """
    inner_close = getattr(result, "close", None)
    state = {"closed": False}

    def close() -> None:
        if state["closed"]:
            return
        state["closed"] = True
        try:
            if inner_close is not None:
                inner_close()
        finally:
            release(False)

    try:
        result.close = close
    except (AttributeError, TypeError):
        return False
    return True

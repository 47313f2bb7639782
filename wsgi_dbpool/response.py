"""The response iterable that returns the connections when the server closes it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import _concurrency
from .lease import interrupted

logger = logging.getLogger("wsgi_dbpool")


class ClosingIterable:
    """Wraps the inner app's iterable; ``close()`` closes it, then releases, once.

    PEP 3333 servers call ``close()`` after the last chunk, after an error while
    iterating, and when the client goes away, so a streaming response keeps its
    connections until its generator is done. If a broken server never calls
    ``close()``, the finaliser schedules the release elsewhere (see
    :func:`~wsgi_dbpool._concurrency.call_soon`): never inside the garbage collector,
    which may run while a pool lock is held, and at once, so that a request waiting
    for the connection is not kept waiting until the next call into the middleware.
    """

    __slots__ = ("_broken", "_closed", "_iterable", "_release")

    def __init__(self, iterable: Iterable[bytes], release: Callable[[bool], None]) -> None:
        self._iterable = iterable
        self._release = release
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
        except BaseException as exc:
            # The inner close() may run queries (a generator's finally, Django's
            # request_finished): interrupted there, the connection is in doubt.
            self._broken = self._broken or interrupted(exc)
            raise
        finally:
            self._release(self._broken)  # an error from the inner close() still propagates

    def __del__(self) -> None:
        if not self._closed:
            self._closed = True
            _concurrency.call_soon(_ReleaseDropped(self._release))


class ClosingContent(ClosingIterable):
    """A :class:`ClosingIterable` for a body already made (Django's ``HttpResponse``, whose
    ``streaming`` is False): iterating it runs no query and cannot be interrupted mid-way,
    so the server iterates it directly, with no generator in between."""

    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._iterable)


class _ReleaseDropped:
    """Returns the connections of a response nobody closed, away from the finaliser."""

    __slots__ = ("release",)

    def __init__(self, release: Callable[[bool], None]) -> None:
        self.release = release

    def __call__(self) -> None:
        logger.warning(
            "a response was dropped without close() (a server that breaks PEP 3333?): "
            "returned its connections when it was garbage-collected"
        )
        try:
            self.release(False)
        except Exception:
            logger.exception("returning the connections of a dropped response failed")


def hook_file_wrapper(result: Any, release: Callable[[bool], None]) -> bool:
    """Chain ``release`` onto a server file wrapper's ``close``, keeping its sendfile path.

    Servers (gunicorn among them) send a response with ``sendfile()`` only when the
    iterable they get back is their own ``wsgi.file_wrapper`` object, so it must be
    returned unwrapped. Such wrappers keep ``close`` as a per-object attribute (Django's
    handler relies on that too); returns False when this one does not.
    """
    inner_close = getattr(result, "close", None)
    closed = False

    def close() -> None:
        nonlocal closed
        if closed:
            return
        closed = True
        broken = False
        try:
            if inner_close is not None:
                inner_close()
        except BaseException as exc:
            broken = interrupted(exc)
            raise
        finally:
            release(broken)

    try:
        result.close = close
    except (AttributeError, TypeError):
        return False
    return True

"""A test runner for Django's own suite that puts every unit of work through the pool.

With ``WSGI_DBPOOL_HOLD`` set (``request``, ``lazy``, ``transaction``), a
``PoolingMiddleware`` over both aliases is built once the test databases exist, and:

- every test that uses a database runs inside ``application.checkout()`` (its set-up,
  the test and its tear-down: one unit of work, as a request is);
- a ``TestCase`` class runs inside one more, from ``setUpClass`` to its class cleanups:
  its class-wide transaction (``setUpTestData``'s rows) is one unit of work that its
  tests' own ``checkout()`` joins, as nested ``checkout()`` blocks do.

Threads the tests start are greenlets (the run is under ``python -m gevent.monkey``, as
a gunicorn gevent worker is): under ``"lazy"``/``"transaction"`` they take pooled
connections, under ``"request"`` their own, as in production.

Every test's outcome goes to the JSON file named by ``WSGI_DBPOOL_SUITE_RESULTS``.
"""

from __future__ import annotations

import contextlib
import json
import os
import unittest
from typing import Any, ClassVar

from django.test.runner import DiscoverRunner


class RecordingResult(unittest.TextTestResult):
    """Keeps ``{test id: "pass" | "fail" | "error" | "skip"}``."""

    outcomes: ClassVar[dict[str, str]] = {}  # one run per process: shared by design

    def _note(self, test: Any, outcome: str) -> None:
        ident = test.id()
        if self.outcomes.get(ident) not in ("fail", "error"):  # subtests: the worst wins
            self.outcomes[ident] = outcome

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._note(test, "pass")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._note(test, "fail")

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._note(test, "error")

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._note(test, "skip")

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._note(test, "pass")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._note(test, "fail")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._note(test, "fail")


class PooledRunner(DiscoverRunner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold = os.environ.get("WSGI_DBPOOL_HOLD") or None
        self.application: Any = None
        self._undo: list[Any] = []

    def get_resultclass(self) -> Any:
        return RecordingResult

    def setup_databases(self, **kwargs: Any) -> Any:
        config = super().setup_databases(**kwargs)
        if self.hold is not None:
            from django.db import connections

            from wsgi_dbpool import PoolingMiddleware

            # As the plain run's first TestCase would (it closes every connection at its
            # end): the main thread's own connections, opened to set the databases up,
            # are not left open under the units of work, which close pooled ones instead.
            connections.close_all()

            self.application = PoolingMiddleware(
                lambda environ, start_response: [], aliases=["default", "other"],
                hold=self.hold, size=4, max_outstanding=8, timeout=20,
            )
            self._undo = _route_through(self.application)
        return config

    def teardown_databases(self, old_config: Any, **kwargs: Any) -> None:
        for undo in self._undo:
            undo()
        if self.application is not None:
            self.application.close()
        super().teardown_databases(old_config, **kwargs)

    def run_suite(self, suite: Any, **kwargs: Any) -> Any:
        try:
            return super().run_suite(suite, **kwargs)
        finally:
            path = os.environ.get("WSGI_DBPOOL_SUITE_RESULTS")
            if path:
                with open(path, "w") as out:
                    json.dump(RecordingResult.outcomes, out, indent=0, sort_keys=True)


def _route_through(application: Any) -> list[Any]:
    """Wrap Django's test classes (this test process only) so that each unit of work
    runs inside ``application.checkout()``; returns what undoes it."""
    from django.test import SimpleTestCase, TestCase

    call = SimpleTestCase.__call__
    set_up_class = TestCase.__dict__["setUpClass"]

    def __call__(self: Any, result: Any = None) -> Any:
        if not self.databases:
            return call(self, result)
        with application.checkout():
            return call(self, result)

    def setUpClass(cls: Any) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(application.checkout())
        # Class cleanups run last-in first-out, after tearDownClass: the unit of work ends
        # after Django's own cleanups (which undo what it did to the bound wrappers), and
        # also when setUpClass fails.
        cls.addClassCleanup(stack.close)
        set_up_class.__func__(cls)

    SimpleTestCase.__call__ = __call__
    TestCase.setUpClass = classmethod(setUpClass)

    def undo() -> None:
        SimpleTestCase.__call__ = call
        TestCase.setUpClass = set_up_class

    return [undo]

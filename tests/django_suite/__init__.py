"""Django's own test suite, run plainly and with every unit of work through the pool.

``settings`` is the settings module Django's ``tests/runtests.py`` is given;
``runner.PooledRunner`` (its ``TEST_RUNNER``) binds the pool around each test, and around
each ``TestCase`` class (whose class-wide transaction is one unit of work), and records
every test's outcome for ``tests/test_django_suite.py`` to compare.
"""

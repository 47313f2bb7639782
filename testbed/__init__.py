"""The test bed the tests, the benchmarks and the demo share: throwaway servers and the
means to start and break them. Not part of the installed library (``setup.py`` packages
``wsgi_dbpool`` alone); it runs from a checkout of the repository.

- ``servers``: loopback ports, Debian packages installed when missing, gunicorn on a free
  port, the peak-connections sampler, a bare Django site's settings, and the
  ``DatabaseServer`` vocabulary the servers below speak.
- ``mariadb``, ``postgres``, ``pgbouncer``, ``redis``: one throwaway server each
  (``python -m testbed.mariadb`` and the like start one for a person to poke at).
- ``faultproxy``: a TCP proxy that blackholes, resets, slows or retargets database traffic.
- ``celery_project``, ``celery_settings``, ``celery_harness``: a real ``celery worker``
  and the Django project it runs.

What only the tests use (the test site, its gunicorn app, the HTTP and WSGI clients,
the subprocess scripts, Django's own suite's runner) stays in ``tests/``.
"""

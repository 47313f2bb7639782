"""Steer every worker of a running server: ``python -m wsgi_dbpool drain|pause|resume --pid N``.

:meth:`PoolingMiddleware.drain`, :meth:`~PoolingMiddleware.pause` and
:meth:`~PoolingMiddleware.resume` act on one process. A gunicorn server is a master and
its workers, each with its own pool, so the command works in two steps:

1. it writes the wanted state to a *control file* named after the master's pid
   (``<tempdir>/wsgi_dbpool-<pid>.control``, JSON: ``paused``, and a ``drain`` count that
   each ``drain`` bumps), replaced atomically;
2. it sends :data:`CONTROL_SIGNAL` (a real-time signal, ``SIGRTMIN+6``, which neither
   gunicorn nor gevent uses) to every child of that pid (the pid itself when it has
   none) that has a handler for it, and waits until each one acknowledges.

A worker installs the handler when it starts serving (its first request, ``checkout()``
or ``prewarm()``), and, with ``--preload`` (the middleware built in the master), right
after the fork, in the child: never in the master. On the signal it reads the file and
applies what changed: ``drain()`` when the count went up, ``pause()``/``resume()`` when
``paused`` did, then writes ``<control file>.ack.<pid>``. It also reads the file when it
installs the handler, so a worker started while paused (``max_requests``, a crash)
starts paused. A Celery worker (``pool_tasks``) installs it at start, before any task
(``--pid``: the worker's main pid; its prefork children are its children). A process
with no handler yet (it has served nothing: it holds no
connection) is never signalled: a real-time signal it does not catch would end it.

The file is trusted only when this user owns it and nobody else may write to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Protocol

from . import _concurrency


class DjangoPool(Protocol):
    """What the handler steers: :class:`wsgi_dbpool.core.DjangoPool` (named by what it
    does, so that this module imports nothing above it)."""

    def drain(self, alias: str | None = None) -> None: ...
    def pause(self, alias: str | None = None) -> None: ...
    def resume(self, alias: str | None = None) -> None: ...


logger = logging.getLogger("wsgi_dbpool")

# SIGRTMIN is 34 with glibc; gunicorn's workers use QUIT, TERM, INT, ABRT, USR1, WINCH and
# its master HUP, TTIN, TTOU, USR2, CHLD; gevent none of the real-time ones.
CONTROL_SIGNAL = int(getattr(signal, "SIGRTMIN", 34)) + 6
COMMANDS = ("drain", "pause", "resume")

_pools: weakref.WeakSet[DjangoPool] = weakref.WeakSet()
_installed = [-1]  # the fork generation the handler was installed in
_applied: dict[str, Any] = {}  # what this process applied from the file: drain, paused
_at_fork = [False]


def control_path(pid: int) -> Path:
    """The control file of the server whose master (or only process) is ``pid``."""
    return Path(tempfile.gettempdir()) / f"wsgi_dbpool-{pid}.control"


def register(pool: DjangoPool) -> None:
    """Called by each pool core when it is built (a middleware's, a Celery task pool's):
    the handler will steer it."""
    _pools.add(pool)
    if not _at_fork[0] and hasattr(os, "register_at_fork"):
        _at_fork[0] = True
        os.register_at_fork(after_in_child=_after_fork)


def _after_fork() -> None:
    """In a forked child of a process that built a middleware (``--preload``)."""
    _applied.clear()
    if _pools:
        install(at_fork=True)


def install(at_fork: bool = False) -> None:
    """Install the handler in this process (once per fork generation), then apply the
    control file as it is now. Only the main (OS) thread can install a signal handler:
    any greenlet of it, under gevent; elsewhere this is tried again at the next fork."""
    generation = _concurrency.fork_generation()
    if _installed[0] == generation:
        return
    _installed[0] = generation
    try:
        signal.signal(CONTROL_SIGNAL, _on_signal)
    except (ValueError, OSError) as exc:  # not the main thread, or no such signal
        logger.debug("no control signal handler: %r", exc)
        return
    if not at_fork:  # right after a fork gevent may not have patched threading yet
        _concurrency.prepare_deferred_calls()
    _apply(starting=True)


def _on_signal(signum: int, frame: object) -> None:
    # A signal handler runs between two bytecodes of whatever ran (the gevent hub, or the
    # pool inside its guard lock): it only queues the work, with no lock taken (a greenlet
    # under gevent, else the daemon thread of prepare_deferred_calls(), which the first
    # request starts if the fork did not).
    _concurrency.call_soon(_apply)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    if stat.st_uid != os.geteuid() or stat.st_mode & 0o022:
        logger.warning("ignored the control file %s: not owned by this user, or writable by others",
                       path)
        return None
    state = json.loads(path.read_text(encoding="utf-8"))
    return state if isinstance(state, dict) else None


def _apply(starting: bool = False) -> None:
    """Read the control file (the parent's, else this process's own) and apply it."""
    found = _find_state()
    if found is None:
        return
    path, state = found
    drain, paused = int(state.get("drain", 0)), bool(state.get("paused", False))
    pools = list(_pools)
    if starting:  # a new process: every connection it opens is new; only a pause applies
        _applied["drain"] = drain
    elif drain > _applied.get("drain", 0):
        logger.warning("control file %s: drain", path)
        for pool in pools:
            pool.drain()
    _applied["drain"] = drain
    if paused != _applied.get("paused", False):
        for pool in pools:
            pool.pause() if paused else pool.resume()
    _applied["paused"] = paused
    if not starting:
        ack = path.with_name(f"{path.name}.ack.{os.getpid()}")
        ack.write_text(json.dumps({"serial": state.get("serial", 0)}), encoding="utf-8")


def _find_state() -> tuple[Path, dict[str, Any]] | None:
    """The control file that applies here (the parent's, else this process's own) and
    what it says; None if there is none."""
    for owner in (os.getppid(), os.getpid()):
        path = control_path(owner)
        try:
            state = _read(path)
        except (OSError, ValueError) as exc:
            logger.warning("could not read the control file %s: %r", path, exc)
            continue
        if state is not None:
            return path, state
    return None


# -- the command ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def _catches(pid: int, signum: int) -> bool:
    """Whether ``pid`` has a handler for ``signum`` (``SigCgt`` in /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def _write_state(path: Path, command: str) -> int:
    state: dict[str, Any] = {"paused": False, "drain": 0, "serial": 0}
    try:
        state.update(_read(path) or {})
    except (OSError, ValueError):
        pass
    state["serial"] = int(state["serial"]) + 1
    if command == "drain":
        state["drain"] = int(state["drain"]) + 1
    else:
        state["paused"] = command == "pause"
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh)
    os.replace(tmp, path)
    return int(state["serial"])


def _acked(path: Path, pid: int, serial: int) -> bool:
    try:
        return int(json.loads(path.with_name(f"{path.name}.ack.{pid}").read_text())["serial"]) >= serial
    except (OSError, ValueError, KeyError, TypeError):
        return False


def main(argv: list[str]) -> int:
    args = _parse(argv)
    if not Path(f"/proc/{args.pid}").exists():
        print(f"no process {args.pid}", file=sys.stderr)
        return 2
    path = control_path(args.pid)
    serial = _write_state(path, args.command)
    signalled, skipped = _signal(_children(args.pid) or [args.pid])
    waiting = _wait_for_acks(path, signalled, serial, args.timeout)
    done = [pid for pid in signalled if pid not in waiting]
    print(f"{args.command}: applied by {len(done)} process(es) {done}")
    if skipped:
        print(f"not serving yet, not signalled (they read {path} when they start): {skipped}")
    if waiting:
        print(f"no acknowledgement within {args.timeout}s: {waiting}", file=sys.stderr)
        return 1
    return 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wsgi_dbpool",
        description="Drain, pause or resume the pools of every worker of a running server.",
    )
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--pid", type=int, required=True,
                        help="the gunicorn master's pid, a Celery worker's main pid, or a "
                             "single serving process's")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for every worker to acknowledge (default 10)")
    return parser.parse_args(argv)


def _signal(targets: list[int]) -> tuple[list[int], list[int]]:
    """Signal those of ``targets`` that handle the control signal (an unhandled real-time
    signal would kill the process); the signalled and the skipped."""
    signalled, skipped = [], []
    for pid in targets:
        if _catches(pid, CONTROL_SIGNAL):
            os.kill(pid, CONTROL_SIGNAL)
            signalled.append(pid)
        else:
            skipped.append(pid)
    return signalled, skipped


def _wait_for_acks(path: Path, signalled: list[int], serial: int, timeout: float) -> list[int]:
    """Wait until every signalled process acknowledged ``serial``; those that did not."""
    deadline = time.monotonic() + timeout
    waiting = list(signalled)
    while waiting and time.monotonic() < deadline:
        waiting = [pid for pid in waiting if not _acked(path, pid, serial)]
        if waiting:
            time.sleep(0.05)
    for pid in signalled:
        if pid not in waiting:
            path.with_name(f"{path.name}.ack.{pid}").unlink(missing_ok=True)
    return waiting

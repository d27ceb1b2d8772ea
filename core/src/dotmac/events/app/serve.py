"""The worker runner behind ``dotmac-events run``: signals, graceful drain, worker processes.

Exit codes (also the CLI's):

- ``0``: stopped cleanly; every in-flight handler finished within the grace period.
- ``1``: the grace period expired; handlers still running were cancelled and their
  events released for redelivery (nothing is lost: they were never acked).
- ``2``: usage or configuration error (a bad ``module:app``, URL or option).
- ``3``: startup failed (the bus could not connect, a startup hook raised).
- ``4``: forced by a second SIGTERM/SIGINT; un-acked events are redelivered later.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import ConfigurationError
from ._app import App, DrainReport

__all__ = [
    "EXIT_FORCED",
    "EXIT_GRACE_EXPIRED",
    "EXIT_OK",
    "EXIT_STARTUP_FAILED",
    "EXIT_USAGE",
    "ENV_RUN_URL",
    "load_app",
    "run_apps",
    "run_workers",
    "signal_handlers",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_GRACE_EXPIRED = 1
EXIT_USAGE = 2
EXIT_STARTUP_FAILED = 3
EXIT_FORCED = 4

ENV_SUPERVISOR = "DOTMAC_EVENTS_SUPERVISOR_PID"
ENV_WORKER = "DOTMAC_EVENTS_WORKER"
ENV_RUN_URL = "DOTMAC_EVENTS_RUN_URL"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def load_app(target: str, app_dir: str | None = ".") -> App:
    """Import ``module:attribute`` (``attribute`` defaults to ``app``) and return the :class:`App`."""
    module_name, _, attribute = target.partition(":")
    if not module_name:
        raise ConfigurationError(f"expected MODULE:APP, got {target!r}")
    if app_dir is not None:
        path = os.path.abspath(app_dir)
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
        raise
    obj: Any = module
    for part in (attribute or "app").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"module {module_name!r} has no attribute {attribute or 'app'!r}"
            ) from None
    if not isinstance(obj, App):
        raise ConfigurationError(f"{target} is a {type(obj).__name__}, not a dotmac.events App")
    return obj


def _name(sig: int) -> str:
    return signal.Signals(sig).name


@contextlib.contextmanager
def signal_handlers(on_first: Callable[[int], None], on_second: Callable[[int], None]) -> Any:
    """First SIGTERM/SIGINT calls ``on_first``, any later one ``on_second``; restored on exit."""
    loop = asyncio.get_running_loop()
    seen = 0

    def handle(sig: int) -> None:
        nonlocal seen
        seen += 1
        (on_first if seen == 1 else on_second)(sig)

    installed = []
    for sig in _SIGNALS:
        try:
            loop.add_signal_handler(sig, handle, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def force_exit(code: int) -> None:
    """Leave now: running handlers are abandoned, their events stay un-acked for redelivery."""
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _who() -> str:
    worker = os.environ.get(ENV_WORKER)
    return f"pid {os.getpid()}" + (f" worker {worker}" if worker else "")


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    # Workers run in their own session (so a terminal's Ctrl-C reaches the supervisor
    # only); an orphaned worker drains and exits instead of running on unsupervised.
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("[%s] supervisor %d is gone: shutting down", _who(), parent)
            stop.set()
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def serve(apps: Sequence[App], *, target: str | None, grace: float | None) -> int:
    """Run ``apps`` until SIGTERM/SIGINT, then drain; returns an exit code."""
    stop = asyncio.Event()

    def first(sig: int) -> None:
        log.info(
            "[%s] received %s: stopping intake and draining (send it again to force)", _who(), _name(sig)
        )
        stop.set()

    def second(sig: int) -> None:
        log.warning(
            "[%s] received %s again: forcing exit with code %d; unfinished events stay un-acked "
            "and are redelivered",
            _who(),
            _name(sig),
            EXIT_FORCED,
        )
        force_exit(EXIT_FORCED)

    with signal_handlers(first, second):
        watcher = None
        parent = os.environ.get(ENV_SUPERVISOR)
        if parent:
            watcher = asyncio.create_task(_watch_parent(int(parent), stop))
        started: list[App] = []
        code = EXIT_OK
        try:
            for app in apps:
                try:
                    await app.start(target)
                except Exception as exc:
                    log.error("[%s] startup of %s failed: %s: %s", _who(), app.name, type(exc).__name__, exc)
                    log.debug("startup failure", exc_info=True)
                    code = EXIT_STARTUP_FAILED
                    break
                started.append(app)
            if code == EXIT_OK:
                log.info(
                    "[%s] running %d app(s), %d subscription(s); SIGTERM or SIGINT drains",
                    _who(),
                    len(started),
                    sum(len(a.subscriptions) for a in started),
                )
                await stop.wait()
            began = time.perf_counter()
            reports: list[DrainReport] = []
            for result in await asyncio.gather(*(a.stop(grace) for a in started), return_exceptions=True):
                if isinstance(result, BaseException):
                    log.error("[%s] stop failed: %r", _who(), result)
                    code = max(code, EXIT_GRACE_EXPIRED)
                else:
                    reports.append(result)
            if any(r.grace_expired for r in reports):
                code = max(code, EXIT_GRACE_EXPIRED)
            if started:
                log.info(
                    "[%s] shutdown complete in %.2fs: %d in-flight handler(s) drained, %d cancelled, "
                    "%d event(s) released for redelivery; in all %d handled, %d retried, "
                    "%d dead-lettered; exit code %d",
                    _who(),
                    time.perf_counter() - began,
                    sum(r.drained for r in reports),
                    sum(r.cancelled for r in reports),
                    sum(r.released for r in reports),
                    sum(r.handled for r in reports),
                    sum(r.retried for r in reports),
                    sum(r.dead_lettered for r in reports),
                    code,
                )
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
    return code


def run_apps(apps: Sequence[App], *, target: str | None, grace: float | None) -> int:
    """Run ``apps`` in this process until a signal; returns the exit code."""
    loop = asyncio.new_event_loop()
    try:
        code = loop.run_until_complete(serve(apps, target=target, grace=grace))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        # Not shutdown_default_executor(): a sync handler abandoned at the grace limit
        # would hold the process open for as long as it runs.
        loop.close()
    # Threads of sync handlers: idle ones end at once; one still running a handler that
    # the grace period abandoned would keep the interpreter from exiting.
    deadline = time.monotonic() + 1.0
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(
        t is not threading.current_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()
    ):
        log.warning("[%s] handler threads still running at exit; leaving without them", _who())
        force_exit(code)
    return code


# -- worker processes ----------------------------------------------------------------------
class _Supervisor:
    def __init__(self, argv: Sequence[str], workers: int, grace: float, env: Mapping[str, str]) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.workers = workers
        self.grace = grace
        self.stopping = asyncio.Event()
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.codes: dict[int, int] = {}
        self.restarts = 0
        self.startup_failed = False

    async def spawn(self, index: int) -> asyncio.subprocess.Process:
        env = {**os.environ, **self.env, ENV_SUPERVISOR: str(os.getpid()), ENV_WORKER: str(index)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dotmac.events.cli",
            *self.argv,
            env=env,
            start_new_session=True,
        )
        self.procs[index] = proc
        log.info("[supervisor pid %d] worker %d started (pid %d)", os.getpid(), index, proc.pid)
        return proc

    async def keep(self, index: int) -> None:
        """Run worker ``index``; restart it whenever it dies while the supervisor runs."""
        quick_failures = 0
        while True:
            began = time.monotonic()
            proc = await self.spawn(index)
            if self.stopping.is_set():  # the drain began while this one was starting
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
            if code == -signal.SIGTERM and self.stopping.is_set():
                # Killed by our SIGTERM before it installed its handlers: it had not
                # subscribed yet, so nothing was in flight.
                code = EXIT_OK
            self.codes[index] = code
            if self.stopping.is_set():
                log.info(
                    "[supervisor pid %d] worker %d (pid %d) exited with %s",
                    os.getpid(),
                    index,
                    proc.pid,
                    _describe(code),
                )
                return
            if code == EXIT_STARTUP_FAILED:
                log.error(
                    "[supervisor pid %d] worker %d (pid %d) failed to start; stopping all workers",
                    os.getpid(),
                    index,
                    proc.pid,
                )
                self.startup_failed = True
                self.stopping.set()
                return
            self.restarts += 1
            quick_failures = quick_failures + 1 if time.monotonic() - began < 5.0 else 0
            delay = min(10.0, 0.1 * 2**quick_failures) if quick_failures > 1 else 0.0
            log.warning(
                "[supervisor pid %d] worker %d (pid %d) died with %s; restarting%s",
                os.getpid(),
                index,
                proc.pid,
                _describe(code),
                f" in {delay:.1f}s" if delay else "",
            )
            if delay:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                if self.stopping.is_set():
                    return

    def signal_all(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def run(self) -> int:
        me = f"supervisor pid {os.getpid()}"

        def first(sig: int) -> None:
            log.info("[%s] received %s: draining %d worker(s)", me, _name(sig), len(self.procs))
            self.stopping.set()

        def second(sig: int) -> None:
            log.warning("[%s] received %s again: forcing the workers out", me, _name(sig))
            self.signal_all(signal.SIGTERM)  # a worker's second signal forces its exit
            force_exit(EXIT_FORCED)

        with signal_handlers(first, second):
            keepers = [asyncio.create_task(self.keep(i)) for i in range(1, self.workers + 1)]
            await self.stopping.wait()
            self.signal_all(signal.SIGTERM)
            # Each worker has its grace period plus time to close; then it is killed.
            _done, pending = await asyncio.wait(keepers, timeout=self.grace + 15.0)
            if pending:
                log.error("[%s] %d worker(s) did not stop in time: killing them", me, len(pending))
                self.signal_all(signal.SIGKILL)
                await asyncio.gather(*pending, return_exceptions=True)
        if self.startup_failed:
            code = EXIT_STARTUP_FAILED
        else:
            code = max((c if c >= 0 else EXIT_GRACE_EXPIRED for c in self.codes.values()), default=EXIT_OK)
        log.info("[%s] all workers stopped (%d restart(s)); exit code %d", me, self.restarts, code)
        return code


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {_name(-code)}"
    return f"exit code {code}"


def run_workers(argv: Sequence[str], workers: int, grace: float, env: Mapping[str, str] | None = None) -> int:
    """Supervise ``workers`` processes running ``dotmac-events <argv>`` (with ``env`` added
    to their environment); restart crashed ones."""
    return asyncio.run(_Supervisor(argv, workers, grace, env or {}).run())

"""Private server processes for fault tests: start, stop, kill and restart a broker.

:class:`ServerProcess` is the lifecycle the plugins' launchers share (``RedisServer``,
``NatsServer``, ``RabbitMQNode``, the Kafka test brokers). A launcher names its server,
builds its command line and, if a listening port is not enough, says when it answers::

    class EchoServer(ServerProcess):
        name = "echo"

        def _args(self) -> list[str]:
            return ["echo-server", "--port", str(self.port), "--dir", str(self.data_dir)]

    with EchoServer() as server:   # free port, own temporary directory
        server.kill()              # SIGKILL, like a crash
        server.start()             # same port, same directory

A server that does not start in time, or exits while starting, raises
:attr:`ServerProcess.startup_error` with the tail of its log. Every process still
running when the interpreter exits is killed and its directory removed.

Only the standard library is used.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TypeVar

__all__ = ["ServerProcess", "free_port", "port_accepts"]

_S = TypeVar("_S", bound="ServerProcess")

_live: set[ServerProcess] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether ``host:port`` accepts a TCP connection now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ServerProcess:
    """A server subprocess on a fixed port of 127.0.0.1 with a temporary directory of its
    own; both stay the same across restarts, so persisted data survives them.

    Subclasses set :attr:`name` and implement :meth:`_args`; they may override
    :meth:`_env` (variables added to the environment) and :meth:`_answers` (ready when
    the port accepts a connection, by default). ``port`` defaults to a free one.
    """

    name = "server"
    """Names the server in messages, its temporary directory and its log file."""
    host = "127.0.0.1"
    own_session = False
    """Run in a session of its own and signal the whole process group (servers that
    start children of their own)."""
    captures_output = True
    """Write the server's stdout and stderr to :attr:`log_path`; ``False`` for a server
    told to write that file itself."""
    startup_error: type[Exception] = RuntimeError
    """Raised when the server exits while starting or does not answer in time."""
    poll_interval = 0.02

    def __init__(
        self, *, port: int | None = None, startup_timeout: float = 10.0, stop_timeout: float = 10.0
    ) -> None:
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._dir = Path(tempfile.mkdtemp(prefix=f"dotmac-{self.name}-"))
        self._process: subprocess.Popen[bytes] | None = None

    # -- facts ---------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        """The server's temporary directory (removed by :meth:`cleanup`)."""
        return self._dir

    @property
    def log_path(self) -> Path:
        return self._dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's log ("" before it wrote one)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- what a launcher provides ----------------------------------------------------------
    def _args(self) -> list[str]:
        """The command line that starts the server."""
        raise NotImplementedError

    def _env(self) -> Mapping[str, str]:
        """Variables added to this process's environment for the server."""
        return {}

    def _answers(self) -> bool:
        """Whether the server is ready for clients."""
        return port_accepts(self.port, self.host)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self: _S) -> _S:
        """Start the server (again) and return once it answers."""
        if self.running:
            return self
        with contextlib.ExitStack() as stack:
            output: int | IO[bytes] = subprocess.DEVNULL
            if self.captures_output:
                output = stack.enter_context(self.log_path.open("ab"))
            self._process = subprocess.Popen(  # noqa: S603 - argv built by the launcher, not from input
                self._args(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if self.captures_output else subprocess.DEVNULL,
                env={**os.environ, **self._env()},
                start_new_session=self.own_session,
            )
        _live.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self) -> None:
        # An external process: poll it with a deadline (no event to await).
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise self.startup_error(
                    f"{self.name} exited with {self._process.returncode} while starting:\n{self.log_tail()}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                waited = f"{self.name} not ready on port {self.port} after {self.startup_timeout}s"
                raise self.startup_error(f"{waited}:\n{self.log_tail()}")
            time.sleep(self.poll_interval)

    def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown (SIGTERM), SIGKILL after ``timeout`` (default ``stop_timeout``)."""
        self._halt(signal.SIGTERM, self.stop_timeout if timeout is None else timeout)

    def kill(self) -> None:
        """SIGKILL: a crash."""
        self._halt(signal.SIGKILL, 10.0)

    def restart(self, *, crash: bool = False) -> None:
        """Stop (or kill, with ``crash``) and start again on the same port and directory."""
        if crash:
            self.kill()
        else:
            self.stop()
        self.start()

    def _send(self, sig: int) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError):
            if self.own_session:
                os.killpg(self._process.pid, sig)
            else:
                os.kill(self._process.pid, sig)

    def _halt(self, sig: int, timeout: float) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._send(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._send(signal.SIGKILL)
                process.wait(timeout)
        self._process = None
        _live.discard(self)

    def cleanup(self) -> None:
        """Kill the server and delete its directory."""
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self: _S) -> _S:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.kill()
            shutil.rmtree(server.data_dir, ignore_errors=True)

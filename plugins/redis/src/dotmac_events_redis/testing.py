"""Test helpers: a private ``redis-server`` process to start, stop, kill and restart.

>>> with RedisServer(appendonly=True) as server:
...     bus = create_bus(server.url)
...     server.kill()       # SIGKILL, like a crash
...     server.start()      # same port, same data directory

Only the standard library is used, so test suites of other packages can reuse it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "free_port", "redis_server_available"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_server_available(binary: str = "redis-server") -> bool:
    return shutil.which(binary) is not None


class RedisServer:
    """A ``redis-server`` subprocess on a free port of 127.0.0.1, with its own data directory.

    ``appendonly``/``appendfsync`` choose AOF persistence (``"always"``,
    ``"everysec"``, ``"no"``); without AOF nothing survives a restart. ``password``
    sets ``requirepass``; ``tls`` is a mapping of ``tls-*`` settings (then
    ``tls_port`` serves TLS and the plain port is closed). ``extra_args`` are passed
    through. The port and data directory stay the same across restarts.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        password: str | None = None,
        tls: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        binary: str = "redis-server",
        startup_timeout: float = 10.0,
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.tls = dict(tls) if tls else None
        self.extra_args = tuple(extra_args)
        self.binary = binary
        self.startup_timeout = startup_timeout
        self._password = password
        self._dir = Path(tempfile.mkdtemp(prefix="dotmac-redis-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self._dir / "redis.log"

    # -- facts ---------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self._password}@" if self._password else ""
        return f"{scheme}://{auth}{self.host}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self._dir

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"<RedisServer port={self.port} running={self.running} aof={self.appendonly}>"

    # -- lifecycle -----------------------------------------------------------------------
    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--bind",
            self.host,
            "--dir",
            str(self._dir),
            "--logfile",
            str(self._log),
            "--save",
            "",
            "--daemonize",
            "no",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--protected-mode",
            "no",
        ]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port)]
            for name, value in self.tls.items():
                args += [f"--{name}", value]
        else:
            args += ["--port", str(self.port)]
        if self._password:
            args += ["--requirepass", self._password]
        args += list(self.extra_args)
        return args

    def start(self) -> RedisServer:
        """Start the server (again) and wait until it accepts connections."""
        if self.running:
            return self
        self._process = subprocess.Popen(  # noqa: S603 - fixed binary, arguments built here
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self) -> None:
        # An external process: poll its port with a deadline (no event to await).
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}:\n{self.log_tail()}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server not ready after {self.startup_timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                if self.tls:
                    return True  # the TLS port accepts connections
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        # "-LOADING" while the AOF is replayed; "-NOAUTH" means it is up.
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM): the AOF is flushed and fsynced."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash. With ``appendfsync everysec`` up to a second of writes is lost."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self, *, crash: bool = False) -> None:
        """Stop (or kill, with ``crash``) and start again on the same port and data."""
        if crash:
            self.kill()
        else:
            self.stop()
        self.start()

    def _signal(self, sig: int, timeout: float) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._process = None

    def cleanup(self) -> None:
        """Kill the server and delete its data directory."""
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

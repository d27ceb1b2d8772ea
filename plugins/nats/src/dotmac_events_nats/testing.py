"""Test helpers: a private ``nats-server -js`` process to start, stop, kill and restart.

>>> with NatsServer() as server:
...     bus = create_bus(server.url)
...     server.kill()       # SIGKILL, like a crash
...     server.start()      # same port, same store directory

Besides the launcher, :func:`nats_listening` tells whether a server answers at a URL
and :func:`delete_stream` removes what a test created.
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

__all__ = [
    "NatsServer",
    "NatsUnavailableError",
    "delete_stream",
    "free_port",
    "nats_listening",
    "nats_server_available",
    "nats_url_for_tests",
]

ENV_URL = "NATS_URL"


class NatsUnavailableError(RuntimeError):
    """Neither ``$NATS_URL`` answers nor can a private server start (test suites skip)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nats_server_available(binary: str = "nats-server") -> bool:
    return shutil.which(binary) is not None


def nats_listening(url: str) -> bool:
    """Whether anything accepts connections at ``url``'s host and port."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def nats_url_for_tests() -> Iterator[str]:
    """``$NATS_URL`` when set, else the URL of a private server stopped afterwards.

    Raises :class:`NatsUnavailableError` when nothing listens at ``$NATS_URL`` or
    ``nats-server`` is not installed; anything else that fails is a real failure.
    """
    url = os.environ.get(ENV_URL)
    if url:
        if not nats_listening(url):
            parts = urlsplit(url)
            raise NatsUnavailableError(f"nothing listens at {ENV_URL} ({parts.hostname}:{parts.port})")
        yield url
        return
    if not nats_server_available():
        raise NatsUnavailableError(f"nats-server is not installed and {ENV_URL} is not set")
    with NatsServer() as server:
        yield server.url


async def delete_stream(url: str, stream: str) -> None:
    """Delete ``stream`` (if it exists) on the server at ``url``."""
    import nats
    import nats.js.errors

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(stream)
    except nats.js.errors.NotFoundError:
        pass  # the test never created it
    finally:
        await nc.close()


class NatsServer:
    """A ``nats-server`` with JetStream on a free port of 127.0.0.1 and its own store.

    ``user``/``password`` or ``token`` require authentication; ``tls`` is a
    (certificate file, key file) pair that makes the server require TLS;
    ``extra_args`` are passed through. The port and store directory stay the same across restarts, so
    file-stored streams and consumers survive them.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        tls: tuple[str, str] | None = None,
        extra_args: Sequence[str] = (),
        binary: str = "nats-server",
        startup_timeout: float = 15.0,
    ) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self._user = user
        self._password = password
        self._token = token
        self.tls = tls
        self._dir = Path(tempfile.mkdtemp(prefix="dotmac-nats-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT`` (without credentials)."""
        return f"nats://{self.host}:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self._dir / "store"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        path = self._dir / "server.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"NatsServer(port={self.port}, running={self.running})"

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "-js",
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-sd",
            str(self.store_dir),
            "-l",
            str(self._dir / "server.log"),
        ]
        if self._user:
            args += ["--user", self._user, "--pass", self._password or ""]
        if self._token:
            args += ["--auth", self._token]
        if self.tls:
            args += ["--tls", "--tlscert", self.tls[0], "--tlskey", self.tls[1]]
        return args + list(self.extra_args)

    def start(self) -> NatsServer:
        """Start the server (again) and wait until JetStream answers."""
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
                raise RuntimeError(f"nats-server exited with {self._process.returncode}:\n{self.log_tail()}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server not ready after {self.startup_timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        # The INFO line arrives once the client port is open; JetStream is ready
        # by then, its store having been recovered before the listener starts.
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful shutdown (SIGTERM): JetStream flushes its store."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self, *, crash: bool = False) -> None:
        """Stop (or kill, with ``crash``) and start again on the same port and store."""
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
        """Kill the server and delete its store."""
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

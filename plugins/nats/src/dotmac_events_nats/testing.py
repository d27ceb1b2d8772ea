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
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from dotmac.events.testing.server import ServerProcess, free_port, port_accepts

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


def nats_server_available(binary: str = "nats-server") -> bool:
    return shutil.which(binary) is not None


def nats_listening(url: str) -> bool:
    """Whether anything accepts connections at ``url``'s host and port."""
    parts = urlsplit(url)
    return port_accepts(parts.port or 4222, parts.hostname or "127.0.0.1", timeout=1)


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


class NatsServer(ServerProcess):
    """A ``nats-server`` with JetStream on a free port of 127.0.0.1 and its own store.

    ``user``/``password`` or ``token`` require authentication; ``tls`` is a
    (certificate file, key file) pair that makes the server require TLS;
    ``extra_args`` are passed through. The port and store directory stay the same across restarts, so
    file-stored streams and consumers survive them (the lifecycle is
    :class:`dotmac.events.testing.server.ServerProcess`; ``stop()`` lets JetStream flush
    its store, ``kill()`` is a crash).
    """

    name = "nats"
    captures_output = False  # -l

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
        super().__init__(port=port, startup_timeout=startup_timeout, stop_timeout=15.0)
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self._user = user
        self._password = password
        self._token = token
        self.tls = tls

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT`` (without credentials)."""
        return f"nats://{self.host}:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

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
            str(self.log_path),
        ]
        if self._user:
            args += ["--user", self._user, "--pass", self._password or ""]
        if self._token:
            args += ["--auth", self._token]
        if self.tls:
            args += ["--tls", "--tlscert", self.tls[0], "--tlskey", self.tls[1]]
        return args + list(self.extra_args)

    def _answers(self) -> bool:
        # The INFO line arrives once the client port is open; JetStream is ready
        # by then, its store having been recovered before the listener starts.
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False

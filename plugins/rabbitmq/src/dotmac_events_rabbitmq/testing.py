"""Test helpers: a throw-away vhost on a running broker, and a private RabbitMQ node.

>>> with TemporaryVhost() as vhost:            # rabbitmqctl add_vhost / delete_vhost
...     bus = create_bus(f"amqp://guest:guest@127.0.0.1:5672/{vhost.quoted}")
>>> with RabbitMQNode() as node:               # its own node name, ports and data
...     node.restart()                         # stop, start again with the same data
>>> relay = await TcpRelay.start(url)          # the broker behind a TCP path of the test's
>>> relay.cut()                                # unreachable until relay.restore()

Besides ``dotmac.events`` only the standard library is used, so other packages' test
suites can reuse it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from dotmac.events.testing.server import ServerProcess, free_port, port_accepts

__all__ = [
    "BrokerUnusable",
    "RabbitMQNode",
    "TcpRelay",
    "TemporaryVhost",
    "broker_reachable",
    "free_port",
    "rabbitmq_server_available",
    "scratch_broker_url",
    "url_fixture",
]

ENV_URL = "RABBITMQ_URL"

_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
_CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def broker_reachable(host: str = "127.0.0.1", port: int = 5672, timeout: float = 1.0) -> bool:
    return port_accepts(port, host, timeout)


def _binary(path: str, name: str) -> str | None:
    return path if os.access(path, os.X_OK) else shutil.which(name)


def rabbitmq_server_available() -> bool:
    """Whether a private node can be started here (the server and ``rabbitmqctl``)."""
    return _binary(_SERVER, "rabbitmq-server") is not None and _binary(_CTL, "rabbitmqctl") is not None


class TemporaryVhost:
    """A uniquely named vhost on the broker behind ``rabbitmqctl``, deleted (with every
    queue and exchange in it) on exit; ``user`` gets full permissions on it."""

    def __init__(self, *, user: str = "guest", node: str | None = None, ctl: str = "rabbitmqctl") -> None:
        self.name = f"dotmac-test-{uuid.uuid4().hex[:12]}"
        self.user = user
        self._ctl = [ctl, *(["-n", node] if node else [])]

    @property
    def quoted(self) -> str:
        """The name as the path of an AMQP URL."""
        return quote(self.name, safe="")

    def _run(self, *args: str) -> None:
        command = [*self._ctl, *args]
        subprocess.run(command, check=True, capture_output=True, timeout=60)  # noqa: S603 - argv built here

    def __enter__(self) -> TemporaryVhost:
        self._run("add_vhost", self.name)
        self._run("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._run("delete_vhost", self.name)


class BrokerUnusable(Exception):
    """No broker to test against; the message says why (tests skip with it)."""


@contextlib.contextmanager
def scratch_broker_url(host: str = "127.0.0.1", port: int = 5672) -> Iterator[str]:
    """``$RABBITMQ_URL`` as it is, or a fresh vhost on the broker at ``host:port``
    (deleted on exit). Raises :class:`BrokerUnusable` when neither is possible."""
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    if not broker_reachable(host, port):
        raise BrokerUnusable(f"no RabbitMQ at {host}:{port} and ${ENV_URL} is not set")
    vhost = TemporaryVhost()
    try:
        vhost.__enter__()
    except (OSError, subprocess.SubprocessError) as exc:
        raise BrokerUnusable(
            f"cannot create a vhost with rabbitmqctl ({type(exc).__name__}); set ${ENV_URL}"
        ) from exc
    try:
        yield f"amqp://guest:guest@{host}:{port}/{vhost.quoted}"
    finally:
        vhost.__exit__(None, None, None)


def url_fixture(scope: Literal["session", "module"] = "session") -> Any:
    """A pytest fixture ``rabbitmq_url`` over :func:`scratch_broker_url` that skips
    the test when there is no broker: ``rabbitmq_url = url_fixture("module")``."""
    import pytest

    @pytest.fixture(scope=scope, name="rabbitmq_url")
    def rabbitmq_url() -> Iterator[str]:
        try:
            with scratch_broker_url() as url:
                yield url
        except BrokerUnusable as exc:
            pytest.skip(str(exc))

    return rabbitmq_url


class RabbitMQNode(ServerProcess):
    """A RabbitMQ node of its own: unique node name, free AMQP and distribution ports,
    data and logs in a temporary directory kept across restarts.

    ``stop()`` is a clean shutdown, ``kill()`` a SIGKILL of the node's Erlang VM;
    ``start()`` brings it back on the same port with the same data.
    """

    name = "rabbitmq"
    own_session = True  # the Erlang VM and its helpers
    poll_interval = 0.1

    def __init__(self, *, startup_timeout: float = 60.0) -> None:
        server, ctl = _binary(_SERVER, "rabbitmq-server"), _binary(_CTL, "rabbitmqctl")
        if server is None or ctl is None:
            raise RuntimeError("rabbitmq-server is not installed")
        super().__init__(startup_timeout=startup_timeout, stop_timeout=30.0)
        self._server, self._ctl = server, ctl
        self.dist_port = free_port()
        self.node = f"dotmac-test-{uuid.uuid4().hex[:10]}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _args(self) -> list[str]:
        return [self._server]

    def _env(self) -> dict[str, str]:
        d = self.data_dir
        (d / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n")
        (d / "enabled_plugins").write_text("[].\n")
        return {
            "HOME": str(d),  # the node's Erlang cookie lives here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
        }

    def stop(self, timeout: float | None = None) -> None:
        """``rabbitmqctl stop``; SIGKILL if the node is still up after ``timeout``."""
        if self._process is None:
            return
        subprocess.run(  # noqa: S603 - argv built here
            [self._ctl, "-n", self.node, "stop"],
            env={**os.environ, **self._env()},
            capture_output=True,
            timeout=60,
        )
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(self.stop_timeout if timeout is None else timeout)
        super().kill()  # only if it is still running
        self._wait_port_closed()

    def kill(self) -> None:
        """SIGKILL the whole process group of the node, like a crash of its machine."""
        super().kill()
        self._wait_port_closed()

    def _wait_port_closed(self) -> None:
        # The Erlang VM lets go of its listener a moment after the signal.
        deadline = time.monotonic() + 30
        while port_accepts(self.port, timeout=0.2):
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ node {self.node} still listens after it was stopped")
            time.sleep(0.05)

    def cleanup(self) -> None:
        """Stop the node cleanly and delete its data."""
        self.stop()
        super().cleanup()


class TcpRelay:
    """A TCP relay on a free loopback port in front of the broker of ``url``.

    :meth:`cut` closes the listener and every relayed connection, so the broker is
    unreachable (connections refused); :meth:`restore` listens on the same port again.
    """

    def __init__(self, url: str) -> None:
        self._target = urlsplit(url)
        self._links: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    async def start(cls, url: str) -> TcpRelay:
        relay = cls(url)
        await relay.restore()
        return relay

    def url(self, **params: object) -> str:
        """The broker's URL through the relay, with ``params`` added to its query."""
        t = self._target
        credentials = t.netloc.rsplit("@", 1)[0] + "@" if "@" in t.netloc else ""
        query = "&".join(filter(None, [t.query, *(f"{k}={v}" for k, v in params.items())]))
        return urlunsplit((t.scheme, f"{credentials}127.0.0.1:{self.port}", t.path, query, ""))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self._target.hostname, self._target.port or 5672
            )
        except OSError:
            writer.close()
            return
        self._links.extend([writer, up_writer])
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def cut(self) -> None:
        """Stop listening and drop every relayed connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in self._links:
            link.close()
        self._links.clear()

    async def restore(self) -> None:
        """Listen again, on the same port once one was chosen."""
        if self._server is None:
            self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    close = cut
